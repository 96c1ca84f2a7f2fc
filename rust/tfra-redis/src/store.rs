//! Persistence and lifecycle: `table_store_mode` 1 files, model-tag import and re-bucketing.
//!
//! TFRA's versions of these had real bugs: inserts from the wrong buffers,
//! deletes racing ahead of copies, scans that swallowed other tables, files mapped to the wrong
//! buckets. Here every move copies first, checks, and only then deletes, and only this table's
//! exact bucket keys (`prefix{digits}`) are ever touched.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use redis::Value;

use crate::backend::{Retry, Role};
use crate::codec::{KeyBuf, Keys};
use crate::error::{Error, Result};
use crate::layout::{BucketKey, KeyPrefix, bucket_glob, parse_bucket_tag, printable};
use crate::table::Table;

/// Rows copied per page when moving data between layouts.
const COPY_PAGE: usize = 8192;

/// The bucket keys that exist in Redis for exactly this prefix (never a table whose name merely
/// starts with it), sorted.
pub(crate) fn existing_buckets(table: &Table, prefix: &KeyPrefix) -> Result<Vec<Vec<u8>>> {
    let backend = table.backend()?;
    let mut found: Vec<Vec<u8>> = backend
        .scan_match(&bucket_glob(prefix))?
        .into_iter()
        .filter(|k| parse_bucket_tag(prefix, k).is_some())
        .collect();
    found.sort();
    Ok(found)
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// The directory of mode-1 files for a model tag: `model_lib_abs_dir/<model_tag>/`.
pub(crate) fn model_lib_dir(table: &Table, model_tag: &str) -> PathBuf {
    Path::new(&table.config().model_lib_abs_dir).join(model_tag)
}

/// The file of one bucket: `<dir>/<bucket key>.rdb` (TFRA's name; raw bytes for MD5 prefixes).
pub(crate) fn bucket_file(dir: &Path, bucket: &BucketKey) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut name = bucket.as_bytes().to_vec();
    name.extend_from_slice(b".rdb");
    dir.join(std::ffi::OsStr::from_bytes(&name))
}

/// `table_store_mode` 1 save: each runtime bucket's `DUMP` payload to its file, written to a
/// temporary file, fsynced and renamed into place, so a crash never leaves a half file under the
/// real name. An older file is kept, renamed with a timestamp suffix as TFRA does. A bucket that
/// does not exist gives an empty file (TFRA's convention, which its restore skips).
///
/// # Errors
///
/// [`Error::Io`] when the directory or a file cannot be created, written or renamed;
/// [`Error::Data`] when `DUMP` answers something else than a payload; and [`Error::Connection`] or
/// [`Error::Timeout`] when Redis cannot be reached within the retry deadline, [`Error::Auth`] when
/// the ACL user may not run the commands, [`Error::Command`] when Redis refuses one.
pub fn save_files(table: &Table) -> Result<Vec<PathBuf>> {
    let dir = model_lib_dir(table, &table.config().model_tag_runtime);
    fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let backend = table.backend()?;
    let stamp = timestamp();
    let mut written = Vec::new();
    for bucket in table.buckets() {
        let cmd = redis::cmd("DUMP").arg(bucket.as_bytes()).clone();
        // The master, not a replica: a lagging replica would save stale rows.
        let reply = backend
            .run_values(&[cmd], Role::Write, Retry::Idempotent)?
            .pop()
            .unwrap_or(Value::Nil);
        let payload = match reply {
            Value::BulkString(b) => b,
            Value::Nil => Vec::new(),
            other => {
                return Err(Error::Data {
                    bucket: bucket.to_string(),
                    message: format!("DUMP answered {other:?}"),
                });
            }
        };
        let path = bucket_file(&dir, bucket);
        let tmp = path.with_extension(format!("rdb.tmp-{}", std::process::id()));
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io("creating", &tmp))?;
            f.write_all(&payload).map_err(io("writing", &tmp))?;
            f.sync_all().map_err(io("syncing", &tmp))?;
        }
        if path.exists() {
            let mut old = path.clone().into_os_string();
            old.push(format!(".{stamp}"));
            fs::rename(&path, &old).map_err(io("keeping the older", &path))?;
        }
        fs::rename(&tmp, &path).map_err(io("renaming into", &path))?;
        written.push(path);
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", &dir))?;
    Ok(written)
}

/// Local time is what TFRA used; UTC avoids a timezone dependency and still sorts.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}-{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `table_store_mode` 1 restore from the import tag's files. When the import layout has as many
/// buckets as the runtime one, an id's bucket index is the same in both (it depends on the count
/// only; standalone keeps everything in bucket 0), so file i replaces runtime bucket i
/// (`RESTORE ... REPLACE`, as TFRA, but mapped by index rather than by TFRA's shifted count of
/// found files). Otherwise each file is restored into a scratch key and its pairs are re-bucketed
/// into the runtime layout. Missing and empty files are skipped. Returns the files restored.
///
/// # Errors
///
/// [`Error::Io`] when a file cannot be read, [`Error::Data`] naming the file and bucket when Redis
/// refuses its payload (`RESTORE`), and [`Error::Connection`] or [`Error::Timeout`] when Redis
/// cannot be reached within the retry deadline, [`Error::Auth`] when the ACL user may not run the
/// commands, [`Error::Command`] when Redis refuses one.
pub fn restore_files(table: &Table) -> Result<usize> {
    let dir = model_lib_dir(table, &table.config().model_tag_import);
    let import = table.import_buckets()?;
    let direct = import.len() == table.buckets().len();
    let backend = table.backend()?;
    let mut restored = 0;
    for (i, bucket) in import.iter().enumerate() {
        let path = bucket_file(&dir, bucket);
        let payload = match fs::read(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("reading", &path)(e)),
        };
        if payload.is_empty() {
            continue;
        }
        if direct {
            let target = &table.buckets()[i];
            let cmd = redis::cmd("RESTORE")
                .arg(target.as_bytes())
                .arg(0)
                .arg(&payload)
                .arg("REPLACE")
                .clone();
            backend
                .run_values(&[cmd], Role::Write, Retry::Idempotent)
                .map_err(|e| file_error(&path, target, e))?;
        } else {
            // The scratch key shares the bucket's hash tag, so in a cluster it lands on a node
            // that can serve it, and carries the pid so two restoring processes cannot collide.
            let scratch = format!(
                "tfra-redis-restore:{}:{}",
                std::process::id(),
                printable(bucket.as_bytes())
            )
            .into_bytes();
            let restore = redis::cmd("RESTORE")
                .arg(&scratch)
                .arg(0)
                .arg(&payload)
                .arg("REPLACE")
                .clone();
            backend
                .run_values(&[restore], Role::Write, Retry::Idempotent)
                .map_err(|e| file_error(&path, bucket, e))?;
            let copied = table.scan_bucket(&scratch, COPY_PAGE, true, |k, v, w| {
                table.insert_values(k, v, w)
            });
            let del = redis::cmd("DEL").arg(&scratch).clone();
            backend.run_values(&[del], Role::Write, Retry::Idempotent)?;
            copied?;
        }
        restored += 1;
    }
    Ok(restored)
}

fn file_error(path: &Path, bucket: &BucketKey, e: Error) -> Error {
    Error::Data {
        bucket: bucket.to_string(),
        message: format!("restoring {} failed: {e}", path.display()),
    }
}

/// What [`rebucket`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RebucketReport {
    /// Buckets of this table that were not in the runtime layout (now deleted).
    pub old_buckets: Vec<String>,
    /// Pairs copied into the runtime layout, from old buckets or from runtime buckets that
    /// held rows belonging elsewhere.
    pub rows_copied: u64,
}

/// Moves every pair of this table that is not where the runtime layout looks for it:
/// pairs in buckets outside the layout (another `storage_slice`, other hash tags, same model
/// tag) and pairs inside a runtime bucket that belong to another one (a bucket name the old and
/// new layouts share, as topology tags often do). Each move copies first (never overwriting a
/// row already in its new place, which may be newer), checks that every copied id is readable,
/// and only then deletes the old copy; so if the process dies at any point, running it again
/// finishes the job and loses nothing.
///
/// # Errors
///
/// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
/// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`] when
/// Redis refuses one; [`Error::Data`] when a copied id cannot be read back in the new layout (the
/// old copy is then kept). An interrupted move loses nothing: run it again.
pub fn rebucket(table: &Table) -> Result<RebucketReport> {
    let runtime: BTreeSet<Vec<u8>> = table
        .buckets()
        .iter()
        .map(|b| b.as_bytes().to_vec())
        .collect();
    let old: Vec<Vec<u8>> = existing_buckets(table, table.prefix())?
        .into_iter()
        .filter(|k| !runtime.contains(k))
        .collect();
    let mut report = RebucketReport {
        old_buckets: old.iter().map(|k| printable(k)).collect(),
        rows_copied: 0,
    };
    for bucket in &old {
        let mut ids = KeyBuf::new(table.spec().key_dtype);
        table.scan_bucket(bucket, COPY_PAGE, true, |k, v, w| {
            table.insert_missing(k, v, w)?;
            ids.extend(k);
            report.rows_copied += k.len() as u64;
            Ok(())
        })?;
        verify_readable(table, bucket, ids.keys())?;
        let del = redis::cmd("DEL").arg(bucket).clone();
        table
            .backend()?
            .run_values(&[del], Role::Write, Retry::Idempotent)?;
    }
    for (b, bucket) in table.buckets().iter().enumerate() {
        let dtype = table.spec().key_dtype;
        let mut stray = KeyBuf::new(dtype);
        table.scan_bucket(bucket.as_bytes(), COPY_PAGE, true, |k, v, w| {
            let (mut keys, mut rows) = (KeyBuf::new(dtype), Vec::new());
            for i in 0..k.len() {
                if table.bucket_of_key(k, i) != b {
                    keys.push_key(k, i);
                    rows.extend_from_slice(&v[i * w..(i + 1) * w]);
                }
            }
            table.insert_missing(&keys, &rows, w)?;
            report.rows_copied += keys.len() as u64;
            stray.extend(keys.keys());
            Ok(())
        })?;
        if !stray.is_empty() {
            verify_readable(table, bucket.as_bytes(), stray.keys())?;
            table.remove_from_bucket(b, &stray)?;
        }
    }
    Ok(report)
}

/// Fails unless every id is found where the runtime layout looks for it.
fn verify_readable(table: &Table, from: &[u8], ids: Keys<'_>) -> Result<()> {
    let rb = table.row_bytes();
    let zero = vec![0u8; rb];
    for start in (0..ids.len()).step_by(65536) {
        let chunk = ids.slice(start, (start + 65536).min(ids.len()));
        let mut out = vec![0u8; chunk.len() * rb];
        let mut exists = vec![false; chunk.len()];
        table.find(
            chunk,
            crate::table::Defaults::Row(&zero),
            &mut out,
            Some(&mut exists),
        )?;
        if let Some(pos) = exists.iter().position(|e| !e) {
            return Err(Error::Data {
                bucket: printable(from),
                message: format!(
                    "re-bucketing stopped: id {} was copied but is not readable in the new \
                     layout; the old copy is kept",
                    chunk.label(pos)
                ),
            });
        }
    }
    Ok(())
}

/// True when some of this table's rows are not where the runtime layout looks for them:
/// buckets of the same prefix outside the layout exist, or a sample of each runtime bucket
/// holds ids that belong to another bucket.
pub(crate) fn needs_rebucket(table: &Table) -> Result<bool> {
    let runtime: BTreeSet<Vec<u8>> = table
        .buckets()
        .iter()
        .map(|b| b.as_bytes().to_vec())
        .collect();
    if existing_buckets(table, table.prefix())?
        .iter()
        .any(|k| !runtime.contains(k))
    {
        return Ok(true);
    }
    for b in 0..table.buckets().len() {
        let sample = table.sample_ids(b, 32)?;
        let sample = sample.keys();
        if (0..sample.len()).any(|i| table.bucket_of_key(sample, i) != b) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Copies the rows stored under `model_tag_import` into this table's runtime layout (re-bucketed
/// as needed), leaving the old tag's data in place. Idempotent: the copy is an upsert. Returns
/// the number of pairs copied.
///
/// # Errors
///
/// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
/// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`] when
/// Redis refuses one.
pub fn import_model_tag(table: &Table) -> Result<u64> {
    let config = table.config();
    if config.model_tag_import == config.model_tag_runtime {
        return Ok(0);
    }
    let mut copied = 0u64;
    for bucket in existing_buckets(table, &table.import_prefix())? {
        table.scan_bucket(&bucket, COPY_PAGE, true, |k, v, w| {
            table.insert_values(k, v, w)?;
            copied += k.len() as u64;
            Ok(())
        })?;
    }
    Ok(copied)
}

/// A warning when the runtime buckets hold nothing but other buckets of this table's prefix, or
/// of the import tag, exist: the data is not where the config says, and the message names the
/// setting that would open it.
pub(crate) fn misplaced_data_hint(table: &Table) -> Result<Option<String>> {
    if table.size()? > 0 {
        return Ok(None);
    }
    let runtime: BTreeSet<Vec<u8>> = table
        .buckets()
        .iter()
        .map(|b| b.as_bytes().to_vec())
        .collect();
    let others: Vec<String> = existing_buckets(table, table.prefix())?
        .into_iter()
        .filter(|k| !runtime.contains(k))
        .map(|k| printable(&k))
        .collect();
    if !others.is_empty() {
        return Ok(Some(format!(
            "table {} is empty under its runtime buckets {:?}, but buckets {:?} of the same \
             prefix exist: they were written with another storage_slice or other \
             redis_hash_tags_runtime; set those to match, or re-bucket them into this layout \
             (`tfra-redis rebucket`, or open with the import settings)",
            table.spec().name,
            table.bucket_names(),
            others
        )));
    }
    Ok(None)
}

/// What [`open_table_with`] does besides connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpenOptions {
    /// Clear the TTL of the table's buckets (TFRA does). Off for read-only tools, which must
    /// not change a table's expiry by looking at it.
    pub(crate) persist: bool,
    /// Detect and move rows left in another bucket layout.
    pub(crate) rebucket: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            persist: true,
            rebucket: true,
        }
    }
}

/// Opens a table and runs the lifecycle steps `options` asks for; the one implementation
/// behind [`crate::TableBuilder`] (which documents the steps).
pub(crate) fn open_table_with(
    config: &crate::config::RedisConfig,
    spec: crate::table::TableSpec,
    options: OpenOptions,
) -> Result<(Table, Vec<String>)> {
    let table = Table::open(config, spec)?;
    let mut notes = Vec::new();
    let persisted = if options.persist {
        table.persist()
    } else {
        Ok(())
    };
    match persisted {
        Ok(()) => {}
        // A read-only ACL user (an inference job, say) may not PERSIST; it can still read.
        Err(e @ Error::Auth { .. }) => notes.push(format!("could not clear the TTL: {e}")),
        Err(e) => return Err(e),
    }
    if !options.rebucket {
        return Ok((table, notes));
    }
    if needs_rebucket(&table)? {
        let report = rebucket(&table)?;
        notes.push(format!(
            "moved {} rows of table {} into its bucket layout {:?} (from {:?})",
            report.rows_copied,
            table.spec().name,
            table.bucket_names(),
            report.old_buckets
        ));
    } else if let Some(hint) = misplaced_data_hint(&table)? {
        notes.push(hint);
    }
    Ok((table, notes))
}
