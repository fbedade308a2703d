//! SPLADE training: the sentence-transformers `SparseEncoderTrainer` recipe (SpladeLoss, AdamW, linear
//! warm-up/decay, clipping) in libtorch, with checkpoints committed through `splade_common::store` and exact
//! resume. One loop serves `splade train` and the cluster worker (`crate::node`):
//!
//! | where | what |
//! |---|---|
//! | [`trainer`] | [`Trainer`]: model, optimizer, objective, plan, resolved settings; optimizer end of a step; checkpoints |
//! | [`step`] | the step: rows from a [`BatchSource`], forward + backward, [`GradSync`], optimizer |
//! | [`distributed`] | the collective forward/backward (gathered embeddings, SUM all-reduce) |
//! | [`schedule`] | when to log, evaluate, save; the run loop and its end (best model, `final/`) |
//! | [`run`] | `splade train`: loaded rows, no sync |
//! | [`monitor`] | Prometheus, `metrics.jsonl`, TensorBoard, MLflow, evaluation during training |
//! | [`card`] | the model card (`README.md`) of saved folders |
//! | [`dev`] | the dev rows at each evaluation: `eval_loss`, sparsity, decoded samples |
//! | [`fetch`] | a cluster rank's slices of the published data plan |

pub mod card;
pub mod csr;
pub mod dev;
pub mod distributed;
pub mod fetch;
pub mod inference_free;
pub mod loss;
pub mod monitor;
pub mod optim;
pub mod run;
pub mod scaler;
pub mod schedule;
pub mod state;
pub mod step;
pub mod trainer;
pub mod windows;

pub use run::run_training;
pub use schedule::{Control, Hooks, Lead, RunEnd, RunOutcome, Schedule};
pub use step::{BatchSource, GradSync, StepDone};
pub(crate) use step::fill_loss_stats;
pub use trainer::{build_plan, load_options, load_train_datasets, plan_train_datasets, Applied, DatasetFacts, TrainPlan, Trainer};

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Why training could not start or continue. Each message names the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] splade_common::config::ConfigError),
    #[error(transparent)]
    Data(#[from] splade_common::data::DataError),
    #[error(transparent)]
    Store(#[from] splade_common::store::StoreError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Teacher scores (`label`) the chosen loss cannot use: missing or of the wrong width.
    #[error("{0}")]
    Labels(String),
    /// A checkpoint that does not fit this model or optimizer (a missing tensor, another shape or dtype).
    #[error("checkpoint `{checkpoint}`: {problem}; resume from a checkpoint of this model and config, or start a new output_dir")]
    Checkpoint {
        /// The checkpoint's name or URL.
        checkpoint: String,
        /// What does not fit.
        problem: String,
    },
    /// Writing a checkpoint failed part-way; nothing was committed.
    #[error(
        "checkpoint `{checkpoint}` could not be written ({source}); nothing was committed, so the previous checkpoint is \
         still the one a resume picks: free space or fix the storage, then rerun with training.resume_from_checkpoint: true"
    )]
    CheckpointWrite {
        checkpoint: String,
        #[source]
        source: Box<TrainError>,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A JSON state file that does not parse.
    #[error("{path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// A libtorch operation failed.
    #[error("{context}: {source}")]
    Tensor {
        context: String,
        #[source]
        source: tch::TchError,
    },
    /// A collective (c10d) operation failed.
    #[error("{context}: {source}")]
    Dist {
        context: String,
        #[source]
        source: crate::dist::DistError,
    },
    /// A setting or input that is wrong in itself; the message names it and the fix.
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_string(), source }
    }
}

pub(crate) fn other(msg: impl Into<String>) -> TrainError {
    TrainError::Other(msg.into())
}

/// Per-run switches that are not part of the YAML.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Write the batch plan (dataset and rows per step) as JSONL here and continue.
    pub dump_batches: Option<PathBuf>,
    /// Set by SIGTERM/Ctrl-C: finish the current step, checkpoint, return.
    pub stop: Option<Arc<AtomicBool>>,
    /// Device override (`--device`), else `hardware.device`.
    pub device: Option<String>,
    /// Serve Prometheus metrics here while training.
    pub metrics_listen: Option<String>,
}

/// Numbers of one optimizer step, for logs and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepStats {
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub ranking_loss: f64,
    pub flops_query: f64,
    pub flops_document: f64,
    pub query_regularizer_weight: f64,
    pub document_regularizer_weight: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub query_active_dims: f64,
    pub document_active_dims: f64,
    pub samples: usize,
    pub tokens: usize,
    pub step_seconds: f64,
    /// With `document_windows`: mean (windows encoded, windows available) per training document.
    pub windows_per_doc: Option<(f64, f64)>,
    /// With `fp16`: the loss scale this step's backward used (logged as `train/loss_scale`).
    pub loss_scale: Option<f64>,
    /// With `fp16`: the gradients held an inf/NaN, so the optimizer step was skipped (weights and
    /// moments untouched) and the loss scale backed off.
    pub optimizer_step_skipped: bool,
    /// CSR: CSRLoss's reconstruction parts and the dead-latent counters after the step.
    pub csr: Option<CsrStepStats>,
}

/// CSRLoss's parts of one step (each as sentence-transformers logs it), and the counters.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CsrStepStats {
    /// `reconstruction_loss_k`.
    pub reconstruction_k: f64,
    /// `reconstruction_loss_4k` (already / 8).
    pub reconstruction_4k: f64,
    /// `reconstruction_loss_aux` (already × β).
    pub reconstruction_aux: f64,
    /// Latents with `stats_last_nonzero > dead_threshold`.
    pub dead_latents: i64,
    /// Σ `stats_last_nonzero`.
    pub stats_sum: i64,
}

/// How a run ended.
#[derive(Debug)]
pub struct TrainOutcome {
    pub final_step: u64,
    /// Where the final model was written (`output_dir/final`), unless the run was interrupted.
    pub final_model: Option<String>,
    pub interrupted: bool,
    pub last_checkpoint: Option<String>,
}

/// Installs SIGTERM/SIGINT handlers: the first sets the returned flag (the loop checks it between steps and
/// stops after the current one), a second one exits the process at once (status 1).
pub fn stop_on_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Registered first, so it sees the flag as it was before this signal set it.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flag));
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    flag
}
