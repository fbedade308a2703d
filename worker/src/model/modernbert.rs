//! ModernBERT with its masked-language-model head (`ModernBertForMaskedLM`, also mmBERT: the same
//! code with a larger vocabulary), in libtorch, reading top to bottom as transformers 5.24's
//! `modeling_modernbert.py` with eager/SDPA attention (padded batches, no unpadding): config,
//! embeddings + norm, rotary position embeddings, pre-norm attention with global and sliding-window
//! layers, the gated MLP, the final norm, the prediction head, and the model.
//!
//! Variable names in the [`tch::nn::VarStore`] are exactly the checkpoint's (`model.layers.0.attn.Wqkv.weight`,
//! `head.dense.weight`, `decoder.bias`). The decoder weight is tied to `model.embeddings.tok_embeddings.weight`.

use std::cell::OnceCell;

use serde::Deserialize;
use tch::nn::Path;
use tch::{Kind, Tensor};

use super::dropout::dropout;
use super::encoder::layers::{attention, Activation, LayerNorm, Linear, Loader};
use super::encoder::{parse_config, Architecture, LoadArgs, MaskedLm};
use super::tokenize::Batch;
use super::ModelError;

/// Which attention a layer does (`layer_types` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    /// Every token attends to every real token; RoPE with the global theta.
    FullAttention,
    /// Tokens attend to real tokens at distance ≤ `local_attention / 2`; RoPE with the local theta.
    SlidingAttention,
}

/// RoPE variants; only the plain one is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeType {
    Default,
}

/// One entry of `rope_parameters`.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    /// Parsed only to refuse the scaled variants (`linear`, `dynamic`, `yarn`, …).
    #[allow(dead_code)]
    #[serde(default = "default_rope_type", alias = "type")]
    pub rope_type: RopeType,
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

/// `rope_parameters` as transformers 5 saves it, per layer type.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeByLayerType {
    #[serde(default)]
    pub full_attention: Option<RopeParameters>,
    #[serde(default)]
    pub sliding_attention: Option<RopeParameters>,
}

/// `config.json` of a ModernBERT checkpoint with `ModernBertConfig`'s defaults for absent keys. Both
/// layouts are read: transformers 5's `layer_types` + `rope_parameters` and the Hub's older
/// `global_attn_every_n_layers` + `global_rope_theta` / `local_rope_theta` (the new keys win, as
/// in `ModernBertConfig`). [`MaskedLm::config_json`] returns the file's own value.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "default_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "default_act")]
    pub hidden_activation: Activation,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub layer_types: Option<Vec<LayerType>>,
    #[serde(default = "default_global_every")]
    pub global_attn_every_n_layers: i64,
    #[serde(default)]
    pub rope_parameters: Option<RopeByLayerType>,
    #[serde(default = "default_global_theta")]
    pub global_rope_theta: f64,
    #[serde(default = "default_local_theta")]
    pub local_rope_theta: f64,
    /// Legacy RoPE scaling, merged into both layer types' parameters; only the plain RoPE type parses.
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// Total window of the sliding layers: a token sees `local_attention / 2` tokens either side.
    #[serde(default = "default_local_attention")]
    pub local_attention: i64,
    #[serde(default)]
    pub embedding_dropout: f64,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub mlp_dropout: f64,
    #[serde(default = "default_true")]
    pub decoder_bias: bool,
    #[serde(default)]
    pub classifier_bias: bool,
    #[serde(default = "default_act")]
    pub classifier_activation: Activation,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Not a `ModernBertConfig` field, but RoPE reads it when a config sets it.
    #[serde(default)]
    pub head_dim: Option<i64>,
}

fn default_rope_type() -> RopeType {
    RopeType::Default
}
fn default_vocab_size() -> i64 {
    50368
}
fn default_hidden_size() -> i64 {
    768
}
fn default_intermediate_size() -> i64 {
    1152
}
fn default_layers() -> i64 {
    22
}
fn default_heads() -> i64 {
    12
}
fn default_act() -> Activation {
    Activation::Gelu
}
fn default_max_positions() -> i64 {
    8192
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_pad_token_id() -> Option<i64> {
    Some(50283)
}
fn default_global_every() -> i64 {
    3
}
fn default_global_theta() -> f64 {
    160_000.0
}
fn default_local_theta() -> f64 {
    10_000.0
}
fn default_local_attention() -> i64 {
    128
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
        if let Some(d) = self.head_dim {
            if d != self.head_dim() {
                return Err(format!(
                    "head_dim {d} differs from hidden_size / num_attention_heads = {}; ModernBERT's attention needs them equal",
                    self.head_dim()
                ));
            }
        }
        if self.head_dim() % 2 != 0 {
            return Err(format!("the head width {} must be even for rotary embeddings", self.head_dim()));
        }
        let pad = self.pad_token()?;
        if pad < 0 || pad >= self.vocab_size {
            return Err(format!("pad_token_id {pad} is not a token id below vocab_size {}", self.vocab_size));
        }
        if self.layer_types.is_none() && self.global_attn_every_n_layers <= 0 {
            return Err(format!("global_attn_every_n_layers {} must be positive", self.global_attn_every_n_layers));
        }
        let types = self.layer_types();
        if types.len() != self.num_hidden_layers as usize {
            return Err(format!(
                "layer_types has {} entries but num_hidden_layers is {}",
                types.len(),
                self.num_hidden_layers
            ));
        }
        if types.contains(&LayerType::SlidingAttention) && self.local_attention < 0 {
            return Err(format!("local_attention {} must not be negative", self.local_attention));
        }
        Ok(())
    }

    fn pad_token(&self) -> Result<i64, String> {
        self.pad_token_id.ok_or_else(|| "pad_token_id is null; set it to the tokenizer's [PAD] id".to_string())
    }

    fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// `layer_types`, or what `ModernBertConfig` derives from `global_attn_every_n_layers`: layer i
    /// is global when i is a multiple of it.
    pub fn layer_types(&self) -> Vec<LayerType> {
        match &self.layer_types {
            Some(t) => t.clone(),
            None => (0..self.num_hidden_layers)
                .map(|i| {
                    if i % self.global_attn_every_n_layers != 0 {
                        LayerType::SlidingAttention
                    } else {
                        LayerType::FullAttention
                    }
                })
                .collect(),
        }
    }

    /// The RoPE base of a layer type: `rope_scaling.rope_theta` (merged over both types), else
    /// `rope_parameters[type].rope_theta`, else the legacy key.
    pub fn rope_theta(&self, t: LayerType) -> f64 {
        if let Some(theta) = self.rope_scaling.as_ref().and_then(|r| r.rope_theta) {
            return theta;
        }
        let rp = self.rope_parameters.as_ref();
        match t {
            LayerType::FullAttention => {
                rp.and_then(|r| r.full_attention.as_ref()).and_then(|p| p.rope_theta).unwrap_or(self.global_rope_theta)
            }
            LayerType::SlidingAttention => {
                rp.and_then(|r| r.sliding_attention.as_ref()).and_then(|p| p.rope_theta).unwrap_or(self.local_rope_theta)
            }
        }
    }
}

/// `nn.LayerNorm(hidden, eps=norm_eps, bias=norm_bias)`.
fn layer_norm(p: &Path, l: &mut Loader<'_>, cfg: &Config) -> Result<LayerNorm, ModelError> {
    LayerNorm::load(p, l, cfg.hidden_size, cfg.norm_eps, cfg.norm_bias)
}

/// Token embeddings, norm, dropout (no position table: positions enter through RoPE).
#[derive(Debug)]
struct Embeddings {
    tok: Tensor,
    norm: LayerNorm,
    padding_idx: i64,
    dropout: f64,
}

impl Embeddings {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, padding_idx: i64, dropout: f64) -> Result<Self, ModelError> {
        Ok(Self {
            tok: l.take(&(p / "tok_embeddings"), "weight", &[cfg.vocab_size, cfg.hidden_size])?,
            norm: layer_norm(&(p / "norm"), l, cfg)?,
            padding_idx,
            dropout,
        })
    }

    fn forward(&self, input_ids: &Tensor, train: bool) -> Tensor {
        let xs = Tensor::embedding(&self.tok, input_ids, self.padding_idx, false, false);
        dropout(&self.norm.forward(&xs), self.dropout, train)
    }
}

/// `ModernBertRotaryEmbedding` for one layer type: `inv_freq = 1 / θ^(2i/d)` in float32.
#[derive(Debug)]
struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    fn new(theta: f64, head_dim: i64) -> Self {
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, tch::Device::Cpu)) / head_dim as f64;
        Self { inv_freq: Tensor::pow_scalar(theta, &exponents).reciprocal() }
    }

    /// `(cos, sin)`, each [1, 1, L, head_dim], for positions 0..L (transformers' default position ids).
    fn cos_sin(&self, seq_len: i64, device: tch::Device) -> (Tensor, Tensor) {
        let pos = Tensor::arange(seq_len, (Kind::Float, device));
        let freqs = pos.unsqueeze(-1) * self.inv_freq.to_device(device).unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(0).unsqueeze(0);
        (emb.cos(), emb.sin())
    }
}

/// `rotate_half`: [x1, x2] → [−x2, x1] over the last dimension.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = *x.size().last().expect("rotary input has a last dimension") / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

/// `apply_rotary_pos_emb` on one of q, k ([B, heads, L, d]), in float32 as transformers does.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let xf = x.to_kind(Kind::Float);
    (&xf * cos + rotate_half(&xf) * sin).to_kind(x.kind())
}

/// Self-attention: fused `Wqkv`, RoPE on q and k, scaled dot-product attention under the layer's
/// mask, output projection `Wo`.
#[derive(Debug)]
struct Attention {
    wqkv: Linear,
    wo: Linear,
    heads: i64,
    head_dim: i64,
    dropout: f64,
}

impl Attention {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, dropout: f64) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        Ok(Self {
            wqkv: Linear::load(&(p / "Wqkv"), l, h, 3 * h, cfg.attention_bias)?,
            wo: Linear::load(&(p / "Wo"), l, h, h, cfg.attention_bias)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            dropout,
        })
    }

    /// `mask` is boolean, broadcastable to [B, heads, L, L], true where a query may attend to a key;
    /// every query row has at least one such key.
    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (b, l, h) = xs.size3().expect("hidden states are [batch, seq, hidden]");
        // [B, L, 3, heads, d] → three [B, heads, L, d].
        let qkv = self.wqkv.forward(xs).view([b, l, 3, self.heads, self.head_dim]);
        let part = |i: i64| qkv.select(2, i).transpose(1, 2);
        let q = apply_rotary(&part(0), cos, sin);
        let k = apply_rotary(&part(1), cos, sin);
        let v = part(2);
        let ctx = attention(&q, &k, &v, mask, if train { self.dropout } else { 0.0 });
        let ctx = ctx.transpose(1, 2).contiguous().view([b, l, h]);
        dropout(&self.wo.forward(&ctx), self.dropout, train)
    }
}

/// `ModernBertMLP`: `Wi` gives input and gate halves; `Wo(drop(act(input) · gate))`.
#[derive(Debug)]
struct Mlp {
    wi: Linear,
    wo: Linear,
    act: Activation,
    dropout: f64,
}

impl Mlp {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, dropout: f64) -> Result<Self, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            wi: Linear::load(&(p / "Wi"), l, h, 2 * i, cfg.mlp_bias)?,
            wo: Linear::load(&(p / "Wo"), l, i, h, cfg.mlp_bias)?,
            act: cfg.hidden_activation,
            dropout,
        })
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let halves = self.wi.forward(xs).chunk(2, -1);
        let gated = self.act.apply(&halves[0]) * &halves[1];
        self.wo.forward(&dropout(&gated, self.dropout, train))
    }
}

/// One pre-norm block: `x + attn(attn_norm(x))`, then `x + mlp(mlp_norm(x))`. Layer 0 has no
/// `attn_norm` (the embeddings' norm precedes it).
#[derive(Debug)]
struct Layer {
    attn_norm: Option<LayerNorm>,
    attn: Attention,
    mlp_norm: LayerNorm,
    mlp: Mlp,
    kind: LayerType,
}

impl Layer {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, idx: i64, kind: LayerType, drops: &Dropouts) -> Result<Self, ModelError> {
        Ok(Self {
            attn_norm: if idx == 0 { None } else { Some(layer_norm(&(p / "attn_norm"), l, cfg)?) },
            attn: Attention::load(&(p / "attn"), l, cfg, drops.attention)?,
            mlp_norm: layer_norm(&(p / "mlp_norm"), l, cfg)?,
            mlp: Mlp::load(&(p / "mlp"), l, cfg, drops.mlp)?,
            kind,
        })
    }

    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let normed = match &self.attn_norm {
            Some(n) => n.forward(xs),
            None => xs.shallow_clone(),
        };
        let xs = xs + self.attn.forward(&normed, cos, sin, mask, train);
        let mlp = self.mlp.forward(&self.mlp_norm.forward(&xs), train);
        xs + mlp
    }
}

/// The config's dropout probabilities after the training config's override.
struct Dropouts {
    embedding: f64,
    attention: f64,
    mlp: f64,
}

/// `ModernBertPredictionHead` (dense + activation + norm) and the decoder bias.
#[derive(Debug)]
struct Head {
    dense: Linear,
    norm: LayerNorm,
    act: Activation,
}

impl Head {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        Ok(Self {
            dense: Linear::load(&(p / "dense"), l, h, h, cfg.classifier_bias)?,
            norm: layer_norm(&(p / "norm"), l, cfg)?,
            act: cfg.classifier_activation,
        })
    }

    fn forward(&self, hidden: &Tensor) -> Tensor {
        self.norm.forward(&self.act.apply(&self.dense.forward(hidden)))
    }
}

/// `ModernBertForMaskedLM`: embeddings, layers, final norm, head, decoder.
#[derive(Debug)]
pub struct ModernBertForMaskedLm {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    rotary_full: Rotary,
    rotary_sliding: Rotary,
    /// A token attends to keys at distance ≤ this in sliding layers.
    half_window: i64,
    head: Head,
    /// `Some` only when `tie_word_embeddings` is false.
    decoder: Option<Tensor>,
    decoder_bias: Option<Tensor>,
    /// The zero decoder bias of a `decoder_bias: false` config, made on the device of the first call
    /// (after the model has been moved), since it is no parameter that the VarStore would move.
    zero_bias: OnceCell<Tensor>,
    config: Config,
    config_json: serde_json::Value,
    params: Vec<(String, Tensor)>,
    decoder_weight_name: String,
}

impl ModernBertForMaskedLm {
    /// Builds the model in `args.vs` from the checkpoint's tensors. `args.dropout` replaces the
    /// config's `embedding_dropout`, `attention_dropout` (attention probabilities and output) and
    /// `mlp_dropout`.
    pub fn load(args: LoadArgs<'_>) -> Result<Self, ModelError> {
        let cfg: Config = parse_config(&args)?;
        cfg.validate().map_err(|m| ModelError::file(args.config_path, m))?;
        let pad = cfg.pad_token().map_err(|m| ModelError::file(args.config_path, m))?;
        let drops = Dropouts {
            embedding: args.dropout.unwrap_or(cfg.embedding_dropout),
            attention: args.dropout.unwrap_or(cfg.attention_dropout),
            mlp: args.dropout.unwrap_or(cfg.mlp_dropout),
        };
        let vs = &args.vs;
        let mut l = Loader::new(args.weights);
        let mp = vs / "model";
        let embeddings = Embeddings::load(&(&mp / "embeddings"), &mut l, &cfg, pad, drops.embedding)?;
        let lp = &mp / "layers";
        let layers = cfg
            .layer_types()
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Layer::load(&(&lp / i), &mut l, &cfg, i as i64, kind, &drops))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = layer_norm(&(&mp / "final_norm"), &mut l, &cfg)?;
        let head = Head::load(&(vs / "head"), &mut l, &cfg)?;
        let dp = vs / "decoder";
        let decoder_weight_name = dp.path("weight");
        let decoder = if cfg.tie_word_embeddings {
            // Tied: transformers points the decoder at the token embeddings whatever is stored.
            let _ = l.w.take_optional(&decoder_weight_name);
            None
        } else if l.w.contains(&decoder_weight_name) {
            Some(l.take(&dp, "weight", &[cfg.vocab_size, cfg.hidden_size])?)
        } else {
            return Err(ModelError::file(
                l.w.file(),
                format!("config.json sets tie_word_embeddings=false but the checkpoint has no {decoder_weight_name}"),
            ));
        };
        let decoder_bias = if cfg.decoder_bias { Some(l.take(&dp, "bias", &[cfg.vocab_size])?) } else { None };
        let head_dim = cfg.head_dim();
        Ok(Self {
            embeddings,
            layers,
            final_norm,
            rotary_full: Rotary::new(cfg.rope_theta(LayerType::FullAttention), head_dim),
            rotary_sliding: Rotary::new(cfg.rope_theta(LayerType::SlidingAttention), head_dim),
            half_window: cfg.local_attention / 2,
            head,
            decoder,
            decoder_bias,
            zero_bias: OnceCell::new(),
            config: cfg,
            config_json: args.config.clone(),
            params: l.params,
            decoder_weight_name,
        })
    }
}

/// Builds the model from the checkpoint's tensors.
pub fn load(args: LoadArgs<'_>) -> Result<Box<dyn MaskedLm>, ModelError> {
    Ok(Box::new(ModernBertForMaskedLm::load(args)?))
}

impl MaskedLm for ModernBertForMaskedLm {
    fn architecture(&self) -> Architecture {
        Architecture::ModernBert
    }

    fn encode(&self, batch: &Batch, train: bool) -> Tensor {
        let ids = &batch.input_ids;
        let (b, l) = ids.size2().expect("input ids are [batch, seq]");
        let device = ids.device();
        let keys = batch.attention_mask.to_kind(Kind::Bool).view([b, 1, 1, l]);
        // Sliding layers: |i − j| ≤ local_attention / 2 and j real. A padded query far from every
        // real token would see no key at all (transformers' eager mask then gives it uniform
        // weights, SDPA NaNs that would leak into later layers through 0 · NaN); letting it see
        // itself changes only padded positions, which no real position ever attends to.
        let sliding = self.layers.iter().any(|x| x.kind == LayerType::SlidingAttention).then(|| {
            let pos = Tensor::arange(l, (Kind::Int64, device));
            let dist = (pos.unsqueeze(1) - pos.unsqueeze(0)).abs();
            let band = dist.le(self.half_window).view([1, 1, l, l]);
            let own = dist.eq(0).view([1, 1, l, l]);
            keys.logical_and(&band).logical_or(&own)
        });
        let (cos_f, sin_f) = self.rotary_full.cos_sin(l, device);
        let (cos_s, sin_s) = self.rotary_sliding.cos_sin(l, device);
        let mut xs = self.embeddings.forward(ids, train);
        for layer in &self.layers {
            xs = match layer.kind {
                LayerType::FullAttention => layer.forward(&xs, &cos_f, &sin_f, &keys, train),
                LayerType::SlidingAttention => {
                    let mask = sliding.as_ref().expect("built when a layer is sliding");
                    layer.forward(&xs, &cos_s, &sin_s, mask, train)
                }
            };
        }
        self.final_norm.forward(&xs)
    }

    fn head_transform(&self, hidden: &Tensor, _train: bool) -> Tensor {
        self.head.forward(hidden)
    }

    fn decoder_weight(&self) -> &Tensor {
        self.decoder.as_ref().unwrap_or(&self.embeddings.tok)
    }

    fn decoder_bias(&self) -> &Tensor {
        match &self.decoder_bias {
            Some(b) => b,
            None => self.zero_bias.get_or_init(|| {
                Tensor::zeros([self.config.vocab_size], (self.embeddings.tok.kind(), self.embeddings.tok.device()))
            }),
        }
    }

    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn pad_token_id(&self) -> i64 {
        self.embeddings.padding_idx
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings as usize)
    }

    /// The loaded parameters plus the tied copy `decoder.weight` (when tied).
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self.params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        if self.decoder.is_none() {
            out.push((self.decoder_weight_name.clone(), self.embeddings.tok.shallow_clone()));
        }
        out
    }

    fn config_json(&self) -> serde_json::Value {
        self.config_json.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Hub's ModernBERT-base `config.json` keys (the pre-`layer_types` layout): a global layer
    /// every 3, global θ 160 000, local θ 10 000 — what `ModernBertConfig(**that)` derives.
    #[test]
    fn legacy_hub_keys_give_layer_types_and_thetas() {
        let cfg: Config = serde_json::from_value(serde_json::json!({
            "num_hidden_layers": 7, "global_attn_every_n_layers": 3,
            "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "local_attention": 128
        }))
        .unwrap();
        use LayerType::{FullAttention as F, SlidingAttention as S};
        assert_eq!(cfg.layer_types(), vec![F, S, S, F, S, S, F]);
        assert_eq!(cfg.rope_theta(F), 160000.0);
        assert_eq!(cfg.rope_theta(S), 10000.0);
        cfg.validate().unwrap();
    }

    /// transformers 5's layout wins over the legacy keys, as `setdefault` does in the config class.
    #[test]
    fn rope_parameters_override_legacy_thetas() {
        let cfg: Config = serde_json::from_value(serde_json::json!({
            "global_rope_theta": 1.0, "local_rope_theta": 2.0,
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 3.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 4.0}}
        }))
        .unwrap();
        assert_eq!(cfg.rope_theta(LayerType::FullAttention), 3.0);
        assert_eq!(cfg.rope_theta(LayerType::SlidingAttention), 4.0);
    }

    #[test]
    fn scaled_rope_is_a_config_error() {
        let err = serde_json::from_value::<Config>(serde_json::json!({
            "rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 3.0}}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
    }
}
