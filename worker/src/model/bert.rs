//! BERT with its masked-language-model head, in libtorch, reading top to bottom: embeddings,
//! self-attention, feed-forward, encoder, MLM head, and the model that strings them together.
//!
//! Variable names in the [`tch::nn::VarStore`] are exactly the checkpoint's (`bert.encoder.layer.0.…`,
//! `cls.predictions.…`), so loading and saving are a copy by name.

use tch::nn::Path;
use tch::{Kind, Tensor};

use super::config::BertConfig;
use super::dropout::dropout;
use super::encoder::layers::{attention, Activation, LayerNorm, Linear, Loader};
use super::encoder::{parse_config, Architecture, LoadArgs, MaskedLm};
use super::tokenize::Batch;
use super::weights::Weights;
use super::ModelError;

/// The sizes and rates BERT's encoder blocks read. XLM-RoBERTa's encoder is this one with other
/// position ids and names around it, so [`super::xlm_roberta`] fills one from its own config.
#[derive(Debug, Clone)]
pub(super) struct EncoderConfig {
    pub(super) vocab_size: i64,
    pub(super) hidden_size: i64,
    pub(super) num_hidden_layers: i64,
    pub(super) num_attention_heads: i64,
    pub(super) intermediate_size: i64,
    pub(super) hidden_act: Activation,
    pub(super) max_position_embeddings: i64,
    pub(super) type_vocab_size: i64,
    pub(super) layer_norm_eps: f64,
    /// `hidden_dropout_prob`, or the training config's override.
    pub(super) hidden_dropout: f64,
    /// `attention_probs_dropout_prob`, or the training config's override.
    pub(super) attention_dropout: f64,
}

impl EncoderConfig {
    /// BERT's, from its config; `dropout` overrides both dropout rates.
    fn bert(cfg: &BertConfig, dropout: Option<f64>) -> Result<Self, String> {
        let hidden_act = Activation::from_name(&cfg.hidden_act)
            .ok_or_else(|| format!("hidden_act '{}' is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)", cfg.hidden_act))?;
        Ok(Self {
            vocab_size: cfg.vocab_size,
            hidden_size: cfg.hidden_size,
            num_hidden_layers: cfg.num_hidden_layers,
            num_attention_heads: cfg.num_attention_heads,
            intermediate_size: cfg.intermediate_size,
            hidden_act,
            max_position_embeddings: cfg.max_position_embeddings,
            type_vocab_size: cfg.type_vocab_size,
            layer_norm_eps: cfg.layer_norm_eps,
            hidden_dropout: dropout.unwrap_or(cfg.hidden_dropout_prob),
            attention_dropout: dropout.unwrap_or(cfg.attention_probs_dropout_prob),
        })
    }

    fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// Word + position + token type embeddings, LayerNorm, dropout. The caller gives the position ids:
/// BERT's are 0..L, XLM-R's count from its padding index.
#[derive(Debug)]
pub(super) struct Embeddings {
    pub(super) word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    /// The word and position row that gets no gradient (`nn.Embedding`'s `padding_idx`); −1: none.
    padding_idx: i64,
    dropout: f64,
}

impl Embeddings {
    pub(super) fn load(p: &Path, l: &mut Loader<'_>, cfg: &EncoderConfig, padding_idx: i64) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        Ok(Self {
            word: l.take(&(p / "word_embeddings"), "weight", &[cfg.vocab_size, h])?,
            position: l.take(&(p / "position_embeddings"), "weight", &[cfg.max_position_embeddings, h])?,
            token_type: l.take(&(p / "token_type_embeddings"), "weight", &[cfg.type_vocab_size, h])?,
            norm: LayerNorm::load(&(p / "LayerNorm"), l, h, cfg.layer_norm_eps, true)?,
            padding_idx,
            dropout: cfg.hidden_dropout,
        })
    }

    /// `positions` [B or 1, L]; `token_type_ids` `None` gives every token row 0 of the table.
    pub(super) fn forward(&self, input_ids: &Tensor, positions: &Tensor, token_type_ids: Option<&Tensor>, train: bool) -> Tensor {
        let xs = Tensor::embedding(&self.word, input_ids, self.padding_idx, false, false)
            + Tensor::embedding(&self.position, positions, self.padding_idx, false, false);
        let xs = match token_type_ids {
            Some(ids) => xs + Tensor::embedding(&self.token_type, ids, -1, false, false),
            None => xs + self.token_type.get(0),
        };
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
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &EncoderConfig) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let (sp, op) = (p / "self", p / "output");
        Ok(Self {
            query: Linear::load(&(&sp / "query"), l, h, h, true)?,
            key: Linear::load(&(&sp / "key"), l, h, h, true)?,
            value: Linear::load(&(&sp / "value"), l, h, h, true)?,
            output: Linear::load(&(&op / "dense"), l, h, h, true)?,
            norm: LayerNorm::load(&(&op / "LayerNorm"), l, h, cfg.layer_norm_eps, true)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            attn_dropout: cfg.attention_dropout,
            dropout: cfg.hidden_dropout,
        })
    }

    /// `mask` is boolean [B, 1, 1, L], true where a key may be attended to.
    fn forward(&self, xs: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (b, l, h) = xs.size3().expect("hidden states are [batch, seq, hidden]");
        let split = |t: Tensor| t.view([b, l, self.heads, self.head_dim]).transpose(1, 2);
        let q = split(self.query.forward(xs));
        let k = split(self.key.forward(xs));
        let v = split(self.value.forward(xs));
        let ctx = attention(&q, &k, &v, mask, if train { self.attn_dropout } else { 0.0 });
        let ctx = ctx.transpose(1, 2).contiguous().view([b, l, h]);
        let out = dropout(&self.output.forward(&ctx), self.dropout, train);
        self.norm.forward(&(out + xs))
    }
}

/// One transformer block: attention, then the position-wise feed-forward with residual LayerNorm.
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
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &EncoderConfig) -> Result<Self, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: Attention::load(&(p / "attention"), l, cfg)?,
            intermediate: Linear::load(&(p / "intermediate" / "dense"), l, h, i, true)?,
            output: Linear::load(&(p / "output" / "dense"), l, i, h, true)?,
            norm: LayerNorm::load(&(p / "output" / "LayerNorm"), l, h, cfg.layer_norm_eps, true)?,
            act: cfg.hidden_act,
            dropout: cfg.hidden_dropout,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let attn = self.attention.forward(xs, mask, train);
        let inter = self.act.apply(&self.intermediate.forward(&attn));
        let out = dropout(&self.output.forward(&inter), self.dropout, train);
        self.norm.forward(&(out + attn))
    }
}

/// The post-LN layer stack `encoder.layer.N`.
#[derive(Debug)]
pub(super) struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    pub(super) fn load(p: &Path, l: &mut Loader<'_>, cfg: &EncoderConfig) -> Result<Self, ModelError> {
        let lp = p / "layer";
        let layers = (0..cfg.num_hidden_layers).map(|i| Layer::load(&(&lp / i), l, cfg)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { layers })
    }

    /// `attention_mask` [B, L] is nonzero at the real tokens, the keys every position may attend to.
    pub(super) fn forward(&self, embedded: Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let mask = attention_mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1);
        let mut xs = embedded;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask, train);
        }
        xs
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
    act: Activation,
}

impl MlmHead {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &BertConfig, act: Activation) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let tp = p / "transform";
        let has_head = l.w.contains("cls.predictions.transform.dense.weight");
        let (dense, norm, bias) = if has_head {
            let bias = match l.w.take_optional("cls.predictions.bias") {
                Some(b) => b,
                None => l.w.take("cls.predictions.decoder.bias", &[cfg.vocab_size])?,
            };
            (
                Linear::load(&(&tp / "dense"), l, h, h, true)?,
                LayerNorm::load(&(&tp / "LayerNorm"), l, h, cfg.layer_norm_eps, true)?,
                p.var_copy("bias", &bias),
            )
        } else {
            // A bare BertModel (e.g. all-MiniLM) has no MLM head. transformers' BertForMaskedLM
            // initialises the missing transform with N(0, initializer_range) weights, zero biases
            // and an identity LayerNorm, and the output bias with zeros; we do the same, seeded by
            // tch::manual_seed, with the decoder tied to the word embeddings.
            (
                Linear::init(&(&tp / "dense"), h, h, cfg.initializer_range),
                LayerNorm::init(&(&tp / "LayerNorm"), h, cfg.layer_norm_eps),
                p.var("bias", &[cfg.vocab_size], tch::nn::Init::Const(0.0)),
            )
        };
        let decoder_w = l.w.take_optional("cls.predictions.decoder.weight");
        let _ = l.w.take_optional("cls.predictions.decoder.bias");
        let decoder = match (cfg.tie_word_embeddings, decoder_w) {
            (false, Some(d)) => Some((p / "decoder").var_copy("weight", &d)),
            (false, None) => {
                return Err(ModelError::file(
                    l.w.file(),
                    "config.json sets tie_word_embeddings=false but the checkpoint has no cls.predictions.decoder.weight",
                ))
            }
            (true, _) => None,
        };
        Ok(Self { dense, norm, decoder, bias, act })
    }

    /// The transformed hidden states [B, L, H] that the decoder projects onto the vocabulary.
    fn transform(&self, hidden: &Tensor) -> Tensor {
        self.norm.forward(&self.act.apply(&self.dense.forward(hidden)))
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
    encoder: Encoder,
    head: MlmHead,
    config: BertConfig,
}

impl BertForMaskedLm {
    /// Builds the model in `vs` from checkpoint tensors. `dropout` overrides the config's hidden and
    /// attention dropout when given (the training config's `model.dropout`).
    pub fn load(vs: &Path, w: &mut Weights, cfg: &BertConfig, dropout: Option<f64>) -> Result<Self, ModelError> {
        let enc = EncoderConfig::bert(cfg, dropout).map_err(|m| ModelError::file(w.file(), format!("config.json: {m}")))?;
        let mut l = Loader::new(w);
        let bert = vs / "bert";
        let embeddings = Embeddings::load(&(&bert / "embeddings"), &mut l, &enc, -1)?;
        let encoder = Encoder::load(&(&bert / "encoder"), &mut l, &enc)?;
        let head = MlmHead::load(&(vs / "cls" / "predictions"), &mut l, cfg, enc.hidden_act)?;
        Ok(Self { embeddings, encoder, head, config: cfg.clone() })
    }

    /// Final hidden states [B, L, H] of the encoder stack.
    pub fn encode(&self, input_ids: &Tensor, token_type_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        // Absolute positions 0..L for every row, as transformers does regardless of padding side.
        let positions = Tensor::arange(input_ids.size()[1], (Kind::Int64, input_ids.device())).unsqueeze(0);
        let xs = self.embeddings.forward(input_ids, &positions, Some(token_type_ids), train);
        self.encoder.forward(xs, attention_mask, train)
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
