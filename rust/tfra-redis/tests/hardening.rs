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
use tfra_redis::store::{self, OpenOptions};
use tfra_redis::table::{Table, TableSpec};
use tfra_redis::{Error, Result};

fn spec(name: &str) -> TableSpec {
    TableSpec {
        name: name.into(),
        key_dtype: KeyDtype::I64,
        value_dtype: ValueDtype::F32,
        dim: Dim::new(2).unwrap(),
    }
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
        assert_slice_error(Table::open(&config, spec("too_many")), key, n);
        assert_slice_error(store::open_table(&config, spec("too_many")), key, n);
        let options = OpenOptions {
            persist: false,
            rebucket: false,
        };
        assert_slice_error(
            store::open_table_with(&config, spec("too_many"), options),
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
    let t = Table::open(&config, spec("slot_count")).unwrap();
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
