//! Typed rows (`find_rows`, `insert_rows`, `accum_rows`, `export_rows`) and int32 ids against
//! real servers: every element type round-trips and stores exactly the little-endian bytes the
//! byte API (and TFRA) uses, other element types are refused as `ArgumentKind::Dtype` before
//! anything is sent, and `i32` ids address the same rows as the equal `i64` ids.

mod support;

use serde_json::json;
use support::Standalone;
use tfra_redis::{
    ArgumentKind, ByteKeys, Defaults, Element, Error, KeyDtype, RedisConfig, Table, TableBuilder,
    ValueDtype, bf16, f16,
};

const DIM: usize = 3;

fn config(json: &str) -> RedisConfig {
    RedisConfig::from_json_str(json, "<test>").unwrap().0
}

fn open(config: &RedisConfig, name: &str, key: KeyDtype, value: ValueDtype) -> Table {
    let table = TableBuilder::new(config)
        .name(name)
        .dim(DIM)
        .key_dtype(key)
        .value_dtype(value)
        .persist(false)
        .open()
        .unwrap();
    table.clear().unwrap();
    table
}

/// Inserts two typed rows, reads them back with a default for a missing id, checks the stored
/// bytes are the elements' little-endian bytes, and exports them.
fn round_trip<T: Element + PartialEq + LeBytes>(
    config: &RedisConfig,
    rows: [T; 2 * DIM],
    default: T,
) {
    let dtype = T::DTYPE;
    let table = open(config, &format!("typed_{dtype}"), KeyDtype::I64, dtype);
    table.insert_rows(&[11, 22], &rows).unwrap();

    let mut out = [default; 3 * DIM];
    let mut found = [true; 3];
    let defaults = [default; DIM];
    table
        .find_rows(
            &[22, 33, 11],
            Defaults::Row(&defaults),
            &mut out,
            Some(&mut found),
        )
        .unwrap();
    assert_eq!(found, [true, false, true], "{dtype}");
    assert_eq!(&out[..DIM], &rows[DIM..], "{dtype}");
    assert_eq!(&out[DIM..2 * DIM], &defaults, "{dtype}");
    assert_eq!(&out[2 * DIM..], &rows[..DIM], "{dtype}");

    // Per-key defaults, typed.
    let per_key: Vec<T> = rows.iter().rev().copied().collect();
    let mut out = [default; 2 * DIM];
    table
        .find_rows(&[44, 55], Defaults::PerKey(&per_key), &mut out, None)
        .unwrap();
    assert_eq!(&out[..], &per_key[..], "{dtype}");

    // What Redis holds is what TFRA writes: each element's little-endian bytes, no header.
    let mut raw = vec![0u8; 2 * table.row_bytes()];
    let zero = vec![0u8; table.row_bytes()];
    table
        .find(&[11, 22], Defaults::Row(&zero), &mut raw, None)
        .unwrap();
    let le: Vec<u8> = rows.iter().flat_map(LeBytes::le).collect();
    assert_eq!(raw, le, "{dtype}");

    let (ids, values) = table.export_rows::<T>().unwrap();
    let mut pairs: Vec<(i64, Vec<T>)> = ids
        .into_ints()
        .unwrap()
        .into_iter()
        .zip(values.chunks(DIM).map(<[T]>::to_vec))
        .collect();
    pairs.sort_by_key(|(id, _)| *id);
    assert_eq!(
        pairs,
        vec![(11, rows[..DIM].to_vec()), (22, rows[DIM..].to_vec())],
        "{dtype}"
    );
    table.clear().unwrap();
}

/// An element's little-endian bytes, from the type's own `to_le_bytes` (not from the crate's
/// casts, which are what is under test).
trait LeBytes {
    fn le(&self) -> Vec<u8>;
}

macro_rules! le_bytes {
    ($($t:ty),*) => {$(
        impl LeBytes for $t {
            fn le(&self) -> Vec<u8> {
                self.to_le_bytes().to_vec()
            }
        }
    )*};
}

le_bytes!(f32, f64, f16, bf16, i8, i32, i64);

#[test]
fn every_element_type_round_trips() {
    let s = Standalone::start();
    let c = config(&s.config_json(json!({"model_tag_runtime": "typed"})));
    round_trip(&c, [0.5f32, -1.25, 3e38, 0.0, -0.0, 7.0], -9.0);
    round_trip(&c, [0.1f64, -1e300, 2.5, 4.0, 5.0, 6.0], f64::MIN);
    round_trip(
        &c,
        [1.5, -2.0, 65504.0, 0.000061, 3.0, -0.5].map(f16::from_f32),
        f16::from_f32(-7.0),
    );
    round_trip(
        &c,
        [1.5, -2.0, 3.0e38, 0.0078125, 3.0, -0.5].map(bf16::from_f32),
        bf16::from_f32(-7.0),
    );
    round_trip(&c, [1i8, -128, 127, 0, 5, -6], 99);
    round_trip(&c, [1i32, i32::MIN, i32::MAX, 0, 5, -6], 99);
    round_trip(&c, [1i64, i64::MIN, i64::MAX, 0, 5, -6], 99);
}

#[test]
fn accum_rows_adds_typed_deltas() {
    let s = Standalone::start();
    let c = config(&s.config_json(json!({"model_tag_runtime": "typed_accum"})));
    let t = open(&c, "acc", KeyDtype::I64, ValueDtype::I32);
    t.insert_rows(&[1], &[10i32, 20, 30]).unwrap();
    // Id 1 is present and flagged: added; id 2 is absent and not flagged: set.
    t.accum_rows(&[1, 2], &[1i32, 2, 3, 7, 8, 9], &[true, false])
        .unwrap();
    let mut out = [0i32; 2 * DIM];
    t.find_rows(&[1, 2], Defaults::Row(&[0; DIM]), &mut out, None)
        .unwrap();
    assert_eq!(out, [11, 22, 33, 7, 8, 9]);
    let err = t
        .accum_rows(&[1], &[1i64, 2, 3], &[true])
        .expect_err("int64 deltas for an int32 table");
    assert_eq!(err.argument_kind(), Some(ArgumentKind::Dtype));
}

fn assert_kind<T: std::fmt::Debug>(result: tfra_redis::Result<T>, kind: ArgumentKind, what: &str) {
    match result {
        Err(Error::InvalidArgument { kind: k, message }) => {
            assert_eq!(k, kind, "{what}: {message}")
        }
        other => panic!("{what}: expected InvalidArgument {kind:?}, got {other:?}"),
    }
}

#[test]
fn other_element_types_are_refused_before_anything_is_sent() {
    let s = Standalone::start();
    let c = config(&s.config_json(json!({"model_tag_runtime": "typed_refuse"})));
    let t = open(&c, "f32s", KeyDtype::I64, ValueDtype::F32);
    assert_kind(
        t.insert_rows(&[1], &[1.0f64, 2.0, 3.0]),
        ArgumentKind::Dtype,
        "f64 rows",
    );
    // Same width, different bits: the case a byte API could not catch.
    assert_kind(
        t.insert_rows(&[1], &[1i32, 2, 3]),
        ArgumentKind::Dtype,
        "i32 rows",
    );
    let mut out = [f16::ZERO; DIM];
    assert_kind(
        t.find_rows(&[1], Defaults::Row(&[f16::ZERO; DIM]), &mut out, None),
        ArgumentKind::Dtype,
        "f16 find",
    );
    assert_kind(t.export_rows::<i32>(), ArgumentKind::Dtype, "i32 export");
    assert_eq!(t.size().unwrap(), 0, "a refused call wrote nothing");

    let h = open(&c, "f16s", KeyDtype::I64, ValueDtype::F16);
    assert_kind(
        h.insert_rows(&[1], &[bf16::ONE; DIM]),
        ArgumentKind::Dtype,
        "bf16 rows in a float16 table",
    );
    let err = h.insert_rows(&[1], &[bf16::ONE; DIM]).unwrap_err();
    assert!(
        err.to_string().contains("float16") && err.to_string().contains("bfloat16"),
        "the message names both dtypes: {err}"
    );

    // Shapes are counted in elements.
    assert_kind(
        t.insert_rows(&[1, 2], &[1.0f32; DIM]),
        ArgumentKind::Shape,
        "one row for two ids",
    );
    let err = t.insert_rows(&[1, 2], &[1.0f32; DIM]).unwrap_err();
    assert!(
        err.to_string()
            .contains("has 3 float32 values, expected 2 rows x 3 = 6"),
        "{err}"
    );
    let mut out = [0f32; 2 * DIM];
    assert_kind(
        t.find_rows(&[1, 2], Defaults::Row(&[0.0; 2]), &mut out, None),
        ArgumentKind::Shape,
        "short default row",
    );
    assert_kind(
        t.find_rows(&[1, 2], Defaults::PerKey(&[0.0; DIM]), &mut out, None),
        ArgumentKind::Shape,
        "per-key defaults for one id",
    );
    assert_kind(
        t.find_rows(&[1], Defaults::Row(&[0.0; DIM]), &mut out, None),
        ArgumentKind::Shape,
        "out for two rows, one id",
    );
    assert_eq!(t.size().unwrap(), 0);
}

/// `i32` ids address the rows of the equal `i64` ids in int32 and int64 tables (negative ones
/// included: sign extension, not zero extension), and are refused by string tables.
fn check_i32_ids(c: &RedisConfig, tag: &str) {
    for key in [KeyDtype::I32, KeyDtype::I64] {
        let t = open(c, &format!("ids_{tag}_{key}"), key, ValueDtype::F32);
        let ids32: Vec<i32> = vec![-3, 0, 7, i32::MAX, i32::MIN, 123_456];
        let ids64: Vec<i64> = ids32.iter().map(|&k| i64::from(k)).collect();
        let rows: Vec<f32> = (0..ids32.len() * DIM).map(|x| x as f32).collect();
        t.insert_rows(&ids32, &rows).unwrap();

        let mut out = vec![0f32; rows.len()];
        let mut found = vec![false; ids64.len()];
        t.find_rows(
            &ids64,
            Defaults::Row(&[-1.0; DIM]),
            &mut out,
            Some(&mut found),
        )
        .unwrap();
        assert!(found.iter().all(|&f| f), "{key}: {found:?}");
        assert_eq!(out, rows, "{key}");

        // And the other way: i32 ids read what i64 ids wrote.
        t.insert_rows(&[5i64], &[9.0f32; DIM]).unwrap();
        let mut one = [0f32; DIM];
        t.find_rows(&[5i32][..], Defaults::Row(&[-1.0; DIM]), &mut one, None)
            .unwrap();
        assert_eq!(one, [9.0; DIM], "{key}");

        let (ids, _) = t.export_rows::<f32>().unwrap();
        let mut ids = ids.into_ints().unwrap();
        ids.sort_unstable();
        let mut want = ids64.clone();
        want.push(5);
        want.sort_unstable();
        assert_eq!(ids, want, "{key}: export gives i64 ids");

        t.remove(&ids32).unwrap();
        assert_eq!(t.size().unwrap(), 1, "{key}");
        t.clear().unwrap();
    }
    let s = open(c, &format!("ids_{tag}_str"), KeyDtype::Str, ValueDtype::F32);
    assert_kind(
        s.insert_rows(&[1i32][..], &[0.0f32; DIM]),
        ArgumentKind::Dtype,
        "i32 ids for a string table",
    );
    // String ids still work through the typed methods.
    let offsets = [0, 3, 5];
    let keys = ByteKeys::new(b"abcde", &offsets).unwrap();
    s.insert_rows(keys, &[1.0f32; 2 * DIM]).unwrap();
    assert_eq!(s.size().unwrap(), 2);
    s.clear().unwrap();
}

#[test]
fn i32_ids_address_the_rows_of_equal_i64_ids() {
    let s = Standalone::start();
    check_i32_ids(
        &config(&s.config_json(json!({"model_tag_runtime": "typed_ids"}))),
        "standalone",
    );
}

#[test]
#[cfg(feature = "cluster")]
fn i32_ids_pick_the_buckets_of_equal_i64_ids_in_a_cluster() {
    let c = support::Cluster::start();
    c.wait_until_settled(std::time::Duration::from_secs(30));
    // Several buckets, so a wrong bucket for an i32 id would miss the row the i64 id wrote.
    check_i32_ids(
        &config(&c.config_json(json!({"storage_slice": 4, "model_tag_runtime": "typed_ids"}))),
        "cluster",
    );
    check_i32_ids(
        &config(
            &c.config_json(json!({"storage_slice": 3, "using_hash_storage_slice": true,
                                       "model_tag_runtime": "typed_ids_crc"})),
        ),
        "cluster_crc",
    );
}
