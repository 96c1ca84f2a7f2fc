//! Where an embedding's optimizer slots live, and moving them from one layout to another.
//!
//! TFRA keeps each slot of an embedding in its own table (`<params>_<wrapper>_m`,
//! `..._v`, ...: [`SlotLayout::PerSlot`]); with `redis_fused_slots` this project keeps all of
//! them side by side in one row of one table (`<params>_<wrapper>_slots`:
//! [`SlotLayout::Fused`]). The two cannot see each other's data, so switching the setting on
//! an embedding that already trained would silently restart its optimizer from fresh slots.
//! [`check_slot_layout`] turns that into an error, and [`convert_slots`] moves the slots.
//!
//! A layout is a source and a destination through three operations: read one bucket's ids in
//! pages, each id with one row per slot (`SlotTables::read_bucket`), write such pages
//! (`SlotTables::write`), and delete its slots once copied (`SlotTables::delete`). Another
//! layout (slots inside the params rows, say) is one more [`SlotLayout`] variant with those
//! three operations and its table names in [`SlotNames::table_names`]; [`convert_slots`]
//! itself does not change.
//!
//! A conversion is crash safe: it records itself in a marker key before it writes anything
//! (`<model_tag>:tfra-redis-convert-slots:<fused table>`), copies bucket by bucket (an upsert,
//! checked by reading every copied id back), and deletes the source tables only once every
//! bucket is copied. Training refuses to start while the marker exists, so after a crash at
//! any point the source still holds every id with all its slots (or, once deleting began, the
//! destination does), and running the conversion again finishes it.

use redis::Value;

use crate::backend::{Retry, Role};
use crate::codec::{KeyBuf, KeyDtype, Keys, ValueDtype};
use crate::config::RedisConfig;
use crate::error::{ArgumentKind, Error, Result};
use crate::naming::{FUSED_SLOTS, slot_table_name};
use crate::store::{OpenOptions, open_table_with};
use crate::table::{Defaults, Table, TableSpec};

/// Ids per page read from a source bucket.
const DEFAULT_PAGE: usize = 4096;

/// How an embedding's optimizer slots are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SlotLayout {
    /// TFRA's layout: one table per slot, `<params>_<wrapper>_<slot>`.
    PerSlot,
    /// `redis_fused_slots`: one table `<params>_<wrapper>_slots` whose row holds every slot
    /// of an id side by side, in the optimizer's slot order.
    Fused,
}

impl SlotLayout {
    /// The layout's name on the command line and in messages: `per-slot` or `fused`.
    pub fn name(self) -> &'static str {
        match self {
            SlotLayout::PerSlot => "per-slot",
            SlotLayout::Fused => "fused",
        }
    }

    /// Parses [`SlotLayout::name`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the known layouts.
    pub fn parse(text: &str) -> Result<SlotLayout> {
        match text {
            "per-slot" => Ok(SlotLayout::PerSlot),
            "fused" => Ok(SlotLayout::Fused),
            other => Err(Error::invalid(
                ArgumentKind::Config,
                format!("unknown slot layout {other:?}: expected \"per-slot\" or \"fused\""),
            )),
        }
    }

    /// What the layout is called in a config: the `redis_fused_slots` value that selects it.
    fn setting(self) -> &'static str {
        match self {
            SlotLayout::PerSlot => "redis_fused_slots off (TFRA's one table per slot)",
            SlotLayout::Fused => "redis_fused_slots on (one table holding every slot)",
        }
    }
}

/// The rows of one slot: the embedding's key dtype, value dtype and dim (a slot row has the
/// embedding's shape; a fused row holds one per slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotShape {
    /// The ids' dtype.
    pub key_dtype: KeyDtype,
    /// The element type of the rows (the embedding's: TFRA's slot tables hold it).
    pub value_dtype: ValueDtype,
    /// Values per slot row: the embedding's dim.
    pub dim: usize,
}

impl SlotShape {
    /// float32 rows of `dim` values with int64 ids, the common case.
    pub fn f32(dim: usize) -> SlotShape {
        SlotShape {
            key_dtype: KeyDtype::I64,
            value_dtype: ValueDtype::F32,
            dim,
        }
    }

    fn slot_bytes(self) -> usize {
        self.value_dtype.width() * self.dim
    }
}

/// Names an embedding's slot tables: the embedding (params) name, the trainable wrapper's
/// name, and the optimizer's slot names in the order the optimizer creates them (that order
/// is the column order of a fused row: Adam's `m`, `v`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotNames {
    params: String,
    wrapper: Option<String>,
    slots: Vec<String>,
}

impl SlotNames {
    /// `wrapper` is `None` for TFRA's `short_file_name` naming, `<params>/<slot>`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when there are no slots, a slot repeats, or a slot is named
    /// `slots` (the fused table's own name).
    pub fn new(params: &str, wrapper: Option<&str>, slots: &[impl AsRef<str>]) -> Result<Self> {
        let slots: Vec<String> = slots.iter().map(|s| s.as_ref().to_string()).collect();
        let bad = |m: String| Err(Error::invalid(ArgumentKind::Config, m));
        if slots.is_empty() {
            return bad("an optimizer with slots needs at least one slot name".into());
        }
        for (i, slot) in slots.iter().enumerate() {
            if slot.is_empty() || slot == FUSED_SLOTS {
                return bad(format!("{slot:?} cannot be a slot name"));
            }
            if slots[..i].contains(slot) {
                return bad(format!("slot {slot:?} is named twice"));
            }
        }
        Ok(SlotNames {
            params: params.to_string(),
            wrapper: wrapper.map(str::to_string),
            slots,
        })
    }

    /// The slot names, in order.
    pub fn slots(&self) -> &[String] {
        &self.slots
    }

    fn table_name(&self, slot: &str) -> String {
        match &self.wrapper {
            Some(w) => slot_table_name(&self.params, w, slot),
            None => format!("{}/{slot}", self.params).replace('/', "_"),
        }
    }

    /// The table names of `layout`: one per slot, or the one fused table.
    pub fn table_names(&self, layout: SlotLayout) -> Vec<String> {
        match layout {
            SlotLayout::PerSlot => self.slots.iter().map(|s| self.table_name(s)).collect(),
            SlotLayout::Fused => vec![self.table_name(FUSED_SLOTS)],
        }
    }

    /// The `tfra-redis` command converting these slots to `to` (run with the same config).
    pub fn convert_command(&self, to: SlotLayout, shape: SlotShape) -> String {
        let wrapper = match &self.wrapper {
            Some(w) => format!("--wrapper {}", shell_word(w)),
            None => "--short-file-name".to_string(),
        };
        let mut dtypes = String::new();
        if shape.value_dtype != ValueDtype::F32 {
            dtypes += &format!(" --dtype {}", shape.value_dtype.numpy_name());
        }
        if shape.key_dtype != KeyDtype::I64 {
            dtypes += &format!(" --key-dtype {}", shape.key_dtype.name());
        }
        format!(
            "tfra-redis convert-slots --params {} {wrapper} --slots {} --dim {}{dtypes} --to {}",
            shell_word(&self.params),
            shell_word(&self.slots.join(",")),
            shape.dim,
            to.name()
        )
    }

    /// The key recording a conversion in progress; beside the tables, under the model tag.
    fn marker_key(&self, config: &RedisConfig) -> Vec<u8> {
        format!(
            "{}:tfra-redis-convert-slots:{}",
            config.model_tag_runtime,
            self.table_name(FUSED_SLOTS)
        )
        .into_bytes()
    }
}

fn shell_word(text: &str) -> String {
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./,:=".contains(c));
    if plain && !text.is_empty() {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The slot tables of one embedding in one layout, open.
#[derive(Debug)]
pub struct SlotTables {
    layout: SlotLayout,
    names: SlotNames,
    tables: Vec<Table>,
    /// Bytes of one slot's row (the embedding's dim in its dtype).
    slot_bytes: usize,
}

impl SlotTables {
    /// Opens the tables of `layout` for slot rows of `shape`. `rebucket` moves rows left in
    /// another bucket layout into the config's, as opening a table for training does; without
    /// it nothing is changed. TTLs are left alone either way (as the CLI's table commands do).
    ///
    /// # Errors
    ///
    /// As [`crate::TableBuilder::open`].
    pub fn open(
        config: &RedisConfig,
        names: &SlotNames,
        layout: SlotLayout,
        shape: SlotShape,
        rebucket: bool,
    ) -> Result<SlotTables> {
        let width = match layout {
            SlotLayout::PerSlot => shape.dim,
            SlotLayout::Fused => shape.dim * names.slots.len(),
        };
        let options = OpenOptions {
            persist: false,
            rebucket,
        };
        let mut tables = Vec::new();
        for name in names.table_names(layout) {
            let spec = TableSpec::new(
                name,
                shape.key_dtype,
                shape.value_dtype,
                crate::Dim::new(width)?,
            );
            tables.push(open_table_with(config, spec, options)?.0);
        }
        Ok(SlotTables {
            layout,
            names: names.clone(),
            tables,
            slot_bytes: shape.slot_bytes(),
        })
    }

    /// The layout.
    pub fn layout(&self) -> SlotLayout {
        self.layout
    }

    /// The open tables, in [`SlotNames::table_names`] order.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// Ids stored per table.
    ///
    /// # Errors
    ///
    /// As [`Table::size`].
    pub fn sizes(&self) -> Result<Vec<u64>> {
        self.tables.iter().map(Table::size).collect()
    }

    fn describe(&self, sizes: &[u64]) -> String {
        self.tables
            .iter()
            .zip(sizes)
            .map(|(t, n)| format!("{} ({n} rows)", t.spec().name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn bucket_count(&self) -> usize {
        self.tables[0].buckets().len()
    }

    /// Streams the ids stored in bucket `bucket` in pages, each with one buffer per slot
    /// (`ids.len()` rows of that slot). An id missing from some slot tables of the per-slot
    /// layout gets `initial[slot]` there: the row the optimizer would have started it from.
    /// An id may come twice (HSCAN's rehash rule); writing a page is an upsert.
    fn read_bucket(
        &self,
        bucket: usize,
        page: usize,
        initial: &[Vec<u8>],
        mut sink: impl FnMut(Keys<'_>, &[Vec<u8>]) -> Result<()>,
    ) -> Result<()> {
        let k = self.names.slots.len();
        let sb = self.slot_bytes;
        match self.layout {
            SlotLayout::Fused => {
                let table = &self.tables[0];
                table.scan_bucket(
                    table.buckets()[bucket].as_bytes(),
                    page,
                    false,
                    |ids, rows, _| {
                        let mut slots = vec![Vec::with_capacity(ids.len() * sb); k];
                        for row in rows.chunks_exact(k * sb) {
                            for (s, part) in slots.iter_mut().zip(row.chunks_exact(sb)) {
                                s.extend_from_slice(part);
                            }
                        }
                        sink(ids, &slots)
                    },
                )
            }
            SlotLayout::PerSlot => {
                // Every id of every slot table, each once: ids of table i that an earlier table
                // holds were sent with that table's page.
                for (i, table) in self.tables.iter().enumerate() {
                    table.scan_bucket(
                        table.buckets()[bucket].as_bytes(),
                        page,
                        false,
                        |ids, rows, _| {
                            let n = ids.len();
                            let mut slots = Vec::with_capacity(k);
                            let mut seen = vec![false; n];
                            for (j, other) in self.tables.iter().enumerate() {
                                if j == i {
                                    slots.push(rows.to_vec());
                                    continue;
                                }
                                let mut out = vec![0u8; n * sb];
                                let mut exists = vec![false; n];
                                other.find(
                                    ids,
                                    Defaults::Row(&initial[j]),
                                    &mut out,
                                    Some(&mut exists),
                                )?;
                                if j < i {
                                    for (s, e) in seen.iter_mut().zip(&exists) {
                                        *s |= *e;
                                    }
                                }
                                slots.push(out);
                            }
                            if !seen.contains(&true) {
                                return sink(ids, &slots);
                            }
                            let dtype = table.spec().key_dtype;
                            let mut keep = KeyBuf::new(dtype);
                            let mut kept = vec![Vec::new(); k];
                            for (r, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
                                keep.push_key(ids, r);
                                for (dst, src) in kept.iter_mut().zip(&slots) {
                                    dst.extend_from_slice(&src[r * sb..(r + 1) * sb]);
                                }
                            }
                            if keep.is_empty() {
                                return Ok(());
                            }
                            sink(keep.keys(), &kept)
                        },
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Upserts a page: `slots[s]` holds `ids.len()` rows of slot `s`.
    fn write(&self, ids: Keys<'_>, slots: &[Vec<u8>]) -> Result<()> {
        match self.layout {
            SlotLayout::Fused => {
                let sb = self.slot_bytes;
                let mut rows = Vec::with_capacity(ids.len() * sb * slots.len());
                for r in 0..ids.len() {
                    for s in slots {
                        rows.extend_from_slice(&s[r * sb..(r + 1) * sb]);
                    }
                }
                self.tables[0].insert(ids, &rows)
            }
            SlotLayout::PerSlot => {
                let writes: Vec<(&Table, Keys<'_>, &[u8])> = self
                    .tables
                    .iter()
                    .zip(slots)
                    .map(|(t, s)| (t, ids, s.as_slice()))
                    .collect();
                Table::insert_together(&writes)
            }
        }
    }

    /// Deletes this layout's slots of every id, once they were copied elsewhere. A layout
    /// that shares its tables with other data (slots inside the params rows, say) would strip
    /// its slot columns here instead of deleting tables.
    fn delete(&self) -> Result<()> {
        match self.layout {
            SlotLayout::Fused | SlotLayout::PerSlot => {
                self.tables.iter().try_for_each(Table::clear)
            }
        }
    }

    /// Fails unless every id of the page is stored in every table of this layout.
    fn check_stored(&self, ids: Keys<'_>, bucket: &str) -> Result<()> {
        for table in &self.tables {
            let n = ids.len();
            let zero = vec![0u8; table.row_bytes()];
            let mut out = vec![0u8; n * table.row_bytes()];
            let mut exists = vec![false; n];
            table.find(ids, Defaults::Row(&zero), &mut out, Some(&mut exists))?;
            if let Some(pos) = exists.iter().position(|e| !e) {
                return Err(Error::Data {
                    bucket: bucket.to_string(),
                    message: format!(
                        "slot conversion stopped: id {} was copied but is not readable in {}; \
                         the source tables are kept",
                        ids.label(pos),
                        table.spec().name
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A conversion's state as its marker key records it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Marker {
    from: SlotLayout,
    to: SlotLayout,
    /// False while copying; true once every bucket is copied and the source is being deleted.
    deleting: bool,
    /// Buckets fully copied so far (a rerun starts after them).
    copied_buckets: usize,
    /// Buckets in the layout when the count was recorded: a rerun with another bucket layout
    /// starts the copy over, since bucket i is then another set of ids.
    buckets: usize,
}

impl Marker {
    fn encode(&self) -> String {
        format!(
            "from={} to={} phase={} copied_buckets={} buckets={}",
            self.from.name(),
            self.to.name(),
            if self.deleting { "deleting" } else { "copying" },
            self.copied_buckets,
            self.buckets
        )
    }

    fn decode(text: &str) -> Option<Marker> {
        let mut marker = Marker {
            from: SlotLayout::PerSlot,
            to: SlotLayout::PerSlot,
            deleting: false,
            copied_buckets: 0,
            buckets: 0,
        };
        let mut fields = 0;
        for part in text.split_whitespace() {
            let (k, v) = part.split_once('=')?;
            match k {
                "from" => marker.from = SlotLayout::parse(v).ok()?,
                "to" => marker.to = SlotLayout::parse(v).ok()?,
                "phase" => marker.deleting = v == "deleting",
                "copied_buckets" => marker.copied_buckets = v.parse().ok()?,
                "buckets" => marker.buckets = v.parse().ok()?,
                _ => return None,
            }
            fields += 1;
        }
        (fields == 5).then_some(marker)
    }
}

fn read_marker(table: &Table, key: &[u8]) -> Result<Option<(String, Option<Marker>)>> {
    let cmd = redis::cmd("GET").arg(key).clone();
    let reply = table
        .backend()?
        .run_values(&[cmd], Role::Write, Retry::Idempotent)?
        .pop()
        .unwrap_or(Value::Nil);
    Ok(match reply {
        Value::BulkString(b) => {
            let text = String::from_utf8_lossy(&b).into_owned();
            let marker = Marker::decode(&text);
            Some((text, marker))
        }
        _ => None,
    })
}

fn write_marker(table: &Table, key: &[u8], marker: Option<&Marker>) -> Result<()> {
    let cmd = match marker {
        Some(m) => redis::cmd("SET").arg(key).arg(m.encode()).clone(),
        None => redis::cmd("DEL").arg(key).clone(),
    };
    table
        .backend()?
        .run_values(&[cmd], Role::Write, Retry::Idempotent)?;
    Ok(())
}

/// Fails when `chosen`'s slot tables of an embedding hold nothing while another layout's do,
/// or while a conversion of them is unfinished: training would otherwise restart the
/// optimizer from fresh slots without a word. The error ([`Error::ConfigField`] on
/// `redis_fused_slots`) names both layouts, the tables and the command that converts them.
/// Costs one `HLEN` per bucket of each table and one `GET`; changes nothing.
///
/// # Errors
///
/// [`Error::ConfigField`] as above; otherwise as [`Table::size`].
pub fn check_slot_layout(
    config: &RedisConfig,
    names: &SlotNames,
    chosen: SlotLayout,
    shape: SlotShape,
) -> Result<()> {
    let open = |layout| SlotTables::open(config, names, layout, shape, false);
    let mine = open(chosen)?;
    let marker_key = names.marker_key(config);
    if let Some((text, marker)) = read_marker(&mine.tables[0], &marker_key)? {
        let to = marker.map_or(chosen, |m| m.to);
        return Err(Error::ConfigField {
            field: "redis_fused_slots".into(),
            message: format!(
                "cannot be used yet for the optimizer slots of {:?}: a conversion of their \
                 layout is unfinished (marker key {} = {text:?}); run `{}` again to finish it \
                 before training",
                names.params,
                crate::layout::printable(&marker_key),
                names.convert_command(to, shape)
            ),
        });
    }
    let my_sizes = mine.sizes()?;
    if my_sizes.iter().any(|&n| n > 0) {
        return Ok(());
    }
    for other in [SlotLayout::PerSlot, SlotLayout::Fused] {
        if other == chosen {
            continue;
        }
        let theirs = open(other)?;
        let sizes = theirs.sizes()?;
        if sizes.iter().any(|&n| n > 0) {
            return Err(Error::ConfigField {
                field: "redis_fused_slots".into(),
                message: format!(
                    "does not match the stored optimizer slots of {:?}: the config asks for \
                     {} and those tables hold nothing ({}), but the slots were trained in the \
                     other layout, {} ({}). Training on would restart the optimizer from fresh \
                     slots. Convert them with `{}`, or set redis_fused_slots back",
                    names.params,
                    chosen.setting(),
                    mine.describe(&my_sizes),
                    other.setting(),
                    theirs.describe(&sizes),
                    names.convert_command(chosen, shape)
                ),
            });
        }
    }
    Ok(())
}

/// What [`convert_slots`] should do besides copying.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConvertOptions {
    /// One row per slot (slot row bytes) for ids missing from some per-slot source tables:
    /// the value the optimizer starts a slot from (zeros for most; Adagrad's
    /// `initial_accumulator_value`). Empty means zeros.
    pub initial: Vec<Vec<u8>>,
    /// Keep the source tables after the copy (otherwise they are deleted).
    pub keep_source: bool,
    /// Copy even though the destination holds rows no earlier run of this conversion wrote
    /// (an upsert: source rows win, other destination ids stay).
    pub overwrite: bool,
    /// Count only; write nothing.
    pub dry_run: bool,
    /// Ids per page.
    pub page: usize,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            initial: Vec::new(),
            keep_source: false,
            overwrite: false,
            dry_run: false,
            page: DEFAULT_PAGE,
        }
    }
}

/// Where a conversion is, for progress reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConvertProgress {
    /// `"copying"` or `"deleting"`.
    pub phase: &'static str,
    /// Buckets done (copied, or deleted) so far.
    pub buckets_done: usize,
    /// Buckets in the layout.
    pub buckets: usize,
    /// Ids copied in this run so far.
    pub ids_copied: u64,
    /// About how many ids the source holds (its largest table).
    pub ids_total: u64,
}

/// What [`convert_slots`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConvertReport {
    /// The source tables and their row counts before the conversion.
    pub source: Vec<(String, u64)>,
    /// The destination tables and their row counts before the conversion.
    pub destination_before: Vec<(String, u64)>,
    /// The destination tables and their row counts after it (before, for a dry run).
    pub destination_after: Vec<(String, u64)>,
    /// Ids copied in this run (an id HSCAN reported twice counts twice).
    pub ids_copied: u64,
    /// An earlier, interrupted run of this conversion was found and finished.
    pub resumed: bool,
    /// The source tables were deleted.
    pub source_deleted: bool,
    /// Nothing was written.
    pub dry_run: bool,
}

/// Moves an embedding's optimizer slots from layout `from` to layout `to`, bucket by bucket;
/// crash safe and resumable (see the module docs). `shape` is the embedding's (a slot row has
/// its dim and dtype). `progress` is called after every page and bucket; an
/// error it returns stops the conversion (run it again to go on).
///
/// Refuses ([`Error::InvalidArgument`]) when the destination holds rows that no earlier run of
/// this conversion wrote, unless `options.overwrite`; when another conversion of these slots
/// is unfinished; and when `from == to`. A source without rows is nothing to do.
///
/// # Errors
///
/// As above; [`Error::Data`] when a copied id cannot be read back (the source is kept); and
/// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
/// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`] when
/// Redis refuses one. An interrupted conversion loses nothing: run it again.
pub fn convert_slots(
    config: &RedisConfig,
    names: &SlotNames,
    from: SlotLayout,
    to: SlotLayout,
    shape: SlotShape,
    options: &ConvertOptions,
    mut progress: impl FnMut(&ConvertProgress) -> Result<()>,
) -> Result<ConvertReport> {
    let refuse = |m: String| Error::invalid(ArgumentKind::Config, m);
    if from == to {
        return Err(refuse(format!(
            "the slots are already in the {} layout",
            to.name()
        )));
    }
    let k = names.slots.len();
    let slot_bytes = shape.slot_bytes();
    let initial = if options.initial.is_empty() {
        vec![vec![0u8; slot_bytes]; k]
    } else {
        options.initial.clone()
    };
    if initial.len() != k || initial.iter().any(|r| r.len() != slot_bytes) {
        return Err(Error::invalid(
            ArgumentKind::Shape,
            format!("initial needs {k} rows of {slot_bytes} bytes, one per slot"),
        ));
    }
    let rebucket = !options.dry_run;
    let source = SlotTables::open(config, names, from, shape, rebucket)?;
    let dest = SlotTables::open(config, names, to, shape, rebucket)?;
    if source.bucket_count() != dest.bucket_count() {
        return Err(refuse(format!(
            "the source and destination tables have different bucket layouts ({} and {} \
             buckets); re-bucket them first (`tfra-redis rebucket`)",
            source.bucket_count(),
            dest.bucket_count()
        )));
    }
    let named = |t: &SlotTables, sizes: &[u64]| -> Vec<(String, u64)> {
        t.tables
            .iter()
            .zip(sizes)
            .map(|(t, n)| (t.spec().name.clone(), *n))
            .collect()
    };
    let source_sizes = source.sizes()?;
    let dest_sizes = dest.sizes()?;
    let mut report = ConvertReport {
        source: named(&source, &source_sizes),
        destination_before: named(&dest, &dest_sizes),
        destination_after: named(&dest, &dest_sizes),
        ids_copied: 0,
        resumed: false,
        source_deleted: false,
        dry_run: options.dry_run,
    };
    let marker_key = names.marker_key(config);
    let anchor = &dest.tables[0];
    let mut marker = match read_marker(anchor, &marker_key)? {
        Some((_, Some(m))) if m.from == from && m.to == to => {
            report.resumed = true;
            m
        }
        Some((text, _)) => {
            return Err(refuse(format!(
                "another conversion of these slots is unfinished (marker key {} = {text:?}); \
                 run that one again, or delete the key if you are sure it is abandoned",
                crate::layout::printable(&marker_key)
            )));
        }
        None => {
            let source_rows = source_sizes.iter().sum::<u64>();
            let dest_rows = dest_sizes.iter().sum::<u64>();
            if source_rows == 0 {
                return Ok(report);
            }
            if dest_rows > 0 && !options.overwrite {
                return Err(refuse(format!(
                    "the destination ({} layout) already holds rows: {}; converting would mix \
                     them with the source's ({}). Delete them, or pass overwrite to upsert the \
                     source's rows over them",
                    to.name(),
                    dest.describe(&dest_sizes),
                    source.describe(&source_sizes)
                )));
            }
            Marker {
                from,
                to,
                deleting: false,
                copied_buckets: 0,
                buckets: source.bucket_count(),
            }
        }
    };
    if options.dry_run {
        return Ok(report);
    }
    let buckets = source.bucket_count();
    if marker.buckets != buckets {
        marker.copied_buckets = 0;
        marker.buckets = buckets;
    }
    let mut state = ConvertProgress {
        phase: "copying",
        buckets_done: marker.copied_buckets.min(buckets),
        buckets,
        ids_copied: 0,
        ids_total: source_sizes.iter().copied().max().unwrap_or(0),
    };
    // Recorded before the first write: from here on training refuses these slots.
    write_marker(anchor, &marker_key, Some(&marker))?;
    if !marker.deleting {
        for b in marker.copied_buckets..buckets {
            let label = source.tables[0].bucket_names()[b].clone();
            source.read_bucket(b, options.page.max(1), &initial, |ids, slots| {
                dest.write(ids, slots)?;
                dest.check_stored(ids, &label)?;
                state.ids_copied += ids.len() as u64;
                progress(&state)
            })?;
            marker.copied_buckets = b + 1;
            write_marker(anchor, &marker_key, Some(&marker))?;
            state.buckets_done = b + 1;
            progress(&state)?;
        }
        // A cheap last check before anything is deleted: every destination table holds at
        // least as many ids as the largest source table (each source id was read back above).
        let copied = dest.sizes()?;
        let needed = source.sizes()?.into_iter().max().unwrap_or(0);
        if let Some((table, n)) = dest.tables.iter().zip(&copied).find(|(_, n)| **n < needed) {
            return Err(Error::Data {
                bucket: table.bucket_names().join(","),
                message: format!(
                    "slot conversion stopped before deleting the source: {} holds {n} ids, \
                     the source {needed}; the source tables are kept, run the conversion again",
                    table.spec().name
                ),
            });
        }
        marker.deleting = true;
        write_marker(anchor, &marker_key, Some(&marker))?;
    }
    report.ids_copied = state.ids_copied;
    if !options.keep_source {
        state.phase = "deleting";
        state.buckets_done = 0;
        progress(&state)?;
        source.delete()?;
        report.source_deleted = true;
        state.buckets_done = buckets;
        progress(&state)?;
    }
    write_marker(anchor, &marker_key, None)?;
    report.destination_after = named(&dest, &dest.sizes()?);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_tfra_and_the_fused_table() {
        let names = SlotNames::new("p", Some("w"), &["m", "v"]).unwrap();
        assert_eq!(names.table_names(SlotLayout::PerSlot), ["p_w_m", "p_w_v"]);
        assert_eq!(names.table_names(SlotLayout::Fused), ["p_w_slots"]);
        let short = SlotNames::new("a/p", None, &["m"]).unwrap();
        assert_eq!(short.table_names(SlotLayout::PerSlot), ["a_p_m"]);
        assert!(SlotNames::new("p", Some("w"), &["m", "m"]).is_err());
        assert!(SlotNames::new("p", Some("w"), &["slots"]).is_err());
        assert!(SlotNames::new("p", Some("w"), &[] as &[&str]).is_err());
    }

    #[test]
    fn markers_round_trip_and_reject_garbage() {
        let m = Marker {
            from: SlotLayout::Fused,
            to: SlotLayout::PerSlot,
            deleting: true,
            copied_buckets: 3,
            buckets: 4,
        };
        assert_eq!(Marker::decode(&m.encode()), Some(m.clone()));
        assert_eq!(Marker::decode("from=fused to=per-slot"), None);
        assert_eq!(Marker::decode(&format!("{} extra=1", m.encode())), None);
        assert_eq!(Marker::decode("junk"), None);
    }

    #[test]
    fn the_command_quotes_odd_names() {
        let names = SlotNames::new("my emb", Some("w"), &["m", "v"]).unwrap();
        assert_eq!(
            names.convert_command(SlotLayout::Fused, SlotShape::f32(8)),
            "tfra-redis convert-slots --params 'my emb' --wrapper w --slots m,v --dim 8 --to fused"
        );
        let shape = SlotShape {
            key_dtype: KeyDtype::Str,
            value_dtype: ValueDtype::F16,
            dim: 4,
        };
        assert!(
            names
                .convert_command(SlotLayout::PerSlot, shape)
                .ends_with("--dim 4 --dtype float16 --key-dtype string --to per-slot")
        );
    }
}
