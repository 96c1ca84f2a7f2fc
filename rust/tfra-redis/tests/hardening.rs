//! Input that used to reach a panic (configs with more buckets than cluster slots), and a reply
//! handler that panics with replies still unread on its connection.

mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};

use redis::Value;
use serde_json::json;
use support::Standalone;
use tfra_redis::backend::{self, Batch, Retry, Role};
use tfra_redis::codec::{Dim, KeyDtype, ValueDtype};
use tfra_redis::config::{MAX_STORAGE_SLICE, RedisConfig};
use tfra_redis::table::{Table, TableSpec};
use tfra_redis::{Error, Result, TableBuilder};

fn spec(name: &str) -> TableSpec {
    TableSpec::new(name, KeyDtype::I64, ValueDtype::F32, Dim::new(2).unwrap())
}

/// Opens without the lifecycle steps (TTL, re-bucketing), as the old `Table::open` did.
fn open_bare(config: &RedisConfig, spec: TableSpec) -> Result<Table> {
    TableBuilder::from_spec(config, spec)
        .persist(false)
        .rebucket(false)
        .open()
}

fn assert_slice_error<T: std::fmt::Debug>(result: Result<T>, key: &str, n: u32) {
    match result {
        Err(Error::ConfigField { field, message }) => {
            assert_eq!(field, key);
            assert!(
                message.contains(&MAX_STORAGE_SLICE.to_string())
                    && message.contains(&n.to_string()),
                "{message}"
            );
        }
        other => panic!("{key} = {n} gave {other:?}"),
    }
}

#[test]
fn bucket_counts_above_the_slot_count_are_a_config_error_on_every_open_path() {
    assert_eq!(MAX_STORAGE_SLICE, 16384);
    let s = Standalone::start();
    let base = RedisConfig::from_json_str(&s.config_json(json!({})), "<test>")
        .unwrap()
        .0;
    for (key, n) in [
        ("storage_slice", 16385),
        ("storage_slice", u32::MAX),
        ("storage_slice_import", 16385),
    ] {
        // Built in code, where the JSON parser's range checks never ran.
        let mut config = base.clone();
        if key == "storage_slice" {
            config.storage_slice = n;
        } else {
            config.storage_slice_import = n;
        }
        assert_slice_error(config.validate(), key, n);
        assert_slice_error(open_bare(&config, spec("too_many")), key, n);
        assert_slice_error(
            TableBuilder::from_spec(&config, spec("too_many")).open_with_notes(),
            key,
            n,
        );
        // And the same message from the JSON file.
        let text = s.config_json(json!({ key: n }));
        assert_slice_error(RedisConfig::from_json_str(&text, "<test>"), key, n);
    }
    // The largest count still opens.
    let mut config = base.clone();
    config.storage_slice = MAX_STORAGE_SLICE;
    config.storage_slice_import = MAX_STORAGE_SLICE;
    let t = open_bare(&config, spec("slot_count")).unwrap();
    assert_eq!(t.buckets().len(), 16384);
    assert_eq!(t.import_buckets().unwrap().len(), 16384);
}

#[test]
fn a_panicking_reply_handler_does_not_give_its_connection_back_with_replies_unread() {
    let s = Standalone::start();
    // One connection: whatever the panicking read left behind, the next command gets it.
    let text = s.config_json(json!({"redis_conn_pool_size": 1}));
    let config = RedisConfig::from_json_str(&text, "<test>").unwrap().0;
    let backend = backend::connect(&config).unwrap();
    // Replies far larger than one socket read, so most of them are still in the socket when
    // the handler gives up on the first.
    let big = vec![b'x'; 4 << 20];
    let set = redis::cmd("SET").arg("big").arg(&big[..]).clone();
    backend.run(&[set], Role::Write, Retry::Idempotent).unwrap();
    let gets: Vec<redis::Cmd> = (0..8)
        .map(|_| redis::cmd("GET").arg("big").clone())
        .collect();
    let batch = Batch::from_cmds(&gets);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        backend.run_each(&batch, Role::Read, &mut |_, _| panic!("handler bug"))
    }));
    assert!(panicked.is_err());
    let ping = backend
        .run_values(&[redis::cmd("PING")], Role::Write, Retry::Idempotent)
        .unwrap();
    assert_eq!(ping, vec![Value::SimpleString("PONG".into())]);
}

/// A scripted RESP server for one condition a real server cannot be made to produce on cue:
/// a pipeline whose first commands run and whose later ones are refused with READONLY, as
/// when a master is demoted between two commands of one pipeline during a failover. (A real
/// demotion lands between two pipelines in practice; pausing and re-roling a real server
/// mid-pipeline is not something a test can time.) The first connection that sends EVALs
/// runs `run_before_demotion` of them and refuses the rest; every later connection plays a
/// healthy master. Each EVAL that "ran" is recorded with its fields.
struct DemotedMaster {
    port: u16,
    ran: std::sync::Arc<std::sync::Mutex<Vec<Vec<Vec<u8>>>>>,
}

impl DemotedMaster {
    fn start(run_before_demotion: usize) -> DemotedMaster {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ran: Arc<Mutex<Vec<Vec<Vec<u8>>>>> = Arc::default();
        let demoted = Arc::new(AtomicUsize::new(usize::MAX));
        let record = ran.clone();
        // The thread ends with the test binary; it holds nothing but its sockets.
        std::thread::spawn(move || {
            for (id, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let (ran, demoted) = (record.clone(), demoted.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    let mut evals = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let n: usize = line.trim_end()[1..].parse().unwrap();
                        let mut args = Vec::with_capacity(n);
                        for _ in 0..n {
                            line.clear();
                            reader.read_line(&mut line).unwrap();
                            let len: usize = line.trim_end()[1..].parse().unwrap();
                            let mut arg = vec![0; len + 2];
                            std::io::Read::read_exact(&mut reader, &mut arg).unwrap();
                            arg.truncate(len);
                            args.push(arg);
                        }
                        let reply: &[u8] = match &args[0].to_ascii_uppercase()[..] {
                            b"INFO" => b"$30\r\n# Cluster\r\ncluster_enabled:0\r\n\r\n",
                            b"PING" => b"+PONG\r\n",
                            b"EVAL" => {
                                let first = demoted
                                    .compare_exchange(
                                        usize::MAX,
                                        id,
                                        Ordering::SeqCst,
                                        Ordering::SeqCst,
                                    )
                                    .is_ok();
                                let on_demoted = first || demoted.load(Ordering::SeqCst) == id;
                                evals += 1;
                                if on_demoted && evals > run_before_demotion {
                                    b"-READONLY You can't write against a read only replica.\r\n"
                                } else {
                                    ran.lock().unwrap().push(args);
                                    b":1\r\n"
                                }
                            }
                            _ => b"-ERR unknown command\r\n",
                        };
                        if out.write_all(reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        DemotedMaster { port, ran }
    }
}

#[test]
fn accum_after_a_demotion_mid_pipeline_sends_only_the_refused_commands_again() {
    let server = DemotedMaster::start(2);
    let text = json!({
        "redis_connection_mode": 2,
        "redis_host_ip": ["127.0.0.1"],
        "redis_host_port": [server.port],
        // Two ids per command: eight ids are four EVALs in one pipeline.
        "keys_sending_size": 2,
    })
    .to_string();
    let config = RedisConfig::from_json_str(&text, "<test>").unwrap().0;
    let table = open_bare(&config, spec("role_change")).unwrap();
    let keys: Vec<i64> = (1..=8).collect();
    let deltas: Vec<u8> = keys
        .iter()
        .flat_map(|_| [1.0f32, 1.0])
        .flat_map(f32::to_le_bytes)
        .collect();
    table.accum(&keys, &deltas, &[true; 8]).unwrap();
    // EVAL script 1 bucket dtype flags id delta id delta: the ids are args 6, 8, ...
    let mut applied: Vec<i64> = server
        .ran
        .lock()
        .unwrap()
        .iter()
        .flat_map(|args| {
            args[6..]
                .iter()
                .step_by(2)
                .map(|id| i64::from_le_bytes(id[..].try_into().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    applied.sort();
    assert_eq!(applied, keys, "every delta applied exactly once");
}
