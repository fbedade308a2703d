//! What a person watches during `splade train`: the Prometheus series behind `--metrics-listen`,
//! the `report_to` reporters (TensorBoard, MLflow) and `metrics.jsonl`, and evaluation of
//! `evaluation.tasks` during training with best-checkpoint selection.
//!
//! Guarantee kept from `splade_common::obs`: monitoring never fails or stalls a step once it has
//! started. Only set-up errors (a bad `report_to` value, a port in use, an unloadable eval task,
//! an unknown `metric_for_best_model`) stop training, and they do so before the first step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use splade_common::config::Config;
use splade_common::eval::{LocalDir, MetricsConfig, Task, TaskScores};
use splade_common::obs::{
    self, FanOut, JsonlReporter, MetricsServer, MlflowReporter, MlflowSettings, Registry, Reporter,
    TensorBoardWriter, TrainingMetrics, WorkerMetrics,
};
use splade_common::store::Location;

use super::dev::{DevRound, DevSet};
use super::{other, StepStats, TrainError};

/// The `report_to` values this trainer knows (Hugging Face spellings).
pub const REPORT_TO_VALUES: &[&str] = &["none", "all", "tensorboard", "mlflow"];

/// Which reporters `training.report_to` asks for. `metrics.jsonl` is always written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportTo {
    pub tensorboard: bool,
    pub mlflow: bool,
}

impl ReportTo {
    /// Parses `training.report_to`; an unknown integration is an error naming it and the choices.
    pub fn from_config(cfg: &Config) -> Result<Self, TrainError> {
        let mut r = ReportTo::default();
        for v in &cfg.training.report_to {
            match v.trim().to_ascii_lowercase().as_str() {
                "none" | "" => {}
                "all" => {
                    r.tensorboard = true;
                    r.mlflow = true;
                }
                "tensorboard" => r.tensorboard = true,
                "mlflow" => r.mlflow = true,
                other_value => {
                    return Err(other(format!(
                        "{}{}: `training.report_to` has `{other_value}`, which this trainer cannot report to; use one or more of {}",
                        cfg.origin,
                        cfg.line_of("training.report_to").map(|l| format!(":{l}")).unwrap_or_default(),
                        REPORT_TO_VALUES.join(", ")
                    )))
                }
            }
        }
        Ok(r)
    }
}

/// `training.run_name`, or `YYYYmmdd-HHMMSS-<host>` (UTC) like Hugging Face's default log folder.
pub fn run_name(cfg: &Config) -> String {
    if let Some(n) = cfg.training.run_name.as_ref().filter(|n| !n.trim().is_empty()) {
        return n.clone();
    }
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // `YYYY-MM-DDTHH:MM:SSZ` → `YYYYMMDD-HHMMSS`, reusing the checkpoint manifests' UTC formatter.
    let stamp: String = splade_common::store::checkpoint::rfc3339(secs)
        .trim_end_matches('Z')
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .map(|c| if c == 'T' { '-' } else { c })
        .collect();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{stamp}-{host}")
}

/// Where TensorBoard event files go: `training.logging_dir`, else `output_dir/runs/<run_name>`
/// (for an object-store `output_dir`, `runs/<run_name>` under its [`local_mirror`]).
pub fn tensorboard_dir(cfg: &Config, output: &Location, run_name: &str) -> PathBuf {
    match &cfg.training.logging_dir {
        Some(d) => PathBuf::from(d),
        None => output.local_path().map(Path::to_path_buf).unwrap_or_else(|| local_mirror(output)).join("runs").join(run_name),
    }
}

/// Where `metrics.jsonl` goes: `output_dir` when local, else `training.logging_dir`, else the output's
/// [`local_mirror`] (never the working directory).
pub fn jsonl_path(cfg: &Config, output: &Location) -> PathBuf {
    output
        .local_path()
        .map(Path::to_path_buf)
        .or_else(|| cfg.training.logging_dir.clone().map(PathBuf::from))
        .unwrap_or_else(|| local_mirror(output))
        .join("metrics.jsonl")
}

/// This machine's folder for the local files of a run whose `output_dir` is object storage:
/// `$SPLADE_CACHE/runs/<output URL as a file name>-<hash>` (`$SPLADE_CACHE` defaults to `~/.cache/splade`; without a
/// home, the temp dir). One folder per output URL, so a resumed run appends to its own series.
pub fn local_mirror(output: &Location) -> PathBuf {
    let cache = std::env::var_os("SPLADE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache/splade")))
        .unwrap_or_else(|| std::env::temp_dir().join("splade"));
    local_mirror_in(&cache, output.url())
}

fn local_mirror_in(cache: &Path, url: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let slug: String = url.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).take(80).collect();
    let hash = hex::encode(&Sha256::digest(url.as_bytes())[..4]);
    cache.join("runs").join(format!("{slug}-{hash}"))
}

/// Prometheus series, the `/metrics` server and the reporters of one training run.
pub struct Monitor {
    /// Trainer series (also updated when no server runs, so they are cheap to keep).
    pub training: TrainingMetrics,
    /// Per-process series.
    pub worker: WorkerMetrics,
    server: Option<MetricsServer>,
    /// Every step, always.
    jsonl: JsonlReporter,
    /// TensorBoard and MLflow, every `logging_steps`.
    reporters: FanOut,
    finished: bool,
}

impl Monitor {
    /// Starts the `/metrics` server (when `metrics_listen` is set) and the reporters `report_to` asks for.
    pub fn start(cfg: &Config, output: &Location, metrics_listen: Option<&str>) -> Result<Self, TrainError> {
        let which = ReportTo::from_config(cfg)?;
        let obs_err = |e: obs::ObsError| other(e.to_string());
        let registry = Registry::new();
        let training = TrainingMetrics::new(&registry).map_err(obs_err)?;
        let worker = WorkerMetrics::new(&registry).map_err(obs_err)?;
        let server = match metrics_listen {
            Some(addr) => Some(obs::serve_metrics(addr, registry).map_err(obs_err)?),
            None => None,
        };
        let name = run_name(cfg);
        let jsonl_at = jsonl_path(cfg, output);
        if output.local_path().is_none() {
            tracing::info!(metrics_jsonl = %jsonl_at.display(), output_dir = output.url(), "the output is object storage: metrics.jsonl is written on this machine");
        }
        let jsonl = JsonlReporter::create(jsonl_at).map_err(obs_err)?;
        let mut reporters = FanOut::new(vec![]);
        if which.tensorboard {
            let dir = tensorboard_dir(cfg, output, &name);
            let tb = TensorBoardWriter::create(&dir).map_err(obs_err)?;
            tracing::info!(path = %tb.path().display(), "TensorBoard event file");
            reporters.push(Box::new(tb));
        }
        if which.mlflow {
            let uri = cfg
                .mlflow
                .tracking_uri
                .clone()
                .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok())
                .unwrap_or_else(|| "mlruns".into());
            let experiment = cfg
                .mlflow
                .experiment_name
                .clone()
                .or_else(|| std::env::var("MLFLOW_EXPERIMENT_NAME").ok())
                .unwrap_or_else(|| name.clone());
            let mut s = MlflowSettings::new(uri, experiment);
            s.run_name = Some(name.clone());
            s.tags = cfg.mlflow.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let r = MlflowReporter::new(s).map_err(|e| other(format!("{}: {e}", cfg.origin)))?;
            reporters.push(Box::new(r));
        }
        Ok(Self { training, worker, server, jsonl, reporters, finished: false })
    }

    /// The `/metrics` address actually bound, when serving.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(MetricsServer::local_addr)
    }

    /// Logs the flattened config as run parameters and the whole config as text.
    pub fn log_config(&mut self, cfg: &Config) {
        let value = serde_json::to_value(cfg).unwrap_or_default();
        let params = obs::flatten_params(&value);
        let text = serde_json::to_string_pretty(&value).unwrap_or_default();
        for r in [&mut self.jsonl as &mut dyn Reporter, &mut self.reporters] {
            r.log_params(&params);
            r.log_text("config", &text);
        }
    }

    /// Records one step: Prometheus series and `metrics.jsonl` every step, TensorBoard/MLflow when
    /// `log_now` (every `logging_steps`).
    pub fn record_step(&mut self, s: &StepStats, log_now: bool) {
        let o = to_obs_stats(s);
        self.training.record_step(&o);
        self.worker.record_step(s.step_seconds, 0.0);
        if let Some(rss) = resident_bytes() {
            self.worker.set_device_memory("cpu", rss);
        }
        let mut scalars = o.scalars();
        scalars.push(("train/query_regularizer_weight", s.query_regularizer_weight));
        scalars.push(("train/document_regularizer_weight", s.document_regularizer_weight));
        if let Some((encoded, available)) = s.windows_per_doc {
            scalars.push(("train/windows_per_doc", encoded));
            scalars.push(("train/windows_available_per_doc", available));
        }
        if let Some(c) = &s.csr {
            scalars.push(("train/loss_reconstruction_k", c.reconstruction_k));
            scalars.push(("train/loss_reconstruction_4k", c.reconstruction_4k));
            scalars.push(("train/loss_reconstruction_aux", c.reconstruction_aux));
            scalars.push(("train/csr_dead_latents", c.dead_latents as f64));
            scalars.push(("train/csr_stats_sum", c.stats_sum as f64));
        }
        if let Some(scale) = s.loss_scale {
            scalars.push(("train/loss_scale", scale));
            scalars.push(("train/optimizer_step_skipped", if s.optimizer_step_skipped { 1.0 } else { 0.0 }));
        }
        self.jsonl.log_scalars(s.step, &scalars);
        if log_now {
            self.reporters.log_scalars(s.step, &scalars);
        }
    }

    /// Logs evaluation scalars (to every reporter) and the per-task NDCG/MRR series.
    pub fn record_eval(&mut self, step: u64, round: &EvalRound) {
        for (task, s) in &round.tasks {
            self.training.record_eval(task, step, metric(s, "ndcg_at_10"), metric(s, "mrr_at_10"));
        }
        let scalars: Vec<(&str, f64)> = round.scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.jsonl.log_scalars(step, &scalars);
        self.reporters.log_scalars(step, &scalars);
        if !round.dev.decoded.is_empty() {
            let text = round.dev.decoded.join("\n");
            let tag = format!("decoded_samples/step_{step}");
            self.jsonl.log_text(&tag, &text);
            self.reporters.log_text(&tag, &text);
            for line in &round.dev.decoded {
                tracing::info!(step, "decoded {line}");
            }
        }
    }

    /// Records a committed checkpoint.
    pub fn record_checkpoint(&self, step: u64, seconds: f64) {
        self.training.record_checkpoint(step, seconds);
    }

    /// Ends the run: `model_dir` (the final model folder on this machine) goes to MLflow as artifacts.
    pub fn finish(&mut self, model_dir: Option<&Path>) {
        if !self.finished {
            self.finished = true;
            self.jsonl.finish(model_dir);
            self.reporters.finish(model_dir);
        }
    }
}

fn metric(s: &TaskScores, key: &str) -> f64 {
    s.metrics.get(key).copied().unwrap_or(f64::NAN)
}

/// This process's resident memory (Linux `/proc/self/statm`), for the `cpu` device series.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The trainer's step numbers in the observability module's terms. The trainer keeps the weighted
/// FLOPS terms; the unweighted FLOPS is the term over its weight (NaN while the weight is 0, when
/// the trainer does not measure it).
pub fn to_obs_stats(s: &StepStats) -> obs::StepStats {
    let unweighted = |term: f64, w: f64| if w > 0.0 { term / w } else { f64::NAN };
    obs::StepStats {
        step: s.step,
        epoch: s.epoch as f64,
        samples: s.samples as u64,
        tokens: s.tokens as u64,
        step_seconds: s.step_seconds,
        loss: s.loss,
        loss_ranking: s.ranking_loss,
        loss_flops_query: s.flops_query,
        loss_flops_document: s.flops_document,
        flops_query: unweighted(s.flops_query, s.query_regularizer_weight),
        flops_document: unweighted(s.flops_document, s.document_regularizer_weight),
        active_dims_query: s.query_active_dims,
        active_dims_document: s.document_active_dims,
        learning_rate: s.learning_rate,
        grad_norm: s.grad_norm,
        allreduce_seconds: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation during training

/// The names evaluation rounds log tasks under: `evaluation.tasks`' names, then `evaluation.mteb_tasks` as MTEB
/// names (`NorQuAD` is logged as `NorQuadRetrieval`; an unknown name is left as written, `validate` refuses it).
fn configured_task_names(cfg: &Config) -> Vec<String> {
    let mteb = cfg.evaluation.mteb_tasks.iter().map(|n| {
        splade_common::config::mteb::resolve_task(n).map(|r| r.task.name.to_string()).unwrap_or_else(|_| n.clone())
    });
    cfg.evaluation.tasks.iter().map(|t| t.name.clone()).chain(mteb).collect()
}

/// Which number decides the best checkpoint (`metric_for_best_model`, `greater_is_better`).
#[derive(Debug, Clone, PartialEq)]
pub struct BestSelector {
    /// `None`: the mean over the configured tasks; else one task's name.
    pub task: Option<String>,
    /// MTEB metric key (`ndcg_at_10`), or `loss` for the training loss at the evaluation step.
    pub metric: String,
    /// Whether a larger value is better.
    pub greater_is_better: bool,
    /// The scalar name logged for it (`eval_mean_ndcg@10`, `eval_<task>_ndcg@10`, `train/loss`).
    pub logged_as: String,
}

impl BestSelector {
    /// Maps `training.metric_for_best_model` onto a logged number. Accepts this trainer's names
    /// (`eval_<task>_ndcg@10`, `eval_mean_mrr@10`) and sentence-transformers' (`eval_NanoBEIR_mean_dot_ndcg@10`,
    /// `eval_<task>_dot_ndcg@10`): a name that starts with a configured task maps onto that task, one naming
    /// `mean`/`NanoBEIR` or no task onto the mean over tasks. `loss` or `eval_loss` is the loss on the dev rows
    /// (as transformers prefixes `eval_`), `eval_<dataset>_loss` one dataset's; `train_loss` is the training
    /// loss of the evaluation step. Losses default to smaller is better. Default: the mean NDCG@10.
    pub fn from_config(cfg: &Config) -> Result<Self, TrainError> {
        let t = &cfg.training;
        let raw = t.metric_for_best_model.clone().unwrap_or_else(|| "eval_mean_ndcg@10".into());
        let bad = |why: String| {
            other(format!(
                "{}{}: `training.metric_for_best_model` is `{raw}`: {why}",
                cfg.origin,
                cfg.line_of("training.metric_for_best_model").map(|l| format!(":{l}")).unwrap_or_default()
            ))
        };
        let loss = |task: Option<String>, metric: &str, logged_as: String| Self {
            task,
            metric: metric.into(),
            greater_is_better: t.greater_is_better.unwrap_or(false),
            logged_as,
        };
        if raw == "train_loss" || raw == "train/loss" {
            return Ok(loss(None, "train_loss", "train/loss".into()));
        }
        let name = raw.strip_prefix("eval_").unwrap_or(&raw).replace("_at_", "@");
        if name == "loss" {
            return Ok(loss(None, "eval_loss", "eval_loss".into()));
        }
        if let Some(ds) = name.strip_suffix("_loss") {
            let names: Vec<&str> = cfg.datasets.datasets.iter().map(|(n, _)| n.as_str()).collect();
            if !names.contains(&ds) {
                return Err(bad(format!(
                    "`{ds}` is no dataset (datasets: {names:?}); use eval_loss (all dev rows), eval_<dataset>_loss or train_loss"
                )));
            }
            return Ok(loss(Some(ds.to_string()), "eval_loss", format!("eval_{ds}_loss")));
        }
        let (prefix, last) = match name.rsplit_once('_') {
            Some((p, l)) => (p, l),
            None => ("", name.as_str()),
        };
        let (kind, k) = last.split_once('@').ok_or_else(|| {
            bad("expected a retrieval metric such as eval_mean_ndcg@10, eval_<task>_mrr@10 or loss".into())
        })?;
        let k: usize = k.parse().map_err(|_| bad(format!("`{k}` is not a cut-off")))?;
        let mc = MetricsConfig::default();
        let cutoffs = match kind {
            "ndcg" => &mc.ndcg_at,
            "mrr" => &mc.mrr_at,
            "map" => &mc.map_at,
            "recall" | "precision" => &mc.precision_recall_at,
            "accuracy" => &mc.accuracy_at,
            _ => return Err(bad(format!("unknown metric `{kind}`; use ndcg, mrr, map, recall, precision or accuracy"))),
        };
        if !cutoffs.contains(&k) {
            return Err(bad(format!("{kind}@{k} is not computed; cut-offs for {kind} are {cutoffs:?}")));
        }
        let task_names = configured_task_names(cfg);
        let task = task_names
            .iter()
            .map(String::as_str)
            .filter(|n| prefix == *n || prefix.starts_with(&format!("{n}_")))
            .max_by_key(|n| n.len())
            .map(str::to_string);
        let mean_words = prefix.is_empty() || prefix.split('_').any(|w| w == "mean" || w.eq_ignore_ascii_case("nanobeir"));
        if task.is_none() && !mean_words {
            let names = &task_names;
            return Err(bad(format!(
                "it names no configured task (evaluation.tasks and mteb_tasks: {names:?}); use eval_<task>_{kind}@{k} or eval_mean_{kind}@{k}"
            )));
        }
        let logged_as = format!("eval_{}_{kind}@{k}", task.as_deref().unwrap_or("mean"));
        Ok(Self { task, metric: format!("{kind}_at_{k}"), greater_is_better: t.greater_is_better.unwrap_or(true), logged_as })
    }

    /// Whether the metric is a dev-row loss (which needs `split_ratio`).
    pub fn needs_dev_rows(&self) -> bool {
        self.metric == "eval_loss"
    }

    /// Whether the metric is a retrieval metric of the evaluation tasks.
    pub fn needs_tasks(&self) -> bool {
        !matches!(self.metric.as_str(), "eval_loss" | "train_loss")
    }

    /// The selected value of an evaluation round (`train_loss`: the step's training loss).
    pub fn value(&self, round: &EvalRound, train_loss: f64) -> Option<f64> {
        if self.metric == "train_loss" {
            return Some(train_loss);
        }
        if self.metric == "eval_loss" {
            return match &self.task {
                None => round.dev.eval_loss,
                Some(ds) => round.dev.losses.iter().find(|(n, _)| n == ds).map(|(_, l)| *l),
            };
        }
        match &self.task {
            Some(t) => round.tasks.iter().find(|(n, _)| n == t).and_then(|(_, s)| s.metrics.get(&self.metric).copied()),
            None => round.mean.get(&self.metric).copied(),
        }
    }

    /// Whether `new` beats `best`.
    pub fn improves(&self, new: f64, best: Option<f64>) -> bool {
        match best {
            None => new.is_finite(),
            Some(b) if self.greater_is_better => new > b,
            Some(b) => new < b,
        }
    }
}

/// The evaluation tasks (loaded once), the dev rows and the selection rule.
pub struct DuringEval {
    pub tasks: Vec<Task>,
    /// The datasets' held-out rows (`eval_loss`, dev sparsity, decoded samples).
    pub dev: Vec<DevSet>,
    pub selector: BestSelector,
    pub batch_size: usize,
    /// `evaluation.track_sparsity`.
    pub track_sparsity: bool,
    /// `evaluation.log_decoded_samples`.
    pub decode: usize,
    /// How many of `tasks` (the last ones) are NanoBEIR datasets (`evaluator: sparse_nanobeir`), logged under
    /// sentence-transformers' `SparseNanoBEIREvaluator` names.
    pub nanobeir: usize,
}

/// The outcome of evaluating every task once.
pub struct EvalRound {
    /// (task name, scores) in config order.
    pub tasks: Vec<(String, TaskScores)>,
    /// Mean of each metric over the tasks.
    pub mean: BTreeMap<String, f64>,
    /// What the dev rows measured (empty without dev rows).
    pub dev: DevRound,
    /// Everything logged: `eval_<task>_<metric>` (MTEB `_at_` written as `@`), sparsity, `eval_mean_<metric>`,
    /// and the dev rows' `eval_loss` (see [`DevRound::scalars`]).
    pub scalars: Vec<(String, f64)>,
}

impl DuringEval {
    /// Loads `evaluation.tasks` (local BEIR/MTEB folders), `evaluation.mteb_tasks` (MTEB tasks by name, from the
    /// hub cache) and the NanoBEIR datasets, and checks `metric_for_best_model` against them and
    /// the `dev` rows.
    pub fn load(cfg: &Config, dev: Vec<DevSet>) -> Result<Self, TrainError> {
        let selector = BestSelector::from_config(cfg)?;
        let mut tasks = Vec::new();
        for (i, spec) in cfg.evaluation.tasks.iter().enumerate() {
            if spec.source.contains("://") {
                return Err(other(format!(
                    "{}: `evaluation.tasks[{i}].source` is `{}`: evaluation during training reads local task folders only; copy it locally",
                    cfg.origin, spec.source
                )));
            }
            let task = Task::load(&LocalDir::new(&spec.source), Some(&spec.split), Some(&spec.name))
                .map_err(|e| other(format!("{}: `evaluation.tasks[{i}]` ({}): {e}", cfg.origin, spec.name)))?;
            for w in &task.warnings {
                tracing::warn!(task = spec.name, "{w}");
            }
            tasks.push(task);
        }
        // `evaluation.mteb_tasks`: MTEB retrieval tasks by name, read from their Hub datasets at MTEB's revision as
        // `splade eval --task NAME` reads them, evaluated and logged as `evaluation.tasks` are.
        let hub = splade_common::hub::Hub::from_env();
        for name in &cfg.evaluation.mteb_tasks {
            let r = splade_common::config::mteb::resolve_task(name)
                .map_err(|e| other(format!("{}: `evaluation.mteb_tasks` ({name}): {e}", cfg.origin)))?;
            let task = splade_common::eval::mteb_hub_task(&hub, &r.task)
                .map_err(|e| other(format!("{}: `evaluation.mteb_tasks` ({name}): {e}", cfg.origin)))?;
            for w in &task.warnings {
                tracing::warn!(task = r.task.name, "{w}");
            }
            tasks.push(task);
        }
        let mut nanobeir = 0;
        if cfg.evaluation.evaluator == Some(splade_common::config::EvaluatorKind::SparseNanobeir) {
            // The seed's default when `nanobeir_datasets` is unset.
            let names = if cfg.evaluation.nanobeir_datasets.is_empty() {
                vec!["msmarco".to_string(), "nfcorpus".to_string()]
            } else {
                cfg.evaluation.nanobeir_datasets.clone()
            };
            for name in &names {
                let task = splade_common::eval::nanobeir_task(&hub, name).map_err(|e| {
                    other(format!("{}: `evaluation.nanobeir_datasets` ({name}): {e}", cfg.origin))
                })?;
                tasks.push(task);
                nanobeir += 1;
            }
        }
        if selector.needs_dev_rows() {
            let missing = match &selector.task {
                None => dev.is_empty(),
                Some(ds) => !dev.iter().any(|d| &d.name == ds),
            };
            if missing {
                return Err(other(format!(
                    "{}{}: `training.metric_for_best_model` is `{}`, a loss on held-out rows, but {} no dev rows; set `datasets.<name>.split_ratio` (e.g. 0.01), or use train_loss",
                    cfg.origin,
                    cfg.line_of("training.metric_for_best_model").map(|l| format!(":{l}")).unwrap_or_default(),
                    cfg.training.metric_for_best_model.as_deref().unwrap_or_default(),
                    selector.task.as_deref().map(|d| format!("dataset `{d}` has")).unwrap_or_else(|| "no dataset has".into()),
                )));
            }
        }
        if cfg.evaluation.log_decoded_samples > 0 && dev.is_empty() {
            tracing::warn!("evaluation.log_decoded_samples: no dataset has dev rows (split_ratio), so no samples are decoded");
        }
        Ok(Self {
            tasks,
            dev,
            selector,
            batch_size: cfg.training.per_device_eval_batch_size,
            track_sparsity: cfg.evaluation.track_sparsity,
            decode: cfg.evaluation.log_decoded_samples,
            nanobeir,
        })
    }

    /// Whether an evaluation measures anything (tasks or dev rows).
    pub fn has_work(&self) -> bool {
        !self.tasks.is_empty() || !self.dev.is_empty()
    }

    /// Encodes and scores every task with `trainer`'s model, and evaluates the dev rows.
    pub fn run(&self, trainer: &super::Trainer) -> Result<EvalRound, TrainError> {
        let model = &trainer.model;
        let mut tasks = Vec::new();
        let mut scalars = Vec::new();
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut nano_sums: BTreeMap<String, f64> = BTreeMap::new();
        // (Σ value × count, Σ count) of the active dims, weighted as SparseNanoBEIREvaluator weights them.
        let mut nano_dims: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        let first_nano = self.tasks.len() - self.nanobeir;
        for (i, task) in self.tasks.iter().enumerate() {
            let (scores, _) = crate::evaluate::evaluate_model(model, task, self.batch_size)
                .map_err(|e| other(format!("evaluating task {} during training: {e}", task.name)))?;
            let mut per_task: Vec<(String, f64)> = scores.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
            if let Some(sp) = &scores.sparsity {
                per_task.push(("query_active_dims".into(), sp.query.mean));
                per_task.push(("corpus_active_dims".into(), sp.corpus.mean));
                per_task.push(("avg_flops".into(), sp.avg_flops));
            }
            for (k, v) in per_task {
                if i >= first_nano {
                    let st = st_metric_name(&k);
                    scalars.push((format!("eval_{}_{st}", task.name), v));
                    match k.as_str() {
                        "query_active_dims" => add_weighted(&mut nano_dims, "query_active_dims", v, scores.n_queries),
                        "corpus_active_dims" => add_weighted(&mut nano_dims, "corpus_active_dims", v, scores.n_docs),
                        // Its aggregate pools the per-dimension counts of all datasets, which a round does not
                        // keep: not logged rather than logged differently.
                        "avg_flops" => {}
                        _ => *nano_sums.entry(st).or_default() += v,
                    }
                } else {
                    scalars.push((format!("eval_{}_{}", task.name, k.replace("_at_", "@")), v));
                }
                *sums.entry(k).or_default() += v;
            }
            tasks.push((task.name.clone(), scores));
        }
        let n = self.tasks.len().max(1) as f64;
        let mean: BTreeMap<String, f64> = sums.into_iter().map(|(k, v)| (k, v / n)).collect();
        if !self.tasks.is_empty() {
            for (k, v) in &mean {
                scalars.push((format!("eval_mean_{}", k.replace("_at_", "@")), *v));
            }
        }
        // sentence-transformers' NanoBEIR aggregate: the mean over the NanoBEIR datasets (`np.mean`).
        for (k, v) in &nano_sums {
            scalars.push((format!("eval_NanoBEIR_mean_{k}"), v / self.nanobeir as f64));
        }
        for (k, (sum, n)) in &nano_dims {
            scalars.push((format!("eval_NanoBEIR_mean_{k}"), sum / n));
        }
        let dev = trainer.dev_round(&self.dev, self.batch_size, self.track_sparsity, self.decode)?;
        scalars.extend(dev.scalars());
        Ok(EvalRound { tasks, mean, dev, scalars })
    }
}

fn add_weighted(acc: &mut BTreeMap<&'static str, (f64, f64)>, key: &'static str, v: f64, n: usize) {
    let e = acc.entry(key).or_default();
    e.0 += v * n as f64;
    e.1 += n as f64;
}

/// sentence-transformers' name of one of our metric keys in a sparse IR evaluator's output: retrieval metrics
/// carry the score function (`dot_ndcg@10`), sparsity keys keep their names (`query_active_dims`).
fn st_metric_name(key: &str) -> String {
    match key {
        "query_active_dims" | "corpus_active_dims" | "avg_flops" => key.to_string(),
        _ => format!("dot_{}", key.replace("_at_", "@")),
    }
}

/// Checks the Hugging Face rule for `load_best_model_at_end`: checkpoints must be written where
/// evaluations happen (same strategy, `save_steps` a multiple of `eval_steps`), or `save_strategy: best`.
pub fn check_best_model_schedule(cfg: &Config, save_every: u64, eval_every: u64) -> Result<(), TrainError> {
    match cfg.best_model_schedule_problem(save_every, eval_every) {
        Some(why) => Err(other(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Config {
        Config::from_str(yaml, "cfg.yaml").unwrap()
    }

    const TASKS: &str = "evaluation:\n  tasks:\n    - name: norquad\n      source: x\n    - name: nor_quad2\n      source: y\n";

    #[test]
    fn best_metric_names_map_onto_mean_or_task() {
        let sel = |m: &str| BestSelector::from_config(&cfg(&format!("{TASKS}training:\n  metric_for_best_model: {m}\n")));
        let s = BestSelector::from_config(&cfg(TASKS)).unwrap();
        assert_eq!((s.task, s.metric.as_str(), s.greater_is_better), (None, "ndcg_at_10", true));
        let s = sel("eval_NanoBEIR_mean_dot_ndcg@10").unwrap();
        assert_eq!((s.task, s.metric.as_str()), (None, "ndcg_at_10"));
        let s = sel("eval_norquad_dot_mrr@10").unwrap();
        assert_eq!((s.task.as_deref(), s.metric.as_str()), (Some("norquad"), "mrr_at_10"));
        let s = sel("eval_nor_quad2_ndcg@10").unwrap();
        assert_eq!(s.task.as_deref(), Some("nor_quad2"));
        assert_eq!(s.logged_as, "eval_nor_quad2_ndcg@10");
        let s = sel("eval_loss").unwrap();
        assert_eq!((s.task.as_deref(), s.metric.as_str(), s.greater_is_better, s.logged_as.as_str()), (None, "eval_loss", false, "eval_loss"));
        assert_eq!(sel("loss").unwrap().metric, "eval_loss", "transformers reads `loss` as eval_loss");
        let s = sel("train_loss").unwrap();
        assert_eq!((s.metric.as_str(), s.greater_is_better), ("train_loss", false));
        let with_ds = |m: &str| {
            BestSelector::from_config(&cfg(&format!(
                "{TASKS}datasets:\n  nli:\n    source: x.jsonl\ntraining:\n  metric_for_best_model: {m}\n"
            )))
        };
        let s = with_ds("eval_nli_loss").unwrap();
        assert_eq!((s.task.as_deref(), s.metric.as_str(), s.logged_as.as_str()), (Some("nli"), "eval_loss", "eval_nli_loss"));
        let e = with_ds("eval_qa_loss").unwrap_err().to_string();
        assert!(e.contains("`qa` is no dataset") && e.contains("nli"), "{e}");
        let e = sel("eval_other_ndcg@10").unwrap_err().to_string();
        assert!(e.contains("names no configured task") && e.contains("norquad"), "{e}");
        let e = sel("eval_mean_ndcg@7").unwrap_err().to_string();
        assert!(e.contains("not computed"), "{e}");
        assert!(sel("accuracy").is_err());
    }

    #[test]
    fn report_to_values() {
        let r = |v: &str| ReportTo::from_config(&cfg(&format!("training:\n  report_to: {v}\n")));
        assert_eq!(r("all").unwrap(), ReportTo { tensorboard: true, mlflow: true });
        assert_eq!(r("none").unwrap(), ReportTo::default());
        assert_eq!(r("[tensorboard]").unwrap(), ReportTo { tensorboard: true, mlflow: false });
        let e = r("wandb").unwrap_err().to_string();
        assert!(e.contains("cfg.yaml:2") && e.contains("wandb") && e.contains("tensorboard"), "{e}");
    }

    #[test]
    fn best_schedule_rule() {
        let c = cfg("training:\n  load_best_model_at_end: true\n  eval_strategy: steps\n");
        assert!(check_best_model_schedule(&c, 4, 2).is_ok());
        assert!(check_best_model_schedule(&c, 3, 2).unwrap_err().to_string().contains("multiple"));
        let c = cfg("training:\n  load_best_model_at_end: true\n  eval_strategy: epoch\n");
        assert!(check_best_model_schedule(&c, 4, 0).unwrap_err().to_string().contains("match"));
    }

    #[test]
    fn metrics_jsonl_of_an_object_store_output_goes_to_logging_dir_or_the_local_mirror() {
        let cfg = |extra: &str| {
            Config::from_str(&format!("training:\n  output_dir: s3://bucket/run-a\n{extra}"), "cfg.yaml").unwrap()
        };
        let s3 = |u: &str| Location::parse_with(u, &splade_common::store::StoreOptions::default()).unwrap();
        let out = s3("s3://bucket/run-a");
        assert_eq!(jsonl_path(&cfg("  logging_dir: /var/log/splade\n"), &out), Path::new("/var/log/splade/metrics.jsonl"));
        let p = jsonl_path(&cfg(""), &out);
        assert!(p.is_absolute() || std::env::var_os("SPLADE_CACHE").is_some(), "{}", p.display());
        assert!(!p.starts_with("splade-runs"), "{}", p.display());
        let m = local_mirror_in(Path::new("/cache"), "s3://bucket/run-a");
        assert!(m.to_str().unwrap().starts_with("/cache/runs/s3___bucket_run-a-"), "{}", m.display());
        assert_ne!(m, local_mirror_in(Path::new("/cache"), "s3://bucket/run_a"), "distinct outputs, distinct mirrors");
        let dir = tempfile::tempdir().unwrap();
        let local = Location::parse(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(jsonl_path(&cfg(""), &local), dir.path().join("metrics.jsonl"));
    }
}
