//! tfra-redis: embedding tables stored in Redis, byte-compatible with the Redis backend of
//! TensorFlow Recommenders-Addons (TFRA).
//!
//! A table maps int64 (or int32) ids to fixed-length rows. Rows live in Redis hashes ("buckets"),
//! one field per id, exactly as TFRA lays them out, so a table written by TFRA opens here unchanged.
//!
//! The flow: a JSON [`config::RedisConfig`] names the servers (standalone, Sentinel or Cluster);
//! [`store::open_table`] connects (pools are shared by tables with the same settings), works out
//! the bucket keys ([`layout`]) and returns a [`table::Table`]; its batch operations group ids by
//! bucket, cut them into commands of `keys_sending_size` fields and run one pipeline per node
//! ([`backend`]). Rows cross as raw little-endian bytes ([`codec`]).
//!
//! ```
//! use tfra_redis::codec::{Dim, KeyDtype, ValueDtype};
//! use tfra_redis::config::RedisConfig;
//! use tfra_redis::store::open_table;
//! use tfra_redis::table::{Defaults, TableSpec};
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
//! // The same JSON a TFRA user writes; mode 2 is a single server.
//! let json = format!(
//!     r#"{{"redis_connection_mode": 2, "redis_host_ip": ["127.0.0.1"], "redis_host_port": [{port}]}}"#
//! );
//! let (config, _warnings) = RedisConfig::from_json_str(&json, "example")?;
//! let spec = TableSpec {
//!     name: "user_emb".into(),
//!     key_dtype: KeyDtype::I64,
//!     value_dtype: ValueDtype::F32,
//!     dim: Dim::new(2)?,
//! };
//! let (table, _notes) = open_table(&config, spec)?;
//!
//! // Rows are raw little-endian bytes: two float32 rows for ids 7 and 9.
//! let rows: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
//! table.insert(&[7, 9], &rows)?;
//!
//! let mut out = vec![0u8; 3 * table.row_bytes()];
//! let mut found = vec![false; 3];
//! let missing: Vec<u8> = [0.0f32, 0.0].iter().flat_map(|x| x.to_le_bytes()).collect();
//! table.find(&[9, 7, 8], Defaults::Row(&missing), &mut out, Some(&mut found))?;
//! assert_eq!(found, [true, true, false]);
//! assert_eq!(&out[..8], &rows[8..]);
//! assert_eq!(table.size()?, 2);
//! # table.clear()?;
//! # server.kill().ok();
//! # server.wait().ok();
//! # Ok::<(), tfra_redis::Error>(())
//! ```
//!
//! Diagnostics (a lookup served default rows, a Sentinel config pointed at a plain server) go
//! through the [`log`](https://docs.rs/log) crate under the `tfra_redis` target; the Python
//! bindings forward them to Python's `logging` logger `tfra_redis`.

// The connection layer: pools, pipelines, retries and the three topologies. Its types carry
// redis-rs types (`redis::Cmd`, `redis::Value`) and change whenever the backend does, so it is
// not part of the public API. The `internals` feature exposes it, unstable, for this
// repository's Python bindings and integration tests.
#[cfg(feature = "internals")]
#[doc(hidden)]
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
pub mod store;
pub mod table;
mod throttle;

pub use builder::TableBuilder;
pub use codec::{Dim, KeyDtype, ValueDtype};
pub use config::{ConnectionMode, RedisConfig, StoreMode};
pub use error::{ArgumentKind, Error, Result};
pub use table::{Defaults, Lookup, Table, TableSpec};
