//! The public API's promises: one way to open a table, errors a program can act on.

mod support;

use std::error::Error as _;

use serde_json::json;
use tfra_redis::{ArgumentKind, Error, KeyBuf, KeyDtype, RedisConfig, TableBuilder, ValueDtype};

#[test]
fn a_refused_connection_chains_to_the_io_error() {
    // Nothing listens on a port the test rig hands out and does not start.
    let port = support::find_free_port(false);
    let config = RedisConfig::standalone("127.0.0.1", port);
    let err = TableBuilder::new(&config)
        .name("t")
        .dim(2)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    assert!(err.is_transient());
    let mut chain = Vec::new();
    let mut cause = err.source();
    while let Some(c) = cause {
        chain.push(c.to_string());
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
            return;
        }
        cause = c.source();
    }
    panic!("no std::io::Error under {err}: {chain:?}");
}

#[test]
fn a_server_error_is_the_source_of_a_command_error() {
    let s = support::Standalone::start();
    let config = RedisConfig::standalone("127.0.0.1", s.port()).with_model_tag("api");
    let table = TableBuilder::new(&config)
        .name("wrongtype")
        .dim(1)
        .open()
        .unwrap();
    // A string where the table's hash should be: every hash command answers WRONGTYPE.
    let bucket = table.bucket_names()[0].clone();
    s.server.cli(&["SET", &bucket, "x"]);
    let err = table.size().unwrap_err();
    assert!(matches!(err, Error::Command { .. }), "{err:?}");
    assert!(!err.is_transient());
    let source = err.source().expect("a Redis error underneath");
    assert!(source.to_string().contains("WRONGTYPE"), "{source}");
    s.server.cli(&["DEL", &bucket]);
}

#[test]
fn the_builder_names_what_is_missing() {
    let config = RedisConfig::standalone("127.0.0.1", 1);
    let err = TableBuilder::new(&config).dim(2).open().unwrap_err();
    assert_eq!(err.argument_kind(), Some(ArgumentKind::Config), "{err}");
    assert!(err.to_string().contains(".name("), "{err}");
    let err = TableBuilder::new(&config).name("t").open().unwrap_err();
    assert_eq!(err.argument_kind(), Some(ArgumentKind::Dim), "{err}");
    let err = TableBuilder::new(&config)
        .name("t")
        .dim(0)
        .open()
        .unwrap_err();
    assert_eq!(err.argument_kind(), Some(ArgumentKind::Dim), "{err}");
    // Nothing was connected to: port 1 would have been a Connection error.
}

#[test]
fn the_builder_and_the_json_config_open_the_same_table() {
    let s = support::Standalone::start();
    let built = RedisConfig::standalone("127.0.0.1", s.port()).with_model_tag("same");
    let (parsed, warnings) = RedisConfig::from_json_str(
        &s.config_json(json!({"model_tag_runtime": "same", "model_tag_import": "same"})),
        "<test>",
    )
    .unwrap();
    assert!(warnings.is_empty());
    assert_eq!(built, parsed);
    let a = TableBuilder::new(&built)
        .name("emb")
        .dim(1)
        .key_dtype(KeyDtype::I32)
        .value_dtype(ValueDtype::I64)
        .open()
        .unwrap();
    a.insert(&[5], &7i64.to_le_bytes()).unwrap();
    let b = TableBuilder::from_spec(&parsed, a.spec().clone())
        .open()
        .unwrap();
    assert_eq!(
        b.export().unwrap(),
        (KeyBuf::Ints(vec![5]), 7i64.to_le_bytes().to_vec())
    );
    // The config's JSON text round-trips too.
    assert_eq!(
        RedisConfig::from_json_str(&built.to_json(), "<json>")
            .unwrap()
            .0,
        built
    );
    a.clear().unwrap();
}
