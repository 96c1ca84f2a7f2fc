//! The standalone example's table on a Redis Cluster, spread over the masters in 8 buckets.
//!
//! ```text
//! TFRA_REDIS_SEEDS=127.0.0.1:7000,127.0.0.1:7001 cargo run --example cluster -p tfra-redis
//! cargo run --example cluster -p tfra-redis -- 127.0.0.1:7000 127.0.0.1:7001
//! ```
//!
//! Arguments: seed nodes (any nodes of the cluster); else `TFRA_REDIS_SEEDS` (comma-separated,
//! default `127.0.0.1:7000`).

use std::process::ExitCode;

use tfra_redis::RedisConfig;

#[path = "standalone.rs"]
#[allow(dead_code)] // Its `main` and address helpers are not used here.
mod standalone;

pub use standalone::{Outcome, parse_addr};

/// The config for a cluster reached through `seeds`: 8 buckets, so the table's rows spread
/// over the masters.
pub fn config(seeds: &[(String, u16)]) -> RedisConfig {
    RedisConfig::cluster(seeds.iter().cloned())
        .with_model_tag("example")
        .with_storage_slice(8)
}

/// Runs the example on `config` (see the standalone example).
pub fn run(config: &RedisConfig) -> tfra_redis::Result<Outcome> {
    standalone::run(config, "example_cluster")
}

fn main() -> ExitCode {
    let mut list: Vec<String> = std::env::args().skip(1).collect();
    if list.is_empty() {
        list = std::env::var("TFRA_REDIS_SEEDS")
            .unwrap_or_else(|_| "127.0.0.1:7000".into())
            .split(',')
            .map(str::to_string)
            .collect();
    }
    let seeds: Result<Vec<_>, _> = list.iter().map(|a| parse_addr(a)).collect();
    let seeds = match seeds {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&config(&seeds)) {
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
