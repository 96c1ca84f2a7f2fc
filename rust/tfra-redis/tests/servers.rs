//! The integration-test harness itself: each topology starts and answers, and the server
//! controls (pause, kill, restart, failover) do what the tests built on them expect.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    Cluster, Sentinel, ServerOptions, Standalone, answers_ping_within, parse_info, redis_cli,
    redis_cli_as,
};

#[test]
fn standalone_answers_ping_and_builds_its_config() {
    let standalone = Standalone::start();
    assert_eq!(redis_cli(standalone.port(), &["PING"]), "PONG");
    let config: Value =
        serde_json::from_str(&standalone.config_json(json!({"storage_slice": 2}))).unwrap();
    assert_eq!(config["redis_connection_mode"], 2);
    assert_eq!(config["redis_host_ip"], json!(["127.0.0.1"]));
    assert_eq!(config["redis_host_port"], json!([standalone.port()]));
    assert_eq!(config["storage_slice"], 2);
}

#[test]
fn acl_users_and_password_are_enforced() {
    let standalone = Standalone::start_with(ServerOptions {
        password: Some("adm1n".into()),
        acl_users: vec![
            "alice on >s3cret ~* +@all".into(),
            "reader on >r3ad ~* +@read -@write".into(),
        ],
        ..ServerOptions::default()
    });
    let port = standalone.port();
    assert!(redis_cli(port, &["GET", "k"]).contains("NOAUTH"));
    assert_eq!(
        redis_cli_as(port, Some("alice"), Some("s3cret"), &["SET", "k", "v"]),
        "OK"
    );
    assert_eq!(
        redis_cli_as(port, Some("reader"), Some("r3ad"), &["GET", "k"]),
        "v"
    );
    assert!(
        redis_cli_as(port, Some("reader"), Some("r3ad"), &["SET", "k", "w"]).contains("NOPERM")
    );
    let config: Value = serde_json::from_str(&standalone.config_json(Value::Null)).unwrap();
    assert_eq!(config["redis_password"], "adm1n");
}

#[test]
fn pause_resume_kill_and_restart() {
    let mut standalone = Standalone::start();
    let port = standalone.port();
    standalone.server.pause();
    assert!(!answers_ping_within(port, Duration::from_millis(300)));
    standalone.server.resume();
    assert!(answers_ping_within(port, Duration::from_secs(2)));

    standalone.server.kill();
    assert_eq!(standalone.server.pid(), None);
    assert!(redis_cli(port, &["PING"]).contains("Connection refused"));
    standalone.server.restart();
    assert_eq!(standalone.server.port(), port);
    assert_eq!(redis_cli(port, &["PING"]), "PONG");
}

#[test]
fn cluster_has_three_masters_with_linked_replicas() {
    let started = Instant::now();
    let cluster = Cluster::start();
    eprintln!("cluster settled in {:?}", started.elapsed());
    for node in &cluster.nodes {
        assert_eq!(node.cli(&["PING"]), "PONG");
        let state = parse_info(&node.cli(&["CLUSTER", "INFO"]));
        assert_eq!(state["cluster_state"], "ok");
    }
    let ranges: Vec<(u16, u16)> = cluster.slot_ranges().iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(ranges, [(0, 5460), (5461, 10922), (10923, 16383)]);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    assert_eq!(cluster.node_for_slot(12182).port(), masters[2].port());
    let replicas = cluster.replicas();
    assert_eq!(replicas.len(), 3);
    for replica in replicas {
        assert_eq!(
            replica
                .info_field("replication", "master_link_status")
                .as_deref(),
            Some("up")
        );
    }
    // "foo" hashes to slot 12182, so the first master redirects to the third.
    assert_eq!(masters[2].cli(&["SET", "foo", "bar"]), "OK");
    assert!(masters[0].cli(&["GET", "foo"]).starts_with("MOVED 12182"));
    let config: Value = serde_json::from_str(&cluster.config_json(Value::Null)).unwrap();
    assert_eq!(config["redis_connection_mode"], 0);
    assert_eq!(config["redis_host_port"].as_array().unwrap().len(), 6);
}

#[test]
fn sentinel_reports_the_master_and_fails_over() {
    let started = Instant::now();
    let mut topology = Sentinel::start();
    eprintln!("sentinel topology ready in {:?}", started.elapsed());
    for sentinel in &topology.sentinels {
        assert_eq!(sentinel.cli(&["PING"]), "PONG");
    }
    assert_eq!(topology.master.cli(&["PING"]), "PONG");
    let old_port = topology.current_master_port();
    assert_eq!(old_port, topology.master.port());
    let config: Value = serde_json::from_str(&topology.config_json(Value::Null)).unwrap();
    assert_eq!(config["redis_connection_mode"], 1);
    assert_eq!(config["redis_master_name"], "mymaster");
    assert_eq!(config["redis_host_port"].as_array().unwrap().len(), 3);

    topology.master.kill();
    let failover_started = Instant::now();
    let new_port = topology.wait_for_failover(old_port, Duration::from_secs(15));
    eprintln!("failover took {:?}", failover_started.elapsed());
    assert_eq!(new_port, topology.replica.port());
}
