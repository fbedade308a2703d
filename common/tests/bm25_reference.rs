//! BM25 and the Snowball stemmer against their external references, bm25s 0.3.16 and PyStemmer 3.1.0
//! (tools venv, `$SPLADE_TOOLS_PY`; the Python side is `scripts/bm25s_reference.py`), on NorQuAD
//! (`data/norquad`).
//!
//! Needs `scripts/setup.sh` (the tools venv with the versions pinned in
//! `scripts/requirements-tools.txt`); a missing venv fails the test with a message saying so.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use splade_common::eval::{Bm25, Bm25Flavor, Bm25Params, Doc, LocalDir, Task, Tokenizer};

/// Largest accepted score difference (bm25s accumulates in `f32`, as our index does, in another order).
const SCORE_TOL: f64 = 1e-4;
/// The ranking depth compared.
const TOP_K: usize = 100;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate in a workspace").to_path_buf()
}

fn tools_py() -> PathBuf {
    let py = std::env::var("SPLADE_TOOLS_PY").unwrap_or_else(|_| {
        let cache = std::env::var("SPLADE_CACHE")
            .unwrap_or_else(|_| format!("{}/.cache/splade", std::env::var("HOME").unwrap_or_default()));
        format!("{cache}/tools-venv/bin/python")
    });
    assert!(Path::new(&py).is_file(), "Python tools venv not found at {py}: run scripts/setup.sh (and `source scripts/env.sh`)");
    PathBuf::from(py)
}

/// Runs `scripts/bm25s_reference.py ARGS` in the tools venv; panics with its output on failure.
fn reference(args: &[&Path]) {
    let out = Command::new(tools_py())
        .arg(repo().join("scripts/bm25s_reference.py"))
        .args(args)
        .output()
        .expect("run scripts/bm25s_reference.py");
    assert!(
        out.status.success(),
        "bm25s_reference.py {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn norquad() -> Task {
    let task = Task::load(&LocalDir::new(repo().join("data/norquad")), None, None).expect("load data/norquad");
    assert_eq!((task.corpus.len(), task.queries.len()), (755, 460), "NorQuAD dev has 755 passages and 460 questions");
    task
}

/// Every text field of `corpus.jsonl` and `queries.jsonl`, whatever the split uses.
fn norquad_texts() -> Vec<String> {
    let mut texts = Vec::new();
    for file in ["corpus.jsonl", "queries.jsonl"] {
        let path = repo().join("data/norquad").join(file);
        let content = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for line in content.lines().filter(|l| !l.trim().is_empty()) {
            let row: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            texts.extend(["title", "text"].iter().filter_map(|k| row[k].as_str()).map(str::to_string));
        }
    }
    texts
}

#[test]
fn norwegian_stemmer_equals_pystemmer_on_every_norquad_word_type() {
    // The words either flavour feeds the stemmer: bm25s's `\w\w+` runs and UAX #29 words, lowercased.
    let mut words = BTreeSet::new();
    for flavor in [Bm25Flavor::Bm25s, Bm25Flavor::Anserini] {
        let t = Tokenizer::new(flavor, None).unwrap();
        for text in norquad_texts() {
            words.extend(t.words(&text));
        }
    }
    let words: Vec<String> = words.into_iter().collect();
    assert!(words.len() > 30_000, "only {} word types", words.len());
    // Words on which older Snowball Norwegian (rust-stemmers 1.2.0, Debian's libstemmer 2.2.0) differs.
    for w in ["kontrovers", "flyers", "bête"] {
        assert!(words.binary_search(&w.to_string()).is_ok(), "{w} is a NorQuAD word type");
    }
    assert!(words.iter().all(|w| !w.contains('\n')));

    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("words.txt"), dir.path().join("stems.txt"));
    std::fs::write(&input, words.iter().map(|w| format!("{w}\n")).collect::<String>()).unwrap();
    reference(&[Path::new("stem"), Path::new("norwegian"), &input, &output]);
    let expected: Vec<String> = std::fs::read_to_string(&output).unwrap().lines().map(str::to_string).collect();
    assert_eq!(expected.len(), words.len());

    let stemmer = Tokenizer::new(Bm25Flavor::Bm25s, Some("norwegian")).unwrap();
    let differ: Vec<String> = words
        .iter()
        .zip(&expected)
        .filter(|(w, e)| stemmer.stem(w) != e.as_str())
        .map(|(w, e)| format!("{w}: ours {}, PyStemmer {e}", stemmer.stem(w)))
        .collect();
    eprintln!("{} NorQuAD word types, {} stemmed differently from PyStemmer", words.len(), differ.len());
    assert!(differ.is_empty(), "{} of {} word types differ:\n{}", differ.len(), words.len(), differ.join("\n"));
}

/// Our bm25s flavour against bm25s itself on NorQuAD dev: the same tokens, every query-document score
/// within [`SCORE_TOL`], and the same top [`TOP_K`] (order and membership up to ties within the tolerance).
fn check_against_bm25s(stemmer: Option<&str>) {
    let task = norquad();
    let docs: Vec<String> = task.corpus.iter().map(Doc::text).collect();
    let queries: Vec<&str> = task.queries.iter().map(|q| q.text.as_str()).collect();

    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.json"), dir.path().join("out.json"));
    let spec = json!({"docs": docs, "queries": queries, "stemmer": stemmer, "k": TOP_K});
    std::fs::write(&input, spec.to_string()).unwrap();
    reference(&[Path::new("bm25"), &input, &output]);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();

    // Tokens first: a score difference is easier to read as the token that caused it.
    let tokenizer = Tokenizer::new(Bm25Flavor::Bm25s, stemmer).unwrap();
    let texts = docs.iter().map(String::as_str).chain(queries.iter().copied());
    let ref_tokens = r["doc_tokens"].as_array().unwrap().iter().chain(r["query_tokens"].as_array().unwrap());
    for (text, expected) in texts.zip(ref_tokens) {
        let expected: Vec<&str> = expected.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(tokenizer.tokens(text), expected, "tokens of {text:?}");
    }

    let params = Bm25Params { flavor: Bm25Flavor::Bm25s, stemmer: stemmer.map(str::to_string), ..Default::default() };
    let bm = Bm25::build(task.corpus.iter().zip(&docs).map(|(d, t)| (d.id.as_str(), t.as_str())), &params).unwrap();
    let position: HashMap<&str, usize> = task.corpus.iter().enumerate().map(|(i, d)| (d.id.as_str(), i)).collect();
    let ours_at = |hits: &[splade_common::eval::Hit]| -> Vec<(usize, f64)> {
        hits.iter().map(|h| (position[bm.index().doc_ids()[h.doc as usize].as_str()], h.score as f64)).collect()
    };

    // Every score: a search as deep as the corpus returns every document.
    let all = bm.search(&queries, docs.len()).unwrap();
    let mut max_diff = 0f64;
    for (qi, hits) in all.iter().enumerate() {
        let expected: Vec<f64> = r["scores"][qi].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
        let mut ours = vec![f64::NAN; docs.len()];
        for (d, s) in ours_at(hits) {
            ours[d] = s;
        }
        for (d, (o, e)) in ours.iter().zip(&expected).enumerate() {
            let diff = (o - e).abs();
            assert!(diff <= SCORE_TOL, "query {} doc {}: ours {o}, bm25s {e}", task.queries[qi].id, task.corpus[d].id);
            max_diff = max_diff.max(diff);
        }
    }

    // The top k: the same score at every rank, the same documents except where a tie crosses the cut.
    let top = bm.search(&queries, TOP_K).unwrap();
    let mut tied_at_cut = 0;
    for (qi, hits) in top.iter().enumerate() {
        let qid = &task.queries[qi].id;
        let ours = ours_at(hits);
        let ref_docs: Vec<usize> = r["top_docs"][qi].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let ref_scores: Vec<f64> = r["top_scores"][qi].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
        assert_eq!(ours.len(), TOP_K);
        assert_eq!(ref_docs.len(), TOP_K);
        for (rank, ((_, o), e)) in ours.iter().zip(&ref_scores).enumerate() {
            assert!((o - e).abs() <= SCORE_TOL, "query {qid} rank {}: ours {o}, bm25s {e}", rank + 1);
        }
        let cut = ref_scores[TOP_K - 1];
        let above = |docs: &mut dyn Iterator<Item = (usize, f64)>| -> BTreeSet<usize> {
            docs.filter(|&(_, s)| s > cut + SCORE_TOL).map(|(d, _)| d).collect()
        };
        let ours_above = above(&mut ours.iter().copied());
        let ref_above = above(&mut ref_docs.iter().copied().zip(ref_scores.iter().copied()));
        assert_eq!(ours_above, ref_above, "query {qid}: top-{TOP_K} documents scoring above the cut ({cut})");
        let ours_set: BTreeSet<usize> = ours.iter().map(|&(d, _)| d).collect();
        if ours_set != ref_docs.iter().copied().collect::<BTreeSet<_>>() {
            tied_at_cut += 1;
        }
    }
    eprintln!(
        "bm25s flavour, stemmer {stemmer:?}: {} queries x {} documents, max |score - bm25s| = {max_diff:.3e}; \
         top {TOP_K} sets identical for {} queries, differing only by ties at the cut for {tied_at_cut}",
        queries.len(),
        docs.len(),
        queries.len() - tied_at_cut
    );
}

#[test]
fn bm25s_flavor_equals_bm25s_on_norquad_dev_unstemmed() {
    check_against_bm25s(None);
}

#[test]
fn bm25s_flavor_equals_bm25s_on_norquad_dev_norwegian_stemmed() {
    check_against_bm25s(Some("norwegian"));
}
