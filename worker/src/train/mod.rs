//! Single-node SPLADE training (`splade train --config cfg.yaml`): the sentence-transformers
//! `SparseEncoderTrainer` recipe (SpladeLoss, AdamW, linear warm-up/decay, clipping) in libtorch,
//! with checkpoints committed through `splade_common::store` and exact resume.
//!
//! One [`Trainer`] owns the model, the optimizer and the batch plan; [`Trainer::train_step`] is the
//! unit the data-parallel worker reuses.

pub mod distributed;
pub mod fetch;
pub mod inference_free;
pub mod loss;
pub mod monitor;
pub mod optim;
pub mod scaler;
pub mod state;
pub mod windows;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use splade_common::config::{Config, InnerLoss as CfgInner, IntervalStrategy, ResumeFrom, SaveStrategy};
use splade_common::data::plan::{BatchPlan, PlanDataset, PlanSpec, PlannedBatch};
use splade_common::data::{load_dataset_blocking, Example};
use splade_common::store::checkpoint::{
    commit_checkpoint, delete_checkpoint, fetch_checkpoint, latest_checkpoint, list_checkpoints_with, prune, verify_checkpoint,
    Verify,
};
use splade_common::store::{block_on, Location, StoreOptions};
use tch::{Device, Kind, Tensor};

use crate::model::{resolve::resolve_model, LoadOptions, PoolingConfig, PoolingStrategy, SparseEncoder, TextKind};
use loss::{InnerLoss, SpladeLossConfig};
use optim::{clip_grad_norm, linear_schedule, no_decay, warmup_steps, AdamW, ParamGroup};
use scaler::{GradScaler, ScalerConfig, ScalerState};
use state::{TrainerState, OPTIMIZER_STATE, SCALER_STATE, TRAINER_STATE};

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
    #[error("{0}")]
    Other(String),
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

/// A SPLADE trainer: model, optimizer, objective and the deterministic batch plan.
pub struct Trainer {
    pub cfg: Config,
    pub model: SparseEncoder,
    pub opt: AdamW,
    pub loss: SpladeLossConfig,
    pub datasets: BTreeMap<String, Vec<Example>>,
    pub plan: BatchPlan,
    pub state: TrainerState,
    pub output: Location,
    /// Micro-batches per optimizer step on this process.
    pub micro_batches: usize,
    /// With `training.fp16`: the dynamic loss scaler (torch's `GradScaler` defaults). Replace it
    /// before the first step to change its settings.
    pub scaler: Option<GradScaler>,
    warmup: u64,
    seed: u64,
    window_cost: windows::WindowCost,
}

fn inner_loss(cfg: &Config) -> InnerLoss {
    match cfg.loss.inner_loss {
        CfgInner::SparseMultipleNegativesRankingLoss => InnerLoss::MultipleNegativesRanking { scale: cfg.loss.scale },
        CfgInner::SparseMarginMse => InnerLoss::MarginMse,
        CfgInner::SparseDistillKldiv => InnerLoss::DistillKlDiv { temperature: cfg.loss.temperature },
    }
}

/// Loads every enabled dataset's training part, keyed by name.
pub fn load_train_datasets(cfg: &Config) -> Result<BTreeMap<String, Vec<Example>>, TrainError> {
    let opts = StoreOptions::from_env();
    let mut out = BTreeMap::new();
    for (name, spec) in cfg.datasets.enabled() {
        let ds = load_dataset_blocking(name, spec, &opts)?;
        if ds.bad_records > 0 {
            tracing::warn!(dataset = name, skipped = ds.bad_records, "skipped bad records (on_bad_record: skip)");
        }
        let (train, _eval) = ds.split(spec.split_ratio, cfg.training.seed);
        out.insert(name.to_string(), train);
    }
    if out.is_empty() {
        return Err(other(format!("{}: no enabled dataset under `datasets:`; enable at least one", cfg.origin)));
    }
    Ok(out)
}

/// The batch plan for `global_batch` rows per optimizer step.
pub fn build_plan(cfg: &Config, datasets: &BTreeMap<String, Vec<Example>>, global_batch: usize) -> Result<BatchPlan, TrainError> {
    let pds: Vec<PlanDataset> = datasets.iter().map(|(n, ex)| PlanDataset::from_examples(n, ex)).collect();
    BatchPlan::build(&pds, &PlanSpec::from_config(cfg, global_batch)).map_err(|e| other(format!("{}: cannot plan batches: {e}", cfg.origin)))
}

/// The texts a step embeds for rows `ex`: the anchors (queries), and the candidates column by column
/// (all positives, then each negative column), the layout the losses expect. `None` when the rows have
/// different numbers of negatives.
fn batch_texts<'a>(ex: &[&'a Example]) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
    let anchors: Vec<&str> = ex.iter().map(|e| e.anchor.as_str()).collect();
    let negs = ex.first().map(|e| e.negatives.len()).unwrap_or(0);
    if ex.iter().any(|e| e.negatives.len() != negs) {
        return None;
    }
    let mut cands: Vec<&str> = ex.iter().map(|e| e.positive.as_str()).collect();
    for k in 0..negs {
        cands.extend(ex.iter().map(|e| e.negatives[k].as_str()));
    }
    Some((anchors, cands))
}

/// Fingerprint of the first `steps` batches of the plan: a checkpoint records the batches it
/// consumed, so resume can check that the data so far was the same, while a longer or shorter
/// run (another max_steps) stays allowed.
fn fingerprint(plan: &BatchPlan, steps: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for b in plan.batches.iter().take(steps as usize) {
        h.update(b.dataset.as_bytes());
        for r in &b.rows {
            h.update((*r as u64).to_le_bytes());
        }
    }
    hex::encode(&h.finalize()[..8])
}

/// Model loading options the training config implies.
pub fn load_options(cfg: &Config) -> LoadOptions {
    LoadOptions {
        dropout: cfg.model.dropout,
        max_seq_length: cfg.training.max_seq_length,
        query_max_length: cfg.training.query_max_length,
        document_max_length: cfg.training.document_max_length,
        pooling: Some(PoolingConfig {
            pooling_strategy: match cfg.model.pooling_strategy {
                splade_common::config::PoolingStrategy::Max => PoolingStrategy::Max,
                splade_common::config::PoolingStrategy::Sum => PoolingStrategy::Sum,
            },
            ..PoolingConfig::default()
        }),
        // The seed's defaults: patch a base model's head; a finished sparse encoder keeps its own code.
        patch_sigmoid: cfg.model.patch_sigmoid_for_sparsity.or((!cfg.model.load_pretrained_sparse_encoder).then_some(true)),
    }
}

fn param_groups(model: &SparseEncoder, cfg: &Config) -> Vec<ParamGroup> {
    let mut decay = ParamGroup { names: vec![], params: vec![], weight_decay: cfg.training.weight_decay, lr_scale: 1.0 };
    let mut plain = ParamGroup { names: vec![], params: vec![], weight_decay: 0.0, lr_scale: 1.0 };
    for (name, t) in model.named_parameters() {
        if name == crate::model::STATIC_VAR {
            continue; // its own group (or none when frozen), below
        }
        let g = if no_decay(&name) { &mut plain } else { &mut decay };
        g.names.push(name);
        g.params.push(t);
    }
    let mut groups = vec![decay, plain];
    groups.extend(inference_free::static_param_group(model, cfg));
    groups
}

impl Trainer {
    /// Builds a trainer for `cfg` on `device` whose plan has `global_batch` rows per step, of
    /// which this process computes `micro_batches` micro-batches of `per_device_train_batch_size`.
    pub fn new(cfg: Config, device: Device, global_batch: usize, micro_batches: usize) -> Result<Self, TrainError> {
        let datasets = load_train_datasets(&cfg)?;
        let plan = build_plan(&cfg, &datasets, global_batch)?;
        Self::from_parts(cfg, device, datasets, plan, global_batch, micro_batches)
    }

    /// A trainer that follows a plan made elsewhere (a cluster coordinator's published data plan) and holds
    /// no dataset: its examples come from the caller (see [`fetch::SliceFetcher`]), so
    /// [`Trainer::examples`] and [`Trainer::train_step`] must not be used.
    pub fn with_plan(cfg: Config, device: Device, plan: BatchPlan, micro_batches: usize) -> Result<Self, TrainError> {
        let global_batch = plan.batches.first().map_or(0, |b| b.rows.len());
        Self::from_parts(cfg, device, BTreeMap::new(), plan, global_batch, micro_batches)
    }

    fn from_parts(
        cfg: Config,
        device: Device,
        datasets: BTreeMap<String, Vec<Example>>,
        plan: BatchPlan,
        global_batch: usize,
        micro_batches: usize,
    ) -> Result<Self, TrainError> {
        if plan.is_empty() {
            return Err(other(format!(
                "{}: the datasets are smaller than one batch of {global_batch}; lower training.per_device_train_batch_size",
                cfg.origin
            )));
        }
        let dir = resolve_model(&cfg.model.base_model)?;
        let mut model = SparseEncoder::load(&dir, device, &load_options(&cfg))?;
        inference_free::prepare_model(&mut model, &cfg)?;
        if cfg.training.fp16 && cfg.training.bf16 {
            return Err(other(format!(
                "{}: training.fp16 and training.bf16 are both true; set one of them to false",
                cfg.origin
            )));
        }
        if let Some(kind) = amp_kind(&cfg) {
            if crate::amp::Autocast::new(device, kind).is_none() {
                let key = if cfg.training.fp16 { "fp16" } else { "bf16" };
                return Err(other(format!(
                    "{}: training.{key} is true but libtorch has no {kind:?} autocast for device {device:?}; set {key}: false",
                    cfg.origin
                )));
            }
        }
        let scaler = cfg.training.fp16.then(|| GradScaler::new(ScalerConfig::default(), device));
        if let Some(w) = windows::TrainingWindows::from_config(&cfg) {
            w.check(&model, &cfg.origin)?;
        }
        let opt = AdamW::new(param_groups(&model, &cfg));
        let total = plan.len() as u64;
        let loss = SpladeLossConfig {
            inner: inner_loss(&cfg),
            query_regularizer_weight: cfg.loss.query_regularizer_weight,
            document_regularizer_weight: cfg.loss.document_regularizer_weight,
            regularizer_warmup_ratio: cfg.loss.regularizer_warmup_ratio,
        };
        let output = Location::parse(&cfg.training.output_dir)?;
        let state = TrainerState { total_steps: total, ..Default::default() };
        let warmup = warmup_steps(total, cfg.training.warmup_ratio);
        let seed = cfg.training.seed;
        Ok(Self {
            cfg,
            model,
            opt,
            loss,
            datasets,
            plan,
            state,
            output,
            micro_batches,
            scaler,
            warmup,
            seed,
            window_cost: Default::default(),
        })
    }

    /// Learning rate of the step about to run. The schedule advances once per optimizer step
    /// taken: steps the fp16 loss scaler skipped do not advance it, as in the Hugging Face Trainer
    /// (which calls `lr_scheduler.step()` only `if not accelerator.optimizer_step_was_skipped`).
    pub fn learning_rate(&self) -> f64 {
        let scheduled = self.state.global_step - self.state.skipped_steps.min(self.state.global_step);
        linear_schedule(self.cfg.training.learning_rate, scheduled, self.warmup, self.state.total_steps)
    }

    /// Examples of a planned batch, in plan order.
    pub fn examples<'a>(&'a self, batch: &PlannedBatch, rows: &[usize]) -> Vec<&'a Example> {
        let ds = &self.datasets[&batch.dataset];
        rows.iter().map(|&r| &ds[r]).collect()
    }

    /// Embeds queries and candidates (positives, then each negative column) of `ex`.
    pub(crate) fn embed(&self, ex: &[&Example], train: bool) -> Result<(Tensor, Tensor, usize), TrainError> {
        let dev = self.model.device();
        // Autocast (bf16 or fp16) covers the encoder forwards only; the loss and the backward run
        // outside the scope, as `torch.autocast` is meant to be used.
        let amp = amp_kind(&self.cfg).and_then(|kind| crate::amp::Autocast::new(dev, kind));
        let (anchors, cands) = batch_texts(ex).ok_or_else(|| {
            other("rows of one batch have different numbers of negatives; give every row the same negative columns")
        })?;
        let qb = self.model.tokenize(&anchors, TextKind::Query)?.to(dev);
        let q = self.model.forward_kind(&qb, TextKind::Query, train);
        let tw = windows::TrainingWindows::from_config(&self.cfg);
        let docs = windows::embed_documents(&self.model, &cands, tw.as_ref(), self.seed, self.state.global_step, train)?;
        if tw.is_some() {
            self.window_cost.add(cands.len(), &docs);
        }
        let tokens = qb.lengths.iter().sum::<usize>() + docs.tokens;
        drop(amp);
        Ok((q.to_kind(Kind::Float), docs.embeddings.to_kind(Kind::Float), tokens))
    }

    /// Back-propagates `loss`, multiplied by the loss scale with fp16 (`scaler.scale(loss).backward()`).
    /// Every backward of a step's loss goes through here; gradient cache's surrogate backward does
    /// not, since the embedding gradients it carries already hold the scale.
    pub(crate) fn backward(&self, loss: &Tensor) {
        match &self.scaler {
            Some(s) => s.scale_loss(loss).backward(),
            None => loss.backward(),
        }
    }

    pub(crate) fn labels(ex: &[&Example]) -> Option<Tensor> {
        if ex.iter().all(|e| e.label.is_some()) && !ex.is_empty() {
            let w = ex[0].label.as_ref().unwrap().len();
            let flat: Vec<f32> = ex.iter().flat_map(|e| e.label.clone().unwrap()).collect();
            Some(Tensor::from_slice(&flat).view([ex.len() as i64, w as i64]))
        } else {
            None
        }
    }

    /// Seeds libtorch's generator from (seed, step, micro-batch) so dropout masks are a function of
    /// the position in the run: resume replays them, and gradient cache's second pass sees the
    /// first pass's masks.
    pub(crate) fn seed_for(&self, micro: usize) {
        tch::manual_seed((self.seed as i64).wrapping_mul(1_000_003) ^ ((self.state.global_step as i64) << 12) ^ micro as i64);
    }

    /// Forward + backward for this process's rows of one step; gradients accumulate in the
    /// parameters. Returns the stats of the loss (on this process's rows).
    pub fn forward_backward(&self, ex: &[&Example]) -> Result<StepStats, TrainError> {
        let step = self.state.global_step;
        let total = self.state.total_steps;
        let mb = (ex.len() / self.micro_batches.max(1)).max(1);
        let mut stats = StepStats { step: step + 1, samples: ex.len(), ..Default::default() };
        if self.cfg.training.gradient_cache && self.micro_batches > 1 {
            // Gradient cache: embed every micro-batch without a graph, take the loss over the whole
            // batch, then re-run each micro-batch with a graph and back-propagate the cached
            // embedding gradients through it. Exact, since the loss sees every in-batch negative.
            let chunks: Vec<&[&Example]> = ex.chunks(mb).collect();
            let mut qs = Vec::new();
            let mut ds = Vec::new();
            tch::no_grad(|| -> Result<(), TrainError> {
                for (i, c) in chunks.iter().enumerate() {
                    self.seed_for(i);
                    let (q, d, tokens) = self.embed(c, true)?;
                    stats.tokens += tokens;
                    qs.push(q);
                    ds.push(d);
                }
                Ok(())
            })?;
            let negs = ex[0].negatives.len() as i64 + 1;
            let q_all = Tensor::cat(&qs, 0).detach().set_requires_grad(true);
            // Candidates are laid out column-major over the whole batch: all positives, then all
            // first negatives, …; each micro-batch's block is [positives; negatives] of its rows.
            let d_cols: Vec<Tensor> = (0..negs)
                .map(|c| {
                    let parts: Vec<Tensor> = ds.iter().zip(&chunks).map(|(d, ch)| d.narrow(0, c * ch.len() as i64, ch.len() as i64)).collect();
                    Tensor::cat(&parts, 0)
                })
                .collect();
            let d_all = Tensor::cat(&d_cols, 0).detach().set_requires_grad(true);
            let labels = Self::labels(ex);
            let parts = self.loss.compute(&q_all, &d_all, labels.as_ref(), step, total);
            self.backward(&parts.total);
            fill_loss_stats(&mut stats, &parts, &q_all, &d_all);
            let gq = q_all.grad();
            let gd = d_all.grad();
            let n = ex.len() as i64;
            let mut offset = 0i64;
            for (i, c) in chunks.iter().enumerate() {
                self.seed_for(i);
                let (q, d, _) = self.embed(c, true)?;
                let len = c.len() as i64;
                let gq_i = gq.narrow(0, offset, len);
                let gd_i = Tensor::cat(&(0..negs).map(|col| gd.narrow(0, col * n + offset, len)).collect::<Vec<_>>(), 0);
                let surrogate = (q * gq_i).sum(Kind::Float) + (d * gd_i).sum(Kind::Float);
                surrogate.backward();
                offset += len;
            }
        } else {
            // Plain accumulation: each micro-batch is its own loss (negatives within it), averaged.
            let chunks: Vec<&[&Example]> = ex.chunks(mb).collect();
            let k = chunks.len() as f64;
            for (i, c) in chunks.iter().enumerate() {
                self.seed_for(i);
                let (q, d, tokens) = self.embed(c, true)?;
                stats.tokens += tokens;
                let labels = Self::labels(c);
                let parts = self.loss.compute(&q, &d, labels.as_ref(), step, total);
                self.backward(&(&parts.total / k));
                let mut s = StepStats::default();
                fill_loss_stats(&mut s, &parts, &q, &d);
                stats.loss += s.loss / k;
                stats.ranking_loss += s.ranking_loss / k;
                stats.flops_query += s.flops_query / k;
                stats.flops_document += s.flops_document / k;
                stats.query_active_dims += s.query_active_dims / k;
                stats.document_active_dims += s.document_active_dims / k;
                stats.query_regularizer_weight = s.query_regularizer_weight;
                stats.document_regularizer_weight = s.document_regularizer_weight;
            }
        }
        stats.windows_per_doc = self.window_cost.take();
        Ok(stats)
    }

    /// Clips, updates and zeroes gradients: the end of an optimizer step.
    ///
    /// With fp16 the gradients are first unscaled (so clipping sees true gradients); if any is
    /// inf/NaN the AdamW update is skipped, weights and moments untouched, and the step counts in
    /// `state.skipped_steps` (the LR schedule does not advance, see [`Trainer::learning_rate`]);
    /// then the scaler backs off or grows. `global_step` advances either way, as in the HF Trainer.
    pub fn apply_gradients(&mut self, lr: f64) -> Applied {
        let params = self.opt.params();
        let loss_scale = self.scaler.as_ref().map(GradScaler::scale);
        let found_inf = self.scaler.as_ref().map(|s| s.unscale_(&params));
        let skipped = found_inf.as_ref().is_some_and(GradScaler::step_was_skipped);
        // Clipped (and measured) even when the step is skipped: the logged norm is then inf/NaN,
        // as the HF Trainer logs it.
        let grad_norm = clip_grad_norm(&params, self.cfg.training.max_grad_norm);
        if skipped {
            self.state.skipped_steps += 1;
        } else {
            self.opt.step(lr);
        }
        if let (Some(s), Some(f)) = (self.scaler.as_mut(), found_inf.as_ref()) {
            s.update(f);
        }
        self.opt.zero_grad();
        self.state.global_step += 1;
        Applied { grad_norm, loss_scale, skipped }
    }

    /// One full optimizer step on planned batch `self.state.global_step`.
    pub fn train_step(&mut self) -> Result<StepStats, TrainError> {
        let t0 = Instant::now();
        let batch = self
            .plan
            .step(self.state.global_step + 1)
            .cloned()
            .ok_or_else(|| other(format!("step {} is past the plan's {} steps", self.state.global_step, self.plan.len())))?;
        let lr = self.learning_rate();
        self.model.vs.unfreeze();
        let ex = self.examples(&batch, &batch.rows);
        // The next step's texts are tokenized on another thread while this step computes.
        let next = self.texts_to_tokenize(self.state.global_step + 2);
        let pre = (!next.is_empty()).then(|| self.model.pretokenizer());
        let (stats, prefetched) = std::thread::scope(|s| {
            let worker = s.spawn(move || {
                let Some(pre) = pre else { return Vec::new() };
                next.iter()
                    .filter_map(|(kind, texts)| {
                        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                        pre.pretokenize(&refs, *kind)
                    })
                    .collect::<Vec<_>>()
            });
            let stats = self.forward_backward(&ex);
            (stats, worker.join().unwrap_or_default())
        });
        self.model.set_prefetched(prefetched);
        let mut stats = stats?;
        self.finish_step(&mut stats, &batch, lr, t0);
        Ok(stats)
    }

    /// What [`Trainer::forward_backward`] will tokenize for planned step `step`, in its micro-batch
    /// chunks: each chunk's anchors (queries) and, unless documents are windowed, its candidates
    /// (positives, then each negative column). Empty past the plan.
    fn texts_to_tokenize(&self, step: u64) -> Vec<(TextKind, Vec<String>)> {
        let Some(batch) = self.plan.step(step) else { return Vec::new() };
        let ex = self.examples(batch, &batch.rows);
        let mb = (ex.len() / self.micro_batches.max(1)).max(1);
        let windowed = windows::TrainingWindows::from_config(&self.cfg).is_some();
        let mut out = Vec::new();
        for chunk in ex.chunks(mb) {
            // A batch `embed` refuses is not prefetched; the step reports it.
            let Some((anchors, cands)) = batch_texts(chunk) else { continue };
            let owned = |t: Vec<&str>| t.into_iter().map(String::from).collect();
            out.push((TextKind::Query, owned(anchors)));
            if !windowed {
                out.push((TextKind::Document, owned(cands)));
            }
        }
        out
    }

    /// Ends a step whose gradients are in place (single-process or all-reduced): applies them at `lr`,
    /// advances the epoch and sample count, and fills the step's lr, epoch, gradient norm and wall
    /// time (since `started`) into `stats`.
    pub fn finish_step(&mut self, stats: &mut StepStats, batch: &PlannedBatch, lr: f64, started: Instant) {
        stats.learning_rate = lr;
        stats.epoch = batch.epoch;
        let applied = self.apply_gradients(lr);
        stats.grad_norm = applied.grad_norm;
        stats.loss_scale = applied.loss_scale;
        stats.optimizer_step_skipped = applied.skipped;
        self.state.epoch = batch.epoch;
        self.state.samples_seen += batch.rows.len() as u64;
        stats.step_seconds = started.elapsed().as_secs_f64();
    }

    /// Writes model + optimizer + trainer state into `dir` (a local staging folder).
    pub fn write_checkpoint_files(&self, dir: &Path) -> Result<(), TrainError> {
        self.model.save(dir)?;
        self.opt.save(&dir.join(OPTIMIZER_STATE)).map_err(|e| other(format!("{}: {e}", dir.display())))?;
        if let Some(s) = &self.scaler {
            let text = serde_json::to_string_pretty(&s.state()).expect("scaler state serialises");
            std::fs::write(dir.join(SCALER_STATE), text).map_err(|e| other(format!("{}: {e}", dir.display())))?;
        }
        let state = TrainerState { plan_fingerprint: fingerprint(&self.plan, self.state.global_step), ..self.state.clone() };
        let st = serde_json::to_string_pretty(&state).expect("state serialises");
        std::fs::write(dir.join(TRAINER_STATE), st).map_err(|e| other(format!("{}: {e}", dir.display())))?;
        Ok(())
    }

    /// Commits `checkpoint-<step>` under the output location and applies `save_total_limit`.
    pub fn save_checkpoint(&self) -> Result<String, TrainError> {
        let name = format!("checkpoint-{}", self.state.global_step);
        let staging = tempfile::tempdir().map_err(|e| other(format!("cannot create a staging dir: {e}")))?;
        self.write_checkpoint_files(staging.path())?;
        block_on(commit_checkpoint(&self.output, &name, self.state.global_step, staging.path()))?;
        if let Some(limit) = self.cfg.training.save_total_limit {
            let protect: Vec<&str> = self.state.best_checkpoint.iter().map(String::as_str).collect();
            let removed = block_on(prune(&self.output, limit, &protect))?;
            if !removed.is_empty() {
                tracing::info!(removed = ?removed, "save_total_limit {limit}: pruned old checkpoints");
            }
        }
        Ok(self.output.url_of(&name))
    }

    /// Restores weights, optimizer and position from a committed checkpoint (`None`: the latest).
    pub fn resume(&mut self, name: Option<&str>) -> Result<Option<String>, TrainError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => match block_on(latest_checkpoint(&self.output))? {
                Some(info) => info.name,
                None => return Ok(None),
            },
        };
        let local = tempfile::tempdir().map_err(|e| other(format!("cannot create a temp dir: {e}")))?;
        block_on(fetch_checkpoint(&self.output, &name, local.path()))?;
        let state: TrainerState = serde_json::from_str(
            &std::fs::read_to_string(local.path().join(TRAINER_STATE)).map_err(|e| other(format!("{name}: {e}")))?,
        )
        .map_err(|e| other(format!("{name}/{TRAINER_STATE}: {e}")))?;
        if state.plan_fingerprint != fingerprint(&self.plan, state.global_step) {
            return Err(other(format!(
                "{}: checkpoint {name} was trained on a different batch plan (datasets, batch size or seed changed); \
                 resume with the config it was started with, or start a new output_dir",
                self.cfg.origin
            )));
        }
        let saved = SparseEncoder::load(local.path(), Device::Cpu, &load_options(&self.cfg))?;
        let src = saved.vs.variables();
        tch::no_grad(|| {
            for (n, mut t) in self.model.vs.variables() {
                t.copy_(&src[&n]);
            }
        });
        self.opt.load(&local.path().join(OPTIMIZER_STATE)).map_err(other)?;
        if let Some(s) = self.scaler.as_mut() {
            let path = local.path().join(SCALER_STATE);
            match std::fs::read_to_string(&path) {
                Ok(text) => s.load_state(
                    &serde_json::from_str::<ScalerState>(&text).map_err(|e| other(format!("{name}/{SCALER_STATE}: {e}")))?,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => tracing::warn!(
                    checkpoint = name,
                    "training.fp16: the checkpoint has no {SCALER_STATE} (saved without fp16); the loss scale starts at {}",
                    s.scale()
                ),
                Err(e) => return Err(other(format!("{name}/{SCALER_STATE}: {e}"))),
            }
        }
        // The schedule follows this run's plan length, even if the checkpoint's run was planned longer or shorter.
        self.state = TrainerState { total_steps: self.state.total_steps, ..state };
        Ok(Some(name))
    }
}

/// What [`Trainer::apply_gradients`] did.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// Total L2 norm of the (unscaled) gradients before clipping; inf/NaN on a skipped step.
    pub grad_norm: f64,
    /// With fp16: the scale the step's gradients were unscaled by (before this step's update).
    pub loss_scale: Option<f64>,
    /// With fp16: a gradient was inf/NaN and the optimizer step was skipped.
    pub skipped: bool,
}

/// The autocast dtype `training.bf16` / `training.fp16` ask for.
fn amp_kind(cfg: &Config) -> Option<Kind> {
    if cfg.training.bf16 {
        Some(Kind::BFloat16)
    } else if cfg.training.fp16 {
        Some(Kind::Half)
    } else {
        None
    }
}

fn active_dims(emb: &Tensor) -> f64 {
    emb.detach().gt(0.0).to_kind(Kind::Float).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).mean(Kind::Float).double_value(&[])
}

pub(crate) fn fill_loss_stats(s: &mut StepStats, parts: &loss::LossParts, q: &Tensor, d: &Tensor) {
    s.loss = parts.ranking + parts.flops_query + parts.flops_document;
    s.ranking_loss = parts.ranking;
    s.flops_query = parts.flops_query;
    s.flops_document = parts.flops_document;
    s.query_regularizer_weight = parts.query_weight;
    s.document_regularizer_weight = parts.document_weight;
    s.query_active_dims = active_dims(q);
    s.document_active_dims = active_dims(d);
}

/// Steps between events for an HF-style `*_steps` value (a fraction < 1 means that share of the run).
fn every(v: f64, total: u64) -> u64 {
    if v <= 0.0 {
        0
    } else if v < 1.0 {
        ((total as f64 * v).ceil() as u64).max(1)
    } else {
        v as u64
    }
}

/// Runs `splade train`: the whole single-process job, from config to `output_dir/final`.
pub fn run_training(cfg: Config, opts: &TrainOptions) -> Result<TrainOutcome, TrainError> {
    cfg.validate_for_training()?;
    for key in cfg.inactive_keys() {
        tracing::warn!("{}: `{key}` is parsed but not acted on yet", cfg.origin);
    }
    if let Some(n) = cfg.hardware.num_threads {
        tch::set_num_threads(n as i32);
    }
    let dev_spec = opts.device.clone().unwrap_or_else(|| {
        use splade_common::config::DeviceKind;
        match cfg.hardware.device {
            DeviceKind::Auto => "auto",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Mps => "mps",
        }
        .to_string()
    });
    let device = crate::device::parse_device(&dev_spec).map_err(other)?;
    let per_device = cfg.training.per_device_train_batch_size;
    let accum = cfg.training.gradient_accumulation_steps.max(1);
    let mut trainer = Trainer::new(cfg, device, per_device * accum, accum)?;
    if let Some(w) = windows::TrainingWindows::from_config(&trainer.cfg) {
        tracing::info!(spec = %w.spec, mode = ?w.mode, "document_windows: training documents are windowed (cost logged as train/windows_per_doc)");
    }
    if let Some(p) = &opts.dump_batches {
        std::fs::write(p, trainer.plan.to_jsonl()).map_err(|e| other(format!("{}: cannot write: {e}", p.display())))?;
    }
    match trainer.cfg.training.resume_from_checkpoint.clone() {
        Some(ResumeFrom::Latest) => {
            if let Some(n) = trainer.resume(None)? {
                tracing::info!(checkpoint = n, step = trainer.state.global_step, "resumed");
            } else {
                tracing::info!("resume_from_checkpoint: no committed checkpoint yet, starting fresh");
            }
        }
        Some(ResumeFrom::Path(p)) => {
            let name = p.trim_end_matches('/').rsplit('/').next().unwrap_or(&p).to_string();
            trainer.resume(Some(&name))?;
            tracing::info!(checkpoint = name, step = trainer.state.global_step, "resumed");
        }
        None => {
            // Committed checkpoints are never overwritten with other contents, so a fresh run into a used
            // output_dir fails when it reaches the first such name; say so now rather than steps later.
            // Only a hint: a store that cannot be listed now fails later where it is written to. Sizes
            // only: `latest_checkpoint` would hash (and from object storage download) every file.
            let committed = block_on(list_checkpoints_with(&trainer.output, Verify::Sizes)).unwrap_or_default();
            if let Some(info) = committed.iter().rev().find(|c| c.name.starts_with("checkpoint-")) {
                tracing::warn!(
                    output_dir = trainer.output.url(),
                    checkpoint = info.name,
                    "output_dir already holds committed checkpoints and this run starts from step 0; it will stop when it \
                     reaches a checkpoint name already committed with other contents. Set training.resume_from_checkpoint: true \
                     to continue that run, or use a new output_dir"
                );
            }
        }
    }
    let total = trainer.state.total_steps;
    let log_every = every(trainer.cfg.training.logging_steps, total).max(1);
    let save_every = match trainer.cfg.training.save_strategy {
        SaveStrategy::Steps => every(trainer.cfg.training.save_steps, total),
        _ => 0,
    };
    let eval_strategy = trainer.cfg.training.eval_strategy;
    let eval_every = match eval_strategy {
        IntervalStrategy::Steps => {
            every(trainer.cfg.training.eval_steps.unwrap_or(trainer.cfg.training.logging_steps), total).max(1)
        }
        _ => 0,
    };
    monitor::check_best_model_schedule(&trainer.cfg, save_every, eval_every)?;
    let evals = monitor::DuringEval::load(&trainer.cfg)?;
    if eval_strategy != IntervalStrategy::No && evals.tasks.is_empty() && evals.selector.metric != "loss" {
        return Err(other(format!(
            "{}: `training.eval_strategy` is {eval_strategy:?} but `evaluation.tasks` is empty; add a task (name, source, split) or set eval_strategy: no",
            trainer.cfg.origin
        )));
    }
    let mut mon = monitor::Monitor::start(&trainer.cfg, &trainer.output, opts.metrics_listen.as_deref())?;
    mon.log_config(&trainer.cfg);
    mon.training.set_global_step(trainer.state.global_step);
    let result = train_loop(&mut trainer, opts, &mut mon, &evals, log_every, save_every, eval_every);
    if result.is_err() {
        // Dropping the monitor marks the MLflow run FAILED; jsonl and TensorBoard are already flushed.
        drop(mon);
    }
    result
}

/// The step loop of [`run_training`] and the end of the run (final evaluation, best model, `final/`).
#[allow(clippy::too_many_arguments)]
fn train_loop(
    trainer: &mut Trainer,
    opts: &TrainOptions,
    mon: &mut monitor::Monitor,
    evals: &monitor::DuringEval,
    log_every: u64,
    save_every: u64,
    eval_every: u64,
) -> Result<TrainOutcome, TrainError> {
    let total = trainer.state.total_steps;
    let eval_strategy = trainer.cfg.training.eval_strategy;
    let save_strategy = trainer.cfg.training.save_strategy;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("static template"),
    );
    bar.set_position(trainer.state.global_step);
    let mut last_checkpoint = None;
    let mut interrupted = false;
    let t_start = Instant::now();
    let mut samples = 0usize;
    // Best evaluation so far and the step it was measured at; it becomes `state.best_checkpoint`
    // when a checkpoint is written at that step (as Hugging Face's Trainer records it).
    let mut best: Option<(f64, u64)> = trainer.state.best_metric.map(|m| (m, 0));
    let mut last_eval: Option<(u64, monitor::EvalRound)> = None;
    let mut last_loss = f64::NAN;
    while trainer.state.global_step < total {
        let stats = trainer.train_step()?;
        samples += stats.samples;
        last_loss = stats.loss;
        let sps = samples as f64 / t_start.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(stats.step);
        bar.set_message(format!("loss {:.4} lr {:.2e} {:.1} samples/s", stats.loss, stats.learning_rate, sps));
        let log_now = stats.step % log_every == 0 || stats.step == total;
        mon.record_step(&stats, log_now);
        if log_now {
            bar.suspend(|| {
                tracing::info!(
                    step = stats.step,
                    loss = format!("{:.5}", stats.loss),
                    ranking = format!("{:.5}", stats.ranking_loss),
                    flops_q = format!("{:.5}", stats.flops_query),
                    flops_d = format!("{:.5}", stats.flops_document),
                    w_q = format!("{:.2e}", stats.query_regularizer_weight),
                    w_d = format!("{:.2e}", stats.document_regularizer_weight),
                    lr = format!("{:.3e}", stats.learning_rate),
                    grad_norm = format!("{:.3}", stats.grad_norm),
                    active_q = format!("{:.1}", stats.query_active_dims),
                    active_d = format!("{:.1}", stats.document_active_dims),
                    samples_per_s = format!("{sps:.2}"),
                    "train"
                )
            });
        }
        let epoch_end = stats.step == total || trainer.plan.step(stats.step + 1).map(|b| b.epoch) != Some(stats.epoch);
        let eval_due = match eval_strategy {
            IntervalStrategy::Steps => eval_every > 0 && stats.step % eval_every == 0,
            IntervalStrategy::Epoch => epoch_end,
            IntervalStrategy::No => false,
        };
        let mut improved = false;
        if eval_due {
            let round = bar.suspend(|| evaluate_now(trainer, mon, evals, stats.step))?;
            if let Some(v) = evals.selector.value(&round, stats.loss) {
                if evals.selector.improves(v, best.map(|b| b.0)) {
                    best = Some((v, stats.step));
                    improved = true;
                }
            }
            last_eval = Some((stats.step, round));
        }
        let stop_now = opts.stop.as_ref().map(|s| s.load(Ordering::SeqCst)).unwrap_or(false);
        let due = match save_strategy {
            SaveStrategy::Steps => save_every > 0 && stats.step % save_every == 0,
            SaveStrategy::Epoch => epoch_end,
            SaveStrategy::Best => improved,
            SaveStrategy::No => false,
        };
        if (due || stop_now) && stats.step < total {
            last_checkpoint = Some(save_and_record(trainer, mon, best)?);
            bar.suspend(|| tracing::info!(step = stats.step, checkpoint = ?last_checkpoint, "checkpoint committed"));
        }
        if stop_now {
            interrupted = true;
            bar.abandon_with_message("interrupted: checkpoint written");
            break;
        }
    }
    if interrupted {
        mon.finish(None);
        return Ok(TrainOutcome { final_step: trainer.state.global_step, final_model: None, interrupted, last_checkpoint });
    }
    bar.finish();
    // The end of the run is evaluated when tasks are configured (unless the last step just was).
    let step = trainer.state.global_step;
    if !evals.tasks.is_empty() {
        let round = match last_eval.take() {
            Some((s, r)) if s == step => r,
            _ => {
                let round = evaluate_now(trainer, mon, evals, step)?;
                if eval_strategy != IntervalStrategy::No {
                    if let Some(v) = evals.selector.value(&round, last_loss) {
                        if evals.selector.improves(v, best.map(|b| b.0)) {
                            best = Some((v, step));
                        }
                    }
                }
                round
            }
        };
        for (name, s) in &round.tasks {
            let get = |k: &str| s.metrics.get(k).copied().unwrap_or(f64::NAN);
            eprintln!("eval {name} ({}) at step {step}: NDCG@10 {:.4}  MRR@10 {:.4}", s.split, get("ndcg_at_10"), get("mrr_at_10"));
        }
        if round.tasks.len() > 1 {
            eprintln!("eval mean over {} tasks: NDCG@10 {:.4}", round.tasks.len(), round.mean.get("ndcg_at_10").copied().unwrap_or(f64::NAN));
        }
    }
    if save_every > 0 || save_strategy != SaveStrategy::No {
        last_checkpoint = Some(save_and_record(trainer, mon, best)?);
    }
    if trainer.cfg.training.load_best_model_at_end {
        match trainer.state.best_checkpoint.clone() {
            Some(name) if name != format!("checkpoint-{step}") => {
                load_checkpoint_weights(trainer, &name)?;
                eprintln!(
                    "load_best_model_at_end: final model = {name} ({} {:.4})",
                    evals.selector.logged_as,
                    trainer.state.best_metric.unwrap_or(f64::NAN)
                );
            }
            Some(_) => {}
            None => tracing::warn!("load_best_model_at_end: no evaluated checkpoint was saved; the final model is the last step's"),
        }
    }
    let staging = tempfile::tempdir().map_err(|e| other(format!("cannot create a staging dir: {e}")))?;
    trainer.model.save(staging.path())?;
    // A resumed or repeated run replaces an earlier final model (manifest removed first).
    if block_on(verify_checkpoint(&trainer.output, "final", Verify::Sizes)).is_ok() {
        block_on(delete_checkpoint(&trainer.output, "final"))?;
    }
    block_on(commit_checkpoint(&trainer.output, "final", trainer.state.global_step, staging.path()))?;
    mon.finish(Some(staging.path()));
    Ok(TrainOutcome {
        final_step: trainer.state.global_step,
        final_model: Some(trainer.output.url_of("final")),
        interrupted,
        last_checkpoint,
    })
}

/// Evaluates the configured tasks now and reports them at `step`.
fn evaluate_now(
    trainer: &Trainer,
    mon: &mut monitor::Monitor,
    evals: &monitor::DuringEval,
    step: u64,
) -> Result<monitor::EvalRound, TrainError> {
    let t0 = Instant::now();
    let round = evals.run(&trainer.model)?;
    mon.record_eval(step, &round);
    let shown: Vec<String> = round
        .tasks
        .iter()
        .map(|(n, s)| format!("{n} ndcg@10 {:.4}", s.metrics.get("ndcg_at_10").copied().unwrap_or(f64::NAN)))
        .collect();
    tracing::info!(step, seconds = format!("{:.1}", t0.elapsed().as_secs_f64()), "eval: {}", shown.join(", "));
    Ok(round)
}

/// Commits `checkpoint-<step>`, first recording it as the best when `best` was measured at this step.
fn save_and_record(trainer: &mut Trainer, mon: &monitor::Monitor, best: Option<(f64, u64)>) -> Result<String, TrainError> {
    let step = trainer.state.global_step;
    if let Some((v, s)) = best {
        if s == step {
            trainer.state.best_metric = Some(v);
            trainer.state.best_checkpoint = Some(format!("checkpoint-{step}"));
        }
    }
    let t0 = Instant::now();
    let url = trainer.save_checkpoint()?;
    mon.record_checkpoint(step, t0.elapsed().as_secs_f64());
    Ok(url)
}

/// Replaces the model's weights with those of committed checkpoint `name` (optimizer and position stay).
fn load_checkpoint_weights(trainer: &mut Trainer, name: &str) -> Result<(), TrainError> {
    let local = tempfile::tempdir().map_err(|e| other(format!("cannot create a temp dir: {e}")))?;
    block_on(fetch_checkpoint(&trainer.output, name, local.path()))?;
    let saved = SparseEncoder::load(local.path(), Device::Cpu, &load_options(&trainer.cfg))?;
    let src = saved.vs.variables();
    tch::no_grad(|| -> Result<(), TrainError> {
        for (n, mut t) in trainer.model.vs.variables() {
            let s = src.get(&n).ok_or_else(|| other(format!("{name}: the checkpoint has no tensor `{n}`")))?;
            t.copy_(s);
        }
        Ok(())
    })
}

/// Installs SIGTERM/SIGINT handlers that set the returned flag (the trainer checks it between steps).
pub fn stop_on_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    flag
}
