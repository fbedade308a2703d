//! CSR training (`model.architecture: csr`, `loss.type: csr_loss`): sentence-transformers'
//! `CSRLoss(model, loss=SparseMultipleNegativesRankingLoss(model), beta, gamma)`.
//!
//! - The model ([`prepare`]): the base's dense encoder and pooling plus a fresh `SparseAutoEncoder`
//!   (or the one a CSR folder already has). Every parameter trains, encoder included, as in the
//!   seed's script (it freezes nothing).
//! - The loss ([`CsrLossConfig::compute`]): the step embeds anchors and candidates as dense sentence
//!   embeddings ([`crate::model::SparseEncoder::loss_input`]); the autoencoder then runs once per
//!   text column in sentence-transformers' order (anchors, positives, each negative column), so the
//!   dead-latent counters (`stats_last_nonzero`, updated by each of its two `top_k` calls per column)
//!   move exactly as there. Parts, as `CSRReconstructionLoss` returns them: `reconstruction_loss_k`
//!   (MSE of the top-k reconstruction, mean over columns), `reconstruction_loss_4k` (top-4k, / 8),
//!   `reconstruction_loss_aux` (β × the normalised MSE of the dead latents' reconstruction of the
//!   residual), and `base_loss` (γ × the ranking loss over the top-k latents); the total is their sum.
//! - The seed's `aux_loss_weight` (a keyword `CSRLoss` does not take: the seed's own CSR path raises
//!   TypeError) is taken as β, the weight of the auxiliary term.
//! - Data-parallel: every rank runs the autoencoder on the gathered global batch (identical inputs,
//!   identical counters), so its parameters' gradients are the whole batch's on every rank;
//!   [`Trainer::scale_replicated_grads`] divides them by the world size before the SUM all-reduce.

use splade_common::config::{Architecture, Config};
use tch::{Kind, Reduction, Tensor};

use super::loss::{CsrParts, LossParts, SpladeLossConfig};
use super::{other, TrainError, Trainer};
use crate::model::{csr::normalized_mse, CsrHead, SparseEncoder};

/// `CSRLoss`'s settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CsrLossConfig {
    /// Weight of the auxiliary reconstruction term (`loss.aux_loss_weight`).
    pub beta: f64,
    /// Weight of the ranking loss (`loss.gamma`).
    pub gamma: f64,
}

impl CsrLossConfig {
    pub fn from_config(cfg: &Config) -> Option<Self> {
        (cfg.model.architecture == Architecture::Csr).then_some(Self { beta: cfg.loss.aux_loss_weight, gamma: cfg.loss.gamma })
    }

    /// The loss of a batch of dense embeddings: `query` [B, H], `candidates` [k·B, H] (positives,
    /// then each negative column). `inner` computes the ranking loss over the latents (its
    /// regularisers are not part of CSRLoss and are not applied).
    pub fn compute(&self, head: &CsrHead, inner: &SpladeLossConfig, query: &Tensor, candidates: &Tensor, labels: Option<&Tensor>) -> Result<LossParts, TrainError> {
        let b = query.size()[0];
        let cols = candidates.size()[0] / b;
        let mut columns = vec![query.shallow_clone()];
        columns.extend((0..cols).map(|c| candidates.narrow(0, c * b, b)));
        let outputs: Vec<_> = columns.iter().map(|x| head.train_forward(x, true)).collect();
        let n = outputs.len() as f64;
        let zero = || Tensor::zeros([], (Kind::Float, query.device()));
        let (mut lk, mut l4k, mut laux) = (zero(), zero(), zero());
        for f in &outputs {
            lk = lk + f.backbone.mse_loss(&f.decoded_k, Reduction::Mean);
            l4k = l4k + f.backbone.mse_loss(&f.decoded_4k, Reduction::Mean);
            if let Some(aux) = &f.decoded_aux {
                laux = laux + normalized_mse(aux, &(&f.backbone - f.decoded_k_pre_bias.detach()));
            }
        }
        let lk = lk / n;
        let l4k = l4k / n / 8.0;
        let laux = laux / n * self.beta;
        let q_lat = outputs[0].latents_k.shallow_clone();
        let d_lat = Tensor::cat(&outputs[1..].iter().map(|f| f.latents_k.shallow_clone()).collect::<Vec<_>>(), 0);
        let plain = SpladeLossConfig { query_regularizer_weight: 0.0, document_regularizer_weight: 0.0, ..*inner };
        let ranking = plain.compute(&q_lat, &d_lat, labels, 0, 1)?.total * self.gamma;
        let total = &lk + &l4k + &laux + &ranking;
        Ok(LossParts {
            ranking: ranking.double_value(&[]),
            flops_query: 0.0,
            flops_document: 0.0,
            query_weight: 0.0,
            document_weight: 0.0,
            csr: Some(CsrParts {
                reconstruction_k: lk.double_value(&[]),
                reconstruction_4k: l4k.double_value(&[]),
                reconstruction_aux: laux.double_value(&[]),
                dead_latents: head.dead_latents(),
                stats_sum: head.stats_sum(),
                query_latents: q_lat.detach(),
                document_latents: d_lat.detach(),
            }),
            total,
        })
    }
}

/// Shapes the loaded base for CSR: a fresh autoencoder with the `model.csr_*` sizes (unless the
/// folder already is a CSR model), and refuses settings CSR has no meaning for.
pub fn prepare(model: &mut SparseEncoder, cfg: &Config) -> Result<(), TrainError> {
    let at = |key: &str| match cfg.line_of(key) {
        Some(l) => format!("{}:{l}", cfg.origin),
        None => cfg.origin.clone(),
    };
    let m = &cfg.model;
    if cfg.document_windows.is_some() {
        return Err(other(format!(
            "{}: document_windows applies to SPLADE's token pooling; CSR embeds each text whole, remove document_windows",
            at("document_windows")
        )));
    }
    if m.freeze_static_embedding || cfg.training.query_learning_rate.is_some() {
        return Err(other(format!(
            "{}: freeze_static_embedding / query_learning_rate apply to inference-free SPLADE only; remove them for CSR",
            at("model.architecture")
        )));
    }
    let k = m.csr_k.unwrap_or(256) as i64;
    model
        .make_csr(
            m.csr_hidden_dim.map(|h| h as i64),
            k,
            m.csr_k_aux.unwrap_or(512) as i64,
            m.csr_normalize.unwrap_or(false),
            m.csr_dead_threshold.unwrap_or(30) as i64,
        )
        .map_err(|e| other(format!("{}: model.base_model {}: {e}", at("model.base_model"), m.base_model)))?;
    let h = model.csr().expect("make_csr made a CSR head");
    let c = &h.config;
    if 4 * c.k > c.hidden_dim {
        return Err(other(format!(
            "{}: the CSR model's k = {} needs 4·k = {} latents for CSRLoss, more than its hidden_dim {}",
            at("model.csr_k"),
            c.k,
            4 * c.k,
            c.hidden_dim
        )));
    }
    tracing::info!(
        input_dim = c.input_dim,
        hidden_dim = c.hidden_dim,
        k = c.k,
        k_aux = c.k_aux,
        normalize = c.normalize,
        dead_threshold = c.dead_threshold,
        pooling = ?h.pooling,
        "CSR: dense encoder + pooling + SparseAutoEncoder; every parameter trains (encoder and autoencoder, nothing frozen)"
    );
    Ok(())
}

impl Trainer {
    /// The step's loss on `query` / `candidates` (what [`Trainer::embed`] returned, gathered or not):
    /// `CSRLoss` for CSR models, `SpladeLoss` otherwise.
    pub(crate) fn compute_loss(&self, query: &Tensor, candidates: &Tensor, labels: Option<&Tensor>, step: u64, total: u64) -> Result<LossParts, TrainError> {
        match (&self.csr_loss, self.model.csr()) {
            (Some(c), Some(head)) => c.compute(head, &self.loss, query, candidates, labels),
            _ => self.loss.compute(query, candidates, labels, step, total),
        }
    }

    /// Divides the gradients of parameters every rank computed on the whole gathered batch (the CSR
    /// autoencoder's) by `world`, so the SUM all-reduce gives the global-batch gradient.
    pub(crate) fn scale_replicated_grads(&self, world: usize) {
        if self.model.csr().is_none() || world <= 1 {
            return;
        }
        let prefix = format!("{}.", crate::model::csr::CSR_PREFIX);
        for (name, t) in self.model.named_parameters() {
            if name.starts_with(&prefix) {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(1.0 / world as f64);
                }
            }
        }
    }
}
