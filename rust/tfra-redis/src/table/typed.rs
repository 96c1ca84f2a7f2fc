//! Typed rows: `find_rows`, `insert_rows`, `accum_rows` and `export_rows` take and give slices
//! of the table's [`Element`] type and convert to the little-endian bytes Redis stores.

use super::{Defaults, Table};
use crate::codec::{
    Element, KeyBuf, Keys, elements_as_bytes_mut, elements_to_le, le_to_native_in_place,
};
use crate::error::{Error, Result};

impl Table {
    /// Refuses element type `T` unless it is the table's value dtype.
    fn check_element<T: Element>(&self) -> Result<()> {
        if T::DTYPE != self.spec.value_dtype {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Dtype,
                format!(
                    "table {:?} holds {} values, but {} rows were given",
                    self.spec.name,
                    self.spec.value_dtype.numpy_name(),
                    T::DTYPE.numpy_name()
                ),
            ));
        }
        Ok(())
    }

    /// Checks that a typed buffer holds `rows` rows, counting elements (the byte check would
    /// give the same answer in less readable units).
    fn check_elements(&self, what: &str, got: usize, rows: usize) -> Result<()> {
        let dim = self.spec.dim.get();
        if got != rows * dim {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "{what} has {got} {} values, expected {rows} rows x {dim} = {}",
                    self.spec.value_dtype.numpy_name(),
                    rows * dim
                ),
            ));
        }
        Ok(())
    }

    /// [`Table::find`] with typed rows: `out` receives `keys.len() × dim` elements of `T`,
    /// the table's element type (`f32` for a float32 table, [`f16`](struct@crate::f16) for a
    /// float16 one, ...). Defaults are typed too.
    ///
    /// ```no_run
    /// # fn demo(table: &tfra_redis::Table) -> tfra_redis::Result<()> {
    /// use tfra_redis::Defaults;
    /// // A float32 table of dim 2.
    /// let mut out = vec![0f32; 3 * 2];
    /// let mut found = [false; 3];
    /// table.find_rows(&[9, 7, 8], Defaults::Row(&[0.0, 0.0]), &mut out, Some(&mut found))?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] with [`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)
    /// when `T` is not the table's element type, and otherwise as [`Table::find`]
    /// ([`ArgumentKind::Shape`](crate::ArgumentKind::Shape) when `out`, the defaults or
    /// `exists` do not fit `keys`); nothing is sent then.
    pub fn find_rows<'k, T: Element>(
        &self,
        keys: impl Into<Keys<'k>>,
        defaults: Defaults<'_, T>,
        out: &mut [T],
        exists: Option<&mut [bool]>,
    ) -> Result<()> {
        let keys = keys.into();
        self.check_element::<T>()?;
        self.check_keys(keys)?;
        self.check_elements("out", out.len(), keys.len())?;
        let defaults_le;
        let defaults = match defaults {
            Defaults::Row(r) => {
                self.check_elements("the default row", r.len(), 1)?;
                defaults_le = elements_to_le(r);
                Defaults::Row(&defaults_le)
            }
            Defaults::PerKey(r) => {
                self.check_elements("the per-key defaults", r.len(), keys.len())?;
                defaults_le = elements_to_le(r);
                Defaults::PerKey(&defaults_le)
            }
        };
        let result = self.find(keys, defaults, elements_as_bytes_mut(out), exists);
        le_to_native_in_place(out);
        result
    }

    /// [`Table::insert`] with typed rows: `rows` holds `keys.len() × dim` elements of the
    /// table's element type, row-major.
    ///
    /// ```no_run
    /// # fn demo(table: &tfra_redis::Table) -> tfra_redis::Result<()> {
    /// // A float32 table of dim 2: rows for ids 7 and 9.
    /// table.insert_rows(&[7, 9], &[1.0f32, 2.0, 3.0, 4.0])?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] with [`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)
    /// when `T` is not the table's element type, and otherwise as [`Table::insert`].
    pub fn insert_rows<'k, T: Element>(&self, keys: impl Into<Keys<'k>>, rows: &[T]) -> Result<()> {
        let keys = keys.into();
        self.check_element::<T>()?;
        self.check_keys(keys)?;
        self.check_elements("rows", rows.len(), keys.len())?;
        self.insert(keys, &elements_to_le(rows))
    }

    /// [`Table::accum`] with typed deltas (`keys.len() × dim` elements of the table's
    /// element type).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] with [`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)
    /// when `T` is not the table's element type, and otherwise as [`Table::accum`].
    pub fn accum_rows<'k, T: Element>(
        &self,
        keys: impl Into<Keys<'k>>,
        deltas: &[T],
        exists: &[bool],
    ) -> Result<()> {
        let keys = keys.into();
        self.check_element::<T>()?;
        self.check_keys(keys)?;
        self.check_elements("deltas", deltas.len(), keys.len())?;
        self.accum(keys, &elements_to_le(deltas), exists)
    }

    /// [`Table::export`] with typed rows: every id and its row, `dim` elements of the table's
    /// element type per id, in the same order. Integer ids come back as `i64` (in
    /// [`KeyBuf::Ints`]) for int32 tables too.
    ///
    /// ```no_run
    /// # fn demo(table: &tfra_redis::Table) -> tfra_redis::Result<()> {
    /// let (ids, rows) = table.export_rows::<f32>()?;
    /// let dim = table.spec().dim.get();
    /// for (id, row) in ids.into_ints().unwrap_or_default().iter().zip(rows.chunks(dim)) {
    ///     println!("{id}: {row:?}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] with [`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)
    /// when `T` is not the table's element type (checked before anything is read), and
    /// otherwise as [`Table::export`].
    pub fn export_rows<T: Element>(&self) -> Result<(KeyBuf, Vec<T>)> {
        self.check_element::<T>()?;
        let (keys, bytes) = self.export()?;
        let mut rows: Vec<T> = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
        elements_as_bytes_mut(&mut rows).copy_from_slice(&bytes);
        le_to_native_in_place(&mut rows);
        Ok((keys, rows))
    }
}
