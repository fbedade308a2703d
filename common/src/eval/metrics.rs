//! Retrieval metrics and sparsity statistics, computed the way sentence-transformers 6.2's
//! `InformationRetrievalEvaluator.compute_metrics` / `SparseInformationRetrievalEvaluator` compute them.
//!
//! Per evaluated query (one with at least one relevant document), on its top `max_k` hits:
//! - `accuracy@k` (MTEB: `hit_rate@k`): 1 if a relevant document is in the top k.
//! - `precision@k` = relevant in top k / k; `recall@k` = relevant in top k / number of relevant documents
//!   (documents missing from the corpus included, so they cap recall as in ST and pytrec_eval).
//! - `mrr@k` = 1 / rank of the first relevant document within the top k, else 0.
//! - `ndcg@k` = DCG@k / IDCG@k with `DCG = Σ gain_i / log2(i + 1)` (i 1-based) and the ideal taken over all
//!   judged grades. The gain is the qrels grade (grades ≤ 0 give 0), which is pytrec_eval's `ndcg_cut`
//!   (what MTEB reports) and, for binary qrels, exactly ST's binary nDCG. For graded qrels ST would ignore
//!   the grades; we follow MTEB there.
//! - `map@k` = Σ over relevant hits in the top k of precision at their rank, divided by
//!   `min(k, number of relevant)`: ST's definition (pytrec_eval's `map_cut` divides by the number of
//!   relevant documents; the two agree whenever a query has at most k relevant documents).
//!
//! Each metric is the mean over evaluated queries; a query with no hits scores 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Qrels, Run, SparseVec};

/// Which cut-offs to report. The default is ST's set widened to the list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsConfig {
    /// Cut-offs for `ndcg@k`.
    pub ndcg_at: Vec<usize>,
    /// Cut-offs for `mrr@k`.
    pub mrr_at: Vec<usize>,
    /// Cut-offs for `map@k`.
    pub map_at: Vec<usize>,
    /// Cut-offs for `precision@k` and `recall@k`.
    pub precision_recall_at: Vec<usize>,
    /// Cut-offs for `accuracy@k`.
    pub accuracy_at: Vec<usize>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            ndcg_at: vec![1, 3, 5, 10, 100],
            mrr_at: vec![10],
            map_at: vec![100],
            precision_recall_at: vec![1, 3, 5, 10, 100],
            accuracy_at: vec![1, 3, 5, 10, 100],
        }
    }
}

impl MetricsConfig {
    /// The deepest cut-off: how many hits per query the search must return.
    pub fn max_k(&self) -> usize {
        [
            &self.ndcg_at,
            &self.mrr_at,
            &self.map_at,
            &self.precision_recall_at,
            &self.accuracy_at,
        ]
        .iter()
        .flat_map(|v| v.iter().copied())
        .max()
        .unwrap_or(10)
    }
}

/// Metric name (MTEB style: `ndcg_at_10`, `mrr_at_10`, `map_at_100`, `recall_at_5`, `precision_at_5`,
/// `accuracy_at_1`, `hit_rate_at_1`) → mean value.
pub type Metrics = BTreeMap<String, f64>;

/// Computes the metrics of `run` against `qrels` for the queries listed in `query_ids` (each must have a
/// relevant document; see [`super::Task::queries`]). Only the first `cfg.max_k()` hits of each query count.
pub fn compute_metrics<'a>(
    qrels: &Qrels,
    query_ids: impl IntoIterator<Item = &'a str>,
    run: &Run,
    cfg: &MetricsConfig,
) -> Metrics {
    let max_k = cfg.max_k();
    let mut sums: Metrics = BTreeMap::new();
    let mut n = 0usize;
    let empty = BTreeMap::new();
    for qid in query_ids {
        n += 1;
        let judged = qrels.get(qid).unwrap_or(&empty);
        let hits = run.get(qid).unwrap_or(&[]);
        let hits = &hits[..hits.len().min(max_k)];
        let gains: Vec<f64> = hits
            .iter()
            .map(|h| judged.get(&h.doc_id).map_or(0.0, |&g| g.max(0) as f64))
            .collect();
        let n_rel = judged.values().filter(|&&g| g > 0).count();
        let mut ideal: Vec<f64> = judged
            .values()
            .filter(|&&g| g > 0)
            .map(|&g| g as f64)
            .collect();
        ideal.sort_by(|a, b| b.total_cmp(a));
        let rel_in = |k: usize| gains.iter().take(k).filter(|&&g| g > 0.0).count();

        for &k in &cfg.accuracy_at {
            let v = if rel_in(k) > 0 { 1.0 } else { 0.0 };
            *sums.entry(format!("accuracy_at_{k}")).or_default() += v;
            *sums.entry(format!("hit_rate_at_{k}")).or_default() += v;
        }
        for &k in &cfg.precision_recall_at {
            let c = rel_in(k) as f64;
            *sums.entry(format!("precision_at_{k}")).or_default() += c / k as f64;
            *sums.entry(format!("recall_at_{k}")).or_default() +=
                if n_rel > 0 { c / n_rel as f64 } else { 0.0 };
        }
        for &k in &cfg.mrr_at {
            let rr = gains
                .iter()
                .take(k)
                .position(|&g| g > 0.0)
                .map_or(0.0, |r| 1.0 / (r + 1) as f64);
            *sums.entry(format!("mrr_at_{k}")).or_default() += rr;
        }
        for &k in &cfg.ndcg_at {
            let idcg = dcg(&ideal, k);
            let v = if idcg > 0.0 {
                dcg(&gains, k) / idcg
            } else {
                0.0
            };
            *sums.entry(format!("ndcg_at_{k}")).or_default() += v;
        }
        for &k in &cfg.map_at {
            let (mut correct, mut sum) = (0usize, 0.0);
            for (r, &g) in gains.iter().take(k).enumerate() {
                if g > 0.0 {
                    correct += 1;
                    sum += correct as f64 / (r + 1) as f64;
                }
            }
            let denom = k.min(n_rel);
            *sums.entry(format!("map_at_{k}")).or_default() +=
                if denom > 0 { sum / denom as f64 } else { 0.0 };
        }
    }
    if n > 0 {
        for v in sums.values_mut() {
            *v /= n as f64;
        }
    }
    sums
}

fn dcg(gains: &[f64], k: usize) -> f64 {
    gains
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| g / ((i + 2) as f64).log2())
        .sum()
}

/// Distribution of active (non-zero) dimensions over a set of vectors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActiveDims {
    /// Mean number of active dimensions (ST's `active_dims`).
    pub mean: f64,
    /// Median (numpy's linear-interpolation percentile 50).
    pub median: f64,
    /// 95th percentile (numpy's linear interpolation).
    pub p95: f64,
    /// Smallest and largest counts.
    pub min: usize,
    /// Largest count.
    pub max: usize,
    /// `1 − mean / vocab_size` (ST's `sparsity_ratio`).
    pub sparsity_ratio: f64,
}

impl ActiveDims {
    /// Statistics of `vecs` over a vocabulary of `vocab_size` dimensions.
    pub fn of(vecs: &[SparseVec], vocab_size: usize) -> Self {
        let mut counts: Vec<usize> = vecs.iter().map(SparseVec::nnz).collect();
        if counts.is_empty() {
            return Self {
                sparsity_ratio: 1.0,
                ..Self::default()
            };
        }
        counts.sort_unstable();
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        Self {
            mean,
            median: percentile(&counts, 50.0),
            p95: percentile(&counts, 95.0),
            min: counts[0],
            max: counts[counts.len() - 1],
            sparsity_ratio: if vocab_size > 0 {
                1.0 - mean / vocab_size as f64
            } else {
                1.0
            },
        }
    }
}

/// numpy's default (linear) percentile of sorted values.
fn percentile(sorted: &[usize], p: f64) -> f64 {
    let pos = (sorted.len() - 1) as f64 * p / 100.0;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = pos - lo as f64;
    sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * frac
}

/// Sparsity report of an evaluation, as `SparseInformationRetrievalEvaluator` reports it plus the
/// distribution and the index size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparsityStats {
    /// Active dimensions of the evaluated queries.
    pub query: ActiveDims,
    /// Active dimensions of the corpus documents.
    pub corpus: ActiveDims,
    /// ST's `avg_flops`: `Σ_j (q_j / n_q)(d_j / n_d)` where `q_j`, `d_j` count the queries and documents
    /// with dimension j active — the expected number of multiplications per query-document pair.
    pub avg_flops: f64,
    /// Vocabulary size the ratios are relative to.
    pub vocab_size: usize,
}

impl SparsityStats {
    /// Computes the statistics of query and document vectors over `vocab_size` dimensions.
    pub fn compute(queries: &[SparseVec], docs: &[SparseVec], vocab_size: usize) -> Self {
        Self {
            query: ActiveDims::of(queries, vocab_size),
            corpus: ActiveDims::of(docs, vocab_size),
            avg_flops: avg_flops(queries, docs, vocab_size),
            vocab_size,
        }
    }
}

/// How many vectors have each dimension active (ST's `compute_count_vector`).
pub fn count_vector(vecs: &[SparseVec], vocab_size: usize) -> Vec<u32> {
    let mut counts = vec![0u32; vocab_size];
    for v in vecs {
        for &i in v.indices() {
            if let Some(c) = counts.get_mut(i as usize) {
                *c += 1;
            }
        }
    }
    counts
}

/// ST's `avg_flops` (0 when either side is empty).
pub fn avg_flops(queries: &[SparseVec], docs: &[SparseVec], vocab_size: usize) -> f64 {
    if queries.is_empty() || docs.is_empty() {
        return 0.0;
    }
    let (cq, cd) = (
        count_vector(queries, vocab_size),
        count_vector(docs, vocab_size),
    );
    let (nq, nd) = (queries.len() as f64, docs.len() as f64);
    cq.iter()
        .zip(&cd)
        .map(|(&a, &b)| (a as f64 / nq) * (b as f64 / nd))
        .sum()
}

/// The `n` most frequently active dimensions, as (vocabulary id, count), ties by id.
pub fn most_active(vecs: &[SparseVec], vocab_size: usize, n: usize) -> Vec<(u32, u32)> {
    let mut pairs: Vec<(u32, u32)> = count_vector(vecs, vocab_size)
        .into_iter()
        .enumerate()
        .filter(|p| p.1 > 0)
        .map(|(i, c)| (i as u32, c))
        .collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    pairs.truncate(n);
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::RunHit;

    #[test]
    fn hand_computed_binary_and_graded() {
        let mut qrels = Qrels::new();
        qrels.insert(
            "q1".into(),
            [("a".to_string(), 1), ("c".to_string(), 1)]
                .into_iter()
                .collect(),
        );
        qrels.insert(
            "q2".into(),
            [
                ("x".to_string(), 2),
                ("y".to_string(), 1),
                ("z".to_string(), 0),
            ]
            .into_iter()
            .collect(),
        );
        let mut run = Run::new();
        let hit = |d: &str, s: f64| RunHit {
            doc_id: d.into(),
            score: s,
        };
        run.insert("q1", vec![hit("b", 3.0), hit("a", 2.0), hit("c", 1.0)]);
        run.insert("q2", vec![hit("z", 3.0), hit("y", 2.0), hit("w", 1.0)]);
        let m = compute_metrics(&qrels, ["q1", "q2"], &run, &MetricsConfig::default());
        // q1: relevant at ranks 2, 3; q2: grade-1 doc at rank 2, the grade-2 doc never retrieved.
        assert_eq!(m["mrr_at_10"], (0.5 + 0.5) / 2.0);
        assert_eq!(m["accuracy_at_1"], 0.0);
        assert_eq!(m["accuracy_at_3"], 1.0);
        assert_eq!(m["recall_at_3"], (1.0 + 0.5) / 2.0);
        assert_eq!(m["precision_at_3"], (2.0 / 3.0 + 1.0 / 3.0) / 2.0);
        let l = |i: f64| (i + 1.0).log2();
        let q1 = (1.0 / l(2.0) + 1.0 / l(3.0)) / (1.0 + 1.0 / l(2.0));
        let q2 = (1.0 / l(2.0)) / (2.0 + 1.0 / l(2.0));
        assert!((m["ndcg_at_10"] - (q1 + q2) / 2.0).abs() < 1e-15);
        let map_q1 = (1.0 / 2.0 + 2.0 / 3.0) / 2.0;
        let map_q2 = (1.0 / 2.0) / 2.0;
        assert!((m["map_at_100"] - (map_q1 + map_q2) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn sparsity_matches_definitions() {
        let v = |i: &[u32]| SparseVec::new(i.to_vec(), vec![1.0; i.len()]).unwrap();
        let q = [v(&[0, 1]), v(&[1])];
        let d = [v(&[1, 2, 3]), v(&[0]), v(&[1, 3]), v(&[])];
        let s = SparsityStats::compute(&q, &d, 10);
        assert_eq!(s.query.mean, 1.5);
        assert_eq!(s.corpus.median, 1.5);
        assert_eq!(s.corpus.p95, 2.0 + 0.85);
        assert_eq!(s.corpus.sparsity_ratio, 1.0 - 1.5 / 10.0);
        // counts q: [1,2,0,0], d: [1,2,1,2] → (1/2)(1/4) + (2/2)(2/4)
        assert_eq!(s.avg_flops, 0.125 + 0.5);
        assert_eq!(most_active(&d, 10, 2), vec![(1, 2), (3, 2)]);
    }
}
