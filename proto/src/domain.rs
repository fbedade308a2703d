//! Domain types of the control plane: what the coordinator and the worker reason about.
//!
//! They are only built from wire messages through `TryFrom` (see [`crate::convert`]), so a value of these types has
//! passed validation: ids are non-empty and well-formed, ports fit in 16 bits, an [`Assignment`]'s batch arithmetic
//! adds up and its rank is below its world size, a [`CheckpointRef`]'s digest is 64 hex digits.

use std::fmt;

/// Version of the control-plane protocol this build speaks. Carried in every message; peers must match exactly.
///
/// Version 2: progress reports carry typed values ([`StepProgress`], [`EvalScore`]) instead of a string-keyed map.
/// Version 3: heartbeat answers carry the Raft term and the generation ([`HeartbeatReply`]).
pub const PROTOCOL_VERSION: u32 = 3;

/// Name of a worker, unique within a job (a pod name, `host-3`, ...).
///
/// Guarantees: 1 to 128 characters from `[A-Za-z0-9._:-]`, so it is safe in logs, metric labels and paths.
/// Serialized as the plain string; deserializing checks it as [`WorkerId::new`] does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkerId(String);

impl WorkerId {
    /// Checks `s` and wraps it; the error says what is wrong with it.
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.len() > 128 {
            return Err(format!("is {} characters long (at most 128)", s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(format!(
                "{s:?} contains {c:?} (allowed: letters, digits, '.', '_', ':', '-')"
            ));
        }
        Ok(Self(s))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WorkerId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::new(s).map_err(|e| format!("worker id {e}"))
    }
}

impl From<WorkerId> for String {
    fn from(id: WorkerId) -> String {
        id.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A worker asking to take part in the job.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinRequest {
    pub worker_id: WorkerId,
    /// Host or IP the other ranks reach this worker on; never empty.
    pub advertise_host: String,
    /// Port to host the c10d store on if this worker becomes rank 0; `None` lets the coordinator choose.
    pub store_port: Option<u16>,
    /// Device the worker trains on (`cuda:0`, `cpu`, ...); informational.
    pub device: String,
}

/// The coordinator's answer to a join: the worker is registered and must heartbeat at this pace.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinAck {
    pub worker_id: WorkerId,
    pub heartbeat_interval: std::time::Duration,
    pub heartbeat_timeout: std::time::Duration,
}

/// Liveness report of a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub worker_id: WorkerId,
    /// Generation the worker is training in, `None` when idle.
    pub generation: Option<u64>,
    /// Last optimizer step it finished.
    pub step: u64,
}

/// A committed checkpoint: its manifest has been written and (on the coordinator) verified.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointRef {
    pub step: u64,
    /// Local path or object-store URL of the checkpoint directory; never empty.
    pub location: String,
    /// Lower-case hex sha256 of the manifest, 64 digits.
    pub manifest_sha256: String,
}

/// A published data plan (`splade_common::data::DataPlan`): which records of which files make up each global
/// batch. Guarantees: `location` is not empty, `sha256` is 64 lower-case hex digits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataPlanRef {
    /// Local path or object-store URL of the artifact.
    pub location: String,
    /// sha256 of the artifact's bytes.
    pub sha256: String,
}

/// What one worker trains in one generation.
///
/// Guarantees: `rank < world_size`, `generation >= 1`, `micro_batches_per_rank >= 1`,
/// `global_batch_size == world_size * per_device_batch_size * micro_batches_per_rank`,
/// `members.len() == world_size`, `start_step <= total_steps` and, when `restore` is set, `start_step == restore.step`.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub generation: u64,
    pub rank: u32,
    pub world_size: u32,
    /// The training config the coordinator validated, as JSON (`Config::to_json`); a JSON object.
    pub config_json: String,
    /// Where rank 0 hosts the c10d TCPStore of this generation.
    pub store_host: String,
    pub store_port: u16,
    /// Checkpoint to restore before the first step; `None` for a fresh start.
    pub restore: Option<CheckpointRef>,
    /// Step already done; training continues with step `start_step + 1`.
    pub start_step: u64,
    pub total_steps: u64,
    pub global_batch_size: u32,
    pub per_device_batch_size: u32,
    pub micro_batches_per_rank: u32,
    /// Worker ids in rank order.
    pub members: Vec<WorkerId>,
    /// The job's data plan; `None` when the coordinator published none (the worker plans itself).
    pub data_plan: Option<DataPlanRef>,
}

/// What a worker must do now; the answer to every heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub enum Directive {
    /// Keep training the generation the worker reported.
    KeepGoing,
    /// Not training now: tear down any process group and keep heartbeating.
    Wait { reason: String },
    /// Train this assignment.
    Assign(Box<Assignment>),
    /// Training finished at `final_step`; exit 0.
    Complete { final_step: u64 },
    /// The job failed; exit non-zero with this reason.
    Failed { reason: String },
    /// The coordinator does not know this worker; join again.
    Rejoin { reason: String },
}

/// The coordinator's answer to a heartbeat: the directive, and the term and generation it was given in.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatReply {
    /// Raft term of the coordinator's view (0 for a coordinator without Raft). Workers ignore directives of a
    /// term below the highest they have seen.
    pub term: u64,
    /// The coordinator's latest generation (0 before the first formed).
    pub generation: u64,
    pub directive: Directive,
}

/// Training progress of one rank at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressReport {
    pub worker_id: WorkerId,
    pub generation: u64,
    pub step: u64,
    /// The step's training values (rank 0, every step); `None` in reports that carry only `evals` or
    /// `checkpoint_seconds`.
    pub train: Option<StepProgress>,
    /// Retrieval scores of an evaluated model; task names are non-empty and unique within a report.
    pub evals: Vec<EvalScore>,
    /// Seconds rank 0 took to write the checkpoint of `step` it is about to commit (finite, ≥ 0).
    pub checkpoint_seconds: Option<f64>,
    /// Early stopping ended the run at `step`, before the plan's last step: the job is complete.
    pub stopped_early: bool,
}

impl ProgressReport {
    /// A report of `step` with nothing in it yet.
    pub fn new(worker_id: WorkerId, generation: u64, step: u64) -> Self {
        Self { worker_id, generation, step, train: None, evals: Vec::new(), checkpoint_seconds: None, stopped_early: false }
    }
}

/// One optimizer step's loss, in parts: `total = ranking + flops_query + flops_document` (the FLOPS terms weighted).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts {
    pub total: f64,
    pub ranking: f64,
    pub flops_query: f64,
    pub flops_document: f64,
}

/// One optimizer step's values as rank 0 measured them over the global batch.
///
/// Guarantees (checked at the edge): `step_seconds`, `samples_per_second`, `epoch`, `learning_rate` and the active
/// dims are finite and ≥ 0; `allreduce_seconds` and `loss_scale`, when present, too. Loss and FLOPS values may be
/// NaN (a diverged step is reported, not refused).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepProgress {
    pub loss: LossParts,
    /// Unweighted FLOPS of the query / document representations.
    pub flops_query: f64,
    pub flops_document: f64,
    /// Mean non-zero dimensions per query / document vector.
    pub active_dims_query: f64,
    pub active_dims_document: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    /// Fractional epoch after this step.
    pub epoch: f64,
    /// Rows and tokens of the global batch.
    pub samples: u64,
    pub tokens: u64,
    pub step_seconds: f64,
    pub samples_per_second: f64,
    /// Seconds in the gradient all-reduce; `None` without one.
    pub allreduce_seconds: Option<f64>,
    /// The fp16 loss scale; `None` without `training.fp16`.
    pub loss_scale: Option<f64>,
}

/// One task's retrieval scores of an evaluated model.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalScore {
    /// The task's name in `evaluation.tasks` (non-empty).
    pub task: String,
    /// Global step of the evaluated model.
    pub step: u64,
    pub ndcg_at_10: f64,
    pub mrr_at_10: Option<f64>,
}

/// A worker announcing a checkpoint whose manifest it has written.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointCommit {
    pub worker_id: WorkerId,
    pub generation: u64,
    pub checkpoint: CheckpointRef,
}

/// A worker leaving the job on purpose.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaveRequest {
    pub worker_id: WorkerId,
    pub reason: String,
}

/// Answer to a progress report, commit or leave: `accepted == false` means valid but not applied, see `reason`.
#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    pub accepted: bool,
    pub reason: String,
}

impl Ack {
    /// An accepted report.
    pub fn accepted() -> Self {
        Self {
            accepted: true,
            reason: String::new(),
        }
    }
    /// A valid report that was not applied, and why.
    pub fn ignored(reason: impl Into<String>) -> Self {
        Self {
            accepted: false,
            reason: reason.into(),
        }
    }
}
