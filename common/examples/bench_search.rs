//! Search-only benchmark of the exact inverted index (`scripts/bench-search.sh` runs it in release mode).
//!
//! `bench_search TASK_DIR [N_QUERIES] [DOC_VECS.jsonl QUERY_VECS.jsonl]`: loads the task's corpus, takes
//! document and query vectors from JSON-lines files (`{"indices": [...], "values": [...]}` per line, in
//! corpus / query order; e.g. written by `splade encode`), or without them synthesises SPLADE-like vectors
//! (documents ~200 active dimensions, queries ~30, Zipf-like term choice over a 30,522-token vocabulary).
//! Queries are cycled up to N_QUERIES (default 10,000). Prints index build and search wall times.

use std::io::BufRead;
use std::time::Instant;

use splade_common::eval::{InvertedIndex, LocalDir, SparseVec, Task, VocabInfo};

const VOCAB: usize = 30_522;

fn read_vecs(path: &str) -> anyhow::Result<Vec<SparseVec>> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    f.lines()
        .map(|l| Ok(serde_json::from_str::<SparseVec>(&l?)?))
        .collect()
}

fn synthetic(n: usize, active: usize, seed: u64) -> Vec<SparseVec> {
    let mut s = seed;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|_| {
            let pairs = (0..active)
                .map(|_| {
                    // Squaring a uniform skews ids towards the front, like frequent wordpieces.
                    let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
                    (
                        (u * u * VOCAB as f64) as u32,
                        0.05 + ((next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0,
                    )
                })
                .collect();
            SparseVec::from_pairs(pairs).expect("finite")
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let task_dir = args.get(1).map(String::as_str).unwrap_or("data/norquad");
    let n_queries: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let task = Task::load(&LocalDir::new(task_dir), None, None)?;
    let (docs, base_queries) = match (args.get(3), args.get(4)) {
        (Some(d), Some(q)) => (read_vecs(d)?, read_vecs(q)?),
        _ => (
            synthetic(task.corpus.len(), 200, 1),
            synthetic(task.queries.len(), 30, 2),
        ),
    };
    anyhow::ensure!(
        docs.len() == task.corpus.len(),
        "{} doc vectors for {} documents",
        docs.len(),
        task.corpus.len()
    );
    let vocab = docs
        .iter()
        .chain(&base_queries)
        .map(SparseVec::dim_lower_bound)
        .max()
        .unwrap_or(0)
        .max(VOCAB);
    let queries: Vec<SparseVec> = base_queries
        .iter()
        .cycle()
        .take(n_queries)
        .cloned()
        .collect();
    let ids = task.corpus.iter().map(|d| d.id.clone()).collect();
    let t = Instant::now();
    let index = InvertedIndex::build(
        ids,
        &docs,
        VocabInfo {
            size: vocab,
            fingerprint: "bench".into(),
        },
    )?;
    let build = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let hits = index.search(&queries, 100)?;
    let search = t.elapsed().as_secs_f64();
    println!(
        "task {task_dir}: {} docs, {} postings, index {} bytes; build {:.3}s; search {} queries top-100 in {:.3}s \
         ({:.1} µs/query, {} threads)",
        index.len(),
        index.n_postings(),
        index.size_bytes(),
        build,
        hits.len(),
        search,
        search * 1e6 / hits.len().max(1) as f64,
        rayon::current_num_threads()
    );
    Ok(())
}
