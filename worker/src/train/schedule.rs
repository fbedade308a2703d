//! The schedule around the steps, and the run: which callbacks are due after a step (log, evaluate with the
//! best-model rule, save) and the loop that drives [`Trainer::step`] until the plan ends, then writes the end
//! of the run (final evaluation, last checkpoint, best model, `final/`).
//!
//! Both modes run [`run`]: `splade train` with its loaded rows and no gradient sync, a cluster rank with its
//! slice of the published data plan and the c10d all-reduce. The process that writes (`splade train`, a
//! cluster's rank 0) brings a [`Lead`]: the monitor (Prometheus, `metrics.jsonl`, TensorBoard, MLflow), the
//! evaluation tasks and the checkpoints. What a cluster adds around the steps (progress reports, checkpoint
//! announcements, ledger) comes in through [`Hooks`].

use std::time::Instant;

use splade_common::config::{Config, IntervalStrategy, SaveStrategy};
use splade_common::store::checkpoint::{commit_checkpoint, delete_checkpoint, verify_checkpoint, Verify};
use splade_common::store::block_on;

use super::dev::dev_sets;
use super::monitor::{self, DuringEval, EvalRound, Monitor};
use super::step::{BatchSource, GradSync, StepDone};
use super::trainer::load_checkpoint_weights;
use super::{other, TrainError, Trainer};

/// Steps between events for an HF-style `*_steps` value (a fraction < 1 means that share of the run).
pub fn every(v: f64, total: u64) -> u64 {
    splade_common::config::interval_steps(v, total)
}

/// When the callbacks run, resolved once from the config for a run of `total` steps.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub total: u64,
    /// TensorBoard/MLflow every this many steps (Prometheus and `metrics.jsonl` every step).
    pub log_every: u64,
    /// With `save_strategy: steps`; 0 otherwise.
    pub save_every: u64,
    /// With `eval_strategy: steps`; 0 otherwise.
    pub eval_every: u64,
    pub save_strategy: SaveStrategy,
    pub eval_strategy: IntervalStrategy,
    pub load_best_model_at_end: bool,
    /// Also evaluate every checkpoint written when `eval_strategy` is `no` (a cluster's rank 0 reports each
    /// committed checkpoint's scores to the coordinator).
    pub eval_on_save: bool,
    /// Write `checkpoint-<total>` at the end, as Hugging Face's Trainer does. A cluster ends with `final/`
    /// alone (the coordinator completes the job on it).
    pub checkpoint_at_end: bool,
}

impl Schedule {
    /// The schedule `cfg` asks for over `total` steps; checks the `load_best_model_at_end` rule.
    pub fn new(cfg: &Config, total: u64) -> Result<Self, TrainError> {
        let t = &cfg.training;
        let splade_common::config::Intervals { log_every, save_every, eval_every } = cfg.intervals(total);
        monitor::check_best_model_schedule(cfg, save_every, eval_every)?;
        Ok(Self {
            total,
            log_every,
            save_every,
            eval_every,
            save_strategy: t.save_strategy,
            eval_strategy: t.eval_strategy,
            load_best_model_at_end: t.load_best_model_at_end,
            eval_on_save: false,
            checkpoint_at_end: true,
        })
    }

    /// The cluster's variant: checkpoints are evaluated (without `eval_strategy`) and the run ends with `final/`.
    pub fn for_cluster(mut self) -> Self {
        self.eval_on_save = self.eval_strategy == IntervalStrategy::No;
        self.checkpoint_at_end = false;
        self
    }

    pub fn log_due(&self, step: u64) -> bool {
        step % self.log_every == 0 || step == self.total
    }

    /// Whether a checkpoint is due after `step` (`improved`: this step's evaluation was the best so far).
    pub fn save_due(&self, step: u64, epoch_end: bool, improved: bool) -> bool {
        let due = match self.save_strategy {
            SaveStrategy::Steps => self.save_every > 0 && step % self.save_every == 0,
            SaveStrategy::Epoch => epoch_end,
            SaveStrategy::Best => improved,
            SaveStrategy::No => false,
        };
        due && step < self.total
    }

    /// Whether an evaluation is due after `step` (`saving`: a checkpoint is planned at this step).
    pub fn eval_due(&self, step: u64, epoch_end: bool, saving: bool) -> bool {
        match self.eval_strategy {
            IntervalStrategy::Steps => self.eval_every > 0 && step % self.eval_every == 0,
            IntervalStrategy::Epoch => epoch_end,
            IntervalStrategy::No => self.eval_on_save && saving,
        }
    }
}

/// transformers' `EarlyStoppingCallback`: after each evaluation, the metric counts as an improvement when there
/// is no best yet, or it beats the best so far (before this evaluation updates it) by more than `threshold`;
/// otherwise the counter (kept in `TrainerState`, so a resume continues it) goes up, and the run stops once it
/// reaches `patience`. An evaluation without the metric changes nothing (transformers warns and goes on).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    pub patience: usize,
    pub threshold: f64,
}

impl EarlyStopping {
    /// `training.early_stopping_patience` / `early_stopping_threshold`; `None` without a patience.
    pub fn from_config(cfg: &Config) -> Option<Self> {
        cfg.training
            .early_stopping_patience
            .map(|patience| Self { patience: patience as usize, threshold: cfg.training.early_stopping_threshold })
    }

    /// `on_evaluate`: updates `counter` for `value` against `best` and says whether training should stop.
    pub fn on_evaluate(&self, counter: &mut usize, value: Option<f64>, best: Option<f64>, greater_is_better: bool) -> bool {
        let Some(v) = value else { return false };
        let improved = match best {
            None => true,
            Some(b) => {
                let better = if greater_is_better { v > b } else { v < b };
                better && (v - b).abs() > self.threshold
            }
        };
        if improved {
            *counter = 0;
        } else {
            *counter += 1;
        }
        *counter >= self.patience
    }
}

/// What the writing process (`splade train`, a cluster's rank 0) runs besides the steps.
pub struct Lead {
    pub mon: Monitor,
    pub evals: DuringEval,
}

impl Lead {
    /// Loads the evaluation tasks and the dev rows and starts the monitor (reporters, `/metrics` on
    /// `metrics_listen`). The dev rows are the trainer's held-out rows; a trainer that follows a published plan
    /// holds none, so a cluster's rank 0 reads them ([`super::dev::plan_dev_sets`]: a seed loader block's dev split
    /// from the file the plan names, held-out rows of file blocks with a streaming pass; only when some
    /// `split_ratio` is set or a seed loader block brings its dev split).
    pub fn start(trainer: &Trainer, metrics_listen: Option<&str>) -> Result<Self, TrainError> {
        let (cfg, output) = (&trainer.cfg, &trainer.output);
        let strategy = cfg.training.eval_strategy;
        // Seed loader blocks (`nli`, `scandi_qa`, ...) bring their own dev split, in `SplitDataset::eval` as well.
        let holds_out = cfg.datasets.enabled().any(|(_, s)| s.split_ratio > 0.0 || s.loader.is_some());
        let follows_plan = matches!(trainer.plan, super::trainer::TrainPlan::Published(_));
        let dev = if follows_plan && holds_out && strategy != IntervalStrategy::No {
            super::dev::plan_dev_sets(trainer)?
        } else {
            dev_sets(&trainer.facts)
        };
        let evals = DuringEval::load(cfg, dev)?;
        if strategy != IntervalStrategy::No && !evals.has_work() && evals.selector.metric != "train_loss" {
            return Err(other(format!(
                "{}: `training.eval_strategy` is {strategy:?} but `evaluation.tasks` is empty and no dataset holds rows out; add a task (name, source, split), set a dataset's split_ratio, or set eval_strategy: no",
                cfg.origin
            )));
        }
        let mut mon = Monitor::start(cfg, output, metrics_listen)?;
        mon.log_config(cfg);
        Ok(Self { mon, evals })
    }

    /// Evaluates the tasks now and records the round at `step`. A failing evaluation is logged and the run goes
    /// on (monitoring never stops training once it started).
    fn evaluate(&mut self, trainer: &Trainer, step: u64) -> Option<(EvalRound, f64)> {
        let t0 = Instant::now();
        let round = match self.evals.run(trainer) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(step, error = %e, "evaluation failed; training continues");
                return None;
            }
        };
        let seconds = t0.elapsed().as_secs_f64();
        self.mon.record_eval(step, &round);
        let mut shown: Vec<String> = round
            .tasks
            .iter()
            .map(|(n, s)| format!("{n} ndcg@10 {:.4}", s.metrics.get("ndcg_at_10").copied().unwrap_or(f64::NAN)))
            .collect();
        shown.extend(round.dev.scalars().iter().map(|(k, v)| format!("{k} {v:.4}")));
        tracing::info!(step, seconds = format!("{seconds:.1}"), "eval: {}", shown.join(", "));
        Some((round, seconds))
    }
}

/// What the caller decides between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// The run is over for this process without a checkpoint (the cluster formed another generation).
    Superseded,
    /// Stop after the step just done (a signal); `checkpoint`: the lead commits one first.
    Stop { checkpoint: bool },
}

/// What a mode adds around the steps. Every method has a do-nothing default.
pub trait Hooks {
    /// Asked before each step.
    fn control(&mut self) -> Control {
        Control::Continue
    }
    /// The synced gradients of a step, before the optimizer uses them.
    fn after_sync(&mut self, _trainer: &Trainer) -> Result<(), TrainError> {
        Ok(())
    }
    /// After each step, on every process, before the step's callbacks.
    fn after_step(&mut self, _trainer: &Trainer, _done: &StepDone) -> Result<(), TrainError> {
        Ok(())
    }
    /// The lead evaluated the model as `name` (`checkpoint-<step>` when a checkpoint follows, `step-<step>`,
    /// or `final`).
    fn evaluated(&mut self, _trainer: &Trainer, _name: &str, _step: u64, _round: &EvalRound, _seconds: f64) {}
    /// The lead committed `checkpoint-<step>` at `url` in `seconds`.
    fn checkpoint_written(&mut self, _trainer: &Trainer, _step: u64, _url: &str, _seconds: f64) {}
    /// Early stopping ended the run after `step`, before the plan's end; on every process, before the end of
    /// the run is written.
    fn stopped_early(&mut self, _step: u64) {}
    /// A step and its callbacks are done, on every process; for the last step, once `final/` is written.
    fn step_done(&mut self, _trainer: &Trainer, _done: &StepDone, _samples_per_second: f64) {}
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The plan's last step ran; the lead wrote `final/` (at `final_model`).
    Finished { final_model: Option<String> },
    /// Stopped by [`Control::Stop`].
    Interrupted,
    /// Ended by [`Control::Superseded`].
    Superseded,
}

/// The end of a run and the last checkpoint it committed.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub end: RunEnd,
    pub final_step: u64,
    pub last_checkpoint: Option<String>,
    /// Early stopping ended the run before the plan's last step.
    pub stopped_early: bool,
}

/// Runs `trainer` from its position to the end of its plan: [`Trainer::step`] with `source` and `sync`, the
/// schedule's callbacks on the lead, the hooks around them, then the end of the run.
pub fn run(
    trainer: &mut Trainer,
    source: &BatchSource,
    sync: &mut GradSync,
    mut lead: Option<&mut Lead>,
    schedule: &Schedule,
    hooks: &mut dyn Hooks,
) -> Result<RunOutcome, TrainError> {
    let total = schedule.total;
    let bar = indicatif::ProgressBar::new(total);
    if lead.is_none() || splade_common::cli::quiet() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("static template"),
    );
    bar.set_position(trainer.state.global_step);
    if let Some(l) = lead.as_deref_mut() {
        l.mon.training.set_global_step(trainer.state.global_step);
    }
    let mut last_checkpoint = None;
    let mut saved_at = trainer.state.global_step;
    let t_start = Instant::now();
    let mut samples = 0usize;
    // Best evaluation so far and the step it was measured at; it becomes `state.best_checkpoint`
    // when a checkpoint is written at that step (as Hugging Face's Trainer records it).
    let mut best: Option<(f64, u64)> = trainer.state.best_metric.map(|m| (m, 0));
    let mut last_eval: Option<(u64, EvalRound)> = None;
    let mut last_loss = f64::NAN;
    let mut last_done: Option<(StepDone, f64)> = None;
    let early = EarlyStopping::from_config(&trainer.cfg);
    let mut stopped_early = false;
    while trainer.state.global_step < total {
        match hooks.control() {
            Control::Continue => {}
            Control::Superseded => {
                return Ok(RunOutcome { end: RunEnd::Superseded, final_step: trainer.state.global_step, last_checkpoint, stopped_early: false })
            }
            Control::Stop { checkpoint } => {
                let step = trainer.state.global_step;
                if let Some(l) = lead.as_deref_mut() {
                    if checkpoint && step > saved_at {
                        let (url, seconds) = save_and_record(trainer, &l.mon, best)?;
                        hooks.checkpoint_written(trainer, step, &url, seconds);
                        bar.suspend(|| tracing::info!(step, checkpoint = url, "checkpoint committed"));
                        last_checkpoint = Some(url);
                    }
                    l.mon.finish(None);
                }
                bar.abandon_with_message("interrupted");
                return Ok(RunOutcome { end: RunEnd::Interrupted, final_step: step, last_checkpoint, stopped_early: false });
            }
        }
        let done = trainer.step(source, sync, &mut |t| hooks.after_sync(t))?;
        hooks.after_step(trainer, &done)?;
        let stats = &done.stats;
        let step = stats.step;
        samples += stats.samples;
        last_loss = stats.loss;
        let sps = samples as f64 / t_start.elapsed().as_secs_f64().max(1e-9);
        let epoch_end = step == total || trainer.plan.epoch_of(step + 1) != Some(stats.epoch);
        let saving = schedule.save_due(step, epoch_end, false);
        let evaluating = schedule.eval_due(step, epoch_end, saving);
        let mut stop_now = false;
        if let Some(l) = lead.as_deref_mut() {
            bar.set_position(step);
            bar.set_message(format!("loss {:.4} lr {:.2e} {:.1} samples/s", stats.loss, stats.learning_rate, sps));
            let log_now = schedule.log_due(step);
            l.mon.record_step(stats, log_now);
            if log_now {
                bar.suspend(|| log_step(stats, sps));
            }
            let mut improved = false;
            if evaluating {
                if let Some((round, seconds)) = bar.suspend(|| l.evaluate(trainer, step)) {
                    record_for_card(trainer, &round, step, stats.epoch, stats.loss);
                    if schedule.eval_strategy != IntervalStrategy::No {
                        let value = l.evals.selector.value(&round, stats.loss);
                        // The callback sees the best from before this evaluation, as transformers calls
                        // `on_evaluate` before `_determine_best_metric`.
                        if let Some(es) = &early {
                            let greater = l.evals.selector.greater_is_better;
                            let counter = &mut trainer.state.early_stopping_patience_counter;
                            if es.on_evaluate(counter, value, best.map(|b| b.0), greater) && step < total {
                                stop_now = true;
                                let (name, n) = (&l.evals.selector.logged_as, *counter);
                                bar.suspend(|| {
                                    tracing::info!(step, "early stopping: {name} did not improve by more than {} for {n} evaluations", es.threshold)
                                });
                            }
                        }
                        if let Some(v) = value {
                            if l.evals.selector.improves(v, best.map(|b| b.0)) {
                                best = Some((v, step));
                                improved = true;
                            }
                        }
                    }
                    if step < total {
                        let name = if saving || (improved && schedule.save_strategy == SaveStrategy::Best) {
                            format!("checkpoint-{step}")
                        } else {
                            format!("step-{step}")
                        };
                        hooks.evaluated(trainer, &name, step, &round, seconds);
                    }
                    last_eval = Some((step, round));
                }
            }
            if schedule.save_due(step, epoch_end, improved) {
                // A generation the coordinator has replaced (it restarted, or re-formed without this rank) must not
                // write a checkpoint the new generation will write too: the store keeps the first copy, and the
                // new generation's differing one would then be refused.
                if matches!(hooks.control(), Control::Superseded) {
                    bar.abandon_with_message("superseded");
                    return Ok(RunOutcome { end: RunEnd::Superseded, final_step: step, last_checkpoint, stopped_early: false });
                }
                let (url, seconds) = save_and_record(trainer, &l.mon, best)?;
                hooks.checkpoint_written(trainer, step, &url, seconds);
                bar.suspend(|| tracing::info!(step, checkpoint = url, "checkpoint committed"));
                saved_at = step;
                last_checkpoint = Some(url);
            }
        }
        // Rank 0 decides; every rank of a cluster learns the decision at each evaluation step.
        if early.is_some() && evaluating && step < total {
            if let GradSync::AllReduce(pg) = sync {
                let mut flag = tch::Tensor::from_slice(&[stop_now as i64]).to_device(trainer.model.device());
                pg.broadcast(&mut flag, 0).map_err(|e| other(format!("the early-stopping decision after step {step}: {e}")))?;
                stop_now = flag.int64_value(&[0]) != 0;
            }
        }
        if stop_now {
            stopped_early = true;
            hooks.stopped_early(step);
            last_done = Some((done, sps));
            break;
        }
        if step < total {
            hooks.step_done(trainer, &done, sps);
        }
        last_done = Some((done, sps));
    }
    bar.finish();
    let step = trainer.state.global_step;
    let mut final_model = None;
    if let Some(l) = lead.as_deref_mut() {
        // The end of the run is evaluated when there are tasks or dev rows (unless the last step just was).
        if l.evals.has_work() {
            let round = match last_eval.take() {
                Some((s, r)) if s == step => Some((r, 0.0)),
                _ => {
                    let got = l.evaluate(trainer, step);
                    if let Some((round, _)) = &got {
                        record_for_card(trainer, round, step, trainer.state.epoch, last_loss);
                        if schedule.eval_strategy != IntervalStrategy::No {
                            if let Some(v) = l.evals.selector.value(round, last_loss) {
                                if l.evals.selector.improves(v, best.map(|b| b.0)) {
                                    best = Some((v, step));
                                }
                            }
                        }
                    }
                    got
                }
            };
            if let Some((round, seconds)) = round {
                for (name, s) in &round.tasks {
                    let get = |k: &str| s.metrics.get(k).copied().unwrap_or(f64::NAN);
                    eprintln!("eval {name} ({}) at step {step}: NDCG@10 {:.4}  MRR@10 {:.4}", s.split, get("ndcg_at_10"), get("mrr_at_10"));
                }
                if round.tasks.len() > 1 {
                    let mean = round.mean.get("ndcg_at_10").copied().unwrap_or(f64::NAN);
                    eprintln!("eval mean over {} tasks: NDCG@10 {mean:.4}", round.tasks.len());
                }
                if let Some(loss) = round.dev.eval_loss {
                    eprintln!("eval_loss at step {step}: {loss:.5}");
                }
                hooks.evaluated(trainer, "final", step, &round, seconds);
            }
        }
        // An early stop writes no extra checkpoint: transformers saves only where one is due.
        if schedule.checkpoint_at_end && !stopped_early && (schedule.save_every > 0 || schedule.save_strategy != SaveStrategy::No) {
            let (url, seconds) = save_and_record(trainer, &l.mon, best)?;
            hooks.checkpoint_written(trainer, step, &url, seconds);
            last_checkpoint = Some(url);
        }
        if schedule.load_best_model_at_end {
            // The last step's model is the best when the last evaluation was (with or without a checkpoint there).
            let last_is_best = best.is_some_and(|(_, s)| s == step);
            match trainer.state.best_checkpoint.clone() {
                Some(name) if !last_is_best && name != format!("checkpoint-{step}").as_str() => {
                    load_checkpoint_weights(trainer, &name)?;
                    eprintln!(
                        "load_best_model_at_end: final model = {name} ({} {:.4})",
                        l.evals.selector.logged_as,
                        trainer.state.best_metric.unwrap_or(f64::NAN)
                    );
                }
                Some(_) => {}
                None if last_is_best => {}
                None => tracing::warn!("load_best_model_at_end: no evaluated checkpoint was saved; the final model is the last step's"),
            }
        }
        let staging = tempfile::tempdir().map_err(|e| other(format!("cannot create a staging dir: {e}")))?;
        trainer.model.save(staging.path())?;
        trainer.write_model_card(staging.path())?;
        // A resumed or repeated run replaces an earlier final model (manifest removed first).
        if block_on(verify_checkpoint(&trainer.output, "final", Verify::Sizes)).is_ok() {
            block_on(delete_checkpoint(&trainer.output, "final"))?;
        }
        block_on(commit_checkpoint(&trainer.output, "final", step, staging.path()))?;
        tracing::info!(model = trainer.output.url_of("final"), "final model written");
        l.mon.finish(Some(staging.path()));
        final_model = Some(trainer.output.url_of("final"));
    }
    // Nobody reports the last step before the lead has written `final/`.
    if let GradSync::AllReduce(pg) = sync {
        pg.barrier().map_err(|e| other(format!("the barrier after step {step}: {e}")))?;
    }
    if let Some((done, sps)) = &last_done {
        hooks.step_done(trainer, done, *sps);
    }
    Ok(RunOutcome { end: RunEnd::Finished { final_model }, final_step: step, last_checkpoint, stopped_early })
}

/// Keeps an evaluation for the model card: the tasks' metrics and a training-logs line.
fn record_for_card(trainer: &mut Trainer, round: &EvalRound, step: u64, epoch: u64, train_loss: f64) {
    trainer.card_evaluation =
        round.tasks.iter().map(|(n, s)| (n.clone(), s.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect())).collect();
    trainer.card_logs.push(super::card::EvalLine { step, epoch, train_loss, scalars: round.scalars.clone() });
}

fn log_step(stats: &super::StepStats, sps: f64) {
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
}

/// Commits `checkpoint-<step>`, first recording it as the best when `best` was measured at this step.
/// Returns its URL and the seconds the write took.
fn save_and_record(trainer: &mut Trainer, mon: &Monitor, best: Option<(f64, u64)>) -> Result<(String, f64), TrainError> {
    let step = trainer.state.global_step;
    if let Some((v, s)) = best {
        if s == step {
            trainer.state.best_metric = Some(v);
            trainer.state.best_checkpoint = Some(format!("checkpoint-{step}"));
        }
    }
    let t0 = Instant::now();
    let url = trainer.save_checkpoint()?;
    let seconds = t0.elapsed().as_secs_f64();
    mon.record_checkpoint(step, seconds);
    Ok((url, seconds))
}
