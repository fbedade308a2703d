//! SPLADE training objectives, as sentence-transformers 6.2 computes them: `SpladeLoss` around an
//! inner ranking/distillation loss, plus FLOPS regularisers on queries and documents whose weights
//! warm up quadratically (`SpladeRegularizerWeightSchedulerCallback`).

use tch::{Kind, Reduction, Tensor};

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
    pub fn compute(&self, query: &Tensor, candidates: &Tensor, labels: Option<&Tensor>, step: u64, total_steps: u64) -> LossParts {
        let b = query.size()[0];
        let (qw, dw) = self.regularizer_weights(step, total_steps);
        let ranking = match self.inner {
            InnerLoss::MultipleNegativesRanking { scale } => {
                let scores = query.matmul(&candidates.tr()) * scale;
                let target = Tensor::arange(b, (Kind::Int64, query.device()));
                scores.cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, -100, 0.0)
            }
            InnerLoss::MarginMse => {
                let labels = labels.expect("MarginMSE needs teacher scores (label column)").to_device(query.device());
                let cols = candidates.size()[0] / b;
                let pos = (query * candidates.narrow(0, 0, b)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
                let margins: Vec<Tensor> = (1..cols)
                    .map(|c| &pos - (query * candidates.narrow(0, c * b, b)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float))
                    .collect();
                let pred = Tensor::stack(&margins, 1);
                let target = if labels.size() == [b, cols] {
                    labels.narrow(1, 0, 1) - labels.narrow(1, 1, cols - 1)
                } else {
                    labels.view([b, cols - 1])
                };
                pred.mse_loss(&target.to_kind(Kind::Float), Reduction::Mean)
            }
            InnerLoss::DistillKlDiv { temperature } => {
                let labels = labels.expect("KL distillation needs teacher scores (label column)").to_device(query.device());
                let cols = candidates.size()[0] / b;
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
        LossParts {
            ranking: ranking.double_value(&[]),
            flops_query: fq.double_value(&[]),
            flops_document: fd.double_value(&[]),
            total,
            query_weight: qw,
            document_weight: dw,
            csr: None,
        }
    }
}
