//! `splade train --config cfg.yaml`: single-node training.

use std::path::PathBuf;

use clap::Args;
use splade_common::config::Config;

use crate::train::{run_training, stop_on_signals, TrainOptions};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training config (YAML, sentence-transformers SparseEncoder training keys).
    #[arg(long)]
    pub config: PathBuf,
    /// Write the batch plan (dataset and row indices per step) as JSONL, then train.
    #[arg(long)]
    pub dump_batches: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Override hardware.device (auto, cpu, cuda, cuda:N, mps).
    #[arg(long)]
    pub device: Option<String>,
    /// Override a config key: `--set training.max_steps=20` (repeatable; dotted keys; the value is read as YAML,
    /// typed as the same text in the file would be, and checked like the file).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Resolve and validate everything (model, datasets and columns, evaluation tasks, that output_dir is
    /// writable, the schedule) without training; print the plan; exit 1 naming every problem.
    #[arg(long)]
    pub check: bool,
}

/// Runs `splade train`. SIGTERM/Ctrl-C finish the current step, write a checkpoint and exit 0.
pub fn run_train(a: TrainArgs) -> anyhow::Result<()> {
    if a.check {
        return run_check(&a);
    }
    let cfg = Config::from_path_with(&a.config, &a.set)?;
    let opts = TrainOptions {
        dump_batches: a.dump_batches,
        stop: Some(stop_on_signals()),
        device: a.device,
        metrics_listen: a.metrics_listen,
    };
    let out = run_training(cfg, &opts)?;
    if out.interrupted {
        eprintln!(
            "interrupted after step {}: checkpoint {} committed; resume with training.resume_from_checkpoint: true",
            out.final_step,
            out.last_checkpoint.as_deref().unwrap_or("-")
        );
    } else if let Some(m) = out.final_model {
        eprintln!("trained {} steps; final model at {m}", out.final_step);
    }
    Ok(())
}

/// `splade train --check`: prints the plan on stdout; every problem on stderr, then an error (exit 1).
fn run_check(a: &TrainArgs) -> anyhow::Result<()> {
    use splade_common::config::check::{check, CheckOptions};
    let resolve = |cfg: &Config| -> Result<String, String> {
        let dir = crate::model::resolve_model(&cfg.model.base_model).map_err(|e| e.to_string())?;
        crate::model::describe_folder(&dir).map_err(|e| e.to_string())
    };
    let opts = CheckOptions { world: 1, resolve_model: &resolve, store: splade_common::store::StoreOptions::from_env() };
    let report = check(&a.config, &a.set, &opts);
    print_report(&report, &a.config.display().to_string())
}

/// Prints a [`CheckReport`](splade_common::config::check::CheckReport): the plan and the start-up notes on
/// stdout, then the problems; an error naming how many when there are any.
pub fn print_report(report: &splade_common::config::check::CheckReport, origin: &str) -> anyhow::Result<()> {
    for line in &report.plan {
        println!("{line}");
    }
    if let Some(cfg) = &report.config {
        for note in cfg.startup_notes() {
            println!("note: {note}");
        }
    }
    if report.problems.is_empty() {
        println!("{origin}: check passed");
        return Ok(());
    }
    for p in &report.problems {
        eprintln!("problem: {p}");
    }
    anyhow::bail!("{origin}: {} problem(s) found by --check (listed above)", report.problems.len())
}
