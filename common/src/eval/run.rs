//! Ranked result lists ("runs"): the common currency of exact search, BM25, fusion and the metrics, plus
//! TREC run-file reading and writing (`qid Q0 docid rank score tag`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::EvalError;

/// One ranked document.
#[derive(Clone, Debug, PartialEq)]
pub struct RunHit {
    /// Corpus `_id`.
    pub doc_id: String,
    /// Retrieval score; higher is better.
    pub score: f64,
}

/// Query id → ranked hits. Every list is kept in the evaluator's total order: score descending, then
/// `_id` ascending (byte order of UTF-8, i.e. code-point order, the order Python sorts strings in).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    queries: BTreeMap<String, Vec<RunHit>>,
}

/// The ranking order shared by every list in this module.
pub fn rank_order(a: &RunHit, b: &RunHit) -> std::cmp::Ordering {
    b.score
        .total_cmp(&a.score)
        .then_with(|| a.doc_id.cmp(&b.doc_id))
}

impl Run {
    /// An empty run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the hits of `query_id` (replacing earlier ones), sorting them into rank order.
    pub fn insert(&mut self, query_id: impl Into<String>, mut hits: Vec<RunHit>) {
        hits.sort_by(rank_order);
        self.queries.insert(query_id.into(), hits);
    }

    /// The ranked hits of one query.
    pub fn get(&self, query_id: &str) -> Option<&[RunHit]> {
        self.queries.get(query_id).map(Vec::as_slice)
    }

    /// Queries in ascending id order with their ranked hits.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[RunHit])> {
        self.queries.iter().map(|(q, h)| (q.as_str(), h.as_slice()))
    }

    /// Number of queries.
    pub fn len(&self) -> usize {
        self.queries.len()
    }

    /// True without queries.
    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// Keeps the first `k` hits of every query.
    pub fn truncate(&mut self, k: usize) {
        for hits in self.queries.values_mut() {
            hits.truncate(k);
        }
    }

    /// Writes the run in TREC format, ranks 1-based in rank order, scores with 9 significant digits.
    pub fn write_trec(&self, w: &mut dyn Write, tag: &str) -> std::io::Result<()> {
        let tag = if tag.is_empty() || tag.contains(char::is_whitespace) {
            "splade"
        } else {
            tag
        };
        for (q, hits) in &self.queries {
            for (i, h) in hits.iter().enumerate() {
                writeln!(w, "{q} Q0 {} {} {:.8e} {tag}", h.doc_id, i + 1, h.score)?;
            }
        }
        Ok(())
    }

    /// Writes [`Run::write_trec`] output to a file.
    pub fn save_trec(&self, path: &Path, tag: &str) -> Result<(), EvalError> {
        let f = std::fs::File::create(path).map_err(|e| EvalError::io(path, e))?;
        let mut w = std::io::BufWriter::new(f);
        self.write_trec(&mut w, tag)
            .and_then(|_| w.flush())
            .map_err(|e| EvalError::io(path, e))
    }

    /// Parses TREC run text (`qid Q0 docid rank score tag`, whitespace separated). Like trec_eval, the
    /// order comes from the scores (ties by `_id`), not from the rank column, which must still be a
    /// positive integer. Malformed lines and a document listed twice for a query are errors naming
    /// `source` and the line.
    pub fn parse_trec(text: &str, source: &str) -> Result<Run, EvalError> {
        let mut queries: BTreeMap<String, Vec<RunHit>> = BTreeMap::new();
        let mut seen: std::collections::HashSet<(String, String)> =
            std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let at = || format!("{source}:{}", i + 1);
            if line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() != 6 {
                return Err(EvalError::Run(format!(
                    "{}: expected 6 fields 'qid Q0 docid rank score tag', got {}: '{line}'",
                    at(),
                    cols.len()
                )));
            }
            if cols[3].parse::<u64>().map_or(true, |r| r == 0) {
                return Err(EvalError::Run(format!(
                    "{}: rank '{}' is not a positive integer",
                    at(),
                    cols[3]
                )));
            }
            let score: f64 = cols[4]
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite())
                .ok_or_else(|| {
                    EvalError::Run(format!(
                        "{}: score '{}' is not a finite number",
                        at(),
                        cols[4]
                    ))
                })?;
            if !seen.insert((cols[0].to_string(), cols[2].to_string())) {
                return Err(EvalError::Run(format!(
                    "{}: document '{}' appears twice for query '{}'",
                    at(),
                    cols[2],
                    cols[0]
                )));
            }
            queries
                .entry(cols[0].to_string())
                .or_default()
                .push(RunHit {
                    doc_id: cols[2].to_string(),
                    score,
                });
        }
        let mut run = Run::new();
        for (q, hits) in queries {
            run.insert(q, hits);
        }
        Ok(run)
    }

    /// Reads a TREC run file; see [`Run::parse_trec`].
    pub fn load_trec(path: &Path) -> Result<Run, EvalError> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        Self::parse_trec(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trec_round_trip_orders_by_score_then_id() {
        let mut run = Run::new();
        run.insert(
            "q1",
            vec![
                RunHit {
                    doc_id: "b".into(),
                    score: 1.0,
                },
                RunHit {
                    doc_id: "a".into(),
                    score: 1.0,
                },
                RunHit {
                    doc_id: "c".into(),
                    score: 2.5,
                },
            ],
        );
        let mut out = Vec::new();
        run.write_trec(&mut out, "t").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "q1 Q0 c 1 2.50000000e0 t\nq1 Q0 a 2 1.00000000e0 t\nq1 Q0 b 3 1.00000000e0 t\n"
        );
        assert_eq!(Run::parse_trec(&text, "x").unwrap(), run);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let e = Run::parse_trec("q1 Q0 a 1 1.0 t\nq1 Q0 b 2 t\n", "run.trec")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("run.trec:2") && e.contains("expected 6 fields"),
            "{e}"
        );
        let e = Run::parse_trec("q1 Q0 a 1 abc t\n", "run.trec")
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.trec:1") && e.contains("'abc'"), "{e}");
        let e = Run::parse_trec("q1 Q0 a x 1 t\n", "run.trec")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 'x'"), "{e}");
        let e = Run::parse_trec("q1 Q0 a 1 1 t\nq1 Q0 a 2 0.5 t\n", "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r:2") && e.contains("twice"), "{e}");
    }
}
