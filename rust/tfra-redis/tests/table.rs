//! Every table operation against real servers in every mode, plus TFRA's fixture data.

mod support;

use support::{f32_bytes as bytes, f32s as floats};

use std::path::Path;

use serde_json::json;
use support::{Cluster, Sentinel, ServerOptions, Standalone};
use tfra_redis::codec::{Dim, KeyDtype, ValueDtype};
use tfra_redis::config::RedisConfig;
use tfra_redis::store;
use tfra_redis::table::{Defaults, Lookup, Table, TableSpec};
use tfra_redis::{ArgumentKind, Error, TableBuilder};

/// Opens a table the one public way, returning the notes of the lifecycle steps.
fn open_table(config: &RedisConfig, spec: TableSpec) -> tfra_redis::Result<(Table, Vec<String>)> {
    TableBuilder::from_spec(config, spec).open_with_notes()
}

fn config(json: &str) -> RedisConfig {
    RedisConfig::from_json_str(json, "<test>").unwrap().0
}

fn spec(name: &str, dim: usize) -> TableSpec {
    TableSpec::new(name, KeyDtype::I64, ValueDtype::F32, Dim::new(dim).unwrap())
}

fn row(k: i64, dim: usize) -> Vec<f32> {
    (0..dim).map(|j| k as f32 * 0.5 + j as f32).collect()
}

fn find(t: &Table, keys: &[i64], default: f32) -> (Vec<f32>, Vec<bool>) {
    let dim = t.spec().dim.get();
    let mut out = vec![0u8; keys.len() * t.row_bytes()];
    let mut exists = vec![false; keys.len()];
    let d = bytes(&vec![default; dim]);
    t.find(keys, Defaults::Row(&d), &mut out, Some(&mut exists))
        .unwrap();
    (floats(&out), exists)
}

/// The same checks in every mode: upsert, lookup with both kinds of defaults, remove, size,
/// export, accum, clear, empty batches, and a batch larger than one pipeline window.
/// HMGETs the servers have run, summed (`INFO commandstats`).
fn hmget_calls(servers: &[&support::RedisServer]) -> u64 {
    servers
        .iter()
        .map(|server| {
            server
                .info_field("commandstats", "cmdstat_hmget")
                .and_then(|stat| {
                    let calls = stat.split(',').next()?.strip_prefix("calls=")?;
                    calls.parse().ok()
                })
                .unwrap_or(0)
        })
        .sum()
}

/// [`exercise`] with `redis_read_access_slave`: the lookups must be served by the replicas
/// (their HMGET count rises) and never by the masters (theirs stays put).
fn exercise_on_replicas(
    config_json: &str,
    name: &str,
    masters: &[&support::RedisServer],
    replicas: &[&support::RedisServer],
) {
    let (on_masters, on_replicas) = (hmget_calls(masters), hmget_calls(replicas));
    exercise(config_json, name);
    assert_eq!(
        hmget_calls(masters),
        on_masters,
        "a lookup went to a master"
    );
    assert!(
        hmget_calls(replicas) > on_replicas,
        "no lookup reached a replica"
    );
}

fn exercise(config_json: &str, name: &str) {
    let cfg = config(config_json);
    let dim = 8;
    let (t, _) = open_table(&cfg, spec(name, dim)).unwrap();
    t.clear().unwrap();
    assert_eq!(t.size().unwrap(), 0);

    let n = 100_000i64;
    let keys: Vec<i64> = (0..n).map(|k| k * 7919 - 50_000).collect();
    let values: Vec<f32> = keys.iter().flat_map(|&k| row(k, dim)).collect();
    t.insert(&keys, &bytes(&values)).unwrap();
    assert_eq!(t.size().unwrap(), n as u64);

    let (got, exists) = find(&t, &keys, -1.0);
    assert!(exists.iter().all(|e| *e));
    assert_eq!(got, values);

    // Missing ids: one default row for all, or one per id.
    let probe = [keys[0], 123_456_789, keys[5]];
    let (got, exists) = find(&t, &probe, -3.0);
    assert_eq!(exists, vec![true, false, true]);
    assert_eq!(&got[dim..2 * dim], vec![-3.0; dim].as_slice());
    let per_key: Vec<f32> = (0..3 * dim).map(|i| i as f32 + 1000.0).collect();
    let mut out = vec![0u8; 3 * t.row_bytes()];
    t.find(&probe, Defaults::PerKey(&bytes(&per_key)), &mut out, None)
        .unwrap();
    assert_eq!(&floats(&out)[dim..2 * dim], &per_key[dim..2 * dim]);
    assert_eq!(&floats(&out)[..dim], row(keys[0], dim).as_slice());

    // Duplicates in one batch: the last row wins.
    t.insert(&[7, 7], &bytes(&[vec![1.0; dim], vec![2.0; dim]].concat()))
        .unwrap();
    assert_eq!(find(&t, &[7], 0.0).0, vec![2.0; dim]);

    t.remove(&[keys[0], keys[1], 7, 999_999_999]).unwrap();
    assert_eq!(t.size().unwrap(), n as u64 - 2);
    assert_eq!(find(&t, &[keys[0]], 0.0).1, vec![false]);

    let (ek, ev) = t.export().unwrap();
    let ek = ek.into_ints().expect("int64 table exports int keys");
    assert_eq!(ek.len(), n as usize - 2);
    let ev = floats(&ev);
    for (i, k) in ek.iter().enumerate().step_by(997) {
        assert_eq!(&ev[i * dim..(i + 1) * dim], row(*k, dim).as_slice());
    }

    // accum: TFRA's BP-v2 rule.
    let base = [10i64, 11, 12];
    t.insert(&base, &bytes(&vec![1.0; 3 * dim])).unwrap();
    t.remove(&[11]).unwrap();
    let deltas = bytes(
        &[
            vec![0.5; dim],
            vec![0.5; dim],
            vec![4.0; dim],
            vec![9.0; dim],
        ]
        .concat(),
    );
    t.accum(&[10, 11, 12, 13], &deltas, &[true, true, false, false])
        .unwrap();
    let (got, exists) = find(&t, &[10, 11, 12, 13], -1.0);
    assert_eq!(exists, vec![true, false, true, true]);
    assert_eq!(
        &got[..dim],
        vec![1.5; dim].as_slice(),
        "present+flagged adds"
    );
    assert_eq!(
        &got[2 * dim..3 * dim],
        vec![1.0; dim].as_slice(),
        "present+unflagged kept"
    );
    assert_eq!(
        &got[3 * dim..],
        vec![9.0; dim].as_slice(),
        "absent+unflagged set"
    );

    // Empty batches are no-ops.
    t.insert(&[], &[]).unwrap();
    t.remove(&[]).unwrap();
    t.find(&[], Defaults::Row(&bytes(&vec![0.0; dim])), &mut [], None)
        .unwrap();

    // Wrong value length: a clear error, nothing written.
    let before = t.size().unwrap();
    let err = t.insert(&[1, 2], &bytes(&vec![0.0; dim])).unwrap_err();
    assert_eq!(err.argument_kind(), Some(ArgumentKind::Shape), "{err}");
    let want = format!(
        "values has {} bytes, expected 2 rows x {} bytes ({dim} x float32) = {}",
        4 * dim,
        4 * dim,
        8 * dim
    );
    assert_eq!(err.to_string(), want);
    assert_eq!(t.size().unwrap(), before);

    // Rows stored with another dim: the error names the key and the bucket.
    let (wide, _) = open_table(&cfg, spec(name, dim + 1)).unwrap();
    let mut out = vec![0u8; wide.row_bytes()];
    let err = wide
        .find(
            &[10],
            Defaults::Row(&bytes(&vec![0.0; dim + 1])),
            &mut out,
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Data { .. }), "{err}");
    assert!(err.to_string().contains("key 10"), "{err}");

    t.clear().unwrap();
    assert_eq!(t.size().unwrap(), 0);
}

#[test]
fn standalone_every_operation() {
    let s = Standalone::start();
    exercise(&s.config_json(json!({})), "ops");
    // storage_slice > 1 in standalone: TFRA writes bucket 0 only.
    let cfg = s.config_json(json!({"storage_slice": 4, "model_tag_runtime": "m4"}));
    let (t, _) = open_table(&config(&cfg), spec("sliced", 2)).unwrap();
    t.insert(&[1, 2, 3, 4, 5], &bytes(&[0.0; 10])).unwrap();
    assert_eq!(s.server.cli(&["HLEN", "m4:sliced{3560}"]).trim(), "5");
    assert_eq!(s.server.cli(&["EXISTS", "m4:sliced{4129}"]).trim(), "0");
    assert_eq!(t.size().unwrap(), 5);
}

/// A lookup of many commands streams through several in-flight windows and puts every row in
/// its place; an error reply in the middle fails the call, names the bucket, and leaves no
/// half-read connection behind for the next call.
#[test]
fn streamed_lookups_span_windows_and_recover_from_error_replies() {
    let s = Standalone::start();
    let dim = 1024; // 4 KB rows: 64-row replies of 256 KB, ~32 of them in flight at a time
    let cfg = s.config_json(json!({"keys_sending_size": 64, "model_tag_runtime": "win"}));
    let (t, _) = open_table(&config(&cfg), spec("wide", dim)).unwrap();
    let stored: Vec<i64> = (0..6000).map(|k| k * 2).collect();
    let rows: Vec<f32> = stored.iter().flat_map(|&k| row(k, dim)).collect();
    t.insert(&stored, &bytes(&rows)).unwrap();
    // Every stored id and one missing id after each, in an order that interleaves them.
    let keys: Vec<i64> = (0..12000).rev().collect();
    let default = bytes(&vec![-1.0; dim]);
    let mut out = vec![0u8; keys.len() * dim * 4];
    let mut exists = vec![false; keys.len()];
    t.find(&keys, Defaults::Row(&default), &mut out, Some(&mut exists))
        .unwrap();
    for (i, &k) in keys.iter().enumerate() {
        let got = floats(&out[i * dim * 4..(i + 1) * dim * 4]);
        if k % 2 == 0 {
            assert!(exists[i], "key {k}");
            assert_eq!(got, row(k, dim), "key {k}");
        } else {
            assert!(!exists[i], "key {k}");
            assert_eq!(got, vec![-1.0; dim], "key {k}");
        }
    }
    // The bucket replaced by a string: HMGET fails with WRONGTYPE.
    let bucket = t.bucket_names()[0].clone();
    s.server.cli(&["DEL", &bucket]);
    s.server.cli(&["SET", &bucket, "not a hash"]);
    let err = t
        .find(&keys, Defaults::Row(&default), &mut out, None)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("WRONGTYPE") && text.contains(&bucket),
        "{text}"
    );
    s.server.cli(&["DEL", &bucket]);
    t.find(
        &keys[..100],
        Defaults::Row(&default),
        &mut out[..100 * dim * 4],
        None,
    )
    .unwrap();
    assert!(floats(&out[..100 * dim * 4]).iter().all(|&v| v == -1.0));
}

/// Several tables in one pipeline, as an optimizer step reads and writes a table and its
/// slots; and tables on two different servers, which cannot share one.
#[test]
fn tables_are_read_and_written_together() {
    let a = Standalone::start();
    let b = Standalone::start();
    let (p, _) = open_table(&config(&a.config_json(json!({}))), spec("p", 2)).unwrap();
    let (m, _) = open_table(&config(&a.config_json(json!({}))), spec("m", 2)).unwrap();
    let (far, _) = open_table(&config(&b.config_json(json!({}))), spec("f", 2)).unwrap();
    let keys = [5i64, 6, 7];
    p.insert(&keys[..2], &bytes(&[1.0, 2.0, 3.0, 4.0])).unwrap();
    far.insert(&keys[2..], &bytes(&[9.0, 9.5])).unwrap();
    for (tables, name) in [([&p, &m], "same server"), ([&p, &far], "two servers")] {
        let default = bytes(&[-1.0, -1.0]);
        let mut outs = [vec![0u8; 3 * 8], vec![0u8; 3 * 8]];
        let [o0, o1] = &mut outs;
        let mut lookups = [
            Lookup {
                table: tables[0],
                keys: (&keys).into(),
                defaults: Defaults::Row(&default),
                out: o0,
            },
            Lookup {
                table: tables[1],
                keys: (&keys).into(),
                defaults: Defaults::Row(&default),
                out: o1,
            },
        ];
        Table::find_together(&mut lookups).unwrap();
        assert_eq!(outs[0], bytes(&[1.0, 2.0, 3.0, 4.0, -1.0, -1.0]), "{name}");
        let second = if name == "same server" {
            bytes(&[-1.0; 6])
        } else {
            bytes(&[-1.0, -1.0, -1.0, -1.0, 9.0, 9.5])
        };
        assert_eq!(outs[1], second, "{name}");
    }
    let rows = bytes(&[0.5; 6]);
    let both = [
        (&m, (&keys).into(), &rows[..]),
        (&far, (&keys).into(), &rows[..]),
    ];
    Table::insert_together(&both).unwrap();
    for t in [&m, &far] {
        let mut out = vec![0u8; 24];
        t.find(&keys, Defaults::Row(&bytes(&[0.0, 0.0])), &mut out, None)
            .unwrap();
        assert_eq!(out, rows);
    }
    // A wrong row size is refused before anything is sent.
    let err = Table::insert_together(&[(&m, (&keys).into(), &rows[..4])]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "rows has 4 bytes, expected 3 rows x 8 bytes (2 x float32) = 24"
    );
}

#[test]
fn cluster_every_operation() {
    let c = Cluster::start();
    exercise(&c.config_json(json!({"storage_slice": 3})), "ops");
    exercise(
        &c.config_json(json!({"storage_slice": 6, "redis_hash_tags_hypodispersion": true})),
        "ops_hypo",
    );
    exercise(
        &c.config_json(json!({"storage_slice": 2, "using_hash_storage_slice": true})),
        "ops_crc",
    );
    exercise_on_replicas(
        // Replica reads are eventually consistent; WAIT makes the test's reads see its writes.
        &c.config_json(json!({"storage_slice": 3, "redis_read_access_slave": true,
            "redis_durable_write_replicas": 1})),
        "ops_replica_reads",
        &c.masters(),
        &c.replicas(),
    );
    // Topology-derived tags, as TFRA measured on the same slot layout.
    let (t, _) = open_table(
        &config(&c.config_json(json!({"storage_slice": 3}))),
        spec("tags", 1),
    )
    .unwrap();
    assert_eq!(
        t.bucket_names(),
        vec!["test:tags{3560}", "test:tags{18403}", "test:tags{18948}"]
    );
    // Keys spread over the buckets by their low 32 bits.
    t.insert(&[0, 1, 2, 3], &bytes(&[0.0; 4])).unwrap();
    let port = c
        .node_for_slot(tfra_redis::layout::key_slot(b"test:tags{18403}"))
        .port();
    assert_eq!(
        support::redis_cli(port, &["HLEN", "test:tags{18403}"]).trim(),
        "1"
    );

    // One bucket replaced by a string: the lookup fails naming that bucket and node, even
    // though the other nodes' rows were already handed over; the next lookup works.
    support::redis_cli(port, &["DEL", "test:tags{18403}"]);
    support::redis_cli(port, &["SET", "test:tags{18403}", "x"]);
    let default = bytes(&[-1.0]);
    let mut out = vec![0u8; 16];
    let err = t
        .find(&[0, 1, 2, 3], Defaults::Row(&default), &mut out, None)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("WRONGTYPE") && text.contains("test:tags{18403}"),
        "{text}"
    );
    support::redis_cli(port, &["DEL", "test:tags{18403}"]);
    let mut exists = [false; 4];
    t.find(
        &[0, 1, 2, 3],
        Defaults::Row(&default),
        &mut out,
        Some(&mut exists),
    )
    .unwrap();
    assert_eq!(exists.iter().filter(|&&e| e).count(), 3, "{exists:?}");

    // Writes to several tables at once: each node's commands are encoded in that node's
    // thread; every row lands in its own table's bucket on its own node.
    let cfg = config(&c.config_json(json!({"storage_slice": 3})));
    let (a, _) = open_table(&cfg, spec("together_a", 2)).unwrap();
    let (b, _) = open_table(&cfg, spec("together_b", 2)).unwrap();
    let keys: Vec<i64> = (0..5_000).map(|i| i * 7_919 - 20_000).collect();
    let rows_a: Vec<f32> = (0..keys.len() * 2).map(|i| i as f32).collect();
    let rows_b: Vec<f32> = rows_a.iter().map(|v| -v).collect();
    let (rows_a, rows_b) = (bytes(&rows_a), bytes(&rows_b));
    Table::insert_together(&[
        (&a, (&keys).into(), &rows_a[..]),
        (&b, (&keys).into(), &rows_b[..]),
    ])
    .unwrap();
    for (t, rows) in [(&a, &rows_a), (&b, &rows_b)] {
        let mut out = vec![0u8; rows.len()];
        let mut exists = vec![false; keys.len()];
        t.find(
            &keys,
            Defaults::Row(&bytes(&[0.0, 0.0])),
            &mut out,
            Some(&mut exists),
        )
        .unwrap();
        assert!(exists.iter().all(|&e| e));
        assert_eq!(&out, rows);
    }
}

#[test]
fn sentinel_every_operation() {
    let s = Sentinel::start();
    exercise(&s.config_json(json!({})), "ops");
    exercise_on_replicas(
        // Replica reads are eventually consistent; WAIT makes the test's reads see its writes.
        &s.config_json(json!({"redis_read_access_slave": true, "redis_durable_write_replicas": 1})),
        "ops_replica",
        &[&s.master],
        &[&s.replica],
    );
    let bad = s.config_json(json!({"redis_master_name": "nosuchmaster"}));
    let err = open_table(&config(&bad), spec("x", 1)).unwrap_err();
    assert!(err.to_string().contains("nosuchmaster"), "{err}");
}

#[test]
fn acl_users_and_passwords() {
    let s = Standalone::start_with(ServerOptions {
        password: Some("topsecret".into()),
        acl_users: vec![
            "alice on >s3cret ~* +@all".into(),
            "reader on >r3ad ~* +@read -@write".into(),
        ],
        ..Default::default()
    });
    exercise(&s.config_json(json!({})), "default_user");
    let alice = s.config_json(json!({"redis_user": "alice", "redis_password": "s3cret"}));
    exercise(&alice, "alice");

    let reader = s.config_json(json!({"redis_user": "reader", "redis_password": "r3ad"}));
    let (t, _) = open_table(&config(&reader), spec("alice", 2)).unwrap();
    let err = t.insert(&[1], &bytes(&[0.0; 2])).unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("hset"),
        "names the command: {err}"
    );

    let wrong = s.config_json(json!({"redis_user": "alice", "redis_password": "nope"}));
    let err = open_table(&config(&wrong), spec("alice", 2)).unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("nope"), "password leaked: {err}");
}

#[test]
fn mode_mismatch_and_unreachable_server() {
    let s = Standalone::start();
    let as_cluster = s.config_json(json!({"redis_connection_mode": 0}));
    let err = open_table(&config(&as_cluster), spec("x", 1)).unwrap_err();
    assert!(matches!(err, Error::ModeMismatch { .. }), "{err}");

    let port = support::find_free_port(false);
    let dead = json!({"redis_connection_mode": 2, "redis_host_ip": ["127.0.0.1"],
        "redis_host_port": [port], "redis_retry_deadline_ms": 0})
    .to_string();
    let start = std::time::Instant::now();
    let err = open_table(&config(&dead), spec("x", 1)).unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn cluster_config_on_standalone_and_reverse() {
    let c = Cluster::start();
    let mut cfg: serde_json::Value = serde_json::from_str(&c.config_json(json!({}))).unwrap();
    cfg["redis_connection_mode"] = json!(2);
    let err = open_table(&config(&cfg.to_string()), spec("x", 1)).unwrap_err();
    assert!(matches!(err, Error::ModeMismatch { .. }), "{err}");
}

fn fixture_dir() -> std::path::PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = here.join("../../tests/fixtures/tfra-0.8.1-standalone");
    assert!(dir.exists(), "TFRA fixture missing at {}", dir.display());
    dir
}

fn fixture_config(port: u16, model_lib: &Path) -> String {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let mut cfg = manifest["tfra_config_used"].clone();
    cfg["redis_host_port"] = json!([port]);
    cfg["model_lib_abs_dir"] = json!(model_lib.to_string_lossy());
    cfg.to_string()
}

fn check_fixture_rows(t: &Table) {
    let keys: Vec<i64> = (0..1000).collect();
    let (got, exists) = find(t, &keys, -7.0);
    assert!(exists.iter().all(|e| *e), "every fixture row is found");
    for k in 0..1000usize {
        let kf = k as f32;
        assert_eq!(&got[k * 4..k * 4 + 4], &[kf, kf * 0.5, -kf, kf + 0.25]);
    }
    assert_eq!(t.size().unwrap(), 1000);
}

#[test]
fn reads_the_rdb_written_by_tfra() {
    let work = tempdir("rdb");
    std::fs::copy(fixture_dir().join("dump.rdb"), work.join("dump.rdb")).unwrap();
    let s = Standalone::start_with(ServerOptions {
        dir: Some(work.to_path_buf()),
        dbfilename: Some("dump.rdb".into()),
        ..Default::default()
    });
    let cfg = config(&fixture_config(s.port(), &work));
    let (t, _) = open_table(&cfg, spec("fixture_table", 4)).unwrap();
    assert_eq!(t.bucket_names()[0], "fixture:fixture_table{3560}");
    check_fixture_rows(&t);
    // Bytes we write are TFRA's bytes: rewriting key 695's row leaves the hash's DUMP payload
    // unchanged.
    let before = s
        .server
        .cli(&["DEBUG", "DIGEST-VALUE", "fixture:fixture_table{3560}"]);
    t.insert(&[695], &bytes(&[695.0, 347.5, -695.0, 695.25]))
        .unwrap();
    let after = s
        .server
        .cli(&["DEBUG", "DIGEST-VALUE", "fixture:fixture_table{3560}"]);
    assert_eq!(before, after);
}

#[test]
fn restores_the_dump_files_written_by_tfra() {
    let work = tempdir("model_lib");
    let lib = work.join("model_lib");
    copy_dir(&fixture_dir().join("model_lib"), &lib);
    let s = Standalone::start();
    let cfg = config(&fixture_config(s.port(), &lib));
    let (t, _) = open_table(&cfg, spec("fixture_table", 4)).unwrap();
    t.clear().unwrap();
    assert_eq!(
        store::restore_files(&t).unwrap(),
        1,
        "the empty file is skipped"
    );
    check_fixture_rows(&t);

    // And our own save writes the same kind of payload back, keeping the older file.
    let written = store::save_files(&t).unwrap();
    assert_eq!(written.len(), 2);
    let kept = std::fs::read_dir(lib.join("fixture"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".rdb.")
        })
        .count();
    assert_eq!(kept, 2, "older files are kept with a timestamp suffix");
    t.clear().unwrap();
    store::restore_files(&t).unwrap();
    check_fixture_rows(&t);
}

/// A fresh directory under the system temp dir, removed (with its contents) when dropped, so
/// passing and failing tests alike leave nothing behind. Declare it before any server using it:
/// locals drop in reverse order, so the server stops before its directory goes.
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "tfra-redis-test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            let mut perm = std::fs::metadata(&target).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&target, perm).unwrap();
        }
    }
}

#[test]
fn ids_outside_int32_are_refused_by_int32_tables() {
    // Encoding keeps the low 32 bits: 1 << 40 would have read and written id 0's row.
    let s = Standalone::start();
    let cfg = config(&s.config_json(json!({})));
    let spec = TableSpec::new(
        "int32_range",
        KeyDtype::I32,
        ValueDtype::F32,
        Dim::new(2).unwrap(),
    );
    let (t, _) = open_table(&cfg, spec).unwrap();
    let rows = bytes(&[1.0, 2.0]);
    for bad in [1i64 << 40, i64::from(i32::MIN) - 1] {
        let err = t.insert(&[bad], &rows).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    kind: ArgumentKind::KeyOutOfRange,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&bad.to_string()), "{err}");
        let mut out = vec![0u8; t.row_bytes()];
        let d = bytes(&[0.0, 0.0]);
        assert!(t.find(&[bad], Defaults::Row(&d), &mut out, None).is_err());
        assert!(t.remove(&[bad]).is_err());
        assert!(t.accum(&[bad], &rows, &[false]).is_err());
    }
    assert_eq!(t.size().unwrap(), 0, "nothing was written");
    t.insert(
        &[i64::from(i32::MAX), i64::from(i32::MIN)],
        &bytes(&[1.0, 2.0, 3.0, 4.0]),
    )
    .unwrap();
    assert_eq!(find(&t, &[i64::from(i32::MIN)], 0.0).0, [3.0, 4.0]);
}
