//! Long documents, persistent indexes and exports (issue 8): windowed vectors are the max of
//! separately encoded windows; bad window specs, foreign vocabularies and malformed run files are clear
//! errors; the Anserini/OpenSearch/Qdrant exports of a real encoded mini-corpus have the promised shape.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use splade_worker::model::{dense_rows_to_sparse, LoadOptions, SparseEncoder, TextKind, WindowSpec};
use tch::Device;

use crate::support::{model, repo};

fn tiny_encoder() -> SparseEncoder {
    SparseEncoder::load(&model("splade-tiny"), Device::Cpu, &LoadOptions::default()).unwrap()
}

/// The first `n` NorQuAD passages as (id, title + " " + text).
fn passages(n: usize) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(repo().join("data/norquad/corpus.jsonl")).unwrap();
    text.lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["_id"].as_str().unwrap().to_string(), v["title"].as_str().unwrap().to_string(), v["text"].as_str().unwrap().to_string())
        })
        .collect()
}

fn splade(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_splade")).args(args).output().unwrap()
}

fn to_map(v: &(Vec<u32>, Vec<f32>)) -> BTreeMap<u32, f32> {
    v.0.iter().copied().zip(v.1.iter().copied()).collect()
}

fn assert_close(got: &BTreeMap<u32, f32>, want: &BTreeMap<u32, f32>, what: &str) {
    let keys: HashSet<u32> = got.keys().chain(want.keys()).copied().collect();
    for k in keys {
        let (a, b) = (got.get(&k).copied().unwrap_or(0.0), want.get(&k).copied().unwrap_or(0.0));
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what}: dim {k}: windowed {a} vs max of windows {b}");
    }
}

#[test]
fn windowed_vector_is_the_max_of_separately_encoded_windows() {
    let m = tiny_encoder();
    let docs: Vec<String> = passages(4).into_iter().map(|(_, t, x)| format!("{t} {x}")).collect();
    let spec: WindowSpec = "64:40".parse().unwrap();
    let tok = m.tokenizer.inner();
    let (cls, sep) = (tok.token_to_id("[CLS]").unwrap(), tok.token_to_id("[SEP]").unwrap());
    assert!(m.prompt(TextKind::Document).is_empty(), "test assumes SPLADE-tiny has no document prompt");
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    // Batch 3 splits long documents across forward passes; 64 keeps each document in one pass.
    let (small, stats) = m.encode_windowed(&refs, TextKind::Document, &spec, 3).unwrap();
    let (big, _) = m.encode_windowed(&refs, TextKind::Document, &spec, 64).unwrap();
    let mut total = 0;
    for (d, text) in docs.iter().enumerate() {
        // Windows built here from the raw token ids, independently of the library's windowing.
        let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert!(ids.len() > 3 * 64, "passage {d} too short ({} tokens) to test windowing", ids.len());
        let mut windows = Vec::new();
        let mut s = 0;
        loop {
            let e = (s + 64).min(ids.len());
            let mut w = vec![cls];
            w.extend_from_slice(&ids[s..e]);
            w.push(sep);
            windows.push(w);
            if e == ids.len() {
                break;
            }
            s += 40;
        }
        assert_eq!(m.window_ids(text, TextKind::Document, &spec).unwrap(), windows, "window ids of passage {d}");
        total += windows.len();
        // Each window encoded alone (batch of one, no padding), then max over windows.
        let mut want: BTreeMap<u32, f32> = BTreeMap::new();
        let mut first_nnz = 0;
        for w in &windows {
            let emb = tch::no_grad(|| m.forward(&m.tokenizer.pad(std::slice::from_ref(w)), false));
            let v = to_map(&dense_rows_to_sparse(&emb)[0]);
            if first_nnz == 0 {
                first_nnz = v.len();
            }
            for (k, v) in v {
                let e = want.entry(k).or_insert(0.0);
                *e = e.max(v);
            }
        }
        assert_close(&to_map(&small[d]), &want, &format!("passage {d}, batch 3"));
        assert_close(&to_map(&big[d]), &want, &format!("passage {d}, batch 64"));
        // The later windows add terms: the max has more active dims than the first window alone.
        assert!(small[d].0.len() > first_nnz, "passage {d}: {} dims vs {first_nnz} in window 1", small[d].0.len());
    }
    assert_eq!(stats.windows, total);
    assert_eq!(stats.documents, docs.len());
    // A text that fits one window gets exactly its ordinary (truncated) vector.
    let short = "Oslo er hovedstaden i Norge.";
    let (w, _) = m.encode_windowed(&[short], TextKind::Document, &spec, 8).unwrap();
    assert_close(&to_map(&w[0]), &to_map(&m.encode(&[short], TextKind::Document, 8).unwrap()[0]), "short text");
    // MAX caps the windows.
    let capped: WindowSpec = "64:40:2".parse().unwrap();
    assert_eq!(m.window_ids(&docs[0], TextKind::Document, &capped).unwrap().len(), 2);
}

fn stderr_of(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected failure; stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn invalid_window_specs_are_clear_errors() {
    let tiny = model("splade-tiny");
    let tiny = tiny.to_str().unwrap();
    for (spec, rule) in [("64:0", "STRIDE must be > 0"), ("64:80", "larger than SIZE"), ("64", "SIZE:STRIDE"), ("x:2", "'x'")] {
        let e = stderr_of(&splade(&["encode", "--device", "cpu", "--model", tiny, "--doc-window", spec, "tekst"]));
        assert!(e.contains("--doc-window") && e.contains(spec) && e.contains(rule), "spec {spec}: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
    // SIZE beyond the model's max length − 2 is only known once the model is loaded.
    let e = stderr_of(&splade(&["encode", "--device", "cpu", "--model", tiny, "--max-length", "128", "--doc-window", "200:100", "tekst"]));
    assert!(e.contains("--doc-window") && e.contains("200:100") && e.contains("126") && e.contains("max_length − 2"), "{e}");
    assert_eq!(e.lines().filter(|l| !l.trim().is_empty()).count(), 1, "want one line: {e}");
}

/// Writes the first `n` NorQuAD passages as a corpus JSONL.
fn mini_corpus(dir: &Path, n: usize) -> std::path::PathBuf {
    let p = dir.join("corpus.jsonl");
    let lines: Vec<String> = passages(n)
        .into_iter()
        .map(|(id, title, text)| serde_json::json!({"_id": id, "title": title, "text": text}).to_string())
        .collect();
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn index_refuses_another_models_vocabulary_and_searches_with_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = mini_corpus(tmp.path(), 12);
    let out = tmp.path().join("idx");
    let tiny = model("splade-tiny");
    let r = splade(&["index", "--device", "cpu", "--model", tiny.to_str().unwrap(), "--corpus", corpus.to_str().unwrap(), "--out", out.to_str().unwrap(), "--doc-window", "126:63"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let build: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("build.json")).unwrap()).unwrap();
    assert!(build["document_windows"]["windows"].as_u64().unwrap() > 12, "{build}");

    // Same model: ranked hits, scores descending.
    let first = passages(1).remove(0);
    let query = first.1.clone();
    let r = splade(&["search", "--device", "cpu", "--model", tiny.to_str().unwrap(), "--index", out.to_str().unwrap(), "--query", &query, "--top-k", "5"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let lines: Vec<Vec<String>> = String::from_utf8_lossy(&r.stdout).lines().map(|l| l.split('\t').map(String::from).collect()).collect();
    assert_eq!(lines.len(), 5);
    let scores: Vec<f32> = lines.iter().map(|c| c[3].parse().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]) && scores[0] > 0.0, "{scores:?}");

    // A copy of SPLADE-tiny whose tokenizer has one token renamed: same size, other vocabulary.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(tiny.join(f), other.join(f)).unwrap();
    }
    let mut tj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tiny.join("tokenizer.json")).unwrap()).unwrap();
    let vocab = tj["model"]["vocab"].as_object_mut().unwrap();
    let id = vocab.remove("was").unwrap();
    vocab.insert("was_renamed".into(), id);
    std::fs::write(other.join("tokenizer.json"), tj.to_string()).unwrap();
    let e = stderr_of(&splade(&["search", "--device", "cpu", "--model", other.to_str().unwrap(), "--index", out.to_str().unwrap(), "--query", "hvem"]));
    assert!(e.contains("vocabulary") && e.contains(out.to_str().unwrap()), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn exports_of_an_encoded_mini_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = mini_corpus(tmp.path(), 10);
    let out = tmp.path().join("idx");
    let tiny = model("splade-tiny");
    let r = splade(&[
        "index", "--device", "cpu", "--model", tiny.to_str().unwrap(), "--corpus", corpus.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--export", "anserini", "--export", "opensearch", "--export", "qdrant", "--quantization-factor", "100",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m = tiny_model_tokens();
    let ids: Vec<String> = passages(10).into_iter().map(|p| p.0).collect();

    // Qdrant: indices sorted and unique, values positive; these are the float vectors of this run.
    let mut floats: HashMap<String, BTreeMap<u32, f32>> = HashMap::new();
    let qd = std::fs::read_to_string(out.join("qdrant.jsonl")).unwrap();
    for (n, line) in qd.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let idx: Vec<u32> = serde_json::from_value(v["vector"]["splade"]["indices"].clone()).unwrap();
        let val: Vec<f32> = serde_json::from_value(v["vector"]["splade"]["values"].clone()).unwrap();
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "qdrant line {}: indices not sorted unique", n + 1);
        assert!(!idx.is_empty() && idx.len() == val.len() && val.iter().all(|&x| x > 0.0));
        assert_eq!(v["id"], n);
        floats.insert(v["payload"]["doc_id"].as_str().unwrap().to_string(), idx.into_iter().zip(val).collect());
    }
    assert_eq!(floats.len(), 10);
    // The vectors are the encoder's: compare with an in-process encode of the same texts.
    let enc = tiny_encoder();
    let texts: Vec<String> = passages(10).into_iter().map(|(_, t, x)| format!("{t} {x}").trim().to_string()).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for (id, v) in ids.iter().zip(enc.encode(&refs, TextKind::Document, 32).unwrap()) {
        assert_close(&floats[id], &to_map(&v), &format!("qdrant vector of {id}"));
    }

    // Anserini: impact = round-half-up(value × 100) per vocabulary token, zero impacts dropped.
    let an = std::fs::read_to_string(out.join("anserini/docs.jsonl")).unwrap();
    let mut dropped = 0;
    for line in an.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["id"].as_str().unwrap();
        let vector = v["vector"].as_object().unwrap();
        let mut want = BTreeMap::new();
        for (&t, &x) in &floats[id] {
            let q = (x as f64 * 100.0 + 0.5).floor() as i64;
            if q == 0 {
                dropped += 1;
            } else {
                want.insert(m[t as usize].clone(), q);
            }
        }
        let got: BTreeMap<String, i64> = vector.iter().map(|(k, v)| (k.clone(), v.as_i64().expect("integer impact"))).collect();
        assert_eq!(got, want, "anserini impacts of {id}");
        assert!(got.values().all(|&q| q > 0));
    }
    assert_eq!(an.lines().count(), 10);
    eprintln!("anserini: {dropped} weights below 0.005 dropped");

    // OpenSearch: valid NDJSON, action/source pairs, feature names are vocabulary tokens.
    let vocab: HashSet<&String> = m.iter().collect();
    let os = std::fs::read_to_string(out.join("opensearch.ndjson")).unwrap();
    assert!(os.ends_with('\n'));
    let lines: Vec<serde_json::Value> = os.lines().map(|l| serde_json::from_str(l).expect("each line is one JSON value")).collect();
    assert_eq!(lines.len(), 20);
    for pair in lines.chunks(2) {
        let id = pair[0]["index"]["_id"].as_str().unwrap();
        let feats = pair[1]["splade"].as_object().unwrap();
        assert_eq!(feats.len(), floats[id].len());
        for (tok, w) in feats {
            assert!(vocab.contains(tok), "feature '{tok}' is not a vocabulary token");
            assert!(w.as_f64().unwrap() > 0.0);
        }
    }
    let mapping: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("opensearch_mapping.json")).unwrap()).unwrap();
    assert_eq!(mapping["mappings"]["properties"]["splade"]["type"], "rank_features");
}

/// SPLADE-tiny's tokens in id order.
fn tiny_model_tokens() -> Vec<String> {
    let m = tiny_encoder();
    (0..m.vocab_size() as u32).map(|i| m.tokenizer.id_to_token(i).unwrap()).collect()
}

#[test]
fn fuse_with_a_malformed_run_file_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("dense.trec");
    std::fs::write(&run, "q1 Q0 d1 1 12.5 dense\nq1 Q0 d2 2 dense\n").unwrap();
    let tiny = model("splade-tiny");
    let task = repo().join("data/norquad");
    let e = stderr_of(&splade(&[
        "eval", "--device", "cpu", "--model", tiny.to_str().unwrap(), "--task", task.to_str().unwrap(), "--fuse", run.to_str().unwrap(),
    ]));
    assert!(e.contains(&format!("{}:2", run.display())) && e.contains("expected 6 fields"), "{e}");
}
