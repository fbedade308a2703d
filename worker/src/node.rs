//! `splade-worker --join HOST:PORT`: one data-parallel replica of a coordinator's job.
//!
//! The worker joins with the shared token, then follows the coordinator's directives
//! ([`WorkerSession::directive`]): on `Assign` it builds a [`Trainer`] from the shipped config,
//! forms the generation's c10d group, restores the assigned (verified) checkpoint and runs the
//! training loop `splade train` runs ([`crate::train::schedule::run`]) with this rank's slice of the
//! published data plan ([`BatchSource::Slices`]) and the c10d all-reduce ([`GradSync::AllReduce`]),
//! until the job completes or the directive changes (then the group is dropped and the next
//! generation is formed). Rank 0 is the run's [`Lead`]: it logs (`metrics.jsonl`, TensorBoard,
//! MLflow), evaluates, commits checkpoints and the final model through `splade_common::store` and
//! announces each commit; the [`Hooks`] here add the coordinator's side (position, progress,
//! commits, evaluation scores).
//!
//! TLS: `--tls-ca` (the CA of the coordinator's certificate), `--tls-cert`/`--tls-key` (this worker's client
//! certificate, for a coordinator with `cluster.tls_ca`), or `--config` to take them from `cluster.tls_*`
//! ([`TlsFiles`]).
//!
//! SIGTERM (or Ctrl-C) finishes the current step, leaves the job ([`WorkerSession::leave`]: the
//! coordinator re-forms without counting a restart) and exits 0; a second signal exits at once.
//!
//! With `evaluation.tasks` configured, rank 0 evaluates at `eval_strategy` (without one: every
//! committed checkpoint) and the final model with the code `splade train` evaluates with, writes each task's MTEB
//! `TaskResult` to `<output_dir>/eval/<checkpoint>/<task>.json` and reports NDCG@10 and MRR@10 to
//! the coordinator as typed progress ([`EvalScore`]). A checkpoint is
//! evaluated while the other ranks wait in the next step's collective, so the group's timeout is
//! raised to [`EVAL_COLLECTIVE_TIMEOUT`] when tasks are configured (the final model's evaluation,
//! before rank 0 writes `final/`, keeps the others in the last barrier the same way). An evaluation
//! that fails is logged and training continues.
//!
//! Heartbeats run on the process's tokio runtime's own threads ([`splade_common::runtime`]), so a long step never
//! starves them; the training loop itself runs on the calling thread.
//!
//! Audit outputs ([`NodeOptions`], `splade-worker` flags):
//! - `--dump-gradients PATH`: after the all-reduce of step 1, write the reduced gradients
//!   (safetensors, parameter names) to `PATH.rank<R>` and continue (checks data-parallel equivalence).
//! - `--ledger PATH`: append one JSON line per finished step with the generation, rank,
//!   step, dataset, the rows this rank consumed, `bytes_read` (training records fetched from storage
//!   by this generation so far) and `plan_bytes_read` (data-plan chunks fetched by this generation so far).
//!
//! Data: the assignment points at the coordinator's published data plan (a manifest and chunks of steps,
//! `splade_common::data::artifact`); the worker checks the manifest's sha256, fetches the chunks of the steps
//! it trains (from its generation's start step, a chunk ahead, each checked), reads only its slice of each
//! global batch with ranged reads on a prefetch thread ([`crate::train::fetch`]) and takes the global
//! batch's labels from the chunk. Plan bytes count into `splade_worker_data_bytes_read_total{kind="plan"}`. That plan is the one
//! `splade train` builds for the same config (`crate::train::build_plan`, config order); without a
//! data plan the worker loads every dataset and builds it itself.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use splade_common::config::{C10dBackend, Config};
use splade_common::data::{DataPlanRef, PublishedPlan};
use splade_common::obs::{Registry, WorkerMetrics};
use splade_common::store::checkpoint::{verify_checkpoint, Verify};
use splade_common::store::{block_on, StoreOptions};
use splade_proto::domain::{
    Assignment, CheckpointCommit, CheckpointRef, Directive, EvalScore, JoinRequest, LossParts, ProgressReport,
    StepProgress, WorkerId,
};
use splade_proto::{ClientTls, CoordinatorClient, WorkerSession};
use tch::Device;
use tokio::sync::watch;

use crate::dist::{Backend, GroupOptions, ProcessGroup};
use crate::train::monitor::{resident_bytes, to_obs_stats, EvalRound};
use crate::train::schedule::{self, Control, Hooks, Lead, RunEnd, Schedule};
use crate::train::{BatchSource, GradSync, StepDone, TrainError, TrainPlan, Trainer};

/// Why the worker stopped with an error. Each message says what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting or input that is wrong in itself; the message names it and the fix.
    #[error("{0}")]
    Setup(String),
    /// Training (building the trainer, resuming, a step, a checkpoint) failed; the source says where.
    #[error("{context}: {source}")]
    Train {
        context: String,
        #[source]
        source: TrainError,
    },
    /// A config (`--config`, or the coordinator's in the assignment) is invalid.
    #[error("{context}: {source}")]
    Config {
        context: String,
        #[source]
        source: splade_common::config::ConfigError,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Storage (the data plan, a checkpoint) failed.
    #[error("{context}: {source}")]
    Data {
        context: String,
        #[source]
        source: splade_common::data::DataError,
    },
    /// Storage (a checkpoint's manifest) failed.
    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: splade_common::store::StoreError,
    },
    /// The process group (c10d) could not be formed.
    #[error("{context}: {source}")]
    Dist {
        context: String,
        #[source]
        source: crate::dist::DistError,
    },
    #[error("joining the coordinator at {addr}: {source}")]
    Join {
        addr: String,
        #[source]
        source: splade_proto::ClientError,
    },
    #[error("the job failed: {0}")]
    JobFailed(String),
}

/// Command-line options of `splade-worker`.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Coordinator `HOST:PORT` (or an `http(s)://` URL).
    pub join: String,
    /// `auto`, `cpu`, `cuda:N` or `mps`.
    pub device: String,
    /// Host the other ranks reach this worker on; default `127.0.0.1`.
    pub advertise: Option<String>,
    /// Serve this worker's Prometheus metrics here.
    pub metrics_listen: Option<String>,
    /// Worker id; default `<hostname>-<pid>`.
    pub worker_id: Option<String>,
    /// The join token (from `SPLADE_CLUSTER_TOKEN`).
    pub token: String,
    /// Write the plan of each assignment as `--dump-batches` JSONL (the format `splade train` writes).
    pub dump_batches: Option<PathBuf>,
    /// TLS to the coordinator ([`TlsFiles::client_tls`]); `None`: plain HTTP/2.
    pub tls: Option<ClientTls>,
    /// Append one JSON line per finished step here: generation, rank, step, dataset, the rows this rank consumed
    /// and `bytes_read`.
    pub ledger: Option<PathBuf>,
    /// Write step 1's all-reduced gradients (safetensors, parameter names) to `<path>.rank<R>`.
    pub dump_gradients: Option<PathBuf>,
}

/// Where `splade-worker`'s TLS settings come from: the flags, else the `cluster.tls_*` keys of a config file
/// (this process's identity `tls_cert`/`tls_key`, and `tls_ca` to verify the coordinator; relative paths are
/// relative to the config file, as the coordinator reads them).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM CA that signed the coordinator's certificate (`--tls-ca`).
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain and key, for a coordinator that requires client certificates.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify the coordinator's certificate against; default the host of `--join`.
    pub domain: Option<String>,
    /// A training config whose `cluster.tls_*` fill what the flags leave unset.
    pub config: Option<PathBuf>,
}

impl TlsFiles {
    /// The client's TLS settings, or `None` when neither the flags nor the config name a CA or identity. Errors
    /// name the flag or config key and the fix.
    pub fn client_tls(&self) -> Result<Option<ClientTls>, NodeError> {
        // Each file with where it was named (for errors): the flag, else the config key.
        let flag = |p: &Option<PathBuf>, name: &str| p.clone().map(|p| (p, name.to_string()));
        let mut ca = flag(&self.ca, "--tls-ca");
        let mut cert = flag(&self.cert, "--tls-cert");
        let mut key = flag(&self.key, "--tls-key");
        if let Some(path) = &self.config {
            let cfg = Config::from_path(path).map_err(|source| NodeError::Config { context: "--config".into(), source })?;
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            let c = &cfg.cluster;
            for (slot, value, k) in [(&mut ca, &c.tls_ca, "tls_ca"), (&mut cert, &c.tls_cert, "tls_cert"), (&mut key, &c.tls_key, "tls_key")] {
                if let (None, Some(v)) = (slot.as_ref(), value) {
                    *slot = Some((dir.join(v), format!("cluster.{k} of {}", path.display())));
                }
            }
        }
        let read = |(p, what): &(PathBuf, String)| {
            std::fs::read(p).map_err(|source| NodeError::Io { path: format!("{what}: {}", p.display()), source })
        };
        let identity = match (&cert, &key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            (Some((_, given)), None) | (None, Some((_, given))) => {
                return Err(setup(format!(
                    "{given} is set alone: a client certificate and its key go together (--tls-cert and --tls-key)"
                )))
            }
        };
        match (&ca, identity) {
            (Some(ca), identity) => Ok(Some(ClientTls { ca_pem: read(ca)?, identity, domain: self.domain.clone() })),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(setup(
                "a client certificate needs --tls-ca (or cluster.tls_ca): the CA that signed the coordinator's certificate",
            )),
        }
    }
}

/// How long a collective waits for the other ranks when `evaluation.tasks` is configured: rank 0
/// evaluates a checkpoint while its peers wait in the next step's all-gather.
pub const EVAL_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a collective waits without evaluation (a few checkpoint writes' worth).
const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// How a generation ended.
enum GenEnd {
    /// Trained the last step (and, on rank 0, wrote `final`).
    Finished,
    /// The coordinator moved on (new generation, wait, complete, failed).
    Superseded,
    /// A signal asked this worker to stop; the current step is done.
    Stopped,
}

fn setup(msg: impl Into<String>) -> NodeError {
    NodeError::Setup(msg.into())
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let host: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).collect();
    format!("{host}-{}", std::process::id())
}

/// The config shipped in an assignment: the coordinator's `Config::to_json`.
pub fn config_from_assignment(json: &str) -> Result<Config, NodeError> {
    Config::from_json(json, "<assignment>").map_err(|source| NodeError::Config { context: "the coordinator's config".into(), source })
}

/// The digest of a checkpoint's manifest that the coordinator checks ([`Manifest::digest`]).
///
/// [`Manifest::digest`]: splade_common::store::checkpoint::Manifest::digest
pub fn manifest_digest(m: &splade_common::store::checkpoint::Manifest) -> String {
    m.digest()
}

/// Joins the coordinator and trains until the job completes (`Ok`) or fails. SIGTERM/SIGINT: see the module docs.
pub fn run_node(opts: NodeOptions) -> Result<(), NodeError> {
    let stop = crate::train::stop_on_signals();
    run_node_until(opts, stop)
}

/// [`run_node`] with the stop flag given: when it is set the worker finishes its step, leaves and returns `Ok`.
pub fn run_node_until(opts: NodeOptions, stop: Arc<AtomicBool>) -> Result<(), NodeError> {
    // The process's runtime: the coordinator channel, the heartbeat task and the store clients all live on it.
    let rt = splade_common::runtime::runtime();
    let device = crate::device::parse_device(&opts.device).map_err(setup)?;
    let advertise = opts.advertise.clone().unwrap_or_else(|| "127.0.0.1".into());
    let id = WorkerId::new(opts.worker_id.clone().unwrap_or_else(default_worker_id))
        .map_err(|e| setup(format!("worker id {e}")))?;
    let registry = Registry::new();
    let metrics = WorkerMetrics::new(&registry).map_err(|e| setup(e.to_string()))?;
    let _server = match &opts.metrics_listen {
        Some(addr) => Some(splade_common::obs::serve_metrics(addr, registry.clone()).map_err(|e| setup(e.to_string()))?),
        None => None,
    };
    let client = rt
        .block_on(CoordinatorClient::connect(&opts.join, &opts.token, opts.tls.clone()))
        .map_err(|source| NodeError::Join { addr: opts.join.clone(), source })?;
    let request = JoinRequest {
        worker_id: id.clone(),
        advertise_host: advertise.clone(),
        store_port: None,
        device: format!("{device:?}").to_lowercase(),
    };
    let session = rt
        .block_on(WorkerSession::join(client, request, Duration::from_secs(120)))
        .map_err(|source| NodeError::Join { addr: opts.join.clone(), source })?;
    tracing::info!(worker = %id, coordinator = %opts.join, "joined");
    let mut rx = session.directive();
    let mut last_step = 0u64;
    let leave = |session: WorkerSession| {
        tracing::info!(worker = %id, "stop requested: leaving the job");
        if let Err(e) = rt.block_on(session.leave("stopped by a signal")) {
            tracing::warn!(error = %e, "leave failed; the coordinator drops this worker at its heartbeat timeout");
        }
        Ok(())
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return leave(session);
        }
        let d = rx.borrow_and_update().clone();
        match d {
            Directive::Wait { reason } => {
                tracing::info!(%reason, "waiting");
                metrics.set_rank(None);
                session.set_position(None, last_step);
                match wait_change(rt, &mut rx, &stop) {
                    Wake::Changed => {}
                    Wake::Stop => return leave(session),
                    Wake::Closed => return Err(NodeError::JobFailed("the coordinator session ended".into())),
                }
            }
            Directive::Assign(a) => {
                metrics.set_rank(Some(a.rank));
                tracing::info!(generation = a.generation, rank = a.rank, world = a.world_size, start = a.start_step, "assigned");
                let gen = Generation {
                    rt,
                    session: &session,
                    a: &a,
                    device,
                    advertise: &advertise,
                    metrics: &metrics,
                    stop: &stop,
                    dump_batches: opts.dump_batches.as_deref(),
                    ledger: opts.ledger.as_deref(),
                    dump_gradients: opts.dump_gradients.as_deref(),
                };
                match gen.train(&mut rx, &mut last_step) {
                    Ok(GenEnd::Finished) => {
                        session.set_position(Some(a.generation), last_step);
                        // Wait for the coordinator to declare completion (or re-form).
                        match wait_change(rt, &mut rx, &stop) {
                            Wake::Changed => {}
                            Wake::Stop => return leave(session),
                            Wake::Closed => return Ok(()),
                        }
                    }
                    Ok(GenEnd::Superseded) => {}
                    Ok(GenEnd::Stopped) => return leave(session),
                    Err(e) => {
                        tracing::error!(generation = a.generation, error = %e, "generation failed; waiting for the next");
                        session.set_position(None, last_step);
                        // A failed peer ends the generation on the coordinator once its heartbeat
                        // times out (or it leaves); the directive then changes.
                        if !rx.has_changed().unwrap_or(false) {
                            match wait_change(rt, &mut rx, &stop) {
                                Wake::Changed => {}
                                Wake::Stop => return leave(session),
                                Wake::Closed => return Err(NodeError::JobFailed(e.to_string())),
                            }
                        }
                    }
                }
            }
            Directive::Complete { final_step } => {
                tracing::info!(final_step, "training complete");
                return Ok(());
            }
            Directive::Failed { reason } => return Err(NodeError::JobFailed(reason)),
            Directive::KeepGoing | Directive::Rejoin { .. } => match wait_change(rt, &mut rx, &stop) {
                Wake::Changed => {}
                Wake::Stop => return leave(session),
                Wake::Closed => return Err(NodeError::JobFailed("the coordinator session ended".into())),
            },
        }
    }
}

enum Wake {
    Changed,
    Stop,
    Closed,
}

/// Waits for the next directive or the stop flag.
fn wait_change(rt: &tokio::runtime::Runtime, rx: &mut watch::Receiver<Directive>, stop: &AtomicBool) -> Wake {
    rt.block_on(async {
        loop {
            if stop.load(Ordering::SeqCst) {
                return Wake::Stop;
            }
            match tokio::time::timeout(Duration::from_millis(100), rx.changed()).await {
                Ok(Ok(())) => return Wake::Changed,
                Ok(Err(_)) => return Wake::Closed,
                Err(_) => {}
            }
        }
    })
}

fn superseded(rx: &watch::Receiver<Directive>, generation: u64) -> bool {
    match &*rx.borrow() {
        Directive::Assign(a) => a.generation != generation,
        _ => true,
    }
}

/// One assignment and what the worker holds for it.
struct Generation<'a> {
    rt: &'a tokio::runtime::Runtime,
    session: &'a WorkerSession,
    a: &'a Assignment,
    device: Device,
    advertise: &'a str,
    metrics: &'a WorkerMetrics,
    stop: &'a AtomicBool,
    dump_batches: Option<&'a std::path::Path>,
    ledger: Option<&'a std::path::Path>,
    dump_gradients: Option<&'a std::path::Path>,
}

impl Generation<'_> {
    /// Builds the trainer on the assignment's data plan, restores its checkpoint, forms the group and runs the
    /// training loop on this rank's slices.
    fn train(&self, rx: &mut watch::Receiver<Directive>, last_step: &mut u64) -> Result<GenEnd, NodeError> {
        let a = self.a;
        let cfg = config_from_assignment(&a.config_json)?;
        if let Some(n) = cfg.hardware.num_threads {
            tch::set_num_threads(n as i32);
        }
        // With a published data plan this rank reads only its slices; without one (a coordinator started
        // without `plan_job`) it loads every dataset and plans with the same code (`Trainer::new`).
        let (mut trainer, data_plan) = match &a.data_plan {
            Some(r) => {
                let r = DataPlanRef { location: r.location.clone(), sha256: r.sha256.clone() };
                // The manifest only: the chunks of the steps this rank trains are fetched as it trains them.
                let plan = block_on(PublishedPlan::fetch(&r, &StoreOptions::from_env()))
                    .map_err(|source| NodeError::Data { context: "the assignment's data plan".into(), source })?;
                self.metrics.add_plan_bytes_read(plan.manifest_bytes);
                if plan.manifest.global_batch_size != a.global_batch_size as usize {
                    return Err(setup(format!(
                        "data plan {} has global batches of {} but the assignment {}",
                        r.location, plan.manifest.global_batch_size, a.global_batch_size
                    )));
                }
                tracing::info!(data_plan = r.location, chunks = plan.manifest.chunks.len(), "reading this rank's slices through the data plan");
                let plan = Arc::new(plan);
                let t = Trainer::with_plan(cfg, self.device, plan.clone(), a.micro_batches_per_rank as usize);
                (t.map_err(|source| NodeError::Train { context: "setting up training".into(), source })?, Some(plan))
            }
            None => {
                let t = Trainer::new(cfg, self.device, a.global_batch_size as usize, a.micro_batches_per_rank as usize);
                (t.map_err(|source| NodeError::Train { context: "setting up training".into(), source })?, None)
            }
        };
        if let Some(p) = self.dump_batches {
            // An audit aid: the whole plan, so a published plan's every chunk is fetched (not counted as this
            // rank's plan bytes).
            let whole = match &trainer.plan {
                TrainPlan::Whole(plan) => plan.clone(),
                TrainPlan::Published(plan) => block_on(plan.fetch_batch_plan(&StoreOptions::from_env()))
                    .map_err(|source| NodeError::Data { context: "--dump-batches: the data plan's chunks".into(), source })?
                    .0,
            };
            crate::train::run::dump_batches(&whole, p).map_err(|source| NodeError::Train { context: "--dump-batches".into(), source })?;
        }
        if trainer.state.total_steps != a.total_steps {
            return Err(setup(format!(
                "this worker plans {} steps but the coordinator {}; both must read the same datasets",
                trainer.state.total_steps, a.total_steps
            )));
        }
        if let Some(ckpt) = &a.restore {
            let name = ckpt.location.trim_end_matches('/').rsplit('/').next().unwrap_or(&ckpt.location).to_string();
            let info = block_on(verify_checkpoint(&trainer.output, &name, Verify::Full))
                .map_err(|source| NodeError::Store { context: format!("assigned checkpoint {}", ckpt.location), source })?;
            if manifest_digest(&info.manifest) != ckpt.manifest_sha256 {
                return Err(setup(format!("assigned checkpoint {}: its manifest differs from the committed one", ckpt.location)));
            }
            trainer.resume(Some(&name)).map_err(|source| NodeError::Train { context: format!("resuming {}", ckpt.location), source })?;
            tracing::info!(checkpoint = name, step = trainer.state.global_step, "restored");
        }
        if trainer.state.global_step != a.start_step {
            return Err(setup(format!(
                "assignment starts after step {} but the restored state is at step {}",
                a.start_step, trainer.state.global_step
            )));
        }
        let rank = a.rank as usize;
        let world = a.world_size as usize;
        let schedule = Schedule::new(&trainer.cfg, trainer.state.total_steps).map_err(|source| NodeError::Train { context: "the schedule".into(), source })?.for_cluster();
        let mut lead = match rank {
            0 => Some(Lead::start(&trainer, None).map_err(|source| NodeError::Train { context: "rank 0's reporters".into(), source })?),
            _ => None,
        };
        // Rank 0 evaluates while its peers wait in the next step's collective.
        let evaluates = !trainer.cfg.evaluation.tasks.is_empty();
        let collective_timeout = if evaluates { EVAL_COLLECTIVE_TIMEOUT } else { COLLECTIVE_TIMEOUT };
        let backend = match trainer.cfg.cluster.c10d_backend {
            C10dBackend::Auto => Backend::for_device(self.device),
            C10dBackend::Gloo => Backend::Gloo,
            C10dBackend::Nccl => Backend::Nccl,
        };
        let mut pg = ProcessGroup::connect(
            &a.store_host,
            a.store_port,
            GroupOptions {
                backend,
                rank,
                world_size: world,
                generation: a.generation,
                timeout: collective_timeout,
                gloo_host: Some(self.advertise.to_string()),
            },
        )
        .map_err(|source| NodeError::Dist { context: format!("forming the process group of generation {}", a.generation), source })?;
        let source = match data_plan {
            Some(p) => BatchSource::slices(p, trainer.state.global_step + 1, rank, world, StoreOptions::from_env()),
            None => BatchSource::Loaded,
        };
        self.session.set_position(Some(a.generation), trainer.state.global_step);
        let mut hooks = RankHooks {
            gen: self,
            rx,
            rank,
            world,
            client: self.session.client(),
            last_step,
            bytes_reported: 0,
            plan_bytes_reported: 0,
            final_scores: Vec::new(),
            dump_grads: self.dump_gradients.map(std::path::Path::to_path_buf),
            ledger: self.ledger.map(std::path::Path::to_path_buf),
            stopped_early: false,
        };
        let out = schedule::run(&mut trainer, &source, &mut GradSync::AllReduce(&mut pg), lead.as_mut(), &schedule, &mut hooks)
            .map_err(|source| NodeError::Train { context: format!("generation {}", a.generation), source })?;
        Ok(match out.end {
            RunEnd::Finished { .. } => GenEnd::Finished,
            RunEnd::Superseded => GenEnd::Superseded,
            RunEnd::Interrupted => GenEnd::Stopped,
        })
    }
}

/// What a rank adds around the loop's steps: its position and (rank 0) progress, checkpoint announcements and
/// evaluation scores for the coordinator; worker metrics; the test ledger.
struct RankHooks<'g, 'r> {
    gen: &'g Generation<'g>,
    rx: &'r mut watch::Receiver<Directive>,
    rank: usize,
    world: usize,
    client: CoordinatorClient,
    last_step: &'r mut u64,
    bytes_reported: u64,
    /// Plan-chunk bytes of this generation already added to the metric.
    plan_bytes_reported: u64,
    /// The final model's scores, sent with the last step's report.
    final_scores: Vec<EvalScore>,
    /// `--dump-gradients PATH`: the reduced gradients of step 1 go to `PATH.rank<R>`.
    dump_grads: Option<PathBuf>,
    /// `--ledger PATH`: one JSON line per step with the rows this rank consumed.
    ledger: Option<PathBuf>,
    /// Early stopping ended the run: the last step's report tells the coordinator the job is complete.
    stopped_early: bool,
}

impl RankHooks<'_, '_> {
    /// Sends a report of `step` that `fill` completes; a failed report is logged (training goes on).
    fn report(&mut self, step: u64, what: &str, fill: impl FnOnce(&mut ProgressReport)) {
        let mut report = ProgressReport::new(self.gen.session.worker_id().clone(), self.gen.a.generation, step);
        fill(&mut report);
        if let Err(e) = self.gen.rt.block_on(self.client.report_progress(report)) {
            tracing::warn!(error = %e, "{what} report failed");
        }
    }
}

impl Hooks for RankHooks<'_, '_> {
    fn control(&mut self) -> Control {
        if self.gen.stop.load(Ordering::SeqCst) {
            Control::Stop { checkpoint: false }
        } else if superseded(self.rx, self.gen.a.generation) {
            Control::Superseded
        } else {
            Control::Continue
        }
    }

    fn after_sync(&mut self, trainer: &Trainer) -> Result<(), TrainError> {
        match &self.dump_grads {
            Some(p) if trainer.state.global_step == 0 => dump_gradients(trainer, &p.with_extension(format!("rank{}", self.rank)))
                .map_err(|e| crate::train::TrainError::Other(e.to_string())),
            _ => Ok(()),
        }
    }

    fn after_step(&mut self, _trainer: &Trainer, done: &StepDone) -> Result<(), TrainError> {
        let m = self.gen.metrics;
        if let Some(read) = done.bytes_read {
            m.add_data_bytes_read(read.saturating_sub(self.bytes_reported));
            self.bytes_reported = read;
        }
        if let Some(read) = done.plan_bytes_read {
            m.add_plan_bytes_read(read.saturating_sub(self.plan_bytes_reported));
            self.plan_bytes_reported = read;
        }
        m.record_step(done.stats.step_seconds, done.data_wait);
        if let Some(rss) = resident_bytes() {
            // Host memory of this process, like `splade train` exports for the `cpu` device.
            m.set_device_memory("cpu", rss);
        }
        if let Some(p) = &self.ledger {
            let line = serde_json::json!({
                "generation": self.gen.a.generation, "rank": self.rank, "step": done.stats.step,
                "dataset": done.batch.dataset, "rows": done.rows, "bytes_read": done.bytes_read,
                "plan_bytes_read": done.plan_bytes_read,
            });
            let fail = |e: std::io::Error| TrainError::Other(format!("{}: {e}", p.display()));
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(fail)?;
            writeln!(f, "{line}").map_err(fail)?;
        }
        Ok(())
    }

    fn evaluated(&mut self, trainer: &Trainer, name: &str, step: u64, round: &EvalRound, seconds: f64) {
        let scores = write_eval_results(trainer, round, name, step, seconds);
        if name == "final" {
            self.final_scores = scores;
        } else if !scores.is_empty() {
            self.report(step, "evaluation", |r| r.evals = scores);
        }
    }

    fn checkpoint_written(&mut self, trainer: &Trainer, step: u64, url: &str, seconds: f64) {
        let name = format!("checkpoint-{step}");
        let info = match block_on(verify_checkpoint(&trainer.output, &name, Verify::Sizes)) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(checkpoint = url, error = %e, "cannot read back the committed checkpoint; not announced");
                return;
            }
        };
        // The write time goes with this step's progress before the commit, so the coordinator's exporter has it
        // when it records the checkpoint.
        self.report(step, "checkpoint timing", |r| r.checkpoint_seconds = Some(seconds));
        let commit = CheckpointCommit {
            worker_id: self.gen.session.worker_id().clone(),
            generation: self.gen.a.generation,
            checkpoint: CheckpointRef { step, location: url.to_string(), manifest_sha256: manifest_digest(&info.manifest) },
        };
        match self.gen.rt.block_on(self.client.commit_checkpoint(commit)) {
            Ok(ack) if ack.accepted => tracing::info!(checkpoint = url, seconds, "checkpoint committed"),
            Ok(ack) => tracing::warn!(checkpoint = url, reason = ack.reason, "checkpoint not recorded"),
            Err(e) => tracing::warn!(checkpoint = url, error = %e, "checkpoint announcement failed"),
        }
    }

    fn stopped_early(&mut self, _step: u64) {
        self.stopped_early = true;
    }

    fn step_done(&mut self, _trainer: &Trainer, done: &StepDone, sps: f64) {
        let step = done.stats.step;
        *self.last_step = step;
        self.gen.session.set_position(Some(self.gen.a.generation), step);
        if self.rank != 0 {
            return;
        }
        let stats = &done.stats;
        // The same numbers `splade train` exports: weighted FLOPS terms as loss parts, unweighted FLOPS as the
        // sparsity measure; tokens over the global batch.
        let o = to_obs_stats(stats);
        let train = StepProgress {
            loss: LossParts {
                total: o.loss,
                ranking: o.loss_ranking,
                flops_query: o.loss_flops_query,
                flops_document: o.loss_flops_document,
            },
            flops_query: o.flops_query,
            flops_document: o.flops_document,
            active_dims_query: o.active_dims_query,
            active_dims_document: o.active_dims_document,
            learning_rate: o.learning_rate,
            grad_norm: o.grad_norm,
            epoch: o.epoch,
            samples: o.samples,
            tokens: (stats.tokens * self.world) as u64,
            step_seconds: o.step_seconds,
            samples_per_second: sps,
            allreduce_seconds: done.allreduce_seconds,
            loss_scale: stats.loss_scale,
        };
        let evals = std::mem::take(&mut self.final_scores);
        let stopped_early = self.stopped_early;
        self.report(step, "progress", |r| {
            r.train = Some(train);
            r.evals = evals;
            r.stopped_early = stopped_early;
        });
    }
}

/// Writes each task's MTEB `TaskResult` of the round that evaluated `name` (`checkpoint-<step>`, `step-<step>`
/// or `final`) to `<output_dir>/eval/<name>/<task>.json` and returns the scores the coordinator exports. A file that
/// cannot be written is logged: evaluation never stops training.
fn write_eval_results(trainer: &Trainer, round: &EvalRound, name: &str, step: u64, seconds: f64) -> Vec<EvalScore> {
    let mut scores = Vec::new();
    for (task, s) in &round.tasks {
        let mut extra = serde_json::Map::new();
        extra.insert("model".into(), trainer.output.url_of(name).into());
        extra.insert("global_step".into(), step.into());
        // One round covers every task; its time is each task's `evaluation_time` (exact for one task).
        let result = s.to_task_result(splade_common::eval::task_languages(task, &[]), "local", seconds, extra);
        let rel = format!("eval/{name}/{task}.json");
        let output = &trainer.output;
        let put = async {
            let text = serde_json::to_vec_pretty(&result).map_err(|e| e.to_string())?;
            output.store().put(&output.child(&rel), object_store::PutPayload::from(text)).await.map_err(|e| e.to_string())
        };
        match block_on(put) {
            Ok(_) => tracing::info!(result = trainer.output.url_of(&rel), "evaluation result written"),
            Err(e) => tracing::warn!(result = trainer.output.url_of(&rel), error = %e, "cannot write the evaluation result"),
        }
        let get = |k: &str| s.metrics.get(k).copied().unwrap_or(f64::NAN);
        tracing::info!(checkpoint = name, task, ndcg_at_10 = get("ndcg_at_10"), mrr_at_10 = get("mrr_at_10"), "eval");
        scores.push(EvalScore {
            task: task.clone(),
            step,
            ndcg_at_10: get("ndcg_at_10"),
            mrr_at_10: s.metrics.get("mrr_at_10").copied(),
        });
    }
    scores
}

fn dump_gradients(trainer: &Trainer, path: &std::path::Path) -> Result<(), NodeError> {
    let named: Vec<(String, tch::Tensor)> = trainer
        .model
        .named_parameters()
        .into_iter()
        .filter_map(|(n, p)| {
            let g = p.grad();
            g.defined().then(|| (n, g.to_device(Device::Cpu).contiguous()))
        })
        .collect();
    tch::Tensor::write_safetensors(&named, path).map_err(|e| setup(format!("{}: {e}", path.display())))
}
