//! Windowed documents in training (issue 8, `document_windows:` with `training_mode`): in mode `all`
//! the training-side document embedding is the max of separately encoded windows (the vector
//! `encode --doc-window` gives) and its gradients equal a per-window dense reference's, through
//! plain batches and gradient cache; `sample` trains on one window chosen from (seed, step, text);
//! `splade train` with windows logs its cost and resumes bit-exactly after SIGTERM.

use std::path::{Path, PathBuf};

use splade_common::config::{Config, WindowTrainingMode};
use splade_worker::model::{dense_rows_to_sparse, LoadOptions, SparseEncoder, TextKind, WindowSpec};
use splade_worker::train::windows::{embed_documents, sampled_window, TrainingWindows};
use splade_worker::train::{run_training, TrainOptions, Trainer};
use tch::{Device, Kind, Tensor};

use crate::support::*;
use crate::train::{accum_config, sigterm_after, tiny_config, train_steps};

const SPEC: &str = "32:16:4";

/// `n` (anchor, positive, negative) rows from NorQuAD: questions with ~`chars`-character passages,
/// long enough for several 32-token windows.
fn rows(n: usize, chars: usize) -> Vec<(String, String, String)> {
    let queries: Vec<serde_json::Value> =
        std::fs::read_to_string(repo().join("data/norquad/queries.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let corpus: Vec<serde_json::Value> =
        std::fs::read_to_string(repo().join("data/norquad/corpus.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let cut = |i: usize| -> String { corpus[i % corpus.len()]["text"].as_str().unwrap().chars().take(chars).collect() };
    (0..n).map(|i| (queries[i]["text"].as_str().unwrap().to_string(), cut(i), cut(i + 7))).collect()
}

fn write_rows(path: &Path, rows: &[(String, String, String)], negatives: bool) {
    let mut s = String::new();
    for (a, p, n) in rows {
        let v = if negatives {
            serde_json::json!({"anchor": a, "positive": p, "negative": n})
        } else {
            serde_json::json!({"anchor": a, "positive": p})
        };
        s += &v.to_string();
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn windows_yaml(mode: &str) -> String {
    let s: WindowSpec = SPEC.parse().unwrap();
    format!("document_windows:\n  size: {}\n  stride: {}\n  max_windows: {}\n  training_mode: {mode}\n", s.size, s.stride, s.max_windows.unwrap())
}

fn tiny() -> SparseEncoder {
    let opts = LoadOptions { max_seq_length: Some(64), dropout: Some(0.0), ..Default::default() };
    SparseEncoder::load(&model("splade-tiny"), Device::Cpu, &opts).unwrap()
}

/// Each window of `text` encoded alone (a batch of one, no padding) with the dense head: `[windows, V]`.
fn windows_alone(m: &SparseEncoder, text: &str, spec: &WindowSpec) -> Tensor {
    let ids = m.window_ids(text, TextKind::Document, spec).unwrap();
    let rows: Vec<Tensor> = ids.iter().map(|w| m.forward_with_head(&m.tokenizer.pad(std::slice::from_ref(w)), false, false)).collect();
    Tensor::cat(&rows, 0)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn windowed_training_embedding_equals_the_encode_doc_window_vector() {
    let m = tiny();
    let spec: WindowSpec = SPEC.parse().unwrap();
    let docs: Vec<String> = rows(5, 400).into_iter().map(|r| r.1).chain(["Kort tekst.".to_string()]).collect();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let all = TrainingWindows { spec, mode: WindowTrainingMode::All };
    let got = tch::no_grad(|| embed_documents(&m, &refs, Some(&all), None, 42, 0, false).unwrap());
    assert!(got.windows > 2 * docs.len(), "documents too short to test windowing: {} windows for {} documents", got.windows, docs.len());
    assert!(got.windows <= 4 * docs.len(), "max_windows 4 not respected: {} windows", got.windows);
    // What `splade encode --doc-window 32:16:4` computes for the same texts.
    let (encoded, stats) = m.encode_windowed(&refs, TextKind::Document, &spec, 64).unwrap();
    assert_eq!(stats.windows, got.windows);
    let rows = dense_rows_to_sparse(&got.embeddings);
    for (d, (a, b)) in rows.iter().zip(&encoded).enumerate() {
        assert_sparse_close(a, b, 1e-5, &format!("document {d}: training embedding vs encode --doc-window"));
    }
    // And the max of separately encoded windows, computed here independently of the library's batching.
    for (d, text) in refs.iter().enumerate() {
        let want = tch::no_grad(|| windows_alone(&m, text, &spec).amax([0i64].as_slice(), false));
        let diff = max_abs_diff(&got.embeddings.get(d as i64), &want);
        assert!(diff <= 1e-5, "document {d}: training embedding vs max of windows encoded alone: max |Δ| {diff}");
    }
    // A text that fits one window gets its plain (truncation-free) vector.
    let plain = m.encode(&["Kort tekst."], TextKind::Document, 1).unwrap();
    assert_sparse_close(&rows[docs.len() - 1], &plain[0], 1e-5, "single-window text vs plain encode");

    // `sample`: one window a document, the one `sampled_window` names, encoded as if alone.
    let sample = TrainingWindows { spec, mode: WindowTrainingMode::Sample };
    let alone: Vec<Tensor> = refs.iter().map(|t| tch::no_grad(|| windows_alone(&m, t, &spec))).collect();
    let mut picked = std::collections::BTreeSet::new();
    for step in [0u64, 1, 2, 3] {
        let got = tch::no_grad(|| embed_documents(&m, &refs, Some(&sample), None, 42, step, false).unwrap());
        assert_eq!(got.windows, docs.len(), "sample mode encodes one window per document");
        for (d, (text, alone)) in refs.iter().zip(&alone).enumerate() {
            let k = sampled_window(42, step, text, alone.size()[0] as usize);
            picked.insert(k);
            let diff = max_abs_diff(&got.embeddings.get(d as i64), &alone.get(k as i64));
            assert!(diff <= 1e-5, "step {step} document {d}: sampled window {k}: max |Δ| {diff}");
        }
    }
    assert!(picked.len() > 1, "sample mode always drew the same window: {picked:?}");
}

fn all_grads(t: &Trainer) -> Vec<Tensor> {
    crate::train::all_grads(t).into_iter().map(|(_, g)| g).collect()
}

fn relative_l2(a: &[Tensor], b: &[Tensor]) -> (f64, f64) {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).square().sum(Kind::Double).double_value(&[])).sum();
    let den: f64 = b.iter().map(|y| y.square().sum(Kind::Double).double_value(&[])).sum();
    ((num / den).sqrt(), den)
}

#[test]
fn windowed_training_gradients_equal_a_per_window_dense_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    write_rows(&data, &rows(8, 360), true);
    let mk = |windows: bool, gc: bool, accum: usize| {
        let mut text = accum_config(&tmp.path().join("o"), &data, 2, 4, gc, accum, "");
        if windows {
            text += &windows_yaml("all");
        }
        Config::from_str(&text, "w.yaml").unwrap()
    };
    // The reference: the same rows and loss, each document the max (`max_dim`, as SPLADE pooling)
    // of its windows encoded one at a time with the dense head, queries plain.
    let reference = Trainer::new(mk(false, false, 1), Device::Cpu, 4, 1).unwrap();
    let batch = reference.plan.step(1).unwrap().clone();
    let ex = reference.examples(&batch, &batch.rows);
    let spec: WindowSpec = SPEC.parse().unwrap();
    let m = &reference.model;
    let anchors: Vec<&str> = ex.iter().map(|e| e.anchor.as_str()).collect();
    let q = m.forward_with_head(&m.tokenize(&anchors, TextKind::Query).unwrap(), false, false);
    let cands: Vec<&str> = ex.iter().map(|e| e.positive.as_str()).chain(ex.iter().map(|e| e.negatives[0].as_str())).collect();
    let mut n_windows = 0;
    let d = Tensor::stack(
        &cands
            .iter()
            .map(|t| {
                let w = windows_alone(m, t, &spec);
                n_windows += w.size()[0];
                w.max_dim(0, false).0
            })
            .collect::<Vec<_>>(),
        0,
    );
    assert!(n_windows as usize > 2 * cands.len(), "documents too short: {n_windows} windows for {} documents", cands.len());
    let parts = reference.loss.compute(&q, &d, None, 0, reference.state.total_steps).unwrap();
    parts.total.backward();
    let want = all_grads(&reference);

    for (gc, accum) in [(false, 1), (true, 2)] {
        let t = Trainer::new(mk(true, gc, accum), Device::Cpu, 4, accum).unwrap();
        assert_eq!(t.plan.step(1).unwrap(), &batch, "same plan");
        let stats = t.forward_backward(&t.examples(&batch, &batch.rows)).unwrap();
        let label = if gc { "gradient cache" } else { "plain batch" };
        assert!((stats.loss - parts.ranking - parts.flops_query - parts.flops_document).abs() <= 1e-5 * stats.loss.abs(), "{label}: loss {} vs reference", stats.loss);
        let (per_doc, available) = stats.windows_per_doc.expect("windowed training reports windows per document");
        assert!((per_doc - n_windows as f64 / cands.len() as f64).abs() < 1e-9, "{label}: windows_per_doc {per_doc}, reference {n_windows} windows");
        assert_eq!(per_doc, available, "mode all encodes every available window");
        let (rel, den) = relative_l2(&all_grads(&t), &want);
        assert!(den > 0.0 && rel <= 1e-5, "{label}: windowed gradients vs per-window dense reference: relative L2 {rel}");
    }

    // The comparison can fail: truncated documents (no windows) give other gradients.
    let plain = Trainer::new(mk(false, false, 1), Device::Cpu, 4, 1).unwrap();
    plain.forward_backward(&plain.examples(&batch, &batch.rows)).unwrap();
    let (rel, _) = relative_l2(&all_grads(&plain), &want);
    assert!(rel > 1e-3, "truncated documents should not match the windowed reference (relative L2 {rel})");
}

fn pairs_file(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("pairs.jsonl");
    write_rows(&p, &rows(n, 300), false);
    p
}

#[test]
fn train_windows_all_mode_runs_and_logs_windows_per_doc() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs_file(tmp.path(), 24);
    let out = tmp.path().join("out");
    let training = "  max_steps: 3\n  per_device_train_batch_size: 4\n  save_strategy: \"no\"";
    let text = tiny_config(&out, &data, training, "") + &windows_yaml("all");
    let outcome = run_training(Config::from_str(&text, "all.yaml").unwrap(), &TrainOptions::default()).unwrap();
    assert_eq!(outcome.final_step, 3);
    assert!(out.join("final/model.safetensors").exists());
    let steps = train_steps(&out.join("metrics.jsonl"));
    assert_eq!(steps.len(), 3);
    for s in &steps {
        let w = s["train/windows_per_doc"].as_f64().unwrap_or_else(|| panic!("no train/windows_per_doc in {s}"));
        assert!(w > 1.5 && w <= 4.0, "windows per document {w} (documents of ~300 characters, 32-token windows, max 4)");
        assert_eq!(s["train/windows_available_per_doc"].as_f64(), Some(w));
        assert!(s["train/loss"].as_f64().unwrap().is_finite());
    }
}

fn safetensors_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

/// `sample` mode with gradient cache: a run stopped by SIGTERM and resumed ends with the same bytes as
/// a straight run (the window draws are a function of the step), and it logs one window encoded per
/// document out of several available.
#[test]
fn train_windows_sample_resume_after_sigterm_is_bitwise_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs_file(tmp.path(), 60);
    let training = "  max_steps: 16\n  per_device_train_batch_size: 2\n  gradient_accumulation_steps: 2\n  gradient_cache: true\n  \
                    save_strategy: steps\n  save_steps: 4";
    let run = |out: &Path, resume: bool| -> std::process::Child {
        let mut text = tiny_config(out, &data, training, "") + &windows_yaml("sample");
        // Dropout on, so the replay of the RNG per step is part of what is checked.
        text = text.replace("  dropout: 0.0\n", "  dropout: 0.1\n");
        crate::train::spawn_train(out, &text, resume)
    };
    let straight = tmp.path().join("straight");
    assert!(run(&straight, false).wait().unwrap().success());
    let steps = train_steps(&straight.join("metrics.jsonl"));
    assert_eq!(steps.len(), 16);
    for s in &steps {
        assert_eq!(s["train/windows_per_doc"].as_f64(), Some(1.0), "sample mode encodes one window per document: {s}");
        let a = s["train/windows_available_per_doc"].as_f64().unwrap();
        assert!(a > 1.5 && a <= 4.0, "windows available per document {a}");
    }

    let stopped = tmp.path().join("stopped");
    let mut child = run(&stopped, false);
    let metrics = stopped.join("metrics.jsonl");
    sigterm_after(&mut child, &metrics, 6);
    let done = train_steps(&metrics).len();
    assert!(done < 16 && !stopped.join("final").exists(), "the run was not interrupted (stopped at step {done})");
    assert!(stopped.join(format!("checkpoint-{done}/manifest.json")).exists(), "checkpoint of the stop step");

    assert!(run(&stopped, true).wait().unwrap().success());
    // assert! rather than assert_eq!: a failure must not print megabytes of weights.
    assert!(
        safetensors_bytes(&straight.join("final")) == safetensors_bytes(&stopped.join("final")),
        "resumed windowed run's final weights differ from the straight run's"
    );
}
