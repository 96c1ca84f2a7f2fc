//! `redis_fused_row`: an id's optimizer slots stored after its row in the row's own field,
//! against real servers (standalone and cluster).

mod support;

use support::{f32_bytes as bytes, f32s as floats};

use serde_json::json;
use support::{Cluster, Standalone};
use tfra_redis::codec::{Dim, KeyDtype, ValueDtype};
use tfra_redis::config::RedisConfig;
use tfra_redis::store;
use tfra_redis::table::{Defaults, Table, TableSpec};
use tfra_redis::{ArgumentKind, Error, TableBuilder};

const DIM: usize = 2;

fn config(json: &str) -> RedisConfig {
    RedisConfig::from_json_str(json, "<test>").unwrap().0
}

fn open(json: &str, name: &str) -> Table {
    let spec = TableSpec::new(name, KeyDtype::I64, ValueDtype::F32, Dim::new(DIM).unwrap());
    TableBuilder::from_spec(&config(json), spec).open().unwrap()
}

/// (rows, slots) of `keys`, default row `[-1, -1]`, default slots `[9; 2 * DIM]`.
fn find_with_slots(t: &Table, keys: &[i64]) -> tfra_redis::Result<(Vec<f32>, Vec<f32>)> {
    let mut rows = vec![0u8; keys.len() * t.row_bytes()];
    let mut slots = vec![0u8; keys.len() * 2 * t.row_bytes()];
    let slot_default = bytes(&[9.0; 2 * DIM]);
    t.find_with_slots(
        keys,
        Defaults::Row(&bytes(&[-1.0; DIM])),
        &mut rows,
        &slot_default,
        &mut slots,
    )?;
    Ok((floats(&rows), floats(&slots)))
}

fn find(t: &Table, keys: &[i64]) -> tfra_redis::Result<Vec<f32>> {
    let mut rows = vec![0u8; keys.len() * t.row_bytes()];
    t.find(keys, Defaults::Row(&bytes(&[-1.0; DIM])), &mut rows, None)?;
    Ok(floats(&rows))
}

/// Rows and slots written together, read together and apart; writes of rows alone (insert,
/// accum) keep the slots; export gives rows; a model-tag import copies the slots too.
fn exercise(json: &str, name: &str) {
    let fused = json.replace('}', r#","redis_fused_row":true}"#);
    let t = open(&fused, name);
    t.clear().unwrap();
    t.insert(&[1, 2, 3], &bytes(&[1.0, 1.5, 2.0, 2.5, 3.0, 3.5]))
        .unwrap();
    // Ids 1 and 2 trained: two slot rows each after the row.
    t.insert_with_slots(
        &[1, 2],
        &bytes(&[10.0, 10.5, 20.0, 20.5]),
        &bytes(&[11.0, 12.0, 13.0, 14.0, 21.0, 22.0, 23.0, 24.0]),
    )
    .unwrap();
    assert_eq!(
        find(&t, &[1, 2, 3, 4]).unwrap(),
        [10.0, 10.5, 20.0, 20.5, 3.0, 3.5, -1.0, -1.0]
    );
    let (rows, slots) = find_with_slots(&t, &[2, 3, 4, 1]).unwrap();
    assert_eq!(rows, [20.0, 20.5, 3.0, 3.5, -1.0, -1.0, 10.0, 10.5]);
    assert_eq!(
        slots,
        [
            [21.0, 22.0, 23.0, 24.0],
            [9.0; 4], // stored without slots
            [9.0; 4], // missing
            [11.0, 12.0, 13.0, 14.0]
        ]
        .concat()
    );

    // Rows alone: the slots stay.
    t.insert(&[1], &bytes(&[100.0, 100.5])).unwrap();
    t.accum(&[2, 5], &bytes(&[1.0, 1.0, 5.0, 5.5]), &[true, false])
        .unwrap();
    let (rows, slots) = find_with_slots(&t, &[1, 2, 5]).unwrap();
    assert_eq!(rows, [100.0, 100.5, 21.0, 21.5, 5.0, 5.5]);
    assert_eq!(
        slots,
        [[11.0, 12.0, 13.0, 14.0], [21.0, 22.0, 23.0, 24.0], [9.0; 4]].concat()
    );

    let (keys, values) = t.export_rows::<f32>().unwrap();
    let mut pairs: Vec<(i64, Vec<f32>)> = keys
        .into_ints()
        .unwrap()
        .into_iter()
        .zip(values.chunks(DIM))
        .map(|(k, v)| (k, v.to_vec()))
        .collect();
    pairs.sort_by_key(|p| p.0);
    assert_eq!(
        pairs,
        vec![
            (1, vec![100.0, 100.5]),
            (2, vec![21.0, 21.5]),
            (3, vec![3.0, 3.5]),
            (5, vec![5.0, 5.5]),
        ]
    );

    // Slots of another optimizer (one slot row) do not fit: a clear error naming the key.
    let mut rows = vec![0u8; t.row_bytes()];
    let mut one = vec![0u8; t.row_bytes()];
    let err = t
        .find_with_slots(
            &[1],
            Defaults::Row(&bytes(&[0.0; DIM])),
            &mut rows,
            &bytes(&[0.0; DIM]),
            &mut one,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Data { .. }), "{err}");
    assert!(err.to_string().contains("key 1 "), "{err}");

    // A new model tag importing this one gets the slots as well.
    let tag = r#","model_tag_import":"test","model_tag_runtime":"next"}"#;
    let next = open(&fused.replace('}', tag), name);
    next.clear().unwrap();
    assert_eq!(store::import_model_tag(&next).unwrap(), 4);
    let (rows, slots) = find_with_slots(&next, &[1, 3]).unwrap();
    assert_eq!(rows, [100.0, 100.5, 3.0, 3.5]);
    assert_eq!(slots, [[11.0, 12.0, 13.0, 14.0], [9.0; 4]].concat());
    next.clear().unwrap();
    t.clear().unwrap();
}

#[test]
fn standalone_fused_rows() {
    let s = Standalone::start();
    exercise(&s.config_json(json!({})), "fused");

    // A stored value that is not a whole number of rows is an error naming the key.
    let t = open(
        &s.config_json(json!({"redis_fused_row": true})),
        "fused_bad",
    );
    t.insert(&[7], &bytes(&[1.0, 2.0])).unwrap();
    let bucket = &t.bucket_names()[0];
    let reply = raw(
        &s,
        &[b"HSET", bucket.as_bytes(), &8i64.to_le_bytes(), &[0u8; 12]],
    );
    assert_eq!(reply, b":1\r\n");
    let err = find(&t, &[8]).unwrap_err();
    assert!(matches!(err, Error::Data { .. }), "{err}");
    assert!(err.to_string().contains("key 8 "), "{err}");
    assert!(err.to_string().contains("whole number of rows"), "{err}");
    let err = t.export().unwrap_err();
    assert!(err.to_string().contains("key 8 "), "{err}");
    // An empty value is no whole row either (and must not be sliced).
    let reply = raw(&s, &[b"HSET", bucket.as_bytes(), &8i64.to_le_bytes(), b""]);
    assert_eq!(reply, b":0\r\n");
    let err = find_with_slots(&t, &[8]).unwrap_err();
    assert!(err.to_string().contains("key 8 holds 0 bytes"), "{err}");

    // TFRA's layout is unchanged: a plain table refuses slots and stores rows alone.
    let plain = open(&s.config_json(json!({})), "plain");
    let mut rows = vec![0u8; plain.row_bytes()];
    let mut slots = vec![0u8; plain.row_bytes()];
    let err = plain
        .find_with_slots(
            &[1],
            Defaults::Row(&bytes(&[0.0; DIM])),
            &mut rows,
            &bytes(&[0.0; DIM]),
            &mut slots,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                kind: ArgumentKind::TableSet,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("redis_fused_row"), "{err}");
    plain.insert(&[1], &bytes(&[1.0, 2.0])).unwrap();
    let len = raw(&s, &[b"HSTRLEN", b"test:plain{3560}", &1i64.to_le_bytes()]);
    assert_eq!(len, b":8\r\n");
}

/// One command with binary arguments (redis-cli arguments cannot hold NULs); its raw reply.
fn raw(s: &Standalone, args: &[&[u8]]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        cmd.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        cmd.extend_from_slice(arg);
        cmd.extend_from_slice(b"\r\n");
    }
    conn.write_all(&cmd).unwrap();
    let mut reply = [0u8; 64];
    let n = conn.read(&mut reply).unwrap();
    reply[..n].to_vec()
}

#[test]
fn cluster_fused_rows() {
    let c = Cluster::start();
    exercise(&c.config_json(json!({"storage_slice": 3})), "fused");
}

#[test]
fn both_fused_layouts_at_once_are_a_config_error() {
    let text = r#"{"redis_fused_row": true, "redis_fused_slots": true}"#;
    let err = RedisConfig::from_json_str(text, "<test>").unwrap_err();
    let message = err.to_string();
    assert!(message.contains("redis_fused_row"), "{message}");
    assert!(message.contains("redis_fused_slots"), "{message}");
}
