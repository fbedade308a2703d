//! Result files: MTEB v2 `TaskResult` JSON (what `mteb.TaskResult.from_disk` loads), baselines in either
//! MTEB layout, and the console tables (summary and deltas against a baseline).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{EvalError, Metrics, SparsityStats};

/// The `mteb` release whose `TaskResult` loader the written files are tested against.
pub const MTEB_VERSION: &str = "2.26.24";

/// One MTEB v2 task result: `scores[split]` is a list with one entry per HF subset (always `default` here).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Task name (the task directory's name unless configured).
    pub task_name: String,
    /// Version string of the MTEB result format written ([`MTEB_VERSION`]).
    pub mteb_version: String,
    /// Dataset revision (a git commit, a content hash, or `"local"`).
    pub dataset_revision: String,
    /// Wall-clock seconds of the whole evaluation.
    pub evaluation_time: f64,
    /// Always null: not measured.
    pub kg_co2_emissions: Option<f64>,
    /// Split → per-subset score entries.
    pub scores: BTreeMap<String, Vec<ScoreEntry>>,
}

/// One subset's scores: MTEB's keys (`main_score`, `ndcg_at_10`, …, `hf_subset`, `languages`) and any extra
/// fields (sparsity, fusion method, …) flattened beside them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreEntry {
    /// `ndcg_at_10`, MTEB's main score for retrieval.
    pub main_score: f64,
    /// HF subset name, `default` for monolingual tasks.
    pub hf_subset: String,
    /// ISO 639-3 + script codes, e.g. `nob-Latn`.
    pub languages: Vec<String>,
    /// Every metric and extra field.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl TaskResult {
    /// A result for one split from MTEB-named metrics; `main_score` is `ndcg_at_10` (0 if absent).
    /// `extra` fields (e.g. `sparsity`, `fusion`) are written beside the metrics.
    pub fn new(
        task_name: &str,
        split: &str,
        metrics: &Metrics,
        languages: Vec<String>,
        dataset_revision: &str,
        evaluation_time: f64,
        extra: Map<String, Value>,
    ) -> Self {
        let mut fields = Map::new();
        for (k, v) in metrics {
            fields.insert(k.clone(), Value::from(*v));
        }
        fields.extend(extra);
        let entry = ScoreEntry {
            main_score: metrics.get("ndcg_at_10").copied().unwrap_or(0.0),
            hf_subset: "default".into(),
            languages,
            fields,
        };
        Self {
            task_name: task_name.into(),
            mteb_version: MTEB_VERSION.into(),
            dataset_revision: dataset_revision.into(),
            evaluation_time,
            kg_co2_emissions: None,
            scores: BTreeMap::from([(split.to_string(), vec![entry])]),
        }
    }

    /// Writes `dir/<task_name>.json` (pretty JSON), creating `dir`; returns the path.
    pub fn write_to_dir(&self, dir: &Path) -> Result<std::path::PathBuf, EvalError> {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        let path = dir.join(format!("{}.json", self.task_name));
        let text =
            serde_json::to_string_pretty(self).map_err(|e| EvalError::Results(e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(|e| EvalError::io(&path, e))?;
        Ok(path)
    }
}

/// A baseline's numeric scores: split → metric name → value.
pub type BaselineScores = BTreeMap<String, BTreeMap<String, f64>>;

/// Reads an earlier result: the MTEB v2 form (`scores: {split: [{…}]}`, the `default` subset or else the
/// first), the pre-1.11 flat form (`{"test": {"ndcg_at_10": …}, …}`, possibly with a subset level), or a
/// bare metric dict (split `default`). Only numeric fields are kept.
pub fn read_baseline(path: &Path) -> Result<BaselineScores, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| EvalError::Results(format!("{}: not JSON ({e})", path.display())))?;
    parse_baseline(&v).map_err(|m| EvalError::Results(format!("{}: {m}", path.display())))
}

fn numeric(obj: &Map<String, Value>) -> BTreeMap<String, f64> {
    obj.iter()
        .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
        .collect()
}

fn parse_baseline(v: &Value) -> Result<BaselineScores, String> {
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let mut out = BaselineScores::new();
    if let Some(scores) = obj.get("scores").and_then(Value::as_object) {
        for (split, entries) in scores {
            let list = entries
                .as_array()
                .ok_or_else(|| format!("scores.{split} is not a list (MTEB v2 form)"))?;
            let entry = list
                .iter()
                .filter_map(Value::as_object)
                .find(|e| e.get("hf_subset").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.iter().find_map(Value::as_object))
                .ok_or_else(|| format!("scores.{split} has no entries"))?;
            out.insert(split.clone(), numeric(entry));
        }
    } else {
        for (k, val) in obj {
            let Some(inner) = val.as_object() else {
                continue;
            };
            let direct = numeric(inner);
            if direct
                .keys()
                .any(|m| m.contains("_at_") || m == "main_score")
            {
                out.insert(k.clone(), direct);
            } else if let Some(sub) = inner.get("default").and_then(Value::as_object) {
                out.insert(k.clone(), numeric(sub));
            }
        }
        if out.is_empty() {
            let flat = numeric(obj);
            if flat.keys().any(|m| m.contains("_at_")) {
                out.insert("default".into(), flat);
            }
        }
    }
    if out.is_empty() {
        return Err("no scores found (expected MTEB 'scores: {split: [...]}' or a flat {split: {metric: value}})".into());
    }
    Ok(out)
}

/// The metrics the console tables show, in this order.
pub const TABLE_METRICS: [&str; 8] = [
    "ndcg_at_10",
    "mrr_at_10",
    "map_at_100",
    "recall_at_10",
    "recall_at_100",
    "precision_at_10",
    "accuracy_at_1",
    "accuracy_at_10",
];

/// A fixed-width table: one row per (task, metrics) pair, one column per [`TABLE_METRICS`] entry present.
pub fn summary_table(rows: &[(String, Metrics)]) -> String {
    let cols: Vec<&str> = TABLE_METRICS
        .iter()
        .copied()
        .filter(|m| rows.iter().any(|(_, r)| r.contains_key(*m)))
        .collect();
    let w0 = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!("{:<w0$}", "task");
    for c in &cols {
        s.push_str(&format!("  {c:>14}"));
    }
    s.push('\n');
    for (name, m) in rows {
        s.push_str(&format!("{name:<w0$}"));
        for c in &cols {
            match m.get(*c) {
                Some(v) => s.push_str(&format!("  {v:>14.4}")),
                None => s.push_str(&format!("  {:>14}", "-")),
            }
        }
        s.push('\n');
    }
    s
}

/// Baseline, current and delta for every metric both sides report (table order first, then the rest
/// alphabetically); metrics missing on one side are listed with `-`.
pub fn delta_table(baseline: &BTreeMap<String, f64>, current: &Metrics) -> String {
    let mut names: Vec<&str> = TABLE_METRICS
        .iter()
        .copied()
        .filter(|m| current.contains_key(*m) || baseline.contains_key(*m))
        .collect();
    for k in current.keys().chain(baseline.keys()) {
        if k.contains("_at_") && !names.contains(&k.as_str()) {
            names.push(k);
        }
    }
    let mut s = format!(
        "{:<16} {:>10} {:>10} {:>10}\n",
        "metric", "baseline", "current", "delta"
    );
    for n in names {
        let (b, c) = (baseline.get(n), current.get(n));
        let f = |x: Option<&f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
        let d = match (b, c) {
            (Some(b), Some(c)) => format!("{:+.4}", c - b),
            _ => "-".into(),
        };
        s.push_str(&format!("{n:<16} {:>10} {:>10} {d:>10}\n", f(b), f(c)));
    }
    s
}

/// The `--analyze-sparsity` console report: active-dimension distribution of queries and documents, FLOPS,
/// and (when given) the most frequently active tokens as `(token, number of vectors)`.
pub fn sparsity_report(
    stats: &SparsityStats,
    top_query_tokens: &[(String, u32)],
    top_doc_tokens: &[(String, u32)],
) -> String {
    let mut s = format!(
        "{:<8} {:>10} {:>10} {:>10} {:>8} {:>8} {:>14}\n",
        "side", "mean", "median", "p95", "min", "max", "sparsity"
    );
    for (name, d) in [("query", &stats.query), ("corpus", &stats.corpus)] {
        s.push_str(&format!(
            "{name:<8} {:>10.1} {:>10.1} {:>10.1} {:>8} {:>8} {:>14.6}\n",
            d.mean, d.median, d.p95, d.min, d.max, d.sparsity_ratio
        ));
    }
    s.push_str(&format!(
        "avg_flops {:.4} (vocabulary {})\n",
        stats.avg_flops, stats.vocab_size
    ));
    for (name, top) in [("query", top_query_tokens), ("corpus", top_doc_tokens)] {
        if !top.is_empty() {
            let list: Vec<String> = top.iter().map(|(t, c)| format!("{t} ({c})")).collect();
            s.push_str(&format!("most active {name} tokens: {}\n", list.join(", ")));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_forms() {
        let v2 = serde_json::json!({"task_name": "t", "scores": {"dev": [{"main_score": 0.5, "ndcg_at_10": 0.5, "hf_subset": "default", "languages": ["nob-Latn"]}]}});
        assert_eq!(parse_baseline(&v2).unwrap()["dev"]["ndcg_at_10"], 0.5);
        let old = serde_json::json!({"mteb_dataset_name": "t", "mteb_version": "1.0.0", "test": {"evaluation_time": 3.0, "ndcg_at_10": 0.25}});
        assert_eq!(parse_baseline(&old).unwrap()["test"]["ndcg_at_10"], 0.25);
        let sub = serde_json::json!({"test": {"default": {"ndcg_at_10": 0.75}}});
        assert_eq!(parse_baseline(&sub).unwrap()["test"]["ndcg_at_10"], 0.75);
        assert!(parse_baseline(&serde_json::json!({"a": 1})).is_err());
    }

    #[test]
    fn tables_show_deltas() {
        let cur: Metrics = [
            ("ndcg_at_10".to_string(), 0.6),
            ("mrr_at_10".to_string(), 0.5),
        ]
        .into_iter()
        .collect();
        let base: BTreeMap<String, f64> = [("ndcg_at_10".to_string(), 0.5)].into_iter().collect();
        let t = delta_table(&base, &cur);
        assert!(t.contains("ndcg_at_10") && t.contains("+0.1000"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("mrr_at_10") && l.contains('-')),
            "{t}"
        );
        let s = summary_table(&[("norquad".into(), cur)]);
        let stats = SparsityStats {
            avg_flops: 1.5,
            vocab_size: 10,
            ..Default::default()
        };
        let r = sparsity_report(&stats, &[("hva".into(), 3)], &[]);
        assert!(
            r.contains("avg_flops 1.5000") && r.contains("hva (3)") && !r.contains("corpus tokens"),
            "{r}"
        );
        assert!(s.contains("norquad") && s.contains("0.6000"), "{s}");
    }
}
