//! Failure behaviour of the backends against real servers: paused servers time out once (not
//! once per command), a failed cluster node is named, accum survives restarts and redirects
//! without running twice, and threads get errors instead of hanging on a dead server.
//!
//! Every test starts its own servers: they are paused, killed and resharded here.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Cluster, ServerOptions, Standalone};
use tfra_redis::codec::{Dim, KeyDtype, ValueDtype};
use tfra_redis::config::RedisConfig;
use tfra_redis::table::{Defaults, Table, TableSpec};
use tfra_redis::{Error, TableBuilder};

const DIM: usize = 4;

fn open(config_json: &str, name: &str) -> Table {
    let config = RedisConfig::from_json_str(config_json, "<test>").unwrap().0;
    let spec = TableSpec::new(name, KeyDtype::I64, ValueDtype::F32, Dim::new(DIM).unwrap());
    TableBuilder::from_spec(&config, spec).open().unwrap()
}

fn rows(keys: &[i64], value: f32) -> Vec<u8> {
    keys.iter()
        .flat_map(|_| [value; DIM])
        .flat_map(f32::to_le_bytes)
        .collect()
}

fn find(t: &Table, keys: &[i64]) -> Result<Vec<f32>, Error> {
    let mut out = vec![0u8; keys.len() * t.row_bytes()];
    let default = rows(&[0], -1.0);
    t.find(keys, Defaults::Row(&default), &mut out, None)?;
    Ok(out
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

#[test]
fn paused_server_times_out_once_not_once_per_command() {
    let mut s = Standalone::start();
    let t = open(
        &s.config_json(json!({"redis_socket_timeout": 300, "redis_connect_timeout": 300})),
        "paused",
    );
    // 100k keys: 98 HMGETs in two pipelines.
    let keys: Vec<i64> = (0..100_000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    s.server.pause();
    for attempt in ["pooled connection", "new connection"] {
        let started = Instant::now();
        let err = find(&t, &keys).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, Error::Timeout { .. }), "{attempt}: {err}");
        assert!(took < Duration::from_millis(1500), "{attempt}: {took:?}");
    }
    s.server.resume();
    assert_eq!(find(&t, &keys).unwrap(), vec![1.0; keys.len() * DIM]);
}

#[test]
fn paused_cluster_master_fails_its_part_and_is_named() {
    // A long node timeout, so that the pause does not become a failover.
    let mut c = Cluster::start_with(ServerOptions {
        cluster_node_timeout_ms: Some(30_000),
        ..ServerOptions::default()
    });
    let t = open(
        &c.config_json(json!({
            "storage_slice": 6,
            "redis_socket_timeout": 300,
            "redis_connect_timeout": 300
        })),
        "partial",
    );
    let keys: Vec<i64> = (0..30_000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    let victim_port = c.masters()[1].port();
    let victim_buckets: Vec<String> = t
        .buckets()
        .iter()
        .filter(|b| c.node_for_slot(b.slot()).port() == victim_port)
        .map(|b| b.to_string())
        .collect();
    assert!(!victim_buckets.is_empty() && victim_buckets.len() < t.buckets().len());
    let victim = c
        .nodes
        .iter()
        .position(|n| n.port() == victim_port)
        .unwrap();
    c.nodes[victim].pause();
    let started = Instant::now();
    let lookup = find(&t, &keys).unwrap_err();
    let write = t.insert(&keys, &rows(&keys, 2.0)).unwrap_err();
    let took = started.elapsed();
    c.nodes[victim].resume();
    for err in [&lookup, &write] {
        let text = err.to_string();
        assert!(matches!(err, Error::Timeout { .. }), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{victim_port}")), "{text}");
        assert!(victim_buckets.iter().any(|b| text.contains(b)), "{text}");
    }
    assert!(took < Duration::from_secs(3), "{took:?}");
    t.insert(&keys, &rows(&keys, 3.0)).unwrap();
    assert_eq!(find(&t, &keys).unwrap(), vec![3.0; keys.len() * DIM]);
}

#[test]
fn accum_after_a_restart_is_not_lost_to_stale_connections() {
    let mut s = Standalone::start_with(ServerOptions {
        save: Some("3600 1".into()),
        ..ServerOptions::default()
    });
    let t = open(&s.config_json(json!({})), "restart");
    let keys: Vec<i64> = (0..100).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    s.server.restart(); // SIGTERM saves the RDB
    t.accum(&keys, &rows(&keys, 1.0), &[true; 100]).unwrap();
    assert_eq!(find(&t, &keys).unwrap(), vec![2.0; 100 * DIM]);
}

#[test]
fn threads_get_errors_not_hangs_when_the_server_dies() {
    let mut s = Standalone::start();
    let t = open(
        &s.config_json(json!({"redis_conn_pool_size": 2, "redis_retry_deadline_ms": 1000})),
        "dead",
    );
    let keys: Vec<i64> = (0..2000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    s.server.kill();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..6).map(|_| scope.spawn(|| find(&t, &keys))).collect();
        for w in workers {
            let err = w.join().unwrap().unwrap_err();
            assert!(matches!(err, Error::Connection { .. }), "{err}");
        }
    });
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn accum_after_a_reshard_runs_exactly_once_per_bucket() {
    let c = Cluster::start();
    let t = open(&c.config_json(json!({"storage_slice": 3})), "moved");
    let keys: Vec<i64> = (0..3000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    // The client's slot map is now stale for one bucket: its accum command meets MOVED. Only
    // that command may be sent again; the other buckets' deltas ran already.
    let moved_to = c.move_slot(t.buckets()[0].slot());
    assert_eq!(c.node_for_slot(t.buckets()[0].slot()).port(), moved_to);
    t.accum(&keys, &rows(&keys, 1.0), &vec![true; keys.len()])
        .unwrap();
    assert_eq!(find(&t, &keys).unwrap(), vec![2.0; keys.len() * DIM]);
}

#[test]
fn default_sentinel_mode_falls_back_to_a_password_protected_plain_server() {
    // TFRA's default mode is Sentinel; pointed at a plain server it connects directly. The
    // probe's sentinel credentials are refused by a protected server, which must not stop it.
    let s = Standalone::start_with(ServerOptions {
        password: Some("pw-of-the-server".into()),
        ..ServerOptions::default()
    });
    for extra in [
        json!({"redis_connection_mode": 1}),
        json!({"redis_connection_mode": 1, "redis_sentinel_password": "other"}),
    ] {
        let t = open(&s.config_json(extra), "fallback");
        t.insert(&[1], &rows(&[1], 5.0)).unwrap();
        assert_eq!(find(&t, &[1]).unwrap(), vec![5.0; DIM]);
    }
}

#[test]
fn calls_after_a_cluster_master_paused_wait_one_socket_timeout_not_two() {
    // A long node timeout, so that the pause does not become a failover.
    let mut c = Cluster::start_with(ServerOptions {
        cluster_node_timeout_ms: Some(30_000),
        ..ServerOptions::default()
    });
    let t = open(
        &c.config_json(json!({"storage_slice": 3, "redis_socket_timeout": 1000})),
        "slot_refresh",
    );
    let keys: Vec<i64> = (0..3_000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    // The master of slot 0 is the first node a slot map refresh used to ask.
    let victim_port = c.node_for_slot(0).port();
    let victim = c
        .nodes
        .iter()
        .position(|n| n.port() == victim_port)
        .unwrap();
    c.nodes[victim].pause();
    let mut took = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let err = find(&t, &keys).unwrap_err();
        took.push(started.elapsed());
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("per wait"), "{err}");
    }
    c.nodes[victim].resume();
    // Each call meets the paused master once (its own pipeline, 1 s). Before, every call after
    // the first asked the paused master for the slot map first: 2.05 s. The margin is for a
    // loaded machine; the item under test is this time bound itself.
    for d in &took {
        assert!(*d < Duration::from_millis(1800), "{took:?}");
    }
    assert_eq!(find(&t, &keys).unwrap(), vec![1.0; keys.len() * DIM]);
}
