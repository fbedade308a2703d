//! BERT with its masked-language-model head, in libtorch, reading top to bottom: embeddings,
//! self-attention, feed-forward, encoder, MLM head, and the model that strings them together.
//!
//! Variable names in the [`tch::nn::VarStore`] are exactly the checkpoint's (`bert.encoder.layer.0.…`,
//! `cls.predictions.…`), so loading and saving are a copy by name.

use tch::nn::Path;
use tch::{Kind, Tensor};

use super::config::BertConfig;
use super::dropout::{dropout, keep_mask};
use super::encoder::{parse_config, Architecture, LoadArgs, MaskedLm};
use super::tokenize::Batch;
use super::weights::Weights;
use super::ModelError;

/// A dense layer whose parameters are the checkpoint's `weight` ([out, in]) and `bias` ([out]).
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(p: &Path, w: &mut Weights, name: &str, in_dim: i64, out_dim: i64) -> Result<Self, ModelError> {
        let p = p / name;
        let weight = p.var_copy("weight", &w.take(&p.path("weight"), &[out_dim, in_dim])?);
        let bias = p.var_copy("bias", &w.take(&p.path("bias"), &[out_dim])?);
        Ok(Self { weight, bias })
    }

    /// A freshly initialised layer as transformers' `_init_weights` does it: N(0, range) weight,
    /// zero bias.
    fn init(p: &Path, name: &str, in_dim: i64, out_dim: i64, range: f64) -> Self {
        let p = p / name;
        let weight = p.var("weight", &[out_dim, in_dim], tch::nn::Init::Randn { mean: 0.0, stdev: range });
        let bias = p.var("bias", &[out_dim], tch::nn::Init::Const(0.0));
        Self { weight, bias }
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
    fn load(p: &Path, w: &mut Weights, name: &str, dim: i64, eps: f64) -> Result<Self, ModelError> {
        let p = p / name;
        let weight = p.var_copy("weight", &w.take(&p.path("weight"), &[dim])?);
        let bias = p.var_copy("bias", &w.take(&p.path("bias"), &[dim])?);
        Ok(Self { weight, bias, eps })
    }

    fn init(p: &Path, name: &str, dim: i64, eps: f64) -> Self {
        let p = p / name;
        let weight = p.var("weight", &[dim], tch::nn::Init::Const(1.0));
        let bias = p.var("bias", &[dim], tch::nn::Init::Const(0.0));
        Self { weight, bias, eps }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let dim = *xs.size().last().expect("layer norm input has a last dimension");
        xs.layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

fn activation(name: &str, xs: &Tensor) -> Tensor {
    match name {
        "gelu" => xs.gelu("none"),
        "gelu_new" | "gelu_pytorch_tanh" => xs.gelu("tanh"),
        "relu" => xs.relu(),
        other => unreachable!("BertConfig::validate rejects activation {other}"),
    }
}

/// Word + absolute position + token type embeddings, LayerNorm, dropout.
#[derive(Debug)]
struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    dropout: f64,
}

impl Embeddings {
    fn load(p: &Path, w: &mut Weights, cfg: &BertConfig, dropout: f64) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let table = |name: &str, rows: i64, w: &mut Weights| -> Result<Tensor, ModelError> {
            let p = p / name;
            Ok(p.var_copy("weight", &w.take(&p.path("weight"), &[rows, h])?))
        };
        let word = table("word_embeddings", cfg.vocab_size, w)?;
        let position = table("position_embeddings", cfg.max_position_embeddings, w)?;
        let token_type = table("token_type_embeddings", cfg.type_vocab_size, w)?;
        let norm = LayerNorm::load(p, w, "LayerNorm", h, cfg.layer_norm_eps)?;
        Ok(Self { word, position, token_type, norm, dropout })
    }

    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, train: bool) -> Tensor {
        let seq_len = input_ids.size()[1];
        // Absolute positions 0..L for every row, as transformers does regardless of padding side.
        let positions = Tensor::arange(seq_len, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let xs = Tensor::embedding(&self.word, input_ids, -1, false, false)
            + Tensor::embedding(&self.position, &positions, -1, false, false)
            + Tensor::embedding(&self.token_type, token_type_ids, -1, false, false);
        dropout(&self.norm.forward(&xs), self.dropout, train)
    }
}

/// Multi-head self-attention plus its output projection and residual LayerNorm.
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
    fn load(p: &Path, w: &mut Weights, cfg: &BertConfig, dropout: f64, attn_dropout: f64) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let sp = p / "self";
        let op = p / "output";
        Ok(Self {
            query: Linear::load(&sp, w, "query", h, h)?,
            key: Linear::load(&sp, w, "key", h, h)?,
            value: Linear::load(&sp, w, "value", h, h)?,
            output: Linear::load(&op, w, "dense", h, h)?,
            norm: LayerNorm::load(&op, w, "LayerNorm", h, cfg.layer_norm_eps)?,
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

/// Scaled dot-product attention with dropout on the probabilities, for training on the CPU. SDPA
/// takes its math path there anyway (its fused CPU kernels do no dropout); these are the same
/// operations, with [`keep_mask`]'s mask generator instead of libtorch's much slower one. `mask` is
/// boolean [B, 1, 1, L], true where a key may be attended to.
fn attention_with_dropout(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, p: f64) -> Tensor {
    let head_dim = *q.size().last().expect("q is [batch, heads, seq, head_dim]");
    let scores = (q * (1.0 / (head_dim as f64).sqrt())).matmul(&k.transpose(-2, -1));
    let probs = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY).softmax(-1, scores.kind());
    // The 1/(1 − p) scale goes on the [B, heads, L, head_dim] context, not the L × L probabilities.
    (&probs * keep_mask(&probs.size(), 1.0 - p)).matmul(v) * (1.0 / (1.0 - p))
}

/// One transformer block: attention, then the position-wise feed-forward with residual LayerNorm.
#[derive(Debug)]
struct Layer {
    attention: Attention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    act: String,
    dropout: f64,
}

impl Layer {
    fn load(p: &Path, w: &mut Weights, cfg: &BertConfig, dropout: f64, attn_dropout: f64) -> Result<Self, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: Attention::load(&(p / "attention"), w, cfg, dropout, attn_dropout)?,
            intermediate: Linear::load(&(p / "intermediate"), w, "dense", h, i)?,
            output: Linear::load(&(p / "output"), w, "dense", i, h)?,
            norm: LayerNorm::load(&(p / "output"), w, "LayerNorm", h, cfg.layer_norm_eps)?,
            act: cfg.hidden_act.clone(),
            dropout,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let attn = self.attention.forward(xs, mask, train);
        let inter = activation(&self.act, &self.intermediate.forward(&attn));
        let out = dropout(&self.output.forward(&inter), self.dropout, train);
        self.norm.forward(&(out + attn))
    }
}

/// The MLM prediction head: dense + activation + LayerNorm, then a decoder onto the vocabulary.
/// With tied embeddings (BERT's default) the decoder weight is the word-embedding matrix itself.
#[derive(Debug)]
struct MlmHead {
    dense: Linear,
    norm: LayerNorm,
    /// `Some` only when the checkpoint unties the decoder from the word embeddings.
    decoder: Option<Tensor>,
    bias: Tensor,
    act: String,
}

impl MlmHead {
    fn load(p: &Path, w: &mut Weights, cfg: &BertConfig) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let tp = p / "transform";
        let has_head = w.contains("cls.predictions.transform.dense.weight");
        let (dense, norm, bias) = if has_head {
            let bias = match w.take_optional("cls.predictions.bias") {
                Some(b) => b,
                None => w.take("cls.predictions.decoder.bias", &[cfg.vocab_size])?,
            };
            (
                Linear::load(&tp, w, "dense", h, h)?,
                LayerNorm::load(&tp, w, "LayerNorm", h, cfg.layer_norm_eps)?,
                p.var_copy("bias", &bias),
            )
        } else {
            // A bare BertModel (e.g. all-MiniLM) has no MLM head. transformers' BertForMaskedLM
            // initialises the missing transform with N(0, initializer_range) weights, zero biases
            // and an identity LayerNorm, and the output bias with zeros; we do the same, seeded by
            // tch::manual_seed, with the decoder tied to the word embeddings.
            (
                Linear::init(&tp, "dense", h, h, cfg.initializer_range),
                LayerNorm::init(&tp, "LayerNorm", h, cfg.layer_norm_eps),
                p.var("bias", &[cfg.vocab_size], tch::nn::Init::Const(0.0)),
            )
        };
        let decoder_w = w.take_optional("cls.predictions.decoder.weight");
        let _ = w.take_optional("cls.predictions.decoder.bias");
        let decoder = match (cfg.tie_word_embeddings, decoder_w) {
            (false, Some(d)) => Some((p / "decoder").var_copy("weight", &d)),
            (false, None) => {
                return Err(ModelError::file(
                    w.file(),
                    "config.json sets tie_word_embeddings=false but the checkpoint has no cls.predictions.decoder.weight",
                ))
            }
            (true, _) => None,
        };
        Ok(Self { dense, norm, decoder, bias, act: cfg.hidden_act.clone() })
    }

    /// The transformed hidden states [B, L, H] that the decoder projects onto the vocabulary.
    fn transform(&self, hidden: &Tensor) -> Tensor {
        self.norm.forward(&activation(&self.act, &self.dense.forward(hidden)))
    }

    /// The decoder weight [V, H] (the word embeddings when tied).
    fn decoder_weight<'a>(&'a self, word_embeddings: &'a Tensor) -> &'a Tensor {
        self.decoder.as_ref().unwrap_or(word_embeddings)
    }

    fn bias(&self) -> &Tensor {
        &self.bias
    }
}

/// `BertForMaskedLM`: the encoder stack plus the MLM head.
#[derive(Debug)]
pub struct BertForMaskedLm {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    head: MlmHead,
    config: BertConfig,
}

impl BertForMaskedLm {
    /// Builds the model in `vs` from checkpoint tensors. `dropout` overrides the config's hidden and
    /// attention dropout when given (the training config's `model.dropout`).
    pub fn load(vs: &Path, w: &mut Weights, cfg: &BertConfig, dropout: Option<f64>) -> Result<Self, ModelError> {
        let hd = dropout.unwrap_or(cfg.hidden_dropout_prob);
        let ad = dropout.unwrap_or(cfg.attention_probs_dropout_prob);
        let bert = vs / "bert";
        let embeddings = Embeddings::load(&(&bert / "embeddings"), w, cfg, hd)?;
        let enc = &bert / "encoder" / "layer";
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(&(&enc / i), w, cfg, hd, ad))
            .collect::<Result<Vec<_>, _>>()?;
        let head = MlmHead::load(&(vs / "cls" / "predictions"), w, cfg)?;
        Ok(Self { embeddings, layers, head, config: cfg.clone() })
    }

    /// Final hidden states [B, L, H] of the encoder stack.
    pub fn encode(&self, input_ids: &Tensor, token_type_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let mask = attention_mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1);
        let mut xs = self.embeddings.forward(input_ids, token_type_ids, train);
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask, train);
        }
        xs
    }
}

/// Builds a `BertForMaskedLM` (or a bare `BertModel` with a fresh head) from `config.json` and the
/// checkpoint.
pub fn load(args: LoadArgs<'_>) -> Result<Box<dyn MaskedLm>, ModelError> {
    let cfg: BertConfig = parse_config(&args)?;
    cfg.validate().map_err(|m| ModelError::file(args.config_path, m))?;
    Ok(Box::new(BertForMaskedLm::load(&args.vs, args.weights, &cfg, args.dropout)?))
}

impl MaskedLm for BertForMaskedLm {
    fn architecture(&self) -> Architecture {
        Architecture::Bert
    }

    fn encode(&self, batch: &Batch, train: bool) -> Tensor {
        BertForMaskedLm::encode(self, &batch.input_ids, &batch.token_type_ids, &batch.attention_mask, train)
    }

    fn head_transform(&self, hidden: &Tensor, _train: bool) -> Tensor {
        self.head.transform(hidden)
    }

    fn decoder_weight(&self) -> &Tensor {
        self.head.decoder_weight(&self.embeddings.word)
    }

    fn decoder_bias(&self) -> &Tensor {
        self.head.bias()
    }

    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn pad_token_id(&self) -> i64 {
        self.config.pad_token_id
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings as usize)
    }

    /// Every parameter is a VarStore variable under its checkpoint name; the tied decoder is not
    /// stored, as transformers saves BertForMaskedLM.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn config_json(&self) -> serde_json::Value {
        let mut cfg = serde_json::to_value(&self.config).expect("config serialises");
        // A bare BertModel gained an MLM head: it is saved as what it now is.
        cfg["architectures"] = serde_json::json!(["BertForMaskedLM"]);
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
