//! XLM-RoBERTa with its masked-language-model head (`XLMRobertaForMaskedLM`, also
//! `RobertaForMaskedLM`: the same code), in libtorch, reading top to bottom as transformers 5.24's
//! `modeling_xlm_roberta.py`: config, position ids (counted from the padding id), the LM head, and
//! the model that strings them together. The embeddings and the post-LN encoder are BERT's
//! ([`super::bert::Embeddings`], [`super::bert::Encoder`]): the same math under the `roberta.`
//! prefix. What differs from BERT: the position ids, the padding row of the word and position
//! tables gets no gradient, token type ids are ignored (row 0), and the head (`lm_head.dense`,
//! `lm_head.layer_norm`, exact GELU whatever `hidden_act` says, bias `lm_head.bias`).
//!
//! Variable names in the [`tch::nn::VarStore`] are exactly the checkpoint's (`roberta.encoder.layer.0.…`,
//! `lm_head.…`), so loading and saving are a copy by name. The decoder is tied to the word
//! embeddings (`lm_head.decoder.weight` may be stored or not) and its bias is `lm_head.bias`.

use serde::Deserialize;
use tch::nn::Path;
use tch::{Kind, Tensor};

use super::bert::{Embeddings, Encoder, EncoderConfig};
use super::encoder::layers::{Activation, LayerNorm, Linear, Loader};
use super::encoder::{parse_config, Architecture, LoadArgs, MaskedLm};
use super::tokenize::Batch;
use super::ModelError;

/// `config.json` of an XLM-RoBERTa checkpoint, with `XLMRobertaConfig`'s defaults for absent keys.
/// Keys the encoder has no use for are not kept here: [`MaskedLm::config_json`] returns the file's
/// own value.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "default_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: i64,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Also the embeddings' `padding_idx` and the offset of the position ids.
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: Option<i64>,
    /// Only `"absolute"` (what transformers 5 implements; older configs still carry the key).
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub is_decoder: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

fn default_vocab_size() -> i64 {
    30522
}
fn default_hidden_size() -> i64 {
    768
}
fn default_layers() -> i64 {
    12
}
fn default_heads() -> i64 {
    12
}
fn default_intermediate_size() -> i64 {
    3072
}
fn default_act() -> Activation {
    Activation::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_positions() -> i64 {
    512
}
fn default_type_vocab_size() -> i64 {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_pad_token_id() -> Option<i64> {
    Some(1)
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Checks what the forward pass relies on; the message names the key and the fix.
    fn validate(&self) -> Result<(), String> {
        if self.hidden_size <= 0 || self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a positive multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        let pad = self.pad_token()?;
        if pad < 0 || pad >= self.vocab_size || pad + 1 >= self.max_position_embeddings {
            return Err(format!(
                "pad_token_id {pad} must be a token id below vocab_size {} and below max_position_embeddings {} - 1 \
                 (XLM-RoBERTa counts positions from pad_token_id + 1)",
                self.vocab_size, self.max_position_embeddings
            ));
        }
        if let Some(t) = self.position_embedding_type.as_deref() {
            if t != "absolute" {
                return Err(format!(
                    "position_embedding_type {t:?} is not supported (only \"absolute\", the one transformers 5 implements)"
                ));
            }
        }
        if self.is_decoder {
            return Err("is_decoder is true: XLMRobertaForMaskedLM is a bidirectional encoder; set is_decoder to false".into());
        }
        if self.type_vocab_size < 1 {
            return Err(format!("type_vocab_size {} must be at least 1", self.type_vocab_size));
        }
        Ok(())
    }

    fn pad_token(&self) -> Result<i64, String> {
        self.pad_token_id
            .ok_or_else(|| "pad_token_id is null: XLM-RoBERTa's position ids need it (XLM-R uses 1)".to_string())
    }

    /// What BERT's encoder blocks read; `dropout` overrides both dropout rates.
    fn encoder_config(&self, dropout: Option<f64>) -> EncoderConfig {
        EncoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: self.hidden_act,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            layer_norm_eps: self.layer_norm_eps,
            hidden_dropout: dropout.unwrap_or(self.hidden_dropout_prob),
            attention_dropout: dropout.unwrap_or(self.attention_probs_dropout_prob),
        }
    }
}

/// `create_position_ids_from_input_ids`: real tokens count from `padding_idx + 1`, padding tokens
/// get `padding_idx`. Decided by the ids, not the attention mask.
fn position_ids(input_ids: &Tensor, padding_idx: i64) -> Tensor {
    let real = input_ids.ne(padding_idx).to_kind(Kind::Int64);
    real.cumsum(1, Kind::Int64) * &real + padding_idx
}

/// `XLMRobertaLMHead`: dense + exact GELU (whatever `hidden_act` says) + LayerNorm, then the
/// decoder onto the vocabulary with bias `lm_head.bias`.
#[derive(Debug)]
struct LmHead {
    dense: Linear,
    norm: LayerNorm,
    /// `Some` only when `tie_word_embeddings` is false.
    decoder: Option<Tensor>,
    bias: Tensor,
}

impl LmHead {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config) -> Result<Self, ModelError> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let dense = Linear::load(&(p / "dense"), l, h, h, true)?;
        let norm = LayerNorm::load(&(p / "layer_norm"), l, h, cfg.layer_norm_eps, true)?;
        // `lm_head.decoder.bias` is tied to `lm_head.bias`; older checkpoints store only the former.
        let decoder_bias = (p / "decoder").path("bias");
        let bias = match l.w.take_optional(&p.path("bias")) {
            Some(b) => {
                let _ = l.w.take_optional(&decoder_bias);
                b
            }
            None => l.w.take(&decoder_bias, &[v])?,
        };
        if bias.size() != [v] {
            return Err(ModelError::file(
                l.w.file(),
                format!("tensor '{}' has shape {:?} but config.json implies [{v}]", p.path("bias"), bias.size()),
            ));
        }
        let bias = p.var_copy("bias", &bias);
        l.params.push((p.path("bias"), bias.shallow_clone()));
        let decoder_name = (p / "decoder").path("weight");
        let decoder = if cfg.tie_word_embeddings {
            // Tied: transformers points the decoder at the word embeddings whatever is stored.
            let _ = l.w.take_optional(&decoder_name);
            None
        } else if l.w.contains(&decoder_name) {
            Some(l.take(&(p / "decoder"), "weight", &[v, h])?)
        } else {
            return Err(ModelError::file(
                l.w.file(),
                format!("config.json sets tie_word_embeddings=false but the checkpoint has no {decoder_name}"),
            ));
        };
        Ok(Self { dense, norm, decoder, bias })
    }

    fn transform(&self, hidden: &Tensor) -> Tensor {
        self.norm.forward(&self.dense.forward(hidden).gelu("none"))
    }
}

/// `XLMRobertaForMaskedLM`: the encoder stack (no pooler) plus the LM head.
#[derive(Debug)]
pub struct XlmRobertaForMaskedLm {
    embeddings: Embeddings,
    encoder: Encoder,
    /// The tokenizer's pad id: position ids count from it, and its rows get no gradient.
    padding_idx: i64,
    head: LmHead,
    config: Config,
    config_json: serde_json::Value,
    params: Vec<(String, Tensor)>,
    /// State-dict names of the tied decoder copies, written by [`MaskedLm::state_dict`].
    decoder_weight_name: String,
    decoder_bias_name: String,
}

impl XlmRobertaForMaskedLm {
    /// Builds the model in `args.vs` from the checkpoint's tensors; `args.dropout` replaces the
    /// config's hidden and attention dropout.
    pub fn load(args: LoadArgs<'_>) -> Result<Self, ModelError> {
        let cfg: Config = parse_config(&args)?;
        cfg.validate().map_err(|m| ModelError::file(args.config_path, m))?;
        let pad = cfg.pad_token().map_err(|m| ModelError::file(args.config_path, m))?;
        let enc = cfg.encoder_config(args.dropout);
        let vs = &args.vs;
        let mut l = Loader::new(args.weights);
        let roberta = vs / "roberta";
        let embeddings = Embeddings::load(&(&roberta / "embeddings"), &mut l, &enc, pad)?;
        let encoder = Encoder::load(&(&roberta / "encoder"), &mut l, &enc)?;
        let hp = vs / "lm_head";
        let head = LmHead::load(&hp, &mut l, &cfg)?;
        Ok(Self {
            embeddings,
            encoder,
            padding_idx: pad,
            head,
            config: cfg,
            config_json: args.config.clone(),
            params: l.params,
            decoder_weight_name: (&hp / "decoder").path("weight"),
            decoder_bias_name: (&hp / "decoder").path("bias"),
        })
    }
}

/// Builds the model from the checkpoint's tensors.
pub fn load(args: LoadArgs<'_>) -> Result<Box<dyn MaskedLm>, ModelError> {
    Ok(Box::new(XlmRobertaForMaskedLm::load(args)?))
}

impl MaskedLm for XlmRobertaForMaskedLm {
    fn architecture(&self) -> Architecture {
        Architecture::XlmRoberta
    }

    fn encode(&self, batch: &Batch, train: bool) -> Tensor {
        let positions = position_ids(&batch.input_ids, self.padding_idx);
        // XLM-R's tokenizer passes no token_type_ids (model_input_names), so transformers uses its
        // all-zero buffer: row 0 of the table for every token.
        let xs = self.embeddings.forward(&batch.input_ids, &positions, None, train);
        self.encoder.forward(xs, &batch.attention_mask, train)
    }

    fn head_transform(&self, hidden: &Tensor, _train: bool) -> Tensor {
        self.head.transform(hidden)
    }

    fn decoder_weight(&self) -> &Tensor {
        self.head.decoder.as_ref().unwrap_or(&self.embeddings.word)
    }

    fn decoder_bias(&self) -> &Tensor {
        &self.head.bias
    }

    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn pad_token_id(&self) -> i64 {
        self.padding_idx
    }

    fn max_positions(&self) -> Option<usize> {
        // Positions run from padding_idx + 1; validate() keeps this positive.
        Some((self.config.max_position_embeddings - self.padding_idx - 1) as usize)
    }

    /// The loaded parameters plus the tied copies `lm_head.decoder.weight` (when tied) and
    /// `lm_head.decoder.bias`, so any transformers version finds every key it may expect.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self.params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        if self.head.decoder.is_none() {
            out.push((self.decoder_weight_name.clone(), self.embeddings.word.shallow_clone()));
        }
        out.push((self.decoder_bias_name.clone(), self.head.bias.shallow_clone()));
        out
    }

    fn config_json(&self) -> serde_json::Value {
        self.config_json.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positions as `create_position_ids_from_input_ids` gives them for a right-padded batch.
    #[test]
    fn position_ids_count_from_the_padding_index() {
        let ids = Tensor::from_slice(&[0i64, 5, 6, 2, 1, 1, 0, 7, 2, 1, 1, 1]).view([2, 6]);
        let got: Vec<i64> = Vec::try_from(position_ids(&ids, 1).view([-1])).unwrap();
        assert_eq!(got, vec![2, 3, 4, 5, 1, 1, 2, 3, 4, 1, 1, 1]);
    }

    #[test]
    fn unknown_activation_is_a_config_error_naming_it() {
        let err = serde_json::from_value::<Config>(serde_json::json!({"hidden_act": "gelu_magic"})).unwrap_err();
        assert!(err.to_string().contains("gelu_magic"), "{err}");
    }
}
