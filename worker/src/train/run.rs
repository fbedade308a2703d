//! `splade train`: one process trains the whole global batch. Sets up the device, the [`Trainer`] on the
//! streaming pass's plan (rows read through its index), `--dump-batches` and `resume_from_checkpoint`, then drives [`schedule::run`] with no
//! gradient sync and the stop flag of SIGTERM/Ctrl-C.

use std::sync::atomic::Ordering;

use splade_common::config::{Config, ResumeFrom};
use splade_common::store::block_on;
use splade_common::store::checkpoint::{list_checkpoints_with, Verify};

use super::schedule::{self, Control, Hooks, Lead, RunEnd, Schedule};
use super::step::{BatchSource, GradSync};
use super::{other, windows, TrainError, TrainOptions, TrainOutcome, Trainer};

/// `splade train`'s hooks: the stop flag (a checkpoint, then return).
struct Local<'a> {
    opts: &'a TrainOptions,
}

impl Hooks for Local<'_> {
    fn control(&mut self) -> Control {
        match &self.opts.stop {
            Some(s) if s.load(Ordering::SeqCst) => Control::Stop { checkpoint: true },
            _ => Control::Continue,
        }
    }
}

/// The `hardware.device` spelling of a config, unless `--device` overrides it.
pub fn device_spec(cfg: &Config, overridden: Option<&str>) -> String {
    use splade_common::config::DeviceKind;
    overridden.map(str::to_string).unwrap_or_else(|| {
        match cfg.hardware.device {
            DeviceKind::Auto => "auto",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Mps => "mps",
        }
        .to_string()
    })
}

/// Writes the plan as `--dump-batches` JSONL.
pub fn dump_batches(plan: &splade_common::data::plan::BatchPlan, path: &std::path::Path) -> Result<(), TrainError> {
    std::fs::write(path, plan.to_jsonl()).map_err(|e| other(format!("{}: cannot write: {e}", path.display())))
}

/// Runs `splade train`: the whole single-process job, from config to `output_dir/final`.
pub fn run_training(mut cfg: Config, opts: &TrainOptions) -> Result<TrainOutcome, TrainError> {
    cfg.validate_for_training()?;
    super::trainer::pin_hub_datasets_for_resume(&mut cfg)?;
    for note in cfg.startup_notes() {
        tracing::warn!("{note}");
    }
    if let Some(n) = cfg.hardware.num_threads {
        tch::set_num_threads(n as i32);
    }
    let device = crate::device::parse_device(&device_spec(&cfg, opts.device.as_deref())).map_err(other)?;
    let per_device = cfg.training.per_device_train_batch_size;
    let accum = cfg.training.gradient_accumulation_steps.max(1);
    // The streaming pass plans (no dataset is loaded whole); the steps read their rows through the plan's
    // index, as a cluster rank reads its slices: one data path.
    let (mut trainer, data_plan) = Trainer::planned(cfg, device, per_device * accum, accum)?;
    if let Some(w) = windows::TrainingWindows::from_config(&trainer.cfg) {
        tracing::info!(spec = %w.spec, mode = ?w.mode, "document_windows: training documents are windowed (cost logged as train/windows_per_doc)");
    }
    if let Some(p) = &opts.dump_batches {
        // An audit aid: the whole plan, from every chunk of the published plan (as a cluster worker dumps it).
        let whole = match &trainer.plan {
            super::trainer::TrainPlan::Whole(plan) => plan.clone(),
            super::trainer::TrainPlan::Published(plan) => {
                block_on(plan.fetch_batch_plan(&splade_common::store::StoreOptions::from_env()))?.0
            }
        };
        dump_batches(&whole, p)?;
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
            let url = trainer.resume_from_path(&p)?;
            tracing::info!(checkpoint = url, step = trainer.state.global_step, "resumed");
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
    let schedule = Schedule::new(&trainer.cfg, trainer.state.total_steps)?;
    let mut lead = Lead::start(&trainer, opts.metrics_listen.as_deref())?;
    let source = BatchSource::slices(data_plan, trainer.state.global_step + 1, 0, 1, splade_common::store::StoreOptions::from_env());
    tracing::info!(step = trainer.state.global_step + 1, "reading the rows of each step through the data plan's index");
    let result = schedule::run(&mut trainer, &source, &mut GradSync::None, Some(&mut lead), &schedule, &mut Local { opts });
    // On an error, dropping the monitor marks the MLflow run FAILED; jsonl and TensorBoard are already flushed.
    let out = result?;
    let (final_model, interrupted) = match out.end {
        RunEnd::Finished { final_model } => (final_model, false),
        RunEnd::Interrupted | RunEnd::Superseded => (None, true),
    };
    Ok(TrainOutcome { final_step: out.final_step, final_model, interrupted, last_checkpoint: out.last_checkpoint })
}
