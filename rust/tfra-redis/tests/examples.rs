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

/// Checks an example's outcome against [`expected`]; the trained row only to 1e-5, since
/// Adam's first step moves each element by `lr * g / (|g| + epsilon)`, about but not exactly
/// lr. A macro, because each example compiles its own copy of the `Outcome` type.
macro_rules! check {
    ($got:expr) => {{
        let got = $got;
        let want = expected();
        for (g, w) in got.trained.iter().zip(want.trained) {
            assert!(
                (g - w).abs() < 1e-5,
                "trained row {:?}, want about {:?}",
                got.trained,
                want.trained
            );
        }
        assert_eq!(
            (got.rows, got.found, got.exported, got.size_after_remove),
            (want.rows, want.found, want.exported, want.size_after_remove)
        );
    }};
}

fn expected() -> standalone::Outcome {
    standalone::Outcome {
        rows: vec![[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0], [0.0; 4]],
        found: vec![true, true, false],
        exported: vec![(1, vec![0.1, 0.2, 0.3, 0.4]), (2, vec![1.0, 2.0, 3.0, 4.0])],
        trained: [0.9, 1.9, 2.9, 3.9],
        size_after_remove: 1,
    }
}

#[test]
fn standalone_example_runs() {
    let s = support::Standalone::start();
    let config =
        tfra_redis::RedisConfig::standalone("127.0.0.1", s.port()).with_model_tag("example");
    check!(standalone::run(&config, "example_standalone").unwrap());
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
    check!(sentinel::run(&config).unwrap());
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
    check!(cluster::run(&config).unwrap());
}
