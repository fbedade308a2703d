//! Cross-checks against the reference tools (pytrec_eval, sentence-transformers' evaluator, mteb,
//! pyarrow) and task-loading tests on real files. The Python interpreters come from `SPLADE_TOOLS_PY` and
//! `SPLADE_REF_PY` (see scripts/env.sh); a missing one fails the test with a pointer to scripts/setup.sh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::*;

fn python(var: &str, venv: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("SPLADE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/splade")
            });
        cache.join(venv).join("bin/python")
    });
    assert!(
        p.exists(),
        "{var} ({}) not found: run scripts/setup.sh{} and `source scripts/env.sh`",
        p.display(),
        if venv == "ref-venv" {
            " --reference"
        } else {
            ""
        }
    );
    p
}

fn run_py(var: &str, venv: &str, script: &str, args: &[&Path]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("script.py");
    std::fs::write(&sp, script).unwrap();
    let out = Command::new(python(var, venv))
        .arg(&sp)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed (missing package? run scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Writes a BEIR task directory; `qrels` rows are (qid, did, grade).
fn write_beir(
    dir: &Path,
    docs: &[(String, String, String)],
    queries: &[(String, String)],
    qrels: &[(String, String, i32)],
    split: &str,
) {
    let mut c = String::new();
    for (id, title, text) in docs {
        c += &json!({"_id": id, "title": title, "text": text}).to_string();
        c.push('\n');
    }
    std::fs::write(dir.join("corpus.jsonl"), c).unwrap();
    let mut q = String::new();
    for (id, text) in queries {
        q += &json!({"_id": id, "text": text}).to_string();
        q.push('\n');
    }
    std::fs::write(dir.join("queries.jsonl"), q).unwrap();
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    let mut t = "query-id\tcorpus-id\tscore\n".to_string();
    for (a, b, g) in qrels {
        t += &format!("{a}\t{b}\t{g}\n");
    }
    std::fs::write(dir.join(format!("qrels/{split}.tsv")), t).unwrap();
}

/// A synthetic task with vectors. `exact_values`: weights are multiples of 1/4 so every dot product is
/// exact in f32 and ties are common (exercises tie-breaking); otherwise random weights plus a shared
/// dimension make every score non-zero and distinct.
struct Synthetic {
    dir: tempfile::TempDir,
    task: Task,
    docs: BTreeMap<String, SparseVec>,
    queries: BTreeMap<String, SparseVec>,
    vocab: usize,
}

fn synthetic(
    seed: u64,
    n_docs: usize,
    n_queries: usize,
    vocab: usize,
    exact_values: bool,
    graded: bool,
) -> Synthetic {
    let mut rng = Rng(seed);
    let vec_for = |rng: &mut Rng, n_extra: u64, base: usize| {
        let n_active = base + rng.below(n_extra) as usize;
        let mut pairs = Vec::new();
        if !exact_values {
            pairs.push((0u32, 0.05 + rng.unit()));
        }
        for _ in 0..n_active {
            let v = if exact_values {
                (1 + rng.below(8)) as f32 * 0.25
            } else {
                0.01 + 2.0 * rng.unit()
            };
            pairs.push((rng.below(vocab as u64) as u32, v));
        }
        // from_pairs sums repeats; the sum of quarter multiples stays exact.
        SparseVec::from_pairs(pairs).unwrap()
    };
    // Shuffled ids whose string order differs from numeric and from file order.
    let doc_ids: Vec<String> = (0..n_docs)
        .map(|i| format!("d{}", (i * 37 + 11) % n_docs))
        .collect();
    let docs: BTreeMap<String, SparseVec> = doc_ids
        .iter()
        .map(|id| (id.clone(), vec_for(&mut rng, 10, 3)))
        .collect();
    let query_ids: Vec<String> = (0..n_queries).map(|i| format!("q{i}")).collect();
    let mut queries: BTreeMap<String, SparseVec> = BTreeMap::new();
    let mut qrels = Vec::new();
    for (qi, q) in query_ids.iter().enumerate() {
        // Each query borrows two dimensions of one of its relevant documents, so retrieval is far better
        // than chance but not perfect: metric agreement is then tested across the whole range.
        let noise = vec_for(&mut rng, 4, 1);
        let anchor = &doc_ids[rng.below(n_docs as u64) as usize];
        let mut pairs: Vec<(u32, f32)> = noise.iter().collect();
        pairs.extend(
            docs[anchor]
                .iter()
                .skip(if exact_values { 0 } else { 1 })
                .take(2),
        );
        queries.insert(q.clone(), SparseVec::from_pairs(pairs).unwrap());
        if qi % 7 == 6 {
            continue; // unjudged: excluded from evaluation
        }
        qrels.push((
            q.clone(),
            anchor.clone(),
            if graded { 1 + rng.below(3) as i32 } else { 1 },
        ));
        for _ in 0..rng.below(3) {
            let d = &doc_ids[rng.below(n_docs as u64) as usize];
            if !qrels.iter().any(|(a, b, _)| a == q && b == d) {
                let g = if graded { rng.below(4) as i32 } else { 1 };
                qrels.push((q.clone(), d.clone(), g));
            }
        }
        if qi % 5 == 0 {
            qrels.push((q.clone(), "not-in-corpus".into(), 1));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let doc_rows: Vec<(String, String, String)> = doc_ids
        .iter()
        .map(|id| (id.clone(), String::new(), format!("text of {id}")))
        .collect();
    let query_rows: Vec<(String, String)> = query_ids
        .iter()
        .map(|id| (id.clone(), format!("question {id}")))
        .collect();
    write_beir(dir.path(), &doc_rows, &query_rows, &qrels, "dev");
    let task = Task::load(&LocalDir::new(dir.path()), None, Some("synthetic")).unwrap();
    Synthetic {
        dir,
        task,
        docs,
        queries,
        vocab,
    }
}

impl Synthetic {
    fn vectors(&self) -> (Vec<SparseVec>, Vec<SparseVec>) {
        (
            self.task
                .corpus
                .iter()
                .map(|d| self.docs[&d.id].clone())
                .collect(),
            self.task
                .queries
                .iter()
                .map(|q| self.queries[&q.id].clone())
                .collect(),
        )
    }
    fn evaluate(&self) -> TaskScores {
        let (d, q) = self.vectors();
        let vocab = VocabInfo {
            size: self.vocab,
            fingerprint: "synthetic".into(),
        };
        evaluate_run(&self.task, &d, &q, &EvalOptions::new(vocab)).unwrap()
    }
}

#[test]
fn metrics_equal_sentence_transformers_evaluator() {
    let s = synthetic(11, 180, 60, 48, true, false);
    assert!(
        s.task
            .warnings
            .iter()
            .any(|w| w.contains("missing from the corpus")),
        "{:?}",
        s.task.warnings
    );
    let ours = s.evaluate();
    let (d, q) = s.vectors();
    let row = |id: &str, text: String, v: &SparseVec| json!({"id": id, "text": text, "indices": v.indices(), "values": v.values()});
    let spec = json!({
        "vocab_size": s.vocab,
        "docs": s.task.corpus.iter().zip(&d).map(|(doc, v)| row(&doc.id, doc.text(), v)).collect::<Vec<_>>(),
        // All queries, judged or not: the evaluator must drop the unjudged ones itself.
        "queries": s.queries.iter().map(|(id, v)| row(id, format!("question {id}"), v)).collect::<Vec<_>>(),
        "qrels": s.task.qrels.iter().map(|(q, m)| (q.clone(), m.iter().filter(|(_, g)| **g > 0).map(|(d, _)| d.clone()).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
        "ks": {"ndcg": [1, 3, 5, 10, 100], "mrr": [10], "map": [100], "precision_recall": [1, 3, 5, 10, 100], "accuracy": [1, 3, 5, 10, 100]},
    });
    assert_eq!(q.len(), ours.n_queries);
    let spec_path = s.dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let st = run_py(
        "SPLADE_REF_PY",
        "ref-venv",
        include_str!("py/st_reference.py"),
        &[&spec_path],
    );
    let mut checked = 0;
    for (ours_key, st_key) in [
        ("ndcg_at_", "dot_ndcg@"),
        ("recall_at_", "dot_recall@"),
        ("precision_at_", "dot_precision@"),
        ("accuracy_at_", "dot_accuracy@"),
    ] {
        for k in [1, 3, 5, 10, 100] {
            let (a, b) = (
                ours.metrics[&format!("{ours_key}{k}")],
                st[format!("{st_key}{k}")].as_f64().unwrap(),
            );
            assert!((a - b).abs() < 1e-9, "{ours_key}{k}: ours {a} vs ST {b}");
            checked += 1;
        }
    }
    for (a, b) in [("mrr_at_10", "dot_mrr@10"), ("map_at_100", "dot_map@100")] {
        let (x, y) = (ours.metrics[a], st[b].as_f64().unwrap());
        assert!((x - y).abs() < 1e-9, "{a}: ours {x} vs ST {y}");
        checked += 1;
    }
    assert_eq!(checked, 22);
    // Sanity: the synthetic run is neither perfect nor empty, so agreement means something.
    assert!(
        ours.metrics["ndcg_at_10"] > 0.05 && ours.metrics["ndcg_at_10"] < 0.95,
        "{:?}",
        ours.metrics
    );
    let sp = ours.sparsity.as_ref().unwrap();
    for (a, b) in [
        (sp.query.mean, "query_active_dims"),
        (sp.corpus.mean, "corpus_active_dims"),
        (sp.query.sparsity_ratio, "query_sparsity_ratio"),
        (sp.corpus.sparsity_ratio, "corpus_sparsity_ratio"),
        (sp.avg_flops, "avg_flops"),
    ] {
        let y = st[b].as_f64().unwrap();
        assert!(
            (a - y).abs() <= 1e-6 * y.abs().max(1.0),
            "{b}: ours {a} vs ST {y}"
        );
    }
}

#[test]
fn metrics_equal_pytrec_eval_on_graded_run() {
    let s = synthetic(5, 400, 90, 40, false, true);
    let ours = s.evaluate();
    let run_path = s.dir.path().join("run.trec");
    ours.run.save_trec(&run_path, "test").unwrap();
    // The written run (9 significant digits) must rank exactly like ours and have no ties in any top 10,
    // where trec_eval (docid descending) and we (_id ascending) would order differently.
    let written = Run::load_trec(&run_path).unwrap();
    for (q, hits) in written.iter() {
        let ours_ids: Vec<&str> = ours
            .run
            .get(q)
            .unwrap()
            .iter()
            .map(|h| h.doc_id.as_str())
            .collect();
        let written_ids: Vec<&str> = hits.iter().map(|h| h.doc_id.as_str()).collect();
        assert_eq!(ours_ids, written_ids, "query {q}");
        assert!(hits.len() == 100);
        assert!(
            hits[..10].windows(2).all(|w| w[0].score > w[1].score),
            "tie in top 10 of {q}"
        );
    }
    let qrels_path = s.dir.path().join("qrels.json");
    std::fs::write(&qrels_path, serde_json::to_string(&s.task.qrels).unwrap()).unwrap();
    let py = run_py(
        "SPLADE_TOOLS_PY",
        "tools-venv",
        include_str!("py/pytrec_reference.py"),
        &[&qrels_path, &run_path],
    );
    assert_eq!(py["n_queries"].as_u64().unwrap() as usize, ours.n_queries);
    assert!(
        s.task.qrels.values().any(|m| m.values().any(|&g| g > 1)),
        "the test needs graded judgements"
    );
    let mut pairs = vec![("mrr_at_10".to_string(), "mrr_10".to_string())];
    for k in [1, 3, 5, 10, 100] {
        pairs.push((format!("ndcg_at_{k}"), format!("ndcg_cut_{k}")));
        pairs.push((format!("recall_at_{k}"), format!("recall_{k}")));
        pairs.push((format!("precision_at_{k}"), format!("P_{k}")));
        pairs.push((format!("hit_rate_at_{k}"), format!("success_{k}")));
    }
    for (a, b) in pairs {
        let (x, y) = (
            ours.metrics[&a],
            py[&b]
                .as_f64()
                .unwrap_or_else(|| panic!("{b} missing: {py}")),
        );
        assert!((x - y).abs() < 1e-6, "{a}: ours {x} vs pytrec_eval {b} {y}");
    }
    assert!(
        ours.metrics["ndcg_at_10"] > 0.01 && ours.metrics["recall_at_100"] < 1.0,
        "{:?}",
        ours.metrics
    );
}

#[test]
fn task_result_loads_in_mteb() {
    let s = synthetic(3, 60, 20, 30, true, false);
    let scores = s.evaluate();
    let mut extra = serde_json::Map::new();
    extra.insert("fusion".into(), json!({"method": "rrf", "k": 60.0}));
    let result = scores.to_task_result(vec!["nob-Latn".into()], "local", 1.5, extra);
    let out = tempfile::tempdir().unwrap();
    let path = result.write_to_dir(out.path()).unwrap();
    assert_eq!(path.file_name().unwrap(), "synthetic.json");
    let script = r#"
import json, sys
from pathlib import Path
import mteb
r = mteb.TaskResult.from_disk(Path(sys.argv[1]), load_historic_data=False)
e = r.scores["dev"][0]
print(json.dumps({"task_name": r.task_name, "main_score": e["main_score"], "ndcg_at_10": e["ndcg_at_10"],
                  "hf_subset": e["hf_subset"], "mteb_version": r.mteb_version, "kg": r.kg_co2_emissions,
                  "avg_flops": e.get("avg_flops"), "installed": mteb.__version__}))
"#;
    let py = run_py("SPLADE_REF_PY", "ref-venv", script, &[&path]);
    assert_eq!(py["task_name"], "synthetic");
    assert_eq!(
        py["main_score"].as_f64().unwrap(),
        scores.metrics["ndcg_at_10"]
    );
    assert_eq!(
        py["ndcg_at_10"].as_f64().unwrap(),
        scores.metrics["ndcg_at_10"]
    );
    assert_eq!(py["hf_subset"], "default");
    assert_eq!(py["kg"], Value::Null);
    assert_eq!(
        py["installed"], MTEB_VERSION,
        "update MTEB_VERSION and scripts/requirements-reference.txt together"
    );
    assert!(py["avg_flops"].as_f64().unwrap() > 0.0);
    // And our own baseline reader takes the file back.
    let base = read_baseline(&path).unwrap();
    assert_eq!(base["dev"]["ndcg_at_10"], scores.metrics["ndcg_at_10"]);
}

#[test]
fn loads_repository_norquad() {
    let dir = splade_tests::tools::repo_root().join("data/norquad");
    let task = Task::load(&LocalDir::new(&dir), None, None).unwrap();
    assert_eq!(task.name, "norquad");
    assert_eq!(task.split, "dev");
    assert_eq!(task.corpus.len(), 755);
    assert_eq!(task.queries.len(), 460);
    assert_eq!(task.qrels.len(), 460);
    assert!(task.warnings.is_empty(), "{:?}", task.warnings);
    let d0 = &task.corpus[0];
    assert_eq!(d0.id, "d0");
    assert!(d0.text().starts_with(
        "Fortsatt ikke i mål med gjenåpning av Moss lufthavn Rygge i 2020 Moss lufthavn"
    ));
    // BM25 on it: a sanity floor, not a benchmark (NorQuAD questions share many words with their passage).
    let run = bm25_run(
        &task,
        &Bm25Params {
            stemmer: Some("norwegian".into()),
            ..Default::default()
        },
        100,
    )
    .unwrap();
    let m = evaluate_ranked(&task, &run, &MetricsConfig::default()).metrics;
    assert!(m["ndcg_at_10"] > 0.5, "{m:?}");
}

/// NorQuAD at full size through sentence-transformers' evaluator, with BM25 term vectors standing in for
/// an encoder's output: real ids, real sparsity patterns, many exact and near ties.
#[test]
fn norquad_bm25_vectors_equal_sentence_transformers_evaluator() {
    let dir = splade_tests::tools::repo_root().join("data/norquad");
    let task = Task::load(&LocalDir::new(&dir), None, None).unwrap();
    let texts: Vec<String> = task.corpus.iter().map(Doc::text).collect();
    let bm = Bm25::build(
        task.corpus
            .iter()
            .zip(&texts)
            .map(|(d, t)| (d.id.as_str(), t.as_str())),
        &Bm25Params::default(),
    )
    .unwrap();
    let docs = bm.index().document_vectors();
    let queries: Vec<SparseVec> = task.queries.iter().map(|q| bm.query_vec(&q.text)).collect();
    let vocab = VocabInfo {
        size: bm.n_terms(),
        fingerprint: "bm25".into(),
    };
    let ours = evaluate_run(&task, &docs, &queries, &EvalOptions::new(vocab)).unwrap();
    // The same numbers as the BM25 run scored directly.
    let direct = evaluate_ranked(
        &task,
        &bm25_run(&task, &Bm25Params::default(), 100).unwrap(),
        &MetricsConfig::default(),
    );
    assert_eq!(direct.metrics, ours.metrics);

    let row = |id: &str, text: &str, v: &SparseVec| json!({"id": id, "text": text, "indices": v.indices(), "values": v.values()});
    let spec = json!({
        "vocab_size": bm.n_terms(),
        "docs": task.corpus.iter().zip(&texts).zip(&docs).map(|((d, t), v)| row(&d.id, t, v)).collect::<Vec<_>>(),
        "queries": task.queries.iter().zip(&queries).map(|(q, v)| row(&q.id, &q.text, v)).collect::<Vec<_>>(),
        "qrels": task.qrels.iter().map(|(q, m)| (q.clone(), m.keys().cloned().collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
        "ks": {"ndcg": [1, 3, 5, 10, 100], "mrr": [10], "map": [100], "precision_recall": [1, 3, 5, 10, 100], "accuracy": [1, 3, 5, 10, 100]},
    });
    let tmp = tempfile::tempdir().unwrap();
    let spec_path = tmp.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let st = run_py(
        "SPLADE_REF_PY",
        "ref-venv",
        include_str!("py/st_reference.py"),
        &[&spec_path],
    );
    for (ours_key, st_key) in [
        ("ndcg_at_", "dot_ndcg@"),
        ("recall_at_", "dot_recall@"),
        ("precision_at_", "dot_precision@"),
        ("accuracy_at_", "dot_accuracy@"),
    ] {
        for k in [1, 3, 5, 10, 100] {
            let (a, b) = (
                ours.metrics[&format!("{ours_key}{k}")],
                st[format!("{st_key}{k}")].as_f64().unwrap(),
            );
            assert!((a - b).abs() < 1e-6, "{ours_key}{k}: ours {a} vs ST {b}");
        }
    }
    for (a, b) in [("mrr_at_10", "dot_mrr@10"), ("map_at_100", "dot_map@100")] {
        let (x, y) = (ours.metrics[a], st[b].as_f64().unwrap());
        assert!((x - y).abs() < 1e-6, "{a}: ours {x} vs ST {y}");
    }
    let sp = ours.sparsity.as_ref().unwrap();
    for (a, b) in [
        (sp.query.mean, "query_active_dims"),
        (sp.corpus.mean, "corpus_active_dims"),
        (sp.avg_flops, "avg_flops"),
    ] {
        let y = st[b].as_f64().unwrap();
        assert!(
            (a - y).abs() <= 1e-6 * y.abs().max(1.0),
            "{b}: ours {a} vs ST {y}"
        );
    }
}

#[test]
fn bad_task_inputs_give_clear_errors() {
    let docs = |ids: &[&str]| {
        ids.iter()
            .map(|i| (i.to_string(), String::new(), format!("text {i}")))
            .collect::<Vec<_>>()
    };
    let queries = |ids: &[&str]| {
        ids.iter()
            .map(|i| (i.to_string(), format!("q {i}")))
            .collect::<Vec<_>>()
    };
    let rel = |rows: &[(&str, &str)]| {
        rows.iter()
            .map(|(q, d)| (q.to_string(), d.to_string(), 1))
            .collect::<Vec<_>>()
    };
    let load = |dir: &Path, split: Option<&str>| Task::load(&LocalDir::new(dir), split, None);

    let d = tempfile::tempdir().unwrap();
    write_beir(
        d.path(),
        &docs(&["a", "b"]),
        &queries(&["q1"]),
        &rel(&[("q1", "a"), ("q9", "b")]),
        "dev",
    );
    let e = load(d.path(), None).unwrap_err().to_string();
    assert!(e.contains("qrels/dev.tsv:3") && e.contains("'q9'"), "{e}");

    let d = tempfile::tempdir().unwrap();
    write_beir(
        d.path(),
        &docs(&["a", "b", "a"]),
        &queries(&["q1"]),
        &rel(&[("q1", "a")]),
        "dev",
    );
    let e = load(d.path(), None).unwrap_err().to_string();
    assert!(
        e.contains("corpus.jsonl")
            && e.contains("duplicate corpus _id 'a'")
            && e.contains("records 1 and 3"),
        "{e}"
    );

    let d = tempfile::tempdir().unwrap();
    write_beir(
        d.path(),
        &docs(&["a"]),
        &queries(&["q1", "q1"]),
        &rel(&[("q1", "a")]),
        "dev",
    );
    assert!(load(d.path(), None)
        .unwrap_err()
        .to_string()
        .contains("duplicate query _id 'q1'"));

    let d = tempfile::tempdir().unwrap();
    write_beir(d.path(), &[], &queries(&["q1"]), &rel(&[]), "dev");
    let e = load(d.path(), None).unwrap_err().to_string();
    assert!(e.contains("corpus is empty"), "{e}");

    let d = tempfile::tempdir().unwrap();
    write_beir(
        d.path(),
        &docs(&["a"]),
        &queries(&["q1"]),
        &rel(&[("q1", "a")]),
        "dev",
    );
    write_beir(
        d.path(),
        &docs(&["a"]),
        &queries(&["q1"]),
        &rel(&[("q1", "a")]),
        "test",
    );
    let e = load(d.path(), None).unwrap_err().to_string();
    assert!(
        e.contains("several splits (dev, test)") && e.contains("--split"),
        "{e}"
    );
    let e = load(d.path(), Some("train")).unwrap_err().to_string();
    assert!(
        e.contains("split 'train' not found") && e.contains("dev, test"),
        "{e}"
    );
    assert_eq!(load(d.path(), Some("test")).unwrap().split, "test");

    let d = tempfile::tempdir().unwrap();
    write_beir(
        d.path(),
        &docs(&["a"]),
        &queries(&["q1", "q2"]),
        &rel(&[("q1", "a"), ("q2", "zz")]),
        "dev",
    );
    let t = load(d.path(), None).unwrap();
    assert!(
        t.warnings
            .iter()
            .any(|w| w.starts_with("1 qrels rows name documents missing")),
        "{:?}",
        t.warnings
    );
    assert_eq!(t.queries.len(), 2);

    let d = tempfile::tempdir().unwrap();
    write_beir(
        d.path(),
        &docs(&["a"]),
        &queries(&["q1"]),
        &rel(&[("q1", "a")]),
        "dev",
    );
    std::fs::write(
        d.path().join("qrels/dev.tsv"),
        "query-id\tcorpus-id\tscore\nq1\ta\n",
    )
    .unwrap();
    let e = load(d.path(), None).unwrap_err().to_string();
    assert!(
        e.contains("qrels/dev.tsv:2") && e.contains("3 tab-separated columns"),
        "{e}"
    );
    std::fs::write(
        d.path().join("corpus.jsonl"),
        "{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"b\"\n",
    )
    .unwrap();
    let e = load(d.path(), None).unwrap_err().to_string();
    assert!(e.contains("corpus.jsonl:2"), "{e}");

    std::fs::write(
        d.path().join("qrels/dev.tsv"),
        "query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\ta\t1\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("corpus.jsonl"),
        "{\"_id\": \"a\", \"text\": \"x\"}\n",
    )
    .unwrap();
    let t = load(d.path(), None).unwrap();
    assert!(
        t.warnings
            .iter()
            .any(|w| w == "1 repeated qrels rows ignored"),
        "{:?}",
        t.warnings
    );
    std::fs::write(
        d.path().join("qrels/dev.tsv"),
        "query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\ta\t2\n",
    )
    .unwrap();
    let e = load(d.path(), None).unwrap_err().to_string();
    assert!(
        e.contains("qrels/dev.tsv:3") && e.contains("judged again with score 2"),
        "{e}"
    );

    let e = load(&d.path().join("nope"), None).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn gzip_corpus_is_read() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    write_beir(
        d.path(),
        &[("a".into(), "T".into(), "x".into())],
        &[("q".into(), "y".into())],
        &[("q".into(), "a".into(), 1)],
        "test",
    );
    let plain = std::fs::read(d.path().join("corpus.jsonl")).unwrap();
    std::fs::remove_file(d.path().join("corpus.jsonl")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    std::fs::write(d.path().join("corpus.jsonl.gz"), gz.finish().unwrap()).unwrap();
    let t = Task::load(&LocalDir::new(d.path()), None, None).unwrap();
    assert_eq!(t.corpus[0].text(), "T x");
}

#[test]
fn parquet_layouts_nanobeir_and_mteb() {
    let d = tempfile::tempdir().unwrap();
    let script = r#"
import sys, os
import pyarrow as pa, pyarrow.parquet as pq
root = sys.argv[1]
nano = os.path.join(root, "nano")
for t in ["corpus", "queries", "qrels"]:
    os.makedirs(os.path.join(nano, t))
pq.write_table(pa.table({"_id": ["d1", "d2", "d3"], "text": ["first doc", "", "third doc"]}), f"{nano}/corpus/train-00000-of-00001.parquet")
pq.write_table(pa.table({"_id": ["q1", "q2"], "text": ["query one", "query two"]}), f"{nano}/queries/train-00000-of-00001.parquet")
pq.write_table(pa.table({"query-id": ["q1", "q2", "q2"], "corpus-id": ["d1", "d3", "d1"]}), f"{nano}/qrels/train-00000-of-00001.parquet")
m = os.path.join(root, "mteb")
os.makedirs(os.path.join(m, "qrels"))
pq.write_table(pa.table({"_id": ["10", "11"], "title": ["Title", ""], "text": ["body a", "body b"]}), f"{m}/corpus.parquet")
pq.write_table(pa.table({"_id": ["1", "2"], "text": ["qa", "qb"]}), f"{m}/queries.parquet")
pq.write_table(pa.table({"query-id": ["1", "2"], "corpus-id": ["10", "11"], "score": pa.array([2, 0], pa.int64())}), f"{m}/qrels/test.parquet")
pq.write_table(pa.table({"query-id": ["2"], "corpus-id": ["11"], "score": pa.array([1], pa.int64())}), f"{m}/qrels/dev.parquet")
print("{}")
"#;
    run_py("SPLADE_TOOLS_PY", "tools-venv", script, &[d.path()]);
    let nano = Task::load(&LocalDir::new(d.path().join("nano")), None, None).unwrap();
    assert_eq!(nano.split, "train");
    assert_eq!(
        nano.corpus
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>(),
        ["d1", "d3"]
    );
    assert_eq!(nano.queries.len(), 2);
    assert_eq!(nano.qrels["q2"].len(), 2);
    assert!(
        nano.warnings
            .iter()
            .any(|w| w.contains("empty text dropped")),
        "{:?}",
        nano.warnings
    );

    let mteb_dir = LocalDir::new(d.path().join("mteb"));
    let e = Task::load(&mteb_dir, None, None).unwrap_err().to_string();
    assert!(e.contains("several splits (dev, test)"), "{e}");
    let t = Task::load(&mteb_dir, Some("test"), Some("M")).unwrap();
    assert_eq!(t.name, "M");
    assert_eq!(t.corpus[0].text(), "Title body a");
    assert_eq!(t.corpus[1].text(), "body b");
    // Query 2 has only a grade-0 judgement in test: not evaluated.
    assert_eq!(
        t.queries.iter().map(|q| q.id.as_str()).collect::<Vec<_>>(),
        ["1"]
    );
    assert_eq!(t.qrels["1"]["10"], 2);
}

#[test]
fn hybrid_bm25_rrf_on_synthetic_task_runs_end_to_end() {
    let s = synthetic(21, 50, 14, 20, true, false);
    let splade = s.evaluate();
    let bm = bm25_run(&s.task, &Bm25Params::default(), 100).unwrap();
    let fused = fuse(&[(&splade.run, 1.0), (&bm, 1.0)], &Fusion::default());
    let m = evaluate_ranked(&s.task, &fused, &MetricsConfig::default()).metrics;
    assert!(m.contains_key("ndcg_at_10"));
    for (q, hits) in fused.iter() {
        assert!(
            hits.windows(2).all(|w| rank_order(&w[0], &w[1]).is_le()),
            "{q}"
        );
    }
}
