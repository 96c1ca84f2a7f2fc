//! Ids as hash fields: the little-endian bytes of an integer key, or a string key's own bytes.

use std::fmt;

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
