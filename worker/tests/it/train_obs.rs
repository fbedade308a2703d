//! `splade train` observability and evaluation during training, against the real tools: a scrape
//! checked by `promtool` and a `prometheus` server, TensorBoard's `EventAccumulator`, a real
//! `mlflow server`, and best-checkpoint selection on a tiny BEIR task built from NorQuAD.
//!
//! Tests that start servers or the trainer binary are named `train_*` so nextest runs them one at
//! a time. Needs `scripts/setup.sh` (SPLADE-tiny, Debian `prometheus`, the tools venv).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use splade_tests::tools::{
    free_port, http_get, obs_check, promtool_check_metrics, wait_until, MlflowServer, PrometheusServer,
};

use crate::support::{model, repo};

/// A training run's files: config, output dir, the tiny task.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Writes 40 (question, passage) training pairs and a 20-document / 10-query BEIR task `tiny`
    /// from `data/norquad`.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = repo().join("data/norquad");
        let read_jsonl = |f: &str| -> BTreeMap<String, serde_json::Value> {
            std::fs::read_to_string(data.join(f))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    (v["_id"].as_str().unwrap().to_string(), v)
                })
                .collect()
        };
        let corpus = read_jsonl("corpus.jsonl");
        let queries = read_jsonl("queries.jsonl");
        let qrels: Vec<(String, String)> = std::fs::read_to_string(data.join("qrels/dev.tsv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let mut p = l.split('\t');
                (p.next().unwrap().to_string(), p.next().unwrap().to_string())
            })
            .collect();
        let doc_text = |id: &str| {
            let d = &corpus[id];
            format!("{} {}", d["title"].as_str().unwrap_or(""), d["text"].as_str().unwrap())
        };
        // Training pairs: question → its passage, cut to keep tokenisation cheap.
        let mut train = String::new();
        for (q, d) in qrels.iter().rev().take(40) {
            let passage: String = doc_text(d).chars().take(300).collect();
            train.push_str(&serde_json::json!({"anchor": queries[q]["text"], "positive": passage}).to_string());
            train.push('\n');
        }
        std::fs::write(dir.path().join("train.jsonl"), train).unwrap();
        // The task: 10 queries with distinct relevant documents, padded to 20 documents.
        let task = dir.path().join("tiny");
        std::fs::create_dir_all(task.join("qrels")).unwrap();
        let mut picked: Vec<(String, String)> = Vec::new();
        for (q, d) in &qrels {
            if picked.len() < 10 && !picked.iter().any(|(_, pd)| pd == d) {
                picked.push((q.clone(), d.clone()));
            }
        }
        let mut docs: Vec<String> = picked.iter().map(|(_, d)| d.clone()).collect();
        for id in corpus.keys() {
            if docs.len() >= 20 {
                break;
            }
            if !docs.contains(id) {
                docs.push(id.clone());
            }
        }
        let corpus_out: String = docs
            .iter()
            .map(|id| {
                let d = &corpus[id];
                let text: String = d["text"].as_str().unwrap().chars().take(400).collect();
                format!("{}\n", serde_json::json!({"_id": id, "title": d["title"], "text": text}))
            })
            .collect();
        std::fs::write(task.join("corpus.jsonl"), corpus_out).unwrap();
        let queries_out: String = picked
            .iter()
            .map(|(q, _)| format!("{}\n", serde_json::json!({"_id": q, "text": queries[q]["text"]})))
            .collect();
        std::fs::write(task.join("queries.jsonl"), queries_out).unwrap();
        let qrels_out: String = std::iter::once("query-id\tcorpus-id\tscore\n".to_string())
            .chain(picked.iter().map(|(q, d)| format!("{q}\t{d}\t1\n")))
            .collect();
        std::fs::write(task.join("qrels/dev.tsv"), qrels_out).unwrap();
        Self { dir }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Writes `cfg.yaml`: SPLADE-tiny, batch 4, lengths 32/64, CPU, plus `training` keys and extra sections.
    fn config(&self, training: &str, extra: &str) -> PathBuf {
        let yaml = format!(
            "model:\n  base_model: {model}\ntraining:\n  output_dir: {out}\n  per_device_train_batch_size: 4\n  per_device_eval_batch_size: 8\n{lr}  query_max_length: 32\n  document_max_length: 64\n  seed: 7\n{training}\nloss:\n  query_regularizer_weight: 5.0e-3\n  document_regularizer_weight: 3.0e-3\ndatasets:\n  pairs:\n    source: {train}\n    format: jsonl\nhardware:\n  device: cpu\n  num_threads: 1\n{extra}",
            model = model("splade-tiny").display(),
            lr = if training.contains("learning_rate:") { "" } else { "  learning_rate: 1.0e-4\n" },
            out = self.out().display(),
            train = self.dir.path().join("train.jsonl").display(),
        );
        let p = self.dir.path().join("cfg.yaml");
        std::fs::write(&p, yaml).unwrap();
        p
    }

    fn task_yaml(&self) -> String {
        format!("evaluation:\n  tasks:\n    - name: tiny\n      source: {}\n      split: dev\n", self.dir.path().join("tiny").display())
    }

    /// Scalars logged in `metrics.jsonl`: name → [(step, value)].
    fn jsonl(&self) -> BTreeMap<String, Vec<(u64, f64)>> {
        let text = std::fs::read_to_string(self.out().join("metrics.jsonl")).expect("metrics.jsonl");
        let mut out: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["type"] == "scalars" {
                let step = v["step"].as_u64().unwrap();
                for (k, x) in v["values"].as_object().unwrap() {
                    out.entry(k.clone()).or_default().push((step, x.as_f64().unwrap_or(f64::NAN)));
                }
            }
        }
        out
    }
}

/// The `splade` binary of this build. `SPLADE_TEST_BIN` overrides it: with a `CARGO_TARGET_DIR`
/// shared between checkouts, `target/debug/splade` may be another checkout's link.
fn splade() -> Command {
    let bin = std::env::var_os("SPLADE_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_splade")));
    let mut c = Command::new(bin);
    c.env("RUST_LOG", "info");
    c
}

fn train(cfg: &Path) -> Output {
    let out = splade().args(["train", "--config"]).arg(cfg).output().expect("run splade train");
    assert!(
        out.status.success(),
        "splade train failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))))
}

#[test]
fn train_metrics_endpoint_promtool_and_prometheus() {
    let fx = Fixture::new();
    // Long enough that the run is still going while Prometheus scrapes; SIGTERM ends it.
    let cfg = fx.config("  max_steps: 100000\n  logging_steps: 10\n  save_strategy: \"no\"\n  report_to: none\n", "");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let prom = PrometheusServer::start(&addr, "splade-train");
    let child = splade()
        .args(["train", "--metrics-listen", &addr, "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(Option<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut child = Kill(Some(child));
    let url = format!("http://{addr}/metrics");
    // A scrape once steps have been recorded.
    let body = wait_until("the trainer's /metrics with steps recorded", Duration::from_secs(180), || {
        let (s, b) = http_get(&url).ok()?;
        let step_line = b.lines().find(|l| l.starts_with("splade_train_global_step "))?;
        let step: f64 = step_line.split_whitespace().nth(1)?.parse().ok()?;
        (s == 200 && step >= 2.0).then_some(b)
    });
    let (ok, msg) = promtool_check_metrics(&body);
    assert!(ok && msg.trim().is_empty(), "promtool check metrics: {msg}\n--- scrape ---\n{body}");
    for name in ["splade_train_loss ", "splade_worker_steps_total ", "splade_worker_step_seconds_bucket", "splade_train_learning_rate "] {
        assert!(body.contains(name), "{name} missing from the scrape:\n{body}");
    }
    // Prometheus holds more than one loss sample, and the values move with training.
    let values = wait_until("Prometheus to hold >1 loss samples", Duration::from_secs(120), || {
        let v = prom.query("splade_train_loss[2m]")?;
        assert_eq!(v["status"], "success", "{v}");
        let series = v["data"]["result"].as_array()?.first()?.clone();
        assert_eq!(series["metric"]["job"], "splade-train");
        let values: Vec<f64> =
            series["values"].as_array()?.iter().map(|p| p[1].as_str().unwrap().parse().unwrap()).collect();
        (values.len() > 2).then_some(values)
    });
    assert!(values.iter().all(|l| l.is_finite() && *l > 0.0), "{values:?}");
    assert!(values.windows(2).any(|w| w[0] != w[1]), "loss never changed between scrapes: {values:?}");
    let steps = prom.query("splade_train_global_step").unwrap();
    assert!(steps["data"]["result"][0]["value"][1].as_str().unwrap().parse::<f64>().unwrap() >= 2.0, "{steps}");
    assert!(prom.errors().is_empty(), "prometheus logged errors: {:?}", prom.errors());
    // SIGTERM: the trainer finishes its step, checkpoints and exits 0, releasing the port.
    let mut c = child.0.take().unwrap();
    Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
    let status = wait_until("the trainer to stop after SIGTERM", Duration::from_secs(120), || c.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "trainer exited {status}:\n{err}");
    assert!(std::fs::read_dir(fx.out()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("checkpoint-")));
    assert!(http_get(&url).is_err(), "/metrics still served after the trainer exited");
}

#[test]
fn train_tensorboard_event_file_readable() {
    let fx = Fixture::new();
    let cfg = fx.config(
        "  max_steps: 6\n  logging_steps: 2\n  save_strategy: \"no\"\n  report_to: tensorboard\n  run_name: tb-run\n",
        "",
    );
    train(&cfg);
    let logdir = fx.out().join("runs/tb-run");
    let v = obs_check(&["tb", logdir.to_str().unwrap()], &[]);
    let jsonl = fx.jsonl();
    assert_eq!(jsonl["train/loss"].iter().map(|p| p.0).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>(), "metrics.jsonl has every step");
    for tag in ["train/loss", "train/loss_ranking", "train/learning_rate", "train/grad_norm", "train/active_dims_query", "train/samples_per_second", "train/query_regularizer_weight"] {
        let got: Vec<(u64, f64)> = v["scalars"][tag]
            .as_array()
            .unwrap_or_else(|| panic!("no {tag} in the event file: {v}"))
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2, 4, 6], "{tag} steps");
        for (step, value) in got {
            let want = jsonl[tag].iter().find(|p| p.0 == step).unwrap().1;
            assert!((value - want).abs() <= 1e-6 * want.abs().max(1.0), "{tag} at {step}: {value} vs {want}");
        }
    }
    assert!(v["tensors"]["config"][0][1][0].as_str().unwrap().contains("\"max_steps\": 6"), "{v}");
}

#[test]
fn train_mlflow_server_records_run() {
    let fx = Fixture::new();
    let server = MlflowServer::start();
    let cfg = fx.config(
        "  max_steps: 4\n  logging_steps: 1\n  save_strategy: \"no\"\n  report_to: mlflow\n  run_name: mlflow-run\n",
        &format!("mlflow:\n  tracking_uri: {}\n  experiment_name: train-it\n  tags:\n    team: search\n", server.uri),
    );
    train(&cfg);
    let v = obs_check(&["mlflow", &server.uri, "train-it"], &[]);
    assert_eq!(v["status"], "FINISHED", "{v}");
    assert_eq!(v["run_name"], "mlflow-run");
    assert_eq!(v["tags"]["team"], "search");
    assert_eq!(v["params"]["training.max_steps"], "4", "{v}");
    assert_eq!(v["params"]["training.per_device_train_batch_size"], "4");
    let jsonl = fx.jsonl();
    let loss: Vec<(u64, f64)> =
        v["metrics"]["train/loss"].as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect();
    assert_eq!(loss.len(), 4, "{loss:?}");
    for ((s, x), (ws, wx)) in loss.iter().zip(&jsonl["train/loss"]) {
        assert_eq!(s, ws);
        assert!((x - wx).abs() < 1e-9, "loss at {s}: {x} vs {wx}");
    }
    let artifacts = v["artifacts"].as_object().unwrap();
    let final_dir = fx.out().join("final");
    for f in ["model.safetensors", "config.json"] {
        let want = sha256_file(&final_dir.join(f));
        assert_eq!(artifacts.get(&format!("model/{f}")).and_then(|h| h.as_str()), Some(want.as_str()), "artifact {f}: {v}");
    }
    assert!(!server.log().contains("Traceback"), "mlflow server raised:\n{}", server.log());

    // An unreachable tracking server: training still completes, with a warning.
    let fx = Fixture::new();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = fx.config(
        "  max_steps: 2\n  logging_steps: 1\n  save_strategy: \"no\"\n  report_to: mlflow\n",
        &format!("mlflow:\n  tracking_uri: {dead}\n  experiment_name: nowhere\n"),
    );
    let t0 = std::time::Instant::now();
    let out = train(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(fx.out().join("final/model.safetensors").exists(), "{err}");
    assert!(err.contains("mlflow"), "no warning about the unreachable server:\n{err}");
    assert!(t0.elapsed() < Duration::from_secs(300), "an unreachable MLflow stalled training for {:?}", t0.elapsed());
}

#[test]
fn train_eval_best_checkpoint() {
    let fx = Fixture::new();
    let cfg = fx.config(
        "  max_steps: 8\n  learning_rate: 3.0e-3\n  logging_steps: 2\n  eval_strategy: steps\n  eval_steps: 2\n  save_strategy: steps\n  save_steps: 2\n  save_total_limit: 1\n  load_best_model_at_end: true\n  metric_for_best_model: eval_tiny_ndcg@10\n  report_to: none\n",
        &fx.task_yaml(),
    );
    let out = train(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("eval tiny (dev) at step 8: NDCG@10"), "no final eval line:\n{err}");
    let jsonl = fx.jsonl();
    let ndcg = &jsonl["eval_tiny_ndcg@10"];
    assert_eq!(ndcg.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2, 4, 6, 8], "eval steps");
    assert_eq!(jsonl["eval_mean_ndcg@10"], *ndcg, "one task: the mean equals it");
    for k in ["eval_tiny_mrr@10", "eval_tiny_recall@10", "eval_tiny_query_active_dims"] {
        assert_eq!(jsonl[k].len(), 4, "{k}");
    }
    assert!(ndcg.iter().all(|p| (0.0..=1.0).contains(&p.1)), "{ndcg:?}");
    // The first maximum wins (a later equal value is no improvement).
    let (best_step, best) = ndcg.iter().fold((0, f64::NEG_INFINITY), |acc, p| if p.1 > acc.1 { *p } else { acc });
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.out().join("checkpoint-8/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["best_checkpoint"], format!("checkpoint-{best_step}"), "{state}");
    assert!((state["best_metric"].as_f64().unwrap() - best).abs() < 1e-12, "{state}");
    // save_total_limit 1 keeps the newest checkpoint and the best one, nothing else.
    let mut kept: Vec<String> = std::fs::read_dir(fx.out())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    kept.sort();
    let mut want = vec![format!("checkpoint-{best_step}"), "checkpoint-8".to_string()];
    want.sort();
    want.dedup();
    assert_eq!(kept, want);
    // load_best_model_at_end: final/ holds the best checkpoint's weights.
    let final_w = sha256_file(&fx.out().join("final/model.safetensors"));
    assert_eq!(final_w, sha256_file(&fx.out().join(format!("checkpoint-{best_step}/model.safetensors"))));
    if best_step != 8 {
        assert_ne!(final_w, sha256_file(&fx.out().join("checkpoint-8/model.safetensors")), "best != last, yet final == last");
        assert!(err.contains(&format!("final model = checkpoint-{best_step}")), "{err}");
    }
    eprintln!("best step {best_step} ndcg@10 {best:.4}; evals {ndcg:?}");
}

#[test]
fn eval_schedule_config_errors_are_clear() {
    let fx = Fixture::new();
    let cfg = fx.config(
        "  max_steps: 8\n  eval_strategy: steps\n  eval_steps: 2\n  save_steps: 3\n  load_best_model_at_end: true\n",
        &fx.task_yaml(),
    );
    let out = splade().args(["train", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("save_steps (3) to be a multiple of eval_steps (2)"), "{err}");
    let cfg = fx.config("  max_steps: 2\n  metric_for_best_model: eval_other_ndcg@10\n", &fx.task_yaml());
    let out = splade().args(["train", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("names no configured task"), "{err}");
}
