//! CSR (dense encoder + pooling + SparseAutoEncoder): encoding equal to sentence-transformers 6.2 on
//! an ST-saved CSR folder (all-MiniLM-L6-v2 with a seeded random autoencoder), `max_active_dims`, our
//! saved folder loading back in sentence-transformers, and the bad-input errors.

use std::path::Path;

use splade_worker::model::{LoadOptions, SparseEncoder, TextKind};
use tch::Device;

use crate::parity::{assert_all_close, ours, theirs};
use crate::support::*;

fn texts() -> Vec<(String, bool)> {
    parity_texts().into_iter().take(12).collect()
}

/// Encodes with sentence-transformers with `max_active_dims` passed to `encode_query/encode_document`.
fn theirs_max_active(dir: &Path, texts: &[(String, bool)], k: usize) -> Vec<(Vec<u32>, Vec<f32>)> {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.json");
    let items: Vec<_> =
        texts.iter().map(|(t, q)| serde_json::json!({"text": t, "kind": if *q {"query"} else {"document"}})).collect();
    std::fs::write(&input, serde_json::to_string(&items).unwrap()).unwrap();
    let out = tmp.path().join("out.json");
    let ks = k.to_string();
    st_reference(&["encode", "--model", dir.to_str().unwrap(), "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-active-dims", &ks]);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    v["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let idx = e["indices"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let val = e["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (idx, val)
        })
        .collect()
}

#[test]
fn csr_encode_equals_sentence_transformers_on_st_saved_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = st_csr_folder(tmp.path(), &[]);
    let t = texts();
    let a = ours(&dir, &LoadOptions::default(), &t);
    let (b, meta) = theirs(&dir, &t);
    assert_all_close(&a, &b, &t, "CSR encode");
    for (i, e) in a.iter().enumerate() {
        assert!(!e.0.is_empty() && e.0.len() <= 32, "text {i}: {} active latents (k = 32)", e.0.len());
        assert!(e.0.iter().all(|&j| j < 1536), "latent ids are below hidden_dim");
    }
    assert_eq!(meta["max_seq_length"].as_u64(), Some(128));
    let m = SparseEncoder::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    assert_eq!(m.vocab_size(), 1536, "the embedding dimension of a CSR model is hidden_dim");
    // The encoder's MLM head is neither created in the VarStore nor saved.
    assert!(m.named_parameters().iter().all(|(n, _)| !n.starts_with("cls.")));
}

#[test]
fn csr_max_active_dims_as_sentence_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = st_csr_folder(tmp.path(), &["--normalize"]);
    let t: Vec<_> = texts().into_iter().take(6).collect();
    for k in [8usize, 64] {
        let mut m = SparseEncoder::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        m.max_active_dims = Some(k as i64);
        let a: Vec<_> = t
            .iter()
            .map(|(s, q)| m.encode(&[s.as_str()], if *q { TextKind::Query } else { TextKind::Document }, 1).unwrap().remove(0))
            .collect();
        let b = theirs_max_active(&dir, &t, k);
        assert_all_close(&a, &b, &t, &format!("CSR max_active_dims {k}"));
        assert!(a.iter().all(|e| e.0.len() <= k));
        if k == 64 {
            assert!(a.iter().any(|e| e.0.len() > 32), "max_active_dims above k activates more latents, as in sentence-transformers");
        }
    }
}

#[test]
fn csr_saved_folder_loads_in_sentence_transformers_with_equal_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = st_csr_folder(tmp.path(), &[]);
    let m = SparseEncoder::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    let saved = tmp.path().join("ours");
    m.save(&saved).unwrap();
    assert!(saved.join("2_Normalize").exists() && saved.join("3_SparseAutoEncoder/model.safetensors").exists());
    let t = texts();
    let a = ours(&saved, &LoadOptions::default(), &t);
    let (b, meta) = theirs(&saved, &t);
    assert_all_close(&a, &b, &t, "our saved CSR folder in sentence-transformers 6.2");
    let warnings = crate::parity::weight_warnings(&meta);
    assert!(warnings.is_empty(), "load warnings: {warnings:?}");
    let (c, _) = crate::parity::theirs_on(Stack::St52, &saved, &t, false, 8);
    assert_all_close(&a, &c, &t, "our saved CSR folder in sentence-transformers 5.2");
}

/// A CSR training config on `base` (a CSR folder or a dense base) over NorQuAD pairs.
pub fn csr_config(base: &Path, out: &Path, steps: u32, extra_model: &str) -> String {
    format!(
        r#"
model:
  base_model: {base}
  architecture: csr
  dropout: 0.0
{extra_model}
training:
  output_dir: {out}
  max_steps: {steps}
  per_device_train_batch_size: 16
  learning_rate: 1.0e-4
  warmup_ratio: 0.1
  max_seq_length: 64
  logging_steps: 1
  seed: 42
  save_strategy: "no"
  report_to: none
loss:
  type: csr_loss
  inner_loss: sparse_multiple_negatives_ranking_loss
  aux_loss_weight: 0.1
datasets:
  norquad:
    source: {data}
hardware:
  device: cpu
"#,
        base = base.display(),
        out = out.display(),
        data = repo().join("data/norquad/train.jsonl.gz").display(),
    )
}

#[test]
fn csr_train_loss_parts_and_dead_latents_match_sentence_transformers() {
    use splade_common::config::Config;
    use splade_worker::train::{run_training, TrainOptions};
    let tmp = tempfile::tempdir().unwrap();
    // dead_threshold 5: latents go dead within the 8 steps, so the auxiliary term is exercised.
    let dir = st_csr_folder(tmp.path(), &["--dead-threshold", "5", "--max-length", "64"]);
    let out = tmp.path().join("out");
    let cfg = Config::from_str(&csr_config(&dir, &out, 8, ""), "csr.yaml").unwrap();
    let plan = tmp.path().join("plan.jsonl");
    run_training(cfg, &TrainOptions { dump_batches: Some(plan.clone()), ..Default::default() }).unwrap();
    let ours = crate::train::train_steps(&out.join("metrics.jsonl"));
    assert_eq!(ours.len(), 8);
    let steps = tmp.path().join("st.json");
    let data = repo().join("data/norquad/train.jsonl.gz");
    let status = std::process::Command::new(ref_python())
        .arg(repo().join("scripts/reference/st_train_replay.py"))
        .args(["--model", dir.to_str().unwrap(), "--data", data.to_str().unwrap(), "--csr", "--beta", "0.1"])
        .args(["--plan", plan.to_str().unwrap(), "--out", steps.to_str().unwrap(), "--max-steps", "8"])
        .status()
        .unwrap();
    assert!(status.success());
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&steps).unwrap()).unwrap();
    assert_eq!(theirs.len(), 8);
    let mut worst = 0f64;
    for (o, t) in ours.iter().zip(&theirs) {
        let step = o["step"].as_u64().unwrap();
        for (ok, tk) in [
            ("train/loss_ranking", "ranking"),
            ("train/loss_reconstruction_k", "reconstruction_k"),
            ("train/loss_reconstruction_4k", "reconstruction_4k"),
            ("train/loss_reconstruction_aux", "reconstruction_aux"),
            ("train/learning_rate", "learning_rate"),
        ] {
            let (a, b) = (o[ok].as_f64().unwrap(), t[tk].as_f64().unwrap());
            let rel = (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
            worst = worst.max(rel);
            assert!(rel <= 1e-4 || (a - b).abs() <= 1e-12, "step {step} {ok}: ours {a} vs sentence-transformers {b}");
        }
        for (ok, tk) in [("train/csr_dead_latents", "dead_latents"), ("train/csr_stats_sum", "stats_sum")] {
            assert_eq!(o[ok].as_f64().unwrap(), t[tk].as_f64().unwrap(), "step {step} {ok}");
        }
    }
    eprintln!("worst relative difference of a CSR loss part: {worst:e}");
    let last = &theirs[7];
    assert!(last["dead_latents"].as_f64().unwrap() > 0.0 && last["reconstruction_aux"].as_f64().unwrap() > 0.0,
        "the auxiliary term must be exercised: {last}");
}

fn csr_error(yaml: &str) -> String {
    use splade_common::config::Config;
    use splade_worker::train::{run_training, TrainOptions};
    match Config::from_str(yaml, "bad.yaml") {
        Err(e) => e.to_string(),
        Ok(cfg) => run_training(cfg, &TrainOptions::default()).err().expect("training must refuse this config").to_string(),
    }
}

#[test]
fn csr_bad_input_errors_name_the_key_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let minilm = model("minilm");
    let e = csr_error(&csr_config(&minilm, &out, 2, "  csr_k: 600\n  csr_hidden_dim: 512"));
    assert!(e.contains("model.csr_k") && e.contains("csr_hidden_dim") && !e.contains('\n'), "{e}");
    // A SPLADE SparseEncoder folder (MLMTransformer + SpladePooling): no dense pooling to sparsify.
    let splade = tmp.path().join("splade");
    st_reference(&["make-tied", "--base", minilm.to_str().unwrap(), "--out", splade.to_str().unwrap()]);
    let e = csr_error(&csr_config(&splade, &out, 2, ""));
    assert!(e.contains("dense Pooling") && e.contains("model.base_model") && !e.contains('\n'), "{e}");
    let e = csr_error(&csr_config(&minilm, &out, 2, "").replace("  architecture: csr\n", ""));
    assert!(e.contains("loss.type") && e.contains("architecture: csr") && !e.contains('\n'), "{e}");
}
