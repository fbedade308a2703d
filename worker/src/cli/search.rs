//! `splade search`: query an index written by `splade index` (memory-mapped, exact top-k).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use splade_common::eval::{InvertedIndex, SparseVec};

use super::encode::ModelArgs;
use crate::evaluate::vocab_info;
use crate::model::TextKind;

#[derive(Args, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Directory written by `splade index`.
    #[arg(long)]
    pub index: PathBuf,
    /// Query text (repeatable).
    #[arg(long = "query", required = true)]
    pub queries: Vec<String>,
    /// Hits per query.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
}

/// Runs `splade search`: prints `query_number<TAB>rank<TAB>_id<TAB>score` lines, ranked by (score
/// descending, `_id` ascending).
pub fn run_search(a: SearchArgs) -> anyhow::Result<()> {
    let model = a.model.load()?;
    let vocab = vocab_info(&model);
    let index = InvertedIndex::load(&a.index, Some(&vocab)).with_context(|| {
        format!("{}: cannot open the index with model {}", a.index.display(), a.model.model)
    })?;
    let refs: Vec<&str> = a.queries.iter().map(String::as_str).collect();
    let qs = model
        .encode(&refs, TextKind::Query, a.model.batch_size)?
        .into_iter()
        .map(|(i, v)| SparseVec::new(i, v))
        .collect::<Result<Vec<_>, _>>()?;
    let hits = index.search(&qs, a.top_k)?;
    for (qn, (q, hs)) in a.queries.iter().zip(hits).enumerate() {
        if a.queries.len() > 1 {
            println!("# {q}");
        }
        for (rank, h) in hs.iter().enumerate() {
            println!("{}\t{}\t{}\t{:.6}", qn + 1, rank + 1, index.doc_ids()[h.doc as usize], h.score);
        }
    }
    Ok(())
}
