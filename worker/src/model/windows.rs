//! Long documents as overlapping token windows, combined by element-wise max.
//!
//! A document's text (prompt excluded) is tokenized once without special tokens. Window `i` covers
//! text tokens `[i·stride, i·stride + size)`; windows start every `stride` tokens until one reaches the
//! end of the text (so every token is in at least one window), capped at `max_windows`. Each window is
//! `prompt tokens + window tokens`, and the tokenizer's post-processor adds the special tokens
//! (`[CLS] … [SEP]` for BERT), so a window is never longer than `prompt + size + 2` tokens.
//!
//! The document vector is the element-wise max over its windows' SPLADE vectors — the same max SPLADE
//! pooling takes over tokens, so a document that fits in one window gets exactly the vector
//! [`SparseEncoder::encode`] gives it (up to batch padding rounding).
//!
//! The prompt is prepended to every window (tokenized on its own; WordPiece splits on whitespace, so
//! for prompts ending in a space or punctuation this equals tokenizing `prompt + text`).

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};
use tokenizers::{Encoding, Token};

use super::{dense_rows_to_sparse, ModelError, SparseEncoder, TextKind};
use splade_common::config::DocumentWindowsConfig;

/// How documents are split: `size` text tokens per window, a new window every `stride` tokens, at most
/// `max_windows` windows (`None` = as many as the text needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub size: usize,
    pub stride: usize,
    pub max_windows: Option<usize>,
}

/// A window spec that cannot work; the message names the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window spec '{spec}': {rule}")]
pub struct WindowSpecError {
    pub spec: String,
    pub rule: String,
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.size, self.stride)?;
        if let Some(m) = self.max_windows {
            write!(f, ":{m}")?;
        }
        Ok(())
    }
}

impl FromStr for WindowSpec {
    type Err = WindowSpecError;

    /// Parses `SIZE:STRIDE[:MAX]` (positive integers, `0 < STRIDE ≤ SIZE`, `MAX ≥ 1`). The bound by the
    /// model's max length is checked by [`WindowSpec::validate`] once the model is known.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |rule: &str| WindowSpecError { spec: s.to_string(), rule: rule.to_string() };
        let parts: Vec<&str> = s.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(err("expected SIZE:STRIDE or SIZE:STRIDE:MAX, e.g. 254:127 or 254:127:8"));
        }
        let num = |p: &str, what: &str| -> Result<usize, WindowSpecError> {
            p.trim().parse::<usize>().map_err(|_| err(&format!("{what} '{p}' is not a non-negative integer")))
        };
        let size = num(parts[0], "SIZE")?;
        let stride = num(parts[1], "STRIDE")?;
        let max_windows = parts.get(2).map(|p| num(p, "MAX")).transpose()?;
        let spec = WindowSpec { size, stride, max_windows };
        spec.check_shape().map_err(|rule| err(&rule))?;
        Ok(spec)
    }
}

impl From<&DocumentWindowsConfig> for WindowSpec {
    fn from(c: &DocumentWindowsConfig) -> Self {
        WindowSpec { size: c.size, stride: c.stride, max_windows: (c.max_windows > 0).then_some(c.max_windows) }
    }
}

impl WindowSpec {
    fn check_shape(&self) -> Result<(), String> {
        if self.stride == 0 {
            return Err("STRIDE must be > 0 (rule: 0 < stride ≤ size ≤ max_length − 2)".into());
        }
        if self.stride > self.size {
            return Err(format!(
                "STRIDE {} is larger than SIZE {} and would skip tokens (rule: 0 < stride ≤ size ≤ max_length − 2)",
                self.stride, self.size
            ));
        }
        if self.max_windows == Some(0) {
            return Err("MAX must be ≥ 1 (leave it out for no limit)".into());
        }
        Ok(())
    }

    /// Checks `0 < stride ≤ size ≤ max_length − 2 − prompt_tokens` (the window plus the prompt plus
    /// `[CLS]`/`[SEP]` must fit the model's document max length).
    pub fn validate(&self, max_length: usize, prompt_tokens: usize) -> Result<(), WindowSpecError> {
        let err = |rule: String| WindowSpecError { spec: self.to_string(), rule };
        self.check_shape().map_err(err)?;
        let room = max_length.saturating_sub(2 + prompt_tokens);
        if self.size > room {
            let prompt = if prompt_tokens > 0 { format!(" − {prompt_tokens} prompt tokens") } else { String::new() };
            return Err(err(format!(
                "SIZE {} exceeds the document max length {max_length} − 2 special tokens{prompt} = {room} \
                 (rule: 0 < stride ≤ size ≤ max_length − 2); use SIZE ≤ {room}",
                self.size
            )));
        }
        Ok(())
    }

    /// Start offsets (in text tokens) of the windows of a text of `n_tokens` tokens. Always at least one
    /// window; windows start every `stride` tokens until one reaches the end.
    pub fn starts(&self, n_tokens: usize) -> Vec<usize> {
        let mut out = vec![0];
        while out.last().unwrap() + self.size < n_tokens && self.max_windows.is_none_or(|m| out.len() < m) {
            out.push(out.last().unwrap() + self.stride);
        }
        out
    }
}

/// What windowing cost: how many windows were encoded for how many documents.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    pub documents: usize,
    pub windows: usize,
    /// The most windows any one document got.
    pub max_windows_per_doc: usize,
    /// Text tokens beyond the last window of capped documents (0 when `max_windows` is unset).
    pub tokens_dropped: usize,
}

impl WindowStats {
    /// Mean windows per document.
    pub fn windows_per_doc(&self) -> f64 {
        if self.documents == 0 {
            0.0
        } else {
            self.windows as f64 / self.documents as f64
        }
    }
}

impl SparseEncoder {
    /// The token ids of each window of `text` encoded as `kind`, special tokens included, exactly as
    /// [`SparseEncoder::encode_windowed`] feeds them to the model. Errors when `spec` does not fit the
    /// max length of `kind`.
    pub fn window_ids(&self, text: &str, kind: TextKind, spec: &WindowSpec) -> Result<Vec<Vec<u32>>, ModelError> {
        let prompt = self.prompt_encoding(kind)?;
        spec.validate(self.max_length(kind), prompt.len())?;
        self.window_ids_unchecked(text, &prompt, spec)
    }

    /// Checks that `spec` fits this model's max length for `kind` (prompt and special tokens included).
    pub fn check_windows(&self, spec: &WindowSpec, kind: TextKind) -> Result<(), ModelError> {
        let prompt = self.prompt_encoding(kind)?;
        Ok(spec.validate(self.max_length(kind), prompt.len())?)
    }

    fn window_ids_unchecked(&self, text: &str, prompt: &[Token], spec: &WindowSpec) -> Result<Vec<Vec<u32>>, ModelError> {
        let tok = self.tokenizer.inner();
        let enc = tok.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let (ids, pieces, offsets) = (enc.get_ids(), enc.get_tokens(), enc.get_offsets());
        let mut out = Vec::new();
        for s in spec.starts(ids.len()) {
            let e = (s + spec.size).min(ids.len());
            let mut toks = prompt.to_vec();
            toks.extend((s..e).map(|i| Token::new(ids[i], pieces[i].clone(), offsets[i])));
            let window = tok
                .post_process(Encoding::from_tokens(toks, 0), None, true)
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            out.push(window.get_ids().to_vec());
        }
        Ok(out)
    }

    fn prompt_encoding(&self, kind: TextKind) -> Result<Vec<Token>, ModelError> {
        // Every windowing entry point passes here. An inference-free model's queries are a bag of
        // tokens looked up in its static table: there is no encoder to window.
        if kind == TextKind::Query && self.is_inference_free() {
            return Err(ModelError::Unsupported(
                "document windows apply to documents; this inference-free model encodes queries with its static \
                 token table (no length limit to window around): encode queries without windows"
                    .into(),
            ));
        }
        let prompt = self.prompt(kind);
        if prompt.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self.tokenizer.inner().encode(prompt, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_tokens())
            .zip(enc.get_offsets())
            .map(|((&id, t), &o)| Token::new(id, t.clone(), o))
            .collect())
    }

    /// Encodes texts as windowed documents (or queries): one sparse vector per text, the element-wise
    /// max of its windows' vectors. Forward passes hold up to `batch_size` windows; a text's windows go
    /// in the same pass unless it alone has more than `batch_size` windows.
    pub fn encode_windowed(
        &self,
        texts: &[&str],
        kind: TextKind,
        spec: &WindowSpec,
        batch_size: usize,
    ) -> Result<(Vec<(Vec<u32>, Vec<f32>)>, WindowStats), ModelError> {
        let _guard = tch::no_grad_guard();
        let prompt = self.prompt_encoding(kind)?;
        spec.validate(self.max_length(kind), prompt.len())?;
        let batch_size = batch_size.max(1);
        let mut stats = WindowStats { documents: texts.len(), ..Default::default() };
        let mut out: Vec<Option<(Vec<u32>, Vec<f32>)>> = vec![None; texts.len()];
        // (document, window ids) waiting for a forward pass.
        let mut pending: Vec<(usize, Vec<u32>)> = Vec::new();
        let flush = |pending: &mut Vec<(usize, Vec<u32>)>, out: &mut Vec<Option<(Vec<u32>, Vec<f32>)>>| -> Result<(), ModelError> {
            if pending.is_empty() {
                return Ok(());
            }
            let ids: Vec<Vec<u32>> = pending.iter().map(|(_, w)| w.clone()).collect();
            let batch = self.tokenizer.pad(&ids).to(self.device());
            let emb = self.forward(&batch, false);
            // Max over each document's (contiguous) rows on the device, then one copy to the host.
            let mut groups: Vec<(usize, i64, i64)> = Vec::new();
            for (row, (doc, _)) in pending.iter().enumerate() {
                match groups.last_mut() {
                    Some((d, _, len)) if *d == *doc => *len += 1,
                    _ => groups.push((*doc, row as i64, 1)),
                }
            }
            let pooled: Vec<tch::Tensor> = groups.iter().map(|&(_, s, l)| emb.narrow(0, s, l).amax([0i64].as_slice(), false)).collect();
            let pooled = tch::Tensor::stack(&pooled, 0).to_device(Device::Cpu).to_kind(Kind::Float);
            for ((doc, _, _), vec) in groups.iter().zip(dense_rows_to_sparse(&pooled)) {
                let slot = &mut out[*doc];
                *slot = Some(match slot.take() {
                    None => vec,
                    Some(prev) => sparse_max(&prev, &vec),
                });
            }
            pending.clear();
            Ok(())
        };
        for (d, text) in texts.iter().enumerate() {
            let windows = self.window_ids_unchecked(text, &prompt, spec)?;
            stats.windows += windows.len();
            stats.max_windows_per_doc = stats.max_windows_per_doc.max(windows.len());
            if let Some(m) = spec.max_windows {
                if windows.len() == m {
                    let n = self.tokenizer.inner().encode(*text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?.len();
                    stats.tokens_dropped += n.saturating_sub((m - 1) * spec.stride + spec.size);
                }
            }
            if pending.len() + windows.len() > batch_size {
                flush(&mut pending, &mut out)?;
            }
            for w in windows {
                if pending.len() == batch_size {
                    flush(&mut pending, &mut out)?;
                }
                pending.push((d, w));
            }
            self.report_progress(1);
        }
        flush(&mut pending, &mut out)?;
        Ok((out.into_iter().map(|v| v.expect("every text has at least one window")).collect(), stats))
    }
}

/// Element-wise max of two sparse vectors with ascending indices (absent entries are 0; SPLADE
/// values are non-negative, so the union of supports is kept).
pub fn sparse_max(a: &(Vec<u32>, Vec<f32>), b: &(Vec<u32>, Vec<f32>)) -> (Vec<u32>, Vec<f32>) {
    let (mut i, mut j) = (0, 0);
    let (mut idx, mut val) = (Vec::new(), Vec::new());
    while i < a.0.len() || j < b.0.len() {
        let take_a = j == b.0.len() || (i < a.0.len() && a.0[i] < b.0[j]);
        let take_b = i == a.0.len() || (j < b.0.len() && b.0[j] < a.0[i]);
        if take_a {
            idx.push(a.0[i]);
            val.push(a.1[i].max(0.0));
            i += 1;
        } else if take_b {
            idx.push(b.0[j]);
            val.push(b.1[j].max(0.0));
            j += 1;
        } else {
            idx.push(a.0[i]);
            val.push(a.1[i].max(b.1[j]));
            i += 1;
            j += 1;
        }
    }
    (idx, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_specs() {
        assert_eq!("254:127".parse::<WindowSpec>().unwrap(), WindowSpec { size: 254, stride: 127, max_windows: None });
        assert_eq!("8:4:3".parse::<WindowSpec>().unwrap().max_windows, Some(3));
        for bad in ["254", "a:1", "4:0", "4:5", "4:2:0", "1:2:3:4", ""] {
            assert!(bad.parse::<WindowSpec>().is_err(), "{bad} should be rejected");
        }
        let e = "128:0".parse::<WindowSpec>().unwrap_err().to_string();
        assert!(e.contains("128:0") && e.contains("stride"), "{e}");
        let e = WindowSpec { size: 300, stride: 100, max_windows: None }.validate(256, 0).unwrap_err().to_string();
        assert!(e.contains("300") && e.contains("254"), "{e}");
    }

    #[test]
    fn starts_cover_the_text() {
        let s = WindowSpec { size: 4, stride: 2, max_windows: None };
        assert_eq!(s.starts(0), vec![0]);
        assert_eq!(s.starts(4), vec![0]);
        assert_eq!(s.starts(5), vec![0, 2]);
        assert_eq!(s.starts(9), vec![0, 2, 4, 6]);
        assert_eq!(WindowSpec { max_windows: Some(2), ..s }.starts(9), vec![0, 2]);
    }

    #[test]
    fn sparse_max_unions_supports() {
        let a = (vec![1, 3], vec![0.5, 2.0]);
        let b = (vec![0, 3, 7], vec![1.0, 1.5, 0.25]);
        assert_eq!(sparse_max(&a, &b), (vec![0, 1, 3, 7], vec![1.0, 0.5, 2.0, 0.25]));
    }
}
