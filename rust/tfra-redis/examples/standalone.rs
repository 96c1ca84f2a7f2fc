//! A table on one Redis server: insert rows, read them back with defaults for missing ids,
//! remove one, count.
//!
//! ```text
//! TFRA_REDIS_ADDR=127.0.0.1:6379 cargo run --example standalone -p tfra-redis
//! cargo run --example standalone -p tfra-redis -- 127.0.0.1:6379
//! ```
//!
//! The address comes from the first argument, else `TFRA_REDIS_ADDR`, else `127.0.0.1:6379`.
//! The table (`example_standalone` under model tag `example`) is cleared at the end.

use std::process::ExitCode;

use tfra_redis::{Defaults, KeyDtype, RedisConfig, TableBuilder, ValueDtype};

/// What [`run`] found, so the integration test can check it.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// Rows read for ids 1, 2 and 3 (3 was never written: its default row).
    pub rows: Vec<[f32; 4]>,
    /// Which of them were stored.
    pub found: Vec<bool>,
    /// Rows left after removing id 1.
    pub size_after_remove: u64,
}

/// Opens the example table on `config`'s servers and runs the example against it; also the
/// body of the Sentinel and Cluster examples, which differ only in their config.
pub fn run(config: &RedisConfig, name: &str) -> tfra_redis::Result<Outcome> {
    let table = TableBuilder::new(config)
        .name(name)
        .dim(4)
        .key_dtype(KeyDtype::I64)
        .value_dtype(ValueDtype::F32)
        .open()?;
    table.clear()?;

    // Rows are raw little-endian bytes, `dim` elements per id.
    let rows: Vec<u8> = [[0.1f32, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]]
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    table.insert(&[1, 2], &rows)?;

    let default_row: Vec<u8> = [0.0f32; 4].iter().flat_map(|x| x.to_le_bytes()).collect();
    let keys = [1, 2, 3];
    let mut out = vec![0u8; keys.len() * table.row_bytes()];
    let mut found = vec![false; keys.len()];
    table.find(
        &keys,
        Defaults::Row(&default_row),
        &mut out,
        Some(&mut found),
    )?;

    table.remove(&[1])?;
    let size_after_remove = table.size()?;
    table.clear()?;
    Ok(Outcome {
        rows: out
            .chunks_exact(16)
            .map(|row| {
                std::array::from_fn(|i| {
                    f32::from_le_bytes(row[4 * i..4 * i + 4].try_into().unwrap())
                })
            })
            .collect(),
        found,
        size_after_remove,
    })
}

/// `host:port` from the first argument, else from `env_var`, else `default`.
pub fn address_from_args_or_env(env_var: &str, default: &str) -> Result<(String, u16), String> {
    let text = std::env::args()
        .nth(1)
        .or_else(|| std::env::var(env_var).ok())
        .unwrap_or_else(|| default.to_string());
    parse_addr(&text)
}

/// Parses `host:port`.
pub fn parse_addr(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("expected host:port, got {text:?}"))?;
    let port = port.parse().map_err(|_| format!("bad port in {text:?}"))?;
    Ok((host.to_string(), port))
}

fn main() -> ExitCode {
    let (host, port) = match address_from_args_or_env("TFRA_REDIS_ADDR", "127.0.0.1:6379") {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let config = RedisConfig::standalone(host, port).with_model_tag("example");
    match run(&config, "example_standalone") {
        Ok(outcome) => {
            println!("{outcome:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
