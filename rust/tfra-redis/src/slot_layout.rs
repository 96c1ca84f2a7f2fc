//! Where an embedding's optimizer slots live, and moving them from one layout to another.
//!
//! TFRA keeps each slot of an embedding in its own table (`<params>_<wrapper>_m`,
//! `..._v`, ...: [`SlotLayout::PerSlot`]); with `redis_fused_slots` this project keeps all of
//! them side by side in one row of one table (`<params>_<wrapper>_slots`:
//! [`SlotLayout::Fused`]); with `redis_fused_row` they follow each id's row in the
//! embedding's own table ([`SlotLayout::FusedRow`]). No layout can see another's data, so
//! switching the setting on an embedding that already trained would silently restart its
//! optimizer from fresh slots. [`check_slot_layout`] turns that into an error, and
//! [`convert_slots`] moves the slots.
//!
//! A layout is a source and a destination through three operations: read one bucket's ids in
//! pages, each id with one row per slot (`SlotTables::read_bucket`), write such pages
//! (`SlotTables::write`), and delete its slots once copied (`SlotTables::delete`). A layout
//! is one [`SlotLayout`] variant with those three operations and its table names in
//! [`SlotNames::table_names`]; [`convert_slots`] itself does not change. Fused-row shares its
//! table with the embedding's rows, so its write replaces only what follows each stored row
//! and its delete strips that (both in a server script: a row written meanwhile is kept);
//! ids stored with their row alone hold no slots, and slots of an id without a row are not
//! copied into it (counted in [`ConvertReport::ids_without_row`]).
//!
//! A conversion is crash safe: it records itself in a marker key before it writes anything
//! (`<model_tag>:tfra-redis-convert-slots:<fused table>`, whichever the two layouts), copies
//! bucket by bucket (an upsert, checked by reading every copied id back), and deletes the
//! source's slots only once every bucket is copied. Training refuses to start while the marker exists, so after a crash at
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

/// Fields per bucket `HSCAN`ned to tell whether a fused-row table holds slots.
const SAMPLE: usize = 64;

/// How an embedding's optimizer slots are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SlotLayout {
    /// TFRA's layout: one table per slot, `<params>_<wrapper>_<slot>`.
    PerSlot,
    /// `redis_fused_slots`: one table `<params>_<wrapper>_slots` whose row holds every slot
    /// of an id side by side, in the optimizer's slot order.
    Fused,
    /// `redis_fused_row`: no slot table; an id's value in the embedding's own table is its
    /// row followed by its slots in the optimizer's slot order. An id stored with its row
    /// alone (looked up, never trained) has no slots in this layout.
    FusedRow,
}

impl SlotLayout {
    /// Every layout, in the order checks and messages list them.
    pub const ALL: [SlotLayout; 3] = [SlotLayout::PerSlot, SlotLayout::Fused, SlotLayout::FusedRow];

    /// The layout's name on the command line and in messages: `per-slot`, `fused` or
    /// `fused-row`.
    pub fn name(self) -> &'static str {
        match self {
            SlotLayout::PerSlot => "per-slot",
            SlotLayout::Fused => "fused",
            SlotLayout::FusedRow => "fused-row",
        }
    }

    /// Parses [`SlotLayout::name`] (`row` is accepted for `fused-row`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the known layouts.
    pub fn parse(text: &str) -> Result<SlotLayout> {
        match text {
            "per-slot" => Ok(SlotLayout::PerSlot),
            "fused" => Ok(SlotLayout::Fused),
            "fused-row" | "row" => Ok(SlotLayout::FusedRow),
            other => Err(Error::invalid(
                ArgumentKind::Config,
                format!(
                    "unknown slot layout {other:?}: expected \"per-slot\", \"fused\" or \
                     \"fused-row\""
                ),
            )),
        }
    }

    /// What the layout is called in a config: the settings that select it.
    fn setting(self) -> &'static str {
        match self {
            SlotLayout::PerSlot => {
                "redis_fused_slots off and redis_fused_row off (TFRA's one table per slot)"
            }
            SlotLayout::Fused => "redis_fused_slots on (one table holding every slot)",
            SlotLayout::FusedRow => {
                "redis_fused_row on (the slots after each row in the embedding's own table)"
            }
        }
    }

    /// The config field that picks between `self` and `other`.
    fn field(self, other: SlotLayout) -> &'static str {
        if self == SlotLayout::FusedRow || other == SlotLayout::FusedRow {
            "redis_fused_row"
        } else {
            "redis_fused_slots"
        }
    }

    /// The config a layout's tables are opened with: `redis_fused_row` decides whether a
    /// value longer than a row is a row and its slots (the embedding's table in the fused-row
    /// layout) or bad data (a slot table's row), so it is set for exactly that layout.
    fn table_config(self, config: &RedisConfig) -> RedisConfig {
        let mut config = config.clone();
        config.redis_fused_row = self == SlotLayout::FusedRow;
        config.redis_fused_slots = self == SlotLayout::Fused;
        config
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

    /// The table names of `layout`: one per slot, the one fused table, or the embedding's
    /// own table (fused-row).
    pub fn table_names(&self, layout: SlotLayout) -> Vec<String> {
        match layout {
            SlotLayout::PerSlot => self.slots.iter().map(|s| self.table_name(s)).collect(),
            SlotLayout::Fused => vec![self.table_name(FUSED_SLOTS)],
            SlotLayout::FusedRow => vec![self.params.replace('/', "_")],
        }
    }

    /// The `tfra-redis` command converting these slots from `from` to `to` (run with the
    /// same config).
    pub fn convert_command(&self, from: SlotLayout, to: SlotLayout, shape: SlotShape) -> String {
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
            "tfra-redis convert-slots --params {} {wrapper} --slots {} --dim {}{dtypes} \
             --from {} --to {}",
            shell_word(&self.params),
            shell_word(&self.slots.join(",")),
            shape.dim,
            from.name(),
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
            SlotLayout::PerSlot | SlotLayout::FusedRow => shape.dim,
            SlotLayout::Fused => shape.dim * names.slots.len(),
        };
        let config = &layout.table_config(config);
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

    /// Whether this layout holds slots of any id. For the slot tables, whether any holds a
    /// row (one `HLEN` per bucket); for fused-row, whether an id in a one-page `HSCAN` sample
    /// of some bucket stores more than its row. A sample, so an embedding whose trained ids
    /// are a small minority may look untrained: cheap enough for every optimizer build.
    ///
    /// # Errors
    ///
    /// As [`Table::size`].
    pub fn holds_slots(&self) -> Result<bool> {
        if self.layout != SlotLayout::FusedRow {
            return Ok(self.sizes()?.iter().any(|&n| n > 0));
        }
        let table = &self.tables[0];
        let backend = table.backend()?;
        for bucket in table.buckets() {
            let cmd = redis::cmd("HSCAN")
                .arg(bucket.as_bytes())
                .arg(0)
                .arg("COUNT")
                .arg(SAMPLE)
                .clone();
            let reply = backend
                .run_values(&[cmd], Role::Write, Retry::Idempotent)?
                .pop()
                .unwrap_or(Value::Nil);
            let (_, items) = crate::backend::parse_scan_reply(reply).map_err(|_| Error::Data {
                bucket: bucket.to_string(),
                message: "HSCAN answered with an unexpected shape".into(),
            })?;
            if items
                .chunks(2)
                .any(|pair| pair.get(1).is_some_and(|v| v.len() > table.row_bytes()))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn describe(&self, sizes: &[u64]) -> String {
        if self.layout == SlotLayout::FusedRow {
            let n = sizes.first().copied().unwrap_or(0);
            return format!(
                "the embedding's table {} ({n} ids)",
                self.tables[0].spec().name
            );
        }
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
            SlotLayout::FusedRow => {
                let table = &self.tables[0];
                let bucket_key = table.buckets()[bucket].as_bytes();
                table.scan_bucket(bucket_key, page, true, |ids, values, width| {
                    // An id stored with its row alone has no slots here: it is skipped, and
                    // the destination, not holding it either, starts it from fresh slots as
                    // this layout would have.
                    if width == sb {
                        return Ok(());
                    }
                    if width != sb * (k + 1) {
                        return Err(Error::Data {
                            bucket: crate::layout::printable(bucket_key),
                            message: format!(
                                "id {} stores {} slot rows after its row, but the optimizer \
                                 has {k} slots ({}); its slots were trained by another \
                                 optimizer",
                                ids.label(0),
                                width / sb - 1,
                                self.names.slots.join(",")
                            ),
                        });
                    }
                    let mut slots = vec![Vec::with_capacity(ids.len() * sb); k];
                    for value in values.chunks_exact(width) {
                        for (s, part) in slots.iter_mut().zip(value[sb..].chunks_exact(sb)) {
                            s.extend_from_slice(part);
                        }
                    }
                    sink(ids, &slots)
                })
            }
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

    /// Upserts a page: `slots[s]` holds `ids.len()` rows of slot `s`. Fused-row replaces
    /// the slots after each stored row and skips ids without a row: slots of an id the
    /// embedding no longer holds cannot be stored without making up its row, and the
    /// optimizer would start such an id from fresh slots in the per-slot layout only by
    /// chance of an old slot row (TFRA keeps orphaned slot rows until `restrict`).
    fn write(&self, ids: Keys<'_>, slots: &[Vec<u8>]) -> Result<()> {
        let sb = self.slot_bytes;
        let side_by_side = || {
            let mut rows = Vec::with_capacity(ids.len() * sb * slots.len());
            for r in 0..ids.len() {
                for s in slots {
                    rows.extend_from_slice(&s[r * sb..(r + 1) * sb]);
                }
            }
            rows
        };
        match self.layout {
            SlotLayout::Fused => self.tables[0].insert(ids, &side_by_side()),
            SlotLayout::FusedRow => {
                self.tables[0].set_row_tails(ids, &side_by_side(), sb * slots.len())
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

    /// Deletes this layout's slots of every id, once they were copied elsewhere: the slot
    /// tables are cleared; fused-row strips what follows each row and keeps the rows.
    fn delete(&self) -> Result<()> {
        match self.layout {
            SlotLayout::Fused | SlotLayout::PerSlot => {
                self.tables.iter().try_for_each(Table::clear)
            }
            SlotLayout::FusedRow => {
                let table = &self.tables[0];
                for bucket in table.buckets() {
                    table.scan_bucket(bucket.as_bytes(), DEFAULT_PAGE, true, |ids, _, width| {
                        if width > self.slot_bytes {
                            table.set_row_tails(ids, &[], 0)?;
                        }
                        Ok(())
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Fails unless every id of the page is stored in every table of this layout. In the
    /// fused-row layout, ids without a row were skipped by [`SlotTables::write`]: their count
    /// is returned, and every other id must read back exactly `slots`.
    fn check_stored(&self, ids: Keys<'_>, slots: &[Vec<u8>], bucket: &str) -> Result<u64> {
        if self.layout == SlotLayout::FusedRow {
            return self.check_row_tails(ids, slots, bucket);
        }
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
        Ok(0)
    }

    fn check_row_tails(&self, ids: Keys<'_>, slots: &[Vec<u8>], bucket: &str) -> Result<u64> {
        let table = &self.tables[0];
        let (n, sb) = (ids.len(), self.slot_bytes);
        let width = sb * slots.len();
        let written = |i: usize| slots.iter().flat_map(move |s| &s[i * sb..(i + 1) * sb]);
        let zero = vec![0u8; sb];
        let mut rows = vec![0u8; n * sb];
        let mut exists = vec![false; n];
        table.find(ids, Defaults::Row(&zero), &mut rows, Some(&mut exists))?;
        // An id stored without slots reads `sentinel`; an id whose copied slots happen to be
        // the sentinel is read again with another one.
        let mut todo: Vec<usize> = (0..n).filter(|&i| exists[i]).collect();
        let skipped = (n - todo.len()) as u64;
        for sentinel in [0xa5u8, 0x5a] {
            if todo.is_empty() {
                break;
            }
            let mut keys = KeyBuf::new(table.spec().key_dtype);
            for &i in &todo {
                keys.push_key(ids, i);
            }
            let defaults = vec![sentinel; width];
            let mut got = vec![0u8; todo.len() * width];
            let mut out = vec![0u8; todo.len() * sb];
            table.find_with_slots(
                keys.keys(),
                Defaults::Row(&zero),
                &mut out,
                &defaults,
                &mut got,
            )?;
            let mut again = Vec::new();
            for (&i, tail) in todo.iter().zip(got.chunks_exact(width)) {
                if tail.iter().eq(written(i)) {
                    if tail == defaults.as_slice() {
                        again.push(i);
                    }
                    continue;
                }
                return Err(Error::Data {
                    bucket: bucket.to_string(),
                    message: format!(
                        "slot conversion stopped: the slots of id {} were copied but do not \
                         read back from {}; the source is kept, run the conversion again",
                        ids.label(i),
                        table.spec().name
                    ),
                });
            }
            todo = again;
        }
        Ok(skipped)
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

/// Fails when `chosen`'s slots of an embedding are empty while another layout's are not
/// (see [`SlotTables::holds_slots`]), or while a conversion of them is unfinished: training
/// would otherwise restart the optimizer from fresh slots without a word. The error
/// ([`Error::ConfigField`] on `redis_fused_slots`, or `redis_fused_row` when fused-row is
/// one of the two layouts) names both layouts, the tables and the command that converts
/// them. Costs one `HLEN` per bucket of each slot table, one one-page `HSCAN` per bucket of
/// the embedding's table, and one `GET`; changes nothing.
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
        let (field, how) = match marker {
            Some(m) => (
                chosen.field(m.from),
                format!(
                    "run `{}` again to finish it",
                    names.convert_command(m.from, m.to, shape)
                ),
            ),
            // Not a marker this version writes: no command can finish it.
            None => (
                chosen.field(chosen),
                "delete the key if you are sure no conversion is running".to_string(),
            ),
        };
        return Err(Error::ConfigField {
            field: field.into(),
            message: format!(
                "cannot be used yet for the optimizer slots of {:?}: a conversion of their \
                 layout is unfinished (marker key {} = {text:?}); {how} before training",
                names.params,
                crate::layout::printable(&marker_key),
            ),
        });
    }
    if mine.holds_slots()? {
        return Ok(());
    }
    for other in SlotLayout::ALL {
        if other == chosen {
            continue;
        }
        let theirs = open(other)?;
        if theirs.holds_slots()? {
            return Err(Error::ConfigField {
                field: chosen.field(other).into(),
                message: format!(
                    "does not match the stored optimizer slots of {:?}: the config asks for \
                     {}, which holds none ({}), but the slots were trained in another \
                     layout, {} ({}). Training on would restart the optimizer from fresh \
                     slots. Convert them with `{}`, or go back to the {} layout's setting",
                    names.params,
                    chosen.setting(),
                    mine.describe(&mine.sizes()?),
                    other.setting(),
                    theirs.describe(&theirs.sizes()?),
                    names.convert_command(other, chosen, shape),
                    other.name()
                ),
            });
        }
    }
    Ok(())
}

/// The layout an embedding's slots are stored in, other than `to`: the source of the
/// unfinished conversion to `to` if there is one, else the one other layout holding slots
/// (see [`SlotTables::holds_slots`]); `None` when no other layout holds any.
///
/// # Errors
///
/// [`Error::InvalidArgument`] when several other layouts hold slots (name the source);
/// otherwise as [`Table::size`].
pub fn find_slot_source(
    config: &RedisConfig,
    names: &SlotNames,
    to: SlotLayout,
    shape: SlotShape,
) -> Result<Option<SlotLayout>> {
    let dest = SlotTables::open(config, names, to, shape, false)?;
    if let Some((_, Some(m))) = read_marker(&dest.tables[0], &names.marker_key(config))?
        && m.to == to
    {
        return Ok(Some(m.from));
    }
    let mut found = Vec::new();
    for other in SlotLayout::ALL {
        if other != to && SlotTables::open(config, names, other, shape, false)?.holds_slots()? {
            found.push(other);
        }
    }
    if found.len() > 1 {
        return Err(Error::invalid(
            ArgumentKind::Config,
            format!(
                "the slots of {:?} are stored in several layouts ({}); name the one to convert",
                names.params,
                found
                    .iter()
                    .map(|l| l.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(found.pop())
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
    /// Of those, ids whose slots were not copied to the fused-row layout because the
    /// embedding holds no row for them (slots left behind by a removed id); the optimizer
    /// starts such an id from fresh slots if it comes back.
    pub ids_without_row: u64,
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
        ids_without_row: 0,
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
            // A fused-row source with rows but no slots is scanned and yields nothing.
            if source_sizes.iter().all(|&n| n == 0) {
                return Ok(report);
            }
            if dest.holds_slots()? && !options.overwrite {
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
    let mut without_row = 0;
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
                without_row += dest.check_stored(ids, slots, &label)?;
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
        // The embedding's table counts ids without slots too, so with fused-row on either
        // side the per-id read-back is the check.
        let copied = dest.sizes()?;
        let needed = source.sizes()?.into_iter().max().unwrap_or(0);
        let countable = from != SlotLayout::FusedRow && to != SlotLayout::FusedRow;
        if let Some((table, n)) = dest
            .tables
            .iter()
            .zip(&copied)
            .find(|(_, n)| countable && **n < needed)
        {
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
    report.ids_without_row = without_row;
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
        assert_eq!(short.table_names(SlotLayout::FusedRow), ["a_p"]);
        for layout in SlotLayout::ALL {
            assert_eq!(SlotLayout::parse(layout.name()).unwrap(), layout);
        }
        assert_eq!(SlotLayout::parse("row").unwrap(), SlotLayout::FusedRow);
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
            names.convert_command(SlotLayout::PerSlot, SlotLayout::Fused, SlotShape::f32(8)),
            "tfra-redis convert-slots --params 'my emb' --wrapper w --slots m,v --dim 8 \
             --from per-slot --to fused"
        );
        let shape = SlotShape {
            key_dtype: KeyDtype::Str,
            value_dtype: ValueDtype::F16,
            dim: 4,
        };
        assert!(
            names
                .convert_command(SlotLayout::FusedRow, SlotLayout::PerSlot, shape)
                .ends_with(
                    "--dim 4 --dtype float16 --key-dtype string --from fused-row --to per-slot"
                )
        );
    }
}
