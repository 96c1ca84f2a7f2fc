//! A table on one Redis server: insert typed rows, read them back with defaults for missing
//! ids, export them, train one with an Adam step, remove one, count.
//!
//! ```text
//! TFRA_REDIS_ADDR=127.0.0.1:6379 cargo run --example standalone -p tfra-redis
//! cargo run --example standalone -p tfra-redis -- 127.0.0.1:6379
//! ```
//!
//! The address comes from the first argument, else `TFRA_REDIS_ADDR`, else `127.0.0.1:6379`.
//! The tables (`example_standalone` and its Adam slot tables under model tag `example`) are
//! cleared at the end.

use std::process::ExitCode;

use tfra_redis::naming::slot_table_name;
use tfra_redis::optim::{Optimizer, apply_gradients};
use tfra_redis::{Defaults, KeyDtype, RedisConfig, Table, TableBuilder, ValueDtype};

/// What [`run`] found, so the integration test can check it.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// Rows read for ids 1, 2 and 3 (3 was never written: its default row).
    pub rows: Vec<[f32; 4]>,
    /// Which of them were stored.
    pub found: Vec<bool>,
    /// Every (id, row) pair the table held after the inserts, by id.
    pub exported: Vec<(i64, Vec<f32>)>,
    /// Row 2 after one Adam step with learning rate 0.1 and gradient 1 everywhere.
    pub trained: [f32; 4],
    /// Rows left after removing id 1.
    pub size_after_remove: u64,
}

/// Opens a float32 table of dim 4 with int64 ids named `name` on `config`'s servers.
fn open(config: &RedisConfig, name: &str) -> tfra_redis::Result<Table> {
    TableBuilder::new(config)
        .name(name)
        .dim(4)
        .key_dtype(KeyDtype::I64)
        .value_dtype(ValueDtype::F32)
        .open()
}

/// Opens the example table on `config`'s servers and runs the example against it; also the
/// body of the Sentinel and Cluster examples, which differ only in their config.
pub fn run(config: &RedisConfig, name: &str) -> tfra_redis::Result<Outcome> {
    let table = open(config, name)?;
    table.clear()?;

    // Rows are `dim` elements of the table's element type per id, row-major.
    table.insert_rows(&[1, 2], &[0.1f32, 0.2, 0.3, 0.4, 1.0, 2.0, 3.0, 4.0])?;

    let keys = [1, 2, 3];
    let mut out = vec![0f32; keys.len() * 4];
    let mut found = vec![false; keys.len()];
    table.find_rows(&keys, Defaults::Row(&[0.0; 4]), &mut out, Some(&mut found))?;

    let (ids, values) = table.export_rows::<f32>()?;
    let mut exported: Vec<(i64, Vec<f32>)> = ids
        .into_ints()
        .unwrap_or_default()
        .into_iter()
        .zip(values.chunks_exact(4).map(<[f32]>::to_vec))
        .collect();
    exported.sort_by_key(|(id, _)| *id);

    // One Adam step on id 2. Adam keeps its moments in slot tables named as TFRA names them.
    let adam = Optimizer::Adam {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
    };
    let slots = adam
        .slot_names()
        .iter()
        .map(|slot| open(config, &slot_table_name(name, "shadow", slot)))
        .collect::<tfra_redis::Result<Vec<Table>>>()?;
    let slot_refs: Vec<&Table> = slots.iter().collect();
    // The initial rows are what a missing id starts from (id 2 is stored, so unused).
    apply_gradients(&adam, &table, &slot_refs, &[2], &[1.0; 4], &[0.0; 4], 1)?;
    let mut trained = [0f32; 4];
    table.find_rows(&[2], Defaults::Row(&[0.0; 4]), &mut trained, None)?;

    table.remove(&[1])?;
    let size_after_remove = table.size()?;
    table.clear()?;
    for slot in &slots {
        slot.clear()?;
    }
    Ok(Outcome {
        rows: out
            .chunks_exact(4)
            .map(|row| row.try_into().expect("rows of 4"))
            .collect(),
        found,
        exported,
        trained,
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
