//! The job's durable state: the commands that change it ([`JobCommand`]), the value they build ([`JobState`]) and
//! the store that commits them ([`ClusterState`]), so a replicated store can replace the in-memory one.
//!
//! Only what must survive a coordinator fail-over lives here: who is registered, the current generation, the
//! restart count, committed checkpoints, the job phase and the job itself (spec and data plan). Liveness (last
//! heartbeat times) and the latest progress values are volatile and stay in the state machine.
//!
//! [`JobState::apply`] is the only way the state changes, and it is deterministic: a replicated store commits each
//! command to its log and applies it in log order on every replica, and replaying a log (or restoring a snapshot
//! and replaying the rest) gives the same value on each.
//!
//! The trait uses `async_trait` (boxed futures) rather than native `async fn` in traits, so that a store can be
//! chosen at run time behind `Arc<dyn ClusterState>` (in memory for a single coordinator, Raft for three).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use splade_proto::domain::{CheckpointRef, DataPlanRef, WorkerId};

/// A registered worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

impl Default for JobPhase {
    fn default() -> Self {
        JobPhase::Rendezvous {
            reason: "job start".into(),
        }
    }
}

/// What a leader needs to drive the job, recorded once when the job starts: a restarted or newly elected leader
/// checks it against its own config (same job) before it drives anything.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// sha256 (hex) of the training config as JSON (`JobSpec::config_json`): the job's identity.
    pub config_sha256: String,
    pub global_batch_size: u32,
    pub per_device_batch_size: u32,
    pub total_steps: u64,
    /// The published data plan every assignment points at.
    pub data_plan: Option<DataPlanRef>,
}

impl JobRecord {
    /// The record of `job` (its config is identified by the sha256 of its JSON).
    pub fn of(job: &crate::settings::JobSpec) -> Self {
        use sha2::Digest;
        Self {
            config_sha256: hex::encode(sha2::Sha256::digest(job.config_json.as_bytes())),
            global_batch_size: job.global_batch_size,
            per_device_batch_size: job.per_device_batch_size,
            total_steps: job.total_steps,
            data_plan: job.data_plan.clone(),
        }
    }
}

/// Every change to the job's durable state: a replicated store commits these to its log and applies them in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobCommand {
    /// Registers (or replaces) a worker.
    PutWorker(WorkerRecord),
    /// Forgets a worker (no-op when unknown).
    RemoveWorker(WorkerId),
    /// Makes the record the current generation.
    StartGeneration(GenerationRecord),
    /// Marks the current generation ended (keeps the first reason; no-op without a generation).
    EndGeneration { reason: String },
    /// Counts one more re-formation after a failure.
    CountRestart,
    /// Records a committed checkpoint (by step; the same step again replaces it).
    RecordCheckpoint(CheckpointRef),
    SetPhase(JobPhase),
    /// The job spec and the published data plan, set once when the job starts (a restarted or new leader checks
    /// it against its own config).
    SetJob(JobRecord),
    /// Several commands applied as one: what one input to the state machine changed, so a store commits it as one
    /// log entry and no replica ever sees half of it.
    Batch(Vec<JobCommand>),
}

/// The durable state as of the last applied command; [`JobState::apply`] is the only way it changes
/// (deterministic, so a log replay or a snapshot + replay gives the same value).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    workers: BTreeMap<WorkerId, WorkerRecord>,
    generation: Option<GenerationRecord>,
    restarts: u32,
    /// By step.
    checkpoints: BTreeMap<u64, CheckpointRef>,
    phase: JobPhase,
    job: Option<JobRecord>,
}

impl JobState {
    /// Applies one command. Never fails: every command is meaningful in every state (see each variant).
    pub fn apply(&mut self, cmd: &JobCommand) {
        match cmd {
            JobCommand::PutWorker(w) => {
                self.workers.insert(w.id.clone(), w.clone());
            }
            JobCommand::RemoveWorker(id) => {
                self.workers.remove(id);
            }
            JobCommand::StartGeneration(g) => self.generation = Some(g.clone()),
            JobCommand::EndGeneration { reason } => {
                if let Some(g) = &mut self.generation {
                    g.ended.get_or_insert_with(|| reason.clone());
                }
            }
            JobCommand::CountRestart => self.restarts += 1,
            JobCommand::RecordCheckpoint(c) => {
                self.checkpoints.insert(c.step, c.clone());
            }
            JobCommand::SetPhase(p) => self.phase = p.clone(),
            JobCommand::SetJob(j) => self.job = Some(j.clone()),
            JobCommand::Batch(cmds) => cmds.iter().for_each(|c| self.apply(c)),
        }
    }

    pub fn worker(&self, id: &WorkerId) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }

    /// All registered workers in join order.
    pub fn workers(&self) -> Vec<&WorkerRecord> {
        let mut v: Vec<_> = self.workers.values().collect();
        v.sort_by_key(|w| w.join_seq);
        v
    }

    /// The latest generation, running or ended; `None` before the first forms.
    pub fn generation(&self) -> Option<&GenerationRecord> {
        self.generation.as_ref()
    }

    /// Re-formations after failures so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The committed checkpoint with the highest step.
    pub fn latest_checkpoint(&self) -> Option<&CheckpointRef> {
        self.checkpoints.values().next_back()
    }

    /// Every committed checkpoint, by step.
    pub fn checkpoints(&self) -> impl Iterator<Item = &CheckpointRef> {
        self.checkpoints.values()
    }

    pub fn phase(&self) -> &JobPhase {
        &self.phase
    }

    /// The job this state belongs to; `None` until [`JobCommand::SetJob`] is applied.
    pub fn job(&self) -> Option<&JobRecord> {
        self.job.as_ref()
    }

    /// The `join_seq` the next registered worker gets (one above every registered worker's).
    pub fn next_join_seq(&self) -> u64 {
        self.workers.values().map(|w| w.join_seq).max().unwrap_or(0) + 1
    }
}

/// Why a store could not commit or read.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StateError {
    /// This node is not the leader; `leader` is the worker-API address (`HOST:PORT`) of the leader it knows of.
    #[error("this coordinator is not the leader ({})", match leader { Some(l) => format!("the leader is {l}"), None => "no leader is known yet; retry shortly".into() })]
    NotLeader { leader: Option<String> },
    /// The store cannot answer now (no quorum, shutting down); retry later.
    #[error("the job state is unavailable: {0}")]
    Unavailable(String),
    /// The store's disk failed or holds something unreadable.
    #[error("the job state's storage failed: {0}")]
    Storage(String),
}

/// Storage of the job's durable state. The coordinator's single loop is the only writer on a node; a replicated
/// store orders the commits of the whole group in its log.
#[async_trait::async_trait]
pub trait ClusterState: Send + Sync + 'static {
    /// Commits `cmd` (durably, replicated where the store replicates), applies it, returns once applied.
    async fn commit(&self, cmd: JobCommand) -> Result<(), StateError>;
    /// An owned copy of the state as of the last applied command.
    async fn read(&self) -> Result<JobState, StateError>;
    /// The Raft term this node's view belongs to (0 for stores without terms), carried in directives.
    fn term(&self) -> u64;
    /// Whether this node may drive the job now; a follower answers `NotLeader { leader }`. The loop asks before
    /// every input and timer tick, so a follower (or a deposed leader) answers no worker with a directive and
    /// applies no timeout; on becoming leader it reads the store's state first. The default (a store without
    /// leaders) always may.
    async fn ensure_leader(&self) -> Result<(), StateError> {
        Ok(())
    }
}

/// [`ClusterState`] in process memory: lost when the coordinator exits. Never fails; its term is 0.
#[derive(Debug, Default)]
pub struct InMemoryClusterState {
    state: std::sync::Mutex<JobState>,
}

impl InMemoryClusterState {
    /// A store holding `state` (e.g. what a restarted coordinator recovered from `output_dir`).
    pub fn new(state: JobState) -> Self {
        Self {
            state: std::sync::Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        // A panic while applying leaves a whole value (apply has no partial states worth refusing): keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl ClusterState for InMemoryClusterState {
    async fn commit(&self, cmd: JobCommand) -> Result<(), StateError> {
        self.lock().apply(&cmd);
        Ok(())
    }
    async fn read(&self) -> Result<JobState, StateError> {
        Ok(self.lock().clone())
    }
    fn term(&self) -> u64 {
        0
    }
}

#[async_trait::async_trait]
impl<S: ClusterState + ?Sized> ClusterState for std::sync::Arc<S> {
    async fn commit(&self, cmd: JobCommand) -> Result<(), StateError> {
        (**self).commit(cmd).await
    }
    async fn read(&self) -> Result<JobState, StateError> {
        (**self).read().await
    }
    fn term(&self) -> u64 {
        (**self).term()
    }
    async fn ensure_leader(&self) -> Result<(), StateError> {
        (**self).ensure_leader().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> WorkerId {
        WorkerId::new(s).unwrap()
    }

    fn ckpt(step: u64) -> CheckpointRef {
        CheckpointRef { step, location: format!("/ck/checkpoint-{step}"), manifest_sha256: "a".repeat(64) }
    }

    fn log() -> Vec<JobCommand> {
        let w = |n: &str, seq| WorkerRecord { id: id(n), advertise_host: "h".into(), store_port: None, device: "cpu".into(), join_seq: seq };
        let g = GenerationRecord {
            number: 1, members: vec![id("a"), id("b")], store_host: "h".into(), store_port: 29500,
            restore: None, start_step: 0, micro_batches_per_rank: 1, ended: None,
        };
        vec![
            JobCommand::SetJob(JobRecord { config_sha256: "c".repeat(64), global_batch_size: 8, per_device_batch_size: 4, total_steps: 10, data_plan: None }),
            JobCommand::Batch(vec![JobCommand::PutWorker(w("a", 1)), JobCommand::PutWorker(w("b", 2))]),
            JobCommand::Batch(vec![JobCommand::StartGeneration(g), JobCommand::SetPhase(JobPhase::Running)]),
            JobCommand::RecordCheckpoint(ckpt(5)),
            JobCommand::Batch(vec![
                JobCommand::RemoveWorker(id("b")),
                JobCommand::EndGeneration { reason: "b lost".into() },
                JobCommand::EndGeneration { reason: "second reason is not kept".into() },
                JobCommand::CountRestart,
                JobCommand::SetPhase(JobPhase::Rendezvous { reason: "b lost".into() }),
            ]),
        ]
    }

    #[test]
    fn commands_build_the_state_the_accessors_report() {
        let mut s = JobState::default();
        assert_eq!(s.phase(), &JobPhase::Rendezvous { reason: "job start".into() });
        for c in log() {
            s.apply(&c);
        }
        assert_eq!(s.workers().iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(s.next_join_seq(), 2);
        assert_eq!(s.generation().and_then(|g| g.ended.as_deref()), Some("b lost"));
        assert_eq!((s.restarts(), s.latest_checkpoint()), (1, Some(&ckpt(5))));
        assert_eq!(s.job().map(|j| j.total_steps), Some(10));
    }

    #[test]
    fn state_and_commands_survive_json_and_a_bad_worker_id_is_refused() {
        let mut s = JobState::default();
        for c in log() {
            let back: JobCommand = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(back, c);
            s.apply(&back);
        }
        let back: JobState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let e = serde_json::from_str::<JobCommand>(r#"{"RemoveWorker":"a b"}"#).unwrap_err().to_string();
        assert!(e.contains("worker id") && e.contains("contains ' '"), "{e}");
    }
}
