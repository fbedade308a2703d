//! Windowed documents in training (`document_windows:` in the config).
//!
//! Documents — positives and hard negatives, never queries — are split into exactly the windows
//! `splade encode --doc-window` uses ([`SparseEncoder::window_ids`]: `size` text tokens a window, a new
//! one every `stride` tokens, at most `max_windows`). `document_windows.training_mode` picks what the
//! model sees:
//!
//! - `all`: every window of a document goes through the model (all windows of a micro-batch in one
//!   forward pass), and the document embedding is the element-wise max over its windows' SPLADE
//!   vectors. The max is differentiable the way SPLADE's max pooling over tokens is (`max_dim`: the
//!   gradient of each vocabulary entry goes to the window that won it), so a document embeds as if its
//!   token set were the union of its windows' tokens, each token scored in its own window's context —
//!   the vector encoding and evaluation compute with the same windows.
//! - `sample`: one window per document per step. The window is a pure function of (seed, optimizer
//!   step, document text), so a resumed run replays the choice, gradient cache's two passes see the
//!   same window, and the choice does not depend on how the batch is split into micro-batches or ranks.
//!
//! The cost — windows encoded per document — is counted in [`WindowCost`] and logged per step as
//! `train/windows_per_doc` (and `train/windows_available_per_doc`, what `all` would have encoded).

use std::sync::atomic::{AtomicU64, Ordering};

use splade_common::config::{Config, WindowTrainingMode};
use tch::Tensor;

use super::{other, TrainError};
use crate::model::{SparseEncoder, TextKind, WindowSpec};

/// How training windows its documents: the window shape and the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainingWindows {
    pub spec: WindowSpec,
    pub mode: WindowTrainingMode,
}

impl TrainingWindows {
    /// The windowing `cfg.document_windows` asks for; `None` when the section is absent.
    pub fn from_config(cfg: &Config) -> Option<Self> {
        cfg.document_windows.as_ref().map(|w| Self { spec: WindowSpec::from(w), mode: w.training_mode })
    }

    /// Checks that a window (plus prompt and special tokens) fits `model`'s document max length; the
    /// error names the config file and the `document_windows` keys.
    pub fn check(&self, model: &SparseEncoder, origin: &str) -> Result<(), TrainError> {
        model
            .check_windows(&self.spec, TextKind::Document)
            .map_err(|e| other(format!("{origin}: `document_windows` (size:stride:max_windows): {e}")))
    }
}

/// Index of the window `sample` mode trains on for `text` at optimizer step `step` (0-based), among
/// `n_windows` (≥ 1) windows: a hash of (seed, step, text), uniform over the windows and stable across
/// runs, platforms and Rust versions.
pub fn sampled_window(seed: u64, step: u64, text: &str, n_windows: usize) -> usize {
    if n_windows <= 1 {
        return 0;
    }
    // FNV-1a over the text, then splitmix64 over (seed, step, text hash): fixed arithmetic, unlike
    // std's hashers, whose output may change between releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step.rotate_left(32) ^ h;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % n_windows as u64) as usize
}

/// Document embeddings of one forward pass and what they cost.
pub struct DocumentEmbeddings {
    /// `[N, V]`, one row per input text, in input order; differentiable when gradients are enabled.
    pub embeddings: Tensor,
    /// Tokens through the model (special tokens included, padding not).
    pub tokens: usize,
    /// Sequences through the model (windows; one per text without windowing).
    pub windows: usize,
    /// Windows the texts have (up to `max_windows`), whichever mode encoded them.
    pub windows_available: usize,
}

/// Embeds documents for training: plain truncated encoding when `windows` is `None` (exactly
/// [`SparseEncoder::tokenize`], or the batch `pretokenized` gives, + [`SparseEncoder::forward`]), else windowed
/// as the module describes.
/// `seed` and `step` (the 0-based optimizer step) choose the window in `sample` mode.
pub fn embed_documents(
    model: &SparseEncoder,
    texts: &[&str],
    windows: Option<&TrainingWindows>,
    pretokenized: Option<crate::model::Batch>,
    seed: u64,
    step: u64,
    train: bool,
) -> Result<DocumentEmbeddings, TrainError> {
    let dev = model.device();
    let Some(w) = windows else {
        // `pretokenized`: the same texts tokenized ahead of time (only without windows).
        let batch = match pretokenized {
            Some(b) => b,
            None => model.tokenize(texts, TextKind::Document)?,
        }
        .to(dev);
        let tokens = batch.lengths.iter().sum();
        let embeddings = model.forward(&batch, train);
        return Ok(DocumentEmbeddings { embeddings, tokens, windows: texts.len(), windows_available: texts.len() });
    };
    // Rows of the forward batch and, per text, its first row and row count (contiguous).
    let mut rows: Vec<Vec<u32>> = Vec::new();
    let mut groups: Vec<(i64, i64)> = Vec::with_capacity(texts.len());
    let mut available = 0;
    for text in texts {
        let mut ids = model.window_ids(text, TextKind::Document, &w.spec)?;
        available += ids.len();
        let start = rows.len() as i64;
        match w.mode {
            WindowTrainingMode::All => {
                groups.push((start, ids.len() as i64));
                rows.append(&mut ids);
            }
            WindowTrainingMode::Sample => {
                let k = sampled_window(seed, step, text, ids.len());
                groups.push((start, 1));
                rows.push(ids.swap_remove(k));
            }
        }
    }
    let batch = model.tokenizer.pad(&rows).to(dev);
    let tokens = batch.lengths.iter().sum();
    let emb = model.forward(&batch, train);
    let embeddings = max_over_groups(&emb, &groups);
    Ok(DocumentEmbeddings { embeddings, tokens, windows: rows.len(), windows_available: available })
}

/// Row-wise max of `emb` [R, V] over each group of contiguous rows `(start, len)`: [groups, V].
/// Groups are padded to the longest by repeating their first row (a repeated row cannot change a max,
/// and its gradient flows back to the row it copies), then reduced with `max_dim`, so each vocabulary
/// entry's gradient goes to one winning window, as in SPLADE's max pooling over tokens.
fn max_over_groups(emb: &Tensor, groups: &[(i64, i64)]) -> Tensor {
    if groups.iter().enumerate().all(|(i, &(s, l))| l == 1 && s == i as i64) && groups.len() as i64 == emb.size()[0] {
        return emb.shallow_clone();
    }
    let width = groups.iter().map(|g| g.1).max().unwrap_or(1);
    let idx: Vec<i64> = groups.iter().flat_map(|&(s, l)| (0..width).map(move |j| if j < l { s + j } else { s })).collect();
    let idx = Tensor::from_slice(&idx).to_device(emb.device());
    let v = emb.size()[1];
    emb.index_select(0, &idx).view([groups.len() as i64, width, v]).max_dim(1, false).0
}

/// Windows encoded and available per document since the last [`WindowCost::take`]. Atomic so the
/// trainer can count through `&self` while embedding.
#[derive(Debug, Default)]
pub struct WindowCost {
    documents: AtomicU64,
    windows: AtomicU64,
    available: AtomicU64,
}

impl WindowCost {
    /// Counts one embedding call.
    pub fn add(&self, documents: usize, d: &DocumentEmbeddings) {
        self.documents.fetch_add(documents as u64, Ordering::Relaxed);
        self.windows.fetch_add(d.windows as u64, Ordering::Relaxed);
        self.available.fetch_add(d.windows_available as u64, Ordering::Relaxed);
    }

    /// Mean (windows encoded, windows available) per document since the last call, and resets;
    /// `None` when no document was counted. Gradient cache embeds each document twice, which scales
    /// both counts alike, so the means are per document either way.
    pub fn take(&self) -> Option<(f64, f64)> {
        let d = self.documents.swap(0, Ordering::Relaxed);
        let w = self.windows.swap(0, Ordering::Relaxed);
        let a = self.available.swap(0, Ordering::Relaxed);
        (d > 0).then(|| (w as f64 / d as f64, a as f64 / d as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_window_is_deterministic_and_spreads() {
        let a: Vec<usize> = (0..64).map(|s| sampled_window(42, s, "a long document", 5)).collect();
        let b: Vec<usize> = (0..64).map(|s| sampled_window(42, s, "a long document", 5)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&k| k < 5));
        for k in 0..5 {
            assert!(a.contains(&k), "window {k} never drawn in 64 steps: {a:?}");
        }
        let other_seed: Vec<usize> = (0..64).map(|s| sampled_window(7, s, "a long document", 5)).collect();
        assert_ne!(a, other_seed, "the seed must change the draw");
        assert_eq!(sampled_window(42, 3, "x", 1), 0);
    }

    #[test]
    fn max_over_groups_takes_each_groups_max() {
        let emb = Tensor::from_slice(&[1f32, 5., 3., 2., 0., 7., 4., 4.]).view([4, 2]);
        let m = max_over_groups(&emb, &[(0, 3), (3, 1)]);
        assert_eq!(Vec::<f32>::try_from(m.flatten(0, -1)).unwrap(), vec![3., 7., 4., 4.]);
        let same = max_over_groups(&emb, &[(0, 1), (1, 1), (2, 1), (3, 1)]);
        assert_eq!(Vec::<f32>::try_from(same.flatten(0, -1)).unwrap(), Vec::<f32>::try_from(emb.flatten(0, -1)).unwrap());
    }
}
