//! NorBERT3 / LTG-BERT (`NorbertForMaskedLM`, Hugging Face remote code) with its MLM head, in
//! libtorch, reading top to bottom: config, building blocks, relative position buckets, embedding,
//! attention, feed-forward, layer, classifier, and the model that strings them together.
//!
//! Numerically the reference is norbench's `modeling_norbert.py` (see
//! `shared/reference/remote-code/README.md`). What differs from BERT: no absolute positions (a
//! bucketed relative position embedding enters every layer's attention, projected by the same
//! `in_proj_qk` as the hidden states, bias included), pre-LayerNorm layers whose norms mostly have
//! no affine parameters, a GeGLU feed-forward (tanh GELU) and an exact-erf GELU in the head, whose
//! decoder is tied to the word embedding. The reference computes time-major ([T, B, H]); here
//! everything is batch-major, which only reorders float sums.
//!
//! Variable names in the [`tch::nn::VarStore`] are exactly the checkpoint's
//! (`embedding.word_embedding.weight`, `transformer.layers.0.attention.in_proj_qk.weight`, …).

use std::path::Path as FsPath;

use serde::Deserialize;
use tch::nn::Path;
use tch::{Device, Kind, Tensor};

use super::dropout::dropout;
use super::encoder::layers::{LayerNorm, Linear, Loader};
use super::encoder::{parse_config, Architecture, HeadLayout, LoadArgs, MaskedLm};
use super::tokenize::Batch;
use super::ModelError;

/// `NorbertForMaskedLM` sets `logits[..., :106 + 1] = -inf`: a hard-coded count, whatever the vocabulary.
pub const SUPPRESSED_BELOW: i64 = 107;

/// The bucket table of sequences longer than the checkpoint's is rebuilt by the reference with
/// this maximum position, hard-coded, not `max_position_embeddings`.
const LONG_TABLE_MAX_POSITION: i64 = 512;

/// `config.json` of a NorBERT3 model; missing keys take `NorbertConfig()`'s defaults (the base
/// model's sizes). Other keys (`architectures`, `auto_map`, …) are ignored here and kept in the
/// round-tripped [`MaskedLm::config_json`].
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: i64,
    #[serde(default = "defaults::position_bucket_size")]
    pub position_bucket_size: i64,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// `NorbertConfig` does not set one (PretrainedConfig's default is none): then the tokenizer's
    /// `[PAD]` is used.
    #[serde(default)]
    pub pad_token_id: Option<i64>,
}

mod defaults {
    pub fn vocab_size() -> i64 {
        50_000
    }
    pub fn hidden_size() -> i64 {
        768
    }
    pub fn num_hidden_layers() -> i64 {
        12
    }
    pub fn num_attention_heads() -> i64 {
        12
    }
    pub fn intermediate_size() -> i64 {
        2048
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn max_position_embeddings() -> i64 {
        512
    }
    pub fn position_bucket_size() -> i64 {
        32
    }
    pub fn layer_norm_eps() -> f64 {
        1e-7
    }
}

impl Config {
    /// Rejects sizes the reference could not build or whose bucket formula is undefined.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(format!("{name} = {v} must be positive"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        // The log buckets divide by log((max_position − 1) / (bucket_size / 2)): it must be positive.
        if self.position_bucket_size < 2 || self.max_position_embeddings - 1 <= self.position_bucket_size / 2 {
            return Err(format!(
                "position_bucket_size {} and max_position_embeddings {} give no log buckets; need \
                 position_bucket_size >= 2 and max_position_embeddings > position_bucket_size / 2 + 1",
                self.position_bucket_size, self.max_position_embeddings
            ));
        }
        for (name, p) in [("hidden_dropout_prob", self.hidden_dropout_prob), ("attention_probs_dropout_prob", self.attention_probs_dropout_prob)] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} = {p} must be in [0, 1)"));
            }
        }
        Ok(())
    }

    fn head_size(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// The reference's relative-position bucket table for `len` positions: entry [q, k] is the
/// embedding row of the offset `q − k`. Offsets below `bucket_size / 2` get their own bucket,
/// longer ones share logarithmically wider buckets that saturate at `max_position − 1`. Computed
/// with the same float32 tensor operations as `make_log_bucket_position`, so the `ceil` rounds
/// identically. Values lie in `[0, 2·bucket_size − 2]`.
pub fn bucket_table(len: i64, bucket_size: i64, max_position: i64) -> Tensor {
    let opts = (Kind::Int64, Device::Cpu);
    let rel = Tensor::arange(len, opts).unsqueeze(1) - Tensor::arange(len, opts).unsqueeze(0);
    let sign = rel.sign();
    let mid = bucket_size / 2;
    let near = rel.lt(mid).logical_and(&rel.gt(-mid));
    let abs_pos = rel.abs().clamp_max(max_position - 1).masked_fill(&near, mid - 1);
    let log_pos = ((abs_pos.to_kind(Kind::Float) / mid as f64).log() / (((max_position - 1) as f64) / mid as f64).ln()
        * (mid - 1) as f64)
        .ceil()
        .to_kind(Kind::Int)
        + mid;
    let bucket = rel.where_self(&abs_pos.le(mid), &(log_pos.to_kind(Kind::Int64) * sign));
    bucket + (bucket_size - 1)
}

/// Word embedding (LayerNorm without affine, dropout) plus the shared relative position embedding
/// (affine LayerNorm) that every layer's attention projects.
#[derive(Debug)]
struct Embedding {
    word: Tensor,
    relative: Tensor,
    relative_norm: LayerNorm,
    /// Without affine parameters.
    word_norm: LayerNorm,
    dropout: f64,
}

impl Embedding {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, dropout: f64) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let word = l.take(&(p / "word_embedding"), "weight", &[cfg.vocab_size, h])?;
        let relative = l.take(p, "relative_embedding", &[2 * cfg.position_bucket_size - 1, h])?;
        let relative_norm = LayerNorm::load(&(p / "relative_layer_norm"), l, h, cfg.layer_norm_eps, true)?;
        Ok(Self { word, relative, relative_norm, word_norm: LayerNorm::non_affine(cfg.layer_norm_eps), dropout })
    }

    /// Returns the word embeddings [B, L, H] and the normalised relative embeddings [2·bucket − 1, H].
    fn forward(&self, input_ids: &Tensor, train: bool) -> (Tensor, Tensor) {
        let words = Tensor::embedding(&self.word, input_ids, -1, false, false);
        let words = dropout(&self.word_norm.forward(&words), self.dropout, train);
        (words, self.relative_norm.forward(&self.relative))
    }
}

/// Disentangled self-attention: content-content plus content-position and position-content scores
/// over bucketed relative positions, then the output projection and an affine LayerNorm.
#[derive(Debug)]
struct Attention {
    in_proj_qk: Linear,
    in_proj_v: Linear,
    out_proj: Linear,
    post_norm: LayerNorm,
    /// The pre-norm, without affine parameters.
    pre_norm: LayerNorm,
    heads: i64,
    head_size: i64,
    /// `attention_probs_dropout_prob`: the reference's one attention dropout module serves the
    /// relative embeddings, the probabilities and the output.
    dropout: f64,
}

impl Attention {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, attn_dropout: f64) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        Ok(Self {
            in_proj_qk: Linear::load(&(p / "in_proj_qk"), l, h, 2 * h, true)?,
            in_proj_v: Linear::load(&(p / "in_proj_v"), l, h, h, true)?,
            out_proj: Linear::load(&(p / "out_proj"), l, h, h, true)?,
            post_norm: LayerNorm::load(&(p / "post_layer_norm"), l, h, cfg.layer_norm_eps, true)?,
            heads: cfg.num_attention_heads,
            pre_norm: LayerNorm::non_affine(cfg.layer_norm_eps),
            head_size: cfg.head_size(),
            dropout: attn_dropout,
        })
    }

    /// `xs` [B, L, H]; `padding` bool [B, 1, 1, L], true at padded keys; `buckets` int64 [L, L] on
    /// the device; `relative` [2·bucket − 1, H].
    fn forward(&self, xs: &Tensor, padding: &Tensor, buckets: &Tensor, relative: &Tensor, train: bool) -> Tensor {
        let (b, l, h) = xs.size3().expect("hidden states are [batch, seq, hidden]");
        let (heads, d) = (self.heads, self.head_size);
        let normed = self.pre_norm.forward(xs);
        let qk = self.in_proj_qk.forward(&normed).chunk(2, -1);
        let split = |t: &Tensor| t.view([b, l, heads, d]).transpose(1, 2);
        let (q, k) = (split(&qk[0]), split(&qk[1]));
        let v = split(&self.in_proj_v.forward(&normed));

        // The relative embeddings go through the same projection, bias included. Per head the
        // projected row holds [query_pos | key_pos] (the reference views it as [.., heads, 2d]).
        let rel = self.in_proj_qk.forward(&dropout(relative, self.dropout, train));
        let buckets_n = rel.size()[0];
        let rel = rel.view([buckets_n, heads, 2 * d]).chunk(2, -1);
        let (query_pos, key_pos) = (rel[0].permute([1, 2, 0]), rel[1].permute([1, 2, 0])); // [heads, d, R]

        // score[q, k] = q·k + q·key_pos(q−k) + k·query_pos(q−k), all times 1/sqrt(3d). The position
        // terms are formed per bucket ([B, heads, L, R]) and then gathered, instead of
        // materialising the reference's [L, L, H] position tensor: the same sums, far less memory.
        let idx = buckets.view([1, 1, l, l]).expand([b, heads, l, l], false);
        let c2p = q.matmul(&key_pos).gather(-1, &idx, false);
        let idx_t = buckets.tr().contiguous().view([1, 1, l, l]).expand([b, heads, l, l], false);
        let p2c = k.matmul(&query_pos).gather(-1, &idx_t, false).transpose(-1, -2);
        let scale = 1.0 / ((3 * d) as f64).sqrt();
        let scores = (q.matmul(&k.transpose(-1, -2)) + c2p + p2c) * scale;

        // MaskedSoftmax: padded keys get −inf before and exactly 0 after the softmax (a row with no
        // real key is all zeros, not NaN); its backward is softmax's.
        let probs = scores.masked_fill(padding, f64::NEG_INFINITY).softmax(-1, scores.kind()).masked_fill(padding, 0.0);
        let probs = dropout(&probs, self.dropout, train);
        let ctx = probs.matmul(&v).transpose(1, 2).contiguous().view([b, l, h]);
        dropout(&self.post_norm.forward(&self.out_proj.forward(&ctx)), self.dropout, train)
    }
}

/// Pre-norm GeGLU feed-forward: LN → Linear(H, 2I) → x·gelu_tanh(gate) → LN → Linear(I, H) →
/// dropout; no biases, no affine norms.
#[derive(Debug)]
struct FeedForward {
    up: Linear,
    down: Linear,
    /// Before `up` and before `down`, without affine parameters.
    norm: LayerNorm,
    dropout: f64,
}

impl FeedForward {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, dropout: f64) -> Result<Self, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            up: Linear::load(&(p / 1), l, h, 2 * i, false)?,
            down: Linear::load(&(p / 4), l, i, h, false)?,
            norm: LayerNorm::non_affine(cfg.layer_norm_eps),
            dropout,
        })
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let up = self.up.forward(&self.norm.forward(xs)).chunk(2, -1);
        // GeGLU: the first half is the value, the second the gate.
        let glu = &up[0] * up[1].gelu("tanh");
        dropout(&self.down.forward(&self.norm.forward(&glu)), self.dropout, train)
    }
}

/// One block: `x + attention(x)`, then `x + feed_forward(x)` (no LayerNorm after the stack).
#[derive(Debug)]
struct Layer {
    attention: Attention,
    mlp: FeedForward,
    /// The checkpoint's `position_indices` buffer [P, P] int64 on the CPU (the formula's table
    /// where the checkpoint has none); shared by value with the previous layer where equal.
    buckets: Tensor,
}

impl Layer {
    fn forward(&self, xs: &Tensor, padding: &Tensor, buckets: &Tensor, relative: &Tensor, train: bool) -> Tensor {
        let xs = xs + self.attention.forward(xs, padding, buckets, relative, train);
        &xs + self.mlp.forward(&xs, train)
    }
}

/// `MaskClassifier`: LN → Linear(H, H) → GELU (exact erf) → LN → dropout → decoder, whose weight is
/// the word embedding.
#[derive(Debug)]
struct Classifier {
    dense: Linear,
    bias: Tensor,
    /// Before and after `dense`, without affine parameters.
    norm: LayerNorm,
    dropout: f64,
}

impl Classifier {
    fn load(p: &Path, l: &mut Loader<'_>, cfg: &Config, dropout: f64) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let dense = Linear::load(&(p / 1), l, h, h, true)?;
        let bias = l.take(&(p / 5), "bias", &[cfg.vocab_size])?;
        Ok(Self { dense, bias, norm: LayerNorm::non_affine(cfg.layer_norm_eps), dropout })
    }

    fn transform(&self, hidden: &Tensor, train: bool) -> Tensor {
        let xs = self.dense.forward(&self.norm.forward(hidden)).gelu("none");
        dropout(&self.norm.forward(&xs), self.dropout, train)
    }
}

/// `NorbertForMaskedLM`: embedding, encoder stack and tied MLM head.
pub struct NorbertForMaskedLm {
    config: Config,
    raw_config: serde_json::Value,
    embedding: Embedding,
    layers: Vec<Layer>,
    classifier: Classifier,
    pad_token_id: i64,
    /// Every trainable tensor by state-dict name, in load order (shallow clones of the variables).
    params: Vec<(String, Tensor)>,
}

/// Builds the model from `config.json` and the checkpoint. The tied decoder weight
/// `classifier.nonlinearity.5.weight` may be absent (checkpoints saved tied lack it); if present it
/// is ignored in favour of the word embedding, as the reference ties them.
pub fn load(args: LoadArgs<'_>) -> Result<Box<dyn MaskedLm>, ModelError> {
    let cfg: Config = parse_config(&args)?;
    cfg.validate().map_err(|m| ModelError::file(args.config_path, format!("invalid NorBERT3 config: {m}")))?;
    let pad_token_id = match cfg.pad_token_id {
        Some(id) => id,
        None => tokenizer_pad_id(args.dir).ok_or_else(|| {
            ModelError::file(
                args.config_path,
                "has no pad_token_id and the folder's tokenizer.json has no [PAD] token; add \"pad_token_id\" to config.json",
            )
        })?,
    };
    let hd = args.dropout.unwrap_or(cfg.hidden_dropout_prob);
    let ad = args.dropout.unwrap_or(cfg.attention_probs_dropout_prob);
    let vs = &args.vs;
    let mut l = Loader::new(args.weights);
    let embedding = Embedding::load(&(vs / "embedding"), &mut l, &cfg, hd)?;
    let p_max = cfg.max_position_embeddings;
    let formula = bucket_table(p_max, cfg.position_bucket_size, p_max);
    let mut layers: Vec<Layer> = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        let p = vs / "transformer" / "layers" / i;
        let attention = Attention::load(&(&p / "attention"), &mut l, &cfg, ad)?;
        let mlp = FeedForward::load(&(&p / "mlp" / "mlp"), &mut l, &cfg, hd)?;
        let key = (&p / "attention").path("position_indices");
        let buckets = match l.w.take_optional(&key) {
            // The reference uses the loaded buffer (for L ≤ P); a float copy is what a float-only
            // saver writes, and transformers casts it back to int64 too.
            Some(t) if t.size() == [p_max, p_max] => t.to_kind(Kind::Int64),
            Some(t) => {
                return Err(ModelError::file(
                    l.w.file(),
                    format!(
                        "tensor '{key}' has shape {:?} but config.json implies {:?} (max_position_embeddings); the checkpoint does \
                         not match its config.json",
                        t.size(),
                        [p_max, p_max]
                    ),
                ))
            }
            None => formula.shallow_clone(),
        };
        let buckets = match layers.last() {
            Some(prev) if prev.buckets.equal(&buckets) => prev.buckets.shallow_clone(),
            _ => buckets,
        };
        layers.push(Layer { attention, mlp, buckets });
    }
    let classifier = Classifier::load(&(vs / "classifier" / "nonlinearity"), &mut l, &cfg, hd)?;
    if let Some(decoder) = l.w.take_optional("classifier.nonlinearity.5.weight") {
        if decoder.size() != embedding.word.size() || !decoder.allclose(&embedding.word.detach(), 0.0, 0.0, false) {
            tracing::warn!(
                file = %l.w.file().display(),
                "classifier.nonlinearity.5.weight differs from embedding.word_embedding.weight; NorbertForMaskedLM ties \
                 them, so the word embedding is used as the decoder"
            );
        }
    }
    Ok(Box::new(NorbertForMaskedLm {
        config: cfg,
        raw_config: args.config.clone(),
        embedding,
        layers,
        classifier,
        pad_token_id,
        params: l.params,
    }))
}

/// The id of `[PAD]` among `dir/tokenizer.json`'s added tokens (LTG tokenizers all have one).
fn tokenizer_pad_id(dir: &FsPath) -> Option<i64> {
    let text = std::fs::read_to_string(dir.join("tokenizer.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("added_tokens")?.as_array()?.iter().find(|t| t.get("content").and_then(|c| c.as_str()) == Some("[PAD]"))?.get("id")?.as_i64()
}

impl NorbertForMaskedLm {
    /// The bucket table of layer `layer` for `len` positions, on `device`: the checkpoint's table
    /// when it is long enough, else the reference's rebuilt table (maximum position hard-coded to
    /// 512). The reference also stores the rebuilt table back into the layer, so that later
    /// shorter inputs change too; that statefulness is not reproduced: every call sees a fresh model.
    fn buckets(&self, layer: usize, len: i64, device: Device) -> Tensor {
        let table = &self.layers[layer].buckets;
        if len <= table.size()[0] {
            table.narrow(0, 0, len).narrow(1, 0, len).contiguous().to_device(device)
        } else {
            bucket_table(len, self.config.position_bucket_size, LONG_TABLE_MAX_POSITION).to_device(device)
        }
    }
}

impl MaskedLm for NorbertForMaskedLm {
    fn architecture(&self) -> Architecture {
        Architecture::Norbert3
    }

    fn encode(&self, batch: &Batch, train: bool) -> Tensor {
        let device = batch.input_ids.device();
        let (b, len) = batch.input_ids.size2().expect("input ids are [batch, seq]");
        let padding = batch.attention_mask.eq(0).view([b, 1, 1, len]);
        let (mut xs, relative) = self.embedding.forward(&batch.input_ids, train);
        let mut buckets: Option<Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            // Layers whose tables are one tensor share one device copy.
            let shared = i > 0 && layer.buckets.data_ptr() == self.layers[i - 1].buckets.data_ptr();
            let table = match (&buckets, shared) {
                (Some(t), true) => t.shallow_clone(),
                _ => self.buckets(i, len, device),
            };
            xs = layer.forward(&xs, &padding, &table, &relative, train);
            buckets = Some(table);
        }
        xs
    }

    fn head_transform(&self, hidden: &Tensor, train: bool) -> Tensor {
        self.classifier.transform(hidden, train)
    }

    fn decoder_weight(&self) -> &Tensor {
        &self.embedding.word
    }

    fn decoder_bias(&self) -> &Tensor {
        &self.classifier.bias
    }

    fn head_layout(&self) -> HeadLayout {
        HeadLayout { suppressed_below: SUPPRESSED_BELOW, ..HeadLayout::default() }
    }

    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn pad_token_id(&self) -> i64 {
        self.pad_token_id
    }

    fn max_positions(&self) -> Option<usize> {
        None
    }

    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self.params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        // transformers 4.57 initialises a missing tied decoder at random, and 5.x fails on missing
        // `position_indices` buffers (IndexError in the forward): both are written out.
        out.push(("classifier.nonlinearity.5.weight".into(), self.embedding.word.detach().copy()));
        for (i, layer) in self.layers.iter().enumerate() {
            out.push((format!("transformer.layers.{i}.attention.position_indices"), layer.buckets.shallow_clone()));
        }
        out
    }

    fn config_json(&self) -> serde_json::Value {
        self.raw_config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket formula's fixed points: offsets inside the near window map to themselves, far
    /// ones saturate at the last bucket, and the table is antisymmetric around bucket_size − 1.
    #[test]
    fn bucket_table_is_antisymmetric_and_saturates() {
        let t = bucket_table(600, 32, 512);
        assert_eq!(i64::try_from(t.get(20).get(10)).unwrap(), 31 + 10);
        assert_eq!(i64::try_from(t.get(0).get(599)).unwrap(), 0);
        assert_eq!(i64::try_from(t.get(599).get(0)).unwrap(), 62);
        let centred = &t - 31;
        assert!(centred.equal(&-centred.tr()), "bucket(q − k) ≠ −bucket(k − q)");
    }

    /// The reference's own tables: a fresh tiny model's buffer (max position 128) sliced to 100, and
    /// the table it rebuilds for 600 positions (max position 512).
    #[test]
    fn bucket_tables_equal_the_reference_code_tables() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/reference/remote-code/tiny-norbert3/reference/outputs.safetensors");
        let fx: std::collections::BTreeMap<String, Tensor> = Tensor::read_safetensors(&file).unwrap().into_iter().collect();
        assert!(bucket_table(100, 32, 128).equal(&fx["position_indices_len100"].to_kind(Kind::Int64)));
        assert!(bucket_table(600, 32, LONG_TABLE_MAX_POSITION).equal(&fx["position_indices_len600"].to_kind(Kind::Int64)));
    }
}
