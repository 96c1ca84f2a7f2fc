//! The standalone example's table on a Sentinel-managed master: the sentinels name the
//! master, and the table follows it through failovers.
//!
//! ```text
//! TFRA_REDIS_SENTINELS=127.0.0.1:26379,127.0.0.1:26380 TFRA_REDIS_MASTER=mymaster \
//!     cargo run --example sentinel -p tfra-redis
//! cargo run --example sentinel -p tfra-redis -- mymaster 127.0.0.1:26379 127.0.0.1:26380
//! ```
//!
//! Arguments: the master group name, then the sentinels; else `TFRA_REDIS_MASTER` (default
//! `mymaster`) and `TFRA_REDIS_SENTINELS` (comma-separated, default `127.0.0.1:26379`).

use std::process::ExitCode;

use tfra_redis::RedisConfig;

#[path = "standalone.rs"]
#[allow(dead_code)] // Its `main` and address helpers are not used here.
mod standalone;

pub use standalone::{Outcome, parse_addr};

/// The config for master group `master` behind `sentinels`.
pub fn config(master: &str, sentinels: &[(String, u16)]) -> RedisConfig {
    RedisConfig::sentinel(master, sentinels.iter().cloned()).with_model_tag("example")
}

/// Runs the example on `config` (see the standalone example).
pub fn run(config: &RedisConfig) -> tfra_redis::Result<Outcome> {
    standalone::run(config, "example_sentinel")
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let master = args
        .next()
        .or_else(|| std::env::var("TFRA_REDIS_MASTER").ok())
        .unwrap_or_else(|| "mymaster".into());
    let mut list: Vec<String> = args.collect();
    if list.is_empty() {
        list = std::env::var("TFRA_REDIS_SENTINELS")
            .unwrap_or_else(|_| "127.0.0.1:26379".into())
            .split(',')
            .map(str::to_string)
            .collect();
    }
    let sentinels: Result<Vec<_>, _> = list.iter().map(|a| parse_addr(a)).collect();
    let sentinels = match sentinels {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&config(&master, &sentinels)) {
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
