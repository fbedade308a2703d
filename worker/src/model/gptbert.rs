//! NorBERT4 / GPT-BERT (`GptBertForMaskedLM`, Hugging Face remote code) in libtorch, reading top to
//! bottom: config, the `(scale + 1)` linear layers, embedding, rotary positions, windowed
//! self-attention, GeGLU feed-forward, the two layer variants, the MLM head `LMClassifier`, and the
//! model that strings them together.
//!
//! Reference: ltgoslo/NorBERT `norbert4/huggingface_prototype/modeling_gptbert.py`, the eager
//! (non-flash-attention) path, in two versions (`../shared/reference/remote-code/gptbert-v1/` and
//! `gptbert-v2/`, see that folder's README). The layer variant is read off the checkpoint:
//! v1 (the released ltg/norbert4 models) has `encoder.layers.N.lambdas` [6] and a value residual
//! from layer 0 (`attention.lambdas`); v2 has `lambdas_v/qk/mlp/out`, normalised by their mean
//! absolute value, and no value residual.
//!
//! Guarantees: [`MaskedLm::encode`] is the reference's `get_contextualized_embeddings` output and
//! `decoder_weight · head_transform(h) + decoder_bias` its `LMClassifier` output (before the
//! model's own `30·sigmoid(x/7.5)` and one-position shift, which [`HeadLayout`] describes), within
//! fp32 rounding. Variable names in the [`nn::VarStore`] are the checkpoint's state-dict names.
//!
//! Deliberate differences from the reference, none visible in real positions' values: the RoPE
//! tables are computed for the batch's length instead of `max_sequence_length` (the real config
//! has 16 384); masked attention scores are filled with the most negative finite f32 instead of
//! −inf, so a query row with no visible key (only at padded positions) is zero without passing
//! through NaN; the attention softmax runs in fp32 whatever the autocast kind; the CUDA path's
//! blanket bf16 cast is left to the trainer's autocast.

use std::collections::BTreeSet;

use serde::Deserialize;
use tch::nn;
use tch::{Kind, Tensor};

use super::dropout::dropout;
use super::encoder::layers::Loader;
use super::encoder::{parse_config, Architecture, HeadLayout, LoadArgs, MaskedLm, Squash};
use super::tokenize::Batch;
use super::weights::Weights;
use super::ModelError;

/// GPT-BERT's `config.json` (`GptBertConfig` keeps whatever keys it is given; these are the ones the
/// masked-LM code reads, the rest round-trip through [`MaskedLm::config_json`]). Not here:
/// `rope_theta`, which the modeling code ignores (θ is 10 000 for local layers and 160 000 for
/// global ones), and `classifier_dropout`, read only by the classification heads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub num_attention_heads: i64,
    pub query_key_head_size: i64,
    pub value_head_size: i64,
    /// Longest input; the reference's RoPE tables have this many rows and longer input fails there.
    pub max_sequence_length: i64,
    pub local_window_length: i64,
    pub global_window_length: i64,
    /// Layer `i` is global (window `global_window_length`, θ 160 000) when `(i + 1) % ratio == 0`.
    pub local_global_ratio: i64,
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub hidden_dropout: f64,
    #[serde(default = "default_embedding_dropout")]
    pub embedding_dropout: f64,
    /// `.logits[:, 0]` is a one-hot at this id.
    pub bos_token_id: i64,
    pub pad_token_id: i64,
    /// transformers 4's `PretrainedConfig.is_decoder` (false unless set): a causal window.
    #[serde(default)]
    pub is_decoder: bool,
}

/// The released NorBERT4 `config.json` value.
fn default_embedding_dropout() -> f64 {
    0.1
}

impl Config {
    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("query_key_head_size", self.query_key_head_size),
            ("value_head_size", self.value_head_size),
            ("max_sequence_length", self.max_sequence_length),
            ("local_global_ratio", self.local_global_ratio),
        ];
        if let Some((k, v)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("{k} is {v}; it must be positive"));
        }
        if self.query_key_head_size % 2 != 0 {
            return Err(format!("query_key_head_size is {}; rotary embeddings need an even size", self.query_key_head_size));
        }
        for (k, v) in [("local_window_length", self.local_window_length), ("global_window_length", self.global_window_length)] {
            if v < 0 {
                return Err(format!("{k} is {v}; it must be at least 0"));
            }
        }
        for (k, v) in [("bos_token_id", self.bos_token_id), ("pad_token_id", self.pad_token_id)] {
            if v < 0 || v >= self.vocab_size {
                return Err(format!("{k} is {v}, outside the vocabulary 0..{}", self.vocab_size));
            }
        }
        Ok(())
    }

    fn is_global(&self, layer: i64) -> bool {
        (layer + 1) % self.local_global_ratio == 0
    }
}

/// Which layer code the checkpoint was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// `lambdas` [6] per layer plus `attention.lambdas` [1] (value residual from layer 0).
    V1,
    /// `lambdas_v` [2], `lambdas_qk` [2], `lambdas_mlp` [3], `lambdas_out` [4], normalised.
    V2,
}

/// Every checkpoint tensor a variant's code expects, by state-dict name.
fn expected_keys(cfg: &Config, variant: Variant) -> Vec<String> {
    let mut keys: Vec<String> = ["embedding.word_embedding.weight", "embedding.word_scale"].map(String::from).into();
    for i in 0..cfg.num_layers {
        let l = format!("encoder.layers.{i}");
        match variant {
            Variant::V1 => keys.extend([format!("{l}.lambdas"), format!("{l}.attention.lambdas")]),
            Variant::V2 => keys.extend(["v", "qk", "mlp", "out"].map(|s| format!("{l}.lambdas_{s}"))),
        }
        for s in [
            "attention.q_scale",
            "attention.k_scale",
            "attention.qk_proj.weights.0",
            "attention.qk_proj.weights.1",
            "attention.qk_proj.scale",
            "attention.v_proj.weight",
            "attention.v_proj.scale",
            "attention.out_proj.weight",
            "attention.out_proj.scale",
            "mlp.up_proj.weights.0",
            "mlp.up_proj.weights.1",
            "mlp.up_proj.scale",
            "mlp.down_proj.weight",
            "mlp.down_proj.scale",
        ] {
            keys.push(format!("{l}.{s}"));
        }
    }
    keys.extend(
        ["classifier.projection.weight", "classifier.projection.scale", "classifier.emb2vocab.weight", "classifier.emb2vocab.bias", "classifier.emb2vocab.scale"]
            .map(String::from),
    );
    keys
}

/// May be absent: the MLM decoder then falls back to the word embedding (tied, as in training).
const DECODER_WEIGHT: &str = "classifier.emb2vocab.weight";

/// Picks the layer variant from `encoder.layers.0.lambdas` vs `encoder.layers.0.lambdas_v`. A
/// checkpoint that has both or neither is an error naming, for the nearer variant, the first tensor
/// it has that the variant does not expect and the first expected tensor it lacks.
fn detect_variant(cfg: &Config, w: &Weights) -> Result<Variant, ModelError> {
    match (w.contains("encoder.layers.0.lambdas"), w.contains("encoder.layers.0.lambdas_v")) {
        (true, false) => return Ok(Variant::V1),
        (false, true) => return Ok(Variant::V2),
        _ => {}
    }
    let have: BTreeSet<String> = w.leftovers().into_iter().collect();
    let report = |variant: Variant| {
        let want: BTreeSet<String> = expected_keys(cfg, variant).into_iter().collect();
        let unexpected: Vec<&String> = have.difference(&want).collect();
        let missing: Vec<&String> = want.difference(&have).filter(|k| *k != DECODER_WEIGHT).collect();
        (unexpected.len() + missing.len(), unexpected.first().map(|s| s.to_string()), missing.first().map(|s| s.to_string()))
    };
    let (r1, r2) = (report(Variant::V1), report(Variant::V2));
    let (name, (_, unexpected, missing)) = if r1.0 <= r2.0 { ("v1", r1) } else { ("v2", r2) };
    let show = |k: Option<String>| k.map(|k| format!("'{k}'")).unwrap_or_else(|| "none".into());
    Err(ModelError::file(
        w.file(),
        format!(
            "the tensors fit neither GPT-BERT layer variant (v1: encoder.layers.N.lambdas and attention.lambdas; \
             v2: encoder.layers.N.lambdas_v/qk/mlp/out); nearest is {name}: first unexpected tensor {}, first missing \
             tensor {}; export the checkpoint with the modeling_gptbert.py it was trained with",
            show(unexpected),
            show(missing)
        ),
    ))
}

/// A LayerNorm without weight or bias (GPT-BERT has no affine LayerNorm anywhere), computed in fp32
/// and cast back, as the reference's `norm(x.float()).type_as(x)`; not the shared non-affine
/// `LayerNorm`, which computes in the input's kind.
fn norm(xs: &Tensor, eps: f64) -> Tensor {
    let dim = *xs.size().last().expect("layer norm input has a last dimension");
    xs.to_kind(Kind::Float).layer_norm([dim], None::<&Tensor>, None::<&Tensor>, eps, true).to_kind(xs.kind())
}

/// `CastedLinearIn`: `x · (W ⊙ (scale + 1)[None, :])ᵀ (+ b)`, the scale on the input side.
/// `MultiCastedLinearOrthoIn` is the same with `W` the row-wise concatenation of `weights.0, weights.1, …`.
struct CastedLinearIn {
    /// `[weight]` or `[weights.0, weights.1, …]`, each [out_i, in].
    weights: Vec<Tensor>,
    scale: Tensor,
    bias: Option<Tensor>,
}

impl CastedLinearIn {
    fn load(ld: &mut Loader<'_>, p: &nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self, ModelError> {
        let weights = vec![ld.take(p, "weight", &[out_dim, in_dim])?];
        let scale = ld.take(p, "scale", &[in_dim])?;
        let bias = if bias { Some(ld.take(p, "bias", &[out_dim])?) } else { None };
        Ok(Self { weights, scale, bias })
    }

    /// `MultiCastedLinearOrthoIn` without bias (every use in GPT-BERT).
    fn load_multi(ld: &mut Loader<'_>, p: &nn::Path, in_dim: i64, out_dims: &[i64]) -> Result<Self, ModelError> {
        let wp = p / "weights";
        let weights = out_dims
            .iter()
            .enumerate()
            .map(|(i, &o)| ld.take(&wp, &i.to_string(), &[o, in_dim]))
            .collect::<Result<Vec<_>, _>>()?;
        let scale = ld.take(p, "scale", &[in_dim])?;
        Ok(Self { weights, scale, bias: None })
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let w = if self.weights.len() == 1 { self.weights[0].shallow_clone() } else { Tensor::cat(&self.weights, 0) };
        let w = (w * (&self.scale + 1.0).unsqueeze(0)).to_kind(xs.kind());
        xs.linear(&w, self.bias.as_ref().map(|b| b.to_kind(xs.kind())))
    }
}

/// `word_norm(word_embedding(ids)) · (word_scale + 1)`, then dropout.
struct Embedding {
    word: Tensor,
    word_scale: Tensor,
    eps: f64,
    dropout: f64,
}

impl Embedding {
    fn load(ld: &mut Loader<'_>, p: &nn::Path, cfg: &Config, dropout: f64) -> Result<Self, ModelError> {
        let word = ld.take(&(p / "word_embedding"), "weight", &[cfg.vocab_size, cfg.hidden_size])?;
        let word_scale = ld.take(p, "word_scale", &[cfg.hidden_size])?;
        Ok(Self { word, word_scale, eps: cfg.layer_norm_eps, dropout })
    }

    fn forward(&self, input_ids: &Tensor, train: bool) -> Tensor {
        let xs = Tensor::embedding(&self.word, input_ids, -1, false, false);
        dropout(&(norm(&xs, self.eps) * (&self.word_scale + 1.0)), self.dropout, train)
    }
}

/// Rotary tables for one θ and sequence length: `cos, sin` of `pos ⊗ θ^(−2k/d)` duplicated to
/// [L, d], fp32, exactly as `RotaryPositionalEmbeddings.__init__` builds them (first L rows).
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(theta: f64, head_size: i64, len: i64, device: tch::Device) -> Self {
        let exponent = Tensor::arange_start_step(0, head_size, 2, (Kind::Float, device)) / head_size as f64;
        let inv_freq = Tensor::pow_scalar(theta, &exponent).reciprocal();
        let pos = Tensor::arange(len, (Kind::Float, device));
        let emb = pos.outer(&inv_freq);
        let emb = Tensor::cat(&[&emb, &emb], -1);
        Self { cos: emb.cos(), sin: emb.sin() }
    }

    /// `x · cos + rotate_half(x) · sin` on [B, heads, L, d], in fp32, cast back.
    fn apply(&self, xs: &Tensor) -> Tensor {
        let x = xs.to_kind(Kind::Float);
        let half = *x.size().last().expect("[B, heads, L, d]") / 2;
        let rotated = Tensor::cat(&[x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)], -1);
        (&x * &self.cos + rotated * &self.sin).to_kind(xs.kind())
    }
}

/// Per-forward position data shared by all layers: the two RoPE tables and the two window masks.
struct Positions {
    rope_local: Rope,
    rope_global: Rope,
    /// Boolean [1, 1, L, L], true where query i may see key j.
    window_local: Tensor,
    window_global: Tensor,
}

impl Positions {
    fn new(cfg: &Config, len: i64, device: tch::Device) -> Self {
        let pos = Tensor::arange(len, (Kind::Int64, device));
        // diff[i, j] = j − i; the eager path allows |i − j| ≤ w (`tril(w).triu(−w)`), or
        // −w ≤ j − i ≤ 0 for a decoder (`tril().triu(−w)`).
        let diff = pos.unsqueeze(0) - pos.unsqueeze(1);
        let window = |w: i64| {
            let upper = if cfg.is_decoder { 0 } else { w };
            diff.le(upper).logical_and(&diff.ge(-w)).view([1, 1, len, len])
        };
        let d = cfg.query_key_head_size;
        Self {
            rope_local: Rope::new(10_000.0, d, len, device),
            rope_global: Rope::new(160_000.0, d, len, device),
            window_local: window(cfg.local_window_length),
            window_global: window(cfg.global_window_length),
        }
    }
}

/// Self-attention: pre-norms on the value and query/key inputs, QK-norm with `(scale + 1)`, RoPE on
/// q and k, windowed masked softmax, `inter_norm`, output projection.
struct SelfAttention {
    qk_proj: CastedLinearIn,
    v_proj: CastedLinearIn,
    out_proj: CastedLinearIn,
    q_scale: Tensor,
    k_scale: Tensor,
    /// v1 only: `attention.lambdas` [1], the value-residual mix (unused in layer 0).
    value_lambda: Option<Tensor>,
    global: bool,
    heads: i64,
    d_qk: i64,
    d_v: i64,
    eps: f64,
    attn_dropout: f64,
    dropout: f64,
}

impl SelfAttention {
    fn load(ld: &mut Loader<'_>, p: &nn::Path, cfg: &Config, layer: i64, variant: Variant, drop: (f64, f64)) -> Result<Self, ModelError> {
        let (h, heads, d_qk, d_v) = (cfg.hidden_size, cfg.num_attention_heads, cfg.query_key_head_size, cfg.value_head_size);
        Ok(Self {
            qk_proj: CastedLinearIn::load_multi(ld, &(p / "qk_proj"), h, &[heads * d_qk, heads * d_qk])?,
            v_proj: CastedLinearIn::load(ld, &(p / "v_proj"), h, heads * d_v, false)?,
            out_proj: CastedLinearIn::load(ld, &(p / "out_proj"), heads * d_v, h, false)?,
            q_scale: ld.take(p, "q_scale", &[heads, d_qk])?,
            k_scale: ld.take(p, "k_scale", &[heads, d_qk])?,
            value_lambda: match variant {
                Variant::V1 => Some(ld.take(p, "lambdas", &[1])?),
                Variant::V2 => None,
            },
            global: cfg.is_global(layer),
            heads,
            d_qk,
            d_v,
            eps: cfg.layer_norm_eps,
            attn_dropout: drop.1,
            dropout: drop.0,
        })
    }

    /// `v_in`, `qk_in` [B, L, H]; `keys` boolean [B, 1, 1, L] (true for real tokens); `v1` the first
    /// layer's values [B, heads, L, d_v] (v1 value residual). Returns the output and this layer's `v1`.
    fn forward(&self, v_in: &Tensor, qk_in: &Tensor, v1: Option<&Tensor>, keys: &Tensor, pos: &Positions, train: bool) -> (Tensor, Tensor) {
        let (b, l, _) = v_in.size3().expect("hidden states are [batch, seq, hidden]");
        let a = norm(v_in, self.eps);
        let c = norm(qk_in, self.eps);
        let qk = self.qk_proj.forward(&c);
        let qk = qk.split_with_sizes([self.heads * self.d_qk, self.heads * self.d_qk], -1);
        let value = self.v_proj.forward(&a);
        let heads = |t: &Tensor, d: i64| t.reshape([b, l, self.heads, d]).transpose(1, 2);
        let (query, key, value) = (heads(&qk[0], self.d_qk), heads(&qk[1], self.d_qk), heads(&value, self.d_v));
        let qk_norm = |t: &Tensor, scale: &Tensor| ((scale + 1.0).unsqueeze(1).unsqueeze(0) * norm(t, self.eps)).to_kind(t.kind());
        let query = qk_norm(&query, &self.q_scale);
        let key = qk_norm(&key, &self.k_scale);
        // v1: layer 0 keeps its values for every later layer to mix in; v2 has no value residual.
        let (value, v1) = match (&self.value_lambda, v1) {
            (Some(lam), Some(first)) => {
                let lam = lam.get(0);
                ((-&lam + 1.0) * &value + &lam * first, first.shallow_clone())
            }
            _ => (value.shallow_clone(), value),
        };
        let (rope, window) =
            if self.global { (&pos.rope_global, &pos.window_global) } else { (&pos.rope_local, &pos.window_local) };
        let query = rope.apply(&query);
        let key = rope.apply(&key);
        let allowed = keys.logical_and(window);
        let hidden = allowed.logical_not();
        let scores = query.matmul(&key.transpose(-1, -2)) * (1.0 / (self.d_qk as f64).sqrt());
        let probs = scores
            .to_kind(Kind::Float)
            .masked_fill(&hidden, f32::MIN as f64)
            .softmax(-1, Kind::Float)
            .masked_fill(&hidden, 0.0)
            .to_kind(value.kind());
        let probs = dropout(&probs, self.attn_dropout, train);
        let out = probs.matmul(&value).transpose(1, 2).reshape([b, l, self.heads * self.d_v]);
        let out = self.out_proj.forward(&norm(&out, self.eps));
        (dropout(&out, self.dropout, train), v1)
    }
}

/// `pre_norm` → `up_proj` (value half, gate half) → `x · gelu_tanh(gate)` → `inter_norm` → `down_proj`.
struct FeedForward {
    up_proj: CastedLinearIn,
    down_proj: CastedLinearIn,
    eps: f64,
    dropout: f64,
}

impl FeedForward {
    fn load(ld: &mut Loader<'_>, p: &nn::Path, cfg: &Config, dropout: f64) -> Result<Self, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            up_proj: CastedLinearIn::load_multi(ld, &(p / "up_proj"), h, &[i, i])?,
            down_proj: CastedLinearIn::load(ld, &(p / "down_proj"), i, h, false)?,
            eps: cfg.layer_norm_eps,
            dropout,
        })
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let up = self.up_proj.forward(&norm(xs, self.eps));
        let halves = up.chunk(2, -1);
        let act = &halves[0] * halves[1].gelu("tanh");
        dropout(&self.down_proj.forward(&norm(&act, self.eps)), self.dropout, train)
    }
}

/// How a layer mixes its input `h`, the embedding output `e`, the attention and the MLP.
enum Mix {
    /// `lambdas` [6]: `a_in = (1−λ0)h + λ0e`, `qk_in = (1−λ1)h + λ1e`,
    /// `m_in = softplus(λ2)((1−λ3)h + λ3e) + att`, `out = softplus(λ4)((1−λ5)h + λ5e) + att + mlp(m_in)`.
    V1 { lambdas: Tensor },
    /// Each vector divided by `mean|λ| + 1e-6`: `att = attention(λv0h + λv1e, λq0h + λq1e)`,
    /// `out = λo0·mlp(λm0·att + λm1h + λm2e) + λo1·att + λo2h + λo3e`.
    V2 { v: Tensor, qk: Tensor, mlp: Tensor, out: Tensor },
}

/// `λ / (mean|λ| + 1e-6)`, as v2's `normalize_lambda`; returns the entries as 0-d tensors.
fn normalized(lambdas: &Tensor) -> Vec<Tensor> {
    let n = lambdas / (lambdas.abs().mean(lambdas.kind()) + 1e-6);
    (0..n.size()[0]).map(|i| n.get(i)).collect()
}

struct Layer {
    attention: SelfAttention,
    mlp: FeedForward,
    mix: Mix,
}

impl Layer {
    fn load(ld: &mut Loader<'_>, p: &nn::Path, cfg: &Config, i: i64, variant: Variant, drop: (f64, f64)) -> Result<Self, ModelError> {
        let attention = SelfAttention::load(ld, &(p / "attention"), cfg, i, variant, drop)?;
        let mlp = FeedForward::load(ld, &(p / "mlp"), cfg, drop.0)?;
        let mix = match variant {
            Variant::V1 => Mix::V1 { lambdas: ld.take(p, "lambdas", &[6])? },
            Variant::V2 => Mix::V2 {
                v: ld.take(p, "lambdas_v", &[2])?,
                qk: ld.take(p, "lambdas_qk", &[2])?,
                mlp: ld.take(p, "lambdas_mlp", &[3])?,
                out: ld.take(p, "lambdas_out", &[4])?,
            },
        };
        Ok(Self { attention, mlp, mix })
    }

    fn forward(&self, h: &Tensor, e: &Tensor, v1: Option<&Tensor>, keys: &Tensor, pos: &Positions, train: bool) -> (Tensor, Tensor) {
        match &self.mix {
            Mix::V1 { lambdas } => {
                let l: Vec<Tensor> = (0..6).map(|i| lambdas.get(i)).collect();
                let blend = |lam: &Tensor| (-lam + 1.0) * h + lam * e;
                let att_in = blend(&l[0]);
                let qk_in = blend(&l[1]);
                let mlp_in = l[2].softplus() * blend(&l[3]);
                let (att, v1) = self.attention.forward(&att_in, &qk_in, v1, keys, pos, train);
                let mlp_in = mlp_in + &att;
                let residual = l[4].softplus() * blend(&l[5]);
                (residual + &att + self.mlp.forward(&mlp_in, train), v1)
            }
            Mix::V2 { v, qk, mlp, out } => {
                let (lv, lq, lm, lo) = (normalized(v), normalized(qk), normalized(mlp), normalized(out));
                let v_in = &lv[0] * h + &lv[1] * e;
                let qk_in = &lq[0] * h + &lq[1] * e;
                let (att, v1) = self.attention.forward(&v_in, &qk_in, v1, keys, pos, train);
                let m = self.mlp.forward(&(&lm[0] * &att + &lm[1] * h + &lm[2] * e), train);
                (&lo[0] * m + &lo[1] * &att + &lo[2] * h + &lo[3] * e, v1)
            }
        }
    }
}

/// `LMClassifier`: `pre_norm` → `projection` → `gelu_tanh` → `post_norm` → `emb2vocab`. The
/// decoder's `(scale + 1)` multiplies its input, so it is applied at the end of [`Self::transform`]
/// and the decoder weight stays the raw `emb2vocab.weight` (or the word embedding when the
/// checkpoint has no such key).
struct LmClassifier {
    projection: CastedLinearIn,
    decoder_scale: Tensor,
    /// `None`: tied to the word embedding.
    decoder: Option<Tensor>,
    bias: Tensor,
    eps: f64,
}

impl LmClassifier {
    fn load(ld: &mut Loader<'_>, p: &nn::Path, cfg: &Config) -> Result<Self, ModelError> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let projection = CastedLinearIn::load(ld, &(p / "projection"), h, h, false)?;
        let dp = p / "emb2vocab";
        let decoder = if ld.w.contains(DECODER_WEIGHT) { Some(ld.take(&dp, "weight", &[v, h])?) } else { None };
        let bias = ld.take(&dp, "bias", &[v])?;
        let decoder_scale = ld.take(&dp, "scale", &[h])?;
        Ok(Self { projection, decoder_scale, decoder, bias, eps: cfg.layer_norm_eps })
    }

    fn transform(&self, hidden: &Tensor) -> Tensor {
        let x = self.projection.forward(&norm(hidden, self.eps));
        let x = norm(&x.gelu("tanh"), self.eps);
        (x * (&self.decoder_scale + 1.0)).to_kind(hidden.kind())
    }
}

/// `GptBertForMaskedLM`: embedding, the layer stack, the MLM head.
pub struct GptBertForMaskedLm {
    embedding: Embedding,
    layers: Vec<Layer>,
    classifier: LmClassifier,
    config: Config,
    config_json: serde_json::Value,
    patch_sigmoid: bool,
    params: Vec<(String, Tensor)>,
}

/// Builds the model from the checkpoint's tensors (layer variant read off the keys).
pub fn load(args: LoadArgs<'_>) -> Result<Box<dyn MaskedLm>, ModelError> {
    let cfg: Config = parse_config(&args)?;
    cfg.validate().map_err(|m| ModelError::file(args.config_path, m))?;
    let variant = detect_variant(&cfg, args.weights)?;
    let drop = (args.dropout.unwrap_or(cfg.hidden_dropout), args.dropout.unwrap_or(cfg.attention_dropout));
    let vs = &args.vs;
    let mut ld = Loader::new(args.weights);
    // `model.dropout` replaces every dropout of the encoder, the embedding's included (as zeroing
    // every `nn.Dropout` does on the reference side).
    let embedding = Embedding::load(&mut ld, &(vs / "embedding"), &cfg, args.dropout.unwrap_or(cfg.embedding_dropout))?;
    let lp = vs / "encoder" / "layers";
    let layers = (0..cfg.num_layers)
        .map(|i| Layer::load(&mut ld, &(&lp / i), &cfg, i, variant, drop))
        .collect::<Result<Vec<_>, _>>()?;
    let classifier = LmClassifier::load(&mut ld, &(vs / "classifier"), &cfg)?;
    let params = ld.params;
    Ok(Box::new(GptBertForMaskedLm {
        embedding,
        layers,
        classifier,
        config: cfg,
        config_json: args.config.clone(),
        patch_sigmoid: args.patch_sigmoid,
        params,
    }))
}

impl MaskedLm for GptBertForMaskedLm {
    fn architecture(&self) -> Architecture {
        Architecture::GptBert
    }

    fn encode(&self, batch: &Batch, train: bool) -> Tensor {
        let (_, len) = batch.input_ids.size2().expect("input_ids are [batch, seq]");
        // SparseEncoder truncates to max_positions(); the reference fails beyond its RoPE table.
        assert!(
            len <= self.config.max_sequence_length,
            "GPT-BERT input of {len} tokens exceeds max_sequence_length {}",
            self.config.max_sequence_length
        );
        let device = batch.input_ids.device();
        let keys = batch.attention_mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(2);
        let pos = Positions::new(&self.config, len, device);
        let e = self.embedding.forward(&batch.input_ids, train);
        let mut h = e.shallow_clone();
        let mut v1: Option<Tensor> = None;
        for layer in &self.layers {
            let (out, first) = layer.forward(&h, &e, v1.as_ref(), &keys, &pos, train);
            h = out;
            v1 = Some(first);
        }
        h
    }

    fn head_transform(&self, hidden: &Tensor, _train: bool) -> Tensor {
        self.classifier.transform(hidden)
    }

    fn decoder_weight(&self) -> &Tensor {
        self.classifier.decoder.as_ref().unwrap_or(&self.embedding.word)
    }

    fn decoder_bias(&self) -> &Tensor {
        &self.classifier.bias
    }

    fn head_layout(&self) -> HeadLayout {
        HeadLayout {
            shifted_bos: Some(self.config.bos_token_id),
            suppressed_below: 0,
            squash: if self.patch_sigmoid { None } else { Some(Squash::Sigmoid30) },
        }
    }

    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn pad_token_id(&self) -> i64 {
        self.config.pad_token_id
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.config.max_sequence_length as usize)
    }

    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self.params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        if self.classifier.decoder.is_none() {
            out.push((DECODER_WEIGHT.to_string(), self.embedding.word.shallow_clone()));
        }
        out
    }

    fn config_json(&self) -> serde_json::Value {
        self.config_json.clone()
    }
}
