//! A least-privileged ACL user can open and use a table in every mode.
//!
//! The user has `+@read +@write +@hash +@scripting +@connection` and, in cluster mode,
//! `+cluster|slots`: nothing `@admin` or `@dangerous`. The library used to need `ROLE`
//! (`@admin @dangerous`) to open a Sentinel table, so such a user could not use Sentinel mode.

mod support;

use serde_json::json;
use support::{
    Cluster, LEAST_PRIVILEGE_CLUSTER_USER, LEAST_PRIVILEGE_USER, Sentinel, SentinelOptions,
    ServerOptions, Standalone,
};
use tfra_redis::codec::{Dim, KeyDtype, ValueDtype};
use tfra_redis::config::RedisConfig;
use tfra_redis::table::{Defaults, TableSpec};
use tfra_redis::{Error, TableBuilder};

fn open_table(
    config: &RedisConfig,
    spec: TableSpec,
) -> tfra_redis::Result<(tfra_redis::Table, Vec<String>)> {
    TableBuilder::from_spec(config, spec).open_with_notes()
}

const DIM: usize = 4;

fn as_user(config_json: String) -> RedisConfig {
    let mut value: serde_json::Value = serde_json::from_str(&config_json).unwrap();
    value["redis_user"] = json!("lp");
    value["redis_password"] = json!("lp-secret");
    RedisConfig::from_json_str(&value.to_string(), "<test>")
        .unwrap()
        .0
}

fn spec(name: &str) -> TableSpec {
    TableSpec::new(name, KeyDtype::I64, ValueDtype::F32, Dim::new(DIM).unwrap())
}

fn rows(keys: &[i64], value: f32) -> Vec<u8> {
    keys.iter()
        .flat_map(|&k| [value + k as f32; DIM])
        .flat_map(f32::to_le_bytes)
        .collect()
}

/// Open, insert, find, accum (a script), size, export, clear: every operation of a training
/// job, as the least-privileged user.
fn round_trip(config: &RedisConfig, name: &str) {
    let (t, _) = open_table(config, spec(name)).unwrap_or_else(|e| panic!("open: {e}"));
    let keys: Vec<i64> = (0..2000).collect();
    t.insert(&keys, &rows(&keys, 1.0)).unwrap();
    let mut out = vec![0u8; keys.len() * t.row_bytes()];
    let mut exists = vec![false; keys.len()];
    t.find(
        &keys,
        Defaults::Row(&rows(&[0], -1.0)),
        &mut out,
        Some(&mut exists),
    )
    .unwrap();
    assert!(exists.iter().all(|e| *e));
    assert_eq!(out, rows(&keys, 1.0));
    t.accum(&keys, &rows(&vec![0; keys.len()], 1.0), &exists)
        .unwrap();
    t.find(&keys, Defaults::Row(&rows(&[0], -1.0)), &mut out, None)
        .unwrap();
    assert_eq!(out, rows(&keys, 2.0));
    assert_eq!(t.size().unwrap(), keys.len() as u64);
    let (ids, values) = t.export().unwrap();
    assert_eq!(ids.len(), keys.len());
    assert_eq!(values.len(), keys.len() * t.row_bytes());
    t.clear().unwrap();
    assert_eq!(t.size().unwrap(), 0);
}

#[test]
fn least_privileged_user_standalone() {
    let s = Standalone::start_with(ServerOptions {
        password: Some("adm1n".into()),
        acl_users: vec![LEAST_PRIVILEGE_USER.into()],
        ..Default::default()
    });
    round_trip(&as_user(s.config_json(json!({}))), "lp_standalone");
    // TFRA's default mode (Sentinel) pointed at this plain server falls back to it; telling
    // a plain server from a sentinel used to need INFO.
    round_trip(
        &as_user(s.config_json(json!({"redis_connection_mode": 1}))),
        "lp_default_mode",
    );
    // The mode check still works without INFO: a cluster config on this server is refused.
    let err = open_table(
        &as_user(s.config_json(json!({"redis_connection_mode": 0}))),
        spec("lp_mismatch"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ModeMismatch { .. }), "{err}");
}

#[test]
fn least_privileged_user_sentinel() {
    let s = Sentinel::start_with(SentinelOptions {
        acl_users: vec![LEAST_PRIVILEGE_USER.into()],
        ..Default::default()
    });
    round_trip(&as_user(s.config_json(json!({}))), "lp_sentinel");
    round_trip(
        &as_user(s.config_json(json!({"redis_read_access_slave": true}))),
        "lp_sentinel_replicas",
    );
}

#[test]
fn least_privileged_user_cluster() {
    let c = Cluster::start_with(ServerOptions {
        acl_users: vec![
            LEAST_PRIVILEGE_CLUSTER_USER.into(),
            // The same user without CLUSTER SLOTS: the one extra right cluster mode needs.
            "nodiscovery on >lp-secret ~* resetchannels -@all +@read +@write +@hash \
             +@scripting +@connection"
                .into(),
        ],
        ..Default::default()
    });
    round_trip(&as_user(c.config_json(json!({}))), "lp_cluster");
    round_trip(
        &as_user(c.config_json(json!({"redis_read_access_slave": true}))),
        "lp_cluster_replicas",
    );
    let mut config = as_user(c.config_json(json!({})));
    config.redis_user = "nodiscovery".into();
    let err = open_table(&config, spec("lp_nodiscovery")).unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("cluster|slots"),
        "names the missing right: {err}"
    );
}
