//! A point-in-time view of the job for metrics and operators (Prometheus export reads this).

use std::collections::BTreeMap;
use std::time::Duration;

use splade_proto::domain::{CheckpointRef, EvalScore, ProgressReport, StepProgress, WorkerId};

/// Which phase the job is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseKind {
    Rendezvous,
    Running,
    Completed,
    Failed,
}

/// One registered worker.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerStatus {
    pub id: WorkerId,
    pub device: String,
    /// Rank in the running generation; `None` while waiting, on standby or between generations.
    pub rank: Option<u32>,
    /// Last step it reported (heartbeat or progress).
    pub step: u64,
    /// Time since its last heartbeat when the snapshot was taken.
    pub since_heartbeat: Duration,
}

/// The job at one instant. Refreshed by the coordinator's loop after every event and timer tick.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSnapshot {
    pub phase: PhaseKind,
    /// Why the job is in a rendezvous or has failed.
    pub reason: Option<String>,
    /// Latest generation number (0 before the first forms).
    pub generation: u64,
    /// World size of the running generation; 0 when none runs.
    pub world_size: u32,
    /// Registered workers that have not missed their heartbeat timeout.
    pub workers_alive: usize,
    pub workers: Vec<WorkerStatus>,
    /// Re-formations after failures so far.
    pub restarts: u32,
    pub max_restarts: u32,
    /// Highest step reported in the running (or last) generation.
    pub global_step: u64,
    pub total_steps: u64,
    /// The latest committed checkpoint.
    pub last_checkpoint: Option<CheckpointRef>,
    /// Step of the newest progress values.
    pub progress_step: u64,
    /// The latest values of rank 0's reports.
    pub progress: Progress,
}

/// The latest progress of the running (or last) generation, merged from its reports: each part keeps its newest
/// value, so an evaluation-only report does not erase the step's training values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Step of `train`.
    pub train_step: u64,
    /// The newest step's training values (loss parts, active dims, samples/s, step time, lr, ...).
    pub train: Option<StepProgress>,
    /// Each task's newest evaluation.
    pub evals: BTreeMap<String, EvalScore>,
    /// Write time of the newest checkpoint rank 0 reported.
    pub checkpoint_seconds: Option<f64>,
}

impl Progress {
    /// Takes what `report` carries; its step is not older than any merged before.
    pub fn merge(&mut self, report: ProgressReport) {
        if let Some(t) = report.train {
            self.train_step = report.step;
            self.train = Some(t);
        }
        for e in report.evals {
            self.evals.insert(e.task.clone(), e);
        }
        if let Some(s) = report.checkpoint_seconds {
            self.checkpoint_seconds = Some(s);
        }
    }
}
