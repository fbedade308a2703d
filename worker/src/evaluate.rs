//! Retrieval evaluation of a loaded encoder: encode a task's corpus and queries, then hand the
//! sparse vectors to `splade_common::eval` (exact inverted index, MTEB metrics, sparsity).
//!
//! Corpus texts are `title + " " + text` (what sentence-transformers' evaluator is usually fed),
//! encoded as documents; queries are encoded as queries. Vectors are exactly what
//! [`SparseEncoder::encode`] returns.

use std::time::Instant;

use splade_common::eval::{evaluate_run, Doc, EvalError, EvalOptions, SparseVec, Task, TaskScores, VocabInfo};

use crate::model::{ModelError, SparseEncoder, TextKind, WindowSpec, WindowStats};

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// Vectors of one task plus how long encoding took.
pub struct EncodedTask {
    pub docs: Vec<SparseVec>,
    pub queries: Vec<SparseVec>,
    pub encode_docs_seconds: f64,
    pub encode_queries_seconds: f64,
    /// Window counts when documents were windowed (`None` = truncated to the max length).
    pub windows: Option<WindowStats>,
}

/// The model's vocabulary as the evaluator sees it (size and token strings for fingerprints/exports).
pub fn vocab_info(model: &SparseEncoder) -> VocabInfo {
    let tokens: Vec<String> = (0..model.vocab_size() as u32)
        .map(|i| model.dimension_name(i))
        .collect();
    VocabInfo::from_tokens(&tokens)
}

fn to_sparse(v: Vec<(Vec<u32>, Vec<f32>)>) -> Result<Vec<SparseVec>, EvalError> {
    v.into_iter().map(|(i, x)| SparseVec::new(i, x)).collect()
}

/// Encodes `texts` of `kind` into evaluator vectors.
pub fn encode_texts(model: &SparseEncoder, texts: &[&str], kind: TextKind, batch_size: usize) -> Result<Vec<SparseVec>, EvaluateError> {
    Ok(to_sparse(model.encode(texts, kind, batch_size)?)?)
}

/// Encodes documents, windowed by `windows` when given (element-wise max over windows), truncated to
/// the document max length otherwise.
pub fn encode_documents(
    model: &SparseEncoder,
    texts: &[&str],
    windows: Option<&WindowSpec>,
    batch_size: usize,
) -> Result<(Vec<SparseVec>, Option<WindowStats>), EvaluateError> {
    match windows {
        None => Ok((encode_texts(model, texts, TextKind::Document, batch_size)?, None)),
        Some(spec) => {
            let (v, stats) = model.encode_windowed(texts, TextKind::Document, spec, batch_size)?;
            Ok((to_sparse(v)?, Some(stats)))
        }
    }
}

/// Encodes a task's corpus (as documents) and queries.
pub fn encode_task(model: &SparseEncoder, task: &Task, batch_size: usize) -> Result<EncodedTask, EvaluateError> {
    encode_task_windowed(model, task, None, batch_size)
}

/// [`encode_task`] with documents optionally split into windows.
pub fn encode_task_windowed(
    model: &SparseEncoder,
    task: &Task,
    windows: Option<&WindowSpec>,
    batch_size: usize,
) -> Result<EncodedTask, EvaluateError> {
    let t0 = Instant::now();
    let doc_texts: Vec<String> = task.corpus.iter().map(Doc::text).collect();
    let refs: Vec<&str> = doc_texts.iter().map(String::as_str).collect();
    let (docs, window_stats) = encode_documents(model, &refs, windows, batch_size)?;
    let encode_docs_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let q: Vec<&str> = task.queries.iter().map(|q| q.text.as_str()).collect();
    let queries = encode_texts(model, &q, TextKind::Query, batch_size)?;
    Ok(EncodedTask {
        docs,
        queries,
        encode_docs_seconds,
        encode_queries_seconds: t1.elapsed().as_secs_f64(),
        windows: window_stats,
    })
}

/// Encodes and evaluates one task.
pub fn evaluate_model(model: &SparseEncoder, task: &Task, batch_size: usize) -> Result<(TaskScores, EncodedTask), EvaluateError> {
    evaluate_model_windowed(model, task, None, batch_size)
}

/// [`evaluate_model`] with documents optionally split into windows.
pub fn evaluate_model_windowed(
    model: &SparseEncoder,
    task: &Task,
    windows: Option<&WindowSpec>,
    batch_size: usize,
) -> Result<(TaskScores, EncodedTask), EvaluateError> {
    let enc = encode_task_windowed(model, task, windows, batch_size)?;
    let scores = evaluate_run(task, &enc.docs, &enc.queries, &EvalOptions::new(vocab_info(model)))?;
    Ok((scores, enc))
}
