//! Rows as hash values: `dim` little-endian elements of the table's value dtype, no header.

use std::fmt;

use half::{bf16, f16};

use crate::error::{Error, Result};

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
