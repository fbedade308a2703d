//! `splade index`: encode a corpus, persist the evaluator's exact inverted index (memory-mapped when
//! searched) and optionally export the vectors for Anserini, OpenSearch/Elasticsearch or Qdrant.
//!
//! Layout of `--out DIR`: the [`InvertedIndex::save`] files (`index.json` carries the model's
//! vocabulary fingerprint), `build.json` (model, window spec, counts) and one file per export:
//! `anserini/docs.jsonl`, `opensearch.ndjson` + `opensearch_mapping.json`, `qdrant.jsonl`.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;
use splade_common::eval::{
    opensearch_mapping, write_anserini, write_opensearch_bulk, write_qdrant_points, InvertedIndex,
};

use super::encode::{ModelArgs, WindowArgs};
use crate::evaluate::{encode_documents, vocab_info};

/// Search-engine formats `--export` writes.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Anserini JsonVectorCollection (integer impacts).
    Anserini,
    /// OpenSearch/Elasticsearch `_bulk` NDJSON with a `rank_features` field.
    Opensearch,
    /// Qdrant sparse-vector points.
    Qdrant,
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub windows: WindowArgs,
    /// Corpus JSONL: one {"_id", "title"?, "text"} per line (encoded as title + " " + text).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Output directory (created; existing index files are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Also export the vectors (repeatable).
    #[arg(long, value_enum)]
    pub export: Vec<ExportFormat>,
    /// Anserini impact = round-half-up(weight × factor).
    #[arg(long, default_value_t = 100.0)]
    pub quantization_factor: f64,
    /// Index name in the OpenSearch action lines.
    #[arg(long, default_value = "splade")]
    pub index_name: String,
    /// Field (OpenSearch) / named vector (Qdrant) holding the sparse vector.
    #[arg(long, default_value = "splade")]
    pub field: String,
}

/// One corpus line.
pub struct CorpusDoc {
    pub id: String,
    /// `title + " " + text`, trimmed (just `text` when there is no title), as the evaluator encodes it.
    pub text: String,
}

/// Reads a corpus JSONL; errors name the file, line and key.
pub fn read_corpus(path: &Path) -> anyhow::Result<Vec<CorpusDoc>> {
    let f = std::fs::File::open(path).with_context(|| format!("{}: cannot open corpus", path.display()))?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let at = || format!("{}:{}", path.display(), n + 1);
        let line = line.with_context(|| format!("{}: cannot read", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}: not a JSON object; want {{\"_id\", \"title\"?, \"text\"}}", at()))?;
        let id = match v.get("_id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(x)) => x.to_string(),
            _ => bail!("{}: missing \"_id\" (string or number)", at()),
        };
        let text = v.get("text").and_then(|t| t.as_str()).with_context(|| format!("{}: missing string \"text\"", at()))?;
        let title = v.get("title").and_then(|t| t.as_str()).unwrap_or("");
        if !seen.insert(id.clone()) {
            bail!("{}: duplicate _id '{id}'; corpus ids must be unique", at());
        }
        let text = if title.is_empty() { text.trim().to_string() } else { format!("{title} {text}").trim().to_string() };
        out.push(CorpusDoc { id, text });
    }
    if out.is_empty() {
        bail!("{}: empty corpus", path.display());
    }
    Ok(out)
}

fn create(path: &Path) -> anyhow::Result<BufWriter<std::fs::File>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    Ok(BufWriter::new(std::fs::File::create(path).with_context(|| format!("{}: cannot create", path.display()))?))
}

/// Runs `splade index`.
pub fn run_index(a: IndexArgs) -> anyhow::Result<()> {
    if !(a.quantization_factor.is_finite() && a.quantization_factor > 0.0) {
        bail!("--quantization-factor {}: must be a positive number (Anserini's examples use 100)", a.quantization_factor);
    }
    let corpus = read_corpus(&a.corpus)?;
    let model = a.model.load()?;
    let windows = a.windows.checked(&model)?;
    let t0 = Instant::now();
    let texts: Vec<&str> = corpus.iter().map(|d| d.text.as_str()).collect();
    let (vecs, stats) = encode_documents(&model, &texts, windows.as_ref(), a.model.batch_size)?;
    let encode_s = t0.elapsed().as_secs_f64();
    let ids: Vec<String> = corpus.iter().map(|d| d.id.clone()).collect();
    let vocab = vocab_info(&model);
    let index = InvertedIndex::build(ids.clone(), &vecs, vocab.clone())?;
    index.save(&a.out)?;
    let mut build = json!({
        "model": a.model.model,
        "corpus": a.corpus.display().to_string(),
        "documents": corpus.len(),
        "postings": index.n_postings(),
        "vocab": vocab,
        "encode_seconds": encode_s,
        "document_max_length": model.max_length(crate::model::TextKind::Document),
    });
    if let (Some(spec), Some(s)) = (&windows, &stats) {
        build["document_windows"] = json!({
            "size": spec.size, "stride": spec.stride, "max_windows": spec.max_windows,
            "windows": s.windows, "windows_per_document": s.windows_per_doc(), "max_windows_per_document": s.max_windows_per_doc,
        });
        eprintln!("windows {spec}: {} windows for {} documents ({:.2} per document)", s.windows, s.documents, s.windows_per_doc());
    }
    let bp = a.out.join("build.json");
    std::fs::write(&bp, serde_json::to_string_pretty(&build)?).with_context(|| format!("{}: cannot write", bp.display()))?;
    eprintln!(
        "indexed {} documents ({} postings, {} bytes) in {} ({:.2}s encoding)",
        index.len(),
        index.n_postings(),
        index.size_bytes(),
        a.out.display(),
        encode_s
    );
    let tokens: Vec<String> = (0..vocab.size as u32)
        .map(|i| model.dimension_name(i))
        .collect();
    for fmt in &a.export {
        let path = match fmt {
            ExportFormat::Anserini => {
                let p = a.out.join("anserini/docs.jsonl");
                let mut w = create(&p)?;
                write_anserini(&mut w, &ids, &vecs, &tokens, a.quantization_factor, Some(&texts.iter().map(|t| t.to_string()).collect::<Vec<_>>()))?;
                w.flush()?;
                p
            }
            ExportFormat::Opensearch => {
                let p = a.out.join("opensearch.ndjson");
                let mut w = create(&p)?;
                write_opensearch_bulk(&mut w, &a.index_name, &a.field, &ids, &vecs, &tokens)?;
                w.flush()?;
                let mp = a.out.join("opensearch_mapping.json");
                std::fs::write(&mp, serde_json::to_string_pretty(&opensearch_mapping(&a.field))?)
                    .with_context(|| format!("{}: cannot write", mp.display()))?;
                p
            }
            ExportFormat::Qdrant => {
                let p = a.out.join("qdrant.jsonl");
                let mut w = create(&p)?;
                write_qdrant_points(&mut w, &a.field, &ids, &vecs, vocab.size)?;
                w.flush()?;
                p
            }
        };
        eprintln!("exported {fmt:?} to {}", path.display());
    }
    Ok(())
}
