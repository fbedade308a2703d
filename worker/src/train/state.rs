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
    /// The commit each Hugging Face Hub dataset (by config name) was read from; a resume reads the same
    /// commits ([`super::trainer::pin_hub_datasets_for_resume`]). Empty for local and object-store data.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub hub_datasets: std::collections::BTreeMap<String, splade_common::data::HubPin>,
    /// Evaluations in a row without an improvement beyond `early_stopping_threshold` (transformers'
    /// `EarlyStoppingCallback.early_stopping_patience_counter`), so a resumed run keeps counting.
    #[serde(default)]
    pub early_stopping_patience_counter: usize,
}
