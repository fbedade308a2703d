//! The coordinator's state machine: rendezvous, liveness, generations, checkpoints, completion.
//!
//! Pure and synchronous: every input carries the time it happened at, so the rules are tested without sleeping
//! and the async loop in `server.rs` only feeds it. Read top to bottom: inputs (join, heartbeat, progress, commit,
//! leave), then [`Machine::advance`], which applies time (timeouts, forming a generation, finishing).
//!
//! The machine never writes the durable state itself: each change is a [`JobCommand`] applied to the machine's
//! view of the [`JobState`] at once (so the rules read their own writes) and queued. After every input the loop
//! takes the queue ([`Machine::take_commands`]) and commits it to the store, as one command, before it answers
//! the caller. A commit the store refuses (not the leader, no quorum) makes the loop hand the machine the
//! store's state back ([`Machine::adopt`]), so the machine's view never runs ahead of the store.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use splade_proto::domain::{
    Ack, Assignment, CheckpointCommit, Directive, Heartbeat, JoinAck, JoinRequest, LeaveRequest,
    ProgressReport, WorkerId,
};
use tokio::time::Instant;

use crate::settings::{ClusterSettings, JobSpec};
use crate::snapshot::{JobSnapshot, PhaseKind, Progress, WorkerStatus};
use crate::state::{GenerationRecord, JobCommand, JobPhase, JobState, WorkerRecord};

/// How the job ended.
#[derive(Clone, Debug, PartialEq)]
pub enum JobOutcome {
    /// A rank reported the final step and every worker was told to stop (or stopped heartbeating).
    Completed { final_step: u64 },
    /// The job gave up (rendezvous timed out, restarts exhausted); `reason` says why.
    Failed { reason: String },
    /// The coordinator was shut down before the job ended.
    ShutDown,
}

/// A join the coordinator refuses; mapped onto a gRPC status at the edge.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum JoinRefused {
    /// The job has ended (`FAILED_PRECONDITION`).
    #[error("{0}")]
    JobOver(String),
    /// `max_workers` are registered already (`RESOURCE_EXHAUSTED`); try again later.
    #[error("{0}")]
    Full(String),
}

/// Per-worker volatile facts.
#[derive(Clone, Debug)]
struct Liveness {
    last_seen: Instant,
    step: u64,
}

/// The state machine. `state` is its view of the durable part (the store's state plus `pending`); everything
/// else here is volatile.
pub struct Machine {
    state: JobState,
    /// Commands applied to `state` and not yet taken for committing.
    pending: Vec<JobCommand>,
    settings: ClusterSettings,
    job: JobSpec,
    live: HashMap<WorkerId, Liveness>,
    next_join_seq: u64,
    /// When the current rendezvous started (deadline = this + rendezvous_timeout).
    rendezvous_since: Instant,
    /// When the current rendezvous first had `min_workers` (last call runs from here).
    quorum_since: Option<Instant>,
    /// Highest step any member of the current generation reported.
    global_step: u64,
    progress: Progress,
    progress_step: u64,
    /// Workers already told that the job completed or failed.
    told_final: HashSet<WorkerId>,
    finished_at: Option<Instant>,
    /// Highest generation a worker this machine does not know reported training in: a coordinator restarted
    /// without its state numbers its generations above it, so no worker confuses a new generation with the
    /// one it trained in before.
    seen_generation: u64,
}

impl Machine {
    /// A machine driving the job from `state` (empty for a new job; a store's state for a restarted or newly
    /// elected coordinator) at `now`. Settings and job must have been validated.
    pub fn new(state: JobState, settings: ClusterSettings, job: JobSpec, now: Instant) -> Self {
        let mut m = Self {
            state: JobState::default(),
            pending: Vec::new(),
            settings,
            job,
            live: HashMap::new(),
            next_join_seq: 0,
            rendezvous_since: now,
            quorum_since: None,
            global_step: 0,
            progress: Progress::default(),
            progress_step: 0,
            told_final: HashSet::new(),
            finished_at: None,
            seen_generation: 0,
        };
        m.adopt(state, now);
        m
    }

    /// The durable state as the machine sees it (read-only): the store's state plus the commands not yet taken.
    pub fn state(&self) -> &JobState {
        &self.state
    }

    /// The commands applied since the last call, in order, for the loop to commit; empty when nothing changed.
    pub fn take_commands(&mut self) -> Vec<JobCommand> {
        std::mem::take(&mut self.pending)
    }

    /// Replaces the machine's view with the store's `state`, dropping commands not yet taken: after a refused
    /// commit, or when this node starts driving a job whose state another coordinator built. Registered workers
    /// count as heard from at `now`, so a generation that survives a leader change keeps training, while a worker
    /// that is really gone is dropped a heartbeat timeout later.
    pub fn adopt(&mut self, state: JobState, now: Instant) {
        self.pending.clear();
        self.state = state;
        self.next_join_seq = self.state.next_join_seq().saturating_sub(1);
        let ids: Vec<WorkerId> = self.state.workers().iter().map(|w| w.id.clone()).collect();
        self.live.retain(|id, _| ids.contains(id));
        for id in ids {
            self.live.entry(id).or_insert(Liveness { last_seen: now, step: 0 }).last_seen = now;
        }
        if let Some(g) = self.state.generation() {
            self.global_step = self.global_step.max(g.start_step);
        }
        match self.state.phase() {
            JobPhase::Rendezvous { .. } => {
                self.rendezvous_since = now;
                self.quorum_since = None;
            }
            JobPhase::Completed { .. } | JobPhase::Failed { .. } => {
                self.finished_at.get_or_insert(now);
            }
            JobPhase::Running => {}
        }
    }

    /// Applies `cmd` to the view and queues it for committing.
    fn exec(&mut self, cmd: JobCommand) {
        self.state.apply(&cmd);
        self.pending.push(cmd);
    }

    // ---- inputs ------------------------------------------------------------------------------------------------

    /// Registers a worker. A known id joining again means its previous process is gone: if it was training, its
    /// generation ends.
    pub fn join(&mut self, req: JoinRequest, now: Instant) -> Result<JoinAck, JoinRefused> {
        match self.state.phase() {
            JobPhase::Completed { final_step } => {
                return Err(JoinRefused::JobOver(format!(
                    "the job has already completed at step {final_step}"
                )))
            }
            JobPhase::Failed { reason } => {
                return Err(JoinRefused::JobOver(format!(
                    "the job has failed: {reason}"
                )))
            }
            _ => {}
        }
        let id = req.worker_id.clone();
        if self.state.worker(&id).is_some() {
            if self.is_running_member(&id) {
                self.fail_generation(
                    format!("worker {id} joined again (its previous process is gone)"),
                    now,
                );
                if self.is_over() {
                    return Err(JoinRefused::JobOver(format!(
                        "the job has failed: {}",
                        self.phase_reason()
                    )));
                }
            }
        } else if self.state.workers().len() >= self.settings.max_workers as usize {
            let ids: Vec<String> = self
                .state
                .workers()
                .iter()
                .map(|w| w.id.to_string())
                .collect();
            return Err(JoinRefused::Full(format!(
                "the job already has max_workers {} workers ({}); retry after one leaves or times out",
                self.settings.max_workers,
                ids.join(", ")
            )));
        }
        self.next_join_seq += 1;
        self.exec(JobCommand::PutWorker(WorkerRecord {
            id: id.clone(),
            advertise_host: req.advertise_host,
            store_port: req.store_port,
            device: req.device,
            join_seq: self.next_join_seq,
        }));
        self.live.insert(
            id.clone(),
            Liveness {
                last_seen: now,
                step: 0,
            },
        );
        tracing::info!(worker = %id, phase = ?self.state.phase(), "worker joined");
        self.advance(now);
        Ok(JoinAck {
            worker_id: id,
            heartbeat_interval: self.settings.heartbeat_interval,
            heartbeat_timeout: self.settings.heartbeat_timeout,
        })
    }

    /// Records liveness and answers with the worker's directive.
    pub fn heartbeat(&mut self, hb: Heartbeat, now: Instant) -> Directive {
        // Time first: a heartbeat must not revive a worker whose timeout has already passed.
        self.advance(now);
        let id = hb.worker_id;
        match self.state.phase().clone() {
            JobPhase::Completed { final_step } => {
                self.told_final.insert(id);
                return Directive::Complete { final_step };
            }
            JobPhase::Failed { reason } => {
                self.told_final.insert(id);
                return Directive::Failed { reason };
            }
            _ => {}
        }
        let Some(live) = self.live.get_mut(&id) else {
            self.seen_generation = self.seen_generation.max(hb.generation.unwrap_or(0));
            return Directive::Rejoin {
                reason: format!("worker {id} is not registered (never joined, or dropped after missing heartbeats); join again"),
            };
        };
        live.last_seen = now;
        live.step = hb.step;
        let directive = match self.state.phase() {
            JobPhase::Rendezvous { reason } => Directive::Wait {
                reason: self.rendezvous_status(reason),
            },
            JobPhase::Running => {
                let g = self
                    .state
                    .generation()
                    .expect("running implies a generation");
                match g.rank_of(&id) {
                    Some(_) if hb.generation == Some(g.number) => {
                        self.global_step = self.global_step.max(hb.step);
                        Directive::KeepGoing
                    }
                    Some(rank) => Directive::Assign(Box::new(self.assignment(g, rank))),
                    None => Directive::Wait {
                        reason: format!(
                            "standby: generation {} is running with world size {}; you join at the next re-formation",
                            g.number,
                            g.members.len()
                        ),
                    },
                }
            }
            JobPhase::Completed { .. } | JobPhase::Failed { .. } => unreachable!("handled above"),
        };
        directive
    }

    /// Takes progress from a member of the current generation; the final step completes the job.
    pub fn progress(&mut self, report: ProgressReport, now: Instant) -> Ack {
        self.advance(now);
        if let Err(why) = self.check_current_member(&report.worker_id, report.generation) {
            return Ack::ignored(why);
        }
        if let Some(l) = self.live.get_mut(&report.worker_id) {
            l.last_seen = now;
            l.step = l.step.max(report.step);
        }
        self.global_step = self.global_step.max(report.step);
        let step = report.step;
        let worker = report.worker_id.clone();
        let stopped_early = report.stopped_early;
        if step >= self.progress_step {
            self.progress_step = step;
            self.progress.merge(report);
        }
        if step >= self.job.total_steps || stopped_early {
            let why = if stopped_early { "early stopping ended the run" } else { "final step reported" };
            tracing::info!(worker = %worker, step, "{why}; the job is complete");
            self.exec(JobCommand::EndGeneration { reason: "training completed".into() });
            self.exec(JobCommand::SetPhase(JobPhase::Completed {
                final_step: step,
            }));
            self.finished_at = Some(now);
        }
        Ack::accepted()
    }

    /// Records a checkpoint whose manifest was verified. Accepted from members of the latest generation, even
    /// after it ended, as long as no newer generation has formed (its restore point is fixed at formation).
    pub fn commit(&mut self, commit: CheckpointCommit, now: Instant) -> Ack {
        self.advance(now);
        if self.is_over() {
            return Ack::ignored(format!("the job is over ({})", self.phase_reason()));
        }
        let Some(g) = self.state.generation() else {
            return Ack::ignored("no generation has formed yet");
        };
        if commit.generation != g.number || g.rank_of(&commit.worker_id).is_none() {
            return Ack::ignored(format!(
                "worker {} is not a member of generation {} (the latest); commit from generation {} ignored",
                commit.worker_id, g.number, commit.generation
            ));
        }
        if let Some(latest) = self.state.latest_checkpoint() {
            if commit.checkpoint.step <= latest.step {
                return Ack::ignored(format!(
                    "step {} is not newer than the committed step {}",
                    commit.checkpoint.step, latest.step
                ));
            }
        }
        tracing::info!(
            worker = %commit.worker_id, step = commit.checkpoint.step, location = %commit.checkpoint.location,
            "checkpoint committed"
        );
        self.exec(JobCommand::RecordCheckpoint(commit.checkpoint));
        self.maybe_scale_up(now);
        Ack::accepted()
    }

    /// A worker leaving on purpose (drained, evicted: it finished its step first). A training member ends its
    /// generation as a planned departure: the job re-forms from the last committed checkpoint with whoever is
    /// left, without counting a restart.
    pub fn leave(&mut self, req: LeaveRequest, now: Instant) -> Ack {
        self.advance(now);
        let id = req.worker_id;
        if self.state.worker(&id).is_none() {
            return Ack::ignored(format!("worker {id} is not registered"));
        }
        let was_member = self.is_running_member(&id);
        self.forget(&id);
        self.told_final.insert(id.clone());
        tracing::info!(worker = %id, reason = %req.reason, "worker left");
        if was_member && matches!(self.state.phase(), JobPhase::Running) {
            let number = self.state.generation().map_or(0, |g| g.number);
            let reason = format!("worker {id} left ({})", req.reason);
            tracing::info!(generation = number, %reason, "planned departure; re-forming without a restart");
            self.exec(JobCommand::EndGeneration { reason: reason.clone() });
            self.start_rendezvous(format!("generation {number} ended: {reason}"), now);
        }
        self.advance(now);
        Ack::accepted()
    }

    // ---- time ---------------------------------------------------------------------------------------------------

    /// Applies the passage of time: drops silent workers, forms a generation when a rendezvous can, fails a
    /// rendezvous past its deadline. Returns the outcome once the job is over and every worker has been told (or a
    /// heartbeat timeout has passed since, so silent ones are not waited for).
    pub fn advance(&mut self, now: Instant) -> Option<JobOutcome> {
        self.drop_silent(now);
        if matches!(self.state.phase(), JobPhase::Rendezvous { .. }) {
            self.try_form(now);
        }
        let finished_at = self.finished_at?;
        let everyone_told = self
            .state
            .workers()
            .iter()
            .all(|w| self.told_final.contains(&w.id));
        if !everyone_told && now < finished_at + self.settings.heartbeat_timeout {
            return None;
        }
        match self.state.phase() {
            JobPhase::Completed { final_step } => Some(JobOutcome::Completed {
                final_step: *final_step,
            }),
            JobPhase::Failed { reason } => Some(JobOutcome::Failed {
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    fn drop_silent(&mut self, now: Instant) {
        let timeout = self.settings.heartbeat_timeout;
        let silent: Vec<(WorkerId, Duration)> = self
            .live
            .iter()
            .map(|(id, l)| (id.clone(), now.saturating_duration_since(l.last_seen)))
            .filter(|(_, quiet)| *quiet > timeout)
            .collect();
        if silent.is_empty() {
            return;
        }
        let mut lost_members = Vec::new();
        for (id, quiet) in &silent {
            if self.is_running_member(id) {
                lost_members.push(format!("{id} ({} ms)", quiet.as_millis()));
            }
            tracing::warn!(worker = %id, silent_ms = quiet.as_millis() as u64, "worker missed its heartbeats; dropped");
            self.forget(id);
        }
        if !lost_members.is_empty() {
            self.fail_generation(
                format!(
                    "worker(s) {} sent no heartbeat within heartbeat_timeout {} ms",
                    lost_members.join(", "),
                    timeout.as_millis()
                ),
                now,
            );
        }
    }

    /// Ends the running generation after a failure: re-forms (counting a restart) or, with restarts exhausted,
    /// fails the job.
    fn fail_generation(&mut self, reason: String, now: Instant) {
        if !matches!(self.state.phase(), JobPhase::Running) {
            return;
        }
        let number = self.state.generation().map_or(0, |g| g.number);
        self.exec(JobCommand::EndGeneration { reason: reason.clone() });
        let restarts = self.state.restarts();
        if restarts >= self.settings.max_restarts {
            let reason = format!(
                "generation {number} ended: {reason}; max_restarts {} exhausted ({restarts} restart(s) so far)",
                self.settings.max_restarts
            );
            tracing::error!(%reason, "job failed");
            self.finish_failed(reason, now);
            return;
        }
        self.exec(JobCommand::CountRestart);
        let restarts = self.state.restarts();
        tracing::warn!(generation = number, %reason, restarts, "generation ended; re-forming");
        self.start_rendezvous(
            format!(
                "generation {number} ended: {reason} (restart {restarts} of {})",
                self.settings.max_restarts
            ),
            now,
        );
    }

    /// With workers on standby and a larger valid world size reachable, ends the generation at this freshly
    /// committed checkpoint so the next one includes them. Not a failure: no restart is counted and no progress is
    /// lost beyond the steps after the checkpoint.
    fn maybe_scale_up(&mut self, now: Instant) {
        if !matches!(self.state.phase(), JobPhase::Running) {
            return;
        }
        let Some(g) = self.state.generation() else {
            return;
        };
        let (number, current) = (g.number, g.members.len() as u32);
        let available = (self.state.workers().len() as u32).min(self.settings.max_workers);
        let target = self.best_world_size(available);
        if target.is_some_and(|t| t > current) {
            let reason = format!(
                "scaling up from {current} to {} workers at the committed checkpoint",
                target.unwrap_or(current)
            );
            tracing::info!(generation = number, %reason, "ending generation");
            self.exec(JobCommand::EndGeneration { reason: reason.clone() });
            self.start_rendezvous(format!("generation {number} ended: {reason}"), now);
        }
    }

    fn start_rendezvous(&mut self, reason: String, now: Instant) {
        self.exec(JobCommand::SetPhase(JobPhase::Rendezvous { reason }));
        self.rendezvous_since = now;
        self.quorum_since = None;
    }

    fn finish_failed(&mut self, reason: String, now: Instant) {
        self.exec(JobCommand::SetPhase(JobPhase::Failed { reason }));
        self.finished_at = Some(now);
    }

    /// Largest world size in `min_workers..=available` that keeps the global batch exact.
    fn best_world_size(&self, available: u32) -> Option<u32> {
        (self.settings.min_workers..=available)
            .rev()
            .find(|&n| self.job.micro_batches(n).is_some())
    }

    fn try_form(&mut self, now: Instant) {
        let candidates = self.candidates();
        let count = candidates.len() as u32;
        let min = self.settings.min_workers;
        if count < min {
            self.quorum_since = None;
        } else {
            let since = *self.quorum_since.get_or_insert(now);
            let full = count >= self.settings.max_workers;
            if full || now >= since + self.settings.rendezvous_last_call {
                if let Some(n) = self.best_world_size(count.min(self.settings.max_workers)) {
                    self.form(candidates.into_iter().take(n as usize).collect(), now);
                    return;
                }
            }
        }
        if now >= self.rendezvous_since + self.settings.rendezvous_timeout {
            let reason = match self.best_world_size(count.min(self.settings.max_workers)) {
                _ if count < min => format!(
                    "rendezvous timed out after {:?}: {count} of min_workers {min} joined ({})",
                    self.settings.rendezvous_timeout,
                    candidates.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", ")
                ),
                None => format!(
                    "rendezvous timed out after {:?}: {count} workers joined but global_batch_size {} does not split \
                     evenly into world size x per_device_batch_size {} for any world size in {min}..={count}",
                    self.settings.rendezvous_timeout, self.job.global_batch_size, self.job.per_device_batch_size
                ),
                Some(_) => return, // formable: formed on the next call once the last call is over
            };
            tracing::error!(%reason, "job failed");
            self.finish_failed(reason, now);
        }
    }

    /// Workers eligible for the next generation: survivors of the previous one in their old rank order (so rank 0
    /// and the store stay put when they can), then newcomers in join order.
    fn candidates(&self) -> Vec<WorkerId> {
        let mut out: Vec<WorkerId> = Vec::new();
        if let Some(g) = self.state.generation() {
            out.extend(
                g.members
                    .iter()
                    .filter(|m| self.state.worker(m).is_some())
                    .cloned(),
            );
        }
        for w in self.state.workers() {
            if !out.contains(&w.id) {
                out.push(w.id.clone());
            }
        }
        out
    }

    fn form(&mut self, members: Vec<WorkerId>, now: Instant) {
        let n = members.len() as u32;
        let micro = self
            .job
            .micro_batches(n)
            .expect("world size chosen to divide the global batch");
        let rank0 = self
            .state
            .worker(&members[0])
            .expect("candidates are registered")
            .clone();
        let restore = self.state.latest_checkpoint().cloned();
        let start_step = restore.as_ref().map_or(0, |c| c.step);
        let number = self.state.generation().map_or(0, |g| g.number).max(self.seen_generation) + 1;
        let g = GenerationRecord {
            number,
            members,
            store_host: rank0.advertise_host.clone(),
            store_port: rank0.store_port.unwrap_or(self.settings.store_port),
            restore,
            start_step,
            micro_batches_per_rank: micro,
            ended: None,
        };
        tracing::info!(
            generation = number, world_size = n, micro_batches_per_rank = micro, start_step,
            members = ?g.members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            store = %format!("{}:{}", g.store_host, g.store_port),
            waited_ms = now.saturating_duration_since(self.rendezvous_since).as_millis() as u64,
            "generation formed"
        );
        self.exec(JobCommand::StartGeneration(g));
        self.exec(JobCommand::SetPhase(JobPhase::Running));
        self.global_step = start_step;
        self.quorum_since = None;
    }

    // ---- helpers -----------------------------------------------------------------------------------------------

    fn assignment(&self, g: &GenerationRecord, rank: u32) -> Assignment {
        Assignment {
            generation: g.number,
            rank,
            world_size: g.members.len() as u32,
            config_json: self.job.config_json.clone(),
            store_host: g.store_host.clone(),
            store_port: g.store_port,
            restore: g.restore.clone(),
            start_step: g.start_step,
            total_steps: self.job.total_steps,
            global_batch_size: self.job.global_batch_size,
            per_device_batch_size: self.job.per_device_batch_size,
            micro_batches_per_rank: g.micro_batches_per_rank,
            members: g.members.clone(),
            data_plan: self.job.data_plan.clone(),
        }
    }

    fn is_running_member(&self, id: &WorkerId) -> bool {
        matches!(self.state.phase(), JobPhase::Running)
            && self
                .state
                .generation()
                .is_some_and(|g| g.rank_of(id).is_some())
    }

    fn check_current_member(&self, id: &WorkerId, generation: u64) -> Result<(), String> {
        if !matches!(self.state.phase(), JobPhase::Running) {
            return Err(format!(
                "no generation is running ({})",
                self.phase_reason()
            ));
        }
        let g = self
            .state
            .generation()
            .expect("running implies a generation");
        if generation != g.number {
            return Err(format!(
                "generation {generation} is not the running generation {}",
                g.number
            ));
        }
        if g.rank_of(id).is_none() {
            return Err(format!(
                "worker {id} is not a member of generation {}",
                g.number
            ));
        }
        Ok(())
    }

    fn forget(&mut self, id: &WorkerId) {
        self.exec(JobCommand::RemoveWorker(id.clone()));
        self.live.remove(id);
    }

    fn is_over(&self) -> bool {
        matches!(
            self.state.phase(),
            JobPhase::Completed { .. } | JobPhase::Failed { .. }
        )
    }

    fn phase_reason(&self) -> String {
        match self.state.phase() {
            JobPhase::Rendezvous { reason } => format!("rendezvous: {reason}"),
            JobPhase::Running => "running".into(),
            JobPhase::Completed { final_step } => format!("completed at step {final_step}"),
            JobPhase::Failed { reason } => format!("failed: {reason}"),
        }
    }

    fn rendezvous_status(&self, reason: &str) -> String {
        format!(
            "rendezvous ({reason}): {} worker(s) registered, min_workers {}, max_workers {}",
            self.state.workers().len(),
            self.settings.min_workers,
            self.settings.max_workers
        )
    }

    /// The job as the metrics endpoint and operators see it.
    pub fn snapshot(&self, now: Instant) -> JobSnapshot {
        let g = self.state.generation();
        let running = matches!(self.state.phase(), JobPhase::Running);
        let (phase, reason) = match self.state.phase() {
            JobPhase::Rendezvous { reason } => (PhaseKind::Rendezvous, Some(reason.clone())),
            JobPhase::Running => (PhaseKind::Running, None),
            JobPhase::Completed { .. } => (PhaseKind::Completed, None),
            JobPhase::Failed { reason } => (PhaseKind::Failed, Some(reason.clone())),
        };
        let workers = self
            .state
            .workers()
            .into_iter()
            .map(|w| {
                let live = self.live.get(&w.id);
                WorkerStatus {
                    id: w.id.clone(),
                    device: w.device.clone(),
                    rank: if running {
                        g.and_then(|g| g.rank_of(&w.id))
                    } else {
                        None
                    },
                    step: live.map_or(0, |l| l.step),
                    since_heartbeat: live.map_or(Duration::ZERO, |l| {
                        now.saturating_duration_since(l.last_seen)
                    }),
                }
            })
            .collect::<Vec<_>>();
        JobSnapshot {
            phase,
            reason,
            generation: g.map_or(0, |g| g.number),
            world_size: if running {
                g.map_or(0, |g| g.members.len() as u32)
            } else {
                0
            },
            workers_alive: workers.len(),
            workers,
            restarts: self.state.restarts(),
            max_restarts: self.settings.max_restarts,
            global_step: self.global_step,
            total_steps: self.job.total_steps,
            last_checkpoint: self.state.latest_checkpoint().cloned(),
            progress_step: self.progress_step,
            progress: self.progress.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rules, with time injected. The gRPC-level behaviour is tested in `tests/it`.
    use super::*;
    use splade_proto::domain::{CheckpointRef, LossParts, StepProgress};

    const HB: Duration = Duration::from_millis(100);

    fn settings(min: u32, max: u32, max_restarts: u32) -> ClusterSettings {
        ClusterSettings {
            min_workers: min,
            max_workers: max,
            rendezvous_timeout: Duration::from_secs(5),
            rendezvous_last_call: Duration::from_millis(300),
            heartbeat_interval: HB,
            heartbeat_timeout: HB * 4,
            max_restarts,
            ..Default::default()
        }
    }

    fn machine(
        min: u32,
        max: u32,
        max_restarts: u32,
        t0: Instant,
    ) -> Machine {
        let job = JobSpec {
            config_json: r#"{"x": 1}"#.into(),
            global_batch_size: 32,
            per_device_batch_size: 8,
            total_steps: 100,
            data_plan: None,
        };
        Machine::new(
            JobState::default(),
            settings(min, max, max_restarts),
            job,
            t0,
        )
    }

    fn id(s: &str) -> WorkerId {
        WorkerId::new(s).unwrap()
    }

    fn join(m: &mut Machine, w: &str, now: Instant) {
        m.join(
            JoinRequest {
                worker_id: id(w),
                advertise_host: format!("{w}.local"),
                store_port: None,
                device: "cpu".into(),
            },
            now,
        )
        .unwrap();
    }

    fn hb(
        m: &mut Machine,
        w: &str,
        generation: Option<u64>,
        now: Instant,
    ) -> Directive {
        m.heartbeat(
            Heartbeat {
                worker_id: id(w),
                generation,
                step: 0,
            },
            now,
        )
    }

    fn assigned(d: Directive) -> Assignment {
        match d {
            Directive::Assign(a) => *a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    fn ckpt(step: u64) -> CheckpointRef {
        CheckpointRef {
            step,
            location: format!("/ck/{step}"),
            manifest_sha256: "0".repeat(64),
        }
    }

    #[test]
    fn three_joiners_with_a_batch_that_splits_only_in_two_and_four_form_two() {
        let t0 = Instant::now();
        let mut m = machine(2, 4, 0, t0);
        for w in ["a", "b", "c"] {
            join(&mut m, w, t0);
        }
        assert!(
            matches!(hb(&mut m, "a", None, t0), Directive::Wait { .. }),
            "last call still open"
        );
        let t = t0 + Duration::from_millis(350);
        let a = assigned(hb(&mut m, "a", None, t));
        assert_eq!((a.world_size, a.rank, a.micro_batches_per_rank), (2, 0, 2));
        assert_eq!(a.store_host, "a.local");
        assert_eq!(a.store_port, 29500);
        let b = assigned(hb(&mut m, "b", None, t));
        assert_eq!(b.rank, 1);
        match hb(&mut m, "c", None, t) {
            Directive::Wait { reason } => assert!(reason.starts_with("standby"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(hb(&mut m, "a", Some(1), t), Directive::KeepGoing);
    }

    #[test]
    fn commit_with_a_standby_scales_up_without_counting_a_restart() {
        let t0 = Instant::now();
        let mut m = machine(1, 2, 0, t0);
        join(&mut m, "a", t0);
        let t1 = t0 + Duration::from_millis(350);
        assert_eq!(assigned(hb(&mut m, "a", None, t1)).world_size, 1);
        join(&mut m, "b", t1);
        assert!(matches!(hb(&mut m, "b", None, t1), Directive::Wait { .. }));
        let ack = m.commit(
            CheckpointCommit {
                worker_id: id("a"),
                generation: 1,
                checkpoint: ckpt(10),
            },
            t1,
        );
        assert!(ack.accepted, "{ack:?}");
        let a = assigned(hb(&mut m, "a", Some(1), t1));
        assert_eq!(
            (
                a.generation,
                a.world_size,
                a.start_step,
                a.micro_batches_per_rank
            ),
            (2, 2, 10, 2)
        );
        assert_eq!(a.restore, Some(ckpt(10)));
        assert_eq!(m.state().restarts(), 0);
    }

    #[test]
    fn stale_and_old_commits_are_ignored() {
        let t0 = Instant::now();
        let mut m = machine(1, 1, 0, t0);
        join(&mut m, "a", t0);
        assigned(hb(&mut m, "a", None, t0));
        assert!(
            m.commit(
                CheckpointCommit {
                    worker_id: id("a"),
                    generation: 1,
                    checkpoint: ckpt(10)
                },
                t0
            )
            .accepted
        );
        let old = m.commit(
            CheckpointCommit {
                worker_id: id("a"),
                generation: 1,
                checkpoint: ckpt(5),
            },
            t0,
        );
        assert!(!old.accepted && old.reason.contains("not newer"), "{old:?}");
        let stale = m.commit(
            CheckpointCommit {
                worker_id: id("a"),
                generation: 7,
                checkpoint: ckpt(20),
            },
            t0,
        );
        assert!(!stale.accepted, "{stale:?}");
        assert_eq!(m.state().latest_checkpoint(), Some(&ckpt(10)));
    }

    #[test]
    fn rendezvous_timeout_fails_the_job_naming_who_came() {
        let t0 = Instant::now();
        let mut m = machine(2, 2, 0, t0);
        join(&mut m, "a", t0);
        let mut t = t0;
        while t < t0 + Duration::from_secs(6) {
            t += HB;
            let _ = hb(&mut m, "a", None, t);
        }
        match hb(&mut m, "a", None, t) {
            Directive::Failed { reason } => {
                assert!(
                    reason.contains("rendezvous timed out")
                        && reason.contains("1 of min_workers 2 joined (a)"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            m.advance(t),
            Some(JobOutcome::Failed {
                reason: m.snapshot(t).reason.unwrap()
            })
        );
    }

    #[test]
    fn rejoin_of_a_member_ends_its_generation() {
        let t0 = Instant::now();
        let mut m = machine(2, 2, 3, t0);
        join(&mut m, "a", t0);
        join(&mut m, "b", t0);
        assigned(hb(&mut m, "a", None, t0));
        join(&mut m, "b", t0 + HB);
        // b re-registered at once, so the new generation forms with both.
        let a = assigned(hb(&mut m, "a", Some(1), t0 + HB));
        assert_eq!((a.generation, a.world_size), (2, 2));
        assert_eq!(m.state().restarts(), 1);
    }

    #[test]
    fn final_step_completes_and_waits_for_everyone_to_be_told() {
        let t0 = Instant::now();
        let mut m = machine(2, 2, 0, t0);
        join(&mut m, "a", t0);
        join(&mut m, "b", t0);
        assigned(hb(&mut m, "a", None, t0));
        assigned(hb(&mut m, "b", None, t0));
        let mut report = ProgressReport::new(id("a"), 1, 100);
        report.train = Some(StepProgress { loss: LossParts { total: 0.5, ..Default::default() }, ..Default::default() });
        assert!(m.progress(report, t0).accepted);
        assert_eq!(m.advance(t0), None, "b has not been told yet");
        assert_eq!(
            hb(&mut m, "a", Some(1), t0),
            Directive::Complete { final_step: 100 }
        );
        assert_eq!(m.advance(t0), None);
        assert_eq!(
            hb(&mut m, "b", Some(1), t0),
            Directive::Complete { final_step: 100 }
        );
        assert_eq!(
            m.advance(t0),
            Some(JobOutcome::Completed { final_step: 100 })
        );
        assert_eq!(m.snapshot(t0).progress.train.map(|t| t.loss.total), Some(0.5));
    }

    #[test]
    fn a_restarted_machine_numbers_generations_above_what_unknown_workers_report() {
        let t0 = Instant::now();
        let mut m = machine(1, 1, 0, t0);
        // A worker still training generation 4 of the coordinator before the restart.
        match m.heartbeat(Heartbeat { worker_id: id("a"), generation: Some(4), step: 9 }, t0) {
            Directive::Rejoin { .. } => {}
            other => panic!("{other:?}"),
        }
        join(&mut m, "a", t0);
        let a = assigned(hb(&mut m, "a", Some(4), t0 + Duration::from_millis(350)));
        assert_eq!(a.generation, 5);
    }

    #[test]
    fn changes_are_queued_as_commands_and_adopting_the_store_state_drops_them() {
        let t0 = Instant::now();
        let mut m = machine(1, 2, 0, t0);
        join(&mut m, "a", t0);
        let cmds = m.take_commands();
        assert!(matches!(cmds.as_slice(), [JobCommand::PutWorker(w)] if w.id == id("a")), "{cmds:?}");
        // The store refused the next change (say, the formation): the machine takes the store's state back.
        let mut store = JobState::default();
        cmds.iter().for_each(|c| store.apply(c));
        let t1 = t0 + Duration::from_millis(350);
        assigned(hb(&mut m, "a", None, t1));
        assert!(!m.take_commands().is_empty());
        m.adopt(store.clone(), t1);
        assert_eq!(m.state(), &store);
        assert!(m.take_commands().is_empty());
        // Replaying what it queues on the store's state gives the machine's view (the rendezvous restarted from
        // the store's state, so its last call runs again).
        assert!(matches!(hb(&mut m, "a", None, t1), Directive::Wait { .. }));
        let a = assigned(hb(&mut m, "a", None, t1 + Duration::from_millis(350)));
        assert_eq!(a.generation, 1);
        m.take_commands().iter().for_each(|c| store.apply(c));
        assert_eq!(m.state(), &store);
    }
}
