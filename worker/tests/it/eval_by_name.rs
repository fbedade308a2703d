//! Evaluation by name (issue #15 item 6): NanoBEIR from the Hub cache against sentence-transformers'
//! `SparseNanoBEIREvaluator` fed the same Parquet files through its dataset-loading hook, and the MTEB task table
//! against the `mteb` package.
//!
//! Tests that run the trainer binary are named `train_*` so nextest runs them one at a time.

use std::path::PathBuf;
use std::process::Command;

use splade_common::config::mteb::MTEB_TASKS;
use splade_common::hub::RepoKind;
use splade_tests::hub::{files_of_dir, write_hub_repo};

use crate::support::{model, reference_json, repo};

#[test]
fn mteb_table_equals_the_mteb_package() {
    let names: Vec<&str> = MTEB_TASKS.iter().map(|t| t.name).collect();
    let got = reference_json("mteb_task_table.py", &names);
    for (t, m) in MTEB_TASKS.iter().zip(got.as_array().unwrap()) {
        assert_eq!(m["name"], t.name);
        assert_eq!((m["dataset"].as_str().unwrap(), m["revision"].as_str().unwrap()), (t.dataset, t.revision), "{}", t.name);
        assert_eq!(m["eval_split"].as_str().unwrap(), t.eval_split, "{}", t.name);
        let subsets: Vec<(String, Vec<String>)> = m["subsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect()))
            .collect();
        let ours: Vec<(String, Vec<String>)> =
            t.subsets.iter().map(|(k, l)| (k.to_string(), l.iter().map(|x| x.to_string()).collect())).collect();
        assert_eq!(ours, subsets, "{}", t.name);
    }
}

#[test]
fn train_nanobeir_metrics_equal_sentence_transformers_evaluator() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("nanobeir");
    reference_json("st_nanobeir.py", &["make-fixture", "--norquad", repo().join("data/norquad").to_str().unwrap(), "--out", fixture.to_str().unwrap()]);
    let cache = dir.path().join("hub");
    write_hub_repo(&cache, RepoKind::Dataset, "sentence-transformers/NanoBEIR-en", &files_of_dir(&fixture));
    // One training step on a few NorQuAD pairs, evaluated on NanoBEIR at that step.
    let pairs: String = (0..8)
        .map(|i| format!("{}\n", serde_json::json!({"anchor": format!("spørsmål nummer {i} om Oslo"), "positive": format!("Oslo er hovedstaden i Norge, avsnitt {i}.")})))
        .collect();
    std::fs::write(dir.path().join("train.jsonl"), pairs).unwrap();
    let out_dir = dir.path().join("out");
    let cfg = dir.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model:\n  base_model: {}\ntraining:\n  output_dir: {}\n  max_steps: 1\n  per_device_train_batch_size: 4\n  per_device_eval_batch_size: 8\n  max_seq_length: 64\n  eval_strategy: steps\n  eval_steps: 1\n  save_strategy: 'no'\n  metric_for_best_model: eval_NanoBEIR_mean_dot_ndcg@10\n  report_to: none\ndatasets:\n  pairs:\n    source: {}\n    format: jsonl\nevaluation:\n  evaluator: sparse_nanobeir\n  nanobeir_datasets: [msmarco, nfcorpus]\nhardware:\n  device: cpu\n  num_threads: 1\n",
            model("splade-tiny").display(),
            out_dir.display(),
            dir.path().join("train.jsonl").display()
        ),
    )
    .unwrap();
    let bin = std::env::var_os("SPLADE_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_splade")));
    let out = Command::new(bin)
        .args(["train", "--config"])
        .arg(&cfg)
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "splade train failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();
    let mut ours = serde_json::Map::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] == "scalars" {
            for (k, x) in v["values"].as_object().unwrap() {
                if k.starts_with("eval_Nano") {
                    ours.insert(k.clone(), x.clone());
                }
            }
        }
    }
    let snapshot = std::fs::read_dir(cache.join("datasets--sentence-transformers--NanoBEIR-en/snapshots")).unwrap().next().unwrap().unwrap().path();
    let st = reference_json(
        "st_nanobeir.py",
        &["evaluate", "--model", out_dir.join("final").to_str().unwrap(), "--snapshot", snapshot.to_str().unwrap(), "--names", "msmarco", "nfcorpus"],
    );
    let mut compared = Vec::new();
    for (k, v) in st.as_object().unwrap() {
        let key = format!("eval_{k}");
        if let Some(o) = ours.get(&key) {
            let (a, b) = (o.as_f64().unwrap(), v.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{key}: ours {a} vs ST {b}");
            compared.push(key);
        }
    }
    for want in [
        "eval_NanoBEIR_mean_dot_ndcg@10",
        "eval_NanoBEIR_mean_dot_mrr@10",
        "eval_NanoBEIR_mean_dot_map@100",
        "eval_NanoMSMARCO_dot_ndcg@10",
        "eval_NanoNFCorpus_dot_recall@10",
        "eval_NanoMSMARCO_query_active_dims",
        "eval_NanoBEIR_mean_corpus_active_dims",
    ] {
        assert!(compared.iter().any(|c| c == want), "{want} not compared; ours {:?}; ST {:?}", ours.keys(), st.as_object().unwrap().keys());
    }
    eprintln!("{} metrics equal ST's within 1e-4", compared.len());
}

/// `splade eval --task NorQuadRetrieval` reads MTEB's dataset at MTEB's revision from the hub cache. The `mteb`
/// package cannot read that offline (it loads with `datasets.load_dataset(path, revision)`, which offline reads
/// only datasets' Arrow cache, not the hub cache), so the reference is our BEIR path on the same rows, whose
/// metrics `pytrec_eval` and ST's evaluator check (`eval_parity.rs`, `common` eval tests).
#[test]
fn mteb_task_by_name_reads_the_hub_cache_and_carries_its_languages() {
    let dir = tempfile::tempdir().unwrap();
    let (stand_in, beir) = (dir.path().join("repo"), dir.path().join("NorQuAD-beir"));
    reference_json(
        "mteb_fixture.py",
        &["--norquad", repo().join("data/norquad").to_str().unwrap(), "--repo", stand_in.to_str().unwrap(), "--beir", beir.to_str().unwrap()],
    );
    let task = splade_common::config::mteb::resolve_task("NorQuadRetrieval").unwrap().task;
    let cache = dir.path().join("hub");
    splade_tests::hub::write_hub_repo_at(&cache, RepoKind::Dataset, task.dataset, task.revision, &files_of_dir(&stand_in));
    let bin = std::env::var_os("SPLADE_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_splade")));
    let eval = |task_arg: &str, out: &str| {
        let o = Command::new(&bin)
            .args(["eval", "--device", "cpu", "--max-length", "64", "--model"])
            .arg(model("splade-tiny"))
            .args(["--task", task_arg, "--output"])
            .arg(dir.path().join(out))
            .env("HF_HUB_CACHE", &cache)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "splade eval --task {task_arg}:\n{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = eval("NorQuAD", "by-name");
    assert!(err.contains("the seed's short name for MTEB's NorQuadRetrieval"), "{err}");
    eval(beir.to_str().unwrap(), "beir");
    let read = |p: PathBuf| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let named = read(dir.path().join("by-name/NorQuadRetrieval.json"));
    let local = read(dir.path().join("beir/NorQuAD-beir.json"));
    let (n, l) = (&named["scores"]["test"][0], &local["scores"]["test"][0]);
    assert_eq!(n["languages"], serde_json::json!(["nob-Latn"]), "{named}");
    assert_eq!(l["languages"], serde_json::json!(["und"]), "a local folder with no known name: {local}");
    let mut compared = 0;
    for (k, v) in l.as_object().unwrap() {
        if k.contains("_at_") || k == "main_score" {
            assert_eq!(n[k], *v, "{k}");
            compared += 1;
        }
    }
    assert!(compared > 20, "{compared} metrics compared");
}

/// `evaluation.mteb_tasks` (the seed's short name `NorQuAD`) is evaluated at each evaluation and at the end
/// through the path `splade eval --task NorQuadRetrieval` takes, from the cached stand-in task: logged as
/// `eval_NorQuadRetrieval_<metric>`, equal to `splade eval --task` on the same checkpoint, and
/// `metric_for_best_model` can name it (MTEB's spelling `ndcg_at_10`), so the best checkpoint is chosen by it.
#[test]
fn train_evaluates_mteb_tasks_by_name_as_splade_eval_does() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = dir.path().join("repo");
    reference_json(
        "mteb_fixture.py",
        &["--norquad", repo().join("data/norquad").to_str().unwrap(), "--repo", stand_in.to_str().unwrap(), "--beir", dir.path().join("beir").to_str().unwrap()],
    );
    let task = splade_common::config::mteb::resolve_task("NorQuadRetrieval").unwrap().task;
    let cache = dir.path().join("hub");
    splade_tests::hub::write_hub_repo_at(&cache, RepoKind::Dataset, task.dataset, task.revision, &files_of_dir(&stand_in));
    let pairs: String = (0..16)
        .map(|i| format!("{}\n", serde_json::json!({"anchor": format!("spørsmål nummer {i} om Oslo"), "positive": format!("Oslo er hovedstaden i Norge, avsnitt {i}.")})))
        .collect();
    std::fs::write(dir.path().join("train.jsonl"), pairs).unwrap();
    let out_dir = dir.path().join("out");
    let cfg = dir.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model:\n  base_model: {}\ntraining:\n  output_dir: {}\n  max_steps: 2\n  learning_rate: 1.0e-3\n  per_device_train_batch_size: 4\n  per_device_eval_batch_size: 8\n  max_seq_length: 64\n  eval_strategy: steps\n  eval_steps: 1\n  save_strategy: steps\n  save_steps: 1\n  metric_for_best_model: eval_NorQuadRetrieval_ndcg_at_10\n  report_to: none\ndatasets:\n  pairs:\n    source: {}\n    format: jsonl\nevaluation:\n  mteb_tasks: [NorQuAD]\nhardware:\n  device: cpu\n  num_threads: 1\n",
            model("splade-tiny").display(),
            out_dir.display(),
            dir.path().join("train.jsonl").display()
        ),
    )
    .unwrap();
    let bin = std::env::var_os("SPLADE_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_splade")));
    let out = Command::new(&bin).args(["train", "--config"]).arg(&cfg).env("HF_HUB_CACHE", &cache).env("HF_HUB_OFFLINE", "1").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "splade train failed:\n{log}");
    assert!(!log.contains("evaluation.mteb_tasks: the names are checked"), "mteb_tasks is no longer listed as not acted on:\n{log}");
    // eval_NorQuadRetrieval_ndcg@10 by step.
    let mut logged: Vec<(u64, f64)> = Vec::new();
    for line in std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(x) = v["values"]["eval_NorQuadRetrieval_ndcg@10"].as_f64() {
            logged.push((v["step"].as_u64().unwrap(), x));
        }
    }
    assert!(logged.iter().any(|(s, _)| *s == 1) && logged.iter().any(|(s, _)| *s == 2), "one evaluation per step: {logged:?}");
    // The same number as `splade eval --task NorQuadRetrieval` on each checkpoint.
    for (step, ours) in logged.iter().filter(|(s, _)| *s <= 2) {
        let eval_out = dir.path().join(format!("eval-{step}"));
        let o = Command::new(&bin)
            .args(["eval", "--device", "cpu", "--max-length", "64", "--model"])
            .arg(out_dir.join(format!("checkpoint-{step}")))
            .args(["--task", "NorQuadRetrieval", "--output"])
            .arg(&eval_out)
            .env("HF_HUB_CACHE", &cache)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "splade eval:\n{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(eval_out.join("NorQuadRetrieval.json")).unwrap()).unwrap();
        let theirs = r["scores"]["test"][0]["ndcg_at_10"].as_f64().unwrap();
        assert!((ours - theirs).abs() <= 1e-6, "step {step}: training logged {ours}, splade eval gives {theirs}");
    }
    // The best checkpoint is the one with the higher NDCG@10 (the first on a tie, as transformers keeps it).
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("checkpoint-2/trainer_state.json")).unwrap()).unwrap();
    let (best_step, best) = logged.iter().filter(|(s, _)| *s <= 2).fold((0, f64::MIN), |b, (s, v)| if *v > b.1 { (*s, *v) } else { b });
    assert_eq!(state["best_metric"].as_f64().unwrap(), best, "{state}");
    assert_eq!(state["best_checkpoint"].as_str().unwrap(), format!("checkpoint-{best_step}"), "{state}");
}
