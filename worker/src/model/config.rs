//! `config.json` of a BERT-family checkpoint, mirrored field for field with the defaults
//! transformers uses when a key is absent.

use serde::{Deserialize, Serialize};

/// The subset of a Hugging Face BERT `config.json` the encoder needs. Unknown keys are kept in
/// `extra` so a saved config round-trips everything the original carried.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_pos() -> i64 {
    512
}
fn default_type_vocab() -> i64 {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}
fn default_true() -> bool {
    true
}

impl BertConfig {
    /// Per-head width; `hidden_size` must divide evenly (checked by [`BertConfig::validate`]).
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks what the forward pass relies on, so a bad config fails before libtorch sees it.
    pub fn validate(&self) -> Result<(), String> {
        if self.model_type != "bert" {
            return Err(format!(
                "unsupported model_type '{}': this encoder implements BERT (model_type \"bert\", e.g. \
                 SPLADE-tiny, naver/splade-*, all-MiniLM); convert the model or pick a BERT checkpoint",
                self.model_type
            ));
        }
        if self.hidden_size <= 0 || self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a positive multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type '{}' is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu") {
            return Err(format!("hidden_act '{}' is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)", self.hidden_act));
        }
        Ok(())
    }
}
