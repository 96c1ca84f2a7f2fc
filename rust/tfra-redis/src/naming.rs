//! TFRA's table names, so a Rust program finds the tables TFRA (or this project's Python
//! package) wrote: an embedding's shard tables and its optimizer's slot tables.
//!
//! A table's Redis keys are `<model_tag>:<name before "_mht_">{<hash tag>}`, so the shard suffix
//! [`shard_table_name`] adds does not change them: every shard of a TFRA variable shares its
//! keys, and [`slot_table_name`] without a suffix opens the same data as TFRA's
//! `..._mht_1of1` slot variable.

/// The slot "name" of the one table holding every slot of an embedding side by side, when the
/// config sets `redis_fused_slots` (this project's layout; TFRA has one table per slot).
pub const FUSED_SLOTS: &str = "slots";

/// The table name of an optimizer slot: TFRA's slot variable name `<params>/<wrapper>/<slot>`
/// with every `/` turned into `_`, as TFRA does for table names.
///
/// `params` is the embedding variable's name, `wrapper` the name of the trainable wrapper
/// (TFRA's `TrainableWrapper`, or the Keras layer's shadow variable), `slot` TFRA's slot name:
/// [`crate::optim::Optimizer::slot_names`] (Adam's `m` and `v`, Adagrad's `accumulator`), or
/// [`FUSED_SLOTS`]. The Python package (`tfra_redis.dynamic_embedding`) names its slot tables
/// the same way.
///
/// ```
/// use tfra_redis::naming::slot_table_name;
///
/// assert_eq!(
///     slot_table_name("user-parameter", "DynamicEmbedding_user-shadow", "m"),
///     "user-parameter_DynamicEmbedding_user-shadow_m"
/// );
/// assert_eq!(slot_table_name("tower/emb", "TrainableWrapper", "v"), "tower_emb_TrainableWrapper_v");
/// ```
pub fn slot_table_name(params: &str, wrapper: &str, slot: &str) -> String {
    format!("{params}/{wrapper}/{slot}").replace('/', "_")
}

/// TFRA's name of shard `index` (0-based) of `shards` of a variable: `<name>_mht_<index+1>of<shards>`
/// with `/` turned into `_`. All shards share the Redis keys of `name` (see the module docs).
///
/// ```
/// assert_eq!(tfra_redis::naming::shard_table_name("tower/emb", 0, 2), "tower_emb_mht_1of2");
/// ```
pub fn shard_table_name(name: &str, index: usize, shards: usize) -> String {
    format!("{}_mht_{}of{shards}", name.replace('/', "_"), index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::embedding_name;

    #[test]
    fn shards_and_slots_share_the_redis_name() {
        let shard = shard_table_name(&slot_table_name("p", "w", "m"), 0, 1);
        assert_eq!(shard, "p_w_m_mht_1of1");
        assert_eq!(embedding_name(&shard), "p_w_m");
        assert_eq!(slot_table_name("p", "w", FUSED_SLOTS), "p_w_slots");
    }
}
