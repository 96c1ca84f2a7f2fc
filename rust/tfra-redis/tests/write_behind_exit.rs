//! `flush_deferred_writes_at_exit` stops the write-behind flusher threads for good, so this
//! runs in a process (test binary) of its own.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Standalone, f32_bytes};
use tfra_redis::TableBuilder;
use tfra_redis::codec::{Dim, KeyDtype, ValueDtype};
use tfra_redis::config::RedisConfig;
use tfra_redis::table::{Table, TableSpec};

#[test]
fn at_exit_the_flushers_stop_and_the_caller_sends_everything() {
    let s = Standalone::start();
    let json = s.config_json(json!({"redis_fused_row": true, "redis_write_behind_ms": 50}));
    let config = RedisConfig::from_json_str(&json, "<test>").unwrap().0;
    let spec = TableSpec::new(
        "exiting",
        KeyDtype::I64,
        ValueDtype::F32,
        Dim::new(2).unwrap(),
    );
    let t: Table = TableBuilder::from_spec(&config, spec).open().unwrap();
    t.clear().unwrap();
    let stored = |t: &Table| -> usize {
        t.bucket_names()
            .iter()
            .map(|b| s.server.cli(&["HLEN", b]).trim().parse::<usize>().unwrap())
            .sum()
    };
    let write = |keys: &[i64]| {
        let rows = f32_bytes(&vec![1.0; keys.len() * 2]);
        let slots = f32_bytes(&vec![2.0; keys.len() * 2]);
        t.insert_with_slots(keys, &rows, &slots).unwrap();
    };
    write(&[1, 2]);
    tfra_redis::flush_deferred_writes_at_exit().unwrap();
    assert_eq!(stored(&t), 2);
    // The flusher is gone: a write now waits past its delay for a command or a flush.
    write(&[3]);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(stored(&t), 2);
    tfra_redis::flush_deferred_writes().unwrap();
    assert_eq!(stored(&t), 3);
    t.clear().unwrap();
}
