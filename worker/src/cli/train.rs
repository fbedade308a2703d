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
}

/// Runs `splade train`. SIGTERM/Ctrl-C finish the current step, write a checkpoint and exit 0.
pub fn run_train(a: TrainArgs) -> anyhow::Result<()> {
    let cfg = Config::from_path(&a.config)?;
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
