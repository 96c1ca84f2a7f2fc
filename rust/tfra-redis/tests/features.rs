//! A config asking for what this build leaves out is a clear error at open, not a panic.
//! scripts/test runs this file with `--no-default-features`; with the default features it
//! checks that the modes are there.

use tfra_redis::{Error, RedisConfig, TableBuilder};

fn open_error(config: &RedisConfig) -> Error {
    TableBuilder::new(config)
        .name("t")
        .dim(1)
        .open()
        .unwrap_err()
}

fn assert_field(err: Error, key: &str, feature: &str) {
    match err {
        Error::ConfigField { field, message } => {
            assert_eq!(field, key);
            assert!(
                message.contains(&format!("Cargo feature `{feature}`")),
                "{message}"
            );
        }
        other => panic!("expected a {key} error, got {other:?}"),
    }
}

// Port 1: nothing listens there, so a build with the feature fails to connect instead.
#[test]
fn cluster_mode() {
    let err = open_error(&RedisConfig::cluster([("127.0.0.1", 1)]));
    if cfg!(feature = "cluster") {
        assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    } else {
        assert_field(err, "redis_connection_mode", "cluster");
    }
}

#[test]
fn sentinel_mode() {
    let err = open_error(&RedisConfig::sentinel("mymaster", [("127.0.0.1", 1)]));
    if cfg!(feature = "sentinel") {
        assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    } else {
        assert_field(err, "redis_connection_mode", "sentinel");
    }
}

#[test]
fn tls() {
    let mut config = RedisConfig::standalone("127.0.0.1", 1);
    config.redis_tls = true;
    let err = open_error(&config);
    if cfg!(feature = "tls") {
        assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    } else {
        assert_field(err, "redis_tls", "tls");
    }
}
