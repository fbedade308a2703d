//! `splade train` on Hugging Face Hub ids (dataset `source:` and `base_model`) from a hub cache offline, the
//! commit recorded in checkpoints and pinned on resume, and the error for an uncached id offline.

use std::path::Path;
use std::process::Command;

use splade_tests::hub::{files_of_dir, write_hub_repo, HostedRepo, LoopbackHub, RepoKind};
use splade_worker::model::resolve::resolve_model;
use splade_worker::model::{LoadOptions, SparseEncoder};
use tch::Device;

use crate::support::*;
use crate::train::{small_pairs, tiny_config};

/// A tiny config training on Hub dataset `test-org/pairs` with Hub model `test-org/splade-tiny`.
fn hub_config(out: &Path, training: &str) -> String {
    let text = tiny_config(out, Path::new("@DATA@"), training, "");
    let text = text.replace("source: @DATA@", "source: test-org/pairs");
    let tiny = model("splade-tiny");
    text.replace(&format!("base_model: {}", tiny.display()), "base_model: test-org/splade-tiny")
}

fn splade_train(cfg: &Path, cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_splade"))
        .args(["train", "--config", cfg.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn hub_commits(checkpoint: &Path) -> serde_json::Value {
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(checkpoint.join("trainer_state.json")).unwrap()).unwrap();
    state["hub_datasets"].clone()
}

#[test]
fn train_on_hub_dataset_and_model_offline_records_and_pins_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let pairs = std::fs::read(small_pairs(tmp.path(), 24)).unwrap();
    let first = write_hub_repo(&cache, RepoKind::Dataset, "test-org/pairs", &[("data/train.jsonl".into(), pairs.clone())]);
    write_hub_repo(&cache, RepoKind::Model, "test-org/splade-tiny", &files_of_dir(&model("splade-tiny")));

    let out = tmp.path().join("out");
    let training = "  max_steps: 2\n  per_device_train_batch_size: 4\n  save_strategy: steps\n  save_steps: 1\n  max_seq_length: 32";
    let cfg = tmp.path().join("cfg.yaml");
    std::fs::write(&cfg, hub_config(&out, training)).unwrap();
    let run = splade_train(&cfg, &cache);
    let log = String::from_utf8_lossy(&run.stderr).to_string() + &String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "splade train failed:\n{log}");
    assert!(out.join("final/model.safetensors").exists());
    assert_eq!(train_steps_of(&out).len(), 2);
    let recorded = hub_commits(&out.join("checkpoint-1"));
    assert_eq!(recorded["norquad"]["repo_id"], "test-org/pairs");
    assert_eq!(recorded["norquad"]["commit"], first.as_str());

    // `main` moves to a commit with other rows (a plan this run never saw); resuming from checkpoint-1 reads the
    // checkpoint's commit, so the plan fingerprint matches and checkpoint-2 records the same commit again.
    let half: Vec<u8> = String::from_utf8(pairs).unwrap().lines().take(12).flat_map(|l| format!("{l}\n").into_bytes()).collect();
    let second = write_hub_repo(&cache, RepoKind::Dataset, "test-org/pairs", &[("data/train.jsonl".into(), half)]);
    assert_ne!(first, second);
    std::fs::remove_dir_all(out.join("checkpoint-2")).unwrap();
    std::fs::remove_dir_all(out.join("final")).unwrap();
    let resume_cfg = tmp.path().join("resume.yaml");
    let text = hub_config(&out, training).replace("  report_to: none\n", "  report_to: none\n  resume_from_checkpoint: checkpoint-1\n");
    std::fs::write(&resume_cfg, text).unwrap();
    let run = splade_train(&resume_cfg, &cache);
    let log = String::from_utf8_lossy(&run.stderr).to_string() + &String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "resume failed:\n{log}");
    assert!(log.contains("pinned to the checkpoint's commit"), "{log}");
    assert_eq!(hub_commits(&out.join("checkpoint-2"))["norquad"]["commit"], first.as_str());

    // A fresh run reads the new head of `main`.
    let fresh = tmp.path().join("fresh");
    let fresh_cfg = tmp.path().join("fresh.yaml");
    std::fs::write(&fresh_cfg, hub_config(&fresh, training)).unwrap();
    assert!(splade_train(&fresh_cfg, &cache).status.success());
    assert_eq!(hub_commits(&fresh.join("checkpoint-1"))["norquad"]["commit"], second.as_str());
}

fn train_steps_of(out: &Path) -> Vec<serde_json::Value> {
    crate::train::train_steps(&out.join("metrics.jsonl"))
}

#[test]
fn train_offline_with_an_empty_hub_cache_names_the_id_the_cache_and_hf_hub_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("empty-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let out = tmp.path().join("out");
    // The model is a local folder here, so the dataset is what is missing.
    let text = tiny_config(&out, Path::new("@DATA@"), "  max_steps: 1", "").replace("source: @DATA@", "source: Fremtind/all-nli-norwegian");
    let cfg = tmp.path().join("cfg.yaml");
    std::fs::write(&cfg, text).unwrap();
    let run = splade_train(&cfg, &cache);
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    let searched = cache.join("datasets--Fremtind--all-nli-norwegian");
    for want in ["Fremtind/all-nli-norwegian", searched.to_str().unwrap(), "HF_HUB_OFFLINE"] {
        assert!(err.contains(want), "{want} missing from:\n{err}");
    }
    assert!(err.contains("is no local path"), "a bare owner/name also says it is no local folder:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn hub_model_download_fetches_every_router_module_file_and_a_failed_one_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    // sentence-transformers' inference-free Router layout: query_0_* / document_*_* folders named only in
    // router_config.json, plus exports a libtorch folder never reads.
    let folder = crate::inference_free::st_folder(tmp.path());
    let needed = files_of_dir(&folder);
    assert!(needed.iter().any(|(p, _)| p.starts_with("query_0_SparseStaticEmbedding/")), "{:?}", needed.iter().map(|f| &f.0).collect::<Vec<_>>());
    let mut hosted = needed.clone();
    hosted.push(("onnx/model.onnx".into(), b"an export".to_vec()));
    hosted.push(("tf_model.h5".into(), b"another framework".to_vec()));
    let broken = HostedRepo {
        failing: vec!["query_0_SparseStaticEmbedding/model.safetensors".into()],
        ..HostedRepo::new(RepoKind::Model, "test-org/broken", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", hosted.clone())
    };
    let server = LoopbackHub::start(vec![
        HostedRepo::new(RepoKind::Model, "test-org/inference-free", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", hosted),
        broken,
    ]);
    std::env::set_var("HF_ENDPOINT", &server.url);
    std::env::set_var("HF_HUB_CACHE", tmp.path().join("cache"));
    std::env::remove_var("HF_HUB_OFFLINE");

    let dir = resolve_model("test-org/inference-free").unwrap();
    for (p, content) in &needed {
        assert_eq!(&std::fs::read(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}")), content, "{p}");
    }
    assert!(!dir.join("onnx/model.onnx").exists() && !dir.join("tf_model.h5").exists(), "exports are not downloaded");
    let model = SparseEncoder::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    assert!(model.is_inference_free());

    let e = resolve_model("test-org/broken").unwrap_err().to_string();
    assert!(e.contains("query_0_SparseStaticEmbedding/model.safetensors") && e.contains("HTTP 500"), "{e}");
}
