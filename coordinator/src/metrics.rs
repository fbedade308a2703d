//! The coordinator's Prometheus series, fed from the state loop's [`JobSnapshot`]s: job health
//! ([`ClusterMetrics`]) and the training series ([`TrainingMetrics`]) from rank 0's progress reports,
//! including its retrieval evaluations of committed checkpoints.

use splade_common::obs::{ClusterMetrics, ObsError, Registry, StepStats, TrainingMetrics};
use splade_proto::domain::StepProgress;
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
        // Task → step of the evaluation last exported.
        let mut eval_steps = std::collections::BTreeMap::<String, u64>::new();
        loop {
            {
                let s = snapshots.borrow_and_update();
                cluster.set_workers_alive(s.workers_alive);
                cluster.set_generation(s.generation);
                while restarts < s.restarts {
                    cluster.record_restart();
                    restarts += 1;
                }
                match &s.progress.train {
                    Some(t) if s.progress.train_step > progress_step => {
                        progress_step = s.progress.train_step;
                        training.record_step(&step_stats(progress_step, t));
                    }
                    _ if s.global_step > progress_step => training.set_global_step(s.global_step),
                    _ => {}
                }
                let ck = s.last_checkpoint.as_ref().map(|c| c.step);
                if let (Some(step), true) = (ck, ck != checkpoint_step) {
                    checkpoint_step = ck;
                    // Rank 0 reports the write time just before the commit; a commit without one records 0 s.
                    training.record_checkpoint(step, s.progress.checkpoint_seconds.unwrap_or(0.0));
                }
                for e in s.progress.evals.values() {
                    if eval_steps.get(&e.task) != Some(&e.step) {
                        // A task without an MRR exports NaN (no value).
                        training.record_eval(&e.task, e.step, e.ndcg_at_10, e.mrr_at_10.unwrap_or(f64::NAN));
                        eval_steps.insert(e.task.clone(), e.step);
                    }
                }
            }
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    }))
}

/// The exporter's view of one step (the same series `splade train` exports).
fn step_stats(step: u64, t: &StepProgress) -> StepStats {
    StepStats {
        step,
        epoch: t.epoch,
        samples: t.samples,
        tokens: t.tokens,
        step_seconds: t.step_seconds,
        loss: t.loss.total,
        loss_ranking: t.loss.ranking,
        loss_flops_query: t.loss.flops_query,
        loss_flops_document: t.loss.flops_document,
        flops_query: t.flops_query,
        flops_document: t.flops_document,
        active_dims_query: t.active_dims_query,
        active_dims_document: t.active_dims_document,
        learning_rate: t.learning_rate,
        grad_norm: t.grad_norm,
        allreduce_seconds: t.allreduce_seconds,
    }
}
