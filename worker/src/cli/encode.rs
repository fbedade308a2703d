//! `splade encode` and `splade decode`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use crate::device::parse_device;
use crate::model::{resolve::resolve_model, LoadOptions, SparseEncoder, TextKind, WindowSpec};

/// Arguments shared by commands that load a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder, object-store URL or Hugging Face Hub id.
    #[arg(long)]
    pub model: String,
    /// auto, cpu, cuda, cuda:N or mps.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Max tokens per text (special tokens included); defaults to the model's.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Keep at most this many non-zero dimensions per embedding, as sentence-transformers'
    /// `encode(max_active_dims=…)`: the largest by absolute value (SPLADE), the autoencoder's top-k (CSR).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_active_dims: Option<i64>,
}

impl ModelArgs {
    /// Resolves and loads the model on the requested device.
    pub fn load(&self) -> anyhow::Result<SparseEncoder> {
        let dev = parse_device(&self.device).map_err(anyhow::Error::msg)?;
        let dir = resolve_model(&self.model)?;
        let opts = LoadOptions {
            max_seq_length: self.max_length,
            query_max_length: self.max_length,
            document_max_length: self.max_length,
            ..Default::default()
        };
        let mut model = SparseEncoder::load(&dir, dev, &opts).map_err(|e| match e {
            crate::model::ModelError::MaxLength { value, max, path, .. } => anyhow::anyhow!(
                "--max-length {value} is past the position table of {} (max_position_embeddings allows {max} tokens); \
                 use --max-length {max} or less",
                path.display()
            ),
            e => e.into(),
        })?;
        model.max_active_dims = self.max_active_dims;
        Ok(model)
    }
}

/// `--doc-window SIZE:STRIDE[:MAX]`, shared by `encode`, `eval` and `index`.
#[derive(Args, Debug, Clone, Default)]
pub struct WindowArgs {
    /// Encode documents as overlapping windows of SIZE text tokens (special tokens not counted), a new
    /// window every STRIDE tokens, at most MAX windows (default: no limit), combined by element-wise max.
    /// Rule: 0 < STRIDE ≤ SIZE ≤ max_length − 2. Without it documents are truncated to the max length.
    #[arg(long = "doc-window", value_name = "SIZE:STRIDE[:MAX]")]
    pub doc_window: Option<WindowSpec>,
}

impl WindowArgs {
    /// The spec, checked against the model's document max length (error names the flag).
    pub fn checked(&self, model: &SparseEncoder) -> anyhow::Result<Option<WindowSpec>> {
        if let Some(spec) = &self.doc_window {
            model.check_windows(spec, TextKind::Document).map_err(|e| anyhow::anyhow!("--doc-window: {e}"))?;
        }
        Ok(self.doc_window)
    }
}

#[derive(Args, Debug)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub windows: WindowArgs,
    /// Encode as queries (query prompt and max length).
    #[arg(long, conflicts_with_all = ["document", "doc_window"])]
    pub query: bool,
    /// Encode as documents (the default).
    #[arg(long)]
    pub document: bool,
    /// One JSON line per text: {"_id"?, "text", "indices", "values"}.
    #[arg(long)]
    pub json: bool,
    /// Read texts from FILE: one per line, or JSONL with "text" (and optional "_id").
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Texts to encode.
    pub texts: Vec<String>,
}

/// One input text with the id passed through from JSONL input.
struct InputText {
    id: Option<serde_json::Value>,
    text: String,
}

fn read_inputs(input: &Option<PathBuf>, texts: &[String]) -> anyhow::Result<Vec<InputText>> {
    let mut out: Vec<InputText> = texts.iter().map(|t| InputText { id: None, text: t.clone() }).collect();
    if let Some(path) = input {
        let f = std::fs::File::open(path).with_context(|| format!("{}: cannot open input", path.display()))?;
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.with_context(|| format!("{}:{}: cannot read", path.display(), n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            if line.trim_start().starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .with_context(|| format!("{}:{}: not valid JSON; use one JSON object or one plain text per line", path.display(), n + 1))?;
                let text = v
                    .get("text")
                    .and_then(|t| t.as_str())
                    .with_context(|| format!("{}:{}: JSON line has no string \"text\" field", path.display(), n + 1))?;
                out.push(InputText { id: v.get("_id").cloned(), text: text.to_string() });
            } else {
                out.push(InputText { id: None, text: line });
            }
        }
    }
    if out.is_empty() {
        bail!("no texts given: pass TEXT arguments or --input FILE");
    }
    Ok(out)
}

/// Encodes the texts and prints one line per text.
pub fn run_encode(a: EncodeArgs) -> anyhow::Result<()> {
    let inputs = read_inputs(&a.input, &a.texts)?;
    let model = a.model.load()?;
    let kind = if a.query { TextKind::Query } else { TextKind::Document };
    let refs: Vec<&str> = inputs.iter().map(|t| t.text.as_str()).collect();
    let progress = std::sync::Arc::new(splade_common::cli::Progress::new("encode", refs.len() as u64, "texts"));
    model.set_progress(Some(progress.clone()));
    let vecs = match a.windows.checked(&model)? {
        Some(spec) => {
            let (v, s) = model.encode_windowed(&refs, kind, &spec, a.model.batch_size)?;
            eprintln!(
                "windows {spec}: {} windows for {} documents ({:.2} per document, at most {})",
                s.windows,
                s.documents,
                s.windows_per_doc(),
                s.max_windows_per_doc
            );
            v
        }
        None => model.encode(&refs, kind, a.model.batch_size)?,
    };
    progress.finish();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (inp, (idx, val)) in inputs.iter().zip(vecs) {
        if a.json {
            let mut obj = serde_json::Map::new();
            if let Some(id) = &inp.id {
                obj.insert("_id".into(), id.clone());
            }
            obj.insert("text".into(), inp.text.clone().into());
            obj.insert("indices".into(), idx.into());
            obj.insert("values".into(), val.into());
            writeln!(out, "{}", serde_json::Value::Object(obj))?;
        } else {
            let l1: f32 = val.iter().sum();
            writeln!(out, "{} active dims, L1 {:.3}\t{}", idx.len(), l1, inp.text)?;
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens to show per text.
    #[arg(long, default_value_t = 20)]
    pub top_k: usize,
    /// Decode as queries instead of documents.
    #[arg(long)]
    pub query: bool,
    /// Texts to decode.
    #[arg(required = true)]
    pub texts: Vec<String>,
}

/// Prints the top-k (token, weight) pairs of each text.
pub fn run_decode(a: DecodeArgs) -> anyhow::Result<()> {
    let model = a.model.load()?;
    let kind = if a.query { TextKind::Query } else { TextKind::Document };
    let refs: Vec<&str> = a.texts.iter().map(String::as_str).collect();
    let vecs = model.encode(&refs, kind, a.model.batch_size)?;
    for (text, (idx, val)) in a.texts.iter().zip(vecs) {
        println!("{text}");
        for (tok, w) in top_tokens(&model, &idx, &val, a.top_k) {
            println!("  {tok:<20} {w:.4}");
        }
    }
    Ok(())
}

/// The `k` highest-weighted entries as (token, weight), ties broken by token id. A CSR model's
/// dimensions are autoencoder latents, not vocabulary tokens: they are named `latent_<id>`.
pub fn top_tokens(model: &SparseEncoder, idx: &[u32], val: &[f32], k: usize) -> Vec<(String, f32)> {
    let mut pairs: Vec<(u32, f32)> = idx.iter().copied().zip(val.iter().copied()).collect();
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    pairs
        .into_iter()
        .take(k)
        .map(|(i, w)| match model.csr() {
            Some(_) => (model.dimension_name(i), w),
            None => (model.tokenizer.id_to_token(i).unwrap_or_else(|| format!("#{i}")), w),
        })
        .collect()
}
