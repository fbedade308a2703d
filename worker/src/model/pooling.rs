//! SPLADE pooling, exactly as sentence-transformers' `SpladePooling`: logits of padding positions
//! are zeroed, `log1p(relu(·))` (twice `log1p` for the `log1p_relu` variant), then max or sum over
//! the sequence.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How token scores are reduced over the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingStrategy {
    Max,
    Sum,
}

/// The activation applied before pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `log1p(relu(x))`, every SPLADE model.
    Relu,
    /// `log1p(log1p(relu(x)))`, OpenSearch's variant.
    Log1pRelu,
}

/// `1_SpladePooling/config.json` (both the 6.x `embedding_dimension` and the 5.x
/// `word_embedding_dimension` spelling are read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolingConfig {
    #[serde(default = "default_strategy")]
    pub pooling_strategy: PoolingStrategy,
    #[serde(default = "default_activation")]
    pub activation_function: Activation,
    #[serde(default, alias = "word_embedding_dimension")]
    pub embedding_dimension: Option<i64>,
}

fn default_strategy() -> PoolingStrategy {
    PoolingStrategy::Max
}
fn default_activation() -> Activation {
    Activation::Relu
}

impl Default for PoolingConfig {
    fn default() -> Self {
        Self { pooling_strategy: PoolingStrategy::Max, activation_function: Activation::Relu, embedding_dimension: None }
    }
}

impl PoolingConfig {
    /// Element-wise SPLADE activation of raw scores.
    pub fn activate(&self, x: &Tensor) -> Tensor {
        let y = x.relu().log1p();
        match self.activation_function {
            Activation::Relu => y,
            Activation::Log1pRelu => y.log1p(),
        }
    }

    /// Pools MLM logits [B, L, V] with `attention_mask` [B, L] into [B, V]: the dense reference path.
    pub fn pool_dense(&self, logits: &Tensor, attention_mask: &Tensor) -> Tensor {
        let mask = attention_mask.unsqueeze(-1).to_kind(logits.kind());
        // Masked after the activation, not before as sentence-transformers does: the same values for
        // finite logits, and a −inf logit (NorBERT3's suppressed ids) at a padded position gives 0,
        // not −inf · 0 = NaN.
        let act = self.activate(logits) * mask;
        match self.pooling_strategy {
            // `max_dim` rather than `amax`: torch.max routes the gradient to one index on ties, as ST does.
            PoolingStrategy::Max => act.max_dim(1, false).0,
            PoolingStrategy::Sum => act.sum_dim_intlist([1i64].as_slice(), false, Kind::Float),
        }
    }
}
