//! `slot_layout`: converting optimizer slots between TFRA's per-slot tables and the fused
//! table, against a real standalone server and a real cluster. A failure is injected through
//! the progress callback (an error stops the conversion where it is, as a crash would, minus
//! the process exit that the Python CLI tests do with a real `os._exit`).

mod support;

use support::f32_bytes;

use serde_json::json;
use support::{Cluster, Standalone, redis_cli};
use tfra_redis::config::RedisConfig;
use tfra_redis::slot_layout::{
    ConvertOptions, SlotLayout, SlotNames, SlotShape, SlotTables, check_slot_layout, convert_slots,
};
use tfra_redis::table::Table;
use tfra_redis::{ArgumentKind, Defaults, Error};

const DIM: usize = 2;
const IDS: i64 = 3000;

fn config(json: &str) -> RedisConfig {
    RedisConfig::from_json_str(json, "<test>").unwrap().0
}

fn slot_row(id: i64, slot: usize) -> Vec<f32> {
    (0..DIM)
        .map(|j| id as f32 * 10.0 + slot as f32 + j as f32 / 10.0)
        .collect()
}

fn open(config: &RedisConfig, names: &SlotNames, layout: SlotLayout) -> SlotTables {
    SlotTables::open(config, names, layout, SlotShape::f32(DIM), false).unwrap()
}

fn rows(table: &Table, ids: &[i64]) -> (Vec<f32>, Vec<bool>) {
    let dim = table.spec().dim.get();
    let mut out = vec![0f32; ids.len() * dim];
    let mut exists = vec![false; ids.len()];
    table
        .find_rows(
            ids,
            Defaults::Row(&vec![-1.0; dim]),
            &mut out,
            Some(&mut exists),
        )
        .unwrap();
    (out, exists)
}

/// Per-slot tables m and v as TFRA leaves them; ids 0-4 have an m row but no v row.
fn fill_per_slot(tables: &SlotTables) -> Vec<i64> {
    let ids: Vec<i64> = (0..IDS).collect();
    for (slot, table) in tables.tables().iter().enumerate() {
        let keys = if slot == 0 { &ids[..] } else { &ids[5..] };
        let values: Vec<f32> = keys.iter().flat_map(|&k| slot_row(k, slot)).collect();
        table.insert_rows(keys, &values).unwrap();
    }
    ids
}

fn convert(
    config: &RedisConfig,
    names: &SlotNames,
    from: SlotLayout,
    to: SlotLayout,
    options: &ConvertOptions,
    fail_in: Option<(&'static str, u64)>,
) -> tfra_redis::Result<tfra_redis::slot_layout::ConvertReport> {
    convert_slots(
        config,
        names,
        from,
        to,
        SlotShape::f32(DIM),
        options,
        |p| match fail_in {
            Some((phase, after)) if p.phase == phase && p.ids_copied >= after => {
                Err(Error::invalid(ArgumentKind::Cancelled, "injected failure"))
            }
            _ => Ok(()),
        },
    )
}

fn check_round_trip(config: &RedisConfig, prefix: &str) {
    let names = SlotNames::new(&format!("{prefix}-params"), Some("w"), &["m", "v"]).unwrap();
    let per_slot = open(config, &names, SlotLayout::PerSlot);
    let fused = open(config, &names, SlotLayout::Fused);
    let ids = fill_per_slot(&per_slot);
    let mut options = ConvertOptions::default();
    options.page = 256;
    options.initial = vec![vec![0u8; DIM * 4], 0.5f32.to_le_bytes().repeat(DIM)];

    // Dry run: counts, nothing written.
    options.dry_run = true;
    let dry = convert(
        config,
        &names,
        SlotLayout::PerSlot,
        SlotLayout::Fused,
        &options,
        None,
    )
    .unwrap();
    assert_eq!(
        dry.source.iter().map(|s| s.1).collect::<Vec<_>>(),
        [3000, 2995]
    );
    assert_eq!(fused.sizes().unwrap(), [0]);
    options.dry_run = false;

    // Stopped half-way through the copy: the source is whole, training refuses both layouts.
    let err = convert(
        config,
        &names,
        SlotLayout::PerSlot,
        SlotLayout::Fused,
        &options,
        Some(("copying", 1000)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert!(fused.sizes().unwrap()[0] > 0);
    assert_eq!(per_slot.sizes().unwrap(), [3000, 2995]);
    for layout in [SlotLayout::Fused, SlotLayout::PerSlot] {
        let err = check_slot_layout(config, &names, layout, SlotShape::f32(DIM)).unwrap_err();
        assert!(matches!(err, Error::ConfigField { .. }), "{err}");
        assert!(err.to_string().contains("is unfinished"), "{err}");
    }
    // Another direction cannot start over the unfinished one.
    let err = convert(
        config,
        &names,
        SlotLayout::Fused,
        SlotLayout::PerSlot,
        &options,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("unfinished"), "{err}");

    let report = convert(
        config,
        &names,
        SlotLayout::PerSlot,
        SlotLayout::Fused,
        &options,
        None,
    )
    .unwrap();
    assert!(report.resumed && report.source_deleted);
    assert_eq!(per_slot.sizes().unwrap(), [0, 0]);
    let (got, exists) = rows(&fused.tables()[0], &ids);
    assert!(exists.iter().all(|e| *e));
    for (i, &id) in ids.iter().enumerate() {
        let row = &got[i * 2 * DIM..(i + 1) * 2 * DIM];
        assert_eq!(row[..DIM], slot_row(id, 0)[..], "m of {id}");
        let v = if id < 5 {
            vec![0.5; DIM]
        } else {
            slot_row(id, 1)
        };
        assert_eq!(row[DIM..], v[..], "v of {id}");
    }
    check_slot_layout(config, &names, SlotLayout::Fused, SlotShape::f32(DIM)).unwrap();
    let err =
        check_slot_layout(config, &names, SlotLayout::PerSlot, SlotShape::f32(DIM)).unwrap_err();
    assert!(
        err.to_string().contains("redis_fused_slots does not match"),
        "{err}"
    );

    // Back, stopped after the copy and before the source is gone: the rerun only deletes.
    let err = convert(
        config,
        &names,
        SlotLayout::Fused,
        SlotLayout::PerSlot,
        &options,
        Some(("deleting", 0)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(fused.sizes().unwrap(), [3000]);
    let report = convert(
        config,
        &names,
        SlotLayout::Fused,
        SlotLayout::PerSlot,
        &options,
        None,
    )
    .unwrap();
    assert!(report.resumed && report.source_deleted);
    assert_eq!(report.ids_copied, 0);
    assert_eq!(fused.sizes().unwrap(), [0]);
    assert_eq!(per_slot.sizes().unwrap(), [3000, 3000]);
    let (m, _) = rows(&per_slot.tables()[0], &ids[..10]);
    assert_eq!(
        m,
        ids[..10]
            .iter()
            .flat_map(|&k| slot_row(k, 0))
            .collect::<Vec<_>>()
    );

    // A destination holding rows of its own is refused, and nothing moves.
    fused.tables()[0]
        .insert_rows(&[1_000_000i64], &[1.0f32; 2 * DIM])
        .unwrap();
    let err = convert(
        config,
        &names,
        SlotLayout::PerSlot,
        SlotLayout::Fused,
        &options,
        None,
    )
    .unwrap_err();
    assert_eq!(err.argument_kind(), Some(ArgumentKind::Config), "{err}");
    assert!(err.to_string().contains("already holds rows"), "{err}");
    assert_eq!(per_slot.sizes().unwrap(), [3000, 3000]);
    for table in per_slot.tables().iter().chain(fused.tables()) {
        table.clear().unwrap();
    }
}

#[test]
fn converts_and_resumes_in_standalone() {
    let server = Standalone::start();
    let config = config(&server.config_json(json!({"storage_slice": 3})));
    check_round_trip(&config, "standalone");
}

#[test]
fn converts_and_resumes_in_a_cluster() {
    let cluster = Cluster::start();
    let config = config(&cluster.config_json(json!({"storage_slice": 4})));
    check_round_trip(&config, "cluster");
}

/// A conversion stopped after some buckets and rerun with another bucket layout (a changed
/// storage_slice) copies everything again: bucket i of the new layout holds other ids.
#[test]
fn a_rerun_with_another_bucket_layout_copies_everything() {
    let cluster = Cluster::start();
    let before = config(&cluster.config_json(json!({"storage_slice": 4})));
    let after = config(&cluster.config_json(json!({"storage_slice": 6})));
    let names = SlotNames::new("relayout-params", Some("w"), &["m", "v"]).unwrap();
    let ids = fill_per_slot(&open(&before, &names, SlotLayout::PerSlot));
    let mut options = ConvertOptions::default();
    options.page = 128;
    let err = convert_slots(
        &before,
        &names,
        SlotLayout::PerSlot,
        SlotLayout::Fused,
        SlotShape::f32(DIM),
        &options,
        |p| {
            if p.buckets_done >= 2 {
                Err(Error::invalid(ArgumentKind::Cancelled, "injected failure"))
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");

    let report = convert(
        &after,
        &names,
        SlotLayout::PerSlot,
        SlotLayout::Fused,
        &options,
        None,
    )
    .unwrap();
    assert!(report.resumed && report.source_deleted);
    assert!(report.ids_copied >= IDS as u64, "{report:?}");
    let fused = open(&after, &names, SlotLayout::Fused);
    let (got, exists) = rows(&fused.tables()[0], &ids);
    assert!(exists.iter().all(|e| *e));
    for (i, &id) in ids.iter().enumerate().skip(5) {
        assert_eq!(got[i * 2 * DIM..i * 2 * DIM + DIM], slot_row(id, 0)[..]);
        assert_eq!(
            got[i * 2 * DIM + DIM..(i + 1) * 2 * DIM],
            slot_row(id, 1)[..]
        );
    }
    fused.tables()[0].clear().unwrap();
}

// -- the fused-row layout: slots after each row in the embedding's own table ---------------

const NO_ROW: i64 = 10;

fn embedding_row(id: i64) -> Vec<f32> {
    (0..DIM).map(|j| -(id as f32) - j as f32 / 100.0).collect()
}

/// Per id: its row (or None when the embedding holds none) and what it stores after the row
/// (empty when nothing), read with the raw value length.
fn fused_row_values(params: &Table, ids: &[i64]) -> Vec<Option<(Vec<f32>, Vec<f32>)>> {
    let (rows, exists) = rows(params, ids);
    let sentinel = vec![f32::MAX; 2 * DIM];
    let mut slots = vec![0u8; ids.len() * 2 * DIM * 4];
    let mut out = vec![0u8; ids.len() * DIM * 4];
    params
        .find_with_slots(
            ids,
            Defaults::Row(&[0u8; DIM * 4]),
            &mut out,
            &f32_bytes(&sentinel),
            &mut slots,
        )
        .unwrap();
    let slots: Vec<f32> = slots
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (0..ids.len())
        .map(|i| {
            exists[i].then(|| {
                let tail = slots[i * 2 * DIM..(i + 1) * 2 * DIM].to_vec();
                let row = rows[i * DIM..(i + 1) * DIM].to_vec();
                (row, if tail == sentinel { Vec::new() } else { tail })
            })
        })
        .collect()
}

fn check_fused_row_round_trip(config: &RedisConfig, prefix: &str) {
    let names = SlotNames::new(&format!("{prefix}/row-params"), Some("w"), &["m", "v"]).unwrap();
    let per_slot = open(config, &names, SlotLayout::PerSlot);
    let fused = open(config, &names, SlotLayout::Fused);
    let row_layout = open(config, &names, SlotLayout::FusedRow);
    let params = &row_layout.tables()[0];
    assert_eq!(params.spec().name, format!("{prefix}_row-params"));
    let ids = fill_per_slot(&per_slot);
    // The embedding holds a row for every id but the last NO_ROW (slots left behind by ids
    // removed from the embedding).
    let with_row = &ids[..(IDS - NO_ROW) as usize];
    let values: Vec<f32> = with_row.iter().flat_map(|&k| embedding_row(k)).collect();
    params.insert_rows(with_row, &values).unwrap();
    let shape = SlotShape::f32(DIM);
    // Per-slot holds the slots, fused-row none: training with redis_fused_row is refused.
    let err = check_slot_layout(config, &names, SlotLayout::FusedRow, shape).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("redis_fused_row does not match"), "{text}");
    assert!(text.contains("--from per-slot --to fused-row"), "{text}");
    let mut options = ConvertOptions::default();
    options.page = 256;
    options.initial = vec![vec![0u8; DIM * 4], 0.5f32.to_le_bytes().repeat(DIM)];

    // Per-slot -> fused-row, stopped half-way: nothing lost, both layouts refused.
    let err = convert(
        config,
        &names,
        SlotLayout::PerSlot,
        SlotLayout::FusedRow,
        &options,
        Some(("copying", 1000)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(per_slot.sizes().unwrap(), [3000, 2995]);
    for layout in SlotLayout::ALL {
        let err = check_slot_layout(config, &names, layout, shape).unwrap_err();
        assert!(err.to_string().contains("is unfinished"), "{err}");
    }
    let report = convert(
        config,
        &names,
        SlotLayout::PerSlot,
        SlotLayout::FusedRow,
        &options,
        None,
    )
    .unwrap();
    assert!(report.resumed && report.source_deleted, "{report:?}");
    assert_eq!(per_slot.sizes().unwrap(), [0, 0]);
    let stored = fused_row_values(params, &ids);
    for (&id, value) in ids.iter().zip(&stored) {
        if id >= IDS - NO_ROW {
            assert!(value.is_none(), "no row was made up for {id}");
            continue;
        }
        let (row, tail) = value.as_ref().unwrap();
        assert_eq!(row, &embedding_row(id), "the row of {id} is kept");
        let v = if id < 5 {
            vec![0.5; DIM]
        } else {
            slot_row(id, 1)
        };
        assert_eq!(tail, &[slot_row(id, 0), v].concat(), "slots of {id}");
    }
    check_slot_layout(config, &names, SlotLayout::FusedRow, shape).unwrap();
    for other in [SlotLayout::PerSlot, SlotLayout::Fused] {
        let err = check_slot_layout(config, &names, other, shape).unwrap_err();
        assert!(matches!(err, Error::ConfigField { .. }), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("redis_fused_row does not match"), "{text}");
        assert!(
            text.contains(&format!("--from fused-row --to {}", other.name())),
            "{text}"
        );
    }

    // Fused-row -> fused, stopped before the slots are stripped: the rerun only strips.
    let err = convert(
        config,
        &names,
        SlotLayout::FusedRow,
        SlotLayout::Fused,
        &options,
        Some(("deleting", 0)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(fused.sizes().unwrap(), [(IDS - NO_ROW) as u64]);
    assert_eq!(fused_row_values(params, &ids), stored);
    let report = convert(
        config,
        &names,
        SlotLayout::FusedRow,
        SlotLayout::Fused,
        &options,
        None,
    )
    .unwrap();
    assert!(report.resumed && report.source_deleted, "{report:?}");
    for (&id, value) in ids.iter().zip(fused_row_values(params, &ids)) {
        if id < IDS - NO_ROW {
            assert_eq!(value, Some((embedding_row(id), Vec::new())), "{id}");
        }
    }
    let (got, exists) = rows(&fused.tables()[0], with_row);
    assert!(exists.iter().all(|e| *e));
    for (i, (_, tail)) in stored.iter().flatten().enumerate() {
        assert_eq!(&got[i * 2 * DIM..(i + 1) * 2 * DIM], &tail[..]);
    }
    check_slot_layout(config, &names, SlotLayout::Fused, shape).unwrap();
    let err = check_slot_layout(config, &names, SlotLayout::FusedRow, shape).unwrap_err();
    assert!(
        err.to_string().contains("--from fused --to fused-row"),
        "{err}"
    );

    // Back into the rows, where an id missing from the embedding is counted, not made up.
    fused.tables()[0]
        .insert_rows(&[IDS + 1], &[7.0f32; 2 * DIM])
        .unwrap();
    let report = convert(
        config,
        &names,
        SlotLayout::Fused,
        SlotLayout::FusedRow,
        &options,
        None,
    )
    .unwrap();
    assert_eq!(report.ids_without_row, 1, "{report:?}");
    assert_eq!(fused.sizes().unwrap(), [0]);
    assert_eq!(fused_row_values(params, &ids), stored);

    // A fused-row destination already holding slots is refused.
    fill_per_slot(&per_slot);
    let err = convert(
        config,
        &names,
        SlotLayout::PerSlot,
        SlotLayout::FusedRow,
        &options,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("already holds rows"), "{err}");
    for table in per_slot.tables().iter().chain(row_layout.tables()) {
        table.clear().unwrap();
    }
}

#[test]
fn converts_to_and_from_fused_rows_in_standalone() {
    let server = Standalone::start();
    let config = config(&server.config_json(json!({"storage_slice": 3})));
    check_fused_row_round_trip(&config, "standalone");
}

#[test]
fn converts_to_and_from_fused_rows_in_a_cluster() {
    let cluster = Cluster::start();
    let config = config(&cluster.config_json(json!({"storage_slice": 4})));
    check_fused_row_round_trip(&config, "cluster");
}

/// A rows-only write racing the conversion into fused rows keeps both: the row written
/// meanwhile and the slots the conversion adds after it (the write is a server script).
#[test]
fn a_row_written_during_the_conversion_keeps_its_new_value() {
    let server = Standalone::start();
    let config = config(&server.config_json(json!({"storage_slice": 1})));
    let names = SlotNames::new("race-params", Some("w"), &["m", "v"]).unwrap();
    let per_slot = open(&config, &names, SlotLayout::PerSlot);
    let row_layout = open(&config, &names, SlotLayout::FusedRow);
    let params = &row_layout.tables()[0];
    let ids = fill_per_slot(&per_slot);
    let values: Vec<f32> = ids.iter().flat_map(|&k| embedding_row(k)).collect();
    params.insert_rows(&ids[..], &values).unwrap();
    let mut options = ConvertOptions::default();
    options.page = 100;
    let mut once = true;
    convert_slots(
        &config,
        &names,
        SlotLayout::PerSlot,
        SlotLayout::FusedRow,
        SlotShape::f32(DIM),
        &options,
        |_| {
            // After the first page: every id gets a new row, as a training job would write.
            if once {
                once = false;
                let newer: Vec<f32> = ids.iter().flat_map(|&k| slot_row(k, 9)).collect();
                params.insert_rows(&ids[..], &newer).unwrap();
            }
            Ok(())
        },
    )
    .unwrap();
    for (&id, value) in ids.iter().zip(fused_row_values(params, &ids)) {
        let (row, tail) = value.unwrap();
        assert_eq!(row, slot_row(id, 9), "{id}");
        assert_eq!(tail.len(), 2 * DIM, "{id}");
    }
    params.clear().unwrap();
}

/// A marker key this version did not write (garbage, or a future format) still stops training,
/// and the error says what to do instead of printing a command that cannot finish it.
#[test]
fn an_unknown_marker_is_refused_with_a_way_out() {
    let server = Standalone::start();
    let config = config(&server.config_json(json!({})));
    let names = SlotNames::new("marker-params", Some("w"), &["m"]).unwrap();
    let key = "test:tfra-redis-convert-slots:marker-params_w_slots";
    redis_cli(server.port(), &["SET", key, "something else"]);
    let err =
        check_slot_layout(&config, &names, SlotLayout::FusedRow, SlotShape::f32(DIM)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("redis_fused_row cannot be used yet"),
        "{text}"
    );
    assert!(text.contains("delete the key if you are sure"), "{text}");
    assert!(!text.contains("convert-slots --"), "{text}");
}
