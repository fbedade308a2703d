//! The query side of inference-free SPLADE: sentence-transformers' `SparseStaticEmbedding`, a
//! learned weight per vocabulary token. A query's embedding is the weight of every token it
//! contains (each token once, however often it occurs), zero elsewhere; no encoder runs.
//!
//! Guarantee: [`StaticEmbedding::forward`] computes what `SparseStaticEmbedding.forward` computes
//! (`scatter_` of the attention mask into a [B, V] presence matrix, times the weight vector), and
//! the tokenization ([`StaticEmbedding::tokenize`]) is its `preprocess`: no special tokens,
//! truncation to the max length, padding to the longest query.

use std::path::{Path, PathBuf};

use tch::{nn, Kind, Tensor};

use super::tokenize::{Batch, TextTokenizer};
use super::ModelError;

/// Name of the weight vector in the encoder's `VarStore` (and in optimizer state): the route's
/// sub-folder name as sentence-transformers writes it, then `weight`.
pub const STATIC_VAR: &str = "query_0_SparseStaticEmbedding.weight";

/// Module path of the weight inside the `VarStore` (tch forbids dots inside one name).
const STATIC_PATH: &str = "query_0_SparseStaticEmbedding";

/// A per-token weight table and the tokenizer that maps queries onto it.
pub struct StaticEmbedding {
    /// `[vocab]` float weights, a variable of the encoder's `VarStore` named [`STATIC_VAR`].
    pub weight: Tensor,
    /// Kept fixed during training (`SparseStaticEmbedding(frozen=True)`); the weight then has no gradient.
    pub frozen: bool,
    pub tokenizer: TextTokenizer,
    /// Folder the tokenizer files are copied from when the model is saved.
    pub tokenizer_dir: PathBuf,
    /// The query tokenizer's `model_max_length`, which is what sentence-transformers truncates at.
    pub tokenizer_max_length: Option<usize>,
}

impl StaticEmbedding {
    /// A fresh table of ones, as `SparseStaticEmbedding(tokenizer, weight=None)` builds it
    /// (one entry per token of the tokenizer's vocabulary, added tokens included).
    pub fn ones(vs: &nn::Path, tokenizer: TextTokenizer, tokenizer_dir: &Path, frozen: bool) -> Self {
        let n = tokenizer.inner().get_vocab_size(true) as i64;
        let init = Tensor::ones([n], (Kind::Float, tch::Device::Cpu));
        Self::from_tensor(vs, &init, tokenizer, tokenizer_dir, frozen, None)
    }

    /// Wraps `weight` (copied into the `VarStore` at `vs`).
    pub fn from_tensor(
        vs: &nn::Path,
        weight: &Tensor,
        tokenizer: TextTokenizer,
        tokenizer_dir: &Path,
        frozen: bool,
        tokenizer_max_length: Option<usize>,
    ) -> Self {
        let mut w = vs.sub(STATIC_PATH).var_copy("weight", &weight.to_kind(Kind::Float));
        if frozen {
            w = w.set_requires_grad(false);
        }
        Self { weight: w, frozen, tokenizer, tokenizer_dir: tokenizer_dir.to_path_buf(), tokenizer_max_length }
    }

    /// Loads a `query_0_SparseStaticEmbedding/` folder: `config.json` (`frozen`), `model.safetensors`
    /// (`weight`) and the tokenizer files.
    pub fn load(vs: &nn::Path, dir: &Path, pad_token_id: i64, padding_side: &str) -> Result<Self, ModelError> {
        let cfg_path = dir.join("config.json");
        let mut frozen = false;
        if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::file(&cfg_path, format!("cannot read: {e}")))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::file(&cfg_path, format!("invalid JSON: {e}")))?;
            frozen = v["frozen"].as_bool().unwrap_or(false);
            if let Some(p) = v["path"].as_str() {
                return Err(ModelError::file(
                    &cfg_path,
                    format!(
                        "`path: {p}` (weights from an IDF JSON file) is not supported; load the folder with \
                         sentence-transformers and save it again, which writes the weights to model.safetensors"
                    ),
                ));
            }
        }
        let wpath = dir.join("model.safetensors");
        if !wpath.exists() {
            return Err(ModelError::file(
                &wpath,
                "missing; a SparseStaticEmbedding folder needs its weight vector (save it with sentence-transformers \
                 ≥ 5, which writes safetensors)",
            ));
        }
        let tensors = Tensor::read_safetensors(&wpath).map_err(|e| ModelError::file(&wpath, format!("cannot read: {e}")))?;
        let weight = tensors
            .iter()
            .find(|(n, _)| n == "weight")
            .map(|(_, t)| t.shallow_clone())
            .ok_or_else(|| ModelError::file(&wpath, "has no tensor `weight`; expected SparseStaticEmbedding's [vocab] weight vector"))?;
        if weight.dim() != 1 {
            return Err(ModelError::file(&wpath, format!("`weight` has shape {:?}; expected one value per vocabulary token", weight.size())));
        }
        let n = weight.size()[0];
        let tokenizer = TextTokenizer::load(dir, n, pad_token_id, padding_side)?;
        let tokenizer_max_length = read_model_max_length(dir)?;
        Ok(Self::from_tensor(vs, &weight, tokenizer, dir, frozen, tokenizer_max_length))
    }

    /// Number of vocabulary entries (the embedding dimension).
    pub fn vocab_size(&self) -> i64 {
        self.weight.size()[0]
    }

    /// Tokenizes queries as `SparseStaticEmbedding.preprocess`: no special tokens, truncated to `max_len`.
    pub fn tokenize(&self, texts: &[&str], max_len: usize) -> Result<Batch, ModelError> {
        let ids = self.tokenizer.encode_ids_with(texts, max_len, false)?;
        Ok(self.tokenizer.pad(&ids))
    }

    /// `[B, V]` embeddings of a batch on the weight's device; differentiable in the weight.
    pub fn forward(&self, batch: &Batch) -> Tensor {
        let b = batch.input_ids.size()[0];
        let dev = self.weight.device();
        // As sentence-transformers: scatter the attention mask into an int64 presence matrix, so a
        // padding position writes 0 onto the pad token's column and a repeated token counts once.
        let presence = Tensor::zeros([b, self.vocab_size()], (Kind::Int64, dev)).scatter(
            1,
            &batch.input_ids.to_device(dev),
            &batch.attention_mask.to_device(dev).to_kind(Kind::Int64),
        );
        presence.to_kind(self.weight.kind()) * &self.weight
    }
}

/// `tokenizer_config.json`'s `model_max_length` in `dir`, when present and sane.
pub(crate) fn read_model_max_length(dir: &Path) -> Result<Option<usize>, ModelError> {
    let p = dir.join("tokenizer_config.json");
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| ModelError::file(&p, format!("cannot read: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::file(&p, format!("invalid JSON: {e}")))?;
    // transformers writes a huge sentinel (1e30) when the length is unknown.
    Ok(v["model_max_length"].as_f64().filter(|&x| x > 0.0 && x < 1e9).map(|x| x as usize))
}
