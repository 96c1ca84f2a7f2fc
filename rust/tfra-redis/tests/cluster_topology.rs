//! How the cluster backend follows a changing topology, against real clusters: a MOVED is used
//! at once (the full slot map refresh runs beside the next call), a failed replica read falls
//! back to the master, pools of nodes that left are dropped, NULL endpoints (Redis 7's
//! `unknown-endpoint`) mean the host asked, and one node with an outdated view of the slots
//! does not decide the map.
//!
//! Counts come from the servers themselves (`INFO commandstats` for `CLUSTER SLOTS` queries,
//! `INFO errorstats` for MOVED replies, `INFO clients` for open connections).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Cluster, RedisServer, ServerOptions, command_calls, error_replies, wait_until};
use tfra_redis::codec::{Dim, KeyDtype, ValueDtype};
use tfra_redis::config::RedisConfig;
use tfra_redis::table::{Defaults, Table, TableSpec};
use tfra_redis::{Error, TableBuilder};

fn open_table(
    config: &RedisConfig,
    spec: TableSpec,
) -> tfra_redis::Result<(tfra_redis::Table, Vec<String>)> {
    TableBuilder::from_spec(config, spec).open_with_notes()
}

const DIM: usize = 4;

fn open(config_json: &str, name: &str) -> Table {
    let config = RedisConfig::from_json_str(config_json, "<test>").unwrap().0;
    let spec = TableSpec::new(name, KeyDtype::I64, ValueDtype::F32, Dim::new(DIM).unwrap());
    open_table(&config, spec).unwrap().0
}

fn rows(keys: &[i64], value: f32) -> Vec<u8> {
    keys.iter()
        .flat_map(|_| [value; DIM])
        .flat_map(f32::to_le_bytes)
        .collect()
}

fn find(t: &Table, keys: &[i64]) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; keys.len() * t.row_bytes()];
    t.find(keys, Defaults::Row(&rows(&[0], -1.0)), &mut out, None)?;
    Ok(out)
}

fn slot_queries(c: &Cluster) -> u64 {
    c.nodes
        .iter()
        .map(|n| command_calls(n, "cluster|slots"))
        .sum()
}

fn moved_replies(c: &Cluster) -> u64 {
    c.nodes.iter().map(|n| error_replies(n, "MOVED")).sum()
}

fn connected_clients(server: &RedisServer) -> u64 {
    server
        .info_field("clients", "connected_clients")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_moved_command_goes_to_its_target_at_once_and_the_map_is_refreshed_beside_the_next_call() {
    let c = Cluster::start();
    let t = open(&c.config_json(json!({"storage_slice": 3})), "moved");
    let keys: Vec<i64> = (0..3000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    let slot = t.buckets()[0].slot();
    let moved_to = c.move_slot(slot);
    let (queries, moved) = (slot_queries(&c), moved_replies(&c));

    // The client's map still names the old master: the lookup meets MOVED for one bucket.
    assert_eq!(find(&t, &keys).unwrap(), rows(&keys, 1.0));
    assert!(moved_replies(&c) > moved, "the lookup never met the MOVED");
    assert_eq!(
        slot_queries(&c),
        queries,
        "the redirected lookup waited for a full slot map refresh"
    );
    assert_eq!(c.node_for_slot(slot).port(), moved_to);

    // The next call refreshes the whole map (a reshard moves many slots) beside its own
    // commands, which go by the patched map and meet no MOVED.
    let moved = moved_replies(&c);
    t.insert(&keys, &rows(&keys, 2.0)).unwrap();
    assert!(slot_queries(&c) > queries, "no refresh after the MOVED");
    assert_eq!(moved_replies(&c), moved);
    let queries = slot_queries(&c);
    assert_eq!(find(&t, &keys).unwrap(), rows(&keys, 2.0));
    assert_eq!(
        slot_queries(&c),
        queries,
        "one refresh per MOVED, not one per call"
    );
}

#[test]
fn a_failed_replica_read_falls_back_to_the_master() {
    // A long node timeout, so that the pause does not become a failover.
    let mut c = Cluster::start_with(ServerOptions {
        cluster_node_timeout_ms: Some(30_000),
        ..ServerOptions::default()
    });
    let t = open(
        &c.config_json(json!({
            "storage_slice": 3,
            "redis_read_access_slave": true,
            // Writes wait for the replicas, so reads from them see the rows.
            "redis_durable_write_replicas": 1,
            "redis_socket_timeout": 500,
        })),
        "replica_fallback",
    );
    let keys: Vec<i64> = (0..3000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    assert_eq!(find(&t, &keys).unwrap(), rows(&keys, 1.0));
    let replica_port = c.replicas()[0].port();
    let victim = c
        .nodes
        .iter()
        .position(|n| n.port() == replica_port)
        .unwrap();
    c.nodes[victim].pause();
    // The paused replica costs this lookup one socket timeout, then its master answers.
    let started = Instant::now();
    let found = find(&t, &keys);
    let first = started.elapsed();
    // Later lookups leave the replica alone for a while.
    let started = Instant::now();
    let again = find(&t, &keys);
    let second = started.elapsed();
    c.nodes[victim].resume();
    assert_eq!(found.unwrap(), rows(&keys, 1.0));
    assert_eq!(again.unwrap(), rows(&keys, 1.0));
    assert!(first < Duration::from_millis(1500), "{first:?}");
    assert!(second < Duration::from_millis(400), "{second:?}");
}

#[test]
fn pools_of_a_node_that_left_the_cluster_are_dropped() {
    let c = Cluster::start();
    // No durable writes: the master of the removed replica has no replica left to wait for.
    let config = c.config_json(json!({"storage_slice": 3, "redis_read_access_slave": true}));
    let t = open(&config, "left");
    let keys: Vec<i64> = (0..3000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    // Reads from every replica; they may lag behind, so only the connections matter here.
    find(&t, &keys).unwrap();
    let replica_port = c.replicas()[0].port();
    let leaving = c
        .nodes
        .iter()
        .position(|n| n.port() == replica_port)
        .unwrap();
    // Our pooled read connections, plus redis-cli asking.
    assert!(connected_clients(&c.nodes[leaving]) >= 2);
    c.remove_replica(leaving);
    // Opening a table on the same connection settings asks for the topology again.
    let t2 = open(&config, "left_again");
    wait_until(
        Duration::from_secs(5),
        "the pooled connections to the removed replica are closed",
        || connected_clients(&c.nodes[leaving]) == 1,
    );
    t2.insert(&keys, &rows(&keys, 2.0)).unwrap();
    wait_until(Duration::from_secs(5), "the replicas have the rows", || {
        find(&t2, &keys).unwrap() == rows(&keys, 2.0)
    });
    assert_eq!(
        connected_clients(&c.nodes[leaving]),
        1,
        "the removed replica was used again"
    );
}

#[test]
fn null_endpoints_mean_the_host_asked() {
    let c = Cluster::start();
    // Nodes behind a load balancer: CLUSTER SLOTS names no endpoint (NULL) and MOVED says
    // `MOVED <slot> :<port>`. Both mean the host the client asked.
    for node in &c.nodes {
        let out = node.cli(&[
            "CONFIG",
            "SET",
            "cluster-preferred-endpoint-type",
            "unknown-endpoint",
        ]);
        assert_eq!(out, "OK");
    }
    let t = open(
        &c.config_json(json!({"storage_slice": 3})),
        "null_endpoints",
    );
    let keys: Vec<i64> = (0..3000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    let moved = moved_replies(&c);
    c.move_slot(t.buckets()[1].slot());
    assert_eq!(find(&t, &keys).unwrap(), rows(&keys, 1.0));
    assert!(moved_replies(&c) > moved, "the lookup never met the MOVED");
    t.insert(&keys, &rows(&keys, 2.0)).unwrap();
    assert_eq!(find(&t, &keys).unwrap(), rows(&keys, 2.0));
}

/// A node that answers `CLUSTER SLOTS` with an outdated view: the slots of the third master
/// still on the first, as before a reshard. Real nodes disagree only for a moment (a node cut
/// off from the others, or one that has not heard of a change yet), which a test cannot hold
/// still, so this is a scripted RESP server; it answers `INFO` as a cluster node, `PING`, and
/// refuses everything else.
fn outdated_node(masters: [u16; 3]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let node = |port: u16| format!("*3\r\n$9\r\n127.0.0.1\r\n:{port}\r\n$4\r\nnode\r\n");
    let range = |a: u16, b: u16, port: u16| format!("*3\r\n:{a}\r\n:{b}\r\n{}", node(port));
    let slots = format!(
        "*3\r\n{}{}{}",
        range(0, 5460, masters[0]),
        range(5461, 10922, masters[1]),
        range(10923, 16383, masters[0]),
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let slots = slots.clone();
            std::thread::spawn(move || serve(stream, &slots));
        }
    });
    port
}

fn serve(stream: TcpStream, slots: &str) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let Some(n) = line
            .trim()
            .strip_prefix('*')
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return;
        };
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            line.clear();
            reader.read_line(&mut line).unwrap(); // $len
            line.clear();
            reader.read_line(&mut line).unwrap();
            args.push(line.trim_end().to_ascii_uppercase());
        }
        let reply = match args.first().map(String::as_str) {
            Some("INFO") => "$19\r\ncluster_enabled:1\r\n\r\n".to_string(),
            Some("PING") => "+PONG\r\n".to_string(),
            Some("CLUSTER") if args.get(1).map(String::as_str) == Some("SLOTS") => {
                slots.to_string()
            }
            _ => "-ERR scripted node\r\n".to_string(),
        };
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn one_node_with_an_outdated_view_does_not_decide_the_slot_map() {
    let c = Cluster::start();
    let masters: Vec<u16> = c.masters().iter().map(|m| m.port()).collect();
    let stale = outdated_node([masters[0], masters[1], masters[2]]);
    // The outdated node is the first seed: the one a refresh used to believe alone.
    let mut ports = vec![stale];
    ports.extend(c.seed_ports());
    let config = json!({
        "redis_connection_mode": 0,
        "redis_host_ip": vec!["127.0.0.1"; ports.len()],
        "redis_host_port": ports,
        // Fixed tags spread over the whole slot space, so buckets sit in every master's range.
        "redis_hash_tags_hypodispersion": true,
        "storage_slice": 16,
    });
    let moved = moved_replies(&c);
    let t = open(&config.to_string(), "outdated");
    let keys: Vec<i64> = (0..3000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    assert_eq!(find(&t, &keys).unwrap(), rows(&keys, 1.0));
    assert_eq!(
        moved_replies(&c),
        moved,
        "rows went to the master of the outdated view"
    );
}

/// A distinct row per key, so that a row landing on the wrong key shows.
fn key_rows(keys: &[i64], salt: f32) -> Vec<u8> {
    keys.iter()
        .flat_map(|&k| (0..DIM).map(move |j| k as f32 * 8.0 + j as f32 + salt))
        .flat_map(f32::to_le_bytes)
        .collect()
}

#[test]
fn inserts_encoded_per_node_read_back_exactly_from_every_master() {
    // Each node's commands are encoded in that node's thread: many commands per node
    // (`keys_sending_size` 64, 6 buckets) and more than one window (65,536 keys each).
    let c = Cluster::start();
    let t = open(
        &c.config_json(json!({"storage_slice": 6, "keys_sending_size": 64})),
        "spread",
    );
    let keys: Vec<i64> = (0..70_000).map(|k| k * 7919 - 300_000).collect();
    t.insert(&keys, &key_rows(&keys, 0.5)).unwrap();
    for m in c.masters() {
        let held: u64 = m.cli(&["DBSIZE"]).parse().unwrap();
        assert!(held > 0, "master {} got no bucket", m.port());
    }
    assert_eq!(find(&t, &keys).unwrap(), key_rows(&keys, 0.5));
    assert_eq!(t.size().unwrap(), keys.len() as u64);
    // Overwrites and removals go the same way.
    t.insert(&keys[..5000], &key_rows(&keys[..5000], 1.25))
        .unwrap();
    t.remove(&keys[5000..6000]).unwrap();
    let mut expected = key_rows(&keys[..5000], 1.25);
    expected.extend(rows(&keys[5000..6000], -1.0));
    expected.extend(key_rows(&keys[6000..], 0.5));
    assert_eq!(find(&t, &keys).unwrap(), expected);
}

#[test]
fn an_insert_that_meets_moved_ends_exact() {
    let c = Cluster::start();
    let t = open(&c.config_json(json!({"storage_slice": 3})), "moved_insert");
    let keys: Vec<i64> = (0..3000).collect();
    t.insert(&keys, &key_rows(&keys, 0.0)).unwrap();
    let slot = t.buckets()[0].slot();
    let moved_to = c.move_slot(slot);
    let moved = moved_replies(&c);
    // The client's map still names the old master for one bucket: its HSET, encoded in that
    // node's thread, meets MOVED and is encoded again for the new master.
    t.insert(&keys, &key_rows(&keys, 3.0)).unwrap();
    assert!(moved_replies(&c) > moved, "the insert never met the MOVED");
    assert_eq!(c.node_for_slot(slot).port(), moved_to);
    assert_eq!(find(&t, &keys).unwrap(), key_rows(&keys, 3.0));
}

#[test]
fn an_insert_that_meets_ask_mid_migration_ends_exact() {
    let c = Cluster::start();
    let t = open(&c.config_json(json!({"storage_slice": 3})), "ask_insert");
    let keys: Vec<i64> = (0..3000).collect();
    t.insert(&keys, &key_rows(&keys, 0.0)).unwrap();
    // Half a reshard, as `redis-cli --cluster reshard` leaves it between steps: the bucket
    // is already on the target, the slot still belongs to the source, which answers ASK.
    let bucket = String::from_utf8(t.buckets()[0].as_bytes().to_vec()).unwrap();
    let slot = t.buckets()[0].slot();
    let source = c.node_for_slot(slot);
    let target = c
        .masters()
        .into_iter()
        .find(|m| m.port() != source.port())
        .unwrap();
    let (source_id, target_id) = (
        source.cli(&["CLUSTER", "MYID"]),
        target.cli(&["CLUSTER", "MYID"]),
    );
    let slot_s = slot.to_string();
    target.cli(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &source_id]);
    source.cli(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &target_id]);
    let port = target.port().to_string();
    assert_eq!(
        source.cli(&["MIGRATE", "127.0.0.1", &port, &bucket, "0", "5000"]),
        "OK"
    );
    let asked = error_replies(source, "ASK");
    t.insert(&keys, &key_rows(&keys, 2.0)).unwrap();
    assert!(
        error_replies(source, "ASK") > asked,
        "the insert never met the ASK"
    );
    for m in c.masters() {
        m.cli(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &target_id]);
    }
    assert_eq!(find(&t, &keys).unwrap(), key_rows(&keys, 2.0));
}
