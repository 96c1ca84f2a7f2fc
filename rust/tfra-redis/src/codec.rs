//! The bytes TFRA stores: hash fields are the key's little-endian bytes, hash values are rows of
//! `dim` little-endian elements with no header.
//!
//! Nothing in Redis records the dtype or dim of a table, so both sides must agree on them; this
//! module only knows how to turn numbers into those bytes and back.

use std::fmt;

use half::{bf16, f16};

use crate::error::{Error, Result};

/// The dtype of a table's keys. Displays as its TF/numpy name (`int32`, `int64`, `string`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyDtype {
    /// `int32`: 4-byte fields.
    I32,
    /// `int64`: 8-byte fields.
    I64,
    /// `string` (TF's `tf.string`): the field is the string's own bytes, of any length
    /// (no prefix, no length, no terminator), as TFRA writes them.
    Str,
}

/// A key encoded as a hash field: its 4 or 8 little-endian bytes, without allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyField {
    bytes: [u8; 8],
    len: u8,
}

impl AsRef<[u8]> for KeyField {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl KeyDtype {
    /// Bytes per key field; `None` for string keys, whose fields have any length.
    pub fn width(self) -> Option<usize> {
        match self {
            KeyDtype::I32 => Some(4),
            KeyDtype::I64 => Some(8),
            KeyDtype::Str => None,
        }
    }

    /// The TF/numpy name (`int32`, `int64`, `string`).
    pub fn name(self) -> &'static str {
        match self {
            KeyDtype::I32 => "int32",
            KeyDtype::I64 => "int64",
            KeyDtype::Str => "string",
        }
    }

    /// Parses a TF or numpy dtype name (`int32`, `int64`, `string`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] ([`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)) for a
    /// name other than `int32`, `int64` or `string`.
    pub fn parse(s: &str) -> Result<KeyDtype> {
        match s {
            "int32" => Ok(KeyDtype::I32),
            "int64" => Ok(KeyDtype::I64),
            "string" => Ok(KeyDtype::Str),
            _ => Err(Error::invalid(
                crate::error::ArgumentKind::Dtype,
                format!("unsupported key dtype {s:?}: expected int32, int64 or string"),
            )),
        }
    }

    /// The hash field of the integer `key`. TFRA writes the key's native memory, which is
    /// little-endian on every platform it supports. For `I32` the key is truncated to 32 bits;
    /// callers check the range first. String tables never take integer keys
    /// ([`Keys::Ints`] is refused for them before any field is made), so `Str` encodes like
    /// `I64` here rather than failing.
    pub(crate) fn field(self, key: i64) -> KeyField {
        let mut bytes = [0u8; 8];
        let len = match self {
            KeyDtype::I32 => {
                bytes[..4].copy_from_slice(&(key as i32).to_le_bytes());
                4
            }
            KeyDtype::I64 | KeyDtype::Str => {
                bytes = key.to_le_bytes();
                8
            }
        };
        KeyField { bytes, len }
    }

    /// The integer key stored in `field`, or `None` if it has the wrong length (a field
    /// written by a table of another key dtype) or the table has string keys. int32 keys are
    /// sign-extended.
    pub(crate) fn decode(self, field: &[u8]) -> Option<i64> {
        match self {
            KeyDtype::I32 => Some(i64::from(i32::from_le_bytes(field.try_into().ok()?))),
            KeyDtype::I64 => Some(i64::from_le_bytes(field.try_into().ok()?)),
            KeyDtype::Str => None,
        }
    }
}

impl fmt::Display for KeyDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// String keys of one call, Arrow style: key `i` is `data[offsets[i]..offsets[i + 1]]`.
///
/// One buffer for all keys instead of one allocation per key; offsets are absolute, so a
/// window of keys ([`ByteKeys::slice`]) shares both buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteKeys<'a> {
    data: &'a [u8],
    offsets: &'a [usize],
}

impl<'a> ByteKeys<'a> {
    /// Keys over `data` cut at `offsets` (`n + 1` non-decreasing positions for `n` keys, the
    /// last at most `data.len()`; an empty slice means no keys).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] ([`ArgumentKind::Shape`](crate::ArgumentKind::Shape)) for any
    /// other offsets, so no later access can go out of bounds.
    pub fn new(data: &'a [u8], offsets: &'a [usize]) -> Result<ByteKeys<'a>> {
        if let Some(i) = offsets.windows(2).position(|w| w[0] > w[1]) {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "string key offsets must not decrease: offsets[{i}] = {} > offsets[{}] = {}",
                    offsets[i],
                    i + 1,
                    offsets[i + 1]
                ),
            ));
        }
        if let Some(&last) = offsets.last()
            && last > data.len()
        {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "string key offsets end at {last}, past the {} bytes of key data",
                    data.len()
                ),
            ));
        }
        Ok(ByteKeys { data, offsets })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of key `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> &'a [u8] {
        &self.data[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Keys `start..end`, sharing this one's buffers.
    ///
    /// # Panics
    /// If `start > end` or `end > self.len()`.
    pub fn slice(&self, start: usize, end: usize) -> ByteKeys<'a> {
        assert!(start <= end && end <= self.len(), "key range out of bounds");
        if start == end {
            return ByteKeys {
                data: self.data,
                offsets: &[],
            };
        }
        ByteKeys {
            data: self.data,
            offsets: &self.offsets[start..=end],
        }
    }

    /// The keys in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// The ids of one call: integers (for int32 and int64 tables) or byte strings (for string
/// tables).
///
/// Integer ids are values, whatever their Rust type: `i64` ids in an int32 table are checked
/// to fit ([`ArgumentKind::KeyOutOfRange`](crate::ArgumentKind::KeyOutOfRange) otherwise), and
/// `i32` ids in an int64 table are widened, which loses nothing. Integer ids for a string
/// table, or string ids for an integer table, are refused
/// ([`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)).
///
/// Every method taking ids takes `impl Into<Keys>`, so pass `&[i64]`, `&Vec<i64>`,
/// `&[i64; N]`, `&[i32]`, `&Vec<i32>`, a [`ByteKeys`] or a `&`[`KeyBuf`]. There is no
/// conversion from `&[i32; N]`: an array of unsuffixed literals (`&[7, 9]`) would then not
/// know its type and fall back to `i32`; write `&ids[..]` for an `i32` array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Keys<'a> {
    /// int64 ids.
    Ints(&'a [i64]),
    /// int32 ids.
    Ints32(&'a [i32]),
    /// String ids.
    Bytes(ByteKeys<'a>),
}

impl<'a> Keys<'a> {
    /// Number of keys.
    pub fn len(&self) -> usize {
        match self {
            Keys::Ints(k) => k.len(),
            Keys::Ints32(k) => k.len(),
            Keys::Bytes(k) => k.len(),
        }
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash field of key `i` in a table of `dtype`: the integer's little-endian bytes, or
    /// the string's own bytes.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub(crate) fn field(&self, i: usize, dtype: KeyDtype) -> FieldBytes<'a> {
        match self {
            Keys::Ints(k) => FieldBytes::Int(dtype.field(k[i])),
            Keys::Ints32(k) => FieldBytes::Int(dtype.field(i64::from(k[i]))),
            Keys::Bytes(k) => FieldBytes::Bytes(k.get(i)),
        }
    }

    /// Keys `start..end`.
    ///
    /// # Panics
    /// If `start > end` or `end > self.len()`.
    pub fn slice(&self, start: usize, end: usize) -> Keys<'a> {
        match self {
            Keys::Ints(k) => Keys::Ints(&k[start..end]),
            Keys::Ints32(k) => Keys::Ints32(&k[start..end]),
            Keys::Bytes(k) => Keys::Bytes(k.slice(start, end)),
        }
    }

    /// Key `i` for messages: the number, or the string's bytes quoted with non-printable
    /// bytes escaped.
    pub fn label(&self, i: usize) -> String {
        match self {
            Keys::Ints(k) => k[i].to_string(),
            Keys::Ints32(k) => k[i].to_string(),
            Keys::Bytes(k) => format!("\"{}\"", crate::layout::printable(k.get(i))),
        }
    }

    /// What kind of ids these are, for messages: `integer` or `string`.
    pub fn kind(&self) -> &'static str {
        match self {
            Keys::Ints(_) | Keys::Ints32(_) => "integer",
            Keys::Bytes(_) => "string",
        }
    }
}

impl<'a> From<&'a [i64]> for Keys<'a> {
    fn from(keys: &'a [i64]) -> Keys<'a> {
        Keys::Ints(keys)
    }
}

impl<'a> From<&'a Vec<i64>> for Keys<'a> {
    fn from(keys: &'a Vec<i64>) -> Keys<'a> {
        Keys::Ints(keys)
    }
}

impl<'a, const N: usize> From<&'a [i64; N]> for Keys<'a> {
    fn from(keys: &'a [i64; N]) -> Keys<'a> {
        Keys::Ints(keys)
    }
}

impl<'a> From<&'a [i32]> for Keys<'a> {
    fn from(keys: &'a [i32]) -> Keys<'a> {
        Keys::Ints32(keys)
    }
}

impl<'a> From<&'a Vec<i32>> for Keys<'a> {
    fn from(keys: &'a Vec<i32>) -> Keys<'a> {
        Keys::Ints32(keys)
    }
}

impl<'a> From<ByteKeys<'a>> for Keys<'a> {
    fn from(keys: ByteKeys<'a>) -> Keys<'a> {
        Keys::Bytes(keys)
    }
}

impl<'a> From<&'a KeyBuf> for Keys<'a> {
    fn from(keys: &'a KeyBuf) -> Keys<'a> {
        keys.keys()
    }
}

/// A key's hash field: an integer's bytes held inline, or a string key's bytes borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FieldBytes<'a> {
    /// An integer key's little-endian bytes.
    Int(KeyField),
    /// A string key's bytes.
    Bytes(&'a [u8]),
}

impl AsRef<[u8]> for FieldBytes<'_> {
    fn as_ref(&self) -> &[u8] {
        match self {
            FieldBytes::Int(f) => f.as_ref(),
            FieldBytes::Bytes(b) => b,
        }
    }
}

/// Owned keys, as an export or a scan of Redis produces them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyBuf {
    /// Integer ids.
    Ints(Vec<i64>),
    /// String ids: key `i` is `data[offsets[i]..offsets[i + 1]]`; `offsets` starts with 0.
    Bytes {
        /// The keys' bytes back to back.
        data: Vec<u8>,
        /// `len + 1` positions in `data`.
        offsets: Vec<usize>,
    },
}

impl KeyBuf {
    /// No keys yet, of the representation `dtype` uses.
    pub fn new(dtype: KeyDtype) -> KeyBuf {
        match dtype {
            KeyDtype::Str => KeyBuf::Bytes {
                data: Vec::new(),
                offsets: vec![0],
            },
            _ => KeyBuf::Ints(Vec::new()),
        }
    }

    /// String keys from their byte strings.
    pub fn from_strings<B: AsRef<[u8]>>(keys: impl IntoIterator<Item = B>) -> KeyBuf {
        let mut buf = KeyBuf::new(KeyDtype::Str);
        for k in keys {
            buf.push_bytes(k.as_ref());
        }
        buf
    }

    /// The keys, borrowed.
    pub fn keys(&self) -> Keys<'_> {
        match self {
            KeyBuf::Ints(k) => Keys::Ints(k),
            KeyBuf::Bytes { data, offsets } => Keys::Bytes(ByteKeys { data, offsets }),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys().len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the key stored in hash field `field` of a table of `dtype`; `false` (and
    /// nothing appended) when the field cannot be such a key (an int field of the wrong
    /// length).
    pub fn push_field(&mut self, dtype: KeyDtype, field: &[u8]) -> bool {
        match self {
            KeyBuf::Ints(k) => match dtype.decode(field) {
                Some(key) => {
                    k.push(key);
                    true
                }
                None => false,
            },
            KeyBuf::Bytes { .. } => {
                self.push_bytes(field);
                true
            }
        }
    }

    /// Appends key `i` of `keys` (of the same representation).
    ///
    /// # Panics
    /// If the representations differ or `i` is out of range.
    pub fn push_key(&mut self, keys: Keys<'_>, i: usize) {
        match (self, keys) {
            (KeyBuf::Ints(k), Keys::Ints(from)) => k.push(from[i]),
            (KeyBuf::Ints(k), Keys::Ints32(from)) => k.push(i64::from(from[i])),
            (buf @ KeyBuf::Bytes { .. }, Keys::Bytes(from)) => buf.push_bytes(from.get(i)),
            _ => panic!("KeyBuf::push_key across key representations"),
        }
    }

    fn push_bytes(&mut self, key: &[u8]) {
        if let KeyBuf::Bytes { data, offsets } = self {
            data.extend_from_slice(key);
            offsets.push(data.len());
        }
    }

    /// Appends every key of `keys` (of the same representation).
    ///
    /// # Panics
    /// If the representations differ.
    pub fn extend(&mut self, keys: Keys<'_>) {
        for i in 0..keys.len() {
            self.push_key(keys, i);
        }
    }

    /// The integer ids, or `None` for string keys.
    pub fn into_ints(self) -> Option<Vec<i64>> {
        match self {
            KeyBuf::Ints(k) => Some(k),
            KeyBuf::Bytes { .. } => None,
        }
    }
}

/// The dtype of a table's row elements. Displays as its numpy name (`float32`, `bfloat16`, ...);
/// [`Element`] maps Rust types to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueDtype {
    /// IEEE binary32 (`float` / `float32`).
    F32,
    /// IEEE binary64 (`double` / `float64`).
    F64,
    /// IEEE binary16 (`half` / `float16`).
    F16,
    /// bfloat16.
    BF16,
    /// `int32`.
    I32,
    /// `int64`.
    I64,
    /// `int8`.
    I8,
}

impl ValueDtype {
    /// Bytes per element.
    pub fn width(self) -> usize {
        match self {
            ValueDtype::I8 => 1,
            ValueDtype::F16 | ValueDtype::BF16 => 2,
            ValueDtype::F32 | ValueDtype::I32 => 4,
            ValueDtype::F64 | ValueDtype::I64 => 8,
        }
    }

    /// TensorFlow's name (`DataType` short name): `float`, `double`, `half`, `bfloat16`, ...
    pub fn tf_name(self) -> &'static str {
        match self {
            ValueDtype::F32 => "float",
            ValueDtype::F64 => "double",
            ValueDtype::F16 => "half",
            _ => self.numpy_name(),
        }
    }

    /// numpy's name: `float32`, `float64`, `float16`, `bfloat16`, `int32`, `int64`, `int8`.
    pub fn numpy_name(self) -> &'static str {
        match self {
            ValueDtype::F32 => "float32",
            ValueDtype::F64 => "float64",
            ValueDtype::F16 => "float16",
            ValueDtype::BF16 => "bfloat16",
            ValueDtype::I32 => "int32",
            ValueDtype::I64 => "int64",
            ValueDtype::I8 => "int8",
        }
    }

    /// Parses a TF or numpy dtype name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] ([`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)) for a name that is not one of the
    /// supported value dtypes.
    pub fn parse(s: &str) -> Result<ValueDtype> {
        Ok(match s {
            "float" | "float32" => ValueDtype::F32,
            "double" | "float64" => ValueDtype::F64,
            "half" | "float16" => ValueDtype::F16,
            "bfloat16" => ValueDtype::BF16,
            "int32" => ValueDtype::I32,
            "int64" => ValueDtype::I64,
            "int8" => ValueDtype::I8,
            _ => {
                return Err(Error::invalid(
                    crate::error::ArgumentKind::Dtype,
                    format!(
                        "unsupported value dtype {s:?}: expected one of float32, float64, float16, \
                     bfloat16, int32, int64, int8"
                    ),
                ));
            }
        })
    }
}

impl fmt::Display for ValueDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.numpy_name())
    }
}

/// A Rust type that is the element type of a table's rows: `f32`, `f64`, [`f16`](struct@f16),
/// [`bf16`], `i8`, `i32` or `i64`, one per [`ValueDtype`].
///
/// The typed row methods ([`Table::find_rows`](crate::Table::find_rows),
/// [`Table::insert_rows`](crate::Table::insert_rows),
/// [`Table::accum_rows`](crate::Table::accum_rows),
/// [`Table::export_rows`](crate::Table::export_rows)) take and give `&[T]` instead of raw
/// little-endian bytes, and refuse a `T` whose [`Element::DTYPE`] is not the table's value
/// dtype ([`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)): an `f32` read of a float16
/// table would otherwise reinterpret its bytes. The set is closed (sealed): every implementor
/// is plain old data with the exact layout Redis stores on a little-endian machine.
///
/// ```
/// use tfra_redis::{Element, ValueDtype, f16};
/// assert_eq!(<f32 as Element>::DTYPE, ValueDtype::F32);
/// assert_eq!(f16::DTYPE, ValueDtype::F16);
/// ```
pub trait Element: sealed::Sealed + Copy + Send + Sync + fmt::Debug + 'static {
    /// The value dtype of tables whose rows hold this type.
    const DTYPE: ValueDtype;
}

/// Seals [`Element`] and carries the `bytemuck::Pod` bound inside the crate without making
/// `bytemuck` part of the public API.
mod sealed {
    pub trait Sealed: bytemuck::Pod {}
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: ValueDtype = ValueDtype::$d;
        }
    )*};
}

element!(
    f32 => F32,
    f64 => F64,
    f16 => F16,
    bf16 => BF16,
    i8 => I8,
    i32 => I32,
    i64 => I64,
);

/// `rows` as the little-endian bytes Redis stores: a view on little-endian machines, a
/// byte-swapped copy elsewhere.
pub(crate) fn elements_to_le<T: Element>(rows: &[T]) -> std::borrow::Cow<'_, [u8]> {
    let bytes: &[u8] = bytemuck::cast_slice(rows);
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytes)
    } else {
        let mut owned = bytes.to_vec();
        swap_elements::<T>(&mut owned);
        std::borrow::Cow::Owned(owned)
    }
}

/// `T`'s bytes viewed as `&mut [u8]`, to be filled with little-endian elements and then
/// fixed up by [`le_to_native_in_place`].
pub(crate) fn elements_as_bytes_mut<T: Element>(rows: &mut [T]) -> &mut [u8] {
    bytemuck::cast_slice_mut(rows)
}

/// Turns elements filled with little-endian bytes into native ones (nothing on little-endian
/// machines).
pub(crate) fn le_to_native_in_place<T: Element>(rows: &mut [T]) {
    if cfg!(target_endian = "big") {
        swap_elements::<T>(bytemuck::cast_slice_mut(rows));
    }
}

/// Reverses the bytes of each `size_of::<T>()`-byte element.
fn swap_elements<T: Element>(bytes: &mut [u8]) {
    for e in bytes.chunks_exact_mut(std::mem::size_of::<T>()) {
        e.reverse();
    }
}

/// The number of elements per row, at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dim(usize);

/// The largest embedding dim: a row of the widest dtype (8 bytes) then fills Redis's largest
/// string, 512 MiB. Past it no row could be stored, and `dim x width` could overflow (a dim of
/// 2^62 float32 values gave rows of 0 bytes).
pub const MAX_DIM: usize = (512 << 20) / 8;

impl Dim {
    /// A row length, 1 to [`MAX_DIM`]; zero is rejected because a zero-length row cannot be
    /// told from a missing one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] ([`ArgumentKind::Dim`](crate::ArgumentKind::Dim)) when `dim` is 0 or above [`MAX_DIM`].
    pub fn new(dim: usize) -> Result<Dim> {
        if !(1..=MAX_DIM).contains(&dim) {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Dim,
                format!(
                    "embedding dim must be between 1 and {MAX_DIM} (rows of at most 512 MiB, \
                 Redis's largest string), got {dim}"
                ),
            ));
        }
        Ok(Dim(dim))
    }

    /// The number of elements.
    pub fn get(self) -> usize {
        self.0
    }
}

/// Bytes of one stored row: `dim × width`, no header (TFRA stores the raw elements only).
pub fn row_bytes(dtype: ValueDtype, dim: Dim) -> usize {
    dtype.width() * dim.get()
}

/// Applies `op` to each pair of `N`-byte little-endian elements of `acc` and `delta`.
fn zip_elems<const N: usize>(
    acc: &mut [u8],
    delta: &[u8],
    op: impl Fn([u8; N], [u8; N]) -> [u8; N],
) {
    for (a, d) in acc.chunks_exact_mut(N).zip(delta.chunks_exact(N)) {
        let sum = op(
            a.try_into().expect("chunk of N bytes"),
            d.try_into().expect("chunk of N bytes"),
        );
        a.copy_from_slice(&sum);
    }
}

/// Adds `delta` to `acc` element-wise, both raw little-endian rows of `dtype` (one or many rows
/// back to back).
///
/// Floats add in their own precision (f16/bf16 round after each add, as TF's ops on those types
/// do); integers wrap. This is the arithmetic of TFRA's `accum` and of the optimizer updates.
///
/// # Errors
///
/// [`Error::InvalidArgument`] ([`ArgumentKind::Shape`](crate::ArgumentKind::Shape)) when the two buffers differ in length or
/// are not whole elements of `dtype`.
pub fn add_rows(dtype: ValueDtype, acc: &mut [u8], delta: &[u8]) -> Result<()> {
    if acc.len() != delta.len() || !acc.len().is_multiple_of(dtype.width()) {
        return Err(Error::invalid(
            crate::error::ArgumentKind::Shape,
            format!(
                "cannot add {} bytes to {} bytes of {dtype} rows",
                delta.len(),
                acc.len()
            ),
        ));
    }
    match dtype {
        ValueDtype::F32 => zip_elems::<4>(acc, delta, |a, d| {
            (f32::from_le_bytes(a) + f32::from_le_bytes(d)).to_le_bytes()
        }),
        ValueDtype::F64 => zip_elems::<8>(acc, delta, |a, d| {
            (f64::from_le_bytes(a) + f64::from_le_bytes(d)).to_le_bytes()
        }),
        ValueDtype::F16 => zip_elems::<2>(acc, delta, |a, d| {
            (f16::from_le_bytes(a) + f16::from_le_bytes(d)).to_le_bytes()
        }),
        ValueDtype::BF16 => zip_elems::<2>(acc, delta, |a, d| {
            (bf16::from_le_bytes(a) + bf16::from_le_bytes(d)).to_le_bytes()
        }),
        ValueDtype::I32 => zip_elems::<4>(acc, delta, |a, d| {
            i32::from_le_bytes(a)
                .wrapping_add(i32::from_le_bytes(d))
                .to_le_bytes()
        }),
        ValueDtype::I64 => zip_elems::<8>(acc, delta, |a, d| {
            i64::from_le_bytes(a)
                .wrapping_add(i64::from_le_bytes(d))
                .to_le_bytes()
        }),
        ValueDtype::I8 => zip_elems::<1>(acc, delta, |a, d| {
            i8::from_le_bytes(a)
                .wrapping_add(i8::from_le_bytes(d))
                .to_le_bytes()
        }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn f32_row(row: &[f32]) -> Vec<u8> {
        row.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn key_fields() {
        assert_eq!(hex(KeyDtype::I64.field(-1).as_ref()), "ffffffffffffffff");
        assert_eq!(
            hex(KeyDtype::I64.field(0x0102030405060708).as_ref()),
            "0807060504030201"
        );
        assert_eq!(hex(KeyDtype::I32.field(-2).as_ref()), "feffffff");
        assert_eq!(hex(KeyDtype::I32.field(1).as_ref()), "01000000");
        for key in [0i64, 1, -1, i64::MIN, i64::MAX, 695] {
            assert_eq!(
                KeyDtype::I64.decode(KeyDtype::I64.field(key).as_ref()),
                Some(key)
            );
        }
        for key in [0i64, -1, i32::MIN.into(), i32::MAX.into()] {
            assert_eq!(
                KeyDtype::I32.decode(KeyDtype::I32.field(key).as_ref()),
                Some(key)
            );
        }
        assert_eq!(KeyDtype::I32.decode(&[0; 8]), None);
        assert_eq!(KeyDtype::I64.decode(&[0; 4]), None);
    }

    #[test]
    fn string_keys() {
        // The field is the string's raw bytes: no prefix, no length, no terminator.
        let data = b"abc\0x\xc3\xa9";
        let offsets = [0usize, 3, 3, 5, 7];
        let keys = Keys::Bytes(ByteKeys::new(data, &offsets).unwrap());
        assert_eq!(keys.len(), 4);
        let fields: Vec<Vec<u8>> = (0..4)
            .map(|i| keys.field(i, KeyDtype::Str).as_ref().to_vec())
            .collect();
        assert_eq!(
            fields,
            [&b"abc"[..], b"", b"\0x", "é".as_bytes()].map(<[u8]>::to_vec)
        );
        assert_eq!(keys.label(2), "\"\\x00x\"");
        assert_eq!(keys.kind(), "string");
        let window = keys.slice(1, 3);
        assert_eq!(window.len(), 2);
        assert_eq!(window.field(1, KeyDtype::Str).as_ref(), b"\0x");
        assert!(keys.slice(2, 2).is_empty());
        assert!(ByteKeys::new(b"", &[]).unwrap().is_empty());
        assert!(ByteKeys::new(data, &[0, 4, 2]).is_err());
        assert!(ByteKeys::new(data, &[0, 8]).is_err());

        let mut buf = KeyBuf::new(KeyDtype::Str);
        assert!(buf.push_field(KeyDtype::Str, b"k1"));
        buf.extend(keys);
        assert_eq!(buf.len(), 5);
        assert_eq!(
            buf,
            KeyBuf::from_strings([&b"k1"[..], b"abc", b"", b"\0x", "é".as_bytes()])
        );
        assert_eq!(buf.clone().into_ints(), None);

        let mut ints = KeyBuf::new(KeyDtype::I32);
        assert!(ints.push_field(KeyDtype::I32, &(-2i32).to_le_bytes()));
        assert!(!ints.push_field(KeyDtype::I32, &[0; 8]));
        assert_eq!(ints.into_ints(), Some(vec![-2]));
        let int_keys = Keys::from(&[5i64, 6]);
        assert_eq!(
            int_keys.field(1, KeyDtype::I64).as_ref(),
            &6i64.to_le_bytes()
        );
        assert_eq!(int_keys.label(0), "5");
    }

    #[test]
    fn dtype_names() {
        assert_eq!(KeyDtype::parse("int64").unwrap(), KeyDtype::I64);
        assert_eq!(KeyDtype::parse("int32").unwrap().width(), Some(4));
        assert_eq!(KeyDtype::I64.name(), "int64");
        assert_eq!(KeyDtype::parse("string").unwrap(), KeyDtype::Str);
        assert_eq!(KeyDtype::Str.width(), None);
        assert_eq!(KeyDtype::Str.name(), "string");
        assert!(KeyDtype::parse("str").is_err());
        let all = [
            ValueDtype::F32,
            ValueDtype::F64,
            ValueDtype::F16,
            ValueDtype::BF16,
            ValueDtype::I32,
            ValueDtype::I64,
            ValueDtype::I8,
        ];
        let widths: Vec<usize> = all.iter().map(|d| d.width()).collect();
        assert_eq!(widths, [4, 8, 2, 2, 4, 8, 1]);
        for d in all {
            assert_eq!(ValueDtype::parse(d.tf_name()).unwrap(), d);
            assert_eq!(ValueDtype::parse(d.numpy_name()).unwrap(), d);
        }
        assert_eq!(ValueDtype::F16.tf_name(), "half");
        assert_eq!(ValueDtype::F64.numpy_name(), "float64");
        assert!(ValueDtype::parse("bool").is_err());
    }

    #[test]
    fn rows() {
        assert!(Dim::new(0).is_err());
        assert_eq!(Dim::new(MAX_DIM).unwrap().get(), 1 << 26);
        for too_big in [MAX_DIM + 1, 1 << 62, usize::MAX] {
            let message = Dim::new(too_big).unwrap_err().to_string();
            assert!(message.contains(&too_big.to_string()), "{message}");
        }
        assert_eq!(
            row_bytes(ValueDtype::F64, Dim::new(MAX_DIM).unwrap()),
            512 << 20
        );
        assert_eq!(row_bytes(ValueDtype::F32, Dim::new(4).unwrap()), 16);
        assert_eq!(row_bytes(ValueDtype::BF16, Dim::new(3).unwrap()), 6);
        assert_eq!(hex(&f32_row(&[1.0, -2.0])), "0000803f000000c0");
        // The fixture row of key 695: [k, k*0.5, -k, k+0.25].
        assert_eq!(
            hex(&f32_row(&[695.0, 347.5, -695.0, 695.25])),
            "00c02d4400c0ad4300c02dc400d02d44"
        );
    }

    #[test]
    fn add() {
        let mut acc = f32_row(&[1.0, -2.0]);
        add_rows(ValueDtype::F32, &mut acc, &f32_row(&[0.5, 2.0])).unwrap();
        assert_eq!(acc, f32_row(&[1.5, 0.0]));

        let mut acc = 1.25f64.to_le_bytes().to_vec();
        add_rows(ValueDtype::F64, &mut acc, &2.5f64.to_le_bytes()).unwrap();
        assert_eq!(acc, 3.75f64.to_le_bytes());

        let mut acc = f16::from_f32(1.5).to_le_bytes().to_vec();
        add_rows(
            ValueDtype::F16,
            &mut acc,
            &f16::from_f32(0.25).to_le_bytes(),
        )
        .unwrap();
        assert_eq!(acc, f16::from_f32(1.75).to_le_bytes());

        let mut acc = bf16::from_f32(3.0).to_le_bytes().to_vec();
        add_rows(
            ValueDtype::BF16,
            &mut acc,
            &bf16::from_f32(-1.0).to_le_bytes(),
        )
        .unwrap();
        assert_eq!(acc, bf16::from_f32(2.0).to_le_bytes());

        let mut acc = i32::MAX.to_le_bytes().to_vec();
        add_rows(ValueDtype::I32, &mut acc, &1i32.to_le_bytes()).unwrap();
        assert_eq!(acc, i32::MIN.to_le_bytes());

        let mut acc = [5i64, -1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        let delta = [-6i64, 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        add_rows(ValueDtype::I64, &mut acc, &delta).unwrap();
        assert_eq!(
            acc,
            [-1i64, 0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );

        let mut acc = vec![127u8, 1];
        add_rows(ValueDtype::I8, &mut acc, &[1, 0xff]).unwrap();
        assert_eq!(acc, [0x80, 0]);

        assert!(add_rows(ValueDtype::F32, &mut [0; 8], &[0; 4]).is_err());
        assert!(add_rows(ValueDtype::F32, &mut [0; 6], &[0; 6]).is_err());
    }
}
