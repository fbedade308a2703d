//! Embeddings equal sentence-transformers 6.2's for the same folder, in both directions.

use std::path::Path;

use splade_worker::model::{LoadOptions, SparseEncoder, TextKind};
use tch::Device;

use crate::support::*;

pub(crate) type Sparse = (Vec<u32>, Vec<f32>);

pub(crate) fn ours(dir: &Path, opts: &LoadOptions, texts: &[(String, bool)]) -> Vec<Sparse> {
    let model = SparseEncoder::load(dir, Device::Cpu, opts).unwrap();
    texts
        .iter()
        .map(|(t, q)| {
            let kind = if *q { TextKind::Query } else { TextKind::Document };
            model.encode(&[t.as_str()], kind, 1).unwrap().remove(0)
        })
        .collect()
}

/// Encodes with sentence-transformers 6.2; returns the embeddings and the run's metadata.
pub(crate) fn theirs(dir: &Path, texts: &[(String, bool)]) -> (Vec<Sparse>, serde_json::Value) {
    theirs_on(Stack::St62, dir, texts, false, 8)
}

/// Encodes with sentence-transformers on `stack` (`remote`: `trust_remote_code=True`) in batches of
/// `batch_size`; returns the embeddings and the run's metadata, after checking the run used that stack.
pub(crate) fn theirs_on(stack: Stack, dir: &Path, texts: &[(String, bool)], remote: bool, batch_size: usize) -> (Vec<Sparse>, serde_json::Value) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.json");
    let items: Vec<_> = texts
        .iter()
        .map(|(t, q)| serde_json::json!({"text": t, "kind": if *q {"query"} else {"document"}}))
        .collect();
    std::fs::write(&input, serde_json::to_string(&items).unwrap()).unwrap();
    let out = tmp.path().join("out.json");
    let mut args = vec!["encode", "--model", dir.to_str().unwrap(), "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap()];
    if remote {
        args.push("--trust-remote-code");
    }
    let bs = batch_size.to_string();
    args.extend(["--batch-size", bs.as_str()]);
    st_reference_on(stack, &args);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    assert_eq!(v["versions"]["sentence_transformers"], stack.version(), "ran on the wrong stack");
    let embs = v["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let idx = e["indices"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let val = e["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (idx, val)
        })
        .collect();
    (embs, v)
}

pub(crate) fn assert_all_close(a: &[Sparse], b: &[Sparse], texts: &[(String, bool)], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let head: String = texts[i].0.chars().take(40).collect();
        assert_sparse_close(x, y, 1e-4, &format!("{what}, text {i} ({head:?})"));
    }
}

/// Load-time messages that would mean the folder does not match what transformers expects.
pub(crate) fn weight_warnings(meta: &serde_json::Value) -> Vec<String> {
    meta["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .filter(|w| {
            let l = w.to_lowercase();
            l.contains("missing") || l.contains("unexpected") || l.contains("newly initialized") || l.contains("not initialized")
        })
        .collect()
}

#[test]
fn splade_tiny_matches_sentence_transformers() {
    let dir = model("splade-tiny");
    let texts = parity_texts();
    let model = SparseEncoder::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    let long = texts.iter().filter(|(t, _)| model.tokenizer.encode_ids(&[t.as_str()], 100_000).unwrap()[0].len() > model.max_seq_length).count();
    assert!(long >= 3, "want several texts longer than the max length, got {long}");
    let (theirs, _) = theirs(&dir, &texts);
    assert_all_close(&ours(&dir, &LoadOptions::default(), &texts), &theirs, &texts, "SPLADE-tiny");
}

#[test]
fn minilm_with_tied_head_matches_sentence_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("minilm-splade");
    st_reference(&["make-tied", "--base", model("minilm").to_str().unwrap(), "--out", folder.to_str().unwrap()]);
    let texts = parity_texts();
    let (theirs, meta) = theirs(&folder, &texts);
    assert_eq!(meta["max_seq_length"], 256);
    assert_all_close(&ours(&folder, &LoadOptions::default(), &texts), &theirs, &texts, "MiniLM tied head");
}

#[test]
fn saved_folder_loads_in_sentence_transformers_unchanged() {
    let texts = parity_texts();
    let opts = LoadOptions { max_seq_length: Some(128), ..Default::default() };
    let mut model = SparseEncoder::load(&model("splade-tiny"), Device::Cpu, &opts).unwrap();
    model.spec.query_prompt = "query: ".into();
    model.spec.document_prompt = "passage: ".into();
    model.spec.query_max_length = Some(64);
    model.spec.document_max_length = Some(128);
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("saved");
    model.save(&saved).unwrap();

    let (theirs, meta) = theirs(&saved, &texts);
    assert_eq!(weight_warnings(&meta), Vec::<String>::new(), "sentence-transformers complained loading our folder");
    assert_eq!(meta["prompts"]["query"], "query: ");
    assert_eq!(meta["prompts"]["document"], "passage: ");
    assert_eq!(meta["max_seq_length"], 128);

    // sentence-transformers has one max length; compare at that length on both sides.
    let reloaded = SparseEncoder::load(&saved, Device::Cpu, &LoadOptions::default()).unwrap();
    assert_eq!(reloaded.spec.query_prompt, "query: ");
    assert_eq!(reloaded.spec.document_prompt, "passage: ");
    assert_eq!(reloaded.max_length(TextKind::Query), 64);
    assert_eq!(reloaded.max_length(TextKind::Document), 128);
    let same_len = LoadOptions { query_max_length: Some(128), document_max_length: Some(128), ..Default::default() };
    assert_all_close(&ours(&saved, &same_len, &texts), &theirs, &texts, "round trip");
}

/// Builds a loadable folder from a reference JSON set plus SPLADE-tiny's weights and tokenizer.
fn reference_folder(name: &str, into: &Path) {
    let src = repo().join("worker/tests/fixtures").join(name);
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    for entry in walk(&src) {
        copy(&entry, &into.join(entry.strip_prefix(&src).unwrap()));
    }
    let tiny = model("splade-tiny");
    copy(&tiny.join("model.safetensors"), &into.join("model.safetensors"));
    copy(&tiny.join("tokenizer.json"), &into.join("tokenizer.json"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn st5_and_st6_reference_folders_load_and_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let (st5, st6) = (tmp.path().join("st5"), tmp.path().join("st6"));
    reference_folder("st5-splade-folder", &st5);
    reference_folder("st6-splade-folder", &st6);
    let texts = parity_texts();
    let a = ours(&st5, &LoadOptions::default(), &texts);
    let b = ours(&st6, &LoadOptions::default(), &texts);
    for m in [&st5, &st6] {
        assert_eq!(SparseEncoder::load(m, Device::Cpu, &LoadOptions::default()).unwrap().max_seq_length, 256);
    }
    let (theirs, _) = theirs(&st6, &texts);
    assert_all_close(&a, &b, &texts, "5.x vs 6.x folder");
    assert_all_close(&b, &theirs, &texts, "6.x folder vs sentence-transformers");
}
