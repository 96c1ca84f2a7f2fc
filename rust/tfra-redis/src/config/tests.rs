//! Tests of parsing, validation and writing back; the file-finding tests are in `path.rs`.

use super::json::FIELDS;
use super::*;
use crate::error::Error;
use std::path::Path;

/// The config TFRA 0.8.1 used to write tests/fixtures/tfra-0.8.1-standalone
/// (`tfra_config_used` in its manifest.json), copied so the test runs anywhere.
pub(super) const FIXTURE_CONFIG: &str = r#"{
  "redis_connection_mode": 2, "redis_master_name": "master",
  "redis_host_ip": ["127.0.0.1"], "redis_host_port": [6379],
  "redis_user": "default", "redis_password": "", "redis_db": 0,
  "redis_read_access_slave": false, "redis_connect_keep_alive": false,
  "redis_connect_timeout": 1000, "redis_socket_timeout": 1000,
  "redis_conn_pool_size": 20, "redis_wait_timeout": 100000000,
  "redis_connection_lifetime": 100, "storage_slice_import": 2, "storage_slice": 2,
  "using_hash_storage_slice": false, "keys_sending_size": 1024,
  "using_md5_prefix_name": false, "redis_hash_tags_hypodispersion": false,
  "model_tag_import": "fixture", "redis_hash_tags_import": [],
  "model_tag_runtime": "fixture", "redis_hash_tags_runtime": [],
  "expire_model_tag_in_seconds": 604800, "table_store_mode": 1,
  "model_lib_abs_dir": "model_lib/"
}"#;

/// TFRA's 31 keys, in the order its C++ parser reads them.
const TFRA_KEYS: [&str; 31] = [
    "redis_connection_mode",
    "redis_master_name",
    "redis_host_ip",
    "redis_host_port",
    "redis_user",
    "redis_password",
    "redis_db",
    "redis_read_access_slave",
    "redis_connect_keep_alive",
    "redis_connect_timeout",
    "redis_socket_timeout",
    "redis_conn_pool_size",
    "redis_wait_timeout",
    "redis_connection_lifetime",
    "redis_sentinel_user",
    "redis_sentinel_password",
    "redis_sentinel_connect_timeout",
    "redis_sentinel_socket_timeout",
    "storage_slice_import",
    "storage_slice",
    "using_hash_storage_slice",
    "keys_sending_size",
    "using_md5_prefix_name",
    "redis_hash_tags_hypodispersion",
    "model_tag_import",
    "redis_hash_tags_import",
    "model_tag_runtime",
    "redis_hash_tags_runtime",
    "expire_model_tag_in_seconds",
    "table_store_mode",
    "model_lib_abs_dir",
];

fn parse(text: &str) -> Result<(RedisConfig, Vec<String>)> {
    RedisConfig::from_json_str(text, "<test>")
}

pub(super) fn parse_ok(text: &str) -> RedisConfig {
    parse(text).unwrap().0
}

fn parse_err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

/// A one-key config with the given JSON value.
fn one(key: &str, value: Value) -> String {
    serde_json::json!({ key: value }).to_string()
}

fn field_error(err: Error) -> (String, String) {
    match err {
        Error::ConfigField { field, message } => (field, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

// ---- defaults ----

#[test]
fn defaults_match_tfra_cpp() {
    let c = RedisConfig::default();
    assert_eq!(c.redis_connection_mode, ConnectionMode::Sentinel);
    assert_eq!(c.redis_master_name, "master");
    assert_eq!(c.redis_host_ip, ["127.0.0.1"]);
    assert_eq!(c.redis_host_port, [6379]);
    assert_eq!(c.redis_user, "default");
    assert_eq!(c.redis_password, "");
    assert_eq!(c.redis_db, 0);
    assert!(!c.redis_read_access_slave);
    assert!(!c.redis_connect_keep_alive);
    assert_eq!(c.redis_connect_timeout, 1000);
    assert_eq!(c.redis_socket_timeout, 1000);
    assert_eq!(c.redis_conn_pool_size, 20);
    assert_eq!(c.redis_wait_timeout, 100_000_000);
    assert_eq!(c.redis_connection_lifetime, 100);
    assert_eq!(c.redis_sentinel_user, "default");
    assert_eq!(c.redis_sentinel_password, "");
    assert_eq!(c.redis_sentinel_connect_timeout, 1000);
    assert_eq!(c.redis_sentinel_socket_timeout, 1000);
    assert_eq!(c.storage_slice_import, 1);
    assert_eq!(c.storage_slice, 1);
    assert!(!c.using_hash_storage_slice);
    assert_eq!(c.keys_sending_size, 1024);
    assert!(!c.using_md5_prefix_name);
    assert!(!c.redis_hash_tags_hypodispersion);
    assert_eq!(c.model_tag_import, "test");
    assert!(c.redis_hash_tags_import.is_empty());
    assert_eq!(c.model_tag_runtime, "test");
    assert!(c.redis_hash_tags_runtime.is_empty());
    assert_eq!(c.expire_model_tag_in_seconds, Some(604_800));
    assert_eq!(c.table_store_mode, StoreMode::Files);
    assert_eq!(c.model_lib_abs_dir, "/tmp/");
}

#[test]
fn defaults_of_our_fields() {
    let c = RedisConfig::default();
    assert!(!c.redis_tls);
    assert_eq!(c.redis_tls_ca_cert, "");
    assert_eq!(c.redis_tls_cert, "");
    assert_eq!(c.redis_tls_key, "");
    assert_eq!(c.redis_retry_deadline_ms, 30_000);
    assert!(!c.redis_lookup_defaults_on_error);
    assert_eq!(c.redis_durable_write_replicas, 0);
    assert_eq!(c.redis_durable_write_timeout_ms, 1000);
    assert_eq!(c.redis_client_buffer_keep_bytes, 4 << 20);
    assert_eq!(c.redis_conn_idle_timeout_ms, 300_000);
}

#[test]
fn default_is_valid() {
    RedisConfig::default().validate().unwrap();
}

#[test]
fn empty_object_gives_defaults() {
    let (config, warnings) = parse("{}").unwrap();
    assert_eq!(config, RedisConfig::default());
    assert!(warnings.is_empty());
}

#[test]
fn mode_codes_round_trip() {
    for mode in [
        ConnectionMode::Cluster,
        ConnectionMode::Sentinel,
        ConnectionMode::Standalone,
    ] {
        assert_eq!(ConnectionMode::from_code(mode.code()), Some(mode));
    }
    for mode in [StoreMode::Tensor, StoreMode::Files, StoreMode::Nothing] {
        assert_eq!(StoreMode::from_code(mode.code()), Some(mode));
    }
    assert_eq!(ConnectionMode::from_code(3), None);
    assert_eq!(StoreMode::from_code(-1), None);
}

// ---- real configs ----

#[test]
fn fixture_config_parses() {
    let (c, warnings) = parse(FIXTURE_CONFIG).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(c.redis_connection_mode, ConnectionMode::Standalone);
    assert_eq!(c.storage_slice, 2);
    assert_eq!(c.storage_slice_import, 2);
    assert_eq!(c.model_tag_runtime, "fixture");
    assert_eq!(c.model_tag_import, "fixture");
    assert_eq!(c.table_store_mode, StoreMode::Files);
    assert_eq!(c.model_lib_abs_dir, "model_lib/");
}

#[test]
fn fixture_manifest_config_matches_the_copy() {
    // The vendored fixture (tests/fixtures/README.md at the repository's root).
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tfra-0.8.1-standalone/manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("TFRA fixture {}: {e}", manifest.display()));
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let used = manifest["tfra_config_used"].to_string();
    let (config, warnings) = parse(&used).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(config, parse_ok(FIXTURE_CONFIG));
}

#[test]
fn seed_example_warns_about_unknown_field() {
    // The second example of the design note, as Python's json.dumps writes it.
    let text =
        r#"{"redis_host_ip": ["127.0.0.1"], "redis_host_port": [6379], "using_model_lib": false}"#;
    let (config, warnings) = parse(text).unwrap();
    assert_eq!(config, RedisConfig::default());
    assert_eq!(
        warnings,
        ["unknown redis config field(s) ignored: using_model_lib"]
    );
}

#[test]
fn several_unknown_fields_are_listed_in_one_warning() {
    let (_, warnings) = parse(r#"{"b_unknown": 1, "a_unknown": 2}"#).unwrap();
    assert_eq!(
        warnings,
        ["unknown redis config field(s) ignored: a_unknown, b_unknown"]
    );
}

#[test]
fn duplicate_key_last_wins_as_in_tfra() {
    assert_eq!(
        parse_ok(r#"{"storage_slice": 2, "storage_slice": 3}"#).storage_slice,
        3
    );
}

#[test]
fn utf8_bom_is_skipped() {
    assert_eq!(parse_ok("\u{feff}{\"storage_slice\": 2}").storage_slice, 2);
}

// ---- types ----

/// What Python's `str(value)` gives, as TFRA's test builds its corrupted values.
fn python_str(value: &Value) -> String {
    match value {
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => format!("'{s}'"),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(python_str).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

fn type_word(key: &str, value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "boolean",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) if key == "redis_host_port" => "integer array",
        Value::Array(_) => "string array",
        _ => unreachable!(),
    }
}

#[test]
fn every_field_with_a_wrong_type_is_named() {
    // TFRA's test_json_config_file_with_wrong_type: one field corrupted at a time,
    // non-strings become str(value), strings become 0.
    let mut base = RedisConfig {
        redis_connection_mode: ConnectionMode::Standalone,
        storage_slice: 4,
        storage_slice_import: 4,
        ..RedisConfig::default()
    };
    base.redis_hash_tags_runtime = vec!["1".into(), "2".into(), "3".into(), "4".into()];
    let Value::Object(base) = base.to_json_value() else {
        unreachable!()
    };
    assert_eq!(base.len(), FIELDS.len());
    for (key, value) in &base {
        let corrupted = match value {
            Value::String(_) => Value::from(0),
            other => Value::from(python_str(other)),
        };
        let mut config = base.clone();
        config.insert(key.clone(), corrupted.clone());
        let err = parse(&Value::Object(config).to_string()).unwrap_err();
        let expected = format!("{key} should be json {}", type_word(key, value));
        assert_eq!(err.to_string(), expected, "{key} = {corrupted}");
    }
}

#[test]
fn python_style_corruptions_look_like_tfra_tests() {
    assert_eq!(
        python_str(&serde_json::json!(["127.0.0.1"])),
        "['127.0.0.1']"
    );
    assert_eq!(python_str(&serde_json::json!(false)), "False");
    assert_eq!(python_str(&serde_json::json!([])), "[]");
}

#[test]
fn wrong_array_element_types() {
    assert_eq!(
        parse_err(r#"{"redis_host_ip": [1]}"#),
        "redis_host_ip should be json string array"
    );
    assert_eq!(
        parse_err(r#"{"redis_host_port": ["6379"]}"#),
        "redis_host_port should be json integer array"
    );
    // The RedisTableConfig docstring's scalar port, which TFRA rejects too.
    assert_eq!(
        parse_err(r#"{"redis_host_port": 6379}"#),
        "redis_host_port should be json integer array"
    );
    assert_eq!(
        parse_err(r#"{"redis_hash_tags_runtime": [3560]}"#),
        "redis_hash_tags_runtime should be json string array"
    );
}

#[test]
fn numbers_with_fraction_or_exponent_are_not_integers() {
    for text in ["2.0", "2.5", "1e3"] {
        let err = parse_err(&format!(r#"{{"storage_slice": {text}}}"#));
        assert_eq!(err, "storage_slice should be json integer");
    }
}

#[test]
fn null_is_a_type_error() {
    assert_eq!(
        parse_err(r#"{"redis_password": null}"#),
        "redis_password should be json string"
    );
}

#[test]
fn first_bad_field_in_tfra_order_is_reported() {
    let (field, _) =
        field_error(parse(r#"{"model_lib_abs_dir": 1, "redis_master_name": 1}"#).unwrap_err());
    assert_eq!(field, "redis_master_name");
}

// ---- syntax ----

#[test]
fn invalid_json_gives_line_and_column() {
    let err = parse("{\n  \"storage_slice\": 2,\n  oops\n}").unwrap_err();
    let Error::ConfigSyntax {
        source_name,
        line,
        column,
        ..
    } = &err
    else {
        panic!("expected a syntax error, got {err:?}");
    };
    assert_eq!(source_name, "<test>");
    assert_eq!((*line, *column), (3, 3));
    let text = err.to_string();
    assert!(text.contains("line 3, column 3"), "{text}");
    assert!(!text.contains("line 3 column 3"), "position twice: {text}");
}

#[test]
fn readme_style_python_booleans_and_comments_are_syntax_errors() {
    for text in [
        "{\"redis_read_access_slave\": False}",
        "{\"storage_slice\": 2 // buckets\n}",
        "{\"storage_slice\": 2,}",
    ] {
        assert!(
            matches!(parse(text), Err(Error::ConfigSyntax { line: 1, .. })),
            "{text}"
        );
    }
}

#[test]
fn top_level_must_be_an_object() {
    let err = parse("\n  [1, 2]").unwrap_err();
    let Error::ConfigSyntax {
        message,
        line,
        column,
        ..
    } = &err
    else {
        panic!("expected a syntax error, got {err:?}");
    };
    assert_eq!(
        message,
        "the top level must be a JSON object, found an array"
    );
    assert_eq!((*line, *column), (2, 3));
}

#[test]
fn empty_text_is_an_error() {
    for text in ["", "  \n "] {
        assert!(parse_err(text).contains("empty"), "{text:?}");
    }
}

// ---- ranges ----

#[test]
fn storage_slice_must_be_positive_and_at_most_the_slot_count() {
    for n in [0i64, -1, 16385, 1 << 32] {
        let (field, message) = field_error(parse(&one("storage_slice", n.into())).unwrap_err());
        assert_eq!(field, "storage_slice");
        assert_eq!(
            message,
            format!("must be between 1 and 16384 (one bucket per cluster slot at most), got {n}")
        );
    }
    assert_eq!(parse_ok(&one("storage_slice", 16.into())).storage_slice, 16);
    assert_eq!(
        parse_ok(&one("storage_slice", 16384.into())).storage_slice,
        16384
    );
}

#[test]
fn storage_slice_import_follows_storage_slice_when_not_positive() {
    for import in [None, Some(-1), Some(0)] {
        let mut object = serde_json::json!({ "storage_slice": 4 });
        if let Some(n) = import {
            object["storage_slice_import"] = n.into();
        }
        let config = parse_ok(&object.to_string());
        assert_eq!(config.storage_slice_import, 4, "{import:?}");
    }
    let config = parse_ok(r#"{"storage_slice": 4, "storage_slice_import": 2}"#);
    assert_eq!(config.storage_slice_import, 2);
    for n in [16385i64, 1 << 32] {
        let (field, message) =
            field_error(parse(&one("storage_slice_import", n.into())).unwrap_err());
        assert_eq!(field, "storage_slice_import");
        assert!(
            message.starts_with("must be between 1 and 16384"),
            "{message}"
        );
    }
}

#[test]
fn keys_sending_size_must_be_positive() {
    let (field, message) = field_error(parse(&one("keys_sending_size", 0.into())).unwrap_err());
    assert_eq!(field, "keys_sending_size");
    assert!(message.contains("got 0"), "{message}");
}

#[test]
fn pool_size_must_be_positive() {
    let (field, _) = field_error(parse(&one("redis_conn_pool_size", 0.into())).unwrap_err());
    assert_eq!(field, "redis_conn_pool_size");
}

#[test]
fn redis_db_must_not_be_negative() {
    let (field, _) = field_error(parse(&one("redis_db", (-1).into())).unwrap_err());
    assert_eq!(field, "redis_db");
    assert_eq!(parse_ok(&one("redis_db", 3.into())).redis_db, 3);
}

#[test]
fn ports_must_be_in_range() {
    for port in [0, -1, 65536] {
        let (field, message) =
            field_error(parse(&one("redis_host_port", serde_json::json!([port]))).unwrap_err());
        assert_eq!(field, "redis_host_port");
        assert_eq!(
            message,
            format!("entry 0 must be between 1 and 65535, got {port}")
        );
    }
    assert_eq!(
        parse_ok(&one("redis_host_port", serde_json::json!([65535]))).redis_host_port,
        [65535]
    );
}

#[test]
fn hosts_must_not_be_empty() {
    let text = r#"{"redis_host_ip": [], "redis_host_port": []}"#;
    assert!(parse_err(text).starts_with("redis_host_ip "));
    let text = r#"{"redis_host_ip": [""], "redis_host_port": [6379]}"#;
    assert!(parse_err(text).starts_with("redis_host_ip "));
}

#[test]
fn one_port_per_host() {
    let text = r#"{"redis_host_ip": ["a", "b"], "redis_host_port": [6379]}"#;
    let err = parse_err(text);
    assert!(err.contains("redis_host_port"), "{err}");
    assert!(err.contains("redis_host_ip"), "{err}");
    let config = parse_ok(r#"{"redis_host_ip": ["a", "b"], "redis_host_port": [1, 2]}"#);
    assert_eq!(config.redis_host_port, [1, 2]);
}

#[test]
fn illegal_connection_mode_uses_tfra_words() {
    for n in [3, -1] {
        let err = parse_err(&one("redis_connection_mode", n.into()));
        assert!(err.starts_with("redis_connection_mode "), "{err}");
        assert!(
            err.contains(&format!("{n} is illegal redis_connection_mode")),
            "{err}"
        );
    }
    assert_eq!(
        parse_ok(&one("redis_connection_mode", 0.into())).redis_connection_mode,
        ConnectionMode::Cluster
    );
}

#[test]
fn illegal_table_store_mode() {
    let err = parse_err(&one("table_store_mode", 3.into()));
    assert!(err.starts_with("table_store_mode "), "{err}");
    assert!(err.contains("3 is illegal table_store_mode"), "{err}");
    assert_eq!(
        parse_ok(&one("table_store_mode", 2.into())).table_store_mode,
        StoreMode::Nothing
    );
}

#[test]
fn timeouts_must_not_be_negative() {
    for key in [
        "redis_connect_timeout",
        "redis_socket_timeout",
        "redis_wait_timeout",
        "redis_connection_lifetime",
        "redis_sentinel_connect_timeout",
        "redis_sentinel_socket_timeout",
        "redis_retry_deadline_ms",
        "redis_durable_write_timeout_ms",
        "redis_conn_idle_timeout_ms",
        "redis_client_buffer_keep_bytes",
    ] {
        let (field, message) = field_error(parse(&one(key, (-1).into())).unwrap_err());
        assert_eq!(field, key);
        assert!(message.starts_with("must be between 0 and "), "{message}");
    }
}

#[test]
fn timeouts_keep_json_units() {
    let c = parse_ok(r#"{"redis_socket_timeout": 250, "redis_connection_lifetime": 2}"#);
    assert_eq!(c.redis_socket_timeout, 250);
    assert_eq!(c.redis_connection_lifetime, 2);
    let c = parse_ok(r#"{"redis_connection_lifetime": 0}"#);
    assert_eq!(c.redis_connection_lifetime, 0);
}

#[test]
fn lifetime_that_overflows_is_a_range_error() {
    let (field, _) =
        field_error(parse(&one("redis_connection_lifetime", u64::MAX.into())).unwrap_err());
    assert_eq!(field, "redis_connection_lifetime");
}

#[test]
fn expiry_negative_means_none_and_zero_is_kept() {
    let c = parse_ok(&one("expire_model_tag_in_seconds", (-1).into()));
    assert_eq!(c.expire_model_tag_in_seconds, None);
    let c = parse_ok(&one("expire_model_tag_in_seconds", 0.into()));
    assert_eq!(c.expire_model_tag_in_seconds, Some(0));
}

#[test]
fn model_tags_must_not_be_empty() {
    for key in ["model_tag_import", "model_tag_runtime"] {
        let (field, _) = field_error(parse(&one(key, "".into())).unwrap_err());
        assert_eq!(field, key);
    }
}

#[test]
fn hash_tags_with_or_without_braces() {
    let c = parse_ok(
        r#"{"storage_slice": 2, "redis_hash_tags_runtime": ["{3560}", "120"],
            "storage_slice_import": 1, "redis_hash_tags_import": ["{6379}"]}"#,
    );
    assert_eq!(c.redis_hash_tags_runtime, ["3560", "120"]);
    assert_eq!(c.redis_hash_tags_import, ["6379"]);
}

#[test]
fn hash_tags_must_be_digits() {
    for tag in ["{ab}", "{12", "12}", "", "{}", "{1 2}"] {
        let text = one("redis_hash_tags_runtime", serde_json::json!([tag]));
        let (field, message) = field_error(parse(&text).unwrap_err());
        assert_eq!(field, "redis_hash_tags_runtime", "{tag:?}");
        assert!(message.contains("not a hash tag"), "{message}");
    }
}

#[test]
fn hash_tag_count_must_match_slices() {
    // The design note's example: two tags each, with the default storage_slice of 1.
    let text = r#"{"redis_hash_tags_runtime": ["{3560}", "{120}"]}"#;
    let (field, message) = field_error(parse(text).unwrap_err());
    assert_eq!(field, "redis_hash_tags_runtime");
    assert_eq!(
        message,
        "has 2 entries but storage_slice is 1; give exactly 1 tags or none"
    );

    let text = r#"{"storage_slice": 2, "storage_slice_import": 3,
                   "redis_hash_tags_import": ["{6379}", "{26379}"]}"#;
    let (field, message) = field_error(parse(text).unwrap_err());
    assert_eq!(field, "redis_hash_tags_import");
    assert!(message.contains("storage_slice_import is 3"), "{message}");

    // With the import count following storage_slice, the seed's arrays fit.
    let text = r#"{"storage_slice": 2,
                   "redis_hash_tags_import": ["{6379}", "{26379}"],
                   "redis_hash_tags_runtime": ["{3560}", "{120}"]}"#;
    parse(text).unwrap();
}

#[test]
fn durable_writes_need_a_timeout() {
    let text = r#"{"redis_durable_write_replicas": 1, "redis_durable_write_timeout_ms": 0}"#;
    let (field, _) = field_error(parse(text).unwrap_err());
    assert_eq!(field, "redis_durable_write_timeout_ms");
    let c = parse_ok(r#"{"redis_durable_write_replicas": 1}"#);
    assert_eq!(c.redis_durable_write_replicas, 1);
}

#[test]
fn tls_cert_needs_key() {
    let text = r#"{"redis_tls": true, "redis_tls_cert": "client.pem"}"#;
    let (field, _) = field_error(parse(text).unwrap_err());
    assert_eq!(field, "redis_tls_cert");
}

#[test]
fn tls_files_without_tls_are_warned_about() {
    let (_, warnings) = parse(r#"{"redis_tls_ca_cert": "ca.pem"}"#).unwrap();
    assert_eq!(
        warnings,
        ["redis_tls_ca_cert ignored because redis_tls is false"]
    );
    let (c, warnings) = parse(r#"{"redis_tls": true, "redis_tls_ca_cert": "ca.pem"}"#).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(c.redis_tls_ca_cert, "ca.pem");
}

#[test]
fn validate_catches_configs_built_in_code() {
    let config = RedisConfig {
        storage_slice: 0,
        ..RedisConfig::default()
    };
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "storage_slice must be between 1 and 16384 (one bucket per cluster slot at most), \
         got 0"
    );
    for (slices, import) in [(16385, 1), (1, 16385), (u32::MAX, 1)] {
        let config = RedisConfig {
            storage_slice: slices,
            storage_slice_import: import,
            ..RedisConfig::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("must be between 1 and 16384"), "{message}");
    }
    let config = RedisConfig {
        redis_hash_tags_runtime: vec!["{1}".into()],
        ..RedisConfig::default()
    };
    assert!(config.validate().is_err());
}

// ---- writing back ----

#[test]
fn to_json_has_every_key() {
    let Value::Object(object) = RedisConfig::default().to_json_value() else {
        panic!("not an object");
    };
    for key in TFRA_KEYS {
        assert!(object.contains_key(key), "{key}");
    }
    assert_eq!(object.len(), TFRA_KEYS.len() + 13);
    assert_eq!(
        FIELDS[..TFRA_KEYS.len()]
            .iter()
            .map(|f| f.key)
            .collect::<Vec<_>>(),
        TFRA_KEYS
    );
    assert_eq!(object["redis_connection_lifetime"], 100);
    assert_eq!(object["redis_wait_timeout"], 100_000_000);
    assert_eq!(object["storage_slice_import"], 1);
}

#[test]
fn to_json_round_trips() {
    let config = RedisConfig {
        redis_connection_mode: ConnectionMode::Cluster,
        redis_host_ip: vec!["10.0.0.1".into(), "10.0.0.2".into()],
        redis_host_port: vec![7000, 7001],
        redis_password: "hunter2".into(),
        redis_connection_lifetime: 5,
        storage_slice: 2,
        storage_slice_import: 3,
        redis_hash_tags_runtime: vec!["3560".into(), "8209".into()],
        expire_model_tag_in_seconds: None,
        table_store_mode: StoreMode::Tensor,
        redis_tls: true,
        redis_retry_deadline_ms: 5,
        redis_write_behind_ms: 25,
        ..RedisConfig::default()
    };
    let json = config.to_json_value();
    assert_eq!(json["redis_password"], "hunter2");
    assert_eq!(
        json["redis_hash_tags_runtime"],
        serde_json::json!(["{3560}", "{8209}"])
    );
    assert_eq!(json["expire_model_tag_in_seconds"], -1);
    let (back, warnings) = parse(&json.to_string()).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(back, config);
}

#[test]
fn debug_hides_passwords() {
    let config = RedisConfig {
        redis_password: "hunter2".into(),
        redis_sentinel_password: "s3ntinel".into(),
        ..RedisConfig::default()
    };
    let text = format!("{config:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("s3ntinel"), "{text}");
    assert!(text.contains(r#"redis_password: "***""#), "{text}");
    assert!(text.contains(r#"redis_sentinel_password: "***""#), "{text}");
    assert!(format!("{config:#?}").contains("storage_slice"));
    let text = format!("{:?}", RedisConfig::default());
    assert!(text.contains(r#"redis_password: """#), "{text}");
}

#[test]
fn errors_never_echo_the_password() {
    let text = r#"{"redis_password": "hunter2", "storage_slice": 0}"#;
    let err = parse(text).unwrap_err();
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}
