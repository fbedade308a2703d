//! One training loop for `splade train` and the cluster: the same config trained both ways gives the same
//! plan, weights and metrics; a coordinator runs a `num_train_epochs` config (`max_steps: -1`); a worker
//! stopped with SIGTERM leaves as a planned departure. Named `cluster_*` so nextest runs them one at a time.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use splade_common::config::Config;
use splade_common::store::checkpoint::{verify_checkpoint, Verify};
use splade_common::store::Location;
use splade_coordinator::{CoordinatorHandle, CoordinatorOptions, JobOutcome, JoinToken, StoreVerifier};
use splade_worker::train::{build_plan, load_train_datasets, run_training, TrainOptions};
use tch::Tensor;

use crate::cluster::{exit_ok, finish, pairs_jsonl, spawn_worker, spawn_worker_with, TOKEN};
use splade_tests::fixtures::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// SPLADE-tiny on two datasets whose config order (`zeta`, then `alpha`) is not alphabetical, round-robin,
/// trained for `num_train_epochs` with `max_steps: -1` as the seed configs write it.
fn two_dataset_yaml(out: &Path, dir: &Path, epochs: f64, save_steps: usize, workers: (usize, usize), global: usize) -> String {
    let zeta = dir.join("zeta.jsonl");
    let alpha = dir.join("alpha.jsonl");
    std::fs::write(&zeta, pairs_jsonl(24, 0)).unwrap();
    // Other texts than zeta's, so a swapped dataset order shows in the weights.
    let other: String = pairs_jsonl(16, 3).lines().map(|l| l.replace("\"anchor\":\"", "\"anchor\":\"alpha ") + "\n").collect();
    std::fs::write(&alpha, other).unwrap();
    format!(
        r#"
model:
  base_model: {model}
  dropout: 0.0
training:
  output_dir: {out}
  per_device_train_batch_size: {per_device}
  learning_rate: 1.0e-3
  warmup_ratio: 0.0
  max_seq_length: 32
  max_steps: -1
  num_train_epochs: {epochs}
  save_strategy: steps
  save_steps: {save_steps}
  logging_steps: 1
  seed: 7
  report_to: none
loss:
  type: splade_loss
  inner_loss: sparse_multiple_negatives_ranking_loss
  query_regularizer_weight: 5.0e-3
  document_regularizer_weight: 3.0e-3
datasets:
  sampling_strategy: round_robin
  zeta:
    source: {zeta}
  alpha:
    source: {alpha}
hardware:
  device: cpu
  num_threads: 1
cluster:
  min_workers: {min}
  max_workers: {max}
  global_batch_size: {global}
  heartbeat_interval: 0.3
  heartbeat_timeout: 6
  rendezvous_timeout: 120
  rendezvous_last_call: 1
  store_port: {port}
  max_restarts: 0
"#,
        model = model("splade-tiny").display(),
        out = out.display(),
        per_device = global / workers.1,
        zeta = zeta.display(),
        alpha = alpha.display(),
        min = workers.0,
        max = workers.1,
        port = free_port(),
    )
}

/// An in-process coordinator as the binary starts it: the data plan published, the step count from it.
async fn coordinator(cfg: &Config) -> CoordinatorHandle {
    let (cluster, mut job) = splade_coordinator::config::from_config(cfg).unwrap();
    assert_eq!(job.total_steps, 0, "max_steps -1: the plan sets the steps");
    let options = splade_common::store::StoreOptions::default();
    splade_coordinator::config::plan_job(cfg, &mut job, &options).await.unwrap();
    let mut opts = CoordinatorOptions::new(cluster, job, "127.0.0.1:0".parse().unwrap(), JoinToken::new(TOKEN).unwrap());
    opts.verifier = Arc::new(StoreVerifier::new(Location::parse(&cfg.training.output_dir).unwrap()));
    splade_coordinator::start(opts).await.unwrap()
}

/// The `scalars` series of a `metrics.jsonl`, by step, without the fields that measure time.
fn scalar_series(path: &Path) -> BTreeMap<u64, BTreeMap<String, f64>> {
    let timing = |k: &str| k.contains("seconds") || k.contains("per_second") || k.contains("memory");
    let mut out: BTreeMap<u64, BTreeMap<String, f64>> = BTreeMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] != "scalars" {
            continue;
        }
        let entry = out.entry(v["step"].as_u64().unwrap()).or_default();
        for (k, x) in v["values"].as_object().unwrap() {
            if !timing(k) {
                entry.insert(k.clone(), x.as_f64().unwrap_or(f64::NAN));
            }
        }
    }
    out
}

fn weights(dir: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("model.safetensors")).unwrap().into_iter().collect()
}

/// The same multi-dataset round-robin config with `num_train_epochs`, trained by `splade train` and by a
/// coordinator with one CPU worker: the same `--dump-batches` plan (in config order, not alphabetical),
/// final weights within 1e-6 and the same `metrics.jsonl` series up to timing fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_one_worker_and_splade_train_give_the_same_plan_weights_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let local_out = tmp.path().join("local");
    let cluster_out = tmp.path().join("cluster");
    let local_cfg = Config::from_str(&two_dataset_yaml(&local_out, tmp.path(), 1.0, 4, (1, 1), 4), "one-loop.yaml").unwrap();
    let local_plan = tmp.path().join("local-plan.jsonl");
    let opts = TrainOptions { dump_batches: Some(local_plan.clone()), ..Default::default() };
    let outcome = tokio::task::spawn_blocking(move || run_training(local_cfg, &opts).unwrap()).await.unwrap();
    // zeta has 6 batches of 4, alpha 4: round robin takes zeta, alpha, ... until alpha has none left
    // (zeta's fifth batch is taken before that shows).
    assert_eq!(outcome.final_step, 9);

    let cfg = Config::from_str(&two_dataset_yaml(&cluster_out, tmp.path(), 1.0, 4, (1, 1), 4), "one-loop.yaml").unwrap();
    let handle = coordinator(&cfg).await;
    let cluster_plan = tmp.path().join("cluster-plan.jsonl");
    let log = tmp.path().join("w0.log");
    let mut w0 = crate::cluster::Worker {
        id: "w0".into(),
        child: Command::new(bin("splade-worker"))
            .args(["--join", &handle.local_addr().to_string(), "--device", "cpu", "--advertise", "127.0.0.1", "--id", "w0"])
            .arg("--dump-batches")
            .arg(&cluster_plan)
            .env("SPLADE_CLUSTER_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    };
    let outcome = finish(handle, std::slice::from_mut(&mut w0)).await;
    assert_eq!(outcome, JobOutcome::Completed { final_step: 9 }, "w0:\n{}", w0.log());
    assert!(exit_ok(&mut w0, Duration::from_secs(60)), "w0:\n{}", w0.log());

    let plan_text = std::fs::read_to_string(&local_plan).unwrap();
    assert_eq!(plan_text, std::fs::read_to_string(&cluster_plan).unwrap(), "the two modes planned different batches");
    let datasets: Vec<String> = plan_text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["dataset"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(&datasets[..2], ["zeta", "alpha"], "round robin starts with the first dataset of the config");

    let (a, b) = (weights(&local_out.join("final")), weights(&cluster_out.join("final")));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let base = weights(&model("splade-tiny"));
    let mut worst = 0f64;
    let mut moved = 0f64;
    for (name, t) in &a {
        worst = worst.max((t - &b[name]).abs().max().double_value(&[]));
        if let Some(t0) = base.get(name).filter(|t0| t0.size() == t.size()) {
            moved = moved.max((t - t0).abs().max().double_value(&[]));
        }
    }
    eprintln!("final weights: max |splade train - cluster| {worst:.3e}; training moved a weight by up to {moved:.3e}");
    assert!(worst <= 1e-6, "final weights differ by {worst}");
    assert!(moved > 1e-4, "training did not move the weights ({moved})");

    let (la, lb) = (scalar_series(&local_out.join("metrics.jsonl")), scalar_series(&cluster_out.join("metrics.jsonl")));
    assert_eq!(la.keys().collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>().iter().collect::<Vec<_>>());
    assert_eq!(la.keys().collect::<Vec<_>>(), lb.keys().collect::<Vec<_>>());
    for (step, values) in &la {
        let other = &lb[step];
        assert_eq!(values.keys().collect::<Vec<_>>(), other.keys().collect::<Vec<_>>(), "step {step}: other series");
        for (k, v) in values {
            let w = other[k];
            let same = (v.is_nan() && w.is_nan()) || (v - w).abs() <= 1e-6 * v.abs().max(1.0);
            assert!(same, "step {step}: {k} is {v} in splade train but {w} in the cluster");
        }
    }
}

/// SIGTERM to one of two workers after a committed checkpoint: it finishes its step, leaves and exits 0; the
/// job re-forms with the other worker from the last checkpoint without counting a restart, completes, and
/// the ledger shows every planned row used exactly once along the committed trajectory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sigterm_worker_leaves_and_the_job_goes_on_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // Global batches of 8 over zeta's 24 and alpha's 16 rows: round robin gives 5 steps an epoch; 2 epochs.
    let cfg = Config::from_str(&two_dataset_yaml(&out, tmp.path(), 2.0, 2, (1, 2), 8), "sigterm.yaml").unwrap();
    let handle = coordinator(&cfg).await;
    let total = handle.snapshot().total_steps;
    assert_eq!(total, 10);
    let addr = handle.local_addr();
    let mut snaps = handle.subscribe();
    let ledger = tmp.path().join("ledger.jsonl");
    let flags = [("--ledger", ledger.as_path())];
    let mut workers = vec![
        spawn_worker_with(addr, "w0", tmp.path(), TOKEN, &[], None, &flags),
        spawn_worker_with(addr, "w1", tmp.path(), TOKEN, &[], None, &flags),
    ];
    let t = Instant::now();
    let victim = loop {
        {
            let s = snaps.borrow_and_update();
            if s.world_size == 2 && s.last_checkpoint.is_some() {
                break s.workers.iter().find(|w| w.rank == Some(1)).expect("rank 1").id.as_str().to_string();
            }
        }
        assert!(t.elapsed() < Duration::from_secs(420) && !handle.is_finished(), "no checkpoint in a 2-worker generation");
        let _ = tokio::time::timeout(Duration::from_secs(1), snaps.changed()).await;
    };
    let vi = workers.iter().position(|w| w.id == victim).unwrap();
    let pid = workers[vi].child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(exit_ok(&mut workers[vi], Duration::from_secs(120)), "{victim} did not exit 0 after SIGTERM:\n{}", workers[vi].log());
    assert!(workers[vi].log().contains("leaving the job"), "{}", workers[vi].log());

    let outcome = finish(handle, &mut workers).await;
    let survivor = &mut workers[1 - vi];
    assert_eq!(outcome, JobOutcome::Completed { final_step: total }, "survivor:\n{}", survivor.log());
    assert!(exit_ok(survivor, Duration::from_secs(60)), "survivor:\n{}", survivor.log());
    let last = snaps.borrow().clone();
    assert_eq!(last.restarts, 0, "a leave is not a failure: {last:?}");
    assert!(last.generation >= 2, "{last:?}");
    let loc = Location::parse(out.to_str().unwrap()).unwrap();
    assert_eq!(verify_checkpoint(&loc, "final", Verify::Full).await.unwrap().step, total);

    // The ledger: each generation resumed where a checkpoint left off; the committed trajectory (each
    // generation up to where the next one started) consumed exactly the planned rows.
    let mut by_gen: BTreeMap<u64, BTreeMap<u64, Vec<(String, usize)>>> = BTreeMap::new();
    for line in std::fs::read_to_string(&ledger).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let rows: Vec<usize> = serde_json::from_value(v["rows"].clone()).unwrap();
        let ds = v["dataset"].as_str().unwrap().to_string();
        by_gen
            .entry(v["generation"].as_u64().unwrap())
            .or_default()
            .entry(v["step"].as_u64().unwrap())
            .or_default()
            .extend(rows.into_iter().map(|r| (ds.clone(), r)));
    }
    let gens: Vec<u64> = by_gen.keys().copied().collect();
    assert!(gens.len() >= 2, "the ledger shows {} generation(s)", gens.len());
    let starts: Vec<u64> = gens.iter().map(|g| by_gen[g].keys().next().unwrap() - 1).collect();
    for s in &starts[1..] {
        assert!(*s > 0 && *s % 2 == 0, "generation started after step {s}, which is not a checkpoint");
    }
    let mut committed: BTreeMap<u64, Vec<(String, usize)>> = BTreeMap::new();
    for (i, g) in gens.iter().enumerate() {
        let until = starts.get(i + 1).copied().unwrap_or(u64::MAX);
        for (step, rows) in &by_gen[g] {
            if *step <= until {
                assert!(committed.insert(*step, rows.clone()).is_none(), "step {step} committed twice");
            }
        }
    }
    let datasets = load_train_datasets(&cfg).unwrap();
    let plan = build_plan(&cfg, &datasets, 8).unwrap();
    assert_eq!(committed.len() as u64, total, "committed steps: {:?}", committed.keys().collect::<Vec<_>>());
    for (step, rows) in &mut committed {
        let b = plan.step(*step).unwrap();
        let mut planned: Vec<(String, usize)> = b.rows.iter().map(|&r| (b.dataset.clone(), r)).collect();
        planned.sort_unstable();
        rows.sort_unstable();
        assert_eq!(rows, &planned, "step {step}: consumed rows differ from the plan");
    }
}

/// Two workers with `eval_strategy: steps`, `report_to: [tensorboard, mlflow]` (a real `mlflow server`),
/// `load_best_model_at_end` and `save_total_limit: 1`: rank 0 alone writes the TensorBoard events and the
/// MLflow run, evaluates at every `eval_steps`, keeps the best checkpoint and puts its weights in `final/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_workers_eval_steps_reporters_and_best_model_from_rank_0() {
    use splade_tests::tools::{obs_check, MlflowServer};
    let server = tokio::task::spawn_blocking(MlflowServer::start).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = crate::cluster::write_data(tmp.path(), 64);
    let out = tmp.path().join("out");
    let task = crate::cluster::write_tiny_task(tmp.path());
    let steps = 8;
    let training = "  report_to: [tensorboard, mlflow]\n  run_name: cluster-run\n  learning_rate: 3.0e-3\n  eval_strategy: steps\n  eval_steps: 2\n  \
                    save_total_limit: 1\n  load_best_model_at_end: true\n  metric_for_best_model: eval_norquad-tiny_ndcg@10\n";
    // Reporters every 2 steps: step 1's unweighted FLOPS is NaN (its weight is 0), which obs_check's JSON cannot hold.
    let yaml = crate::cluster::job_yaml(&out, &data, 4, 8, steps, 2, (2, 2))
        .replace("  learning_rate: 1.0e-3\n", "")
        .replace("  logging_steps: 1\n", "  logging_steps: 2\n")
        .replace("  report_to: none\n", training)
        + &format!(
            "evaluation:\n  tasks:\n    - name: norquad-tiny\n      source: {}\n      split: dev\nmlflow:\n  tracking_uri: {}\n  experiment_name: cluster-it\n",
            task.display(),
            server.uri
        );
    let cfg = Config::from_str(&yaml, "cluster-best.yaml").unwrap();
    let handle = coordinator_with_max_steps(&cfg).await;
    let addr = handle.local_addr();
    let mut workers = vec![spawn_worker(addr, "w0", tmp.path(), TOKEN, &[], None), spawn_worker(addr, "w1", tmp.path(), TOKEN, &[], None)];
    let outcome = finish(handle, &mut workers).await;
    assert_eq!(outcome, JobOutcome::Completed { final_step: steps as u64 }, "w0:\n{}\nw1:\n{}", workers[0].log(), workers[1].log());
    for w in &mut workers {
        assert!(exit_ok(w, Duration::from_secs(60)), "{}:\n{}", w.id, w.log());
    }

    // metrics.jsonl (rank 0's): every step once, an evaluation at each eval_steps and at the end.
    let series = scalar_series(&out.join("metrics.jsonl"));
    assert_eq!(series.keys().copied().collect::<Vec<_>>(), (1..=steps as u64).collect::<Vec<_>>());
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let loss_lines = text.lines().filter(|l| l.contains("\"train/loss\"")).count();
    assert_eq!(loss_lines, steps, "one writer: each step's loss logged once");
    let ndcg: Vec<(u64, f64)> =
        series.iter().filter_map(|(s, v)| v.get("eval_norquad-tiny_ndcg@10").map(|x| (*s, *x))).collect();
    assert_eq!(ndcg.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2, 4, 6, 8], "eval steps");

    // TensorBoard: one event file, from rank 0, with the training and evaluation series.
    let logdir = out.join("runs/cluster-run");
    let files: Vec<_> = std::fs::read_dir(&logdir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1, "event files {files:?}");
    let tb = obs_check(&["tb", logdir.to_str().unwrap()], &[]);
    let tb_steps: Vec<u64> = tb["scalars"]["train/loss"].as_array().unwrap().iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert_eq!(tb_steps, vec![2, 4, 6, 8], "every logging_steps");
    assert!(tb["scalars"]["eval_norquad-tiny_ndcg@10"].as_array().is_some_and(|a| a.len() == 4), "{tb}");

    // MLflow: exactly one run (obs_check refuses more), finished, with the loss of every step.
    let run = obs_check(&["mlflow", &server.uri, "cluster-it"], &[]);
    assert_eq!(run["status"], "FINISHED", "{run}");
    assert_eq!(run["run_name"], "cluster-run");
    assert_eq!(run["metrics"]["train/loss"].as_array().map(Vec::len), Some(steps / 2), "{run}");

    // The best evaluated checkpoint is kept (save_total_limit 1 keeps the newest and the best) and final/
    // holds its weights, unless the last step's model (evaluated at the end) was the best.
    let (best_step, best) = ndcg.iter().fold((0, f64::NEG_INFINITY), |acc, p| if p.1 > acc.1 { *p } else { acc });
    let mut kept: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    kept.sort();
    let final_w = weights(&out.join("final"));
    let same = |dir: &Path| {
        let w = weights(dir);
        final_w.iter().all(|(k, t)| t.equal(&w[k]))
    };
    eprintln!("evaluations {ndcg:?}; best step {best_step} ({best:.4}); kept {kept:?}");
    if best_step == steps as u64 {
        // No checkpoint at the end of a cluster run: the newest is 6 (and the best before step 8 stays protected).
        assert!(kept.contains(&"checkpoint-6".to_string()) && kept.len() <= 2, "{kept:?}");
        assert!(!same(&out.join("checkpoint-6")), "the last step's model is the best but final/ holds checkpoint 6");
    } else {
        let mut want = vec![format!("checkpoint-{best_step}"), "checkpoint-6".to_string()];
        want.sort();
        want.dedup();
        assert_eq!(kept, want);
        assert!(same(&out.join(format!("checkpoint-{best_step}"))), "final/ is not the best checkpoint {best_step}");
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint-6/trainer_state.json")).unwrap()).unwrap();
        assert_eq!(state["best_checkpoint"], format!("checkpoint-{best_step}"), "{state}");
    }
}

/// An in-process coordinator for a `max_steps` config.
async fn coordinator_with_max_steps(cfg: &Config) -> CoordinatorHandle {
    let (cluster, mut job) = splade_coordinator::config::from_config(cfg).unwrap();
    splade_coordinator::config::plan_job(cfg, &mut job, &splade_common::store::StoreOptions::default()).await.unwrap();
    let mut opts = CoordinatorOptions::new(cluster, job, "127.0.0.1:0".parse().unwrap(), JoinToken::new(TOKEN).unwrap());
    opts.verifier = Arc::new(StoreVerifier::new(Location::parse(&cfg.training.output_dir).unwrap()));
    splade_coordinator::start(opts).await.unwrap()
}

/// Early stopping in a cluster: rank 0 decides at each evaluation, every rank leaves the loop after the same step,
/// rank 0 writes `final/`, and the coordinator completes the job at that step. A threshold no NDCG change can beat
/// makes the decision known in advance: evaluation 1 sets the best, evaluation 2 (step 2) exhausts patience 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_workers_stop_early_at_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let data = crate::cluster::write_data(tmp.path(), 64);
    let out = tmp.path().join("out");
    let task = crate::cluster::write_tiny_task(tmp.path());
    let training = "  report_to: none\n  eval_strategy: steps\n  eval_steps: 1\n  metric_for_best_model: eval_norquad-tiny_ndcg@10\n  \
                    early_stopping_patience: 1\n  early_stopping_threshold: 10.0\n";
    let yaml = crate::cluster::job_yaml(&out, &data, 4, 8, 8, 4, (2, 2)).replace("  report_to: none\n", training)
        + &format!("evaluation:\n  tasks:\n    - name: norquad-tiny\n      source: {}\n      split: dev\n", task.display());
    let cfg = Config::from_str(&yaml, "cluster-early.yaml").unwrap();
    let handle = coordinator_with_max_steps(&cfg).await;
    let addr = handle.local_addr();
    let mut workers = vec![spawn_worker(addr, "w0", tmp.path(), TOKEN, &[], None), spawn_worker(addr, "w1", tmp.path(), TOKEN, &[], None)];
    let outcome = finish(handle, &mut workers).await;
    assert_eq!(outcome, JobOutcome::Completed { final_step: 2 }, "w0:\n{}\nw1:\n{}", workers[0].log(), workers[1].log());
    for w in &mut workers {
        assert!(exit_ok(w, Duration::from_secs(60)), "{}:\n{}", w.id, w.log());
    }
    let series = scalar_series(&out.join("metrics.jsonl"));
    assert_eq!(series.keys().copied().collect::<Vec<_>>(), vec![1, 2], "no step after the stop");
    assert!(out.join("final/model.safetensors").exists() && out.join("final/README.md").exists());
}
