//! `splade-worker --join HOST:PORT`: one data-parallel replica of a coordinator's job.
//!
//! The worker joins with the shared token, then follows the coordinator's directives
//! ([`WorkerSession::directive`]): on `Assign` it builds a [`Trainer`] from the shipped config,
//! forms the generation's c10d group, restores the assigned (verified) checkpoint and trains
//! steps with [`Trainer::forward_backward_distributed`] until the job completes or the directive
//! changes (then the group is dropped and the next generation is formed). Rank 0 commits
//! checkpoints and the final model through `splade_common::store` and announces each commit.
//!
//! With `evaluation.tasks` configured, rank 0 evaluates every committed checkpoint and the final
//! model with the code `splade train` evaluates with ([`DuringEval`]), writes each task's MTEB
//! `TaskResult` to `<output_dir>/eval/<checkpoint>/<task>.json` and reports NDCG@10 and MRR@10 to
//! the coordinator as progress keys `eval/<task>/{ndcg_at_10,mrr_at_10,step}`. A checkpoint is
//! evaluated while the other ranks wait in the next step's collective, so the group's timeout is
//! raised to [`EVAL_COLLECTIVE_TIMEOUT`] when tasks are configured; the final model is evaluated
//! after the last barrier, when nobody waits on rank 0. An evaluation that fails is logged and
//! training continues.
//!
//! Heartbeats run on a tokio runtime's own threads, so a long step never starves them; the
//! training loop itself runs on the calling thread.
//!
//! Debug switches (environment, used by the integration tests):
//! - `SPLADE_DEBUG_DUMP_GRADS=PATH`: after the all-reduce of step 1, write the reduced gradients
//!   (safetensors, parameter names) to `PATH.rank<R>` and continue.
//! - `SPLADE_DEBUG_LEDGER=PATH`: append one JSON line per finished step with the generation, rank,
//!   step, dataset, the rows this rank consumed and `bytes_read` (training data fetched from storage
//!   by this generation so far; `null` without a data plan).
//!
//! Data: the assignment points at the coordinator's published data plan; the worker checks its
//! sha256, reads only its slice of each global batch with ranged reads on a prefetch thread
//! ([`crate::train::fetch`]) and takes the global batch's labels from the plan. Without a data plan
//! it loads every dataset and plans itself (as `splade train` does).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use splade_common::config::{C10dBackend, Config};
use splade_common::data::plan::slice_for_rank;
use splade_common::obs::{Registry, WorkerMetrics};
use splade_common::store::block_on;
use splade_common::store::checkpoint::{verify_checkpoint, Verify};
use splade_proto::domain::{
    Assignment, CheckpointCommit, CheckpointRef, Directive, JoinRequest, ProgressReport, WorkerId,
};
use splade_proto::{CoordinatorClient, WorkerSession};
use tch::Device;
use tokio::sync::watch;

use crate::dist::{Backend, GroupOptions, ProcessGroup};
use crate::train::monitor::{resident_bytes, to_obs_stats, DuringEval};
use crate::train::fetch::{global_labels, SliceFetcher};
use crate::train::Trainer;
use splade_common::data::{DataPlan, DataPlanRef};
use splade_common::store::StoreOptions;

/// Why the worker stopped with an error. Each message says what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Setup(String),
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

/// The config shipped in an assignment: `Config::to_json` output from the coordinator, or YAML.
pub fn config_from_assignment(text: &str) -> Result<Config, NodeError> {
    let c = if text.trim_start().starts_with('{') {
        Config::from_json(text, "<assignment>")
    } else {
        Config::from_str(text, "<assignment>")
    };
    c.map_err(|e| setup(format!("the coordinator's config: {e}")))
}

/// sha256 of a checkpoint's manifest as the coordinator and the workers agree to compute it
/// (the pretty JSON of the parsed manifest).
pub fn manifest_digest(m: &splade_common::store::checkpoint::Manifest) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(serde_json::to_vec_pretty(m).expect("manifest serializes")))
}

/// Joins the coordinator and trains until the job completes (`Ok`) or fails.
pub fn run_node(opts: NodeOptions) -> Result<(), NodeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("splade-worker-rpc")
        .build()
        .map_err(|e| setup(format!("cannot start the RPC runtime: {e}")))?;
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
        .block_on(CoordinatorClient::connect(&opts.join, &opts.token, None))
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
    loop {
        let d = rx.borrow_and_update().clone();
        match d {
            Directive::Wait { reason } => {
                tracing::info!(%reason, "waiting");
                metrics.set_rank(None);
                session.set_position(None, last_step);
                if rt.block_on(rx.changed()).is_err() {
                    return Err(NodeError::JobFailed("the coordinator session ended".into()));
                }
            }
            Directive::Assign(a) => {
                metrics.set_rank(Some(a.rank));
                tracing::info!(generation = a.generation, rank = a.rank, world = a.world_size, start = a.start_step, "assigned");
                match train_generation(&rt, &session, &a, device, &advertise, &mut rx, &metrics, &mut last_step) {
                    Ok(GenEnd::Finished) => {
                        session.set_position(Some(a.generation), last_step);
                        // Wait for the coordinator to declare completion (or re-form).
                        if rt.block_on(rx.changed()).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(GenEnd::Superseded) => {}
                    Err(e) => {
                        tracing::error!(generation = a.generation, error = %e, "generation failed; waiting for the next");
                        session.set_position(None, last_step);
                        // A failed peer ends the generation on the coordinator once its heartbeat
                        // times out; the directive then changes.
                        if !rx.has_changed().unwrap_or(false) && rt.block_on(rx.changed()).is_err() {
                            return Err(NodeError::JobFailed(e.to_string()));
                        }
                    }
                }
            }
            Directive::Complete { final_step } => {
                tracing::info!(final_step, "training complete");
                return Ok(());
            }
            Directive::Failed { reason } => return Err(NodeError::JobFailed(reason)),
            Directive::KeepGoing | Directive::Rejoin { .. } => {
                if rt.block_on(rx.changed()).is_err() {
                    return Err(NodeError::JobFailed("the coordinator session ended".into()));
                }
            }
        }
    }
}

fn superseded(rx: &watch::Receiver<Directive>, generation: u64) -> bool {
    match &*rx.borrow() {
        Directive::Assign(a) => a.generation != generation,
        _ => true,
    }
}

#[allow(clippy::too_many_arguments)]
fn train_generation(
    rt: &tokio::runtime::Runtime,
    session: &WorkerSession,
    a: &Assignment,
    device: Device,
    advertise: &str,
    rx: &mut watch::Receiver<Directive>,
    metrics: &WorkerMetrics,
    last_step: &mut u64,
) -> Result<GenEnd, NodeError> {
    let cfg = config_from_assignment(&a.config_yaml)?;
    if let Some(n) = cfg.hardware.num_threads {
        tch::set_num_threads(n as i32);
    }
    // With a published data plan this worker reads only its slices; without one (an older coordinator)
    // it loads every dataset and plans itself.
    let data_plan = match &a.data_plan {
        Some(r) => {
            let r = DataPlanRef { location: r.location.clone(), sha256: r.sha256.clone() };
            let plan = block_on(DataPlan::fetch(&r, &StoreOptions::from_env()))
                .map_err(|e| setup(format!("the assignment's data plan: {e}")))?;
            if plan.global_batch_size != a.global_batch_size as usize {
                return Err(setup(format!(
                    "data plan {} has global batches of {} but the assignment {}",
                    r.location, plan.global_batch_size, a.global_batch_size
                )));
            }
            tracing::info!(data_plan = r.location, "reading this rank's slices through the data plan");
            Some(plan)
        }
        None => None,
    };
    let mut trainer = match &data_plan {
        Some(p) => Trainer::with_plan(cfg, device, p.plan(), a.micro_batches_per_rank as usize),
        None => Trainer::new(cfg, device, a.global_batch_size as usize, a.micro_batches_per_rank as usize),
    }
    .map_err(|e| setup(e.to_string()))?;
    if trainer.state.total_steps != a.total_steps {
        return Err(setup(format!(
            "this worker plans {} steps but the coordinator {}; both must read the same datasets",
            trainer.state.total_steps, a.total_steps
        )));
    }
    if let Some(ckpt) = &a.restore {
        let name = ckpt.location.trim_end_matches('/').rsplit('/').next().unwrap_or(&ckpt.location).to_string();
        let info = block_on(verify_checkpoint(&trainer.output, &name, Verify::Full))
            .map_err(|e| setup(format!("assigned checkpoint {}: {e}", ckpt.location)))?;
        if manifest_digest(&info.manifest) != ckpt.manifest_sha256 {
            return Err(setup(format!("assigned checkpoint {}: its manifest differs from the committed one", ckpt.location)));
        }
        trainer.resume(Some(&name)).map_err(|e| setup(e.to_string()))?;
        tracing::info!(checkpoint = name, step = trainer.state.global_step, "restored");
    }
    if trainer.state.global_step != a.start_step {
        return Err(setup(format!(
            "assignment starts after step {} but the restored state is at step {}",
            a.start_step, trainer.state.global_step
        )));
    }
    let evals = if a.rank == 0 && !trainer.cfg.evaluation.tasks.is_empty() {
        Some(DuringEval::load(&trainer.cfg).map_err(|e| setup(e.to_string()))?)
    } else {
        None
    };
    let collective_timeout =
        if trainer.cfg.evaluation.tasks.is_empty() { COLLECTIVE_TIMEOUT } else { EVAL_COLLECTIVE_TIMEOUT };
    let backend = match trainer.cfg.cluster.c10d_backend {
        C10dBackend::Auto => Backend::for_device(device),
        C10dBackend::Gloo => Backend::Gloo,
        C10dBackend::Nccl => Backend::Nccl,
    };
    let mut pg = ProcessGroup::connect(
        &a.store_host,
        a.store_port,
        GroupOptions {
            backend,
            rank: a.rank as usize,
            world_size: a.world_size as usize,
            generation: a.generation,
            timeout: collective_timeout,
            gloo_host: Some(advertise.to_string()),
        },
    )
    .map_err(|e| setup(e.to_string()))?;
    let rank = a.rank as usize;
    let world = a.world_size as usize;
    let total = trainer.state.total_steps;
    let save_every = match trainer.cfg.training.save_strategy {
        splade_common::config::SaveStrategy::Steps => {
            let v = trainer.cfg.training.save_steps;
            if v < 1.0 { ((total as f64 * v).ceil() as u64).max(1) } else { v as u64 }
        }
        _ => 0,
    };
    let dump_grads = std::env::var_os("SPLADE_DEBUG_DUMP_GRADS").map(PathBuf::from);
    let ledger = std::env::var_os("SPLADE_DEBUG_LEDGER").map(PathBuf::from);
    let fetcher = data_plan
        .as_ref()
        .map(|p| SliceFetcher::start(p, trainer.state.global_step + 1, rank, world, StoreOptions::from_env()));
    let mut bytes_reported = 0u64;
    let mut client = session.client();
    session.set_position(Some(a.generation), trainer.state.global_step);
    let t_start = Instant::now();
    let mut samples = 0u64;
    while trainer.state.global_step < total {
        if superseded(rx, a.generation) {
            return Ok(GenEnd::Superseded);
        }
        let t0 = Instant::now();
        let step = trainer.state.global_step + 1;
        let batch = trainer.plan.step(step).cloned().ok_or_else(|| setup(format!("step {step} is past the plan")))?;
        let lr = trainer.learning_rate();
        trainer.model.vs.unfreeze();
        let data_wait;
        let rows = slice_for_rank(&batch, rank, world);
        let (mut stats, ar) = match (&fetcher, &data_plan) {
            (Some(f), Some(p)) => {
                let owned = f.next(step).map_err(|e| setup(format!("step {step}: {e}")))?;
                let local: Vec<&splade_common::data::Example> = owned.iter().collect();
                let labels = global_labels(p, &batch.dataset, &batch.rows);
                let read = f.bytes_read();
                metrics.add_data_bytes_read(read - bytes_reported);
                bytes_reported = read;
                data_wait = t0.elapsed().as_secs_f64();
                trainer.forward_backward_slice(&local, labels, batch.rows.len(), &mut pg)
            }
            _ => {
                let global = trainer.examples(&batch, &batch.rows);
                let local = trainer.examples(&batch, rows);
                data_wait = t0.elapsed().as_secs_f64();
                trainer.forward_backward_distributed(&global, &local, &mut pg)
            }
        }
        .map_err(|e| setup(e.to_string()))?;
        if step == 1 {
            if let Some(p) = &dump_grads {
                dump_gradients(&trainer, &p.with_extension(format!("rank{rank}")))?;
            }
        }
        trainer.finish_step(&mut stats, &batch, lr, t0);
        samples += batch.rows.len() as u64;
        metrics.record_step(stats.step_seconds, data_wait);
        if let Some(rss) = resident_bytes() {
            // Host memory of this process, like `splade train` exports for the `cpu` device.
            metrics.set_device_memory("cpu", rss);
        }
        if let Some(p) = &ledger {
            let line = serde_json::json!({
                "generation": a.generation, "rank": rank, "step": step, "dataset": batch.dataset, "rows": rows,
                "bytes_read": fetcher.as_ref().map(SliceFetcher::bytes_read),
            });
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p)
                .map_err(|e| setup(format!("{}: {e}", p.display())))?;
            writeln!(f, "{line}").map_err(|e| setup(format!("{}: {e}", p.display())))?;
        }
        if step == total && rank == 0 {
            // The final model before the last position is reported: the coordinator completes the
            // job when it sees the last step.
            save_final(&trainer)?;
        }
        if step == total {
            // Nobody reports the last step before rank 0 has written `final`.
            pg.barrier().map_err(|e| setup(e.to_string()))?;
        }
        // Nobody waits on rank 0 after the last barrier; the scores go with the last step's report.
        let final_eval = match (&evals, step == total) {
            (Some(ev), true) => evaluate_committed(&trainer, ev, "final", step),
            _ => Vec::new(),
        };
        *last_step = step;
        session.set_position(Some(a.generation), step);
        if rank == 0 {
            let sps = samples as f64 / t_start.elapsed().as_secs_f64().max(1e-9);
            // The same numbers `splade train` exports, in the coordinator's progress keys
            // (`splade_coordinator::metrics` reads them back): weighted FLOPS terms as loss parts,
            // unweighted FLOPS as the sparsity measure.
            let o = to_obs_stats(&stats);
            let m = [
                ("loss", o.loss),
                ("loss_ranking", o.loss_ranking),
                ("loss_flops_query", o.loss_flops_query),
                ("loss_flops_document", o.loss_flops_document),
                ("flops_query", o.flops_query),
                ("flops_document", o.flops_document),
                ("active_dims_query", o.active_dims_query),
                ("active_dims_document", o.active_dims_document),
                ("learning_rate", o.learning_rate),
                ("grad_norm", o.grad_norm),
                ("epoch", o.epoch),
                ("samples", o.samples as f64),
                ("tokens", (stats.tokens * world) as f64),
                ("step_seconds", o.step_seconds),
                ("samples_per_second", sps),
                ("allreduce_seconds", ar.seconds),
            ];
            let report = ProgressReport {
                worker_id: session.worker_id().clone(),
                generation: a.generation,
                step,
                metrics: m
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .chain(stats.loss_scale.map(|s| ("loss_scale".to_string(), s)))
                    .chain(final_eval)
                    .collect(),
            };
            if let Err(e) = rt.block_on(client.report_progress(report)) {
                tracing::warn!(error = %e, "progress report failed");
            }
            tracing::info!(step, loss = format!("{:.5}", stats.loss), samples_per_s = format!("{sps:.2}"), "train");
            if save_every > 0 && step % save_every == 0 && step < total {
                let t = Instant::now();
                let url = trainer.save_checkpoint().map_err(|e| setup(e.to_string()))?;
                let name = format!("checkpoint-{step}");
                let info = block_on(verify_checkpoint(&trainer.output, &name, Verify::Sizes))
                    .map_err(|e| setup(e.to_string()))?;
                // The write time goes with this step's progress before the commit, so the
                // coordinator's exporter has it when it records the checkpoint.
                let timing = ProgressReport {
                    worker_id: session.worker_id().clone(),
                    generation: a.generation,
                    step,
                    metrics: [("checkpoint_seconds".to_string(), t.elapsed().as_secs_f64())].into_iter().collect(),
                };
                if let Err(e) = rt.block_on(client.report_progress(timing)) {
                    tracing::warn!(error = %e, "checkpoint timing report failed");
                }
                let commit = CheckpointCommit {
                    worker_id: session.worker_id().clone(),
                    generation: a.generation,
                    checkpoint: CheckpointRef { step, location: url.clone(), manifest_sha256: manifest_digest(&info.manifest) },
                };
                match rt.block_on(client.commit_checkpoint(commit)) {
                    Ok(ack) if ack.accepted => {
                        tracing::info!(checkpoint = url, seconds = t.elapsed().as_secs_f64(), "checkpoint committed")
                    }
                    Ok(ack) => tracing::warn!(checkpoint = url, reason = ack.reason, "checkpoint not recorded"),
                    Err(e) => tracing::warn!(checkpoint = url, error = %e, "checkpoint announcement failed"),
                }
                if let Some(ev) = &evals {
                    let scores = evaluate_committed(&trainer, ev, &name, step);
                    if !scores.is_empty() {
                        let report = ProgressReport {
                            worker_id: session.worker_id().clone(),
                            generation: a.generation,
                            step,
                            metrics: scores.into_iter().collect(),
                        };
                        if let Err(e) = rt.block_on(client.report_progress(report)) {
                            tracing::warn!(error = %e, "evaluation report failed");
                        }
                    }
                }
            }
        }
    }
    Ok(GenEnd::Finished)
}

/// Evaluates the model rank 0 just committed as `name` (`checkpoint-<step>` or `final`) on every
/// configured task, writes each task's MTEB `TaskResult` to `<output_dir>/eval/<name>/<task>.json`
/// and returns the progress keys the coordinator exports: `eval/<task>/ndcg_at_10`,
/// `eval/<task>/mrr_at_10` and `eval/<task>/step`. Empty (after a warning) when the evaluation
/// fails: evaluation never stops training.
fn evaluate_committed(trainer: &Trainer, evals: &DuringEval, name: &str, step: u64) -> Vec<(String, f64)> {
    let t0 = Instant::now();
    let round = match evals.run(&trainer.model) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(checkpoint = name, error = %e, "evaluation failed; training continues");
            return Vec::new();
        }
    };
    // One round covers every task; its time is each task's `evaluation_time` (exact for one task).
    let seconds = t0.elapsed().as_secs_f64();
    let mut keys = Vec::new();
    for (task, s) in &round.tasks {
        let mut extra = serde_json::Map::new();
        extra.insert("model".into(), trainer.output.url_of(name).into());
        extra.insert("global_step".into(), step.into());
        let result = s.to_task_result(vec!["nob-Latn".into()], "local", seconds, extra);
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
        keys.push((format!("eval/{task}/ndcg_at_10"), get("ndcg_at_10")));
        keys.push((format!("eval/{task}/mrr_at_10"), get("mrr_at_10")));
        keys.push((format!("eval/{task}/step"), step as f64));
    }
    keys
}

fn save_final(trainer: &Trainer) -> Result<(), NodeError> {
    use splade_common::store::checkpoint::commit_checkpoint;
    let staging = tempfile::tempdir().map_err(|e| setup(format!("cannot create a staging dir: {e}")))?;
    trainer.model.save(staging.path()).map_err(|e| setup(e.to_string()))?;
    block_on(commit_checkpoint(&trainer.output, "final", trainer.state.global_step, staging.path()))
        .map_err(|e| setup(e.to_string()))?;
    tracing::info!(model = trainer.output.url_of("final"), "final model written");
    Ok(())
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
