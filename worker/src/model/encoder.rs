//! The encoder abstraction: every masked-LM architecture the SPLADE head sits on.
//!
//! An architecture is a model file that reads top to bottom ([`super::bert`], [`super::norbert3`],
//! [`super::gptbert`], [`super::xlm_roberta`], [`super::modernbert`]) and implements [`MaskedLm`]:
//! the encoder stack up to its final hidden states, and its MLM head split into a per-token
//! transform plus a vocabulary decoder. The split is what the memory-lean head
//! ([`super::lean_head`]) needs: it never forms the `[B, L, V]` logits. Everything that differs
//! between the architectures' *outputs* (GPT-BERT's shifted logits, NorBERT3's suppressed ids,
//! GPT-BERT's unpatched sigmoid) is described by [`HeadLayout`] and applied in one place,
//! [`super::SparseEncoder::forward_with_head`], for both the lean and the dense path.
//!
//! The architecture is chosen from `config.json` alone (`architectures`, `auto_map`, `model_type`),
//! never from the folder name: [`Architecture::detect`].

use std::path::Path;

use tch::nn;
use tch::Tensor;

use super::tokenize::Batch;
use super::weights::Weights;
use super::ModelError;

/// The building blocks the architectures share (linear, layer norm, activation, attention).
pub(super) mod layers;

/// The masked-LM architectures this encoder implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `BertForMaskedLM` (and a bare `BertModel`, e.g. all-MiniLM, with a fresh head).
    Bert,
    /// NorBERT3 / LTG-BERT, remote code `NorbertForMaskedLM`.
    Norbert3,
    /// NorBERT4 / GPT-BERT, remote code `GptBertForMaskedLM`.
    GptBert,
    /// `XLMRobertaForMaskedLM` (also `RobertaForMaskedLM`: the same code).
    XlmRoberta,
    /// `ModernBertForMaskedLM` (also mmBERT: the same code with a 256k vocabulary).
    ModernBert,
}

/// Names as `config.json` spells them, for error messages.
pub const SUPPORTED: &str = "BertForMaskedLM (model_type bert), NorbertForMaskedLM (NorBERT3 / LTG-BERT, remote code), \
GptBertForMaskedLM (NorBERT4 / GPT-BERT, remote code), XLMRobertaForMaskedLM (model_type xlm-roberta), \
ModernBertForMaskedLM (model_type modernbert)";

impl Architecture {
    /// Picks the architecture from a parsed `config.json`: first `architectures`, then the class
    /// names `auto_map` points at, then `model_type`. An unknown one is an error naming what was
    /// found and [`SUPPORTED`].
    pub fn detect(cfg: &serde_json::Value, cfg_path: &Path) -> Result<Self, ModelError> {
        let strings = |key: &str| -> Vec<String> {
            match cfg.get(key) {
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                Some(serde_json::Value::Object(m)) => {
                    m.values().filter_map(|v| v.as_str().map(|s| s.rsplit('.').next().unwrap_or(s).to_string())).collect()
                }
                _ => Vec::new(),
            }
        };
        let architectures = strings("architectures");
        let auto_map = strings("auto_map");
        let by_class = |name: &str| -> Option<Self> {
            Some(match name {
                "BertForMaskedLM" | "BertModel" | "BertForPreTraining" => Self::Bert,
                "NorbertForMaskedLM" | "NorbertModel" | "LtgBertForMaskedLM" => Self::Norbert3,
                "GptBertForMaskedLM" | "GptBertModel" => Self::GptBert,
                "XLMRobertaForMaskedLM" | "XLMRobertaModel" | "RobertaForMaskedLM" | "RobertaModel" => Self::XlmRoberta,
                "ModernBertForMaskedLM" | "ModernBertModel" => Self::ModernBert,
                _ => return None,
            })
        };
        if let Some(a) = architectures.iter().chain(auto_map.iter()).find_map(|n| by_class(n)) {
            return Ok(a);
        }
        let model_type = cfg.get("model_type").and_then(|v| v.as_str());
        let by_type = match model_type {
            Some("bert") => Some(Self::Bert),
            Some("norbert") | Some("ltgbert") => Some(Self::Norbert3),
            Some("gpt_bert") | Some("gptbert") => Some(Self::GptBert),
            Some("xlm-roberta") | Some("roberta") => Some(Self::XlmRoberta),
            Some("modernbert") => Some(Self::ModernBert),
            // Before `model_type` existed BERT configs had none; the BERT loader validates the rest.
            None if architectures.is_empty() && auto_map.is_empty() => Some(Self::Bert),
            _ => None,
        };
        by_type.ok_or_else(|| {
            ModelError::file(
                cfg_path,
                format!(
                    "unsupported architecture: architectures {architectures:?}, auto_map classes {auto_map:?}, model_type {}; \
                     supported: {SUPPORTED}",
                    model_type.map(|t| format!("{t:?}")).unwrap_or_else(|| "absent".into())
                ),
            )
        })
    }

    /// Whether the architecture is Hugging Face remote code: a saved folder then carries the base
    /// folder's `.py` files and `auto_map`, and loads with `trust_remote_code=True`.
    pub fn is_remote_code(self) -> bool {
        matches!(self, Self::Norbert3 | Self::GptBert)
    }
}

/// A monotone map applied to the head's raw logits before the SPLADE activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Squash {
    /// `30 · sigmoid(x / 7.5)`: GPT-BERT's unpatched `GptBertForMaskedLM` (every logit positive,
    /// so SPLADE vectors are dense). `model.patch_sigmoid_for_sparsity` removes it.
    Sigmoid30,
}

impl Squash {
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Squash::Sigmoid30 => (x / 7.5).sigmoid() * 30.0,
        }
    }
}

/// How the reference model's `.logits` are made from the head's per-token output `raw[b, t]`
/// (= `decoder(transform(hidden[b, t]))`). The default is plain `logits = raw`.
#[derive(Debug, Clone, Default)]
pub struct HeadLayout {
    /// GPT-BERT's masked-next-token output: `logits[:, t] = squash(raw[:, t − 1])` for t ≥ 1 and
    /// `logits[:, 0]` a one-hot of value 1.0 at this token id (its `bos_token_id`).
    pub shifted_bos: Option<i64>,
    /// NorBERT3's `logits[..., :n] = −inf`: ids below `n` never activate.
    pub suppressed_below: i64,
    /// A monotone map applied to `raw` before the activation (see [`Squash`]).
    pub squash: Option<Squash>,
}

/// A masked-LM encoder plus its MLM head, with parameters in a [`nn::VarStore`] under the
/// checkpoint's own state-dict names.
///
/// Guarantee for implementors: `decoder_weight() · head_transform(encode(batch), false)ᵀ + decoder_bias()`
/// is the reference implementation's MLM head output before any of [`HeadLayout`]'s changes
/// (the fixtures' `mlm_raw`).
pub trait MaskedLm: Send {
    fn architecture(&self) -> Architecture;

    /// Final hidden states [B, L, H] (the reference's `last_hidden_state`). Right-padded batches:
    /// padding never changes the real positions' states beyond float rounding.
    fn encode(&self, batch: &Batch, train: bool) -> Tensor;

    /// The head's per-token transform [B, L, H] → [B, L, H'] (everything before the decoder);
    /// `train` turns on the head's own dropout where the architecture has one (NorBERT3).
    fn head_transform(&self, hidden: &Tensor, train: bool) -> Tensor;

    /// The decoder weight [V, H'] (the word embeddings where tied).
    fn decoder_weight(&self) -> &Tensor;

    /// The decoder bias [V] (zeros where the architecture has none).
    fn decoder_bias(&self) -> &Tensor;

    /// How `.logits` are made from the head output.
    fn head_layout(&self) -> HeadLayout {
        HeadLayout::default()
    }

    /// Vocabulary size V.
    fn vocab_size(&self) -> i64;

    /// The token id the tokenizer pads with.
    fn pad_token_id(&self) -> i64;

    /// Longest input (special tokens included) the position encoding covers; `None` when any length
    /// works (NorBERT3's bucketed relative positions).
    fn max_positions(&self) -> Option<usize>;

    /// Tensors `model.safetensors` needs beyond the VarStore's variables (which are saved under their
    /// names anyway), by state-dict name: tied copies such as a tied decoder key that the reference
    /// code expects (transformers 4.57 initialises a missing one at random). Returning VarStore
    /// parameters here too is harmless: the saved set is the union by name.
    fn state_dict(&self) -> Vec<(String, Tensor)>;

    /// The `config.json` to save next to [`MaskedLm::state_dict`] (the loaded one, round-tripped).
    fn config_json(&self) -> serde_json::Value;
}

/// What an architecture's `load` gets: the folder, its parsed `config.json`, the checkpoint's
/// tensors (taken out one by one so leftovers can be reported) and where to create parameters.
pub struct LoadArgs<'a> {
    pub dir: &'a Path,
    pub config: &'a serde_json::Value,
    pub config_path: &'a Path,
    pub weights: &'a mut Weights,
    pub vs: nn::Path<'a>,
    /// Replaces the config's hidden and attention dropout (training config `model.dropout`).
    pub dropout: Option<f64>,
    /// GPT-BERT: drop the `30·sigmoid(x/7.5)` head squash (`model.patch_sigmoid_for_sparsity`).
    pub patch_sigmoid: bool,
}

/// Parses an architecture's config struct from `config.json`, naming the file on error.
pub fn parse_config<T: serde::de::DeserializeOwned>(args: &LoadArgs<'_>) -> Result<T, ModelError> {
    serde_json::from_value(args.config.clone())
        .map_err(|e| ModelError::file(args.config_path, format!("invalid config: {e}")))
}
