//! The [`Trainer`]: model, optimizer, objective, the batch plan and the settings a step needs, resolved
//! once from the config; the optimizer's end of a step ([`Trainer::apply_gradients`]) and checkpoints
//! (write, commit, resume). The step itself is in [`super::step`], the schedule around it in
//! [`super::schedule`].

use std::path::Path;
use std::time::Instant;

use splade_common::config::{Config, InnerLoss as CfgInner};
use splade_common::data::plan::{BatchPlan, PlannedBatch};
use splade_common::data::{load_training_data, scan_training_data, DataPlan, Example, HubPin, PublishedPlan, ScannedDataset, SplitDataset};
use splade_common::store::checkpoint::{commit_checkpoint, fetch_checkpoint, latest_checkpoint, prune};
use splade_common::store::{block_on, Location, StoreOptions};
use tch::{Device, Kind};

use super::loss::{InnerLoss, SpladeLossConfig};
use super::optim::{clip_grad_norm, linear_schedule, no_decay, warmup_steps, AdamW, ParamGroup};
use super::scaler::{GradScaler, ScalerConfig, ScalerState};
use super::state::{TrainerState, OPTIMIZER_STATE, SCALER_STATE, TRAINER_STATE};
use super::{inference_free, other, windows, StepStats, TrainError};
use crate::model::{resolve::resolve_model, LoadOptions, PoolingConfig, PoolingStrategy, SparseEncoder};

/// A SPLADE trainer: model, optimizer, objective and the deterministic batch plan.
pub struct Trainer {
    pub cfg: Config,
    pub model: SparseEncoder,
    pub opt: AdamW,
    pub loss: SpladeLossConfig,
    /// `loss.type: csr_loss`: CSRLoss around `loss`'s ranking loss (CSR models).
    pub csr_loss: Option<super::csr::CsrLossConfig>,
    /// The loaded training datasets in config order (empty when the rows come from a data plan's slices).
    pub datasets: Vec<SplitDataset>,
    /// Per dataset, what the trainer knows besides its training rows (the model card's counts, the
    /// checkpoint's Hub pins, the dev rows or dev file): from the loaded datasets, the streaming pass, or (a
    /// cluster rank following a plan made elsewhere) the plan's manifest, which holds no dev rows.
    pub facts: Vec<DatasetFacts>,
    pub plan: TrainPlan,
    pub state: TrainerState,
    pub output: Location,
    /// Micro-batches per optimizer step on this process.
    pub micro_batches: usize,
    /// With `training.fp16`: the dynamic loss scaler (torch's `GradScaler` defaults). Replace it
    /// before the first step to change its settings.
    pub scaler: Option<GradScaler>,
    pub(crate) warmup: u64,
    pub(crate) seed: u64,
    pub(crate) window_cost: windows::WindowCost,
    /// The next step's texts, tokenized on the tokenizer thread while this step computed; taken by that step.
    pub(crate) next_tokens: Option<super::step::StepTokens>,
    /// Batches a step took from the tokenizer thread's work instead of tokenizing them itself.
    pub(crate) pretokenized: std::sync::atomic::AtomicU64,
    /// `training.learning_rate`: the peak of the linear schedule.
    pub(crate) peak_lr: f64,
    /// `training.max_grad_norm`.
    pub(crate) max_grad_norm: f64,
    /// `training.gradient_cache`.
    pub(crate) gradient_cache: bool,
    /// The autocast dtype of `training.bf16` / `training.fp16`.
    pub(crate) amp: Option<Kind>,
    /// `document_windows`, when training documents are windowed.
    pub(crate) windows: Option<windows::TrainingWindows>,
    /// For the model card: each task's metrics of the last evaluation.
    pub(crate) card_evaluation: Vec<(String, Vec<(String, f64)>)>,
    /// For the model card: one line per evaluation so far.
    pub(crate) card_logs: Vec<super::card::EvalLine>,
}

/// One dataset's facts besides its training rows (see [`Trainer::facts`]).
#[derive(Debug, Clone)]
pub struct DatasetFacts {
    /// Config name.
    pub name: String,
    /// Training rows.
    pub train_rows: usize,
    /// Held-out rows (few by design), read back by location when planned by the streaming pass.
    pub eval: Vec<Example>,
    /// The Hub commits its rows come from (the source's for a file block, every dataset a seed loader block
    /// read): what checkpoints record ([`TrainerState::hub_datasets`]). Empty for local and object-store data.
    pub hub: Vec<HubPin>,
    /// A seed loader block's dev split file as the data plan names it (its copy under `output_dir`): where a
    /// trainer following a published plan, which holds no rows, reads the dev rows ([`super::dev::plan_dev_sets`]).
    pub dev: Option<String>,
}

impl DatasetFacts {
    fn of_loaded(d: &SplitDataset) -> Self {
        Self { name: d.name.clone(), train_rows: d.train.len(), eval: d.eval.clone(), hub: d.hub.clone(), dev: d.index.dev.clone() }
    }

    fn of_scanned(d: &mut ScannedDataset) -> Self {
        let (hub, dev) = (d.index.hub.clone(), d.index.dev.clone());
        Self { name: d.name.clone(), train_rows: d.train_len(), eval: std::mem::take(&mut d.eval), hub, dev }
    }

    /// A published plan's dataset: its training-split size, Hub pins and dev file; no rows.
    fn of_manifest(d: &splade_common::data::artifact::ManifestDataset) -> Self {
        Self { name: d.dataset.clone(), train_rows: d.train_rows as usize, eval: Vec::new(), hub: d.hub.clone(), dev: d.dev.clone() }
    }
}

/// Streams every enabled dataset once, in config order, and plans `global_batch` rows per step: the data plan
/// a coordinator publishes for the same config and data (the same code), with each dataset's facts (its dev
/// rows read back by location). No dataset is loaded whole: a row costs a few bytes of summary while planning,
/// and the memory planning used goes back to the system before this returns.
pub fn plan_train_datasets(cfg: &Config, global_batch: usize) -> Result<(DataPlan, Vec<DatasetFacts>), TrainError> {
    let mut data = block_on(scan_training_data(cfg.datasets.enabled(), cfg.training.seed, &StoreOptions::from_env(), true))?;
    if data.is_empty() {
        return Err(other(format!("{}: no enabled dataset under `datasets:`; enable at least one", cfg.origin)));
    }
    let facts = data.iter_mut().map(DatasetFacts::of_scanned).collect();
    let plan = DataPlan::build(&cfg.plan_spec(global_batch), data).map_err(|e| other(format!("{}: cannot plan batches: {e}", cfg.origin)))?;
    splade_common::data::scan::release_freed_memory();
    Ok((plan, facts))
}

fn inner_loss(cfg: &Config) -> InnerLoss {
    match cfg.loss.inner_loss {
        CfgInner::SparseMultipleNegativesRankingLoss => InnerLoss::MultipleNegativesRanking { scale: cfg.loss.scale },
        CfgInner::SparseMarginMse => InnerLoss::MarginMse,
        CfgInner::SparseDistillKldiv => InnerLoss::DistillKlDiv { temperature: cfg.loss.temperature },
    }
}

/// Loads and splits every enabled dataset, in config order: the code the coordinator plans a cluster job with
/// (`splade_common::data::load_training_data`).
pub fn load_train_datasets(cfg: &Config) -> Result<Vec<SplitDataset>, TrainError> {
    let out = block_on(load_training_data(cfg.datasets.enabled(), cfg.training.seed, &StoreOptions::from_env()))?;
    if out.is_empty() {
        return Err(other(format!("{}: no enabled dataset under `datasets:`; enable at least one", cfg.origin)));
    }
    Ok(out)
}

/// The batch plan for `global_batch` rows per optimizer step: the plan of the [`DataPlan`] a coordinator
/// publishes for the same config and data, so `splade train` and a cluster train the same batches.
pub fn build_plan(cfg: &Config, datasets: &[SplitDataset], global_batch: usize) -> Result<BatchPlan, TrainError> {
    let data = datasets.iter().map(ScannedDataset::from_split).collect();
    let plan = DataPlan::build(&cfg.plan_spec(global_batch), data).map_err(|e| other(format!("{}: cannot plan batches: {e}", cfg.origin)))?;
    Ok(BatchPlan { batches: plan.batches })
}

/// The batches a trainer follows.
pub enum TrainPlan {
    /// Every batch in memory: `splade train`, or a worker that planned itself.
    Whole(BatchPlan),
    /// A coordinator's published plan: its verified manifest only; each step's batch arrives with its rows
    /// from the plan's chunks ([`super::fetch::SliceFetcher`]).
    Published(std::sync::Arc<PublishedPlan>),
}

impl TrainPlan {
    /// Number of planned steps.
    pub fn len(&self) -> usize {
        match self {
            TrainPlan::Whole(p) => p.len(),
            TrainPlan::Published(p) => p.manifest.total_steps as usize,
        }
    }

    /// True when no step is planned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch of `step` when the whole plan is in memory; `None` past it and for a published plan.
    pub fn step(&self, step: u64) -> Option<&PlannedBatch> {
        match self {
            TrainPlan::Whole(p) => p.step(step),
            TrainPlan::Published(_) => None,
        }
    }

    /// The epoch of `step`, `None` past the plan.
    pub fn epoch_of(&self, step: u64) -> Option<u64> {
        match self {
            TrainPlan::Whole(p) => p.step(step).map(|b| b.epoch),
            TrainPlan::Published(p) => p.epoch_of(step),
        }
    }

    /// Fingerprint of the first `steps` batches: a checkpoint records the batches it consumed, so resume can
    /// check that the data so far was the same, while a longer or shorter run (another max_steps) stays
    /// allowed. A published plan is identified by its manifest's sha256 instead (which pins every chunk): a
    /// worker holds only the chunks it trains, not the batches before them.
    pub fn fingerprint(&self, steps: u64) -> String {
        match self {
            TrainPlan::Whole(p) => fingerprint(p, steps),
            TrainPlan::Published(p) => format!("data-plan:{}", p.reference.sha256),
        }
    }
}

impl From<BatchPlan> for TrainPlan {
    fn from(p: BatchPlan) -> Self {
        TrainPlan::Whole(p)
    }
}

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

/// The name sentence-transformers' trainer gives one of our parameters: the loss module's
/// `named_parameters()` name (`model.` + the SparseEncoder's module path + the transformers name), which is
/// what `router.learning_rate_patterns` are matched against. The MLM's attribute is spelled as in
/// sentence-transformers 6 (`…document.0.model.bert…`; 5.x said `auto_model`); the query route's
/// `model.0.sub_modules.query.0.weight` is the same in both.
pub fn st_parameter_name(model: &SparseEncoder, name: &str) -> String {
    if name == crate::model::STATIC_VAR {
        "model.0.sub_modules.query.0.weight".into()
    } else if model.is_inference_free() {
        format!("model.0.sub_modules.document.0.model.{name}")
    } else {
        format!("model.0.model.{name}")
    }
}

/// The optimizer's parameter groups, as sentence-transformers' `create_optimizer` builds them: weight decay for
/// all but biases and LayerNorm weights, the inference-free static table at `query_learning_rate`, then one
/// group (split by decay) per `router.learning_rate_patterns` entry taking the parameters it matches out of
/// the earlier groups. Frozen parameters match patterns but are never in a group.
pub fn param_groups(model: &SparseEncoder, cfg: &Config) -> Result<Vec<ParamGroup>, TrainError> {
    let named = model.named_parameters();
    let st_names: Vec<String> = named.iter().map(|(n, _)| st_parameter_name(model, n)).collect();
    let assigned = cfg.learning_rate_pattern_of(&st_names)?;
    let pattern_of: std::collections::HashMap<String, (usize, f64)> =
        named.iter().zip(&assigned).filter_map(|((n, _), a)| a.map(|a| (n.clone(), a))).collect();
    let lr = cfg.training.learning_rate;
    let group = |wd: f64, scale: f64| ParamGroup { names: vec![], params: vec![], weight_decay: wd, lr_scale: scale };
    let mut decay = group(cfg.training.weight_decay, 1.0);
    let mut plain = group(0.0, 1.0);
    let n_patterns = cfg.router.learning_rate_patterns.len();
    let mut by_pattern: Vec<(ParamGroup, ParamGroup)> = cfg
        .router
        .learning_rate_patterns
        .values()
        .map(|p_lr| (group(cfg.training.weight_decay, p_lr / lr), group(0.0, p_lr / lr)))
        .collect();
    let mut static_group = inference_free::static_param_group(model, cfg);
    for (name, t) in named {
        let (d, p) = match pattern_of.get(name.as_str()) {
            Some((i, _)) if *i < n_patterns => {
                let (d, p) = &mut by_pattern[*i];
                (d, p)
            }
            _ => {
                if name == crate::model::STATIC_VAR {
                    continue; // its own group (or none when frozen), below
                }
                (&mut decay, &mut plain)
            }
        };
        if name == crate::model::STATIC_VAR {
            // Taken by a pattern: out of the query_learning_rate group; a frozen table trains in no group.
            if static_group.take().is_none() {
                continue;
            }
        }
        let g = if no_decay(&name) { p } else { d };
        g.names.push(name);
        g.params.push(t);
    }
    let mut groups = vec![decay, plain];
    groups.extend(static_group);
    for (d, p) in by_pattern {
        groups.extend([d, p].into_iter().filter(|g| !g.names.is_empty()));
    }
    Ok(groups)
}

impl Trainer {
    /// Builds a trainer for `cfg` on `device` whose plan has `global_batch` rows per step, of
    /// which this process computes `micro_batches` micro-batches of `per_device_train_batch_size`.
    pub fn new(cfg: Config, device: Device, global_batch: usize, micro_batches: usize) -> Result<Self, TrainError> {
        let datasets = load_train_datasets(&cfg)?;
        let plan = build_plan(&cfg, &datasets, global_batch)?;
        let mut t = Self::from_parts(cfg, device, datasets, TrainPlan::Whole(plan), global_batch, micro_batches)?;
        t.facts = t.datasets.iter().map(DatasetFacts::of_loaded).collect();
        Ok(t)
    }

    /// `splade train`'s trainer: plans with the streaming pass ([`plan_train_datasets`]), publishes the plan to
    /// `output_dir/data-plan/` as a coordinator does and follows it as a one-rank cluster would
    /// ([`Trainer::with_plan`]): its steps read their rows through the plan's index
    /// ([`super::step::BatchSource::slices`]), so there is one data path. Holds no rows.
    pub fn planned(cfg: Config, device: Device, global_batch: usize, micro_batches: usize) -> Result<(Self, std::sync::Arc<PublishedPlan>), TrainError> {
        let (plan, facts) = plan_train_datasets(&cfg, global_batch)?;
        let options = StoreOptions::from_env();
        let output = Location::parse_with(&cfg.training.output_dir, &options)?;
        let r = block_on(plan.publish(&output, cfg.cluster.data_plan_chunk_steps))?;
        // The batches stay in memory (8 bytes a row) for the checkpoint fingerprint of the steps done, so a
        // resume with another max_steps stays allowed, as with `Trainer::new`; the rows come through the index.
        let whole = plan.plan();
        drop(plan);
        splade_common::data::scan::release_freed_memory();
        let published = std::sync::Arc::new(block_on(PublishedPlan::fetch(&r, &options))?);
        let mut t = Self::with_plan(cfg, device, published.clone(), micro_batches)?;
        t.plan = TrainPlan::Whole(whole);
        t.facts = facts;
        Ok((t, published))
    }

    /// A trainer that follows a cluster coordinator's published data plan and holds no dataset: its batches
    /// and examples come from the plan's chunks ([`super::fetch::SliceFetcher`] through
    /// [`super::step::BatchSource::Slices`]), so [`Trainer::examples`] and [`Trainer::train_step`] must not
    /// be used. Checks the manifest's datasets against the loss first (labels present where it needs them).
    pub fn with_plan(cfg: Config, device: Device, plan: std::sync::Arc<PublishedPlan>, micro_batches: usize) -> Result<Self, TrainError> {
        let global_batch = plan.manifest.global_batch_size;
        let inner = inner_loss(&cfg);
        if inner.needs_labels() {
            if let Some(d) = plan.manifest.datasets.iter().find(|d| !d.labelled) {
                return Err(TrainError::Labels(format!(
                    "dataset `{}`: {}: no `label` on any row, but loss.inner_loss {} needs teacher scores on every row; add the column (map it with datasets.{}.columns: {{<column>: label}}) or use sparse_multiple_negatives_ranking_loss",
                    d.dataset,
                    d.files.iter().map(|f| f.url.as_str()).collect::<Vec<_>>().join(", "),
                    inner.config_name(),
                    d.dataset
                )));
            }
        }
        let facts = plan.manifest.datasets.iter().map(DatasetFacts::of_manifest).collect();
        let mut t = Self::from_parts(cfg, device, Vec::new(), TrainPlan::Published(plan), global_batch, micro_batches)?;
        t.facts = facts;
        Ok(t)
    }

    fn from_parts(
        cfg: Config,
        device: Device,
        datasets: Vec<SplitDataset>,
        plan: TrainPlan,
        global_batch: usize,
        micro_batches: usize,
    ) -> Result<Self, TrainError> {
        if plan.is_empty() {
            return Err(other(format!(
                "{}: the datasets are smaller than one batch of {global_batch}; lower training.per_device_train_batch_size",
                cfg.origin
            )));
        }
        crate::model::set_pin_memory(cfg.training.dataloader_pin_memory.unwrap_or(true));
        crate::amp::apply_tf32(cfg.hardware.tf32, device);
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
        let opt = AdamW::new(param_groups(&model, &cfg)?);
        let total = plan.len() as u64;
        let loss = SpladeLossConfig {
            inner: inner_loss(&cfg),
            query_regularizer_weight: cfg.loss.query_regularizer_weight,
            document_regularizer_weight: cfg.loss.document_regularizer_weight,
            regularizer_warmup_ratio: cfg.loss.regularizer_warmup_ratio,
        };
        // Before step 1: every training row carries what the loss reads.
        for d in &datasets {
            super::loss::validate_labels(&loss.inner, &d.index)?;
        }
        let csr_loss = super::csr::CsrLossConfig::from_config(&cfg);
        let output = Location::parse(&cfg.training.output_dir)?;
        let state = TrainerState { total_steps: total, ..Default::default() };
        let warmup = warmup_steps(total, cfg.training.warmup_ratio);
        let seed = cfg.training.seed;
        let (peak_lr, max_grad_norm, gradient_cache) =
            (cfg.training.learning_rate, cfg.training.max_grad_norm, cfg.training.gradient_cache);
        let amp = amp_kind(&cfg);
        let windows = windows::TrainingWindows::from_config(&cfg);
        Ok(Self {
            cfg,
            model,
            opt,
            loss,
            csr_loss,
            datasets,
            facts: Vec::new(),
            plan,
            state,
            output,
            micro_batches,
            scaler,
            warmup,
            seed,
            window_cost: Default::default(),
            next_tokens: None,
            pretokenized: Default::default(),
            peak_lr,
            max_grad_norm,
            gradient_cache,
            amp,
            windows,
            card_evaluation: Vec::new(),
            card_logs: Vec::new(),
        })
    }

    /// Learning rate of the step about to run. The schedule advances once per optimizer step
    /// taken: steps the fp16 loss scaler skipped do not advance it, as in the Hugging Face Trainer
    /// (which calls `lr_scheduler.step()` only `if not accelerator.optimizer_step_was_skipped`).
    pub fn learning_rate(&self) -> f64 {
        let scheduled = self.state.global_step - self.state.skipped_steps.min(self.state.global_step);
        linear_schedule(self.peak_lr, scheduled, self.warmup, self.state.total_steps)
    }

    /// Examples of a planned batch, in plan order.
    pub fn examples<'a>(&'a self, batch: &PlannedBatch, rows: &[usize]) -> Vec<&'a Example> {
        let ds = self
            .datasets
            .iter()
            .find(|d| d.name == batch.dataset)
            .expect("a plan built from these datasets names only them");
        rows.iter().map(|&r| &ds.train[r]).collect()
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
        let grad_norm = clip_grad_norm(&params, self.max_grad_norm);
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
        self.write_model_card(dir)?;
        let opt_path = dir.join(OPTIMIZER_STATE);
        self.opt
            .save(&opt_path)
            .map_err(|source| TrainError::Tensor { context: format!("writing {}", opt_path.display()), source })?;
        if let Some(s) = &self.scaler {
            let text = serde_json::to_string_pretty(&s.state()).expect("scaler state serialises");
            std::fs::write(dir.join(SCALER_STATE), text).map_err(|e| TrainError::io(dir.join(SCALER_STATE).display(), e))?;
        }
        let hub_datasets = self.facts.iter().filter(|d| !d.hub.is_empty()).map(|d| (d.name.clone(), d.hub.clone())).collect();
        let state = TrainerState {
            plan_fingerprint: self.plan.fingerprint(self.state.global_step),
            hub_datasets,
            ..self.state.clone()
        };
        let st = serde_json::to_string_pretty(&state).expect("state serialises");
        std::fs::write(dir.join(TRAINER_STATE), st).map_err(|e| TrainError::io(dir.join(TRAINER_STATE).display(), e))?;
        Ok(())
    }

    /// Commits `checkpoint-<step>` under the output location and applies `save_total_limit`. A write that
    /// fails part-way (a full disk, a store that refuses) is [`TrainError::CheckpointWrite`] and commits
    /// nothing: the previous checkpoint stays the one a resume picks.
    pub fn save_checkpoint(&self) -> Result<String, TrainError> {
        let name = format!("checkpoint-{}", self.state.global_step);
        let write_err = |source: TrainError| TrainError::CheckpointWrite { checkpoint: self.output.url_of(&name), source: Box::new(source) };
        let staging = tempfile::tempdir().map_err(|e| write_err(TrainError::io("a staging folder in the temp dir", e)))?;
        self.write_checkpoint_files(staging.path()).map_err(write_err)?;
        block_on(commit_checkpoint(&self.output, &name, self.state.global_step, staging.path())).map_err(|e| write_err(e.into()))?;
        if let Some(limit) = self.cfg.training.save_total_limit {
            let protect: Vec<&str> = self.state.best_checkpoint.iter().map(String::as_str).collect();
            let removed = block_on(prune(&self.output, limit, &protect))?;
            if !removed.is_empty() {
                tracing::info!(removed = ?removed, "save_total_limit {limit}: pruned old checkpoints");
            }
        }
        Ok(self.output.url_of(&name))
    }

    /// Restores weights, optimizer and position from a committed checkpoint under `output_dir` (`None`: the
    /// latest; `Some(name)`: that one).
    pub fn resume(&mut self, name: Option<&str>) -> Result<Option<String>, TrainError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => match block_on(latest_checkpoint(&self.output))? {
                Some(info) => info.name,
                None => return Ok(None),
            },
        };
        let output = self.output.clone();
        self.resume_at(&output, &name)?;
        Ok(Some(name))
    }

    /// `training.resume_from_checkpoint: <path>`: a bare name (`checkpoint-20`) is looked up under
    /// `output_dir`; a path or URL (`runs/a/checkpoint-20`, `s3://b/run/checkpoint-20`) is taken as given,
    /// wherever it is. Returns the checkpoint's URL.
    pub fn resume_from_path(&mut self, path: &str) -> Result<String, TrainError> {
        let trimmed = path.trim_end_matches('/');
        let (parent, name) = match trimmed.rsplit_once('/') {
            None => (self.output.clone(), trimmed.to_string()),
            Some((dir, name)) => {
                // `/checkpoint-3` and `s3://bucket/checkpoint-3` keep their root.
                let dir = if dir.is_empty() || dir.ends_with(':') || dir.ends_with("//") { format!("{dir}/") } else { dir.to_string() };
                (Location::parse(&dir)?, name.to_string())
            }
        };
        self.resume_at(&parent, &name)?;
        Ok(parent.url_of(&name))
    }

    /// Restores checkpoint `name` under `location`. Everything is read and checked against this trainer
    /// first (plan, tensor names, shapes and dtypes, optimizer state); no tensor is touched unless all fits.
    fn resume_at(&mut self, location: &Location, name: &str) -> Result<(), TrainError> {
        let url = location.url_of(name);
        let local = tempfile::tempdir().map_err(|e| TrainError::io("a temporary folder for the checkpoint", e))?;
        block_on(fetch_checkpoint(location, name, local.path()))?;
        let state_path = local.path().join(TRAINER_STATE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(format!("{url}/{TRAINER_STATE}"), e))?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|source| TrainError::Json { path: format!("{url}/{TRAINER_STATE}"), source })?;
        if state.plan_fingerprint != self.plan.fingerprint(state.global_step) {
            return Err(other(format!(
                "{}: checkpoint {url} was trained on a different batch plan (datasets, batch size or seed changed); \
                 resume with the config it was started with, or start a new output_dir",
                self.cfg.origin
            )));
        }
        let saved = SparseEncoder::load(local.path(), Device::Cpu, &load_options(&self.cfg))?;
        check_weights(&self.model, &saved, &url)?;
        let opt_state = self.opt.read_state(&local.path().join(OPTIMIZER_STATE), &url)?;
        let scaler_state = match self.scaler.as_ref() {
            None => None,
            Some(s) => {
                let path = local.path().join(SCALER_STATE);
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some(
                        serde_json::from_str::<ScalerState>(&text)
                            .map_err(|source| TrainError::Json { path: format!("{url}/{SCALER_STATE}"), source })?,
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::warn!(
                            checkpoint = url,
                            "training.fp16: the checkpoint has no {SCALER_STATE} (saved without fp16); the loss scale starts at {}",
                            s.scale()
                        );
                        None
                    }
                    Err(e) => return Err(TrainError::io(format!("{url}/{SCALER_STATE}"), e)),
                }
            }
        };
        copy_weights(&self.model, &saved, &url)?;
        self.opt.restore(opt_state)?;
        if let (Some(s), Some(st)) = (self.scaler.as_mut(), scaler_state) {
            s.load_state(&st);
        }
        // The schedule follows this run's plan length, even if the checkpoint's run was planned longer or shorter.
        self.state = TrainerState { total_steps: self.state.total_steps, ..state };
        Ok(())
    }
}

/// Before a resume loads the data: pins every Hub dataset of `cfg` to the commit the checkpoint to resume
/// from recorded (its `trainer_state.json`), so the resumed run reads the data the checkpoint was trained on
/// even if the dataset's branch has moved. Nothing to do without `resume_from_checkpoint`, without a committed
/// checkpoint, or for checkpoints that recorded no Hub dataset.
pub fn pin_hub_datasets_for_resume(cfg: &mut Config) -> Result<(), TrainError> {
    use splade_common::config::ResumeFrom;
    use splade_common::store::checkpoint::{list_checkpoints_with, Verify};
    let Some(resume) = cfg.training.resume_from_checkpoint.clone() else { return Ok(()) };
    let output = Location::parse(&cfg.training.output_dir)?;
    let name = match resume {
        ResumeFrom::Path(p) => p.trim_end_matches('/').rsplit('/').next().unwrap_or(&p).to_string(),
        ResumeFrom::Latest => {
            let list = block_on(list_checkpoints_with(&output, Verify::Sizes)).unwrap_or_default();
            match list.into_iter().rev().find(|c| c.name.starts_with("checkpoint-")) {
                Some(c) => c.name,
                None => return Ok(()),
            }
        }
    };
    let key = output.child(&format!("{name}/{TRAINER_STATE}"));
    let bytes = match block_on(async { output.store().get(&key).await?.bytes().await }) {
        Ok(b) => b,
        // No state file: resume itself reports the broken checkpoint.
        Err(_) => return Ok(()),
    };
    let state: TrainerState =
        serde_json::from_slice(&bytes).map_err(|e| other(format!("{}: {e}", output.url_of(&format!("{name}/{TRAINER_STATE}")))))?;
    for (dataset, pins) in &state.hub_datasets {
        if let Some((_, spec)) = cfg.datasets.datasets.iter_mut().find(|(n, _)| n == dataset) {
            if spec.pin_hub_commits(pins) {
                for pin in pins {
                    tracing::info!(dataset, repo_id = pin.repo_id, commit = pin.commit, checkpoint = name, "resume: Hub dataset pinned to the checkpoint's commit");
                }
            }
        }
    }
    Ok(())
}

/// Checks that `saved` has every variable of `model` with the same shape and dtype.
fn check_weights(model: &SparseEncoder, saved: &SparseEncoder, checkpoint: &str) -> Result<(), TrainError> {
    let src = saved.vs.variables();
    let mut names: Vec<(String, tch::Tensor)> = model.vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (n, t) in &names {
        let bad = |problem: String| TrainError::Checkpoint { checkpoint: checkpoint.to_string(), problem };
        let s = src.get(n).ok_or_else(|| bad(format!("has no tensor `{n}` (saved from another model or architecture)")))?;
        if s.size() != t.size() || s.kind() != t.kind() {
            return Err(bad(format!("`{n}` is {:?} {:?}, the model's is {:?} {:?}", s.kind(), s.size(), t.kind(), t.size())));
        }
    }
    Ok(())
}

/// Copies `saved`'s weights into `model` after [`check_weights`].
fn copy_weights(model: &SparseEncoder, saved: &SparseEncoder, checkpoint: &str) -> Result<(), TrainError> {
    check_weights(model, saved, checkpoint)?;
    let src = saved.vs.variables();
    tch::no_grad(|| {
        for (n, mut t) in model.vs.variables() {
            t.f_copy_(&src[&n]).map_err(|source| TrainError::Tensor { context: format!("checkpoint `{checkpoint}`: `{n}`"), source })?;
        }
        Ok(())
    })
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

/// Replaces the model's weights with those of committed checkpoint `name` (optimizer and position stay).
pub(crate) fn load_checkpoint_weights(trainer: &mut Trainer, name: &str) -> Result<(), TrainError> {
    let local = tempfile::tempdir().map_err(|e| TrainError::io("a temporary folder for the checkpoint", e))?;
    block_on(fetch_checkpoint(&trainer.output, name, local.path()))?;
    let saved = SparseEncoder::load(local.path(), Device::Cpu, &load_options(&trainer.cfg))?;
    copy_weights(&trainer.model, &saved, &trainer.output.url_of(name))
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

