//! Runs the programs in `examples/` against servers started here, so they cannot rot.
//!
//! Each example keeps its work in a `pub fn run(config)` and reads addresses in `main`; the
//! example files are compiled into this test with `#[path]` and `run` is called with a config
//! built from the test servers' ports. (Running the example binaries would need `cargo run
//! --example`, a second build inside the test; `CARGO_BIN_EXE_*` exists only for `[[bin]]`
//! targets.) `cargo build --examples`, part of `cargo clippy --all-targets`, compiles their
//! `main`s.

// The Sentinel and Cluster examples include the standalone one's body, as the binaries do.
#![allow(clippy::duplicate_mod)]

mod support;

#[path = "../examples/standalone.rs"]
#[allow(dead_code)] // `main` and the address helpers are for the binary.
mod standalone;

#[path = "../examples/sentinel.rs"]
#[allow(dead_code)]
mod sentinel;

#[path = "../examples/cluster.rs"]
#[allow(dead_code)]
mod cluster;

fn expected() -> standalone::Outcome {
    standalone::Outcome {
        rows: vec![[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0], [0.0; 4]],
        found: vec![true, true, false],
        size_after_remove: 1,
    }
}

#[test]
fn standalone_example_runs() {
    let s = support::Standalone::start();
    let config =
        tfra_redis::RedisConfig::standalone("127.0.0.1", s.port()).with_model_tag("example");
    assert_eq!(
        standalone::run(&config, "example_standalone").unwrap(),
        expected()
    );
    assert_eq!(
        standalone::parse_addr("10.0.0.1:6380").unwrap(),
        ("10.0.0.1".into(), 6380)
    );
    assert!(standalone::parse_addr("10.0.0.1").is_err());
}

#[test]
#[cfg(feature = "sentinel")]
fn sentinel_example_runs() {
    let s = support::Sentinel::start();
    let sentinels: Vec<(String, u16)> = s
        .sentinels
        .iter()
        .map(|n| ("127.0.0.1".to_string(), n.port()))
        .collect();
    let config = sentinel::config("mymaster", &sentinels);
    let got = sentinel::run(&config).unwrap();
    assert_eq!(
        (got.rows, got.found, got.size_after_remove),
        (
            expected().rows,
            expected().found,
            expected().size_after_remove
        )
    );
}

#[test]
#[cfg(feature = "cluster")]
fn cluster_example_runs() {
    let c = support::Cluster::start();
    c.wait_until_settled(std::time::Duration::from_secs(30));
    let seeds: Vec<(String, u16)> = c
        .seed_ports()
        .into_iter()
        .map(|p| ("127.0.0.1".to_string(), p))
        .collect();
    let config = cluster::config(&seeds[..2]);
    let got = cluster::run(&config).unwrap();
    assert_eq!(
        (got.rows, got.found, got.size_after_remove),
        (
            expected().rows,
            expected().found,
            expected().size_after_remove
        )
    );
}
