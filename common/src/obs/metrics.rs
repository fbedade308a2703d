//! The canonical Prometheus series of the SPLADE system: every metric name, help text and unit lives
//! here, so the coordinator, the workers, `splade train --metrics-listen`, the Grafana dashboard and
//! the alert rules all agree on one vocabulary.
//!
//! Three groups, each registered on a caller-owned [`Registry`]:
//!
//! * [`TrainingMetrics`] — the trainer series (step, epoch, throughput, loss and its parts, sparsity,
//!   optimiser state, all-reduce and checkpoint timings, evaluation). The coordinator exports them
//!   for the whole job; `splade train` exports them for its single process.
//! * [`ClusterMetrics`] — coordinator-only job health (workers alive, generation, restarts).
//! * [`WorkerMetrics`] — per-process series every worker (and `splade train`) exports: step-time
//!   histogram, time waiting for data, device memory.
//!
//! Names follow the Prometheus conventions: a `splade_` namespace, base units in the name
//! (`_seconds`, `_bytes`), `_total` on counters, and no unit-less rates where a counter would do
//! (the `_per_second` gauges exist only because the trainer already measures them over its own
//! window; dashboards use `rate()` of the `_total` counters).
//!
//! Recording is lock-free: every handle is a pre-resolved atomic series of the `prometheus` crate,
//! so a training step never waits for a scrape. Only [`TrainingMetrics::record_eval`] resolves a
//! label (the task name) through the vector's read lock, once per evaluation.

use prometheus::{
    Counter, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::ObsError;

/// Every metric family name this module can export, in registration order, with its Prometheus
/// type. Series that carry labels (eval per task, device memory per device) appear in a scrape only
/// after their first value is recorded.
pub const METRIC_FAMILIES: &[(&str, &str)] = &[
    // TrainingMetrics
    (names::GLOBAL_STEP, "gauge"),
    (names::EPOCH, "gauge"),
    (names::SAMPLES_TOTAL, "counter"),
    (names::TOKENS_TOTAL, "counter"),
    (names::SAMPLES_PER_SECOND, "gauge"),
    (names::TOKENS_PER_SECOND, "gauge"),
    (names::LOSS, "gauge"),
    (names::LOSS_PART, "gauge"),
    (names::FLOPS, "gauge"),
    (names::ACTIVE_DIMS, "gauge"),
    (names::LEARNING_RATE, "gauge"),
    (names::GRAD_NORM, "gauge"),
    (names::ALLREDUCE_SECONDS, "histogram"),
    (names::CHECKPOINT_WRITE_SECONDS, "histogram"),
    (names::CHECKPOINTS_TOTAL, "counter"),
    (names::CHECKPOINT_LAST_STEP, "gauge"),
    (names::EVAL_NDCG_AT_10, "gauge"),
    (names::EVAL_MRR_AT_10, "gauge"),
    (names::EVAL_STEP, "gauge"),
    (names::LAST_STEP_TIMESTAMP, "gauge"),
    // ClusterMetrics
    (names::WORKERS_ALIVE, "gauge"),
    (names::WORKERS_EXPECTED, "gauge"),
    (names::GENERATION, "gauge"),
    (names::RESTARTS_TOTAL, "counter"),
    // WorkerMetrics
    (names::WORKER_RANK, "gauge"),
    (names::WORKER_STEPS_TOTAL, "counter"),
    (names::WORKER_STEP_SECONDS, "histogram"),
    (names::WORKER_DATA_WAIT_SECONDS, "counter"),
    (names::WORKER_DEVICE_MEMORY_BYTES, "gauge"),
    (names::WORKER_DATA_BYTES_READ, "counter"),
];

/// Metric family names, as they appear in `/metrics` (histograms add `_bucket`, `_sum`, `_count`;
/// counters already end in `_total`).
pub mod names {
    /// Optimiser steps completed by the job (gauge: it moves back when training resumes from an
    /// older checkpoint).
    pub const GLOBAL_STEP: &str = "splade_train_global_step";
    /// Fractional epoch: passes over the training set so far.
    pub const EPOCH: &str = "splade_train_epoch";
    /// Training examples (query + positive + negatives) consumed.
    pub const SAMPLES_TOTAL: &str = "splade_train_samples_total";
    /// Non-padding tokens encoded (queries and documents).
    pub const TOKENS_TOTAL: &str = "splade_train_tokens_total";
    /// Examples per second over the last step.
    pub const SAMPLES_PER_SECOND: &str = "splade_train_samples_per_second";
    /// Tokens per second over the last step.
    pub const TOKENS_PER_SECOND: &str = "splade_train_tokens_per_second";
    /// Total training loss of the last step.
    pub const LOSS: &str = "splade_train_loss";
    /// Loss parts, label `part` = `ranking` | `flops_query` | `flops_document` (the FLOPS parts are
    /// already multiplied by their regularisation weight).
    pub const LOSS_PART: &str = "splade_train_loss_part";
    /// FLOPS measure of the batch (sum over vocabulary of the squared mean activation), label
    /// `side` = `query` | `document`.
    pub const FLOPS: &str = "splade_train_flops";
    /// Mean number of non-zero vocabulary dimensions per vector, label `side`.
    pub const ACTIVE_DIMS: &str = "splade_train_active_dims";
    /// Learning rate used for the last step.
    pub const LEARNING_RATE: &str = "splade_train_learning_rate";
    /// Global L2 norm of the gradient before clipping.
    pub const GRAD_NORM: &str = "splade_train_grad_norm";
    /// Wall time of the gradient all-reduce per step.
    pub const ALLREDUCE_SECONDS: &str = "splade_train_allreduce_seconds";
    /// Wall time to write (and commit) one checkpoint.
    pub const CHECKPOINT_WRITE_SECONDS: &str = "splade_checkpoint_write_seconds";
    /// Checkpoints committed.
    pub const CHECKPOINTS_TOTAL: &str = "splade_checkpoints_committed_total";
    /// Global step of the last committed checkpoint.
    pub const CHECKPOINT_LAST_STEP: &str = "splade_checkpoint_last_committed_step";
    /// NDCG@10 of the last evaluation, label `task`.
    pub const EVAL_NDCG_AT_10: &str = "splade_eval_ndcg_at_10";
    /// MRR@10 of the last evaluation, label `task`.
    pub const EVAL_MRR_AT_10: &str = "splade_eval_mrr_at_10";
    /// Global step of the last evaluation, label `task`.
    pub const EVAL_STEP: &str = "splade_eval_global_step";
    /// Unix time of the last completed step (drives the no-progress alert).
    pub const LAST_STEP_TIMESTAMP: &str = "splade_train_last_step_timestamp_seconds";
    /// Workers currently in the coordinator's membership.
    pub const WORKERS_ALIVE: &str = "splade_cluster_workers_alive";
    /// Workers the job is configured to run with.
    pub const WORKERS_EXPECTED: &str = "splade_cluster_workers_expected";
    /// Membership generation: increases every time the worker set is re-formed.
    pub const GENERATION: &str = "splade_cluster_generation";
    /// Times training was restarted from a checkpoint (worker lost or joined, failure).
    pub const RESTARTS_TOTAL: &str = "splade_cluster_restarts_total";
    /// This worker's rank in the current generation (-1 before it has one).
    pub const WORKER_RANK: &str = "splade_worker_rank";
    /// Steps this process completed.
    pub const WORKER_STEPS_TOTAL: &str = "splade_worker_steps_total";
    /// Wall time of one training step on this process (forward, backward, all-reduce, update).
    pub const WORKER_STEP_SECONDS: &str = "splade_worker_step_seconds";
    /// Time this process spent waiting for the next batch (rate() = fraction of time starved).
    pub const WORKER_DATA_WAIT_SECONDS: &str = "splade_worker_data_wait_seconds_total";
    /// Device memory held by the process, label `device` (e.g. `cuda:0`, `cpu`).
    pub const WORKER_DEVICE_MEMORY_BYTES: &str = "splade_worker_device_memory_bytes";
    /// Bytes of training data this process fetched from storage, label `kind`: `records` (its slices only,
    /// with ranged reads) or `plan` (the data plan's manifest and the chunks of the steps it trains).
    pub const WORKER_DATA_BYTES_READ: &str = "splade_worker_data_bytes_read_total";
}

/// What one optimiser step measured; the trainer fills it in and hands it to
/// [`TrainingMetrics::record_step`] and, through [`StepStats::scalars`], to the reporters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    /// Global step after this update (1 for the first step).
    pub step: u64,
    /// Fractional epoch after this step.
    pub epoch: f64,
    /// Examples in this step's global batch.
    pub samples: u64,
    /// Non-padding tokens encoded in this step (queries and documents).
    pub tokens: u64,
    /// Wall time of the step, used for the per-second rates.
    pub step_seconds: f64,
    /// Total loss.
    pub loss: f64,
    /// Ranking (contrastive / distillation) part of the loss.
    pub loss_ranking: f64,
    /// Weighted FLOPS regulariser of the queries.
    pub loss_flops_query: f64,
    /// Weighted FLOPS regulariser of the documents.
    pub loss_flops_document: f64,
    /// Unweighted FLOPS measure of the query batch.
    pub flops_query: f64,
    /// Unweighted FLOPS measure of the document batch.
    pub flops_document: f64,
    /// Mean non-zero dimensions per query vector.
    pub active_dims_query: f64,
    /// Mean non-zero dimensions per document vector.
    pub active_dims_document: f64,
    /// Learning rate of this step.
    pub learning_rate: f64,
    /// Gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// All-reduce wall time; `None` on a single process.
    pub allreduce_seconds: Option<f64>,
}

impl StepStats {
    /// The step as named scalars for [`super::Reporter::log_scalars`], in the `train/...` namespace
    /// TensorBoard and MLflow users expect. Derived rates are included; `allreduce_seconds` only
    /// when present.
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("train/loss", self.loss),
            ("train/loss_ranking", self.loss_ranking),
            ("train/loss_flops_query", self.loss_flops_query),
            ("train/loss_flops_document", self.loss_flops_document),
            ("train/flops_query", self.flops_query),
            ("train/flops_document", self.flops_document),
            ("train/active_dims_query", self.active_dims_query),
            ("train/active_dims_document", self.active_dims_document),
            ("train/learning_rate", self.learning_rate),
            ("train/grad_norm", self.grad_norm),
            ("train/epoch", self.epoch),
            ("train/step_seconds", self.step_seconds),
            (
                "train/samples_per_second",
                per_second(self.samples, self.step_seconds),
            ),
            (
                "train/tokens_per_second",
                per_second(self.tokens, self.step_seconds),
            ),
        ];
        if let Some(s) = self.allreduce_seconds {
            out.push(("train/allreduce_seconds", s));
        }
        out
    }
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn now_unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Buckets for step and all-reduce times: 5 ms to ~80 s, doubling.
fn time_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.005, 2.0, 15).expect("static bucket layout is valid")
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, ObsError> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// The trainer series (see the module docs). Cheap to clone; all clones update the same series.
#[derive(Clone)]
pub struct TrainingMetrics {
    global_step: IntGauge,
    epoch: Gauge,
    samples_total: IntCounter,
    tokens_total: IntCounter,
    samples_per_second: Gauge,
    tokens_per_second: Gauge,
    loss: Gauge,
    loss_ranking: Gauge,
    loss_flops_query: Gauge,
    loss_flops_document: Gauge,
    flops_query: Gauge,
    flops_document: Gauge,
    active_dims_query: Gauge,
    active_dims_document: Gauge,
    learning_rate: Gauge,
    grad_norm: Gauge,
    allreduce_seconds: Histogram,
    checkpoint_write_seconds: Histogram,
    checkpoints_total: IntCounter,
    checkpoint_last_step: IntGauge,
    eval_ndcg: GaugeVec,
    eval_mrr: GaugeVec,
    eval_step: IntGaugeVec,
    last_step_timestamp: Gauge,
}

impl TrainingMetrics {
    /// Registers the trainer series on `registry`. Fails only if a series of the same name is
    /// already registered there (e.g. `new` called twice on one registry).
    pub fn new(registry: &Registry) -> Result<Self, ObsError> {
        use names::*;
        let r = registry;
        let loss_part = register(
            r,
            GaugeVec::new(
                Opts::new(
                    LOSS_PART,
                    "Parts of the training loss of the last step (FLOPS parts weighted)",
                ),
                &["part"],
            )?,
        )?;
        let flops = register(
            r,
            GaugeVec::new(
                Opts::new(FLOPS, "FLOPS measure of the last batch: sum over vocabulary of the squared mean activation"),
                &["side"],
            )?,
        )?;
        let active = register(
            r,
            GaugeVec::new(
                Opts::new(
                    ACTIVE_DIMS,
                    "Mean number of non-zero vocabulary dimensions per vector in the last batch",
                ),
                &["side"],
            )?,
        )?;
        Ok(Self {
            global_step: register(
                r,
                IntGauge::new(GLOBAL_STEP, "Optimiser steps completed by the job")?,
            )?,
            epoch: register(
                r,
                Gauge::new(
                    EPOCH,
                    "Fractional epoch: passes over the training set so far",
                )?,
            )?,
            samples_total: register(
                r,
                IntCounter::new(SAMPLES_TOTAL, "Training examples consumed")?,
            )?,
            tokens_total: register(
                r,
                IntCounter::new(TOKENS_TOTAL, "Non-padding tokens encoded")?,
            )?,
            samples_per_second: register(
                r,
                Gauge::new(
                    SAMPLES_PER_SECOND,
                    "Training examples per second over the last step",
                )?,
            )?,
            tokens_per_second: register(
                r,
                Gauge::new(TOKENS_PER_SECOND, "Tokens per second over the last step")?,
            )?,
            loss: register(r, Gauge::new(LOSS, "Total training loss of the last step")?)?,
            loss_ranking: loss_part.with_label_values(&["ranking"]),
            loss_flops_query: loss_part.with_label_values(&["flops_query"]),
            loss_flops_document: loss_part.with_label_values(&["flops_document"]),
            flops_query: flops.with_label_values(&["query"]),
            flops_document: flops.with_label_values(&["document"]),
            active_dims_query: active.with_label_values(&["query"]),
            active_dims_document: active.with_label_values(&["document"]),
            learning_rate: register(
                r,
                Gauge::new(LEARNING_RATE, "Learning rate of the last step")?,
            )?,
            grad_norm: register(
                r,
                Gauge::new(GRAD_NORM, "Global L2 norm of the gradient before clipping")?,
            )?,
            allreduce_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        ALLREDUCE_SECONDS,
                        "Wall time of the gradient all-reduce per step",
                    )
                    .buckets(time_buckets()),
                )?,
            )?,
            checkpoint_write_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        CHECKPOINT_WRITE_SECONDS,
                        "Wall time to write and commit one checkpoint",
                    )
                    .buckets(prometheus::exponential_buckets(0.1, 2.0, 14)?),
                )?,
            )?,
            checkpoints_total: register(
                r,
                IntCounter::new(CHECKPOINTS_TOTAL, "Checkpoints committed")?,
            )?,
            checkpoint_last_step: register(
                r,
                IntGauge::new(
                    CHECKPOINT_LAST_STEP,
                    "Global step of the last committed checkpoint",
                )?,
            )?,
            eval_ndcg: register(
                r,
                GaugeVec::new(
                    Opts::new(EVAL_NDCG_AT_10, "NDCG@10 of the last evaluation"),
                    &["task"],
                )?,
            )?,
            eval_mrr: register(
                r,
                GaugeVec::new(
                    Opts::new(EVAL_MRR_AT_10, "MRR@10 of the last evaluation"),
                    &["task"],
                )?,
            )?,
            eval_step: register(
                r,
                IntGaugeVec::new(
                    Opts::new(EVAL_STEP, "Global step of the last evaluation"),
                    &["task"],
                )?,
            )?,
            last_step_timestamp: register(
                r,
                Gauge::new(
                    LAST_STEP_TIMESTAMP,
                    "Unix time at which the last training step completed",
                )?,
            )?,
        })
    }

    /// Records one optimiser step. Non-finite loss values are exported as they are (a NaN loss is
    /// exactly what a person watching the dashboard needs to see).
    pub fn record_step(&self, s: &StepStats) {
        self.global_step
            .set(i64::try_from(s.step).unwrap_or(i64::MAX));
        self.epoch.set(s.epoch);
        self.samples_total.inc_by(s.samples);
        self.tokens_total.inc_by(s.tokens);
        self.samples_per_second
            .set(per_second(s.samples, s.step_seconds));
        self.tokens_per_second
            .set(per_second(s.tokens, s.step_seconds));
        self.loss.set(s.loss);
        self.loss_ranking.set(s.loss_ranking);
        self.loss_flops_query.set(s.loss_flops_query);
        self.loss_flops_document.set(s.loss_flops_document);
        self.flops_query.set(s.flops_query);
        self.flops_document.set(s.flops_document);
        self.active_dims_query.set(s.active_dims_query);
        self.active_dims_document.set(s.active_dims_document);
        self.learning_rate.set(s.learning_rate);
        self.grad_norm.set(s.grad_norm);
        if let Some(t) = s.allreduce_seconds {
            self.allreduce_seconds.observe(t);
        }
        self.last_step_timestamp.set(now_unix_seconds());
    }

    /// Records an evaluation of `task` (the eval task's label in the config) at global `step`.
    pub fn record_eval(&self, task: &str, step: u64, ndcg_at_10: f64, mrr_at_10: f64) {
        self.eval_ndcg.with_label_values(&[task]).set(ndcg_at_10);
        self.eval_mrr.with_label_values(&[task]).set(mrr_at_10);
        self.eval_step
            .with_label_values(&[task])
            .set(i64::try_from(step).unwrap_or(i64::MAX));
    }

    /// Records a committed checkpoint at global `step` that took `write_seconds` to write.
    pub fn record_checkpoint(&self, step: u64, write_seconds: f64) {
        self.checkpoint_write_seconds.observe(write_seconds);
        self.checkpoints_total.inc();
        self.checkpoint_last_step
            .set(i64::try_from(step).unwrap_or(i64::MAX));
    }

    /// Sets the global step without a full step record (on resume from a checkpoint), so the
    /// dashboard shows where training restarted.
    pub fn set_global_step(&self, step: u64) {
        self.global_step
            .set(i64::try_from(step).unwrap_or(i64::MAX));
        self.last_step_timestamp.set(now_unix_seconds());
    }
}

/// Coordinator-only job health. Cheap to clone.
#[derive(Clone)]
pub struct ClusterMetrics {
    workers_alive: IntGauge,
    workers_expected: IntGauge,
    generation: IntGauge,
    restarts_total: IntCounter,
}

impl ClusterMetrics {
    /// Registers the cluster series on `registry` (alongside [`TrainingMetrics`] on the
    /// coordinator's registry).
    pub fn new(registry: &Registry) -> Result<Self, ObsError> {
        use names::*;
        let r = registry;
        Ok(Self {
            workers_alive: register(
                r,
                IntGauge::new(WORKERS_ALIVE, "Workers currently in the membership")?,
            )?,
            workers_expected: register(
                r,
                IntGauge::new(
                    WORKERS_EXPECTED,
                    "Workers the job is configured to run with",
                )?,
            )?,
            generation: register(
                r,
                IntGauge::new(
                    GENERATION,
                    "Membership generation; increases whenever the worker set is re-formed",
                )?,
            )?,
            restarts_total: register(
                r,
                IntCounter::new(RESTARTS_TOTAL, "Times training restarted from a checkpoint")?,
            )?,
        })
    }

    /// Sets the number of live workers.
    pub fn set_workers_alive(&self, n: usize) {
        self.workers_alive.set(n as i64);
    }

    /// Sets the configured number of workers.
    pub fn set_workers_expected(&self, n: usize) {
        self.workers_expected.set(n as i64);
    }

    /// Sets the membership generation.
    pub fn set_generation(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Counts one restart of training from a checkpoint.
    pub fn record_restart(&self) {
        self.restarts_total.inc();
    }
}

/// Per-process series of a worker (and of `splade train`). Cheap to clone.
#[derive(Clone)]
pub struct WorkerMetrics {
    rank: IntGauge,
    steps_total: IntCounter,
    step_seconds: Histogram,
    data_wait_seconds: Counter,
    device_memory: GaugeVec,
    /// `kind="records"` and `kind="plan"` of one family, resolved once (no label lookup per step).
    data_bytes_records: IntCounter,
    data_bytes_plan: IntCounter,
}

impl WorkerMetrics {
    /// Registers the worker series on `registry`. The rank starts at -1 (no generation yet).
    pub fn new(registry: &Registry) -> Result<Self, ObsError> {
        use names::*;
        let r = registry;
        let bytes = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    WORKER_DATA_BYTES_READ,
                    "Bytes of training data this process fetched from storage: records, or data-plan chunks",
                ),
                &["kind"],
            )?,
        )?;
        let m = Self {
            rank: register(
                r,
                IntGauge::new(
                    WORKER_RANK,
                    "Rank of this worker in the current generation (-1: none)",
                )?,
            )?,
            steps_total: register(
                r,
                IntCounter::new(WORKER_STEPS_TOTAL, "Training steps this process completed")?,
            )?,
            step_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        WORKER_STEP_SECONDS,
                        "Wall time of one training step on this process",
                    )
                    .buckets(time_buckets()),
                )?,
            )?,
            data_wait_seconds: register(
                r,
                Counter::new(
                    WORKER_DATA_WAIT_SECONDS,
                    "Time this process spent waiting for the next batch",
                )?,
            )?,
            device_memory: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        WORKER_DEVICE_MEMORY_BYTES,
                        "Device memory held by this process",
                    ),
                    &["device"],
                )?,
            )?,
            // Both series exist from the start (at 0), so a scrape names them before any read.
            data_bytes_records: bytes.with_label_values(&["records"]),
            data_bytes_plan: bytes.with_label_values(&["plan"]),
        };
        m.rank.set(-1);
        Ok(m)
    }

    /// Records one step of this process: its wall time and how long it waited for data first.
    /// Negative or non-finite waits are ignored (a counter cannot go down).
    pub fn record_step(&self, step_seconds: f64, data_wait_seconds: f64) {
        self.steps_total.inc();
        self.step_seconds.observe(step_seconds);
        if data_wait_seconds.is_finite() && data_wait_seconds > 0.0 {
            self.data_wait_seconds.inc_by(data_wait_seconds);
        }
    }

    /// Adds `bytes` of training records fetched from storage (`kind="records"`).
    pub fn add_data_bytes_read(&self, bytes: u64) {
        self.data_bytes_records.inc_by(bytes);
    }

    /// Adds `bytes` of the data plan (manifest, chunks) fetched from storage (`kind="plan"`).
    pub fn add_plan_bytes_read(&self, bytes: u64) {
        self.data_bytes_plan.inc_by(bytes);
    }

    /// Sets this worker's rank (`None` while it is between generations).
    pub fn set_rank(&self, rank: Option<u32>) {
        self.rank.set(rank.map_or(-1, i64::from));
    }

    /// Sets the memory held on `device` (e.g. `cuda:0`).
    pub fn set_device_memory(&self, device: &str, bytes: u64) {
        self.device_memory
            .with_label_values(&[device])
            .set(bytes as f64);
    }
}

/// The Prometheus text exposition (format 0.0.4) of everything registered on `registry`.
pub fn encode_text(registry: &Registry) -> Result<String, ObsError> {
    Ok(prometheus::TextEncoder::new().encode_to_string(&registry.gather())?)
}
