//! Run fusion for hybrid retrieval: Reciprocal Rank Fusion and min-max normalised weighted score fusion.
//!
//! Both read each input run in its rank order (score descending, `_id` ascending), take every document
//! any run retrieved for a query, and return a [`Run`] in the same order (ties by `_id`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Run, RunHit};

/// How runs are combined; recorded in the results JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Fusion {
    /// `score(d) = Σ_runs w / (k + rank(d))`, ranks 1-based; a run that misses `d` adds nothing.
    Rrf {
        /// The RRF constant (60 in Cormack et al. 2009 and by default).
        k: f64,
    },
    /// `score(d) = Σ_runs w · (s(d) − min) / (max − min)` per query; a run that misses `d` adds 0, and a
    /// run whose scores for the query are all equal maps them to 1.
    MinMax,
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Rrf { k: 60.0 }
    }
}

/// Fuses `runs` (each paired with its weight; use 1.0 for plain RRF) over the union of their queries.
pub fn fuse(runs: &[(&Run, f64)], method: &Fusion) -> Run {
    let queries: BTreeSet<&str> = runs
        .iter()
        .flat_map(|(r, _)| r.iter().map(|(q, _)| q))
        .collect();
    let mut out = Run::new();
    for q in queries {
        let mut acc: BTreeMap<&str, f64> = BTreeMap::new();
        for (run, w) in runs {
            let Some(hits) = run.get(q) else { continue };
            match method {
                Fusion::Rrf { k } => {
                    for (i, h) in hits.iter().enumerate() {
                        *acc.entry(&h.doc_id).or_insert(0.0) += w / (k + (i + 1) as f64);
                    }
                }
                Fusion::MinMax => {
                    let (lo, hi) = hits
                        .iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), h| {
                            (lo.min(h.score), hi.max(h.score))
                        });
                    for h in hits {
                        let norm = if hi > lo {
                            (h.score - lo) / (hi - lo)
                        } else {
                            1.0
                        };
                        *acc.entry(&h.doc_id).or_insert(0.0) += w * norm;
                    }
                }
            }
        }
        out.insert(
            q,
            acc.into_iter()
                .map(|(d, score)| RunHit {
                    doc_id: d.to_string(),
                    score,
                })
                .collect(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(q: &str, hits: &[(&str, f64)]) -> Run {
        let mut r = Run::new();
        r.insert(
            q,
            hits.iter()
                .map(|(d, s)| RunHit {
                    doc_id: d.to_string(),
                    score: *s,
                })
                .collect(),
        );
        r
    }

    #[test]
    fn rrf_matches_hand_computed_example() {
        // Run A ranks a, b, c; run B ranks c, d, a (k = 60).
        //   a: 1/61 + 1/63   c: 1/63 + 1/61   b: 1/62   d: 1/62
        // a and c tie exactly, as do b and d: ties go to the smaller _id.
        let a = run("q", &[("a", 9.0), ("b", 5.0), ("c", 1.0)]);
        let b = run("q", &[("c", 0.9), ("d", 0.8), ("a", 0.1)]);
        let fused = fuse(&[(&a, 1.0), (&b, 1.0)], &Fusion::Rrf { k: 60.0 });
        let hits = fused.get("q").unwrap();
        let ids: Vec<&str> = hits.iter().map(|h| h.doc_id.as_str()).collect();
        assert_eq!(ids, ["a", "c", "b", "d"]);
        assert_eq!(hits[0].score, 1.0 / 61.0 + 1.0 / 63.0);
        assert_eq!(hits[1].score, 1.0 / 63.0 + 1.0 / 61.0);
        assert_eq!(hits[2].score, 1.0 / 62.0);
        assert_eq!(hits[3].score, 1.0 / 62.0);
        // With k = 1: a = 1/2 + 1/4 = 0.75, c = 1/4 + 1/2 = 0.75, b = d = 1/3.
        let fused = fuse(&[(&a, 1.0), (&b, 1.0)], &Fusion::Rrf { k: 1.0 });
        let scores: Vec<f64> = fused.get("q").unwrap().iter().map(|h| h.score).collect();
        assert_eq!(scores, [0.75, 0.75, 1.0 / 3.0, 1.0 / 3.0]);
    }

    #[test]
    fn rrf_uses_score_order_not_input_order_and_unions_queries() {
        // Ties inside a run are ranked by _id before fusion: x (rank 1), y (rank 2).
        let a = run("q1", &[("y", 1.0), ("x", 1.0)]);
        let b = run("q2", &[("z", 3.0)]);
        let fused = fuse(&[(&a, 1.0), (&b, 1.0)], &Fusion::default());
        assert_eq!(
            fused.get("q1").unwrap()[0],
            RunHit {
                doc_id: "x".into(),
                score: 1.0 / 61.0
            }
        );
        assert_eq!(
            fused.get("q1").unwrap()[1],
            RunHit {
                doc_id: "y".into(),
                score: 1.0 / 62.0
            }
        );
        assert_eq!(fused.get("q2").unwrap()[0].doc_id, "z");
    }

    #[test]
    fn min_max_weighted() {
        let a = run("q", &[("a", 10.0), ("b", 6.0), ("c", 2.0)]);
        let b = run("q", &[("b", 0.5), ("d", 0.25), ("a", 0.0)]);
        let fused = fuse(&[(&a, 1.0), (&b, 0.5)], &Fusion::MinMax);
        let got: Vec<(String, f64)> = fused
            .get("q")
            .unwrap()
            .iter()
            .map(|h| (h.doc_id.clone(), h.score))
            .collect();
        // a: 1 + 0.5*0 = 1; b: 0.5 + 0.5*1 = 1; c: 0; d: 0.5*0.5 = 0.25
        assert_eq!(
            got,
            vec![
                ("a".into(), 1.0),
                ("b".into(), 1.0),
                ("d".into(), 0.25),
                ("c".into(), 0.0)
            ]
        );
        let single = run("q", &[("only", 3.0)]);
        assert_eq!(
            fuse(&[(&single, 2.0)], &Fusion::MinMax).get("q").unwrap()[0].score,
            2.0
        );
    }
}
