//! The building blocks the architectures share, each with `load` + `forward` (candle's
//! `models/bert.rs` style): [`Loader`], which makes checkpoint tensors variables under their
//! state-dict names; [`Linear`] with or without bias; [`LayerNorm`] with or without affine
//! parameters; [`Activation`] as `config.json` spells it; and [`attention`], scaled dot-product
//! attention whose dropout runs on [`keep_mask`]'s fast generator when training on the CPU.
//!
//! What only looks alike stays in the model files: GPT-BERT's `(scale + 1)` linears and its
//! LayerNorm computed in fp32 whatever the autocast kind, NorBERT3's disentangled attention.

use serde::Deserialize;
use tch::nn::{Init, Path};
use tch::{Device, Tensor};

use super::super::dropout::keep_mask;
use super::super::weights::Weights;
use super::super::ModelError;

/// Creates the checkpoint's tensors as variables under their state-dict names and remembers them,
/// in load order, for [`super::MaskedLm::state_dict`].
pub(crate) struct Loader<'a> {
    pub(crate) w: &'a mut Weights,
    pub(crate) params: Vec<(String, Tensor)>,
}

impl<'a> Loader<'a> {
    pub(crate) fn new(w: &'a mut Weights) -> Self {
        Self { w, params: Vec::new() }
    }

    /// The checkpoint tensor `p.name`, shape-checked against `shape`, as a trainable variable of
    /// the same name.
    pub(crate) fn take(&mut self, p: &Path, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let full = p.path(name);
        let t = p.var_copy(name, &self.w.take(&full, shape)?);
        self.params.push((full, t.shallow_clone()));
        Ok(t)
    }
}

/// A dense layer: `weight` [out, in] and, where the architecture has one, `bias` [out].
#[derive(Debug)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// The layer at `p` (`p.weight`, and `p.bias` when `bias`).
    pub(crate) fn load(p: &Path, l: &mut Loader<'_>, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self, ModelError> {
        let weight = l.take(p, "weight", &[out_dim, in_dim])?;
        let bias = if bias { Some(l.take(p, "bias", &[out_dim])?) } else { None };
        Ok(Self { weight, bias })
    }

    /// A freshly initialised layer with bias as transformers' `_init_weights` does it: N(0, range)
    /// weight, zero bias (seeded by `tch::manual_seed`).
    pub(crate) fn init(p: &Path, in_dim: i64, out_dim: i64, range: f64) -> Self {
        let weight = p.var("weight", &[out_dim, in_dim], Init::Randn { mean: 0.0, stdev: range });
        let bias = p.var("bias", &[out_dim], Init::Const(0.0));
        Self { weight, bias: Some(bias) }
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, self.bias.as_ref())
    }
}

/// LayerNorm over the last dimension, with `weight` and `bias`, `weight` only, or neither.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// The affine norm at `p`: `p.weight` and, when `bias`, `p.bias`, each [dim].
    pub(crate) fn load(p: &Path, l: &mut Loader<'_>, dim: i64, eps: f64, bias: bool) -> Result<Self, ModelError> {
        let weight = l.take(p, "weight", &[dim])?;
        let bias = if bias { Some(l.take(p, "bias", &[dim])?) } else { None };
        Ok(Self { weight: Some(weight), bias, eps })
    }

    /// A fresh affine norm with bias: the identity (weight 1, bias 0), as transformers initialises one.
    pub(crate) fn init(p: &Path, dim: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[dim], Init::Const(1.0));
        let bias = p.var("bias", &[dim], Init::Const(0.0));
        Self { weight: Some(weight), bias: Some(bias), eps }
    }

    /// A norm without parameters (`elementwise_affine=False`).
    pub(crate) fn non_affine(eps: f64) -> Self {
        Self { weight: None, bias: None, eps }
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Tensor {
        let dim = *xs.size().last().expect("layer norm input has a last dimension");
        xs.layer_norm([dim], self.weight.as_ref(), self.bias.as_ref(), self.eps, true)
    }
}

/// The activations transformers' `ACT2FN` maps these `config.json` names to.
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
    /// The activation a `config.json` name stands for; `None` for a name `ACT2FN` has that is not
    /// implemented here.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name)).ok()
    }

    pub(crate) fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => xs.gelu("none"),
            Activation::GeluNew | Activation::GeluPytorchTanh => xs.gelu("tanh"),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
        }
    }
}

/// Scaled dot-product attention of q, k, v ([B, heads, L, d]) under the boolean `mask`
/// (broadcastable to [B, heads, L, L], true where a query may attend to a key; every query row has
/// at least one such key), with dropout `p` on the probabilities. Training on the CPU
/// (`p > 0`) takes [`attention_with_dropout`]; everything else is libtorch's SDPA.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, p: f64) -> Tensor {
    if p > 0.0 && q.device() == Device::Cpu {
        attention_with_dropout(q, k, v, mask, p)
    } else {
        Tensor::scaled_dot_product_attention(q, k, v, Some(mask), p, false, None, false)
    }
}

/// Scaled dot-product attention with dropout on the probabilities, for training on the CPU. SDPA
/// takes its math path there anyway (its fused CPU kernels do no dropout); these are the same
/// operations, with [`keep_mask`]'s mask generator instead of libtorch's much slower one.
fn attention_with_dropout(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, p: f64) -> Tensor {
    let head_dim = *q.size().last().expect("q is [batch, heads, seq, head_dim]");
    let scores = (q * (1.0 / (head_dim as f64).sqrt())).matmul(&k.transpose(-2, -1));
    let probs = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY).softmax(-1, scores.kind());
    // The 1/(1 − p) scale goes on the [B, heads, L, head_dim] context, not the L × L probabilities.
    (&probs * keep_mask(&probs.size(), 1.0 - p)).matmul(v) * (1.0 / (1.0 - p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// With a keep probability that rounds to 1 the dropout path is plain attention: it must equal
    /// SDPA's, padding mask included.
    #[test]
    fn attention_with_dropout_matches_sdpa_when_nothing_drops() {
        tch::manual_seed(2);
        let opts = (Kind::Float, tch::Device::Cpu);
        let (b, heads, l, d) = (3, 4, 10, 8);
        let (q, k, v) = (Tensor::randn([b, heads, l, d], opts), Tensor::randn([b, heads, l, d], opts), Tensor::randn([b, heads, l, d], opts));
        let lens = Tensor::from_slice(&[10i64, 4, 1]).unsqueeze(1);
        let mask = Tensor::arange(l, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0).lt_tensor(&lens).view([b, 1, 1, l]);
        let ours = attention_with_dropout(&q, &k, &v, &mask, 1e-12);
        let sdpa = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None, false);
        let diff = f64::try_from((&ours - &sdpa).abs().max()).unwrap();
        assert!(diff < 1e-5, "attention differs from SDPA by {diff:e}");
        // And with p = 0.5 about half the probability mass is dropped (rows no longer sum to 1).
        let ones = Tensor::ones([b, heads, l, 1], opts);
        let mass = attention_with_dropout(&q, &k, &ones, &mask, 0.5);
        let dropped = f64::try_from(mass.eq(1.0).logical_not().to_kind(Kind::Double).mean(Kind::Double)).unwrap();
        assert!(dropped > 0.5, "p = 0.5 left {:.0}% of the rows' mass intact", 100.0 * (1.0 - dropped));
    }

    /// `config.json` names, the `swish` alias, and a name that is not implemented.
    #[test]
    fn activation_names_parse_as_config_json_spells_them() {
        assert_eq!(Activation::from_name("gelu"), Some(Activation::Gelu));
        assert_eq!(Activation::from_name("gelu_pytorch_tanh"), Some(Activation::GeluPytorchTanh));
        assert_eq!(Activation::from_name("swish"), Some(Activation::Silu));
        assert_eq!(Activation::from_name("gelu_magic"), None);
    }
}
