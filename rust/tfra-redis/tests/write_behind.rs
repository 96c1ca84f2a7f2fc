//! `redis_write_behind_ms`: an optimizer step's write waits in the client for the next command
//! on its buckets and rides in front of it, against real servers. "Outside" is `redis-cli`,
//! another process, which sees only what reached Redis.

mod support;

use support::{f32_bytes as bytes, f32s as floats};

use std::time::Duration;

use serde_json::json;
use support::{Cluster, Standalone, wait_until};
use tfra_redis::codec::{Dim, KeyDtype, ValueDtype};
use tfra_redis::config::RedisConfig;
use tfra_redis::table::{Defaults, Lookup, Table, TableSpec};
use tfra_redis::{Error, TableBuilder};

const DIM: usize = 2;

fn open(json: &str, name: &str) -> Table {
    let config = RedisConfig::from_json_str(json, "<test>").unwrap().0;
    let spec = TableSpec::new(name, KeyDtype::I64, ValueDtype::F32, Dim::new(DIM).unwrap());
    TableBuilder::from_spec(&config, spec).open().unwrap()
}

fn find(t: &Table, keys: &[i64]) -> tfra_redis::Result<Vec<f32>> {
    let mut rows = vec![0u8; keys.len() * t.row_bytes()];
    t.find(keys, Defaults::Row(&bytes(&[-1.0; DIM])), &mut rows, None)?;
    Ok(floats(&rows))
}

/// Fields stored in `t`'s buckets, as another client sees them.
fn outside_fields(cli: &dyn Fn(&[&str]) -> String, t: &Table) -> usize {
    t.bucket_names()
        .iter()
        .map(|b| cli(&["HLEN", b]).trim().parse::<usize>().unwrap())
        .sum()
}

/// A step write of a fused-row table: rows 1..=n with value `v`, slots `v + 100`.
fn step_write(t: &Table, n: i64, v: f32) {
    let keys: Vec<i64> = (1..=n).collect();
    let rows = bytes(&vec![v; keys.len() * DIM]);
    let slots = bytes(&vec![v + 100.0; keys.len() * DIM]);
    t.insert_with_slots(&keys[..], &rows, &slots).unwrap();
}

fn fused(s: &Standalone, delay_ms: u64) -> String {
    s.config_json(json!({"redis_fused_row": true, "redis_write_behind_ms": delay_ms}))
}

#[test]
fn a_step_write_waits_for_the_next_command_on_its_buckets_and_rides_with_it() {
    let s = Standalone::start();
    let cli = |args: &[&str]| s.server.cli(args);
    let t = open(&fused(&s, 600_000), "behind");
    t.clear().unwrap();
    step_write(&t, 3, 1.0);
    // Nobody else sees it yet: it waits in this process.
    assert_eq!(outside_fields(&cli, &t), 0);
    // This process does: the lookup carries the write in front of its own reads.
    assert_eq!(
        find(&t, &[1, 2, 3, 4]).unwrap(),
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0]
    );
    assert_eq!(outside_fields(&cli, &t), 3);

    // A table of other buckets neither carries nor waits for it.
    let other = open(&fused(&s, 600_000), "other");
    other.clear().unwrap();
    step_write(&t, 2, 2.0);
    assert_eq!(find(&other, &[1]).unwrap(), [-1.0, -1.0]);
    // Another table object of the same rows without write-behind (same connection settings,
    // so the same backend) still sees the waiting write, and a plain insert lands after it.
    let plain = open(&s.config_json(json!({"redis_fused_row": true})), "behind");
    assert_eq!(find(&plain, &[1, 2]).unwrap(), [2.0, 2.0, 2.0, 2.0]);
    step_write(&t, 2, 3.0);
    plain.insert(&[2], &bytes(&[4.0, 4.0])).unwrap();
    assert_eq!(find(&t, &[1, 2]).unwrap(), [3.0, 3.0, 4.0, 4.0]);

    // An export scans the buckets: it carries the write too.
    step_write(&t, 3, 5.0);
    let (keys, values) = t.export().unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(floats(&values), [5.0; 3 * DIM]);
    t.clear().unwrap();
    other.clear().unwrap();
}

#[test]
fn a_write_nobody_carries_reaches_redis_within_the_delay_or_at_a_flush() {
    let s = Standalone::start();
    let cli = |args: &[&str]| s.server.cli(args);
    let t = open(&fused(&s, 50), "timed");
    t.clear().unwrap();
    step_write(&t, 4, 1.0);
    wait_until(
        Duration::from_secs(10),
        "the flusher sends the write",
        || outside_fields(&cli, &t) == 4,
    );

    let t = open(&fused(&s, 600_000), "flushed");
    t.clear().unwrap();
    step_write(&t, 5, 1.0);
    assert_eq!(outside_fields(&cli, &t), 0);
    tfra_redis::flush_deferred_writes().unwrap();
    assert_eq!(outside_fields(&cli, &t), 5);
}

#[test]
fn a_carried_write_that_fails_is_raised_and_kept() {
    let s = Standalone::start();
    let cli = |args: &[&str]| s.server.cli(args);
    let t = open(&fused(&s, 600_000), "failing");
    t.clear().unwrap();
    step_write(&t, 1, 1.0);
    find(&t, &[1]).unwrap();
    let bucket = t.bucket_names()[0].clone();
    step_write(&t, 1, 2.0);
    // Someone replaces the bucket with a string: the waiting HSET cannot run.
    assert_eq!(cli(&["SET", &bucket, "x"]).trim(), "OK");
    let err = find(&t, &[1]).unwrap_err();
    assert!(matches!(err, Error::Command { .. }), "{err}");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    // The write was not dropped: once the bucket is a hash again it lands, before the read.
    assert_eq!(cli(&["DEL", &bucket]).trim(), "1");
    assert_eq!(find(&t, &[1]).unwrap(), [2.0, 2.0]);
    assert_eq!(outside_fields(&cli, &t), 1);
    t.clear().unwrap();
}

#[test]
fn writes_together_wait_and_are_read_together() {
    let s = Standalone::start();
    let cli = |args: &[&str]| s.server.cli(args);
    let json = s.config_json(json!({"redis_write_behind_ms": 600_000}));
    let tables: Vec<Table> = ["p", "p_m", "p_v"].iter().map(|n| open(&json, n)).collect();
    for t in &tables {
        t.clear().unwrap();
    }
    let keys = [7i64, 8];
    let rows: Vec<Vec<u8>> = (0..3).map(|i| bytes(&[i as f32; 2 * DIM])).collect();
    let writes: Vec<_> = tables
        .iter()
        .zip(&rows)
        .map(|(t, r)| (t, (&keys[..]).into(), &r[..]))
        .collect();
    Table::insert_together(&writes).unwrap();
    assert_eq!(
        tables
            .iter()
            .map(|t| outside_fields(&cli, t))
            .sum::<usize>(),
        0
    );
    let default = bytes(&[-1.0; DIM]);
    let mut outs = vec![vec![0u8; 2 * DIM * 4]; 3];
    let mut lookups: Vec<Lookup<'_>> = tables
        .iter()
        .zip(outs.iter_mut())
        .map(|(t, out)| Lookup {
            table: t,
            keys: (&keys[..]).into(),
            defaults: Defaults::Row(&default),
            out,
        })
        .collect();
    Table::find_together(&mut lookups).unwrap();
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(floats(out), [i as f32; 2 * DIM]);
    }
    assert_eq!(
        tables
            .iter()
            .map(|t| outside_fields(&cli, t))
            .sum::<usize>(),
        6
    );
    for t in &tables {
        t.clear().unwrap();
    }
}

#[test]
fn steps_on_many_threads_always_read_their_own_last_write() {
    let s = Standalone::start();
    let json = fused(&s, 5);
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let json = &json;
            scope.spawn(move || {
                let t = open(json, &format!("threads{thread}"));
                t.clear().unwrap();
                for step in 0..150 {
                    step_write(&t, 64, step as f32);
                    let keys: Vec<i64> = (1..=64).collect();
                    assert_eq!(find(&t, &keys).unwrap(), vec![step as f32; 64 * DIM]);
                    if step % 7 == 0 {
                        // Let the flusher take some writes instead.
                        std::thread::sleep(Duration::from_millis(6));
                    }
                }
                t.clear().unwrap();
            });
        }
    });
}

#[test]
fn cluster_reads_carry_each_nodes_writes() {
    let c = Cluster::start();
    let json = c.config_json(json!({
        "storage_slice": 6,
        "redis_fused_row": true,
        "redis_write_behind_ms": 600_000,
    }));
    let t = open(&json, "clustered");
    t.clear().unwrap();
    let outside = |t: &Table| -> usize {
        c.nodes[..3]
            .iter()
            .map(|n| {
                t.bucket_names()
                    .iter()
                    .map(|b| {
                        let reply = n.cli(&["HLEN", b]);
                        reply.trim().parse::<usize>().unwrap_or(0)
                    })
                    .sum::<usize>()
            })
            .sum()
    };
    step_write(&t, 200, 1.0);
    assert_eq!(outside(&t), 0);
    let keys: Vec<i64> = (1..=200).collect();
    assert_eq!(find(&t, &keys).unwrap(), vec![1.0; 200 * DIM]);
    assert_eq!(outside(&t), 200);
    t.clear().unwrap();
}

#[test]
fn write_behind_and_durable_writes_are_a_config_error() {
    let text = r#"{"redis_write_behind_ms": 10, "redis_durable_write_replicas": 1}"#;
    let message = RedisConfig::from_json_str(text, "<test>")
        .unwrap_err()
        .to_string();
    assert!(message.contains("redis_write_behind_ms"), "{message}");
    assert!(
        message.contains("redis_durable_write_replicas"),
        "{message}"
    );
    let text = r#"{"redis_write_behind_ms": 3600001}"#;
    let message = RedisConfig::from_json_str(text, "<test>")
        .unwrap_err()
        .to_string();
    assert!(message.contains("redis_write_behind_ms"), "{message}");
}
