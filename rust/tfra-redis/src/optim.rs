//! Sparse optimizer updates applied to embedding rows stored in Redis: SGD, Adagrad, Adam, FTRL.
//!
//! The math ([`Optimizer::update_rows`]) mirrors the Keras 3 optimizers (`keras/src/optimizers/
//! sgd.py`, `adagrad.py`, `adam.py`, `ftrl.py`, `update_step`) operation by operation, in float32
//! and in the same order, so rows trained through Redis match rows trained as an in-memory
//! variable with the same Keras optimizer. [`apply_gradients`] is the I/O around it: read the
//! rows and their slot rows, update, write them back.
//!
//! The update is lazy: only the rows present in the batch change, and so do only their slot rows.
//! That is what Keras does for `IndexedSlices` gradients with SGD and Adagrad. Keras' Adam and
//! FTRL densify such gradients instead: Adam decays `m` and `v` of every row each step, and FTRL
//! recomputes every row from its `linear` and `accumulator` slots. Doing that to a Redis table
//! would cost a full scan per step, so here a row that gets no gradient in a step keeps its value
//! and its slots (as with TFRA, whose optimizers only ever see the looked-up rows). When every
//! row gets a gradient every step the results are the same.

use std::collections::HashSet;

use crate::codec::{Keys, ValueDtype};
use crate::error::{Error, Result};
use crate::table::{Defaults, Lookup, Table};

/// Keys per read-update-write round, so memory stays bounded whatever the batch size.
const WINDOW_KEYS: usize = 1 << 16;

/// A sparse optimizer and its hyper-parameters.
///
/// Hyper-parameters are `f64` because Keras keeps them as Python floats and combines some of
/// them in double precision before they meet a float32 tensor (`1 - beta_1` is rounded to
/// float32 once, which is not the same number as `1.0f32 - 0.9f32`). Storing them as `f32`
/// would make the last bit differ from Keras.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Optimizer {
    /// Plain SGD: `p -= g * lr` (Keras `SGD` with `momentum=0`).
    Sgd {
        /// Learning rate.
        lr: f64,
    },
    /// Adagrad: `acc += g²; p -= lr·g / sqrt(acc + ε)`.
    Adagrad {
        /// Learning rate.
        lr: f64,
        /// The accumulator of a row that has never been updated.
        initial_accumulator: f64,
        /// Added to the accumulator under the square root (Keras puts it inside).
        epsilon: f64,
    },
    /// Adam with bias correction on the step count (the first update is step 1).
    Adam {
        /// Learning rate.
        lr: f64,
        /// Decay of the first moment `m`.
        beta1: f64,
        /// Decay of the second moment `v`.
        beta2: f64,
        /// Added to `sqrt(v)` in the denominator.
        epsilon: f64,
    },
    /// FTRL-Proximal as in Keras `Ftrl` (McMahan et al., 2013), with L2 shrinkage and `beta`.
    Ftrl {
        /// Learning rate.
        lr: f64,
        /// The power of the per-coordinate learning rate; zero or negative.
        lr_power: f64,
        /// L1 regularization strength.
        l1: f64,
        /// L2 regularization strength.
        l2: f64,
        /// L2 shrinkage regularization strength (applied to the gradient, not the loss).
        l2_shrinkage: f64,
        /// The accumulator of a row that has never been updated.
        initial_accumulator: f64,
        /// Keras' `beta`, added to the L2 strength as `beta / (2·lr)`.
        beta: f64,
    },
}

impl Optimizer {
    /// Builds an optimizer from its Keras name (`sgd`, `adagrad`, `adam`, `ftrl`, any case) and
    /// hyper-parameters named as the Keras constructor arguments (`learning_rate`, `beta_1`,
    /// `initial_accumulator_value`, `l1_regularization_strength`, ...). Missing ones take Keras'
    /// defaults; an unknown name or hyper-parameter is an error that names it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] ([`ArgumentKind::Optimizer`](crate::ArgumentKind::Optimizer)) for an unknown optimizer, an
    /// unknown or repeated hyper-parameter, or a value out of range.
    pub fn from_keras_name(name: &str, hyper: &[(&str, f64)]) -> Result<Optimizer> {
        let kind = name.to_ascii_lowercase();
        let allowed: &[&str] = match kind.as_str() {
            "sgd" => &["learning_rate"],
            "adagrad" => &["learning_rate", "initial_accumulator_value", "epsilon"],
            "adam" => &["learning_rate", "beta_1", "beta_2", "epsilon"],
            "ftrl" => &[
                "learning_rate",
                "learning_rate_power",
                "initial_accumulator_value",
                "l1_regularization_strength",
                "l2_regularization_strength",
                "l2_shrinkage_regularization_strength",
                "beta",
            ],
            _ => {
                return Err(Error::invalid(
                    crate::error::ArgumentKind::Optimizer,
                    format!("unknown optimizer {name:?}; expected one of sgd, adagrad, adam, ftrl"),
                ));
            }
        };
        let mut seen = HashSet::new();
        for (key, _) in hyper {
            if !allowed.contains(key) {
                return Err(Error::invalid(
                    crate::error::ArgumentKind::Optimizer,
                    format!(
                        "unknown hyper-parameter {key:?} for optimizer {name:?}; expected some of {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if !seen.insert(*key) {
                return Err(Error::invalid(
                    crate::error::ArgumentKind::Optimizer,
                    format!("hyper-parameter {key:?} given twice"),
                ));
            }
        }
        let h = |key: &str, default: f64| {
            hyper
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(default, |(_, v)| *v)
        };
        // The defaults are the Keras constructors' defaults.
        let optimizer = match kind.as_str() {
            "sgd" => Optimizer::Sgd {
                lr: h("learning_rate", 0.01),
            },
            "adagrad" => Optimizer::Adagrad {
                lr: h("learning_rate", 0.001),
                initial_accumulator: h("initial_accumulator_value", 0.1),
                epsilon: h("epsilon", 1e-7),
            },
            "adam" => Optimizer::Adam {
                lr: h("learning_rate", 0.001),
                beta1: h("beta_1", 0.9),
                beta2: h("beta_2", 0.999),
                epsilon: h("epsilon", 1e-7),
            },
            _ => Optimizer::Ftrl {
                lr: h("learning_rate", 0.001),
                lr_power: h("learning_rate_power", -0.5),
                initial_accumulator: h("initial_accumulator_value", 0.1),
                l1: h("l1_regularization_strength", 0.0),
                l2: h("l2_regularization_strength", 0.0),
                l2_shrinkage: h("l2_shrinkage_regularization_strength", 0.0),
                beta: h("beta", 0.0),
            },
        };
        optimizer.validate()?;
        Ok(optimizer)
    }

    /// The optimizer's name, as Keras spells the class.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "SGD",
            Optimizer::Adagrad { .. } => "Adagrad",
            Optimizer::Adam { .. } => "Adam",
            Optimizer::Ftrl { .. } => "Ftrl",
        }
    }

    /// Checks the hyper-parameters with Keras' rules (plus finiteness and a positive learning
    /// rate, which every update below divides by or relies on).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] ([`ArgumentKind::Optimizer`](crate::ArgumentKind::Optimizer)) naming the hyper-parameter out of
    /// range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, value: f64, rule: &str| {
            Err(Error::invalid(
                crate::error::ArgumentKind::Optimizer,
                format!("{} {what} must be {rule}, got {value}", self.name()),
            ))
        };
        let lr = match *self {
            Optimizer::Sgd { lr }
            | Optimizer::Adagrad { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::Ftrl { lr, .. } => lr,
        };
        if !(lr.is_finite() && lr > 0.0) {
            return bad("learning_rate", lr, "a positive finite number");
        }
        match *self {
            Optimizer::Sgd { .. } => {}
            Optimizer::Adagrad {
                initial_accumulator,
                epsilon,
                ..
            } => {
                if !(initial_accumulator >= 0.0 && initial_accumulator.is_finite()) {
                    return bad("initial_accumulator_value", initial_accumulator, ">= 0");
                }
                if !(epsilon >= 0.0 && epsilon.is_finite()) {
                    return bad("epsilon", epsilon, ">= 0");
                }
            }
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
                ..
            } => {
                // beta = 1 would make the bias correction divide by zero.
                if !(0.0..1.0).contains(&beta1) {
                    return bad("beta_1", beta1, "in [0, 1)");
                }
                if !(0.0..1.0).contains(&beta2) {
                    return bad("beta_2", beta2, "in [0, 1)");
                }
                if !(epsilon >= 0.0 && epsilon.is_finite()) {
                    return bad("epsilon", epsilon, ">= 0");
                }
            }
            Optimizer::Ftrl {
                lr_power,
                l1,
                l2,
                l2_shrinkage,
                initial_accumulator,
                beta,
                ..
            } => {
                for (what, value) in [
                    ("initial_accumulator_value", initial_accumulator),
                    ("l1_regularization_strength", l1),
                    ("l2_regularization_strength", l2),
                    ("l2_shrinkage_regularization_strength", l2_shrinkage),
                    ("beta", beta),
                ] {
                    if !(value >= 0.0 && value.is_finite()) {
                        return bad(what, value, ">= 0");
                    }
                }
                if !(lr_power <= 0.0 && lr_power.is_finite()) {
                    return bad("learning_rate_power", lr_power, "<= 0");
                }
            }
        }
        Ok(())
    }

    /// The slots each row carries, in the order [`Optimizer::update_rows`] takes them. These are
    /// also the suffixes of TFRA's slot table names (`<params>_<params>_shadow_m`).
    pub fn slot_names(&self) -> &'static [&'static str] {
        match self {
            Optimizer::Sgd { .. } => &[],
            Optimizer::Adagrad { .. } => &["accumulator"],
            Optimizer::Adam { .. } => &["m", "v"],
            Optimizer::Ftrl { .. } => &["accumulator", "linear"],
        }
    }

    /// The value every element of a slot starts from (Keras' slot initializer): the initial
    /// accumulator for Adagrad's and FTRL's `accumulator`, zero otherwise.
    ///
    /// # Panics
    /// If `slot` is not one of [`Optimizer::slot_names`].
    pub fn initial_slot_value(&self, slot: &str) -> f32 {
        assert!(
            self.slot_names().contains(&slot),
            "{} has no slot {slot:?} (its slots: {:?})",
            self.name(),
            self.slot_names()
        );
        match (self, slot) {
            (
                Optimizer::Adagrad {
                    initial_accumulator,
                    ..
                }
                | Optimizer::Ftrl {
                    initial_accumulator,
                    ..
                },
                "accumulator",
            ) => *initial_accumulator as f32,
            _ => 0.0,
        }
    }

    /// Applies one update to `params` element-wise, in place, with the slots in
    /// [`Optimizer::slot_names`] order. `step` is the 1-based count of updates, Keras'
    /// `iterations + 1`; only Adam uses it.
    ///
    /// Every float32 operation below is the one Keras' `update_step` runs, in its order; where
    /// Keras combines Python floats first (`1 - beta_1`, `2 * l2_shrinkage`), this does so in f64
    /// and rounds once, as TensorFlow does when the result meets a float32 tensor.
    ///
    /// # Panics
    /// If the slot count is wrong, the slices differ in length, or Adam gets `step == 0`.
    pub fn update_rows(
        &self,
        step: u64,
        params: &mut [f32],
        slots: &mut [&mut [f32]],
        grads: &[f32],
    ) {
        let n = params.len();
        assert_eq!(
            slots.len(),
            self.slot_names().len(),
            "{} takes {} slot arrays",
            self.name(),
            self.slot_names().len()
        );
        assert_eq!(grads.len(), n, "grads and params differ in length");
        for s in slots.iter() {
            assert_eq!(s.len(), n, "a slot array and params differ in length");
        }
        match *self {
            Optimizer::Sgd { lr } => {
                let lr = lr as f32;
                for (p, &g) in params.iter_mut().zip(grads) {
                    *p -= g * lr;
                }
            }
            Optimizer::Adagrad { lr, epsilon, .. } => {
                let lr = lr as f32;
                let eps = epsilon as f32;
                let [acc] = slots else { unreachable!() };
                for ((p, a), &g) in params.iter_mut().zip(acc.iter_mut()).zip(grads) {
                    *a += g * g;
                    *p -= (lr * g) / (*a + eps).sqrt();
                }
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                epsilon,
            } => {
                assert!(step >= 1, "Adam's step count starts at 1");
                let lr = lr as f32;
                let eps = epsilon as f32;
                // Keras: beta ** cast(iterations + 1, float32), both operands float32.
                let t = step as f32;
                let beta1_power = (beta1 as f32).powf(t);
                let beta2_power = (beta2 as f32).powf(t);
                let alpha = lr * (1.0 - beta2_power).sqrt() / (1.0 - beta1_power);
                let one_minus_beta1 = (1.0 - beta1) as f32;
                let one_minus_beta2 = (1.0 - beta2) as f32;
                let [m, v] = slots else { unreachable!() };
                for (((p, m), v), &g) in params
                    .iter_mut()
                    .zip(m.iter_mut())
                    .zip(v.iter_mut())
                    .zip(grads)
                {
                    *m += (g - *m) * one_minus_beta1;
                    *v += (g * g - *v) * one_minus_beta2;
                    *p -= (*m * alpha) / (v.sqrt() + eps);
                }
            }
            Optimizer::Ftrl {
                lr,
                lr_power,
                l1,
                l2,
                l2_shrinkage,
                beta,
                ..
            } => {
                let lr = lr as f32;
                // Keras: l2 + beta / (2.0 * lr), each Python float rounded as it meets lr.
                let l2_reg = l2 as f32 + beta as f32 / (2.0 * lr);
                let shrinkage = (2.0 * l2_shrinkage) as f32;
                let power = (-lr_power) as f32;
                let l1 = l1 as f32;
                let [acc, linear] = slots else { unreachable!() };
                for (((p, a), lin), &g) in params
                    .iter_mut()
                    .zip(acc.iter_mut())
                    .zip(linear.iter_mut())
                    .zip(grads)
                {
                    let grad_to_use = g + shrinkage * *p;
                    let new_acc = *a + g * g;
                    let new_acc_power = new_acc.powf(power);
                    *lin += grad_to_use - ((new_acc_power - a.powf(power)) / lr) * *p;
                    let quadratic = new_acc_power / lr + 2.0 * l2_reg;
                    let clipped = lin.clamp(-l1, l1);
                    *p = (clipped - *lin) / quadratic;
                    *a = new_acc;
                }
            }
        }
    }
}

/// Applies one optimizer step to the rows of `keys` in Redis.
///
/// `params` and every slot table hold float32 rows of the same dim; `grads` and `init_rows`
/// hold `keys.len()` rows of that dim, row-major. Rows missing in `params` start from their
/// `init_rows` row (the initializer values the forward pass used), and missing slot rows from
/// [`Optimizer::initial_slot_value`]. `step` is the 1-based update count (Keras'
/// `iterations + 1`), shared by all rows.
///
/// `slots` are the slot tables in [`Optimizer::slot_names`] order (none for SGD, Adam's `m`
/// then `v`): ordinary tables, opened like `params` with [`crate::TableBuilder`]. Name them
/// with [`crate::naming::slot_table_name`] to share them with TFRA or the Python package;
/// any names work otherwise, as long as each slot has its own table.
///
/// ```no_run
/// use tfra_redis::naming::slot_table_name;
/// use tfra_redis::optim::{Optimizer, apply_gradients};
/// use tfra_redis::{RedisConfig, Table, TableBuilder};
///
/// let config = RedisConfig::standalone("127.0.0.1", 6379).with_model_tag("ctr_v1");
/// let open = |name: &str| TableBuilder::new(&config).name(name).dim(2).open(); // float32
/// let params = open("user_emb")?;
/// let adam = Optimizer::from_keras_name("adam", &[("learning_rate", 0.01)])?;
/// let slots = adam
///     .slot_names()
///     .iter()
///     .map(|slot| open(&slot_table_name("user_emb", "shadow", slot)))
///     .collect::<tfra_redis::Result<Vec<Table>>>()?;
/// let slots: Vec<&Table> = slots.iter().collect();
/// // Ids 7 and 9 with one gradient row each; a new id starts from its `init_rows` row.
/// let grads = [0.5f32, -0.5, 1.0, 0.0];
/// apply_gradients(&adam, &params, &slots, &[7, 9], &grads, &[0.0; 4], 1)?;
/// # Ok::<(), tfra_redis::Error>(())
/// ```
///
/// Keys must be unique: the gradients of an id looked up several times in a batch must be summed
/// by the caller first (an `IndexedSlices` gradient usually repeats ids). A repeated key is an
/// error rather than two updates, because the second read would not see the first write.
///
/// Each window of keys is read, updated and written back; it is not a transaction, so two
/// workers updating the same id at once may lose one update (as with TFRA's Redis backend).
///
/// # Errors
///
/// [`Error::InvalidArgument`] before anything is sent: slot tables that do not fit the optimizer or
/// `params` ([`ArgumentKind::TableSet`](crate::ArgumentKind::TableSet), [`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype), [`ArgumentKind::Dim`](crate::ArgumentKind::Dim)), gradient
/// or initial-row buffers of the wrong length ([`ArgumentKind::Shape`](crate::ArgumentKind::Shape)), an id given twice
/// ([`ArgumentKind::DuplicateKey`](crate::ArgumentKind::DuplicateKey)), step 0 for Adam ([`ArgumentKind::Optimizer`](crate::ArgumentKind::Optimizer)).
///
/// The Redis errors of [`Table::find`] and [`Table::insert`]; a failed write may leave some tables
/// of the step updated and others not.
pub fn apply_gradients<'k>(
    opt: &Optimizer,
    params: &Table,
    slots: &[&Table],
    keys: impl Into<Keys<'k>>,
    grads: &[f32],
    init_rows: &[f32],
    step: u64,
) -> Result<()> {
    let keys = keys.into();
    opt.validate()?;
    if matches!(opt, Optimizer::Adam { .. }) && step == 0 {
        return Err(Error::invalid(
            crate::error::ArgumentKind::Optimizer,
            "step is the 1-based update count (Keras' iterations + 1); Adam cannot take step 0",
        ));
    }
    let names = opt.slot_names();
    if slots.len() != names.len() {
        return Err(Error::invalid(
            crate::error::ArgumentKind::TableSet,
            format!(
                "{} needs {} slot tables ({}), got {}",
                opt.name(),
                names.len(),
                names.join(", "),
                slots.len()
            ),
        ));
    }
    let dim = params.spec().dim.get();
    for table in std::iter::once(params).chain(slots.iter().copied()) {
        let spec = table.spec();
        if spec.value_dtype != ValueDtype::F32 {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Dtype,
                format!(
                    "optimizers update float32 tables only, but table {:?} holds {}",
                    spec.name,
                    spec.value_dtype.numpy_name()
                ),
            ));
        }
        if spec.dim.get() != dim {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Dim,
                format!(
                    "slot table {:?} has dim {}, but its params table {:?} has dim {dim}",
                    spec.name,
                    spec.dim.get(),
                    params.spec().name
                ),
            ));
        }
    }
    let n = keys.len();
    for (what, len) in [("grads", grads.len()), ("init_rows", init_rows.len())] {
        if len != n * dim {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "{what} has {len} float32 values, expected {n} rows x {dim} = {}",
                    n * dim
                ),
            ));
        }
    }
    let key_dtype = params.spec().key_dtype;
    let mut seen = HashSet::with_capacity(n);
    if let Some(i) = (0..n).find(|&i| !seen.insert(keys.field(i, key_dtype))) {
        return Err(Error::invalid(
            crate::error::ArgumentKind::DuplicateKey,
            format!(
                "key {} appears more than once in one optimizer step; sum the gradients of \
                 repeated ids first (e.g. tf.math.unsorted_segment_sum or \
                 tfra_redis.optimizers.sum_duplicates)",
                keys.label(i)
            ),
        ));
    }
    let slot_defaults: Vec<Vec<u8>> = names
        .iter()
        .map(|s| to_bytes(&vec![opt.initial_slot_value(s); dim]))
        .collect();

    let tables: Vec<&Table> = std::iter::once(params)
        .chain(slots.iter().copied())
        .collect();
    for start in (0..n).step_by(WINDOW_KEYS) {
        let end = (start + WINDOW_KEYS).min(n);
        let keys = keys.slice(start, end);
        let grads = &grads[start * dim..end * dim];
        let init = le_bytes(&init_rows[start * dim..end * dim]);

        // Rows are read straight into f32 buffers, updated there and written from there: the
        // byte copies in between (and the fresh memory for each) were most of a large step.
        let mut rows: Vec<Vec<f32>> = tables
            .iter()
            .map(|_| vec![0f32; keys.len() * dim])
            .collect();
        let mut lookups: Vec<Lookup<'_>> = tables
            .iter()
            .zip(rows.iter_mut())
            .enumerate()
            .map(|(i, (&table, out))| Lookup {
                table,
                keys,
                defaults: if i == 0 {
                    Defaults::PerKey(&init)
                } else {
                    Defaults::Row(&slot_defaults[i - 1])
                },
                out: bytemuck::cast_slice_mut(out.as_mut_slice()),
            })
            .collect();
        Table::find_together(&mut lookups)?;
        rows.iter_mut().for_each(|r| from_le_in_place(r));

        let (param_rows, slot_rows) = rows.split_at_mut(1);
        let mut slot_refs: Vec<&mut [f32]> = slot_rows.iter_mut().map(Vec::as_mut_slice).collect();
        opt.update_rows(step, &mut param_rows[0], &mut slot_refs, grads);

        // The tables are written in one pipeline: a failure part-way may leave some of a
        // window's rows updated in one table and not in another, as a crash between two
        // sequential writes would, so ordering them would buy nothing.
        rows.iter_mut().for_each(|r| to_le_in_place(r));
        let writes: Vec<(&Table, Keys<'_>, &[u8])> = tables
            .iter()
            .zip(&rows)
            .map(|(&t, r)| (t, keys, bytemuck::cast_slice(r.as_slice())))
            .collect();
        Table::insert_together(&writes)?;
    }
    Ok(())
}

/// Row bytes as stored: float32 little-endian, whatever the host's byte order. Written into
/// a buffer of the final size: collecting a `flat_map` pushed byte by byte.
fn to_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * 4];
    for (dst, v) in out.chunks_exact_mut(4).zip(values) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// The stored bytes of `values`: a view on little-endian hosts, a converted copy otherwise.
fn le_bytes(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        std::borrow::Cow::Owned(to_bytes(values))
    }
}

/// Rows read as raw stored bytes into f32s, to host order (nothing to do on little-endian).
fn from_le_in_place(values: &mut [f32]) {
    for v in values {
        *v = f32::from_bits(u32::from_le(v.to_bits()));
    }
}

/// Host-order f32s to stored byte order, in place.
fn to_le_in_place(values: &mut [f32]) {
    for v in values {
        *v = f32::from_bits(v.to_bits().to_le());
    }
}

#[cfg(test)]
fn from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adam() -> Optimizer {
        Optimizer::from_keras_name("adam", &[]).unwrap()
    }

    #[test]
    fn sgd_subtracts_the_scaled_gradient() {
        let opt = Optimizer::Sgd { lr: 0.5 };
        let mut p = [1.0f32, -2.0];
        opt.update_rows(1, &mut p, &mut [], &[0.25, -1.0]);
        assert_eq!(p, [0.875, -1.5]);
    }

    #[test]
    fn adagrad_puts_epsilon_under_the_square_root() {
        let opt = Optimizer::Adagrad {
            lr: 0.1,
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        };
        let mut p = [1.0f32];
        let mut acc = [opt.initial_slot_value("accumulator")];
        opt.update_rows(1, &mut p, &mut [&mut acc], &[2.0]);
        let acc_want = 0.1f32 + 4.0;
        assert_eq!(acc, [acc_want]);
        assert_eq!(p, [1.0 - (0.1f32 * 2.0) / (acc_want + 1e-7f32).sqrt()]);
    }

    #[test]
    fn adam_matches_the_closed_form_of_its_first_step() {
        // After one step from zero slots: m = (1-b1) g, v = (1-b2) g², and the update is
        // lr·sqrt(1-b2)/(1-b1) · m / (sqrt(v) + eps) ≈ lr·sign(g).
        let opt = adam();
        let mut p = [0.5f32, 0.5, 0.5];
        let (mut m, mut v) = ([0.0f32; 3], [0.0f32; 3]);
        opt.update_rows(1, &mut p, &mut [&mut m, &mut v], &[3.0, -0.01, 0.0]);
        assert!((m[0] - 0.3).abs() < 1e-6 && (v[0] - 0.009).abs() < 1e-8);
        assert!((p[0] - (0.5 - 0.001)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - (0.5 + 0.001)).abs() < 1e-5, "{p:?}");
        assert_eq!(p[2], 0.5);
    }

    #[test]
    fn adam_bias_correction_uses_the_step() {
        let opt = adam();
        let run = |step| {
            let mut p = [0.0f32];
            let (mut m, mut v) = ([0.1f32], [0.01f32]);
            opt.update_rows(step, &mut p, &mut [&mut m, &mut v], &[0.1]);
            p[0]
        };
        assert_ne!(run(1), run(100));
    }

    #[test]
    #[should_panic(expected = "starts at 1")]
    fn adam_refuses_step_zero() {
        let mut p = [0.0f32];
        let (mut m, mut v) = ([0.0f32], [0.0f32]);
        adam().update_rows(0, &mut p, &mut [&mut m, &mut v], &[1.0]);
    }

    #[test]
    fn adam_uses_one_minus_beta_rounded_from_double() {
        // 1 - 0.9 in f64, rounded once, is 0.1f32; 1.0f32 - 0.9f32 is a different float.
        assert_ne!((1.0 - 0.9f64) as f32, 1.0f32 - 0.9f32);
        let opt = adam();
        let mut p = [0.0f32];
        let (mut m, mut v) = ([0.0f32], [0.0f32]);
        opt.update_rows(1, &mut p, &mut [&mut m, &mut v], &[1.0]);
        assert_eq!(m[0], 0.1f32);
    }

    #[test]
    fn ftrl_with_l1_keeps_small_weights_at_zero() {
        let opt = Optimizer::from_keras_name(
            "Ftrl",
            &[("learning_rate", 0.1), ("l1_regularization_strength", 1.0)],
        )
        .unwrap();
        let mut p = [0.0f32, 0.0];
        let mut acc = [opt.initial_slot_value("accumulator"); 2];
        let mut lin = [opt.initial_slot_value("linear"); 2];
        opt.update_rows(1, &mut p, &mut [&mut acc, &mut lin], &[0.5, 3.0]);
        assert_eq!(p[0], 0.0, "|linear| < l1 clips the weight to zero");
        assert!(
            p[1] < 0.0,
            "a large positive gradient pushes the weight down: {p:?}"
        );
        assert_eq!(acc, [0.1 + 0.25, 0.1 + 9.0]);
        assert_eq!(lin[0], 0.5);
    }

    #[test]
    fn ftrl_first_step_matches_keras_formula() {
        // From p = 0: linear = g, p = -(linear - clip(linear)) / (sqrt(acc+g²)/lr + 2·l2).
        let opt = Optimizer::Ftrl {
            lr: 0.1,
            lr_power: -0.5,
            l1: 0.0,
            l2: 0.5,
            l2_shrinkage: 0.0,
            initial_accumulator: 0.1,
            beta: 0.0,
        };
        let mut p = [0.0f32];
        let (mut acc, mut lin) = ([0.1f32], [0.0f32]);
        opt.update_rows(1, &mut p, &mut [&mut acc, &mut lin], &[1.0]);
        let want = -1.0 / (1.1f32.sqrt() / 0.1 + 1.0);
        assert!((p[0] - want).abs() < 1e-6, "{} vs {want}", p[0]);
    }

    #[test]
    fn slots_and_their_initial_values() {
        let sgd = Optimizer::from_keras_name("SGD", &[]).unwrap();
        assert!(sgd.slot_names().is_empty());
        let adagrad =
            Optimizer::from_keras_name("adagrad", &[("initial_accumulator_value", 0.25)]).unwrap();
        assert_eq!(adagrad.slot_names(), ["accumulator"]);
        assert_eq!(adagrad.initial_slot_value("accumulator"), 0.25);
        assert_eq!(adam().slot_names(), ["m", "v"]);
        assert_eq!(adam().initial_slot_value("v"), 0.0);
        let ftrl = Optimizer::from_keras_name("ftrl", &[]).unwrap();
        assert_eq!(ftrl.slot_names(), ["accumulator", "linear"]);
        assert_eq!(ftrl.initial_slot_value("accumulator"), 0.1);
        assert_eq!(ftrl.initial_slot_value("linear"), 0.0);
    }

    #[test]
    fn keras_defaults_fill_missing_hyper_parameters() {
        assert_eq!(
            adam(),
            Optimizer::Adam {
                lr: 0.001,
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-7
            }
        );
        assert_eq!(
            Optimizer::from_keras_name("sgd", &[("learning_rate", 0.5)]).unwrap(),
            Optimizer::Sgd { lr: 0.5 }
        );
    }

    #[test]
    fn unknown_names_and_bad_values_are_named_in_the_error() {
        let err = Optimizer::from_keras_name("rmsprop", &[]).unwrap_err();
        assert!(err.to_string().contains("\"rmsprop\""), "{err}");
        let err = Optimizer::from_keras_name("adam", &[("momentum", 0.9)]).unwrap_err();
        assert!(err.to_string().contains("\"momentum\""), "{err}");
        let err = Optimizer::from_keras_name("adam", &[("beta_1", 1.0)]).unwrap_err();
        assert!(err.to_string().contains("beta_1"), "{err}");
        let err = Optimizer::from_keras_name("ftrl", &[("learning_rate_power", 0.5)]).unwrap_err();
        assert!(err.to_string().contains("learning_rate_power"), "{err}");
        let err = Optimizer::from_keras_name("sgd", &[("learning_rate", -1.0)]).unwrap_err();
        assert!(err.to_string().contains("learning_rate"), "{err}");
    }

    #[test]
    fn row_bytes_are_little_endian() {
        let bytes = to_bytes(&[1.0, -2.5]);
        assert_eq!(&bytes[..4], &[0x00, 0x00, 0x80, 0x3f]);
        assert_eq!(from_bytes(&bytes), [1.0, -2.5]);
    }
}
