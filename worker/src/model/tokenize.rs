//! Turning texts into padded id tensors the way sentence-transformers' tokenizer call does:
//! special tokens added, longest-first truncation to the max length (special tokens included),
//! dynamic padding to the longest text of the batch on the configured side.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::ModelError;

/// A tokenized batch on its device. `attention_mask` is 1 for real tokens, 0 for padding.
#[derive(Debug)]
pub struct Batch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    /// Real (unpadded) length of each row, special tokens included.
    pub lengths: Vec<usize>,
}

/// Whether batches reach CUDA through pinned host memory (`training.dataloader_pin_memory`, default true as
/// in Hugging Face's `TrainingArguments`). Process-wide, as the transfer policy of a PyTorch process's
/// `DataLoader` is: set once at start-up by the trainer, read by every [`Batch::to`].
static PIN_MEMORY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Sets the process's transfer policy (see [`Batch::to`]).
pub fn set_pin_memory(pin: bool) {
    PIN_MEMORY.store(pin, std::sync::atomic::Ordering::Relaxed);
}

impl Batch {
    /// Moves every tensor to `device`. To CUDA, unless `training.dataloader_pin_memory: false`, the ids go
    /// through pinned host memory with non-blocking copies, as a PyTorch `DataLoader(pin_memory=True)` feeds
    /// `.to(non_blocking=True)`: the copies queue on the current stream ahead of the kernels that read them,
    /// and libtorch's caching host allocator keeps each pinned buffer until its copy has run. Without pinning
    /// the copy is a plain blocking one (`pin_memory=False`).
    pub fn to(&self, device: Device) -> Batch {
        let pin = PIN_MEMORY.load(std::sync::atomic::Ordering::Relaxed);
        let move_to = |t: &Tensor| match device {
            Device::Cuda(_) if pin => t.pin_memory(device).to_device_(device, t.kind(), true, false),
            _ => t.to_device(device),
        };
        Batch {
            input_ids: move_to(&self.input_ids),
            token_type_ids: move_to(&self.token_type_ids),
            attention_mask: move_to(&self.attention_mask),
            lengths: self.lengths.clone(),
        }
    }
}

/// A `tokenizer.json` tokenizer with its padding id and side.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: i64,
    pad_left: bool,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`, refusing a tokenizer that can emit ids the model has no row for.
    pub fn load(dir: &Path, model_vocab_size: i64, pad_token_id: i64, padding_side: &str) -> Result<Self, ModelError> {
        let file = dir.join("tokenizer.json");
        if !file.exists() {
            return Err(ModelError::file(
                &file,
                "missing; the encoder needs a fast-tokenizer file: save the tokenizer with transformers \
                 (`AutoTokenizer.from_pretrained(...).save_pretrained(dir)`) into the model folder",
            ));
        }
        let mut inner = Tokenizer::from_file(&file).map_err(|e| ModelError::file(&file, format!("cannot parse tokenizer: {e}")))?;
        let n = inner.get_vocab_size(true) as i64;
        if n > model_vocab_size {
            return Err(ModelError::file(
                &file,
                format!(
                    "the tokenizer has {n} tokens but config.json's vocab_size is {model_vocab_size}: ids ≥ \
                     {model_vocab_size} would index past the embedding table; use the tokenizer that belongs to this model"
                ),
            ));
        }
        // Padding and truncation are applied per call below; whatever the file configured (MiniLM pads
        // every input to 128) must not leak in.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::file(&file, format!("cannot reset truncation: {e}")))?;
        Ok(Self { inner, pad_id: pad_token_id, pad_left: padding_side == "left" })
    }

    /// Pads with `id` from now on (the model's pad id, known once the architecture has read its config).
    pub(crate) fn set_pad_id(&mut self, id: i64) {
        self.pad_id = id;
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Vocabulary token of `id`, if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Token ids of each text, special tokens included, truncated to `max_len`.
    pub fn encode_ids(&self, texts: &[&str], max_len: usize) -> Result<Vec<Vec<u32>>, ModelError> {
        self.encode_ids_with(texts, max_len, true)
    }

    /// Token ids of each text truncated to `max_len`, with or without the special tokens
    /// (`add_special_tokens=False` is how `SparseStaticEmbedding` tokenizes queries).
    pub fn encode_ids_with(&self, texts: &[&str], max_len: usize, add_special: bool) -> Result<Vec<Vec<u32>>, ModelError> {
        let mut tok = self.inner.clone();
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let enc = tok
            .encode_batch(texts.to_vec(), add_special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Pads id lists to the longest into CPU tensors.
    pub fn pad(&self, ids: &[Vec<u32>]) -> Batch {
        let b = ids.len();
        let l = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut input = vec![self.pad_id; b * l];
        let mut mask = vec![0i64; b * l];
        for (r, row) in ids.iter().enumerate() {
            let off = if self.pad_left { l - row.len() } else { 0 };
            for (c, &id) in row.iter().enumerate() {
                input[r * l + off + c] = id as i64;
                mask[r * l + off + c] = 1;
            }
        }
        let shape = [b as i64, l as i64];
        Batch {
            input_ids: Tensor::from_slice(&input).view(shape),
            token_type_ids: Tensor::zeros(shape, (Kind::Int64, Device::Cpu)),
            attention_mask: Tensor::from_slice(&mask).view(shape),
            lengths: ids.iter().map(Vec::len).collect(),
        }
    }

    /// Tokenizes and pads in one go.
    pub fn batch(&self, texts: &[&str], max_len: usize) -> Result<Batch, ModelError> {
        Ok(self.pad(&self.encode_ids(texts, max_len)?))
    }
}
