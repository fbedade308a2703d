//! SPLADE training objectives, as sentence-transformers 6.2 computes them: `SpladeLoss` around an
//! inner ranking/distillation loss, plus FLOPS regularisers on queries and documents whose weights
//! warm up quadratically (`SpladeRegularizerWeightSchedulerCallback`).

use splade_common::data::{IndexedFile, RecordIndex};
use tch::{Kind, Reduction, Tensor};

use super::TrainError;

/// The ranking or distillation loss inside `SpladeLoss`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InnerLoss {
    /// Cross-entropy over `scale`·dot(query, every candidate in the batch), positives on the diagonal.
    MultipleNegativesRanking { scale: f64 },
    /// MSE between predicted and teacher margins `dot(q, pos) - dot(q, neg_k)`.
    MarginMse,
    /// KL(teacher ‖ student) over the candidates with temperature, × temperature².
    DistillKlDiv { temperature: f64 },
}

/// Settings of the whole objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpladeLossConfig {
    pub inner: InnerLoss,
    pub query_regularizer_weight: f64,
    pub document_regularizer_weight: f64,
    /// Fraction of the run over which the regulariser weights grow quadratically from 0.
    pub regularizer_warmup_ratio: f64,
}

/// One step's loss and its parts. `total` carries the graph; the rest are plain numbers.
pub struct LossParts {
    pub total: Tensor,
    pub ranking: f64,
    /// Weighted query FLOPS term (weight × FLOPS).
    pub flops_query: f64,
    /// Weighted document FLOPS term.
    pub flops_document: f64,
    pub query_weight: f64,
    pub document_weight: f64,
    /// CSRLoss's reconstruction parts (`None` for SpladeLoss).
    pub csr: Option<CsrParts>,
}

/// The reconstruction parts of `CSRLoss` (weighted as it returns them) and the state of the
/// dead-latent counters after the loss's forward.
pub struct CsrParts {
    pub reconstruction_k: f64,
    pub reconstruction_4k: f64,
    pub reconstruction_aux: f64,
    pub dead_latents: i64,
    pub stats_sum: i64,
    /// The top-k latents (what the sparsity statistics count), detached.
    pub query_latents: Tensor,
    pub document_latents: Tensor,
}

/// FLOPS regulariser `Σ_j (mean_i w_ij)²` of a [N, V] batch of sparse embeddings.
pub fn flops(emb: &Tensor) -> Tensor {
    emb.mean_dim([0i64].as_slice(), false, Kind::Float).square().sum(Kind::Float)
}

impl SpladeLossConfig {
    /// Regulariser weights at optimizer step `step` (0-based, the step about to run) of `total_steps`,
    /// exactly as the sentence-transformers callback sets them in `on_step_begin`.
    pub fn regularizer_weights(&self, step: u64, total_steps: u64) -> (f64, f64) {
        let warmup = ((total_steps as f64 * self.regularizer_warmup_ratio) as u64).max(1);
        let f = |max: f64| {
            if step >= warmup {
                max
            } else {
                let r = step as f64 / warmup as f64;
                max * r * r
            }
        };
        (f(self.query_regularizer_weight), f(self.document_regularizer_weight))
    }

    /// The loss of a batch. `query` is [B, V]; `candidates` is [k·B, V] with the positives first
    /// (rows 0..B) and then each negative column in turn, as sentence-transformers concatenates
    /// them; `labels` are teacher scores for the distillation losses.
    ///
    /// Teacher scores the loss cannot use (missing, or not one per candidate column) are a
    /// [`TrainError::Labels`], never a panic; [`validate_labels`] catches them before step 1.
    pub fn compute(&self, query: &Tensor, candidates: &Tensor, labels: Option<&Tensor>, step: u64, total_steps: u64) -> Result<LossParts, TrainError> {
        let b = query.size()[0];
        let (qw, dw) = self.regularizer_weights(step, total_steps);
        let ranking = match self.inner {
            InnerLoss::MultipleNegativesRanking { scale } => {
                let scores = query.matmul(&candidates.tr()) * scale;
                let target = Tensor::arange(b, (Kind::Int64, query.device()));
                scores.cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, -100, 0.0)
            }
            InnerLoss::MarginMse => {
                let labels = self.labels_for(labels, b)?.to_device(query.device());
                let cols = candidates.size()[0] / b;
                let pos = (query * candidates.narrow(0, 0, b)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
                let margins: Vec<Tensor> = (1..cols)
                    .map(|c| &pos - (query * candidates.narrow(0, c * b, b)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float))
                    .collect();
                let pred = Tensor::stack(&margins, 1);
                let width = labels.size()[1];
                let target = if width == cols {
                    labels.narrow(1, 0, 1) - labels.narrow(1, 1, cols - 1)
                } else if width == cols - 1 {
                    labels
                } else {
                    return Err(TrainError::Labels(format!(
                        "sparse_margin_mse: rows with {} negative(s) need labels of {} margins (or {cols} scores: positive \
                         first), but they have {width}; give every row's `label` that many values",
                        cols - 1,
                        cols - 1
                    )));
                };
                pred.mse_loss(&target.to_kind(Kind::Float), Reduction::Mean)
            }
            InnerLoss::DistillKlDiv { temperature } => {
                let labels = self.labels_for(labels, b)?.to_device(query.device());
                let cols = candidates.size()[0] / b;
                if labels.size()[1] != cols {
                    return Err(TrainError::Labels(format!(
                        "sparse_distill_kldiv: rows with a positive and {} negative(s) need labels of {cols} teacher scores \
                         (positive first), but they have {}; give every row's `label` that many values",
                        cols - 1,
                        labels.size()[1]
                    )));
                }
                let scores: Vec<Tensor> = (0..cols)
                    .map(|c| (query * candidates.narrow(0, c * b, b)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float))
                    .collect();
                let student = (Tensor::stack(&scores, 1) / temperature).log_softmax(1, Kind::Float);
                let teacher = (labels.to_kind(Kind::Float) / temperature).softmax(1, Kind::Float);
                // KLDivLoss(reduction="batchmean"): Σ teacher·(log teacher − student) / B.
                let kl = (&teacher * (teacher.clamp_min(1e-45).log() - &student)).sum(Kind::Float) / b as f64;
                kl * (temperature * temperature)
            }
        };
        let fq = flops(query) * qw;
        let fd = flops(candidates) * dw;
        let total = &ranking + &fq + &fd;
        Ok(LossParts {
            ranking: ranking.double_value(&[]),
            flops_query: fq.double_value(&[]),
            flops_document: fd.double_value(&[]),
            total,
            query_weight: qw,
            document_weight: dw,
            csr: None,
        })
    }

    /// The batch's labels as `[b, width]`, or the error a distillation loss without them gets.
    fn labels_for<'a>(&self, labels: Option<&'a Tensor>, b: i64) -> Result<&'a Tensor, TrainError> {
        let name = self.inner.config_name();
        match labels {
            Some(l) if l.dim() == 2 && l.size()[0] == b => Ok(l),
            Some(l) => Err(TrainError::Labels(format!("{name}: labels of shape {:?} for a batch of {b} rows", l.size()))),
            None => Err(TrainError::Labels(format!(
                "{name} needs teacher scores, but a row of this batch has no `label`; add a `label` column to every row or use \
                 loss.inner_loss: sparse_multiple_negatives_ranking_loss"
            ))),
        }
    }
}

impl InnerLoss {
    /// The `loss.inner_loss` spelling, for messages.
    pub fn config_name(&self) -> &'static str {
        match self {
            InnerLoss::MultipleNegativesRanking { .. } => "sparse_multiple_negatives_ranking_loss",
            InnerLoss::MarginMse => "sparse_margin_mse",
            InnerLoss::DistillKlDiv { .. } => "sparse_distill_kldiv",
        }
    }

    /// True for the losses that read teacher scores.
    pub fn needs_labels(&self) -> bool {
        !matches!(self, InnerLoss::MultipleNegativesRanking { .. })
    }
}

/// Where row `row` of `index` is, for messages: `file:line`-like (`file (byte N)` for JSONL,
/// `file (row group G, row R)` for Parquet).
fn row_place(index: &RecordIndex, row: usize) -> String {
    let Some(loc) = index.rows.get(row) else { return format!("dataset `{}` row {row}", index.dataset) };
    let file = index.files.get(loc.file()).map_or("?", |f: &IndexedFile| f.url.as_str());
    match index.files.get(loc.file()).map(|f| f.format) {
        Some(splade_common::data::DataFormat::Parquet) => format!("{file} (row group {}, row {})", loc.1, loc.2),
        _ => format!("{file} (record at byte {})", loc.1),
    }
}

/// Checks, before step 1, that every training row of `index` carries what `inner` reads: for the
/// distillation losses a `label` on every row, all of one width. The message names the dataset, the
/// first row at fault (file and byte offset or Parquet row) and the fix.
pub fn validate_labels(inner: &InnerLoss, index: &RecordIndex) -> Result<(), TrainError> {
    if !inner.needs_labels() || index.rows.is_empty() {
        return Ok(());
    }
    let name = inner.config_name();
    let missing = |row: usize| {
        TrainError::Labels(format!(
            "dataset `{}`: {}: no `label`, but loss.inner_loss {name} needs teacher scores on every row; add the column (map it \
             with datasets.{}.columns: {{<column>: label}}) or use sparse_multiple_negatives_ranking_loss",
            index.dataset,
            row_place(index, row),
            index.dataset
        ))
    };
    if index.labels.is_empty() {
        return Err(missing(0));
    }
    let mut width = None;
    for (row, label) in index.labels.iter().enumerate() {
        let Some(l) = label else { return Err(missing(row)) };
        match width {
            None => width = Some((l.len(), row)),
            Some((w, first)) if w != l.len() => {
                return Err(TrainError::Labels(format!(
                    "dataset `{}`: {}: `label` has {} values but {} has {w}; {name} needs the same number of teacher scores \
                     on every row",
                    index.dataset,
                    row_place(index, row),
                    l.len(),
                    row_place(index, first)
                )))
            }
            Some(_) => {}
        }
    }
    if width.is_some_and(|(w, _)| w == 0) {
        return Err(TrainError::Labels(format!(
            "dataset `{}`: {}: `label` is an empty list; give {name} one teacher score per candidate",
            index.dataset,
            row_place(index, 0)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use splade_common::data::{DataFormat, RecordLoc};

    fn index(labels: Vec<Option<Vec<f32>>>) -> RecordIndex {
        RecordIndex {
            dataset: "distill".into(),
            columns: Default::default(),
            files: vec![IndexedFile { url: "/data/train.jsonl".into(), format: DataFormat::Jsonl, size: 0, last_modified: None, etag: None }],
            rows: (0..labels.len()).map(|i| RecordLoc(0, 100 * i as u64, 90)).collect(),
            labels,
        }
    }

    fn objective(inner: InnerLoss) -> SpladeLossConfig {
        SpladeLossConfig { inner, query_regularizer_weight: 0.0, document_regularizer_weight: 0.0, regularizer_warmup_ratio: 0.0 }
    }

    /// Regression (issue #17): `sparse_margin_mse` / `sparse_distill_kldiv` on rows without `label`
    /// panicked in `expect`; labels of another width panicked in `view`.
    #[test]
    fn distillation_losses_without_fitting_labels_are_errors() {
        let q = Tensor::rand([2, 5], (Kind::Float, tch::Device::Cpu));
        let d = Tensor::rand([4, 5], (Kind::Float, tch::Device::Cpu)); // positives + one negative column
        for inner in [InnerLoss::MarginMse, InnerLoss::DistillKlDiv { temperature: 1.0 }] {
            let e = objective(inner).compute(&q, &d, None, 0, 1).err().expect("no labels is an error").to_string();
            assert!(e.contains("needs teacher scores") && e.contains(inner.config_name()), "{e}");
            let three = Tensor::rand([2, 3], (Kind::Float, tch::Device::Cpu));
            let e = objective(inner).compute(&q, &d, Some(&three), 0, 1).err().expect("3 scores for 2 columns").to_string();
            assert!(e.contains("but they have 3"), "{e}");
        }
        // What fits still computes: 2 scores (MarginMSE and KL) and 1 margin (MarginMSE).
        let two = Tensor::rand([2, 2], (Kind::Float, tch::Device::Cpu));
        assert!(objective(InnerLoss::MarginMse).compute(&q, &d, Some(&two), 0, 1).is_ok());
        assert!(objective(InnerLoss::DistillKlDiv { temperature: 1.0 }).compute(&q, &d, Some(&two), 0, 1).is_ok());
        let one = Tensor::rand([2, 1], (Kind::Float, tch::Device::Cpu));
        assert!(objective(InnerLoss::MarginMse).compute(&q, &d, Some(&one), 0, 1).is_ok());
    }

    #[test]
    fn labels_are_validated_up_front_naming_the_row() {
        let kl = InnerLoss::DistillKlDiv { temperature: 1.0 };
        let e = validate_labels(&kl, &index(vec![Some(vec![1.0, 2.0]), None])).unwrap_err().to_string();
        assert!(e.starts_with("dataset `distill`: /data/train.jsonl (record at byte 100): no `label`, but loss.inner_loss sparse_distill_kldiv"), "{e}");
        let mut unlabelled = index(vec![None, None]);
        unlabelled.labels.clear(); // what `RecordIndex::new` stores when no row has a label
        let e = validate_labels(&kl, &unlabelled).unwrap_err().to_string();
        assert!(e.contains("(record at byte 0): no `label`"), "{e}");
        let e = validate_labels(&kl, &index(vec![Some(vec![1.0, 2.0]), Some(vec![1.0, 2.0]), Some(vec![3.0])])).unwrap_err().to_string();
        assert!(e.contains("(record at byte 200): `label` has 1 values but /data/train.jsonl (record at byte 0) has 2"), "{e}");
        assert!(validate_labels(&kl, &index(vec![Some(vec![1.0, 2.0]); 3])).is_ok());
        // The ranking loss reads no labels.
        assert!(validate_labels(&InnerLoss::MultipleNegativesRanking { scale: 1.0 }, &index(vec![None])).is_ok());
    }
}
