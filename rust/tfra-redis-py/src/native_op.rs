//! The C entry point of the native TensorFlow lookup op (`python/tfra_redis/_ops/lookup_op.cc`).
//!
//! The op's kernel calls [`find_v1`] through a function pointer that Python hands to the op
//! library once (`tfra_redis_ops_bind`), so a lookup inside a `tf.function` runs without Python
//! and without the GIL. A graph names its table by a handle from the [`Registry`], never by an
//! address: a handle whose table is gone fails with a clear error, and a handle traced in
//! another process (a graph saved and loaded elsewhere) is refused by the per-process token.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, LazyLock, RwLock, Weak};

use tfra_redis::codec::{KeyDtype, Keys, ValueDtype};
use tfra_redis::table::{Defaults, Table};

/// The version of [`find_v1`]'s signature; the op library refuses a pointer of another one.
pub const ABI_VERSION: u32 = 1;

/// Status codes of [`find_v1`]; the kernel maps each to a TensorFlow error class.
pub mod code {
    /// Success.
    pub const OK: i32 = 0;
    /// `InvalidArgument`: the call's arguments do not fit the table (dtypes, shapes, ids).
    pub const INVALID_ARGUMENT: i32 = 1;
    /// `Unavailable`: Redis could not be reached or timed out; retrying may succeed.
    pub const UNAVAILABLE: i32 = 2;
    /// `FailedPrecondition`: the table is gone, or the handle is from another process.
    pub const FAILED_PRECONDITION: i32 = 3;
    /// `Internal`: Redis refused a command, stored data is damaged, or a bug (a panic).
    pub const INTERNAL: i32 = 4;
    /// `PermissionDenied`: Redis refused the credentials, or an ACL forbids a command.
    pub const PERMISSION_DENIED: i32 = 5;
}

/// Tables that native ops may read, by handle. Handles count up from 1 and are never reused,
/// so a stale handle can never reach a newer table. The registry holds `Weak` references: a
/// graph does not keep a table alive (Python keeps the graph's tables alive while the graph
/// lives), and a lookup on a table that was dropped fails instead of reading freed memory.
pub struct Registry<T> {
    token: u64,
    next: u64,
    tables: HashMap<u64, Weak<T>>,
}

/// Why a handle does not name a live table.
#[derive(Debug, PartialEq, Eq)]
pub enum HandleError {
    /// The handle comes from another process (a graph traced elsewhere and loaded here).
    ForeignProcess,
    /// The handle was never given out, or its table has been dropped.
    Gone,
}

impl<T> Registry<T> {
    /// An empty registry whose handles carry `token`.
    pub fn new(token: u64) -> Self {
        Registry {
            token,
            next: 1,
            tables: HashMap::new(),
        }
    }

    /// This process's token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// A new handle for `table`.
    pub fn register(&mut self, table: &Arc<T>) -> u64 {
        let handle = self.next;
        self.next += 1;
        self.tables.insert(handle, Arc::downgrade(table));
        handle
    }

    /// Forgets `handle`; later lookups with it fail with [`HandleError::Gone`].
    pub fn unregister(&mut self, handle: u64) {
        self.tables.remove(&handle);
    }

    /// The live table of `handle`, checked against this process's token.
    pub fn get(&self, handle: u64, token: u64) -> Result<Arc<T>, HandleError> {
        if token != self.token {
            return Err(HandleError::ForeignProcess);
        }
        self.tables
            .get(&handle)
            .and_then(Weak::upgrade)
            .ok_or(HandleError::Gone)
    }
}

/// A random token for this process, below 2**63 (TensorFlow's int attrs are signed) and not 0.
/// `RandomState` is seeded from the OS's randomness once per process; the pid and the clock
/// are mixed in as well.
fn process_token() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(t.as_nanos());
    }
    (hasher.finish() & (i64::MAX as u64)).max(1)
}

/// The process's registry of tables.
pub static REGISTRY: LazyLock<RwLock<Registry<Table>>> =
    LazyLock::new(|| RwLock::new(Registry::new(process_token())));

fn registry_read() -> std::sync::RwLockReadGuard<'static, Registry<Table>> {
    // A panic while the lock was held cannot leave the map half-updated (insert and remove
    // are single calls), so a poisoned lock is still usable.
    REGISTRY.read().unwrap_or_else(|e| e.into_inner())
}

/// Registers `table`; returns `(handle, token)`.
pub fn register(table: &Arc<Table>) -> (u64, u64) {
    let mut registry = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    (registry.register(table), registry.token())
}

/// Forgets `handle` (its table is being dropped).
pub fn unregister(handle: u64) {
    REGISTRY
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .unregister(handle);
}

/// TensorFlow's `DataType` numbers of the value dtypes a table holds.
fn tf_dtype_number(dtype: ValueDtype) -> i32 {
    match dtype {
        ValueDtype::F32 => 1,
        ValueDtype::F64 => 2,
        ValueDtype::I32 => 3,
        ValueDtype::I8 => 6,
        ValueDtype::I64 => 9,
        ValueDtype::BF16 => 14,
        ValueDtype::F16 => 19,
        // A dtype added to the core later: no op dtype matches it, so lookups are refused
        // with the dtype mismatch message until it is added here.
        _ => -1,
    }
}

/// A failed call: its status code and message.
struct Failure(i32, String);

fn classify(err: &tfra_redis::Error) -> i32 {
    use tfra_redis::Error as E;
    if err.is_transient() {
        return code::UNAVAILABLE;
    }
    match err {
        E::InvalidArgument { .. } => code::INVALID_ARGUMENT,
        E::Auth { .. } => code::PERMISSION_DENIED,
        E::ConfigSyntax { .. }
        | E::ConfigField { .. }
        | E::ConfigPath { .. }
        | E::ModeMismatch { .. } => code::FAILED_PRECONDITION,
        _ => code::INTERNAL,
    }
}

/// The arguments of one [`find_v1`] call, as the kernel passes them.
struct FindCall {
    handle: u64,
    token: u64,
    key_kind: i32,
    keys: *const u8,
    n: u64,
    value_dtype: i32,
    defaults: *const u8,
    defaults_len: u64,
    out: *mut u8,
    out_len: u64,
    exists: *mut u8,
}

/// A length from the kernel as `usize`, refusing what does not fit this machine.
fn length(value: u64, what: &str) -> Result<usize, Failure> {
    usize::try_from(value).map_err(|_| {
        Failure(
            code::INVALID_ARGUMENT,
            format!("{what} length {value} does not fit"),
        )
    })
}

/// A slice over `len` elements at `ptr`; an empty slice when `len` is 0 (TensorFlow may pass
/// a null pointer for an empty tensor, which `from_raw_parts` does not allow).
///
/// # Safety
/// `ptr` must be valid for reads of `len` elements of `T` for `'a` when `len > 0`.
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// [`slice`] for memory the call writes.
///
/// # Safety
/// `ptr` must be valid for writes of `len` elements of `T` for `'a` when `len > 0`, and
/// overlap nothing else the call reads or writes.
unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize) -> &'a mut [T] {
    if len == 0 || ptr.is_null() {
        &mut []
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

impl FindCall {
    /// # Safety
    /// The pointers must be valid for the lengths given (see [`find_v1`]).
    unsafe fn run(&self) -> Result<(), Failure> {
        let table = registry_read()
            .get(self.handle, self.token)
            .map_err(|e| match e {
                HandleError::ForeignProcess => Failure(
                    code::FAILED_PRECONDITION,
                    format!(
                        "this lookup op names table handle {} of another process: the graph \
                         was traced in a process other than this one (for example saved and \
                         loaded elsewhere); trace it again where its RedisTable is open",
                        self.handle
                    ),
                ),
                HandleError::Gone => Failure(
                    code::FAILED_PRECONDITION,
                    format!(
                        "the RedisTable of this lookup op (handle {}) has been dropped; keep \
                         the table open while graphs that look it up run",
                        self.handle
                    ),
                ),
            })?;
        let spec = table.spec();
        let invalid = |message: String| Failure(code::INVALID_ARGUMENT, message);
        if spec.key_dtype == KeyDtype::Str {
            return Err(invalid(format!(
                "table {:?} has string keys; the native lookup op takes int32 or int64 keys",
                spec.name
            )));
        }
        if self.value_dtype != tf_dtype_number(spec.value_dtype) {
            return Err(invalid(format!(
                "table {:?} holds {} rows, but the lookup op's value dtype is TensorFlow \
                 DataType {}",
                spec.name,
                spec.value_dtype.numpy_name(),
                self.value_dtype
            )));
        }
        let n = length(self.n, "keys")?;
        let defaults_len = length(self.defaults_len, "defaults")?;
        let out_len = length(self.out_len, "output")?;
        // SAFETY (all slices below): the kernel passes tensors' buffers of these lengths, the
        // outputs freshly allocated, so no output overlaps another buffer.
        let keys = match self.key_kind {
            0 => Keys::Ints(unsafe { slice(self.keys as *const i64, n) }),
            1 => Keys::Ints32(unsafe { slice(self.keys as *const i32, n) }),
            other => return Err(invalid(format!("unknown key kind {other}"))),
        };
        let default = unsafe { slice(self.defaults, defaults_len) };
        let out = unsafe { slice_mut(self.out, out_len) };
        let exists = if self.exists.is_null() {
            None
        } else {
            // Zeroed through a byte pointer first: TensorFlow's fresh buffer may hold any
            // bytes, and a `bool` other than 0 or 1 is undefined behaviour.
            let bytes = unsafe { slice_mut(self.exists, n) };
            bytes.fill(0);
            Some(unsafe { slice_mut(bytes.as_mut_ptr() as *mut bool, bytes.len()) })
        };
        let defaults = if default.len() == table.row_bytes() {
            Defaults::Row(default)
        } else {
            Defaults::PerKey(default)
        };
        table
            .find(keys, defaults, out, exists)
            .map_err(|e| Failure(classify(&e), e.to_string()))
    }
}

/// Copies `message` into the caller's buffer of `len` bytes, NUL-terminated, cut to fit at a
/// character boundary.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes, or null.
unsafe fn write_message(buf: *mut u8, len: u64, message: &str) {
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    if buf.is_null() || len == 0 {
        return;
    }
    let mut k = message.len().min(len - 1);
    while !message.is_char_boundary(k) {
        k -= 1;
    }
    // SAFETY: k + 1 <= len bytes, within the caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(message.as_ptr(), buf, k);
        *buf.add(k) = 0;
    }
}

/// Looks `n` ids up in the table named by `handle` (ABI version 1).
///
/// `key_kind` is 0 for int64 ids, 1 for int32 ids. `value_dtype` is the TensorFlow
/// `DataType` number of the output, which must be the table's. `defaults` holds one row or `n`
/// rows (of `defaults_len` bytes); `out` receives `n` rows (`out_len` bytes); `exists`, when
/// not null, receives `n` bools. Returns a [`code`]; on failure `message` (of `message_len`
/// bytes) holds a NUL-terminated message. No panic leaves this function.
///
/// # Safety
/// Every pointer must be valid for the lengths given (`keys` for `n` ids of `key_kind`,
/// `exists` for `n` bytes); the outputs must overlap no other argument.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn find_v1(
    handle: u64,
    token: u64,
    key_kind: i32,
    keys: *const u8,
    n: u64,
    value_dtype: i32,
    defaults: *const u8,
    defaults_len: u64,
    out: *mut u8,
    out_len: u64,
    exists: *mut u8,
    message: *mut u8,
    message_len: u64,
) -> i32 {
    let call = FindCall {
        handle,
        token,
        key_kind,
        keys,
        n,
        value_dtype,
        defaults,
        defaults_len,
        out,
        out_len,
        exists,
    };
    // Unwind safety: nothing of the call is used after a panic, and the pools discard
    // connections a panic unwound through.
    // SAFETY: the caller's contract, passed on.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { call.run() }));
    let failure = match result {
        Ok(Ok(())) => return code::OK,
        Ok(Err(failure)) => failure,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            Failure(
                code::INTERNAL,
                format!("internal error in tfra-redis (please report it): {what}"),
            )
        }
    };
    // SAFETY: the caller's contract for `message`.
    unsafe { write_message(message, message_len, &failure.1) };
    failure.0
}

/// The signature of [`find_v1`], which the op library declares identically.
pub type FindV1 = unsafe extern "C" fn(
    u64,
    u64,
    i32,
    *const u8,
    u64,
    i32,
    *const u8,
    u64,
    *mut u8,
    u64,
    *mut u8,
    *mut u8,
    u64,
) -> i32;

/// The address of [`find_v1`], for the op library's bind call.
pub fn find_v1_address() -> usize {
    let f: FindV1 = find_v1;
    f as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_count_up_and_are_never_reused() {
        let mut registry = Registry::new(7);
        let a = Arc::new("a");
        let b = Arc::new("b");
        let ha = registry.register(&a);
        registry.unregister(ha);
        let hb = registry.register(&b);
        assert_ne!(ha, hb);
        assert_eq!(registry.get(ha, 7), Err(HandleError::Gone));
        assert_eq!(*registry.get(hb, 7).unwrap(), "b");
        assert_eq!(registry.tables.len(), 1);
    }

    #[test]
    fn a_dropped_table_is_gone_not_read() {
        let mut registry = Registry::new(7);
        let table = Arc::new(String::from("rows"));
        let handle = registry.register(&table);
        assert_eq!(*registry.get(handle, 7).unwrap(), "rows");
        drop(table);
        assert_eq!(registry.get(handle, 7), Err(HandleError::Gone));
    }

    #[test]
    fn another_process_token_is_refused_before_the_handle_is_read() {
        let mut registry = Registry::new(7);
        let table = Arc::new(1u8);
        let handle = registry.register(&table);
        assert_eq!(registry.get(handle, 8), Err(HandleError::ForeignProcess));
        assert_eq!(registry.get(999, 8), Err(HandleError::ForeignProcess));
        assert_eq!(registry.get(999, 7), Err(HandleError::Gone));
    }

    #[test]
    fn a_lookup_holds_its_table_while_it_runs() {
        let mut registry = Registry::new(7);
        let table = Arc::new(5u8);
        let handle = registry.register(&table);
        let held = registry.get(handle, 7).unwrap();
        drop(table);
        assert_eq!(*held, 5);
        drop(held);
        assert_eq!(registry.get(handle, 7), Err(HandleError::Gone));
    }

    #[test]
    fn process_tokens_are_positive_int64s() {
        let token = process_token();
        assert!(token > 0 && token <= i64::MAX as u64);
    }

    #[test]
    fn an_unknown_handle_gives_a_failed_precondition_and_a_message() {
        let mut message = [0xffu8; 256];
        let token = registry_read().token();
        // SAFETY: null data pointers with zero lengths; the message buffer is 256 bytes.
        let rc = unsafe {
            find_v1(
                u64::MAX,
                token,
                0,
                std::ptr::null(),
                0,
                1,
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                message.as_mut_ptr(),
                message.len() as u64,
            )
        };
        assert_eq!(rc, code::FAILED_PRECONDITION);
        let end = message.iter().position(|&b| b == 0).unwrap();
        let text = std::str::from_utf8(&message[..end]).unwrap();
        assert!(text.contains("has been dropped"), "{text}");
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary_and_terminated() {
        let mut buf = [0xffu8; 4];
        // SAFETY: a 4-byte buffer.
        unsafe { write_message(buf.as_mut_ptr(), 4, "aé€") };
        // "a" (1) + "é" (2) fit in 3 bytes; the NUL is the 4th.
        assert_eq!(&buf, b"a\xc3\xa9\0");
        let mut buf = [0xffu8; 3];
        // SAFETY: a 3-byte buffer.
        unsafe { write_message(buf.as_mut_ptr(), 3, "aé") };
        assert_eq!(&buf, b"a\0\xff");
    }
}
