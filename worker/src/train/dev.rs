//! The dev rows at each evaluation: `eval_loss` as transformers' `Trainer.evaluate()` computes it, the active
//! dimensions of the dev texts (`evaluation.track_sparsity`) and the top tokens of a few of them
//! (`evaluation.log_decoded_samples`).
//!
//! Dev rows are each dataset's held-out rows (`split_ratio`). `eval_loss` is the training objective in eval
//! mode (no dropout, no gradients) over batches of `per_device_eval_batch_size` rows, each batch's loss counted
//! once per row and averaged over all rows, non-finite batch losses left out when any is finite: transformers'
//! `evaluation_loop` (`losses.repeat(batch_size)`, `logging_nan_inf_filter`). The regulariser weights are those
//! of the step just taken (sentence-transformers' scheduler sets them in `on_step_begin`). One difference:
//! sentence-transformers draws the eval batches in a seeded random order; we take the dev rows in order. With at
//! most `per_device_eval_batch_size` dev rows per dataset (one batch) both are the same loss, since an in-batch
//! loss does not depend on the order of the rows in the batch.
//!
//! With one dev dataset the loss is logged as `eval_loss`; with several, as `eval_<dataset>_loss` each (the
//! names transformers gives a dict of eval datasets) and, so that `metric_for_best_model: eval_loss` still
//! means something, `eval_loss` over all dev rows.

use splade_common::data::Example;

use super::trainer::DatasetFacts;
use tch::Kind;

use super::{other, TrainError, Trainer};
use crate::model::TextKind;

/// One dataset's dev rows.
#[derive(Debug, Clone)]
pub struct DevSet {
    pub name: String,
    pub rows: Vec<Example>,
}

/// The dev sets of datasets (those with held-out rows), in config order.
pub fn dev_sets(datasets: &[DatasetFacts]) -> Vec<DevSet> {
    datasets
        .iter()
        .filter(|d| !d.eval.is_empty())
        .map(|d| DevSet { name: d.name.clone(), rows: d.eval.clone() })
        .collect()
}

/// The dev sets of a trainer that follows a published data plan and holds no rows (a cluster's rank 0), in
/// config order: a seed loader block's dev split from the file the plan names ([`DatasetFacts::dev`]: the
/// coordinator's copy under `output_dir`, so this machine needs neither the Hub nor the coordinator's seed-data
/// cache), a file block's held-out rows (`split_ratio`, the same split as the coordinator's) with one streaming
/// pass over those blocks, read back by location (nothing else is kept).
pub fn plan_dev_sets(trainer: &Trainer) -> Result<Vec<DevSet>, TrainError> {
    use splade_common::data::{load_dataset, loaders::Materialized, scan_training_data};
    use splade_common::store::{block_on, StoreOptions};
    let cfg = &trainer.cfg;
    let options = StoreOptions::from_env();
    let split: Vec<_> = cfg.datasets.enabled().filter(|(_, s)| s.loader.is_none() && s.split_ratio > 0.0).collect();
    let mut scanned = if split.is_empty() {
        Vec::new()
    } else {
        block_on(scan_training_data(split, cfg.training.seed, &options, true))?
    };
    let mut out = Vec::new();
    for (name, spec) in cfg.datasets.enabled() {
        let dev_file = trainer.facts.iter().find(|f| f.name == name).and_then(|f| f.dev.as_deref());
        let rows = match (&spec.loader, dev_file) {
            (Some(_), Some(url)) => block_on(load_dataset(name, &Materialized::file_spec_at(url), &options))?.examples,
            // A loader block without dev rows.
            (Some(_), None) => continue,
            (None, _) => match scanned.iter_mut().find(|d| d.name == name) {
                Some(d) => std::mem::take(&mut d.eval),
                None => continue,
            },
        };
        if !rows.is_empty() {
            out.push(DevSet { name: name.to_string(), rows });
        }
    }
    drop(scanned);
    splade_common::data::scan::release_freed_memory();
    Ok(out)
}

/// What one evaluation measured on the dev rows.
#[derive(Debug, Clone, Default)]
pub struct DevRound {
    /// (dataset, eval loss) per dev set.
    pub losses: Vec<(String, f64)>,
    /// The loss over all dev rows (row-weighted mean of the per-dataset losses).
    pub eval_loss: Option<f64>,
    /// Mean active dimensions of the dev queries and documents (positives and negatives).
    pub query_active_dims: Option<f64>,
    pub document_active_dims: Option<f64>,
    /// Decoded samples, one line each: side, text head, top tokens.
    pub decoded: Vec<String>,
}

impl DevRound {
    /// The scalars this round logs (see the module doc for the names).
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        if self.losses.len() > 1 {
            out.extend(self.losses.iter().map(|(n, l)| (format!("eval_{n}_loss"), *l)));
        }
        if let Some(l) = self.eval_loss {
            out.push(("eval_loss".into(), l));
        }
        if let Some(q) = self.query_active_dims {
            out.push(("eval_query_active_dims".into(), q));
        }
        if let Some(d) = self.document_active_dims {
            out.push(("eval_document_active_dims".into(), d));
        }
        out
    }
}

/// Sum and count of a mean, accumulated.
#[derive(Default, Clone, Copy)]
struct Mean(f64, usize);

impl Mean {
    fn add(&mut self, v: f64, n: usize) {
        self.0 += v * n as f64;
        self.1 += n;
    }
    fn get(self) -> Option<f64> {
        (self.1 > 0).then(|| self.0 / self.1 as f64)
    }
}

fn active_dims(t: &tch::Tensor) -> f64 {
    t.gt(0.0).to_kind(Kind::Float).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).mean(Kind::Float).double_value(&[])
}

impl Trainer {
    /// The eval loss of `rows` in batches of `batch` rows, and the active dims of their query and document
    /// embeddings (see the module doc). `None` for a CSR model, whose loss updates its dead-latent counters.
    pub fn eval_loss(&self, rows: &[Example], batch: usize) -> Result<Option<(f64, f64, f64)>, TrainError> {
        if self.model.csr().is_some() || rows.is_empty() {
            return Ok(None);
        }
        // The weights of the step just taken (its `on_step_begin` saw global_step - 1).
        let step = self.state.global_step.saturating_sub(1);
        let total = self.state.total_steps;
        let mut losses: Vec<(f64, usize)> = Vec::new();
        let (mut q_dims, mut d_dims) = (Mean::default(), Mean::default());
        tch::no_grad(|| -> Result<(), TrainError> {
            for chunk in rows.chunks(batch.max(1)) {
                let refs: Vec<&Example> = chunk.iter().collect();
                let (q, d, _) = self.embed(&refs, false)?;
                let labels = Self::labels(&refs)?;
                let parts = self.loss.compute(&q, &d, labels.as_ref(), step, total)?;
                losses.push((parts.ranking + parts.flops_query + parts.flops_document, chunk.len()));
                q_dims.add(active_dims(&q), q.size()[0] as usize);
                d_dims.add(active_dims(&d), d.size()[0] as usize);
            }
            Ok(())
        })?;
        let any_finite = losses.iter().any(|(l, _)| l.is_finite());
        let mut mean = Mean::default();
        for (l, n) in losses {
            if l.is_finite() || !any_finite {
                mean.add(l, n);
            }
        }
        let loss = mean.get().ok_or_else(|| other("no dev rows"))?;
        Ok(Some((loss, q_dims.get().unwrap_or(f64::NAN), d_dims.get().unwrap_or(f64::NAN))))
    }

    /// Evaluates the dev sets: losses, and (`track_sparsity`) active dims, and the top tokens of the first
    /// `decode` rows' query and positive.
    pub fn dev_round(&self, sets: &[DevSet], batch: usize, track_sparsity: bool, decode: usize) -> Result<DevRound, TrainError> {
        let mut round = DevRound::default();
        let (mut all, mut q, mut d) = (Mean::default(), Mean::default(), Mean::default());
        for set in sets {
            if let Some((loss, qd, dd)) = self.eval_loss(&set.rows, batch)? {
                round.losses.push((set.name.clone(), loss));
                all.add(loss, set.rows.len());
                q.add(qd, set.rows.len());
                d.add(dd, set.rows.len());
            }
        }
        round.eval_loss = all.get();
        if track_sparsity {
            round.query_active_dims = q.get();
            round.document_active_dims = d.get();
        }
        let samples: Vec<&Example> = sets.iter().flat_map(|s| s.rows.iter()).take(decode).collect();
        if !samples.is_empty() {
            let anchors: Vec<&str> = samples.iter().map(|e| e.anchor.as_str()).collect();
            let positives: Vec<&str> = samples.iter().map(|e| e.positive.as_str()).collect();
            for (side, kind, texts) in [("query", TextKind::Query, anchors), ("document", TextKind::Document, positives)] {
                let vecs = self.model.encode(&texts, kind, batch)?;
                for (text, (idx, val)) in texts.iter().zip(vecs) {
                    let head: String = text.chars().take(60).collect();
                    let toks = crate::cli::encode::top_tokens(&self.model, &idx, &val, 10);
                    let shown: Vec<String> = toks.iter().map(|(t, w)| format!("{t}:{w:.2}")).collect();
                    round.decoded.push(format!("{side} \"{head}\" ({} active): {}", idx.len(), shown.join(" ")));
                }
            }
        }
        Ok(round)
    }
}
