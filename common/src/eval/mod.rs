//! Retrieval evaluation without libtorch: task loading (BEIR and MTEB/NanoBEIR Parquet layouts), an exact
//! inverted index over sparse vectors, sentence-transformers-compatible metrics and sparsity statistics,
//! BM25, run fusion, TREC runs, MTEB result files and search-engine exporters.
//!
//! The encoder lives elsewhere; this module receives [`SparseVec`]s. The one call the CLI needs is
//! [`evaluate_run`]:
//!
//! ```no_run
//! # use splade_common::eval::*;
//! # fn encode(_: &[String]) -> Vec<SparseVec> { unimplemented!() }
//! # fn main() -> Result<(), EvalError> {
//! let task = Task::load(&LocalDir::new("data/norquad"), None, None)?;
//! let docs = encode(&task.corpus.iter().map(Doc::text).collect::<Vec<_>>());
//! let queries = encode(&task.queries.iter().map(|q| q.text.clone()).collect::<Vec<_>>());
//! # let tokens: Vec<String> = vec![];
//! let opts = EvalOptions::new(VocabInfo::from_tokens(&tokens));
//! let scores = evaluate_run(&task, &docs, &queries, &opts)?;
//! let result = scores.to_task_result(vec!["nob-Latn".into()], "local", 1.0, Default::default());
//! result.write_to_dir(std::path::Path::new("results"))?;
//! # Ok(()) }
//! ```

mod bm25;
mod export;
mod fusion;
mod hub_tasks;
mod index;
mod metrics;
mod mteb_tasks;
mod results;
mod run;
mod sparse;
mod task;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Instant;

use serde_json::{Map, Value};

pub use bm25::{stemmer_algorithm, Bm25, Bm25Flavor, Bm25Params, Tokenizer};
pub use export::{
    opensearch_mapping, quantize, write_anserini, write_opensearch_bulk, write_qdrant_points,
};
pub use fusion::{fuse, Fusion};
pub use hub_tasks::{mteb_hub_task, nanobeir_task, NANOBEIR_DATASET, NANOBEIR_NAMES};
pub use mteb_tasks::task_languages;
pub use index::{vocab_fingerprint, Hit, InvertedIndex, VocabInfo};
pub use metrics::{
    avg_flops, compute_metrics, count_vector, most_active, ActiveDims, Metrics, MetricsConfig,
    SparsityStats,
};
pub use results::{
    delta_table, read_baseline, sparsity_report, summary_table, BaselineScores, ScoreEntry,
    TaskResult, MTEB_VERSION,
};
pub use run::{rank_order, Run, RunHit};
pub use sparse::SparseVec;
pub use task::{Doc, LocalDir, Qrels, Query, Task, TaskFiles};

/// Everything that can go wrong in evaluation; each message names the file, line or key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A task directory is malformed (missing files, bad lines, duplicate or unknown ids, …).
    #[error("{0}")]
    Task(String),
    /// A sparse vector breaks the invariants of [`SparseVec`].
    #[error("invalid sparse vector: {0}")]
    InvalidVector(String),
    /// Index build, search or load failed.
    #[error("index: {0}")]
    Index(String),
    /// An index was opened with another model's vocabulary.
    #[error("vocabulary mismatch: {0}")]
    VocabMismatch(String),
    /// A run file is malformed.
    #[error("run file {0}")]
    Run(String),
    /// BM25 configuration error.
    #[error("bm25: {0}")]
    Bm25(String),
    /// A result or baseline file is malformed.
    #[error("results: {0}")]
    Results(String),
    /// An exporter was given inconsistent input.
    #[error("export: {0}")]
    Export(String),
    /// Vectors do not line up with the task.
    #[error("{0}")]
    Mismatch(String),
}

impl EvalError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Options of [`evaluate_run`].
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The vocabulary the vectors are over (size bounds the indices and scales the sparsity ratios).
    pub vocab: VocabInfo,
    /// Cut-offs; the search depth is `metrics.max_k()` (100 by default).
    pub metrics: MetricsConfig,
}

impl EvalOptions {
    /// Default cut-offs over `vocab`.
    pub fn new(vocab: VocabInfo) -> Self {
        Self {
            vocab,
            metrics: MetricsConfig::default(),
        }
    }
}

/// The outcome of evaluating one task.
#[derive(Clone, Debug)]
pub struct TaskScores {
    /// Task name.
    pub task_name: String,
    /// Evaluated split.
    pub split: String,
    /// MTEB-named metrics (`ndcg_at_10`, …).
    pub metrics: Metrics,
    /// Sparsity of the query and document vectors (absent for runs without vectors, e.g. BM25).
    pub sparsity: Option<SparsityStats>,
    /// [`InvertedIndex::size_bytes`] of the document index.
    pub index_size_bytes: Option<u64>,
    /// Number of evaluated queries.
    pub n_queries: usize,
    /// Number of corpus documents.
    pub n_docs: usize,
    /// Seconds spent building the index.
    pub index_seconds: f64,
    /// Seconds spent searching all queries.
    pub search_seconds: f64,
    /// The ranked top-`max_k` lists (write with [`Run::save_trec`], or fuse).
    pub run: Run,
    /// Counted warnings from task loading, carried into the report.
    pub warnings: Vec<String>,
}

impl TaskScores {
    /// The MTEB v2 result for this evaluation; sparsity, index size and `extra` go beside the metrics
    /// (sparsity keys as sentence-transformers names them: `query_active_dims`, `corpus_sparsity_ratio`,
    /// `avg_flops`, …).
    pub fn to_task_result(
        &self,
        languages: Vec<String>,
        dataset_revision: &str,
        evaluation_time: f64,
        mut extra: Map<String, Value>,
    ) -> TaskResult {
        if let Some(s) = &self.sparsity {
            for (prefix, d) in [("query", &s.query), ("corpus", &s.corpus)] {
                extra.insert(format!("{prefix}_active_dims"), d.mean.into());
                extra.insert(format!("{prefix}_active_dims_median"), d.median.into());
                extra.insert(format!("{prefix}_active_dims_p95"), d.p95.into());
                extra.insert(format!("{prefix}_sparsity_ratio"), d.sparsity_ratio.into());
            }
            extra.insert("avg_flops".into(), s.avg_flops.into());
            extra.insert("vocab_size".into(), s.vocab_size.into());
        }
        if let Some(b) = self.index_size_bytes {
            extra.insert("index_size_bytes".into(), b.into());
        }
        TaskResult::new(
            &self.task_name,
            &self.split,
            &self.metrics,
            languages,
            dataset_revision,
            evaluation_time,
            extra,
        )
    }
}

/// Converts index hits (one list per query, aligned with `query_ids`) into a [`Run`].
pub fn run_from_hits<'a>(
    doc_ids: &[String],
    query_ids: impl IntoIterator<Item = &'a str>,
    hits: Vec<Vec<Hit>>,
) -> Run {
    let mut run = Run::new();
    for (q, hs) in query_ids.into_iter().zip(hits) {
        run.insert(
            q,
            hs.into_iter()
                .map(|h| RunHit {
                    doc_id: doc_ids[h.doc as usize].clone(),
                    score: h.score as f64,
                })
                .collect(),
        );
    }
    run
}

/// Evaluates sparse vectors on a task: builds the exact index over `doc_vecs` (aligned with
/// `task.corpus`), retrieves the top `max_k` for `query_vecs` (aligned with `task.queries`), and computes
/// the metrics, sparsity statistics and index size.
pub fn evaluate_run(
    task: &Task,
    doc_vecs: &[SparseVec],
    query_vecs: &[SparseVec],
    opts: &EvalOptions,
) -> Result<TaskScores, EvalError> {
    if doc_vecs.len() != task.corpus.len() || query_vecs.len() != task.queries.len() {
        return Err(EvalError::Mismatch(format!(
            "task '{}' has {} documents and {} evaluated queries but {} document and {} query vectors were given",
            task.name,
            task.corpus.len(),
            task.queries.len(),
            doc_vecs.len(),
            query_vecs.len()
        )));
    }
    let t0 = Instant::now();
    let ids: Vec<String> = task.corpus.iter().map(|d| d.id.clone()).collect();
    let index = InvertedIndex::build(ids, doc_vecs, opts.vocab.clone())?;
    let index_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let hits = index.search(query_vecs, opts.metrics.max_k())?;
    let search_seconds = t1.elapsed().as_secs_f64();
    let run = run_from_hits(
        index.doc_ids(),
        task.queries.iter().map(|q| q.id.as_str()),
        hits,
    );
    let metrics = compute_metrics(
        &task.qrels,
        task.queries.iter().map(|q| q.id.as_str()),
        &run,
        &opts.metrics,
    );
    Ok(TaskScores {
        task_name: task.name.clone(),
        split: task.split.clone(),
        metrics,
        sparsity: Some(SparsityStats::compute(
            query_vecs,
            doc_vecs,
            opts.vocab.size,
        )),
        index_size_bytes: Some(index.size_bytes()),
        n_queries: task.queries.len(),
        n_docs: task.corpus.len(),
        index_seconds,
        search_seconds,
        run,
        warnings: task.warnings.clone(),
    })
}

/// Scores an existing run (BM25, fused, or read from a TREC file) on a task's evaluated queries.
pub fn evaluate_ranked(task: &Task, run: &Run, cfg: &MetricsConfig) -> TaskScores {
    TaskScores {
        task_name: task.name.clone(),
        split: task.split.clone(),
        metrics: compute_metrics(
            &task.qrels,
            task.queries.iter().map(|q| q.id.as_str()),
            run,
            cfg,
        ),
        sparsity: None,
        index_size_bytes: None,
        n_queries: task.queries.len(),
        n_docs: task.corpus.len(),
        index_seconds: 0.0,
        search_seconds: 0.0,
        run: run.clone(),
        warnings: task.warnings.clone(),
    }
}

/// BM25 run over a task (documents as [`Doc::text`]), `k` hits per evaluated query.
pub fn bm25_run(task: &Task, params: &Bm25Params, k: usize) -> Result<Run, EvalError> {
    let texts: Vec<String> = task.corpus.iter().map(Doc::text).collect();
    let bm = Bm25::build(
        task.corpus
            .iter()
            .zip(&texts)
            .map(|(d, t)| (d.id.as_str(), t.as_str())),
        params,
    )?;
    let queries: Vec<&str> = task.queries.iter().map(|q| q.text.as_str()).collect();
    let hits = bm.search(&queries, k)?;
    Ok(run_from_hits(
        bm.index().doc_ids(),
        task.queries.iter().map(|q| q.id.as_str()),
        hits,
    ))
}
