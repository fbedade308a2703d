//! The coordinator's Prometheus series, fed from the state loop's [`JobSnapshot`]s: job health
//! ([`ClusterMetrics`]) and the training series ([`TrainingMetrics`]) from rank 0's progress reports,
//! including its retrieval evaluations of committed checkpoints ([`eval_results`]).

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
                for e in eval_results(&s.progress) {
                    if eval_steps.get(&e.task) != Some(&e.step) {
                        training.record_eval(&e.task, e.step, e.ndcg_at_10, e.mrr_at_10);
                        eval_steps.insert(e.task, e.step);
                    }
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

/// One task's scores from rank 0's evaluation of a committed checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// The task's name in `evaluation.tasks` (the `task` label).
    pub task: String,
    /// Global step of the evaluated checkpoint.
    pub step: u64,
    pub ndcg_at_10: f64,
    pub mrr_at_10: f64,
}

/// The evaluations carried in progress metrics: keys `eval/<task>/ndcg_at_10`, `eval/<task>/mrr_at_10`
/// and `eval/<task>/step`, as the worker reports them. A task without an MRR reads NaN, without a
/// step 0.
pub fn eval_results(p: &std::collections::BTreeMap<String, f64>) -> Vec<EvalResult> {
    p.iter()
        .filter_map(|(k, v)| {
            let task = k.strip_prefix("eval/")?.strip_suffix("/ndcg_at_10")?;
            let get = |m: &str| p.get(&format!("eval/{task}/{m}")).copied();
            Some(EvalResult {
                task: task.to_string(),
                step: get("step").unwrap_or(0.0) as u64,
                ndcg_at_10: *v,
                mrr_at_10: get("mrr_at_10").unwrap_or(f64::NAN),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_keys_become_per_task_results() {
        let p: std::collections::BTreeMap<String, f64> = [
            ("loss", 0.5),
            ("eval/norquad/ndcg_at_10", 0.4),
            ("eval/norquad/mrr_at_10", 0.3),
            ("eval/norquad/step", 12.0),
            ("eval/a/b/ndcg_at_10", 0.9),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let r = eval_results(&p);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].task, "a/b");
        assert_eq!((r[0].step, r[0].ndcg_at_10), (0, 0.9));
        assert!(r[0].mrr_at_10.is_nan());
        assert_eq!(r[1], EvalResult { task: "norquad".into(), step: 12, ndcg_at_10: 0.4, mrr_at_10: 0.3 });
    }
}
