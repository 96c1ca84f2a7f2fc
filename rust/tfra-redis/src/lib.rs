//! tfra-redis: embedding tables stored in Redis, byte-compatible with the Redis backend of
//! TensorFlow Recommenders-Addons (TFRA).
//!
//! A table maps int64 (or int32) ids to fixed-length rows. Rows live in Redis hashes ("buckets"),
//! one field per id, exactly as TFRA lays them out, so a table written by TFRA opens here unchanged.
//!
//! # Quick start
//!
//! Build a [`RedisConfig`] for your deployment ([`RedisConfig::standalone`],
//! [`RedisConfig::sentinel`], [`RedisConfig::cluster`], or TFRA's JSON file with
//! [`RedisConfig::from_path`]), open a [`Table`] with a [`TableBuilder`], and read and write
//! rows as slices of the table's element type ([`Element`]: `f32`, `f64`, [`f16`](struct@f16), [`bf16`],
//! `i8`, `i32`, `i64`) with int64 or int32 ids ([`Keys`]):
//!
//! ```
//! use tfra_redis::{ArgumentKind, Defaults, KeyDtype, RedisConfig, TableBuilder, ValueDtype};
//! # let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
//! # let mut server = std::process::Command::new("redis-server")
//! #     .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
//! #     .stdout(std::process::Stdio::null())
//! #     .spawn()
//! #     .expect("redis-server must be installed for the doc test");
//! # for _ in 0..100 {
//! #     if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() { break; }
//! #     std::thread::sleep(std::time::Duration::from_millis(20));
//! # }
//!
//! let config = RedisConfig::standalone("127.0.0.1", port).with_model_tag("example");
//! let table = TableBuilder::new(&config)
//!     .name("user_emb")
//!     .dim(2)
//!     .key_dtype(KeyDtype::I64)
//!     .value_dtype(ValueDtype::F32)
//!     .open()?;
//!
//! // Two float32 rows for ids 7 and 9.
//! table.insert_rows(&[7, 9], &[1.0f32, 2.0, 3.0, 4.0])?;
//!
//! let mut out = vec![0f32; 3 * 2];
//! let mut found = vec![false; 3];
//! table.find_rows(&[9, 7, 8], Defaults::Row(&[0.0, 0.0]), &mut out, Some(&mut found))?;
//! assert_eq!(found, [true, true, false]);
//! assert_eq!(out, [3.0, 4.0, 1.0, 2.0, 0.0, 0.0]);
//! assert_eq!(table.size()?, 2);
//!
//! // Rows of another element type are refused before anything is sent.
//! let err = table.insert_rows(&[7], &[1.0f64, 2.0]).unwrap_err();
//! assert_eq!(err.argument_kind(), Some(ArgumentKind::Dtype));
//! # table.clear()?;
//! # server.kill().ok();
//! # server.wait().ok();
//! # Ok::<(), tfra_redis::Error>(())
//! ```
//!
//! # How it works
//!
//! [`TableBuilder::open`] connects (pools are shared by tables with the same connection
//! settings), works out the bucket keys ([`layout`]) and returns a [`Table`]; its batch
//! operations group ids by bucket, cut them into commands of `keys_sending_size` fields and run
//! one pipeline per node. Rows are stored as raw little-endian elements ([`codec`]); the byte
//! methods ([`Table::find`], [`Table::insert`], [`Table::export`]) take and give those bytes
//! as they are, the typed ones (`*_rows`) convert. TFRA's names for shard and optimizer slot
//! tables are in [`naming`]; saving and restoring files and moving rows between layouts in
//! [`store`]; optimizers that update rows in Redis in [`optim`]; where optimizer slots live
//! and converting them between layouts in [`slot_layout`].
//!
//! # Errors
//!
//! Every fallible call returns [`Error`]: match its variant, ask [`Error::is_transient`]
//! whether retrying later may help (transient failures were already retried for
//! `redis_retry_deadline_ms`), read [`Error::argument_kind`] for refused arguments, and follow
//! [`std::error::Error::source`] to the I/O or Redis client error underneath.
//!
//! # Cargo features
//!
//! * `tls` (default): TLS connections (`redis_tls`), through rustls with the ring crypto
//!   backend. A config asking for TLS in a build without it fails to open with
//!   [`Error::ConfigField`] naming `redis_tls`. See the README for the crypto provider.
//! * `sentinel`, `cluster` (default): the Sentinel and Cluster connection modes; a config
//!   asking for a mode left out fails to open with [`Error::ConfigField`] naming
//!   `redis_connection_mode`. Standalone is always there.
//! * `internals`: the connection layer as unstable public API, for this repository's Python
//!   bindings and tests; not covered by semver.
//!
//! # Logging
//!
//! Diagnostics (a lookup served default rows, a Sentinel config pointed at a plain server) go
//! through the [`log`](https://docs.rs/log) crate under the `tfra_redis` target; the Python
//! bindings forward them to Python's `logging` logger `tfra_redis`.

#![warn(clippy::missing_errors_doc, clippy::missing_panics_doc)]

// The connection layer: pools, pipelines, retries and the three topologies. Its types carry
// redis-rs types (`redis::Cmd`, `redis::Value`) and change whenever the backend does, so it is
// not part of the public API. The `internals` feature exposes it, unstable, for this
// repository's Python bindings and integration tests.
#[cfg(feature = "internals")]
#[doc(hidden)]
// Without a mode's feature, the helpers only that mode calls are unused.
#[cfg_attr(not(all(feature = "sentinel", feature = "cluster")), allow(dead_code))]
pub mod backend;
#[cfg(not(feature = "internals"))]
#[allow(dead_code)] // Parts only the `internals` users call.
pub(crate) mod backend;

mod builder;
pub mod codec;
pub mod config;
pub mod error;
pub mod layout;
pub mod naming;
pub mod optim;
pub mod restrict;
pub mod slot_layout;
pub mod store;
pub mod table;
mod throttle;

/// The integration tests' server harness, for unit tests of crate-private parts (a
/// connection's buffers, the pool) against real servers.
#[cfg(test)]
#[path = "../tests/support/mod.rs"]
pub(crate) mod test_servers;

pub use builder::TableBuilder;

// The README's examples are compiled as doc tests, so they cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use backend::{flush_deferred_writes, flush_deferred_writes_at_exit};
// For the Python bindings' pool of result blocks: one madvise helper for both crates.
#[doc(hidden)]
pub use backend::advise_huge_pages;
pub use codec::{ByteKeys, Dim, Element, KeyBuf, KeyDtype, Keys, ValueDtype};
pub use config::{ConnectionMode, RedisConfig, StoreMode};
pub use error::{ArgumentKind, Error, Result};
/// The 16-bit float element types of float16 and bfloat16 tables, from the
/// [`half`](https://docs.rs/half/2) crate (version 2), re-exported so that typed rows of those
/// tables need no direct dependency on it.
#[doc(no_inline)]
pub use half::{bf16, f16};
pub use table::{Defaults, Lookup, Table, TableSpec};
