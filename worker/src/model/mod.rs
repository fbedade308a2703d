//! The SPLADE sparse encoder: a BERT masked-LM in libtorch plus SPLADE pooling, loaded from and
//! saved to the folders sentence-transformers reads and writes. Inference-free models (a
//! sentence-transformers `Router`) encode queries with a static per-token weight table instead
//! ([`static_embedding`]) and documents with the MLM encoder.
//!
//! Guarantee: for the same folder, [`SparseEncoder::encode`] gives the embeddings
//! `sentence_transformers.SparseEncoder(folder).encode_query/encode_document` gives (within float
//! rounding), and [`SparseEncoder::save`] writes a folder that `SparseEncoder(path)` loads unchanged.

mod bert;
mod config;
pub mod csr;
mod dropout;
pub mod encoder;
mod gptbert;
pub mod lean_head;
mod modernbert;
mod norbert3;
mod xlm_roberta;
mod pooling;
pub mod resolve;
pub mod static_embedding;
mod st_format;
mod tokenize;
pub use tokenize::set_pin_memory;
pub use resolve::resolve_model;

/// What a model folder is, read from its metadata without loading weights: the architecture its
/// `config.json` names and whether it is a sentence-transformers folder. For `--check`: the same reading
/// of `modules.json` and `config.json` that loading does, so a folder this accepts gets past them.
pub fn describe_folder(dir: &std::path::Path) -> Result<String, ModelError> {
    let spec = st_format::read_folder(dir)?;
    let cfg_path = spec.transformer_dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| ModelError::file(&cfg_path, format!("cannot read ({e}); a model folder needs config.json")))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::file(&cfg_path, format!("not valid JSON ({e})")))?;
    let arch = Architecture::detect(&json, &cfg_path)?;
    let st = dir.join("modules.json").exists();
    Ok(format!("{arch:?} at {}{}", dir.display(), if st { ", a sentence-transformers folder" } else { "" }))
}
mod weights;
pub mod windows;

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};

pub use bert::BertForMaskedLm;
pub use config::BertConfig;
pub use csr::{CsrConfig, CsrHead, DensePooling};
pub use encoder::{Architecture, HeadLayout, MaskedLm, Squash};
pub use pooling::{Activation, PoolingConfig, PoolingStrategy};
pub use st_format::FolderSpec;
pub use static_embedding::{StaticEmbedding, STATIC_VAR};
pub use tokenize::{Batch, TextTokenizer};
pub use windows::{WindowSpec, WindowSpecError, WindowStats};

/// Why a model could not be loaded, saved or run. Messages name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Resolve(String),
    #[error(transparent)]
    Window(#[from] WindowSpecError),
    /// An operation this kind of model cannot do (e.g. windowing an inference-free model's queries).
    #[error("{0}")]
    Unsupported(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A max length asked for (training config or `--max-length`) past the model's position table.
    #[error(
        "{key} {value} is past the position table of {path} (max_position_embeddings allows {max} tokens); set {key} \
         to {max} or less"
    )]
    MaxLength { key: &'static str, value: usize, max: usize, path: PathBuf },
}

impl ModelError {
    pub(crate) fn file(path: &Path, message: impl Into<String>) -> Self {
        ModelError::File { path: path.to_path_buf(), message: message.into() }
    }
}

/// Which side of retrieval a text is encoded for: decides the prompt and the max length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    Query,
    Document,
}

/// Options that override what the folder says.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Replaces hidden and attention dropout (training config `model.dropout`).
    pub dropout: Option<f64>,
    pub max_seq_length: Option<usize>,
    pub query_max_length: Option<usize>,
    pub document_max_length: Option<usize>,
    pub pooling: Option<PoolingConfig>,
    /// GPT-BERT: drop the `30·sigmoid(x/7.5)` head squash (`model.patch_sigmoid_for_sparsity`).
    /// `None` follows the folder's own `modeling_gptbert.py` (patched or not).
    pub patch_sigmoid: Option<bool>,
}

/// What turns the encoder's hidden states into a sparse vector.
pub enum SparseHead {
    /// The MLM head's logits, SPLADE-pooled over tokens ([`SparseEncoder::forward_with_head`]):
    /// one dimension per vocabulary entry.
    Splade,
    /// CSR: dense pooling, then a top-k sparse autoencoder ([`csr`]): one dimension per latent.
    /// The MLM head of the encoder is not used, trained or saved.
    Csr(CsrHead),
}

/// A loaded sparse encoder (SPLADE or CSR). Its parameters live in `vs` (names as in the checkpoint).
pub struct SparseEncoder {
    pub vs: nn::VarStore,
    /// The masked-LM encoder and its head, whatever the architecture.
    pub mlm: Box<dyn MaskedLm>,
    /// The sparse head on top of the encoder's hidden states.
    pub head: SparseHead,
    /// Keep at most this many non-zero dimensions per embedding at encode time, as
    /// `SparseEncoder.encode(max_active_dims=…)` does: the largest by absolute value for SPLADE; for
    /// CSR the autoencoder's top-k itself (so a value above k activates more latents). `None`: all of
    /// them (SPLADE), the folder's `max_active_dims` else k (CSR).
    pub max_active_dims: Option<i64>,
    /// Checkpoint tensors the encoder does not use but a dense folder carries (BERT's pooler), kept
    /// so a CSR folder saves the transformer as complete as it was loaded.
    dense_extras: Vec<(String, Tensor)>,
    pub tokenizer: TextTokenizer,
    pub spec: FolderSpec,
    /// Max length (special tokens included) used when neither side overrides it.
    pub max_seq_length: usize,
    /// Use the memory-lean max-pooled head (same values and gradients as the dense path; on by
    /// default, `false` selects the dense reference path).
    pub lean_head: bool,
    /// Inference-free SPLADE: the query route's static weight table (its weight lives in `vs` as
    /// [`STATIC_VAR`]). `None` for a plain SPLADE encoder, which encodes queries with the MLM.
    pub query_static: Option<StaticEmbedding>,
    /// Where [`SparseEncoder::encode`] and `encode_windowed` report texts done (`splade encode`/`eval`).
    progress: std::sync::Mutex<Option<std::sync::Arc<splade_common::cli::Progress>>>,
}

/// One batch tokenized ahead of time, as token ids: what [`Pretokenizer::pretokenize`] returns. Only
/// the ids cross threads; tensors are made on the thread that trains (libtorch allocations made from
/// a second thread while a step computes were seen to change the step's rounding once in a few runs).
/// [`SparseEncoder::batch_from`] turns it into the batch [`SparseEncoder::tokenize`] would give for the same texts.
pub struct PrefetchedBatch {
    kind: TextKind,
    ids: Vec<Vec<u32>>,
}

impl PrefetchedBatch {
    /// The side the texts were tokenized for (prompt and max length).
    pub fn kind(&self) -> TextKind {
        self.kind
    }

    /// How many texts it holds.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }
}

/// A tokenizer with the model's prompts and max lengths that can move to another thread
/// ([`SparseEncoder::pretokenizer`]); its batches equal [`SparseEncoder::tokenize`]'s.
pub struct Pretokenizer {
    tokenizer: TextTokenizer,
    query: Option<(String, usize)>,
    document: (String, usize),
}

impl Pretokenizer {
    /// `texts` tokenized for `kind`, ready for [`SparseEncoder::batch_from`]; `None` for the kinds
    /// it does not cover (inference-free queries) or when tokenization fails (the step then tokenizes
    /// the texts itself and reports the error).
    pub fn pretokenize(&self, texts: &[&str], kind: TextKind) -> Option<PrefetchedBatch> {
        let (prompt, max) = match kind {
            TextKind::Query => self.query.as_ref()?,
            TextKind::Document => &self.document,
        };
        let ids = encode_with(&self.tokenizer, prompt, *max, texts).ok()?;
        Some(PrefetchedBatch { kind, ids })
    }
}

fn encode_with(tokenizer: &TextTokenizer, prompt: &str, max: usize, texts: &[&str]) -> Result<Vec<Vec<u32>>, ModelError> {
    if prompt.is_empty() {
        tokenizer.encode_ids(texts, max)
    } else {
        let owned: Vec<String> = texts.iter().map(|t| format!("{prompt}{t}")).collect();
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        tokenizer.encode_ids(&refs, max)
    }
}

impl SparseEncoder {
    /// Loads a local folder (sentence-transformers SparseEncoder or bare Hugging Face masked-LM or
    /// BertModel) onto `device`. Every file is checked before libtorch sees it.
    pub fn load(dir: &Path, device: Device, opts: &LoadOptions) -> Result<Self, ModelError> {
        let mut spec = st_format::read_folder(dir)?;
        let tdir = spec.transformer_dir.clone();
        let cfg_path = tdir.join("config.json");
        if !cfg_path.exists() {
            return Err(ModelError::file(
                &cfg_path,
                "missing; a model folder needs the transformer's config.json (save the model with \
                 save_pretrained, or point --model at the folder that has it)",
            ));
        }
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::file(&cfg_path, e.to_string()))?;
        let cfg: serde_json::Value =
            serde_json::from_str(&cfg_text).map_err(|e| ModelError::file(&cfg_path, format!("invalid config: {e}")))?;
        let arch = Architecture::detect(&cfg, &cfg_path)?;
        // The tokenizer is checked against config.json's vocab_size before the weights are read, so a
        // mismatched tokenizer is named as such rather than as a weight-shape error.
        let vocab = cfg.get("vocab_size").and_then(|v| v.as_i64()).unwrap_or(i64::MAX);
        let mut tokenizer = TextTokenizer::load(&tdir, vocab, 0, &spec.padding_side)?;
        let mut weights = weights::Weights::load_dir(&tdir, arch)?;
        let vs = nn::VarStore::new(Device::Cpu);
        let patch_sigmoid = opts.patch_sigmoid.unwrap_or_else(|| gptbert_code_is_patched(&tdir));
        let args = encoder::LoadArgs {
            dir: &tdir,
            config: &cfg,
            config_path: &cfg_path,
            weights: &mut weights,
            vs: vs.root(),
            dropout: opts.dropout,
            patch_sigmoid,
        };
        let mlm = match arch {
            Architecture::Bert => bert::load(args)?,
            Architecture::Norbert3 => norbert3::load(args)?,
            Architecture::GptBert => gptbert::load(args)?,
            Architecture::XlmRoberta => xlm_roberta::load(args)?,
            Architecture::ModernBert => modernbert::load(args)?,
        };
        let head = match &spec.sparse_auto_encoder_dir {
            Some(sae_dir) => {
                let pooling = spec.dense_pooling.ok_or_else(|| {
                    ModelError::file(
                        &dir.join("modules.json"),
                        "a SparseAutoEncoder needs a dense Pooling module before it (Transformer, Pooling, SparseAutoEncoder)",
                    )
                })?;
                let mut h = CsrHead::load(&vs.root(), sae_dir, pooling, spec.dense_normalize)?;
                h.max_active_dims = spec.max_active_dims;
                check_csr_input_dim(&h.config, mlm.as_ref(), &sae_dir.join("config.json"))?;
                drop_mlm_head(&vs, mlm.architecture());
                SparseHead::Csr(h)
            }
            None => SparseHead::Splade,
        };
        let dense_extras: Vec<(String, Tensor)> = if arch == Architecture::Bert {
            ["pooler.dense.weight", "pooler.dense.bias"]
                .iter()
                .filter_map(|n| weights.take_optional(&format!("bert.{n}")).map(|t| (n.to_string(), t)))
                .collect()
        } else {
            Vec::new()
        };
        let left = weights.leftovers();
        if !left.is_empty() {
            tracing::warn!(file = %weights.file().display(), "ignoring {} unexpected tensors: {}", left.len(), left.join(", "));
        }
        tokenizer.set_pad_id(mlm.pad_token_id());
        let query_static = match &spec.query_static_dir {
            Some(qdir) => {
                let st = StaticEmbedding::load(&vs.root(), qdir, mlm.pad_token_id(), &spec.padding_side)?;
                check_static_vocab(&st, mlm.vocab_size(), qdir)?;
                Some(st)
            }
            None => None,
        };
        let mut vs = vs;
        vs.set_device(device);
        if let SparseHead::Csr(h) = &head {
            h.set_device(device);
        }
        if let Some(p) = &opts.pooling {
            spec.pooling = p.clone();
        }
        // Lengths asked for are checked against the position table (a longer input would index past
        // it); lengths a folder carries are capped to it, as max_seq_length always was.
        let max_pos = mlm.max_positions().unwrap_or(usize::MAX);
        for (key, value) in [
            ("max_seq_length", opts.max_seq_length),
            ("query_max_length", opts.query_max_length),
            ("document_max_length", opts.document_max_length),
        ] {
            if let Some(value) = value.filter(|&v| v > max_pos) {
                return Err(ModelError::MaxLength { key, value, max: max_pos, path: spec.transformer_dir.join("config.json") });
            }
        }
        if opts.query_max_length.is_some() {
            spec.query_max_length = opts.query_max_length;
        }
        if opts.document_max_length.is_some() {
            spec.document_max_length = opts.document_max_length;
        }
        spec.query_max_length = spec.query_max_length.map(|n| n.min(max_pos));
        spec.document_max_length = spec.document_max_length.map(|n| n.min(max_pos));
        // sentence-transformers: explicit max_seq_length, else the tokenizer's model_max_length capped
        // by the position table (NorBERT3's relative positions have none: 512, its pre-training length).
        let max_seq_length = opts
            .max_seq_length
            .or(spec.max_seq_length)
            .or(spec.tokenizer_max_length.filter(|&n| n < 1_000_000))
            .unwrap_or(max_pos.min(512))
            .min(max_pos);
        Ok(Self {
            vs,
            mlm,
            head,
            max_active_dims: None,
            dense_extras,
            tokenizer,
            spec,
            max_seq_length,
            lean_head: true,
            query_static,
            progress: Default::default(),
        })
    }

    /// Turns a dense encoder into a CSR model with a fresh autoencoder (`SparseAutoEncoder(input_dim,
    /// hidden_dim, k, k_aux, normalize, dead_threshold)`; seeded by `tch::manual_seed`). The dense
    /// embedding is what the base folder's `Pooling` (and `Normalize`) modules make; a plain encoder
    /// folder gets mean pooling, as the seed's script builds it. `hidden_dim` `None`: 4 × the
    /// embedding dimension. A model that already is CSR keeps its autoencoder. Every parameter
    /// trains; the encoder's MLM head is dropped.
    pub fn make_csr(
        &mut self,
        hidden_dim: Option<i64>,
        k: i64,
        k_aux: i64,
        normalize: bool,
        dead_threshold: i64,
    ) -> Result<(), ModelError> {
        if matches!(self.head, SparseHead::Csr(_)) {
            return Ok(());
        }
        let cfg_path = self.spec.transformer_dir.join("config.json");
        if self.query_static.is_some() {
            return Err(ModelError::file(
                &cfg_path,
                "the base is an inference-free (Router) SparseEncoder, which has no dense pooling; CSR needs a dense \
                 encoder (a sentence-transformers Transformer + Pooling folder, or a plain Hugging Face encoder)",
            ));
        }
        let pooling = match self.spec.dense_pooling {
            Some(p) => p,
            None if !self.spec.is_sentence_transformers => DensePooling::Mean,
            None => {
                return Err(ModelError::file(
                    &self.spec.transformer_dir,
                    "the base is a sentence-transformers folder without a dense Pooling module (a SPLADE SparseEncoder?); \
                     CSR needs a dense base: a Transformer + Pooling folder (e.g. all-MiniLM-L6-v2) or a plain encoder folder",
                ))
            }
        };
        let input_dim = hidden_size(self.mlm.as_ref()).ok_or_else(|| {
            ModelError::file(&cfg_path, "config.json has no hidden_size; CSR needs the encoder's embedding dimension")
        })?;
        let hidden = hidden_dim.unwrap_or(4 * input_dim);
        let config = CsrConfig { input_dim, hidden_dim: hidden, k, k_aux, normalize, dead_threshold };
        config.validate(&cfg_path)?;
        if 4 * k > hidden {
            return Err(ModelError::file(
                &cfg_path,
                format!(
                    "csr_k = {k}: CSRLoss also reconstructs from the top 4·k = {} latents, more than csr_hidden_dim = {hidden}; \
                     lower model.csr_k to at most {} or raise model.csr_hidden_dim",
                    4 * k,
                    hidden / 4
                ),
            ));
        }
        let device = self.vs.device();
        let h = CsrHead::fresh(&self.vs.root(), config, pooling, self.spec.dense_normalize);
        h.set_device(device);
        drop_mlm_head(&self.vs, self.mlm.architecture());
        self.head = SparseHead::Csr(h);
        Ok(())
    }

    /// The name of embedding dimension `i`: its vocabulary token for SPLADE (`[unused_i]` when the
    /// tokenizer has none), `latent_i` for CSR, whose dimensions are autoencoder latents.
    pub fn dimension_name(&self, i: u32) -> String {
        match &self.head {
            SparseHead::Csr(_) => format!("latent_{i}"),
            SparseHead::Splade => self.tokenizer.id_to_token(i).unwrap_or_else(|| format!("[unused_{i}]")),
        }
    }

    /// The CSR head, when this is a CSR model.
    pub fn csr(&self) -> Option<&CsrHead> {
        match &self.head {
            SparseHead::Csr(h) => Some(h),
            SparseHead::Splade => None,
        }
    }

    /// What a training loss takes for a batch of `kind` texts: the sparse embeddings [B, V] for SPLADE
    /// ([`SparseEncoder::forward_kind`]), the dense sentence embeddings [B, H] that the autoencoder
    /// reads for CSR (CSRLoss needs the autoencoder's training features, which
    /// [`CsrHead::train_forward`] makes from them).
    pub fn loss_input(&self, batch: &Batch, kind: TextKind, train: bool) -> Tensor {
        match &self.head {
            SparseHead::Csr(h) => h.backbone(&self.mlm.encode(batch, train), batch),
            SparseHead::Splade => self.forward_kind(batch, kind, train),
        }
    }

    /// Turns a plain SPLADE encoder into an inference-free one whose query route is a fresh
    /// `SparseStaticEmbedding` over the MLM's tokenizer with every weight 1 (what
    /// sentence-transformers' constructor builds when given no weights). A model that already has
    /// a static table keeps its weights; `frozen` then only adds freezing.
    pub fn make_inference_free(&mut self, frozen: bool) -> Result<(), ModelError> {
        if let Some(st) = &mut self.query_static {
            if frozen && !st.frozen {
                st.frozen = true;
                st.weight = st.weight.set_requires_grad(false);
            }
            return Ok(());
        }
        let tdir = self.spec.transformer_dir.clone();
        let st = StaticEmbedding::ones(&self.vs.root(), self.tokenizer.clone(), &tdir, frozen);
        check_static_vocab(&st, self.mlm.vocab_size(), &tdir)?;
        self.query_static = Some(st);
        Ok(())
    }

    /// True for an inference-free (Router) encoder.
    pub fn is_inference_free(&self) -> bool {
        self.query_static.is_some()
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Embedding dimension of the sparse vectors: the vocabulary size for SPLADE, the autoencoder's
    /// `hidden_dim` (latents) for CSR.
    pub fn vocab_size(&self) -> i64 {
        match &self.head {
            SparseHead::Csr(h) => h.config.hidden_dim,
            SparseHead::Splade => self.mlm.vocab_size(),
        }
    }

    /// Max length for `kind`, special tokens included.
    pub fn max_length(&self, kind: TextKind) -> usize {
        match kind {
            // sentence-transformers truncates static-embedding queries at the query tokenizer's
            // model_max_length, not at the transformer's max_seq_length.
            TextKind::Query => self
                .spec
                .query_max_length
                .or_else(|| self.query_static.as_ref().and_then(|s| s.tokenizer_max_length))
                .unwrap_or(self.max_seq_length),
            TextKind::Document => self.spec.document_max_length.unwrap_or(self.max_seq_length),
        }
    }

    /// Prompt prepended to texts of `kind`.
    pub fn prompt(&self, kind: TextKind) -> &str {
        match kind {
            TextKind::Query => &self.spec.query_prompt,
            TextKind::Document => &self.spec.document_prompt,
        }
    }

    /// Tokenizes `texts` for `kind` (prompt prepended, truncated) into a CPU batch.
    pub fn tokenize(&self, texts: &[&str], kind: TextKind) -> Result<Batch, ModelError> {
        self.tokenize_now(texts, kind)
    }

    /// The CPU batch of texts a [`Pretokenizer`] of this model tokenized ahead of time on another thread: equal
    /// to [`SparseEncoder::tokenize`] of the same texts (padding happens here, on the thread that trains).
    pub fn batch_from(&self, pre: &PrefetchedBatch) -> Batch {
        self.tokenizer.pad(&pre.ids)
    }

    /// What [`SparseEncoder::tokenize`] needs, detached from the model so that another thread can
    /// tokenize a later step's texts (the model's tensors cannot be shared across threads).
    pub fn pretokenizer(&self) -> Pretokenizer {
        let side = |kind| (self.prompt(kind).to_string(), self.max_length(kind));
        Pretokenizer {
            tokenizer: self.tokenizer.clone(),
            // Inference-free queries go through the static route's own tokenizer: not prefetched.
            query: self.query_static.is_none().then(|| side(TextKind::Query)),
            document: side(TextKind::Document),
        }
    }

    fn tokenize_now(&self, texts: &[&str], kind: TextKind) -> Result<Batch, ModelError> {
        let prompt = self.prompt(kind);
        let max = self.max_length(kind);
        if let (TextKind::Query, Some(st)) = (kind, &self.query_static) {
            let owned: Vec<String> = texts.iter().map(|t| format!("{prompt}{t}")).collect();
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            return st.tokenize(&refs, max);
        }
        Ok(self.tokenizer.pad(&encode_with(&self.tokenizer, prompt, max, texts)?))
    }

    /// Sparse embeddings [B, V] of a batch of `kind` texts tokenized by [`SparseEncoder::tokenize`]:
    /// inference-free queries go through the static table, everything else through the MLM.
    pub fn forward_kind(&self, batch: &Batch, kind: TextKind, train: bool) -> Tensor {
        match (kind, &self.query_static) {
            (TextKind::Query, Some(st)) => st.forward(batch),
            _ => self.forward(batch, train),
        }
    }

    /// Sparse embeddings [B, V] of a batch already on the model's device, through the MLM encoder
    /// (the document route of an inference-free model); differentiable when `train` is set
    /// (dropout on) or gradients are enabled.
    pub fn forward(&self, batch: &Batch, train: bool) -> Tensor {
        self.forward_with_head(batch, train, self.lean_head)
    }

    /// [`SparseEncoder::forward`] with an explicit choice of the lean (`true`) or dense head.
    ///
    /// The architecture's [`HeadLayout`] is applied here, the same way on both paths: GPT-BERT's
    /// shifted logits (head output of position t − 1 at t, a bos one-hot at 0) pool the head output
    /// over positions whose successor is real, then add the one-hot; NorBERT3's suppressed ids get a
    /// −inf logit (so they never activate, and padding is masked after the activation, never NaN);
    /// a [`Squash`] forces the dense path (every squashed logit is positive: nothing to skip).
    pub fn forward_with_head(&self, batch: &Batch, train: bool, lean: bool) -> Tensor {
        if let SparseHead::Csr(h) = &self.head {
            return h.encode(&h.backbone(&self.mlm.encode(batch, train), batch), self.max_active_dims);
        }
        let hidden = self.mlm.encode(batch, train);
        let layout = self.mlm.head_layout();
        let t = self.mlm.head_transform(&hidden, train);
        let mask = match layout.shifted_bos {
            // logits[:, s] = raw[:, s − 1]: raw position p counts where position p + 1 is real.
            Some(_) => {
                let m = &batch.attention_mask;
                let l = m.size()[1];
                Tensor::cat(&[m.narrow(1, 1, l - 1), m.zeros_like().narrow(1, 0, 1)], 1)
            }
            None => batch.attention_mask.shallow_clone(),
        };
        let w = self.mlm.decoder_weight();
        let bias = self.mlm.decoder_bias();
        let bias = if layout.suppressed_below > 0 {
            let v = bias.size()[0];
            let ids = Tensor::arange(v, (Kind::Int64, bias.device()));
            bias + Tensor::zeros_like(bias).masked_fill(&ids.lt(layout.suppressed_below), f64::NEG_INFINITY)
        } else {
            bias.shallow_clone()
        };
        let pooling = &self.spec.pooling;
        let mut emb = if lean && pooling.pooling_strategy == PoolingStrategy::Max && layout.squash.is_none() {
            lean_head::max_pooled(&t, w, &bias, pooling, &mask)
        } else {
            let mut logits = t.matmul(&w.tr()) + &bias;
            if let Some(sq) = layout.squash {
                logits = sq.apply(&logits);
            }
            pooling.pool_dense(&logits, &mask)
        };
        if let Some(bos) = layout.shifted_bos {
            // Position 0's one-hot: activate(1.0) at `bos` in every non-empty row.
            let one = pooling.activate(&Tensor::ones([1], (Kind::Float, emb.device())));
            let first = batch.attention_mask.narrow(1, 0, 1).to_kind(Kind::Float);
            let onehot = Tensor::zeros_like(&emb).index_fill(1, &Tensor::from_slice(&[bos]).to_device(emb.device()), 1.0) * first * one;
            emb = match pooling.pooling_strategy {
                PoolingStrategy::Max => emb.maximum(&onehot),
                PoolingStrategy::Sum => emb + onehot,
            };
        }
        emb
    }

    /// The dense reference logits [B, L, V] of a batch, as the architecture's reference code
    /// computes `.logits` ([`HeadLayout`] applied; padding positions included, not masked).
    pub fn dense_logits(&self, batch: &Batch, train: bool) -> Tensor {
        let hidden = self.mlm.encode(batch, train);
        let layout = self.mlm.head_layout();
        let mut raw = self.mlm.head_transform(&hidden, train).matmul(&self.mlm.decoder_weight().tr()) + self.mlm.decoder_bias();
        if let Some(sq) = layout.squash {
            raw = sq.apply(&raw);
        }
        if layout.suppressed_below > 0 {
            let _ = raw.narrow(2, 0, layout.suppressed_below.min(raw.size()[2])).fill_(f64::NEG_INFINITY);
        }
        match layout.shifted_bos {
            Some(bos) => {
                let (b, l, v) = raw.size3().expect("[B, L, V]");
                let first = Tensor::zeros([b, 1, v], (raw.kind(), raw.device())).index_fill(2, &Tensor::from_slice(&[bos]).to_device(raw.device()), 1.0);
                Tensor::cat(&[first, raw.narrow(1, 0, l - 1)], 1)
            }
            None => raw,
        }
    }

    /// Encodes texts without gradients in batches of `batch_size`, returning one sparse vector
    /// (ascending indices, non-zero values) per text in input order.
    pub fn encode(&self, texts: &[&str], kind: TextKind, batch_size: usize) -> Result<Vec<(Vec<u32>, Vec<f32>)>, ModelError> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size.max(1)) {
            let batch = self.tokenize(chunk, kind)?.to(self.device());
            let mut emb = self.forward_kind(&batch, kind, false).to_device(Device::Cpu).to_kind(Kind::Float);
            if let (Some(k), SparseHead::Splade) = (self.max_active_dims, &self.head) {
                emb = select_max_active_dims(&emb, k);
            }
            out.extend(dense_rows_to_sparse(&emb));
            self.report_progress(chunk.len());
        }
        Ok(out)
    }

    /// Reports texts encoded from now on to `progress` (`None`: to nobody).
    pub fn set_progress(&self, progress: Option<std::sync::Arc<splade_common::cli::Progress>>) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = progress;
    }

    pub(crate) fn report_progress(&self, texts: usize) {
        if let Some(p) = self.progress.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            p.inc(texts as u64);
        }
    }

    /// Every parameter with its name, sorted: the MLM's in the layout transformers saves for
    /// BertForMaskedLM (tied decoder not stored), plus [`STATIC_VAR`] for inference-free models.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The MLM's parameters only (what goes into the transformer's `model.safetensors`), plus the
    /// tied copies the architecture's reference code expects there ([`MaskedLm::state_dict`]).
    pub fn mlm_parameters(&self) -> Vec<(String, Tensor)> {
        let csr_prefix = format!("{}.", csr::CSR_PREFIX);
        let mut all: std::collections::BTreeMap<String, Tensor> = self
            .named_parameters()
            .into_iter()
            .filter(|(n, _)| n != STATIC_VAR && !n.starts_with(&csr_prefix))
            .collect();
        if let SparseHead::Csr(_) = self.head {
            // A dense base saves as the bare encoder (`BertModel`: no `bert.` prefix, no MLM head).
            if self.mlm.architecture() == Architecture::Bert {
                return all
                    .into_iter()
                    .filter(|(n, _)| !n.starts_with("cls."))
                    .map(|(n, t)| (n.strip_prefix("bert.").map(str::to_string).unwrap_or(n), t))
                    .chain(self.dense_extras.iter().map(|(n, t)| (n.clone(), t.shallow_clone())))
                    .collect();
            }
            return all.into_iter().collect();
        }
        for (name, t) in self.mlm.state_dict() {
            all.entry(name).or_insert(t);
        }
        all.into_iter().collect()
    }

    /// Saves a sentence-transformers SparseEncoder folder that 5.2 and 6.2 load at `out` (created if missing).
    /// Inference-free models are written in the Router layout (see [`st_format`]).
    pub fn save(&self, out: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, format!("cannot create: {e}")))?;
        if let SparseHead::Csr(h) = &self.head {
            return self.save_csr(out, h);
        }
        if let Some(st) = &self.query_static {
            let tdir = out.join(st_format::DOCUMENT_MLM_ID);
            self.save_transformer(&tdir)?;
            let qdir = out.join(st_format::QUERY_STATIC_ID);
            std::fs::create_dir_all(&qdir).map_err(|e| ModelError::file(&qdir, format!("cannot create: {e}")))?;
            let w = st.weight.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
            weights::save_safetensors(&qdir.join("model.safetensors"), &[("weight".to_string(), w)])?;
            return st_format::write_router_metadata(
                out,
                &self.spec,
                self.max_seq_length,
                &st.tokenizer_dir,
                self.max_length(TextKind::Query),
                st.frozen,
            );
        }
        self.save_transformer(out)?;
        st_format::write_folder_metadata(out, &self.spec.transformer_dir, &self.spec, self.max_seq_length)?;
        Ok(())
    }

    /// The CSR layout sentence-transformers saves (5.x module paths): the dense transformer in the
    /// root (`BertModel` for BERT), `1_Pooling`, `2_Normalize` when the base had one, and
    /// `N_SparseAutoEncoder` with its config and weights (`stats_last_nonzero` included, so training
    /// resumes with the same dead-latent counts).
    fn save_csr(&self, out: &Path, h: &CsrHead) -> Result<(), ModelError> {
        self.save_transformer(out)?;
        if self.mlm.architecture() == Architecture::Bert {
            let cfg_path = out.join("config.json");
            let mut cfg = self.mlm.config_json();
            cfg["architectures"] = serde_json::json!(["BertModel"]);
            std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).expect("json"))
                .map_err(|e| ModelError::file(&cfg_path, format!("cannot write: {e}")))?;
        }
        let sae_cfg = serde_json::to_value(&h.config).expect("config serialises");
        let sae_dir = st_format::write_csr_metadata(
            out,
            &self.spec,
            self.max_seq_length,
            &h.pooling.config_json(h.config.input_dim),
            h.normalize_embedding,
            &sae_cfg,
            h.max_active_dims.unwrap_or(h.config.k),
        )?;
        weights::save_safetensors(&sae_dir.join("model.safetensors"), &h.state_dict())
    }

    /// The transformer's `config.json` and `model.safetensors` in `out`.
    fn save_transformer(&self, out: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, format!("cannot create: {e}")))?;
        // Dropout overrides are a training choice, not a property of the saved model: the config is
        // the loaded one.
        let cfg = self.mlm.config_json();
        let cfg_path = out.join("config.json");
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).expect("json"))
            .map_err(|e| ModelError::file(&cfg_path, format!("cannot write: {e}")))?;
        if self.mlm.architecture().is_remote_code() {
            self.copy_remote_code(out)?;
        }
        weights::save_safetensors(&out.join("model.safetensors"), &self.mlm_parameters())
    }

    /// Remote-code architectures: the base folder's `.py` files go along, so the folder loads with
    /// `trust_remote_code=True` exactly as the base did. A GPT-BERT whose head runs without the sigmoid
    /// gets `modeling_gptbert.py` patched as the seed's `patch_norbert4_for_splade.py` writes it.
    fn copy_remote_code(&self, out: &Path) -> Result<(), ModelError> {
        let src = &self.spec.transformer_dir;
        let entries = std::fs::read_dir(src).map_err(|e| ModelError::file(src, format!("cannot list: {e}")))?;
        let squashed = self.mlm.head_layout().squash.is_some();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("py") {
                continue;
            }
            let name = entry.file_name();
            let mut code = std::fs::read_to_string(&path).map_err(|e| ModelError::file(&path, format!("cannot read: {e}")))?;
            if name == "modeling_gptbert.py" && !squashed {
                code = gptbert_patch_sigmoid(&code);
            }
            let dst = out.join(&name);
            if dst != path {
                std::fs::write(&dst, code).map_err(|e| ModelError::file(&dst, format!("cannot write: {e}")))?;
            }
        }
        Ok(())
    }
}

/// The line of `GptBertForMaskedLM.forward` that squashes the head output; the seed's patch script
/// removes it (the first occurrence: the CausalLM class has the same line).
const GPTBERT_SIGMOID_LINE: &str = "subword_prediction = 30 * torch.sigmoid(subword_prediction / 7.5)";
const GPTBERT_SIGMOID_BLOCK: &str =
    "        subword_prediction = self.classifier(sequence_output)\n        subword_prediction = 30 * torch.sigmoid(subword_prediction / 7.5)\n";
const GPTBERT_PATCHED_BLOCK: &str = "        subword_prediction = self.classifier(sequence_output)\n        # PATCHED for SPLADE: removed `30 * sigmoid(x/7.5)` activation.\n        # Raw logits (unbounded, can be negative) are needed for SPLADE's\n        # ReLU(log(1+exp(logits))) to produce sparse vectors.\n";

/// `modeling_gptbert.py` with the MaskedLM head's sigmoid removed, as the seed's patch writes it
/// (unchanged when already patched).
fn gptbert_patch_sigmoid(code: &str) -> String {
    code.replacen(GPTBERT_SIGMOID_BLOCK, GPTBERT_PATCHED_BLOCK, 1)
}

/// Whether the folder's `modeling_gptbert.py` runs the MaskedLM head without the sigmoid (the seed's
/// patch, or any edit that removes the line from `GptBertForMaskedLM`). A folder without the file
/// runs the reference code: not patched.
fn gptbert_code_is_patched(dir: &Path) -> bool {
    let Ok(code) = std::fs::read_to_string(dir.join("modeling_gptbert.py")) else { return false };
    // The MaskedLM class's body: from its `class` line to the next top-level `class` (CausalLM has
    // the same sigmoid line, which stays).
    let Some(start) = code.find("class GptBertForMaskedLM") else { return false };
    let body = &code[start..];
    let body = body[1..].find("\nclass ").map_or(body, |end| &body[..end + 1]);
    !body.contains(GPTBERT_SIGMOID_LINE)
}

/// The encoder's hidden size from its `config.json` (`hidden_size`, or `dim` / `d_model`).
fn hidden_size(mlm: &dyn MaskedLm) -> Option<i64> {
    let cfg = mlm.config_json();
    ["hidden_size", "d_model", "dim"].iter().find_map(|k| cfg[k].as_i64())
}

fn check_csr_input_dim(cfg: &CsrConfig, mlm: &dyn MaskedLm, path: &Path) -> Result<(), ModelError> {
    match hidden_size(mlm) {
        Some(h) if h != cfg.input_dim => Err(ModelError::file(
            path,
            format!("input_dim = {} but the transformer's hidden_size is {h}; the autoencoder belongs to another encoder", cfg.input_dim),
        )),
        _ => Ok(()),
    }
}

/// Removes the MLM head's variables from the VarStore of a CSR model, so they are neither trained
/// nor saved (a bare `BertModel` gets a fresh head from the BERT loader; CSR never uses it).
fn drop_mlm_head(vs: &nn::VarStore, arch: Architecture) {
    let prefix = match arch {
        Architecture::Bert => "cls.",
        _ => return,
    };
    let mut vars = vs.variables_.lock().unwrap_or_else(|e| e.into_inner());
    let dropped: Vec<Tensor> = vars
        .named_variables
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, t)| t.shallow_clone())
        .collect();
    vars.named_variables.retain(|n, _| !n.starts_with(prefix));
    vars.trainable_variables.retain(|v| !dropped.iter().any(|d| d.data_ptr() == v.tensor.data_ptr()));
}

/// Keeps the `k` largest entries by absolute value of each row (`select_max_active_dims`).
fn select_max_active_dims(emb: &Tensor, k: i64) -> Tensor {
    let v = emb.size()[1];
    if k >= v {
        return emb.shallow_clone();
    }
    let (_, idx) = emb.abs().topk(k, 1, true, false);
    Tensor::zeros_like(emb).scatter(1, &idx, &emb.gather(1, &idx, false))
}

/// Queries and documents must live in one vocabulary space for the dot product to mean anything.
fn check_static_vocab(st: &StaticEmbedding, vocab_size: i64, dir: &Path) -> Result<(), ModelError> {
    if st.vocab_size() != vocab_size {
        return Err(ModelError::file(
            dir,
            format!(
                "the query-side static table has {} entries but the document MLM's vocab_size is {}; both routes must \
                 share one vocabulary (use the MLM's own tokenizer for the SparseStaticEmbedding)",
                st.vocab_size(),
                vocab_size
            ),
        ));
    }
    Ok(())
}

/// Converts a dense CPU float matrix [B, V] into per-row (indices, values) of its non-zeros.
pub fn dense_rows_to_sparse(emb: &Tensor) -> Vec<(Vec<u32>, Vec<f32>)> {
    let (b, v) = emb.size2().expect("embeddings are [batch, vocab]");
    let emb = emb.contiguous();
    let mut flat = vec![0f32; (b * v) as usize];
    emb.copy_data(&mut flat, (b * v) as usize);
    flat.chunks(v as usize)
        .map(|row| {
            let mut idx = Vec::new();
            let mut val = Vec::new();
            for (i, &x) in row.iter().enumerate() {
                if x != 0.0 {
                    idx.push(i as u32);
                    val.push(x);
                }
            }
            (idx, val)
        })
        .collect()
}
