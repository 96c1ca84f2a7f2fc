//! Sparse optimizer steps through Redis give the same numbers as the pure math on in-memory
//! arrays, new rows start from their initializer rows, and the slot tables hold the slots.

mod support;

use serde_json::json;
use support::Standalone;
use tfra_redis::ArgumentKind;
use tfra_redis::codec::{Dim, KeyDtype, ValueDtype};
use tfra_redis::config::RedisConfig;
use tfra_redis::optim::{Optimizer, apply_gradients};
use tfra_redis::table::{Defaults, Table, TableSpec};

const DIM: usize = 4;

fn config(server: &Standalone) -> RedisConfig {
    let text = server.config_json(json!({"model_tag_runtime": "optim_test"}));
    RedisConfig::from_json_str(&text, "<test>").unwrap().0
}

fn open(config: &RedisConfig, name: &str, dtype: ValueDtype, dim: usize) -> Table {
    let spec = TableSpec::new(name, KeyDtype::I64, dtype, Dim::new(dim).unwrap());
    tfra_redis::TableBuilder::from_spec(config, spec)
        .persist(false)
        .rebucket(false)
        .open()
        .unwrap()
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn read(table: &Table, keys: &[i64]) -> (Vec<f32>, Vec<bool>) {
    let mut out = vec![0u8; keys.len() * table.row_bytes()];
    let mut exists = vec![false; keys.len()];
    let zero = vec![0u8; table.row_bytes()];
    table
        .find(keys, Defaults::Row(&zero), &mut out, Some(&mut exists))
        .unwrap();
    let values = out
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (values, exists)
}

/// Two steps on keys 7 (stored before), 8 and 9 (new) against the same steps on arrays.
fn check_two_steps(server: &Standalone, opt: Optimizer, name: &str) {
    let config = config(server);
    let params = open(&config, name, ValueDtype::F32, DIM);
    let slot_tables: Vec<Table> = opt
        .slot_names()
        .iter()
        .map(|s| {
            open(
                &config,
                &format!("{name}_{name}_shadow_{s}"),
                ValueDtype::F32,
                DIM,
            )
        })
        .collect();
    let slots: Vec<&Table> = slot_tables.iter().collect();

    let keys = [7i64, 8, 9];
    let stored: Vec<f32> = vec![0.5, -0.25, 1.0, 2.0];
    params.insert(&keys[..1], &to_bytes(&stored)).unwrap();
    let init: Vec<f32> = (0..keys.len() * DIM)
        .map(|i| i as f32 * 0.01 - 0.05)
        .collect();

    // The forward pass saw the stored row for 7 and the initializer rows for 8 and 9.
    let mut want = init.clone();
    want[..DIM].copy_from_slice(&stored);
    let mut want_slots: Vec<Vec<f32>> = opt
        .slot_names()
        .iter()
        .map(|s| vec![opt.initial_slot_value(s); keys.len() * DIM])
        .collect();

    let grad_steps: [Vec<f32>; 2] = [
        (0..keys.len() * DIM)
            .map(|i| (i as f32 - 5.0) * 0.3)
            .collect(),
        (0..keys.len() * DIM)
            .map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.7)
            .collect(),
    ];
    for (i, grads) in grad_steps.iter().enumerate() {
        let step = i as u64 + 1;
        apply_gradients(&opt, &params, &slots, &keys, grads, &init, step).unwrap();
        let mut refs: Vec<&mut [f32]> = want_slots.iter_mut().map(Vec::as_mut_slice).collect();
        opt.update_rows(step, &mut want, &mut refs, grads);
    }

    let (got, exists) = read(&params, &keys);
    assert_eq!(exists, [true; 3], "{name}: every updated row is stored");
    assert_eq!(got, want, "{name}: params");
    for ((table, slot), want) in slots.iter().zip(opt.slot_names()).zip(&want_slots) {
        let (got, exists) = read(table, &keys);
        assert_eq!(exists, [true; 3], "{name}: slot {slot} rows are stored");
        assert_eq!(&got, want, "{name}: slot {slot}");
    }
}

#[test]
fn two_steps_through_redis_equal_the_math_on_arrays() {
    let server = Standalone::start();
    check_two_steps(&server, Optimizer::Sgd { lr: 0.1 }, "sgd_emb");
    check_two_steps(
        &server,
        Optimizer::Adagrad {
            lr: 0.1,
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        },
        "adagrad_emb",
    );
    check_two_steps(
        &server,
        Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        },
        "adam_emb",
    );
    check_two_steps(
        &server,
        Optimizer::from_keras_name(
            "ftrl",
            &[
                ("learning_rate", 0.1),
                ("l1_regularization_strength", 0.01),
                ("l2_regularization_strength", 0.1),
            ],
        )
        .unwrap(),
        "ftrl_emb",
    );
}

#[test]
fn adam_slot_rows_hold_the_moments() {
    let server = Standalone::start();
    let config = config(&server);
    let opt = Optimizer::from_keras_name("adam", &[("learning_rate", 0.1)]).unwrap();
    let params = open(&config, "emb", ValueDtype::F32, 2);
    let m = open(&config, "emb_emb_shadow_m", ValueDtype::F32, 2);
    let v = open(&config, "emb_emb_shadow_v", ValueDtype::F32, 2);
    apply_gradients(&opt, &params, &[&m, &v], &[1], &[2.0, -4.0], &[0.0, 0.0], 1).unwrap();
    // m = (1 - b1)·g and v = (1 - b2)·g² after the first step from zero.
    let (m_row, _) = read(&m, &[1]);
    let (v_row, _) = read(&v, &[1]);
    assert_eq!(m_row, [2.0 * 0.1f32, -4.0 * 0.1f32]);
    assert!((v_row[0] - 0.004).abs() < 1e-9 && (v_row[1] - 0.016).abs() < 1e-9);
    // Rows not in the batch are untouched (lazy update), in params and slots alike.
    assert_eq!(params.size().unwrap(), 1);
    assert_eq!(m.size().unwrap(), 1);
}

#[test]
fn bad_arguments_are_refused_with_clear_messages() {
    let server = Standalone::start();
    let config = config(&server);
    let adam = Optimizer::from_keras_name("adam", &[]).unwrap();
    let params = open(&config, "p", ValueDtype::F32, 2);
    let m = open(&config, "p_p_shadow_m", ValueDtype::F32, 2);
    let v = open(&config, "p_p_shadow_v", ValueDtype::F32, 2);
    let v3 = open(&config, "p_p_shadow_v3", ValueDtype::F32, 3);
    let v64 = open(&config, "p_p_shadow_v64", ValueDtype::F64, 2);
    let g = [1.0f32, 1.0, 1.0, 1.0];
    let init = [0.0f32; 4];
    let err = |slots: &[&Table], keys: &[i64], grads: &[f32], step| {
        let e = apply_gradients(
            &adam,
            &params,
            slots,
            keys,
            grads,
            &init[..grads.len()],
            step,
        )
        .unwrap_err();
        (e.argument_kind(), e.to_string())
    };
    let (kind, msg) = err(&[&m, &v64], &[1, 2], &g, 1);
    assert!(
        msg.contains("\"p_p_shadow_v64\"") && msg.contains("float64"),
        "{msg}"
    );
    assert_eq!(kind, Some(ArgumentKind::Dtype));
    let (kind, msg) = err(&[&m, &v3], &[1, 2], &g, 1);
    assert!(
        msg.contains("\"p_p_shadow_v3\"") && msg.contains("dim 3"),
        "{msg}"
    );
    assert_eq!(kind, Some(ArgumentKind::Dim));
    let (kind, msg) = err(&[&m], &[1, 2], &g, 1);
    assert!(msg.contains("2 slot tables (m, v)"), "{msg}");
    assert_eq!(kind, Some(ArgumentKind::TableSet));
    let (kind, msg) = err(&[&m, &v], &[1, 1], &g, 1);
    assert!(msg.contains("key 1 appears more than once"), "{msg}");
    assert_eq!(kind, Some(ArgumentKind::DuplicateKey));
    let (kind, msg) = err(&[&m, &v], &[1, 2], &g[..3], 1);
    assert_eq!(msg, "grads has 3 float32 values, expected 2 rows x 2 = 4");
    assert_eq!(kind, Some(ArgumentKind::Shape));
    let (kind, msg) = err(&[&m, &v], &[1, 2], &g, 0);
    assert!(msg.contains("step 0"), "{msg}");
    assert_eq!(kind, Some(ArgumentKind::Optimizer));
    // Nothing was written by the refused calls.
    assert_eq!(params.size().unwrap(), 0);
    assert_eq!(m.size().unwrap(), 0);
}

#[test]
fn batches_larger_than_a_window_are_applied_whole() {
    let server = Standalone::start();
    let config = config(&server);
    let opt = Optimizer::Sgd { lr: 1.0 };
    let params = open(&config, "big", ValueDtype::F32, 1);
    let n = (1 << 16) + 100;
    let keys: Vec<i64> = (0..n as i64).collect();
    let grads: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let init = vec![0.0f32; n];
    apply_gradients(&opt, &params, &[], &keys, &grads, &init, 1).unwrap();
    assert_eq!(params.size().unwrap(), n as u64);
    let probe = [0i64, 65535, 65536, n as i64 - 1];
    let (got, _) = read(&params, &probe);
    assert_eq!(got, probe.map(|k| -(k as f32)));
}
