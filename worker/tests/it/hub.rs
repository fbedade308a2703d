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
    assert_eq!(recorded["norquad"], serde_json::json!([{ "repo_id": "test-org/pairs", "revision": "main", "commit": first }]));

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
    assert_eq!(hub_commits(&out.join("checkpoint-2"))["norquad"][0]["commit"], first.as_str());

    // A fresh run reads the new head of `main`.
    let fresh = tmp.path().join("fresh");
    let fresh_cfg = tmp.path().join("fresh.yaml");
    std::fs::write(&fresh_cfg, hub_config(&fresh, training)).unwrap();
    assert!(splade_train(&fresh_cfg, &cache).status.success());
    assert_eq!(hub_commits(&fresh.join("checkpoint-1"))["norquad"][0]["commit"], second.as_str());
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

/// The seed's NLI fixture (`scripts/seed_loaders_ref.py fixtures`) as Hub dataset `Fremtind/all-nli-norwegian` in
/// `cache`, its README mapping the train split onto `train_folder`; returns the commit written.
fn write_nli_repo(cache: &Path, fixtures: &Path, train_folder: &str) -> String {
    if !fixtures.exists() {
        let out = Command::new(ref_python())
            .arg(repo().join("scripts/seed_loaders_ref.py"))
            .args(["fixtures", fixtures.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "seed_loaders_ref.py fixtures:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut files = files_of_dir(&fixtures.join("hub/Fremtind/all-nli-norwegian"));
    let readme = format!(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: default/{train_folder}/*.parquet\n  - split: dev\n    path: default/dev/*.parquet\n  - split: test\n    path: default/test/*.parquet\n---\n"
    );
    files.push(("README.md".into(), readme.into_bytes()));
    write_hub_repo(cache, RepoKind::Dataset, "Fremtind/all-nli-norwegian", &files)
}

/// `splade train` of a config whose only dataset is the seed's `nli` loader block, offline against `cache`,
/// materialising into `splade_cache`: (success, stderr + stdout).
fn splade_train_nli(cfg: &Path, cache: &Path, splade_cache: &Path) -> (bool, String) {
    let run = Command::new(env!("CARGO_BIN_EXE_splade"))
        .args(["train", "--config", cfg.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache)
        .env("SPLADE_CACHE", splade_cache)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (run.status.success(), String::from_utf8_lossy(&run.stderr).to_string() + &String::from_utf8_lossy(&run.stdout))
}

/// A seed loader block's Hub datasets are recorded in checkpoints like a Hub source (one pin per dataset it read,
/// under the block's name); a resume reads the recorded commit after `main` moved to other rows (the plan
/// fingerprint would refuse the new rows), and offline a recorded commit missing from the cache is an error
/// naming the dataset, the commit and `HF_HUB_OFFLINE` instead of silently reading `main`.
#[test]
fn seed_loader_block_records_its_hub_commits_and_a_resume_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, fixtures, splade_cache) = (tmp.path().join("hub"), tmp.path().join("fixtures"), tmp.path().join("splade-cache"));
    let first = write_nli_repo(&cache, &fixtures, "train");
    let out = tmp.path().join("out");
    let training = "  max_steps: 2\n  per_device_train_batch_size: 4\n  save_strategy: steps\n  save_steps: 1\n  max_seq_length: 32";
    let config = |resume: bool| {
        let text = tiny_config(&out, Path::new("@DATA@"), training, "").replace("  norquad:\n    source: @DATA@\n", "  nli:\n    enabled: true\n");
        if resume {
            text.replace("  report_to: none\n", "  report_to: none\n  resume_from_checkpoint: checkpoint-1\n")
        } else {
            text
        }
    };
    let cfg = tmp.path().join("cfg.yaml");
    std::fs::write(&cfg, config(false)).unwrap();
    let (ok, log) = splade_train_nli(&cfg, &cache, &splade_cache);
    assert!(ok, "splade train on the nli block failed:\n{log}");
    let recorded = hub_commits(&out.join("checkpoint-1"));
    assert_eq!(recorded["nli"], serde_json::json!([{ "repo_id": "Fremtind/all-nli-norwegian", "revision": "main", "commit": first }]));

    // `main` moves to a commit whose train split is other rows.
    let second = write_nli_repo(&cache, &fixtures, "dev");
    assert_ne!(first, second);
    std::fs::remove_dir_all(out.join("checkpoint-2")).unwrap();
    std::fs::remove_dir_all(out.join("final")).unwrap();
    let resume_cfg = tmp.path().join("resume.yaml");
    std::fs::write(&resume_cfg, config(true)).unwrap();
    let (ok, log) = splade_train_nli(&resume_cfg, &cache, &splade_cache);
    assert!(ok, "resume failed:\n{log}");
    assert!(log.contains("pinned to the checkpoint's commit"), "{log}");
    assert_eq!(hub_commits(&out.join("checkpoint-2"))["nli"][0]["commit"], first.as_str());

    // Offline with the recorded commit gone from the cache: an error, not a silent read of `main`.
    std::fs::remove_dir_all(out.join("checkpoint-2")).unwrap();
    std::fs::remove_dir_all(out.join("final")).unwrap();
    std::fs::remove_dir_all(cache.join("datasets--Fremtind--all-nli-norwegian/snapshots").join(&first)).unwrap();
    let (ok, log) = splade_train_nli(&resume_cfg, &cache, &splade_cache);
    assert!(!ok, "a resume whose recorded commit is not cached passed:\n{log}");
    for want in ["Fremtind/all-nli-norwegian", first.as_str(), "HF_HUB_OFFLINE"] {
        assert!(log.contains(want), "{want} missing from:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
}

/// A cluster records the commits too: the data plan a coordinator publishes carries each dataset block's Hub
/// commits (the `nli` loader block's and a Hub source's), and a trainer that follows the plan (a cluster rank,
/// which loads no dataset) writes them into its checkpoints' `trainer_state.json` as `splade train` does.
#[test]
fn data_plan_carries_hub_commits_into_a_plan_following_trainers_checkpoint() {
    use splade_common::config::Config;
    use splade_common::data::{load_training_data, DataPlan};
    let tmp = tempfile::tempdir().unwrap();
    let (cache, fixtures) = (tmp.path().join("hub"), tmp.path().join("fixtures"));
    let nli = write_nli_repo(&cache, &fixtures, "train");
    let pairs = write_hub_repo(&cache, RepoKind::Dataset, "test-org/pairs", &[("data/train.jsonl".into(), std::fs::read(small_pairs(tmp.path(), 24)).unwrap())]);
    // This test process reads the hub cache as `splade train` would (nextest runs each test in its own process).
    std::env::set_var("HF_HUB_CACHE", &cache);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("SPLADE_CACHE", tmp.path().join("splade-cache"));
    let text = tiny_config(&tmp.path().join("out"), Path::new("@DATA@"), "  max_steps: 2\n  per_device_train_batch_size: 4", "")
        .replace("  norquad:\n    source: @DATA@\n", "  nli:\n    enabled: true\n  pairs:\n    source: test-org/pairs\n");
    let cfg = Config::from_str(&text, "cfg.yaml").unwrap();
    let data = splade_common::store::block_on(load_training_data(cfg.datasets.enabled(), 42, &Default::default())).unwrap();
    let plan = DataPlan::build(&cfg.plan_spec(4), data.iter().map(splade_common::data::ScannedDataset::from_split).collect()).unwrap();
    // What a worker reads back from the published artifact (its manifest).
    let out = splade_common::store::Location::parse(&tmp.path().join("published").display().to_string()).unwrap();
    let r = splade_common::store::block_on(plan.publish(&out, 2)).unwrap();
    let published = splade_common::store::block_on(splade_common::data::PublishedPlan::fetch(&r, &Default::default())).unwrap();
    let trainer = splade_worker::train::Trainer::with_plan(cfg, Device::Cpu, std::sync::Arc::new(published), 1).unwrap();
    let dir = tmp.path().join("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    trainer.write_checkpoint_files(&dir).unwrap();
    let recorded = hub_commits(&dir);
    assert_eq!(recorded["nli"], serde_json::json!([{ "repo_id": "Fremtind/all-nli-norwegian", "revision": "main", "commit": nli }]));
    assert_eq!(recorded["pairs"], serde_json::json!([{ "repo_id": "test-org/pairs", "revision": "main", "commit": pairs }]));
}
