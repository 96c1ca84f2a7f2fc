//! A brief fuzz run of the config parser, cheap enough for every CI run: mutated configs (byte
//! flips, truncations, inserted JSON punctuation, every field given random JSON values) must
//! never panic, and must either parse into a config that validates or fail with a config error.
//! The generator is a fixed-seed xorshift so a failure reproduces; set TFRA_FUZZ_ITERS to run
//! longer.

use tfra_redis::Error;
use tfra_redis::config::RedisConfig;

const BASE: &str = r#"{
  "redis_connection_mode": 2, "redis_master_name": "master",
  "redis_host_ip": ["127.0.0.1"], "redis_host_port": [6379],
  "redis_user": "default", "redis_password": "", "redis_db": 0,
  "redis_read_access_slave": false, "redis_connect_keep_alive": false,
  "redis_connect_timeout": 1000, "redis_socket_timeout": 1000,
  "redis_conn_pool_size": 20, "redis_wait_timeout": 100000000, "redis_connection_lifetime": 100,
  "redis_sentinel_user": "default", "redis_sentinel_password": "",
  "redis_sentinel_connect_timeout": 1000, "redis_sentinel_socket_timeout": 1000,
  "storage_slice_import": 2, "storage_slice": 2, "using_hash_storage_slice": false,
  "keys_sending_size": 1024, "using_md5_prefix_name": false,
  "redis_hash_tags_hypodispersion": false, "model_tag_import": "fixture",
  "redis_hash_tags_import": [], "model_tag_runtime": "fixture",
  "redis_hash_tags_runtime": ["{3560}", "{8209}"], "expire_model_tag_in_seconds": 604800,
  "table_store_mode": 1, "model_lib_abs_dir": "model_lib/"
}"#;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_json(rng: &mut Rng, depth: u32) -> serde_json::Value {
    use serde_json::json;
    match rng.below(if depth > 2 { 7 } else { 9 }) {
        0 => json!(null),
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!((rng.next() % 70_000) as i64 - 1_000),
        4 => json!((rng.next() % 1000) as f64 / 7.0),
        5 => json!(["{3560}", "12", "", "{x}", "{8209"][rng.below(5)]),
        6 => json!(format!("{{{}}}", rng.below(200_000))),
        7 => serde_json::Value::Array(
            (0..rng.below(4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => json!({ "nested": random_json(rng, depth + 1) }),
    }
}

fn check(text: &str) {
    match RedisConfig::from_json_str(text, "<fuzz>") {
        Ok((config, _warnings)) => config
            .validate()
            .expect("a config that parsed must validate"),
        Err(Error::ConfigSyntax { .. } | Error::ConfigField { .. } | Error::ConfigPath { .. }) => {}
        Err(other) => panic!("non-config error {other:?} for {text:?}"),
    }
}

#[test]
fn mutated_configs_never_panic() {
    let iters: usize = std::env::var("TFRA_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let base: serde_json::Value = serde_json::from_str(BASE).unwrap();
    let fields: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut parsed = 0;
    for _ in 0..iters {
        let text = match rng.below(4) {
            // Byte-level damage.
            0 => {
                let mut bytes = BASE.as_bytes().to_vec();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(bytes.len());
                    bytes[i] = b"{}[],:\"0-e.tnf \\\xff"[rng.below(17)];
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
            1 => BASE[..rng.below(BASE.len())].to_string(),
            // Structure-level damage: one to three fields get random values or disappear.
            _ => {
                let mut v = base.clone();
                for _ in 0..1 + rng.below(3) {
                    let field = &fields[rng.below(fields.len())];
                    if rng.below(5) == 0 {
                        v.as_object_mut().unwrap().remove(field);
                    } else {
                        v[field] = random_json(&mut rng, 0);
                    }
                }
                v.to_string()
            }
        };
        if RedisConfig::from_json_str(&text, "<fuzz>").is_ok() {
            parsed += 1;
        }
        check(&text);
    }
    // The mutations must not all be trivially rejected, or the run proves little.
    assert!(
        parsed > iters / 50,
        "only {parsed} of {iters} mutated configs parsed"
    );
}
