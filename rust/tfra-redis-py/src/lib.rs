//! `tfra_redis._native`: the thin PyO3 layer over the `tfra-redis` core crate. It converts numpy
//! buffers to slices, releases the GIL around every Redis round trip, and maps errors to Python
//! exception types. Everything else lives in the core crate.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use numpy::{
    BorrowError, Element, PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadwriteArray1,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use tfra_redis::codec::{Dim, KeyBuf, KeyDtype, Keys, ValueDtype};
use tfra_redis::config::{RedisConfig, resolve_config_path};
use tfra_redis::table::{Defaults, TableSpec};

mod native_op;
mod row_buffer;

pyo3::create_exception!(
    tfra_redis,
    RedisTableError,
    PyException,
    "Base class of every tfra-redis error."
);
pyo3::create_exception!(
    tfra_redis,
    ConfigError,
    RedisTableError,
    "The JSON config is invalid, has a bad field, or cannot be found."
);
pyo3::create_exception!(
    tfra_redis,
    RedisConnectionError,
    RedisTableError,
    "Redis cannot be reached, or the connection broke (retried until the deadline first)."
);
pyo3::create_exception!(
    tfra_redis,
    RedisTimeoutError,
    RedisConnectionError,
    "Redis did not answer within the configured socket timeout."
);
pyo3::create_exception!(
    tfra_redis,
    RedisAuthError,
    RedisTableError,
    "Redis refused the credentials or an ACL forbids a command."
);
pyo3::create_exception!(
    tfra_redis,
    RedisCommandError,
    RedisTableError,
    "Redis answered a command with an error."
);
pyo3::create_exception!(
    tfra_redis,
    RedisDataError,
    RedisTableError,
    "Data stored in Redis does not fit the table (e.g. rows of another dim)."
);

fn to_py(err: tfra_redis::Error) -> PyErr {
    use tfra_redis::Error as E;
    let msg = err.to_string();
    match err {
        E::ConfigSyntax { .. } | E::ConfigField { .. } | E::ConfigPath { .. } => {
            ConfigError::new_err(msg)
        }
        E::ModeMismatch { .. } => ConfigError::new_err(msg),
        E::Timeout { .. } => RedisTimeoutError::new_err(msg),
        E::Connection { .. } => RedisConnectionError::new_err(msg),
        E::Auth { .. } => RedisAuthError::new_err(msg),
        E::Command { .. } => RedisCommandError::new_err(msg),
        E::Data { .. } => RedisDataError::new_err(msg),
        E::InvalidArgument { .. } => PyValueError::new_err(msg),
        _ => RedisTableError::new_err(msg),
    }
}

/// A panic is a bug in tfra-redis, but Python must still get an `Exception` it can catch and
/// pickle: pyo3's own `PanicException` derives from `BaseException`, which slips past
/// `except Exception` handlers and kills worker loops.
fn panic_error(payload: &(dyn std::any::Any + Send)) -> PyErr {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    RedisTableError::new_err(format!(
        "internal error in tfra-redis (please report it): {what}"
    ))
}

/// Runs `f` without the GIL, as every Redis round trip does, turning its errors and any panic
/// into Python exceptions.
fn detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> tfra_redis::Result<T> + Send,
    T: Send,
{
    // Unwind safety: after a panic nothing of `f`'s state is used again, and the pools discard
    // connections a panic unwound through.
    match py.detach(move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))) {
        Ok(result) => result.map_err(to_py),
        Err(payload) => Err(panic_error(payload.as_ref())),
    }
}

/// [`detached`] for the calls that keep the GIL (config parsing): no panic is known there, and
/// if one is found it must still reach Python as an `Exception`.
fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(panic_error(payload.as_ref())))
}

/// Panics inside [`detached`], for the test that checks what Python gets from a panic (no
/// input is known to reach one).
#[pyfunction]
fn _panic_for_tests(py: Python<'_>) -> PyResult<()> {
    detached(py, || -> tfra_redis::Result<()> {
        panic!("deliberate panic for a test")
    })
}

/// A 1-D numpy array argument, borrowed by [`input`] or [`output`] rather than by PyO3's
/// conversion: numpy's borrow checks then fail as a `ValueError` instead of a panic (which
/// Python sees as a `PanicException`).
type Array<'py, T> = Bound<'py, PyArray1<T>>;

/// Borrows an array the call only reads.
fn input<'py, T: Element>(array: &Array<'py, T>, what: &str) -> PyResult<PyReadonlyArray1<'py, T>> {
    array.try_readonly().map_err(|e| borrow_error(e, what))
}

/// Borrows an array the call writes into.
fn output<'py, T: Element>(
    array: &Array<'py, T>,
    what: &str,
) -> PyResult<PyReadwriteArray1<'py, T>> {
    array.try_readwrite().map_err(|e| borrow_error(e, what))
}

fn borrow_error(err: BorrowError, what: &str) -> PyErr {
    match err {
        BorrowError::NotWriteable => PyValueError::new_err(format!(
            "{what} is read-only; pass a writeable array (for example a copy)"
        )),
        // numpy tracks borrows per base array, across threads too: the array shares memory
        // with another array of this call, or another call is writing into it right now.
        _ => PyValueError::new_err(format!(
            "{what} overlaps another array passed to this call (or one another call is \
             writing into); pass arrays that share no memory"
        )),
    }
}

/// Ids as a call received them: an int64 array (borrowed, for integer tables) or string ids
/// copied once into one buffer (for string tables).
enum KeyInput<'py> {
    Ints(PyReadonlyArray1<'py, i64>),
    Bytes(KeyBuf),
}

impl KeyInput<'_> {
    fn keys(&self) -> PyResult<Keys<'_>> {
        Ok(match self {
            KeyInput::Ints(a) => Keys::Ints(a.as_slice()?),
            KeyInput::Bytes(b) => b.keys(),
        })
    }

    /// The int64 ids' memory, for the overlap checks (string ids are a private copy).
    fn span(&self) -> PyResult<std::ops::Range<usize>> {
        Ok(match self {
            KeyInput::Ints(a) => span(a.as_slice()?),
            KeyInput::Bytes(_) => 0..0,
        })
    }
}

/// Reads `keys`: a 1-D int64 numpy array, or any 1-D sequence of `bytes` or `str` (a numpy
/// object array, a numpy bytes/str array, a list), `str` encoded as UTF-8. String ids are
/// copied here, with the GIL held, so that nothing Python owns is read once it is released
/// (another thread could replace an element of an object array meanwhile).
fn key_input<'py>(keys: &Bound<'py, PyAny>) -> PyResult<KeyInput<'py>> {
    if let Ok(ints) = keys.cast::<PyArray1<i64>>() {
        return Ok(KeyInput::Ints(input(ints, "keys")?));
    }
    if keys.is_instance_of::<PyBytes>() || keys.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "keys must be a sequence of ids, not a single bytes or str object",
        ));
    }
    let iter = keys.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "keys must be an int64 array (int64/int32 tables) or a sequence of bytes or str \
             (string tables), got {}",
            type_name(keys)
        ))
    })?;
    let mut buf = KeyBuf::new(KeyDtype::Str);
    for (i, item) in iter.enumerate() {
        let item = item?;
        if let Ok(b) = item.cast::<PyBytes>() {
            buf.push_field(KeyDtype::Str, b.as_bytes());
        } else if let Ok(text) = item.cast::<PyString>() {
            buf.push_field(KeyDtype::Str, text.to_str()?.as_bytes());
        } else {
            return Err(PyTypeError::new_err(format!(
                "keys must be an int64 array (int64/int32 tables) or a sequence of bytes or \
                 str (string tables); key {i} is {}",
                type_name(&item)
            )));
        }
    }
    Ok(KeyInput::Bytes(buf))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    let ty = obj.get_type();
    let name = ty
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    match ty.module() {
        Ok(m) if m != "builtins" => format!("{m}.{name}"),
        _ => name,
    }
}

/// Keys for Python: an int64 array, or a numpy object array of `bytes` for string keys (what
/// `tf.numpy_function` gives and takes for `tf.string`).
fn keys_to_py<'py>(py: Python<'py>, keys: KeyBuf) -> Bound<'py, PyAny> {
    match keys {
        KeyBuf::Ints(k) => PyArray1::from_vec(py, k).into_any(),
        KeyBuf::Bytes { data, offsets } => {
            let objects: Vec<Py<PyAny>> = offsets
                .windows(2)
                .map(|w| PyBytes::new(py, &data[w[0]..w[1]]).into_any().unbind())
                .collect();
            PyArray1::from_vec(py, objects).into_any()
        }
    }
}

/// The addresses a slice covers.
fn span<T>(s: &[T]) -> std::ops::Range<usize> {
    let r = s.as_ptr_range();
    r.start as usize..r.end as usize
}

/// Fails when an output shares memory with an input or with another output. numpy's borrow
/// tracking only sees arrays with a common base object; two arrays over one foreign buffer
/// (`np.frombuffer` twice) escape it, and Rust must never hold a `&mut` slice that aliases
/// another slice.
fn check_disjoint(
    outputs: &[(String, std::ops::Range<usize>)],
    inputs: &[(String, std::ops::Range<usize>)],
) -> PyResult<()> {
    for (k, (name, out)) in outputs.iter().enumerate() {
        for (other, range) in inputs.iter().chain(&outputs[k + 1..]) {
            if !out.is_empty()
                && !range.is_empty()
                && out.start < range.end
                && range.start < out.end
            {
                return Err(PyValueError::new_err(format!(
                    "{name} overlaps {other} in memory; pass an output array that shares no \
                     memory with the other arrays of the call"
                )));
            }
        }
    }
    Ok(())
}

/// The flags of a numpy bool array that the call reads. numpy stores a bool as one byte and
/// never checks it (`np.uint8(2)` viewed as bool stays 2), while a Rust `bool` other than 0 or
/// 1 is undefined behaviour: the bytes are read as `u8` and checked before they become bools.
fn bool_flags<'a>(flags: &'a PyReadonlyArray1<'_, bool>, what: &str) -> PyResult<&'a [bool]> {
    let len = flags.len();
    if len == 0 {
        return Ok(&[]);
    }
    if !flags.is_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} must be a contiguous bool array"
        )));
    }
    let data = flags.data() as *const u8;
    // SAFETY: a contiguous 1-D array of `len` one-byte elements, borrowed read-only for 'a;
    // any byte is a valid u8.
    let bytes = unsafe { std::slice::from_raw_parts(data, len) };
    if let Some(i) = bytes.iter().position(|&b| b > 1) {
        return Err(PyValueError::new_err(format!(
            "{what} holds byte {} at index {i}; a numpy bool array must hold only 0 and 1 \
             (an integer array viewed as bool is not converted: use .astype(bool))",
            bytes[i]
        )));
    }
    // SAFETY: every byte is 0 or 1, the two valid representations of a bool.
    Ok(unsafe { std::slice::from_raw_parts(data as *const bool, len) })
}

/// The flags of a numpy bool array the call writes into. Its old bytes may be anything
/// (`np.empty(n, bool)`), so they are cleared through a byte pointer before a `&mut [bool]`
/// over them exists; the call overwrites every flag anyway.
fn bool_output<'a>(
    flags: &'a mut PyReadwriteArray1<'_, bool>,
    what: &str,
) -> PyResult<&'a mut [bool]> {
    let len = flags.len();
    if len == 0 {
        return Ok(&mut []);
    }
    if !flags.is_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} must be a contiguous bool array"
        )));
    }
    let data = flags.data() as *mut u8;
    // SAFETY: a contiguous 1-D array of `len` one-byte elements, borrowed read-write for 'a.
    // After the bytes are zeroed they are all valid bools.
    unsafe {
        std::ptr::write_bytes(data, 0, len);
        Ok(std::slice::from_raw_parts_mut(data as *mut bool, len))
    }
}

/// A parsed, validated config.
#[pyclass(frozen, module = "tfra_redis._native", name = "Config")]
struct PyConfig {
    inner: RedisConfig,
    path: Option<String>,
    warnings: Vec<String>,
}

#[pymethods]
impl PyConfig {
    /// Parses JSON text.
    #[staticmethod]
    #[pyo3(signature = (text, source = "<string>"))]
    fn from_json(text: &str, source: &str) -> PyResult<Self> {
        let (inner, warnings) =
            guarded(|| RedisConfig::from_json_str(text, source).map_err(to_py))?;
        Ok(PyConfig {
            inner,
            path: None,
            warnings,
        })
    }

    /// Reads and parses a JSON file.
    #[staticmethod]
    fn from_path(path: &str) -> PyResult<Self> {
        let (inner, warnings) = guarded(|| {
            RedisConfig::from_path(Path::new(path)).map_err(|e| match e {
                // An unreadable config file is a config problem, whatever the OS said.
                tfra_redis::Error::Io { .. } => ConfigError::new_err(e.to_string()),
                other => to_py(other),
            })
        })?;
        Ok(PyConfig {
            inner,
            path: Some(path.to_string()),
            warnings,
        })
    }

    /// The file path the config came from, if any.
    #[getter]
    fn path(&self) -> Option<String> {
        self.path.clone()
    }

    /// Warnings found while parsing (e.g. unknown fields).
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// The full config as JSON text (TFRA's key names), password included.
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// Resolves the config path: the variable named by `env_name` > `TFRA_REDIS_CONFIG_PATH` >
/// `abs_dir` (a file, or a directory holding `redis_config.json`).
#[pyfunction]
#[pyo3(signature = (env_name = None, abs_dir = None))]
fn resolve_path(env_name: Option<&str>, abs_dir: Option<&str>) -> PyResult<String> {
    guarded(|| resolve_config_path(env_name, abs_dir).map_err(to_py))
        .map(|p| p.to_string_lossy().into_owned())
}

/// An open Redis-backed table. Ids and rows cross as flat numpy buffers: ids as int64 (string
/// ids as a sequence of bytes, see [`key_input`]), rows as raw bytes (`uint8` views of the
/// rows' own dtype), so every value dtype goes through one path without conversion.
#[pyclass(frozen, module = "tfra_redis._native", name = "Table")]
struct PyTable {
    inner: Arc<tfra_redis::table::Table>,
    notes: Vec<String>,
    /// The table's handle in [`native_op::REGISTRY`], once a native lookup op was made for it.
    native_handle: OnceLock<u64>,
}

impl Drop for PyTable {
    fn drop(&mut self) {
        if let Some(&handle) = self.native_handle.get() {
            native_op::unregister(handle);
        }
    }
}

#[pymethods]
impl PyTable {
    #[new]
    #[pyo3(signature = (config, name, key_dtype, value_dtype, dim, manage_ttl = true))]
    fn new(
        py: Python<'_>,
        config: &PyConfig,
        name: &str,
        key_dtype: &str,
        value_dtype: &str,
        dim: usize,
        manage_ttl: bool,
    ) -> PyResult<Self> {
        let spec = TableSpec::new(
            name,
            KeyDtype::parse(key_dtype).map_err(to_py)?,
            ValueDtype::parse(value_dtype).map_err(to_py)?,
            Dim::new(dim).map_err(to_py)?,
        );
        let config = config.inner.clone();
        let (table, notes) = detached(py, move || {
            tfra_redis::TableBuilder::from_spec(&config, spec)
                .persist(manage_ttl)
                .open_with_notes()
        })?;
        Ok(PyTable {
            inner: Arc::new(table),
            notes,
            native_handle: OnceLock::new(),
        })
    }

    /// What opening the table found or did (moved rows, misplaced data).
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    /// Saves each bucket's DUMP payload under `model_lib_abs_dir/<model_tag_runtime>/`
    /// (`table_store_mode` 1); returns the file paths.
    fn save_files(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let table = &self.inner;
        let paths = detached(py, || tfra_redis::store::save_files(table))?;
        Ok(paths
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect())
    }

    /// Restores the import tag's files into the runtime buckets; returns how many were read.
    fn restore_files(&self, py: Python<'_>) -> PyResult<usize> {
        let table = &self.inner;
        detached(py, || tfra_redis::store::restore_files(table))
    }

    /// Copies rows stored under `model_tag_import` into the runtime layout.
    fn import_model_tag(&self, py: Python<'_>) -> PyResult<u64> {
        let table = &self.inner;
        detached(py, || tfra_redis::store::import_model_tag(table))
    }

    /// Moves rows of this table found in other bucket layouts into the runtime one; returns
    /// (old bucket names, rows copied).
    fn rebucket(&self, py: Python<'_>) -> PyResult<(Vec<String>, u64)> {
        let table = &self.inner;
        let r = detached(py, || tfra_redis::store::rebucket(table))?;
        Ok((r.old_buckets, r.rows_copied))
    }

    /// Clears the TTL of the table's buckets.
    fn persist(&self, py: Python<'_>) -> PyResult<()> {
        let table = &self.inner;
        detached(py, || table.persist())
    }

    /// Sets a TTL in seconds on the table's buckets.
    fn expire(&self, py: Python<'_>, seconds: u64) -> PyResult<()> {
        let table = &self.inner;
        detached(py, || table.expire(seconds))
    }

    /// What TFRA does when a table closes: the configured TTL (`expire_model_tag_in_seconds`).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let table = &self.inner;
        detached(py, || table.expire_per_config())
    }

    /// `(handle, process token)` naming this table to the native lookup op
    /// (`tfra_redis.native_ops`); the same pair on every call. The handle stops working when
    /// the table is dropped, and the token only matches in this process.
    fn native_handle(&self) -> (u64, u64) {
        let handle = *self
            .native_handle
            .get_or_init(|| native_op::register(&self.inner).0);
        (
            handle,
            native_op::REGISTRY
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .token(),
        )
    }

    /// Bytes per row.
    #[getter]
    fn row_bytes(&self) -> usize {
        self.inner.row_bytes()
    }

    /// The runtime bucket keys, as bytes.
    #[getter]
    fn bucket_keys<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.inner
            .buckets()
            .iter()
            .map(|b| PyBytes::new(py, b.as_bytes()))
            .collect()
    }

    /// Looks up `keys` into `out` (row bytes). `default` holds one row or one row per key.
    /// `exists`, when given, receives which keys were found.
    #[pyo3(signature = (keys, default, out, exists = None))]
    fn find(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        default: Array<'_, u8>,
        out: Array<'_, u8>,
        exists: Option<Array<'_, bool>>,
    ) -> PyResult<()> {
        let keys = key_input(keys)?;
        let default = input(&default, "default")?;
        let mut out = output(&out, "out")?;
        let mut exists = exists.map(|e| output(&e, "exists")).transpose()?;
        let keys_span = keys.span()?;
        let keys = keys.keys()?;
        let default = default.as_slice()?;
        let out = out.as_slice_mut()?;
        let exists = match exists.as_mut() {
            Some(e) => Some(bool_output(e, "exists")?),
            None => None,
        };
        let mut outputs = vec![("out".to_string(), span(out))];
        if let Some(e) = &exists {
            outputs.push(("exists".to_string(), span(e)));
        }
        check_disjoint(
            &outputs,
            &[
                ("keys".to_string(), keys_span),
                ("default".to_string(), span(default)),
            ],
        )?;
        let defaults = if default.len() == self.inner.row_bytes() {
            Defaults::Row(default)
        } else {
            Defaults::PerKey(default)
        };
        let table = &self.inner;
        detached(py, || table.find(keys, defaults, out, exists))
    }

    /// Looks `keys` up in a `redis_fused_row` table with their optimizer slots: rows into
    /// `out` (as `find`), what is stored after each row into `slots` (`len(keys)` groups of
    /// `len(slot_default)` bytes; `slot_default` for ids stored without slots or missing).
    fn find_with_slots(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        default: Array<'_, u8>,
        out: Array<'_, u8>,
        slot_default: Array<'_, u8>,
        slots: Array<'_, u8>,
    ) -> PyResult<()> {
        let keys = key_input(keys)?;
        let default = input(&default, "default")?;
        let slot_default = input(&slot_default, "slot_default")?;
        let mut out = output(&out, "out")?;
        let mut slots = output(&slots, "slots")?;
        let keys_span = keys.span()?;
        let keys = keys.keys()?;
        let default = default.as_slice()?;
        let slot_default = slot_default.as_slice()?;
        let out = out.as_slice_mut()?;
        let slots = slots.as_slice_mut()?;
        check_disjoint(
            &[
                ("out".to_string(), span(out)),
                ("slots".to_string(), span(slots)),
            ],
            &[
                ("keys".to_string(), keys_span),
                ("default".to_string(), span(default)),
                ("slot_default".to_string(), span(slot_default)),
            ],
        )?;
        let defaults = if default.len() == self.inner.row_bytes() {
            Defaults::Row(default)
        } else {
            Defaults::PerKey(default)
        };
        let table = &self.inner;
        detached(py, || {
            table.find_with_slots(keys, defaults, out, slot_default, slots)
        })
    }

    /// Writes whole values of a `redis_fused_row` table: each id's row (`rows`) followed by
    /// its slots (`slots`: `len(keys)` equal groups of whole rows), replacing what was stored.
    fn insert_with_slots(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        rows: Array<'_, u8>,
        slots: Array<'_, u8>,
    ) -> PyResult<()> {
        let keys = key_input(keys)?;
        let (rows, slots) = (input(&rows, "rows")?, input(&slots, "slots")?);
        let keys = keys.keys()?;
        let (rows, slots) = (rows.as_slice()?, slots.as_slice()?);
        let table = &self.inner;
        detached(py, || table.insert_with_slots(keys, rows, slots))
    }

    /// Upserts rows (`values` holds `len(keys)` rows of row bytes).
    fn insert(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        values: Array<'_, u8>,
    ) -> PyResult<()> {
        let (keys, values) = (key_input(keys)?, input(&values, "values")?);
        let keys = keys.keys()?;
        let values = values.as_slice()?;
        let table = &self.inner;
        detached(py, || table.insert(keys, values))
    }

    /// Removes ids.
    fn remove(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<()> {
        let keys = key_input(keys)?;
        let keys = keys.keys()?;
        let table = &self.inner;
        detached(py, || table.remove(keys))
    }

    /// BP-v2 accumulate: deltas for flagged ids, values for unflagged ones.
    fn accum(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        deltas: Array<'_, u8>,
        exists: Array<'_, bool>,
    ) -> PyResult<()> {
        let keys = key_input(keys)?;
        let deltas = input(&deltas, "deltas")?;
        let exists = input(&exists, "exists")?;
        let keys = keys.keys()?;
        let deltas = deltas.as_slice()?;
        let exists = bool_flags(&exists, "exists")?;
        let table = &self.inner;
        detached(py, || table.accum(keys, deltas, exists))
    }

    /// Number of ids stored.
    fn size(&self, py: Python<'_>) -> PyResult<u64> {
        let table = &self.inner;
        detached(py, || table.size())
    }

    /// Deletes every bucket of the table.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        let table = &self.inner;
        detached(py, || table.clear())
    }

    /// Every pair: (ids, row bytes); ids are int64, or an object array of bytes for string
    /// keys.
    fn export<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let table = &self.inner;
        let (keys, values) = detached(py, || table.export())?;
        let keys = keys_to_py(py, keys);
        let values = numpy::PyArray1::from_vec(py, values).into_any();
        Ok((keys, values))
    }

    /// Calls `sink(ids, row_bytes)` for each page of about `page` pairs.
    fn export_pages(&self, py: Python<'_>, page: usize, sink: Py<PyAny>) -> PyResult<()> {
        let table = self.inner.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel::<(KeyBuf, Vec<u8>)>(2);
        // Redis is read on a worker thread without the GIL while this thread hands pages to
        // Python, so the callback's work overlaps the next page's round trip.
        let worker = std::thread::spawn(move || {
            let dtype = table.spec().key_dtype;
            table.export_pages(page, |k, v| {
                let mut keys = KeyBuf::new(dtype);
                keys.extend(k);
                tx.send((keys, v.to_vec())).map_err(|_| {
                    tfra_redis::Error::invalid(
                        tfra_redis::ArgumentKind::Cancelled,
                        "export stopped by the consumer",
                    )
                })
            })
        });
        let mut callback_error = None;
        let mut rx = rx;
        loop {
            // Receiver is Send but not Sync: move it into the detached closure and back.
            let (next, back) = py.detach(move || (rx.recv(), rx));
            rx = back;
            let Ok((k, v)) = next else { break };
            let keys = keys_to_py(py, k);
            let values = numpy::PyArray1::from_vec(py, v);
            if let Err(e) = sink.call1(py, (keys, values)) {
                callback_error = Some(e);
                break;
            }
        }
        drop(rx);
        let result = py.detach(|| worker.join());
        if let Some(e) = callback_error {
            return Err(e);
        }
        match result {
            Ok(r) => r.map_err(to_py),
            Err(payload) => Err(panic_error(payload.as_ref())),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Table(name={:?}, buckets={:?})",
            self.inner.spec().name,
            self.inner.bucket_names()
        )
    }
}

/// `(address, ABI version)` of the C function the native lookup op calls; the op library's
/// `tfra_redis_ops_bind` takes both.
#[pyfunction]
fn native_op_entry() -> (usize, u32) {
    (native_op::find_v1_address(), native_op::ABI_VERSION)
}

/// Forwards the core crate's `log` records to Python's `logging`: target `tfra_redis::table`
/// becomes logger `tfra_redis.table`, a child of `tfra_redis`. pyo3-log (which supports pyo3
/// 0.26 to 0.30) does the forwarding; a record takes the GIL for a moment, which is why the
/// core rate-limits what can recur per call. Loggers are cached but their levels are not, so
/// a level set on `tfra_redis` after the first record still applies. Other crates' records
/// pass from WARNING up only, so no debug chatter costs a GIL round trip.
fn forward_logs_to_python(py: Python<'_>) -> PyResult<()> {
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::Loggers)?
        .filter(log::LevelFilter::Warn)
        .filter_target("tfra_redis".to_owned(), log::LevelFilter::Debug);
    // Fails only when a logger is already installed in this library's copy of `log`, i.e. the
    // module was initialized before (a second interpreter): that one still forwards.
    let _ = logger.install();
    Ok(())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    forward_logs_to_python(py)?;
    // The wheel's version comes from the same Cargo.toml (maturin reads it), so
    // `tfra_redis.__version__` cannot disagree with the installed distribution.
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyConfig>()?;
    m.add_class::<PyTable>()?;
    m.add_function(wrap_pyfunction!(resolve_path, m)?)?;
    m.add_function(wrap_pyfunction!(apply_gradients, m)?)?;
    m.add_function(wrap_pyfunction!(find_together, m)?)?;
    m.add_function(wrap_pyfunction!(restrict, m)?)?;
    m.add_function(wrap_pyfunction!(insert_together, m)?)?;
    m.add_function(wrap_pyfunction!(flush_deferred_writes, m)?)?;
    m.add_function(wrap_pyfunction!(check_slot_layout, m)?)?;
    m.add_function(wrap_pyfunction!(convert_slots, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(native_op_entry, m)?)?;
    m.add_class::<row_buffer::RowBuffer>()?;
    m.add_function(wrap_pyfunction!(row_buffer::row_buffer, m)?)?;
    m.add_function(wrap_pyfunction!(row_buffer::_row_buffer_pool, m)?)?;
    m.add("RedisTableError", py.get_type::<RedisTableError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add(
        "RedisConnectionError",
        py.get_type::<RedisConnectionError>(),
    )?;
    m.add("RedisTimeoutError", py.get_type::<RedisTimeoutError>())?;
    m.add("RedisAuthError", py.get_type::<RedisAuthError>())?;
    m.add("RedisCommandError", py.get_type::<RedisCommandError>())?;
    m.add("RedisDataError", py.get_type::<RedisDataError>())?;
    Ok(())
}

/// Applies one sparse optimizer step to the rows of `keys`: reads them (missing rows start from
/// `init_rows`) and their slot rows, updates them with Keras' math, writes them back.
/// `optimizer` is `sgd`, `adagrad`, `adam` or `ftrl`; `hyper` holds Keras' argument names
/// (missing ones take Keras' defaults); `slots` are in `tfra_redis.optimizers` slot order;
/// `grads` and `init_rows` are flat float32 rows; `step` is Keras' `iterations + 1`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn apply_gradients(
    py: Python<'_>,
    optimizer: &str,
    hyper: std::collections::HashMap<String, f64>,
    params: &Bound<'_, PyTable>,
    slots: Vec<Bound<'_, PyTable>>,
    keys: &Bound<'_, PyAny>,
    grads: Array<'_, f32>,
    init_rows: Array<'_, f32>,
    step: u64,
) -> PyResult<()> {
    let keys = key_input(keys)?;
    let grads = input(&grads, "grads")?;
    let init_rows = input(&init_rows, "init_rows")?;
    let hyper: Vec<(&str, f64)> = hyper.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let optimizer =
        tfra_redis::optim::Optimizer::from_keras_name(optimizer, &hyper).map_err(to_py)?;
    let params = &params.get().inner;
    let slots: Vec<&tfra_redis::table::Table> = slots.iter().map(|s| &*s.get().inner).collect();
    let keys = keys.keys()?;
    let grads = grads.as_slice()?;
    let init_rows = init_rows.as_slice()?;
    detached(py, || {
        tfra_redis::optim::apply_gradients(&optimizer, params, &slots, keys, grads, init_rows, step)
    })
}

/// Looks the same `keys` up in several tables with one pipeline per node (an embedding and its
/// optimizer slot tables). `defaults[i]` holds one row or one row per key of `tables[i]`;
/// `outs[i]` receives `len(keys)` rows of it.
#[pyfunction]
fn find_together(
    py: Python<'_>,
    tables: Vec<Bound<'_, PyTable>>,
    keys: &Bound<'_, PyAny>,
    defaults: Vec<Array<'_, u8>>,
    outs: Vec<Array<'_, u8>>,
) -> PyResult<()> {
    if defaults.len() != tables.len() || outs.len() != tables.len() {
        return Err(PyValueError::new_err(format!(
            "find_together takes one default and one output per table: {} tables, {} defaults, \
             {} outputs",
            tables.len(),
            defaults.len(),
            outs.len()
        )));
    }
    let keys = key_input(keys)?;
    let keys_span = keys.span()?;
    let keys = keys.keys()?;
    let defaults = defaults
        .iter()
        .enumerate()
        .map(|(i, d)| input(d, &format!("defaults[{i}]")))
        .collect::<PyResult<Vec<_>>>()?;
    let mut outs = outs
        .iter()
        .enumerate()
        .map(|(i, o)| output(o, &format!("outs[{i}]")))
        .collect::<PyResult<Vec<_>>>()?;
    let defaults: Vec<&[u8]> = defaults
        .iter()
        .map(|d| d.as_slice())
        .collect::<Result<_, _>>()?;
    let outs: Vec<&mut [u8]> = outs
        .iter_mut()
        .map(|o| o.as_slice_mut())
        .collect::<Result<_, _>>()?;
    let mut inputs = vec![("keys".to_string(), keys_span)];
    inputs.extend(
        defaults
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("defaults[{i}]"), span(d))),
    );
    let spans: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| (format!("outs[{i}]"), span(o)))
        .collect();
    check_disjoint(&spans, &inputs)?;
    let tables: Vec<&tfra_redis::table::Table> = tables.iter().map(|t| &*t.get().inner).collect();
    let mut lookups: Vec<tfra_redis::table::Lookup<'_>> = tables
        .iter()
        .zip(defaults)
        .zip(outs)
        .map(|((&table, default), out)| tfra_redis::table::Lookup {
            table,
            keys,
            defaults: if default.len() == table.row_bytes() {
                Defaults::Row(default)
            } else {
                Defaults::PerKey(default)
            },
            out,
        })
        .collect();
    detached(py, || tfra_redis::table::Table::find_together(&mut lookups))
}

/// Sends the optimizer writes that `redis_write_behind_ms` let wait in this process, and
/// waits for those already on their way. `at_exit`: the interpreter is exiting, so the
/// background flushers stop first (they must not log once it finalizes).
#[pyfunction]
#[pyo3(signature = (at_exit = false))]
fn flush_deferred_writes(py: Python<'_>, at_exit: bool) -> PyResult<()> {
    if at_exit {
        detached(py, tfra_redis::flush_deferred_writes_at_exit)
    } else {
        detached(py, tfra_redis::flush_deferred_writes)
    }
}

/// Upserts `values[i]` (`len(keys)` rows) into `tables[i]` for the same `keys`, with one
/// pipeline per node.
#[pyfunction]
fn insert_together(
    py: Python<'_>,
    tables: Vec<Bound<'_, PyTable>>,
    keys: &Bound<'_, PyAny>,
    values: Vec<Array<'_, u8>>,
) -> PyResult<()> {
    if values.len() != tables.len() {
        return Err(PyValueError::new_err(format!(
            "insert_together takes one values array per table: {} tables, {} values",
            tables.len(),
            values.len()
        )));
    }
    let keys = key_input(keys)?;
    let keys = keys.keys()?;
    let values = values
        .iter()
        .enumerate()
        .map(|(i, v)| input(v, &format!("values[{i}]")))
        .collect::<PyResult<Vec<_>>>()?;
    let values: Vec<&[u8]> = values
        .iter()
        .map(|v| v.as_slice())
        .collect::<Result<_, _>>()?;
    let writes: Vec<(&tfra_redis::table::Table, Keys<'_>, &[u8])> = tables
        .iter()
        .zip(values)
        .map(|(t, v)| (&*t.get().inner, keys, v))
        .collect();
    detached(py, || tfra_redis::table::Table::insert_together(&writes))
}

/// Removes the ids with the smallest int32 statuses from `status` and from each of `tables`
/// until `num_reserved` remain in `status`, streaming pages of `page` ids; returns `(ids
/// before, ids removed)`.
#[pyfunction]
fn restrict(
    py: Python<'_>,
    status: &Bound<'_, PyTable>,
    tables: Vec<Bound<'_, PyTable>>,
    num_reserved: u64,
    page: usize,
) -> PyResult<(u64, u64)> {
    let status = &status.get().inner;
    let tables: Vec<&tfra_redis::table::Table> = tables.iter().map(|t| &*t.get().inner).collect();
    detached(py, || {
        tfra_redis::restrict::restrict(status, &tables, num_reserved, page)
    })
    .map(|r| (r.before, r.removed))
}

fn slot_names(
    params: &str,
    wrapper: Option<&str>,
    slots: &[String],
) -> PyResult<tfra_redis::slot_layout::SlotNames> {
    tfra_redis::slot_layout::SlotNames::new(params, wrapper, slots).map_err(to_py)
}

fn slot_layout(name: &str) -> PyResult<tfra_redis::slot_layout::SlotLayout> {
    tfra_redis::slot_layout::SlotLayout::parse(name).map_err(to_py)
}

/// Raises `ConfigError` when the slots of the chosen `layout` (`per-slot`, `fused`,
/// `fused-row`) are empty while another layout's hold some, or a conversion of them is
/// unfinished. `wrapper=None` is TFRA's `short_file_name` naming.
#[pyfunction]
#[pyo3(signature = (config, params, wrapper, slots, layout, key_dtype, value_dtype, dim))]
#[allow(clippy::too_many_arguments)]
fn check_slot_layout(
    py: Python<'_>,
    config: &PyConfig,
    params: &str,
    wrapper: Option<&str>,
    slots: Vec<String>,
    layout: &str,
    key_dtype: &str,
    value_dtype: &str,
    dim: usize,
) -> PyResult<()> {
    let names = slot_names(params, wrapper, &slots)?;
    let shape = slot_shape(key_dtype, value_dtype, dim)?;
    let layout = slot_layout(layout)?;
    let config = &config.inner;
    detached(py, || {
        tfra_redis::slot_layout::check_slot_layout(config, &names, layout, shape)
    })
}

fn slot_shape(
    key_dtype: &str,
    value_dtype: &str,
    dim: usize,
) -> PyResult<tfra_redis::slot_layout::SlotShape> {
    Ok(tfra_redis::slot_layout::SlotShape {
        key_dtype: KeyDtype::parse(key_dtype).map_err(to_py)?,
        value_dtype: ValueDtype::parse(value_dtype).map_err(to_py)?,
        dim: Dim::new(dim).map_err(to_py)?.get(),
    })
}

/// Converts an embedding's slots from layout `from_layout` (`None`: the layout holding them,
/// see `tfra_redis::slot_layout::find_slot_source`) to `to_layout`; see
/// `tfra_redis::slot_layout::convert_slots`. `initial` holds one slot row (bytes) per
/// slot, or nothing for zeros. `progress(phase, buckets_done, buckets, ids_copied, ids_total)`
/// is called after every page; an exception it raises stops the conversion and is re-raised.
/// Returns the report as a dict.
#[pyfunction]
#[pyo3(signature = (
    config, params, wrapper, slots, from_layout, to_layout, key_dtype, value_dtype, dim, initial,
    keep_source, overwrite, dry_run, page, progress = None
))]
#[allow(clippy::too_many_arguments)]
fn convert_slots<'py>(
    py: Python<'py>,
    config: &PyConfig,
    params: &str,
    wrapper: Option<&str>,
    slots: Vec<String>,
    from_layout: Option<&str>,
    to_layout: &str,
    key_dtype: &str,
    value_dtype: &str,
    dim: usize,
    initial: Vec<Vec<u8>>,
    keep_source: bool,
    overwrite: bool,
    dry_run: bool,
    page: usize,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    use pyo3::types::PyDictMethods;
    use tfra_redis::slot_layout::{ConvertOptions, ConvertProgress};
    let names = slot_names(params, wrapper, &slots)?;
    let shape = slot_shape(key_dtype, value_dtype, dim)?;
    let mut options = ConvertOptions::default();
    options.initial = initial;
    options.keep_source = keep_source;
    options.overwrite = overwrite;
    options.dry_run = dry_run;
    options.page = page;
    let config = &config.inner;
    use tfra_redis::slot_layout::SlotLayout;
    let to = slot_layout(to_layout)?;
    let from = match from_layout {
        Some(name) => slot_layout(name)?,
        // Nothing stored anywhere else: any other layout, for the "nothing to convert" report.
        None => detached(py, || {
            tfra_redis::slot_layout::find_slot_source(config, &names, to, shape)
        })?
        .unwrap_or(if to == SlotLayout::PerSlot {
            SlotLayout::Fused
        } else {
            SlotLayout::PerSlot
        }),
    };
    let callback_error: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
    let report = detached(py, || {
        tfra_redis::slot_layout::convert_slots(
            config,
            &names,
            from,
            to,
            shape,
            &options,
            |p: &ConvertProgress| {
                let Some(callback) = &progress else {
                    return Ok(());
                };
                let args = (
                    p.phase,
                    p.buckets_done,
                    p.buckets,
                    p.ids_copied,
                    p.ids_total,
                );
                Python::attach(|py| callback.call1(py, args).map(|_| ())).map_err(|e| {
                    *callback_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    tfra_redis::Error::invalid(
                        tfra_redis::ArgumentKind::Cancelled,
                        "the slot conversion was stopped by its progress callback",
                    )
                })
            },
        )
    });
    if let Some(e) = callback_error
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        return Err(e);
    }
    let report = report?;
    let dict = pyo3::types::PyDict::new(py);
    dict.set_item("from", from.name())?;
    dict.set_item("to", to.name())?;
    dict.set_item("source", report.source)?;
    dict.set_item("destination_before", report.destination_before)?;
    dict.set_item("destination_after", report.destination_after)?;
    dict.set_item("ids_copied", report.ids_copied)?;
    dict.set_item("ids_without_row", report.ids_without_row)?;
    dict.set_item("resumed", report.resumed)?;
    dict.set_item("source_deleted", report.source_deleted)?;
    dict.set_item("dry_run", report.dry_run)?;
    Ok(dict)
}
