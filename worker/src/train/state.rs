//! What a checkpoint holds besides the model: the trainer's position and bookkeeping.

use serde::{Deserialize, Serialize};

/// File names inside a checkpoint folder.
pub const TRAINER_STATE: &str = "trainer_state.json";
pub const OPTIMIZER_STATE: &str = "optimizer.safetensors";
/// With `training.fp16`: the loss scaler's state (`scaler::ScalerState`, torch's `GradScaler.state_dict()` keys).
pub const SCALER_STATE: &str = "scaler.json";

/// The trainer's state after `global_step` optimizer steps. Together with the model weights,
/// the optimizer moments and the config (which rebuilds the same batch plan from its seed), it
/// determines the rest of the run exactly: dropout is re-seeded from (seed, step) every step, so
/// no RNG stream needs saving.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TrainerState {
    /// Optimizer steps completed; the next step to run is this index.
    pub global_step: u64,
    /// Epoch of the last completed step (fractional progress is implied by the plan).
    pub epoch: u64,
    /// Steps the run was planned for.
    pub total_steps: u64,
    /// Best value of `metric_for_best_model` seen so far and the checkpoint that had it.
    pub best_metric: Option<f64>,
    pub best_checkpoint: Option<String>,
    /// Samples consumed so far (global batch × steps).
    pub samples_seen: u64,
    /// Fingerprint of the first `global_step` batches of the plan: resume refuses a checkpoint
    /// whose consumed batches differ from what this run would have consumed.
    pub plan_fingerprint: String,
    /// Steps whose optimizer update the fp16 loss scaler skipped (inf/NaN gradients). The LR
    /// schedule stands at `global_step - skipped_steps`. Absent (0) in checkpoints written before.
    #[serde(default)]
    pub skipped_steps: u64,
    /// The commits of the Hugging Face Hub datasets each dataset block (by config name) read: one for a Hub
    /// source, one per dataset for a seed loader block; a resume reads the same commits
    /// ([`super::trainer::pin_hub_datasets_for_resume`]). Blocks of local and object-store data are absent.
    /// Checkpoints written before loader blocks were recorded hold one pin per block, not a list: read as well.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty", deserialize_with = "one_or_more_pins")]
    pub hub_datasets: std::collections::BTreeMap<String, Vec<splade_common::data::HubPin>>,
    /// Evaluations in a row without an improvement beyond `early_stopping_threshold` (transformers'
    /// `EarlyStoppingCallback.early_stopping_patience_counter`), so a resumed run keeps counting.
    #[serde(default)]
    pub early_stopping_patience_counter: usize,
}

/// `hub_datasets` values: a list of pins, or (older checkpoints) a single pin.
fn one_or_more_pins<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, Vec<splade_common::data::HubPin>>, D::Error> {
    use splade_common::data::HubPin;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Pins {
        Many(Vec<HubPin>),
        One(HubPin),
    }
    let map = std::collections::BTreeMap::<String, Pins>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, match v { Pins::Many(v) => v, Pins::One(p) => vec![p] }))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::TrainerState;

    #[test]
    fn hub_datasets_read_a_list_of_pins_and_the_older_single_pin() {
        let pin = r#"{"repo_id": "o/n", "revision": "main", "commit": "abc"}"#;
        let older: TrainerState = serde_json::from_str(&format!(r#"{{"global_step": 1, "epoch": 0, "total_steps": 2, "best_metric": null, "best_checkpoint": null, "samples_seen": 4, "plan_fingerprint": "f", "hub_datasets": {{"d": {pin}}}}}"#)).unwrap();
        let list: TrainerState = serde_json::from_str(&format!(r#"{{"global_step": 1, "epoch": 0, "total_steps": 2, "best_metric": null, "best_checkpoint": null, "samples_seen": 4, "plan_fingerprint": "f", "hub_datasets": {{"d": [{pin}, {pin}]}}}}"#)).unwrap();
        assert_eq!(older.hub_datasets["d"].len(), 1);
        assert_eq!(older.hub_datasets["d"][0].commit, "abc");
        assert_eq!(list.hub_datasets["d"].len(), 2);
        // Written as a list, and read back the same.
        let again: TrainerState = serde_json::from_str(&serde_json::to_string(&older).unwrap()).unwrap();
        assert_eq!(again.hub_datasets, older.hub_datasets);
    }
}
