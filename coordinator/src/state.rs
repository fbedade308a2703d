//! The job's durable state behind a small trait, so a replicated store can replace the in-memory one.
//!
//! Only what must survive a coordinator fail-over lives here: who is registered, the current generation, the
//! restart count, committed checkpoints and the job phase. Liveness (last heartbeat times) and the latest progress
//! values are volatile and stay in the state machine.

use std::collections::BTreeMap;

use splade_proto::domain::{CheckpointRef, WorkerId};

/// A registered worker.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub advertise_host: String,
    /// Port it asked to host the c10d store on as rank 0, if any.
    pub store_port: Option<u16>,
    pub device: String,
    /// Order of arrival; newcomers get ranks in this order.
    pub join_seq: u64,
}

/// One formed generation: fixed membership training from one starting point.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRecord {
    /// From 1, one more per re-formation.
    pub number: u64,
    /// Worker ids in rank order.
    pub members: Vec<WorkerId>,
    pub store_host: String,
    pub store_port: u16,
    /// Checkpoint every member restores first; `None` for a fresh start.
    pub restore: Option<CheckpointRef>,
    pub start_step: u64,
    pub micro_batches_per_rank: u32,
    /// Why it ended, once it has.
    pub ended: Option<String>,
}

impl GenerationRecord {
    /// Rank of `id` in this generation.
    pub fn rank_of(&self, id: &WorkerId) -> Option<u32> {
        self.members.iter().position(|m| m == id).map(|r| r as u32)
    }
}

/// Where the job is.
#[derive(Clone, Debug, PartialEq)]
pub enum JobPhase {
    /// Gathering workers for the next generation; `reason` says why (start, a failure, scaling up).
    Rendezvous { reason: String },
    /// The current generation is training.
    Running,
    /// A rank reported the final step.
    Completed { final_step: u64 },
    /// The job gave up; `reason` says why.
    Failed { reason: String },
}

/// Storage of the job's durable state. Implementations apply each call atomically; the coordinator's single loop
/// is the only caller, so no call needs to be atomic with another.
pub trait ClusterState: Send + 'static {
    /// Registers (or replaces) a worker; returns the record it replaced.
    fn put_worker(&mut self, w: WorkerRecord) -> Option<WorkerRecord>;
    /// Forgets a worker; returns its record.
    fn remove_worker(&mut self, id: &WorkerId) -> Option<WorkerRecord>;
    fn worker(&self, id: &WorkerId) -> Option<&WorkerRecord>;
    /// All registered workers in join order.
    fn workers(&self) -> Vec<&WorkerRecord>;
    /// The latest generation, running or ended; `None` before the first forms.
    fn generation(&self) -> Option<&GenerationRecord>;
    /// Makes `g` the current generation.
    fn start_generation(&mut self, g: GenerationRecord);
    /// Marks the current generation ended; no-op without one.
    fn end_generation(&mut self, reason: String);
    /// Re-formations after failures so far.
    fn restarts(&self) -> u32;
    /// Counts one more restart; returns the new count.
    fn count_restart(&mut self) -> u32;
    /// The committed checkpoint with the highest step.
    fn latest_checkpoint(&self) -> Option<&CheckpointRef>;
    /// Records a committed checkpoint.
    fn record_checkpoint(&mut self, c: CheckpointRef);
    fn phase(&self) -> &JobPhase;
    fn set_phase(&mut self, p: JobPhase);
}

/// [`ClusterState`] in process memory: lost when the coordinator exits.
#[derive(Debug)]
pub struct InMemoryClusterState {
    workers: BTreeMap<WorkerId, WorkerRecord>,
    generation: Option<GenerationRecord>,
    restarts: u32,
    checkpoints: BTreeMap<u64, CheckpointRef>,
    phase: JobPhase,
}

impl Default for InMemoryClusterState {
    fn default() -> Self {
        Self {
            workers: BTreeMap::new(),
            generation: None,
            restarts: 0,
            checkpoints: BTreeMap::new(),
            phase: JobPhase::Rendezvous {
                reason: "job start".into(),
            },
        }
    }
}

impl ClusterState for InMemoryClusterState {
    fn put_worker(&mut self, w: WorkerRecord) -> Option<WorkerRecord> {
        self.workers.insert(w.id.clone(), w)
    }
    fn remove_worker(&mut self, id: &WorkerId) -> Option<WorkerRecord> {
        self.workers.remove(id)
    }
    fn worker(&self, id: &WorkerId) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }
    fn workers(&self) -> Vec<&WorkerRecord> {
        let mut v: Vec<_> = self.workers.values().collect();
        v.sort_by_key(|w| w.join_seq);
        v
    }
    fn generation(&self) -> Option<&GenerationRecord> {
        self.generation.as_ref()
    }
    fn start_generation(&mut self, g: GenerationRecord) {
        self.generation = Some(g);
    }
    fn end_generation(&mut self, reason: String) {
        if let Some(g) = &mut self.generation {
            g.ended.get_or_insert(reason);
        }
    }
    fn restarts(&self) -> u32 {
        self.restarts
    }
    fn count_restart(&mut self) -> u32 {
        self.restarts += 1;
        self.restarts
    }
    fn latest_checkpoint(&self) -> Option<&CheckpointRef> {
        self.checkpoints.values().next_back()
    }
    fn record_checkpoint(&mut self, c: CheckpointRef) {
        self.checkpoints.insert(c.step, c);
    }
    fn phase(&self) -> &JobPhase {
        &self.phase
    }
    fn set_phase(&mut self, p: JobPhase) {
        self.phase = p;
    }
}
