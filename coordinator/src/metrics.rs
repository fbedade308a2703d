//! The coordinator's Prometheus series, fed from the state loop's [`JobSnapshot`]s: job health
//! ([`ClusterMetrics`]) and the training series ([`TrainingMetrics`]) from rank 0's progress reports.

use splade_common::obs::{ClusterMetrics, ObsError, Registry, StepStats, TrainingMetrics};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::snapshot::JobSnapshot;

/// Registers the coordinator's series on `registry` and updates them from every snapshot until the
/// coordinator stops publishing. `expected` is `cluster.max_workers`.
pub fn spawn_exporter(
    registry: &Registry,
    mut snapshots: watch::Receiver<JobSnapshot>,
    expected: usize,
) -> Result<JoinHandle<()>, ObsError> {
    let cluster = ClusterMetrics::new(registry)?;
    let training = TrainingMetrics::new(registry)?;
    cluster.set_workers_expected(expected);
    Ok(tokio::spawn(async move {
        let mut restarts = 0u32;
        let mut progress_step = 0u64;
        let mut checkpoint_step = None;
        loop {
            {
                let s = snapshots.borrow_and_update();
                cluster.set_workers_alive(s.workers_alive);
                cluster.set_generation(s.generation);
                while restarts < s.restarts {
                    cluster.record_restart();
                    restarts += 1;
                }
                if s.progress_step > progress_step && !s.progress.is_empty() {
                    progress_step = s.progress_step;
                    training.record_step(&step_stats(s.progress_step, &s.progress));
                } else if s.global_step > progress_step {
                    training.set_global_step(s.global_step);
                }
                let ck = s.last_checkpoint.as_ref().map(|c| c.step);
                if ck.is_some() && ck != checkpoint_step {
                    checkpoint_step = ck;
                    let secs = s.progress.get("checkpoint_seconds").copied().unwrap_or(0.0);
                    training.record_checkpoint(ck.unwrap_or(0), secs);
                }
            }
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    }))
}

fn step_stats(step: u64, p: &std::collections::BTreeMap<String, f64>) -> StepStats {
    let g = |k: &str| p.get(k).copied().unwrap_or(0.0);
    StepStats {
        step,
        epoch: g("epoch"),
        samples: g("samples") as u64,
        tokens: g("tokens") as u64,
        step_seconds: g("step_seconds"),
        loss: g("loss"),
        loss_ranking: g("loss_ranking"),
        loss_flops_query: g("loss_flops_query"),
        loss_flops_document: g("loss_flops_document"),
        flops_query: g("flops_query"),
        flops_document: g("flops_document"),
        active_dims_query: g("active_dims_query"),
        active_dims_document: g("active_dims_document"),
        learning_rate: g("learning_rate"),
        grad_norm: g("grad_norm"),
        allreduce_seconds: p.get("allreduce_seconds").copied(),
    }
}
