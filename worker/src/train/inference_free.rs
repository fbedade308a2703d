//! Inference-free SPLADE training (`model.architecture: inference-free-splade`): the query route is
//! sentence-transformers' `SparseStaticEmbedding` (one learned weight per vocabulary token), the
//! document route the MLM encoder, as `Router.for_query_document` builds it.
//!
//! What the sentence-transformers recipe does and this mirrors:
//! - a fresh model gets a static table of ones (`SparseStaticEmbedding(tokenizer)` with no weight);
//!   a `base_model` that already is a Router folder keeps its trained table;
//! - the table is its own AdamW parameter group at `query_learning_rate` (ST's
//!   `learning_rate_mapping={r"sub_modules\.query\.0\.weight": query_lr}`), with weight decay (the
//!   Hugging Face Trainer decays every parameter but biases and LayerNorm weights), on the same
//!   warm-up/decay schedule; `freeze_static_embedding` leaves it out of the optimizer;
//! - `SpladeLoss` has no special case for this architecture: the query FLOPS term is applied to the
//!   static embeddings with `query_regularizer_weight` (0 in the usual inference-free setups).

use splade_common::config::{Architecture, Config};

use super::optim::ParamGroup;
use super::{other, TrainError};
use crate::model::{SparseEncoder, STATIC_VAR};

/// Shapes a freshly loaded model for `cfg.model.architecture`: adds the static query table for
/// inference-free SPLADE, refuses combinations that cannot mean what they say.
pub fn prepare_model(model: &mut SparseEncoder, cfg: &Config) -> Result<(), TrainError> {
    let at = |key: &str| match cfg.line_of(key) {
        Some(l) => format!("{}:{l}", cfg.origin),
        None => cfg.origin.clone(),
    };
    match cfg.model.architecture {
        Architecture::InferenceFreeSplade => {
            model.make_inference_free(cfg.model.freeze_static_embedding)?;
        }
        Architecture::Csr => super::csr::prepare(model, cfg)?,
        Architecture::Splade => {
            if model.is_inference_free() {
                return Err(other(format!(
                    "{}: model.base_model {} is an inference-free (Router) SparseEncoder but model.architecture is splade; \
                     set `architecture: inference-free-splade`",
                    at("model.architecture"),
                    cfg.model.base_model
                )));
            }
            if cfg.model.use_router {
                return Err(other(format!(
                    "{}: model.use_router: true needs `architecture: inference-free-splade` (the Router's query route is the \
                     static embedding); remove use_router for plain SPLADE",
                    at("model.use_router")
                )));
            }
            if cfg.model.freeze_static_embedding {
                return Err(other(format!(
                    "{}: model.freeze_static_embedding applies to inference-free SPLADE only; set `architecture: \
                     inference-free-splade` or remove the key",
                    at("model.freeze_static_embedding")
                )));
            }
            if let Some(q) = cfg.training.query_learning_rate {
                return Err(other(format!(
                    "{}: training.query_learning_rate {q} applies to inference-free SPLADE's static query weights only; \
                     set `model.architecture: inference-free-splade` or remove the key",
                    at("training.query_learning_rate")
                )));
            }
        }
    }
    Ok(())
}

/// The static table's optimizer group (none when frozen or absent). Its learning rate is the
/// scheduled rate × `query_learning_rate / learning_rate`, which is what torch's `LambdaLR` gives a
/// group whose initial lr is `query_learning_rate`.
pub fn static_param_group(model: &SparseEncoder, cfg: &Config) -> Option<ParamGroup> {
    let st = model.query_static.as_ref()?;
    if st.frozen {
        return None;
    }
    let lr = cfg.training.learning_rate;
    let q = cfg.training.query_learning_rate.unwrap_or(lr);
    Some(ParamGroup {
        names: vec![STATIC_VAR.to_string()],
        params: vec![st.weight.shallow_clone()],
        weight_decay: cfg.training.weight_decay,
        lr_scale: q / lr,
    })
}
