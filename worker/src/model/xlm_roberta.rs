//! XLM-RoBERTa with its masked-language-model head (`XLMRobertaForMaskedLM`, also
//! `RobertaForMaskedLM`: the same code), in libtorch, reading top to bottom as transformers 5.24's
//! `modeling_xlm_roberta.py`: config, embeddings (positions counted from the padding id), post-LN
//! self-attention and feed-forward, the LM head, and the model that strings them together.
//!
//! Variable names in the [`tch::nn::VarStore`] are exactly the checkpoint's (`roberta.encoder.layer.0.…`,
//! `lm_head.…`), so loading and saving are a copy by name. The decoder is tied to the word
//! embeddings (`lm_head.decoder.weight` may be stored or not) and its bias is `lm_head.bias`.

use serde::Deserialize;
use tch::nn::Path;
use tch::{Kind, Tensor};

use super::dropout::{dropout, keep_mask};
use super::encoder::{parse_config, Architecture, LoadArgs, MaskedLm};
use super::tokenize::Batch;
use super::weights::Weights;
use super::ModelError;

/// The activations `ACT2FN` maps these `hidden_act` names to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU.
    Gelu,
    /// The tanh approximation (transformers' `NewGELUActivation`).
    GeluNew,
    /// The tanh approximation, computed by torch.
    GeluPytorchTanh,
    Relu,
    #[serde(alias = "swish")]
    Silu,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => xs.gelu("none"),
            Activation::GeluNew | Activation::GeluPytorchTanh => xs.gelu("tanh"),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
        }
    }
}

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

    fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// Creates the checkpoint's tensors as variables under their state-dict names and remembers them
/// for [`MaskedLm::state_dict`].
struct Loader<'a> {
    w: &'a mut Weights,
    params: Vec<(String, Tensor)>,
}

impl Loader<'_> {
    fn take(&mut self, p: &Path, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let full = p.path(name);
        let t = p.var_copy(name, &self.w.take(&full, shape)?);
        self.params.push((full, t.shallow_clone()));
        Ok(t)
    }
}

/// A dense layer: `weight` [out, in], `bias` [out].
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(p: &Path, l: &mut Loader<'_>, in_dim: i64, out_dim: i64) -> Result<Self, ModelError> {
        Ok(Self { weight: l.take(p, "weight", &[out_dim, in_dim])?, bias: l.take(p, "bias", &[out_dim])? })
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, Some(&self.bias))
    }
}

#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(p: &Path, l: &mut Loader<'_>, dim: i64, eps: f64) -> Result<Self, ModelError> {
        Ok(Self { weight: l.take(p, "weight", &[dim])?, bias: l.take(p, "bias", &[dim])?, eps })
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let dim = *xs.size().last().expect("layer norm input has a last dimension");
        xs.layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Word + position + token-type embeddings, LayerNorm, dropout. Positions count real tokens from
/// `padding_idx + 1`; padding tokens sit at position `padding_idx` (fairseq's `make_positions`).
#[derive(Debug)]
struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    padding_idx: i64,
    dropout: f64,
}

impl Embeddings {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, padding_idx: i64, dropout: f64) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        Ok(Self {
            word: l.take(&(p / "word_embeddings"), "weight", &[cfg.vocab_size, h])?,
            position: l.take(&(p / "position_embeddings"), "weight", &[cfg.max_position_embeddings, h])?,
            token_type: l.take(&(p / "token_type_embeddings"), "weight", &[cfg.type_vocab_size, h])?,
            norm: LayerNorm::load(&(p / "LayerNorm"), l, h, cfg.layer_norm_eps)?,
            padding_idx,
            dropout,
        })
    }

    fn forward(&self, input_ids: &Tensor, train: bool) -> Tensor {
        let positions = position_ids(input_ids, self.padding_idx);
        // XLM-R's tokenizer passes no token_type_ids (model_input_names), so transformers uses its
        // all-zero buffer: row 0 of the table for every token.
        let xs = Tensor::embedding(&self.word, input_ids, self.padding_idx, false, false)
            + Tensor::embedding(&self.position, &positions, self.padding_idx, false, false)
            + self.token_type.get(0);
        dropout(&self.norm.forward(&xs), self.dropout, train)
    }
}

/// `create_position_ids_from_input_ids`: real tokens count from `padding_idx + 1`, padding tokens
/// get `padding_idx`. Decided by the ids, not the attention mask.
fn position_ids(input_ids: &Tensor, padding_idx: i64) -> Tensor {
    let real = input_ids.ne(padding_idx).to_kind(Kind::Int64);
    real.cumsum(1, Kind::Int64) * &real + padding_idx
}

/// Multi-head self-attention plus its output projection and residual LayerNorm (post-LN).
#[derive(Debug)]
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    norm: LayerNorm,
    heads: i64,
    head_dim: i64,
    attn_dropout: f64,
    dropout: f64,
}

impl Attention {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, dropout: f64, attn_dropout: f64) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let (sp, op) = (p / "self", p / "output");
        Ok(Self {
            query: Linear::load(&(&sp / "query"), l, h, h)?,
            key: Linear::load(&(&sp / "key"), l, h, h)?,
            value: Linear::load(&(&sp / "value"), l, h, h)?,
            output: Linear::load(&(&op / "dense"), l, h, h)?,
            norm: LayerNorm::load(&(&op / "LayerNorm"), l, h, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            attn_dropout,
            dropout,
        })
    }

    /// `mask` is boolean [B, 1, 1, L], true where a key may be attended to.
    fn forward(&self, xs: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (b, l, h) = xs.size3().expect("hidden states are [batch, seq, hidden]");
        let split = |t: Tensor| t.view([b, l, self.heads, self.head_dim]).transpose(1, 2);
        let q = split(self.query.forward(xs));
        let k = split(self.key.forward(xs));
        let v = split(self.value.forward(xs));
        let p = if train { self.attn_dropout } else { 0.0 };
        let ctx = if p > 0.0 && xs.device() == tch::Device::Cpu {
            attention_with_dropout(&q, &k, &v, mask, p)
        } else {
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), p, false, None, false)
        };
        let ctx = ctx.transpose(1, 2).contiguous().view([b, l, h]);
        let out = dropout(&self.output.forward(&ctx), self.dropout, train);
        self.norm.forward(&(out + xs))
    }
}

/// Scaled dot-product attention with dropout on the probabilities, for training on the CPU, with
/// [`keep_mask`]'s fast mask generator (SDPA's CPU math path does the same operations with
/// libtorch's slow one). `mask` is boolean, true where a key may be attended to; every query row
/// has at least one such key.
fn attention_with_dropout(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, p: f64) -> Tensor {
    let head_dim = *q.size().last().expect("q is [batch, heads, seq, head_dim]");
    let scores = (q * (1.0 / (head_dim as f64).sqrt())).matmul(&k.transpose(-2, -1));
    let probs = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY).softmax(-1, scores.kind());
    (&probs * keep_mask(&probs.size(), 1.0 - p)).matmul(v) * (1.0 / (1.0 - p))
}

/// One transformer block: attention, then the feed-forward with residual LayerNorm.
#[derive(Debug)]
struct Layer {
    attention: Attention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    act: Activation,
    dropout: f64,
}

impl Layer {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, dropout: f64, attn_dropout: f64) -> Result<Self, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: Attention::load(&(p / "attention"), l, cfg, dropout, attn_dropout)?,
            intermediate: Linear::load(&(p / "intermediate" / "dense"), l, h, i)?,
            output: Linear::load(&(p / "output" / "dense"), l, i, h)?,
            norm: LayerNorm::load(&(p / "output" / "LayerNorm"), l, h, cfg.layer_norm_eps)?,
            act: cfg.hidden_act,
            dropout,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let attn = self.attention.forward(xs, mask, train);
        let inter = self.act.apply(&self.intermediate.forward(&attn));
        let out = dropout(&self.output.forward(&inter), self.dropout, train);
        self.norm.forward(&(out + attn))
    }
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
        let dense = Linear::load(&(p / "dense"), l, h, h)?;
        let norm = LayerNorm::load(&(p / "layer_norm"), l, h, cfg.layer_norm_eps)?;
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
    layers: Vec<Layer>,
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
        let hd = args.dropout.unwrap_or(cfg.hidden_dropout_prob);
        let ad = args.dropout.unwrap_or(cfg.attention_probs_dropout_prob);
        let vs = &args.vs;
        let mut l = Loader { w: args.weights, params: Vec::new() };
        let roberta = vs / "roberta";
        let embeddings = Embeddings::load(&(&roberta / "embeddings"), &mut l, &cfg, pad, hd)?;
        let enc = &roberta / "encoder" / "layer";
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(&(&enc / i), &mut l, &cfg, hd, ad))
            .collect::<Result<Vec<_>, _>>()?;
        let hp = vs / "lm_head";
        let head = LmHead::load(&hp, &mut l, &cfg)?;
        Ok(Self {
            embeddings,
            layers,
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
        let mask = batch.attention_mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1);
        let mut xs = self.embeddings.forward(&batch.input_ids, train);
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask, train);
        }
        xs
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
        self.embeddings.padding_idx
    }

    fn max_positions(&self) -> Option<usize> {
        // Positions run from padding_idx + 1; validate() keeps this positive.
        Some((self.config.max_position_embeddings - self.embeddings.padding_idx - 1) as usize)
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
