//! The bytes TFRA stores: hash fields are the key's little-endian bytes, hash values are rows of
//! `dim` little-endian elements with no header.
//!
//! Nothing in Redis records the dtype or dim of a table, so both sides must agree on them; this
//! module only knows how to turn numbers into those bytes and back.

use std::fmt;

use half::{bf16, f16};

use crate::error::{Error, Result};

/// The dtype of a table's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyDtype {
    /// `int32`: 4-byte fields.
    I32,
    /// `int64`: 8-byte fields.
    I64,
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
    /// Bytes per key field.
    pub fn width(self) -> usize {
        match self {
            KeyDtype::I32 => 4,
            KeyDtype::I64 => 8,
        }
    }

    /// The TF/numpy name (`int32`, `int64`).
    pub fn name(self) -> &'static str {
        match self {
            KeyDtype::I32 => "int32",
            KeyDtype::I64 => "int64",
        }
    }

    /// Parses a TF or numpy dtype name (`int32`, `int64`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] ([`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)) for a name other than `int32` or
    /// `int64`.
    pub fn parse(s: &str) -> Result<KeyDtype> {
        match s {
            "int32" => Ok(KeyDtype::I32),
            "int64" => Ok(KeyDtype::I64),
            _ => Err(Error::invalid(
                crate::error::ArgumentKind::Dtype,
                format!("unsupported key dtype {s:?}: expected int32 or int64"),
            )),
        }
    }

    /// The hash field of `key`. TFRA writes the key's native memory, which is little-endian on
    /// every platform it supports. For `I32` the key is truncated to 32 bits; callers check the
    /// range first.
    pub(crate) fn field(self, key: i64) -> KeyField {
        let mut bytes = [0u8; 8];
        match self {
            KeyDtype::I32 => bytes[..4].copy_from_slice(&(key as i32).to_le_bytes()),
            KeyDtype::I64 => bytes = key.to_le_bytes(),
        }
        KeyField {
            bytes,
            len: self.width() as u8,
        }
    }

    /// The key stored in `field`, or `None` if it has the wrong length (a field written by a
    /// table of another key dtype). int32 keys are sign-extended.
    pub(crate) fn decode(self, field: &[u8]) -> Option<i64> {
        match self {
            KeyDtype::I32 => Some(i64::from(i32::from_le_bytes(field.try_into().ok()?))),
            KeyDtype::I64 => Some(i64::from_le_bytes(field.try_into().ok()?)),
        }
    }
}

impl fmt::Display for KeyDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The dtype of a table's row elements.
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
    fn dtype_names() {
        assert_eq!(KeyDtype::parse("int64").unwrap(), KeyDtype::I64);
        assert_eq!(KeyDtype::parse("int32").unwrap().width(), 4);
        assert_eq!(KeyDtype::I64.name(), "int64");
        assert!(KeyDtype::parse("string").is_err());
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
