//! tfra-redis: embedding tables stored in Redis, byte-compatible with the Redis backend of
//! TensorFlow Recommenders-Addons (TFRA).
//!
//! A table maps int64 (or int32) ids to fixed-length rows. Rows live in Redis hashes ("buckets"),
//! one field per id, exactly as TFRA lays them out, so a table written by TFRA opens here unchanged.

pub mod backend;
pub mod codec;
pub mod config;
pub mod error;
pub mod layout;
pub mod optim;
pub mod store;
pub mod table;

pub use error::{Error, Result};
