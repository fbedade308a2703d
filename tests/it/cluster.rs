//! The cluster end to end: an in-process coordinator (`splade_coordinator::start`, checkpoint
//! manifests verified against the store) and real `splade-worker` processes training SPLADE-tiny
//! data-parallel over Gloo on loopback. Every test here is named `cluster_*` so nextest runs them
//! one at a time (`.config/nextest.toml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use splade_common::config::Config;
use splade_common::store::checkpoint::{verify_checkpoint, Verify};
use splade_common::store::Location;
use splade_coordinator::{CoordinatorHandle, CoordinatorOptions, JobOutcome, JoinToken, StoreVerifier};
use splade_worker::model::{LoadOptions, SparseEncoder, TextKind};
use splade_worker::train::{build_plan, load_train_datasets, Trainer};
use tch::{Device, Tensor};

use splade_tests::promql::{exposed_names, promql_metric_names};
use splade_tests::tools::{obs_check, PrometheusServer};

use splade_tests::fixtures::*;

pub(crate) const TOKEN: &str = "cluster-test-token-0123456789";
/// Bound on a whole job on a loaded 2-core CI box.
const JOB_LIMIT: Duration = Duration::from_secs(420);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `n` JSONL rows with one hard negative each (so the candidate layout across ranks is exercised); each
/// positive carries `filler` repetitions of a padding phrase (large rows make a few of them a small part
/// of the file).
pub(crate) fn pairs_jsonl(n: usize, filler: usize) -> String {
    let topics = ["fjord", "skiing", "salmon", "aurora", "ferries", "stave churches", "brown cheese"];
    let mut s = String::new();
    for i in 0..n {
        let t = topics[i % topics.len()];
        let pad = format!(" filler {i}").repeat(filler);
        let row = serde_json::json!({
            "anchor": format!("question {i}: what is special about {t} number {i}?"),
            "positive": format!("Document {i} explains {t}: item {i} is known for reason {}.{pad}", i * 7 % 13),
            "negative": format!("Unrelated note {i} about the weather on day {}.", i * 3 % 11),
        });
        s.push_str(&row.to_string());
        s.push('\n');
    }
    s
}

/// [`pairs_jsonl`] without filler, written to `dir/train.jsonl`.
pub(crate) fn write_data(dir: &Path, n: usize) -> PathBuf {
    let s = pairs_jsonl(n, 0);
    let p = dir.join("train.jsonl");
    std::fs::write(&p, s).unwrap();
    p
}

/// A tiny cluster job: SPLADE-tiny, dropout 0, short sequences, `global` rows per step, a data plan in
/// chunks of 2 steps (workers fetch several chunks).
pub(crate) fn job_yaml(out: &Path, data: &Path, per_device: usize, global: usize, steps: usize, save_steps: usize, workers: (usize, usize)) -> String {
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
  max_steps: {steps}
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
  toy:
    source: {data}
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
  max_restarts: 3
  data_plan_chunk_steps: 2
"#,
        model = model("splade-tiny").display(),
        out = out.display(),
        data = data.display(),
        min = workers.0,
        max = workers.1,
        port = free_port(),
    )
}

pub(crate) fn parse(yaml: &str) -> Config {
    Config::from_str(yaml, "cluster-test.yaml").unwrap()
}

pub(crate) async fn start_coordinator(cfg: &Config) -> CoordinatorHandle {
    let (cluster, mut job) = splade_coordinator::config::from_config(cfg).unwrap();
    // As the binary does: workers read their slices through the published data plan.
    let options = splade_common::store::StoreOptions::default();
    job.data_plan = Some(splade_coordinator::config::publish_data_plan(cfg, &job, &options).await.unwrap().1);
    let mut opts = CoordinatorOptions::new(cluster, job, "127.0.0.1:0".parse().unwrap(), JoinToken::new(TOKEN).unwrap());
    opts.verifier = Arc::new(StoreVerifier::new(Location::parse(&cfg.training.output_dir).unwrap()));
    splade_coordinator::start(opts).await.unwrap()
}

/// Workers `w0` and `w1` reading object storage from `moto`, each appending its step records to
/// `dir/ledger.jsonl` (`--ledger`); returns the ledger's path and the workers.
pub(crate) fn spawn_two_with_ledger(addr: SocketAddr, dir: &Path, moto: &splade_tests::MotoServer) -> (PathBuf, Vec<Worker>) {
    let ledger = dir.join("ledger.jsonl");
    let env: Vec<(String, String)> = moto.env();
    let env_refs: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (k.as_str(), Path::new(v.as_str()))).collect();
    let flags = [("--ledger", ledger.as_path())];
    let workers = vec![
        spawn_worker_with(addr, "w0", dir, TOKEN, &env_refs, None, &flags),
        spawn_worker_with(addr, "w1", dir, TOKEN, &env_refs, None, &flags),
    ];
    (ledger, workers)
}

pub(crate) struct Worker {
    pub(crate) id: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Worker {
    /// The worker's log, without terminal colour codes.
    pub(crate) fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI sequence: ESC [ parameters final-byte (a letter).
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}

pub(crate) fn spawn_worker(addr: SocketAddr, id: &str, dir: &Path, token: &str, env: &[(&str, &Path)], metrics: Option<&str>) -> Worker {
    spawn_worker_with(addr, id, dir, token, env, metrics, &[])
}

/// [`spawn_worker`] with extra `(flag, path)` arguments (`--ledger`, `--dump-gradients`).
pub(crate) fn spawn_worker_with(
    addr: SocketAddr,
    id: &str,
    dir: &Path,
    token: &str,
    env: &[(&str, &Path)],
    metrics: Option<&str>,
    flags: &[(&str, &Path)],
) -> Worker {
    let log = dir.join(format!("{id}.log"));
    let mut cmd = Command::new(bin("splade-worker"));
    cmd.args(["--join", &addr.to_string(), "--device", "cpu", "--advertise", "127.0.0.1", "--id", id])
        .env("SPLADE_CLUSTER_TOKEN", token)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(m) = metrics {
        cmd.args(["--metrics-listen", m]);
    }
    for (flag, path) in flags {
        cmd.arg(flag).arg(path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Worker { id: id.into(), child: cmd.spawn().unwrap(), log }
}

/// Waits for the job with a bound; on failure prints the workers' logs.
pub(crate) async fn finish(handle: CoordinatorHandle, workers: &mut [Worker]) -> JobOutcome {
    let outcome = tokio::time::timeout(JOB_LIMIT, handle.wait()).await;
    let outcome = match outcome {
        Ok(o) => o.unwrap(),
        Err(_) => {
            for w in workers.iter_mut() {
                let _ = w.child.kill();
                eprintln!("--- {} ---\n{}", w.id, w.log());
            }
            panic!("the job did not finish within {JOB_LIMIT:?}");
        }
    };
    outcome
}

/// Waits (bounded) for a worker to exit and returns whether it succeeded.
pub(crate) fn exit_ok(w: &mut Worker, limit: Duration) -> bool {
    let t = Instant::now();
    loop {
        if let Some(s) = w.child.try_wait().unwrap() {
            return s.success();
        }
        if t.elapsed() > limit {
            let _ = w.child.kill();
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn promtool_check(text: &str, what: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian `prometheus`) is missing: run scripts/setup.sh");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed on the {what}'s /metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scrape(url: &str) -> Option<String> {
    let addr = url.trim_start_matches("http://").split('/').next().unwrap();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, text) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| text.to_string())
}

/// A BEIR task small enough to evaluate in seconds: the first 10 NorQuAD dev queries, their qrels,
/// and 30 passages (their relevant ones first, then others as distractors).
pub(crate) fn write_tiny_task(dir: &Path) -> PathBuf {
    let src = repo().join("data/norquad");
    let task = dir.join("norquad-tiny");
    std::fs::create_dir_all(task.join("qrels")).unwrap();
    let qrels = std::fs::read_to_string(src.join("qrels/dev.tsv")).unwrap();
    let mut lines = qrels.lines();
    let header = lines.next().unwrap();
    let mut queries = std::collections::BTreeSet::new();
    let mut relevant = std::collections::BTreeSet::new();
    let mut kept = vec![header.to_string()];
    for l in lines {
        let f: Vec<&str> = l.split('\t').collect();
        if !queries.contains(f[0]) && queries.len() == 10 {
            continue;
        }
        queries.insert(f[0].to_string());
        relevant.insert(f[1].to_string());
        kept.push(l.to_string());
    }
    std::fs::write(task.join("qrels/dev.tsv"), kept.join("\n") + "\n").unwrap();
    let id = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap()["_id"].as_str().unwrap().to_string();
    let all_queries = std::fs::read_to_string(src.join("queries.jsonl")).unwrap();
    let q: Vec<&str> = all_queries.lines().filter(|l| queries.contains(&id(l))).collect();
    assert_eq!(q.len(), 10);
    std::fs::write(task.join("queries.jsonl"), q.join("\n") + "\n").unwrap();
    let corpus = std::fs::read_to_string(src.join("corpus.jsonl")).unwrap();
    let (rel, other): (Vec<&str>, Vec<&str>) = corpus.lines().partition(|l| relevant.contains(&id(l)));
    let docs: Vec<&str> = rel.into_iter().chain(other).take(30).collect();
    std::fs::write(task.join("corpus.jsonl"), docs.join("\n") + "\n").unwrap();
    task
}

/// Samples (unix seconds, value) of a range selector over Prometheus' HTTP API.
fn prom_samples(prom: &PrometheusServer, selector: &str) -> Vec<(f64, String)> {
    let v = tokio::task::block_in_place(|| prom.query(selector)).unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(|s| s["values"].as_array())
        .map(|vals| vals.iter().map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().to_string())).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_workers_train_to_completion() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), 160);
    let out = tmp.path().join("out");
    // Enough steps that Prometheus (scraping every second) sees several of them.
    let steps = 16;
    // Rank 0 evaluates each committed checkpoint and the final model on a tiny BEIR task.
    let task = write_tiny_task(tmp.path());
    let eval = format!("evaluation:\n  tasks:\n    - name: norquad-tiny\n      source: {}\n      split: dev\n", task.display());
    let cfg = parse(&(job_yaml(&out, &data, 4, 8, steps, 4, (2, 2)) + &eval));
    let handle = start_coordinator(&cfg).await;
    let addr = handle.local_addr();
    let mut snaps = handle.subscribe();

    // The coordinator's /metrics as the binary serves it.
    let registry = splade_common::obs::Registry::new();
    let _exporter = splade_coordinator::metrics::spawn_exporter(&registry, handle.subscribe(), 2).unwrap();
    let coord_metrics = splade_common::obs::serve_metrics("127.0.0.1:0", registry).unwrap();
    let worker_metrics = format!("127.0.0.1:{}", free_port());

    // A real Prometheus scrapes the coordinator and a worker (the jobs the dashboard and the alert
    // rules select); it is scraping before training starts, so it sees the job move.
    let coord_target = coord_metrics.local_addr().to_string();
    let prom = PrometheusServer::start_jobs(&[("splade-coordinator", &coord_target), ("splade-worker", &worker_metrics)]);
    let t = Instant::now();
    while prom_samples(&prom, r#"up{job="splade-coordinator"}[1m]"#).iter().all(|(_, v)| v != "1") {
        assert!(t.elapsed() < Duration::from_secs(120), "Prometheus never scraped the coordinator: {:?}", prom.errors());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut workers = vec![
        spawn_worker(addr, "w0", tmp.path(), TOKEN, &[], Some(&worker_metrics)),
        spawn_worker(addr, "w1", tmp.path(), TOKEN, &[], None),
    ];
    // A worker with the wrong token is refused, says why, and changes nothing.
    let mut intruder = spawn_worker(addr, "intruder", tmp.path(), "not-the-token", &[], None);
    assert!(!exit_ok(&mut intruder, Duration::from_secs(60)), "a wrong token must be refused");
    let why = intruder.log();
    assert!(why.to_lowercase().contains("token") || why.contains("Unauthenticated"), "{why}");

    // While training runs: both /metrics pass promtool; the worker's latest scrape is kept for the
    // dashboard check (the process and its endpoint are gone once the job completes).
    let t = Instant::now();
    let mut coord_ok = false;
    let mut worker_text: Option<String> = None;
    while t.elapsed() < JOB_LIMIT && !handle.is_finished() {
        if !coord_ok && snaps.borrow_and_update().global_step >= 1 {
            if let Some(text) = scrape(&coord_metrics.url()) {
                assert!(text.contains("splade_train_loss"), "{text}");
                promtool_check(&text, "coordinator");
                coord_ok = true;
            }
        }
        if let Some(text) = scrape(&format!("http://{worker_metrics}/metrics")) {
            if text.contains("splade_worker_step_seconds_count") && !text.contains("splade_worker_step_seconds_count 0") {
                if worker_text.is_none() {
                    promtool_check(&text, "worker");
                }
                worker_text = Some(text);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = handle.snapshot();
    assert!(!last.workers.iter().any(|w| w.id.as_str() == "intruder"), "{last:?}");
    let outcome = finish(handle, &mut workers).await;
    let finished_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert_eq!(outcome, JobOutcome::Completed { final_step: steps as u64 }, "w0:\n{}\nw1:\n{}", workers[0].log(), workers[1].log());
    for w in &mut workers {
        assert!(exit_ok(w, Duration::from_secs(60)), "{} did not exit 0:\n{}", w.id, w.log());
    }
    let worker_text = worker_text.expect("the worker's /metrics was never scraped during the run");
    assert!(coord_ok, "the coordinator's /metrics was not scraped during the run");
    let loc = Location::parse(out.to_str().unwrap()).unwrap();
    let ck = splade_common::store::block_on(verify_checkpoint(&loc, "checkpoint-12", Verify::Full)).unwrap();
    assert_eq!(ck.step, 12);
    let fin = splade_common::store::block_on(verify_checkpoint(&loc, "final", Verify::Full)).unwrap();
    assert_eq!(fin.step, steps as u64);
    let recorded = snaps.borrow().last_checkpoint.clone().expect("a checkpoint was recorded");
    assert_eq!(recorded.step, 12);

    // Prometheus holds the coordinator's loss series with more than one sample, at least two of
    // them scraped while the job was still training.
    // The gauge reads 0 until rank 0's first progress report; the training loss itself is positive.
    let all = prom_samples(&prom, r#"splade_train_loss{job="splade-coordinator"}[10m]"#);
    let loss: Vec<f64> = all.iter().map(|(_, v)| v.parse::<f64>().unwrap()).skip_while(|x| *x == 0.0).collect();
    let during = all.iter().filter(|(ts, v)| *ts < finished_at && v != "0").count();
    assert!(loss.len() > 1 && during > 1, "loss samples {all:?} (job finished at {finished_at})");
    assert!(loss.iter().all(|x| x.is_finite() && *x > 0.0), "loss samples after the first report: {loss:?}");
    eprintln!("Prometheus: {} loss samples, {during} scraped during training", loss.len());
    // Prometheus catches up with the last step within a few scrapes.
    let t = Instant::now();
    loop {
        let seen = prom_samples(&prom, r#"splade_train_global_step{job="splade-coordinator"}[10m]"#);
        if seen.iter().any(|(_, v)| v == &steps.to_string()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "global step samples {seen:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let errors = prom.errors();
    assert!(errors.is_empty(), "prometheus logged errors: {errors:?}");

    // Every metric the dashboard and the alert rules name is exported by the live coordinator or
    // worker (or is Prometheus' own per-target `up`, which it recorded for both jobs).
    let coord_text = scrape(&coord_metrics.url()).expect("the coordinator still serves /metrics");
    // The intermediate checkpoints (4, 8, 12) were timed by rank 0 and recorded by the coordinator.
    let sample = |name: &str| -> f64 {
        let line = coord_text.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name}:\n{coord_text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(sample("splade_checkpoint_write_seconds_count"), 3.0, "{coord_text}");
    assert!(sample("splade_checkpoint_write_seconds_sum") > 0.0, "checkpoint write time not reported:\n{coord_text}");
    assert_eq!(sample("splade_checkpoint_last_committed_step"), 12.0, "{coord_text}");
    // The final model's evaluation, exported per task, equals the MTEB result file rank 0 wrote;
    // checkpoint 12's result file is there too.
    let ndcg = sample(r#"splade_eval_ndcg_at_10{task="norquad-tiny"}"#);
    assert!(ndcg > 0.0 && ndcg <= 1.0, "NDCG@10 {ndcg}:\n{coord_text}");
    eprintln!("coordinator: NDCG@10 of the final model on norquad-tiny {ndcg:.4}");
    assert_eq!(sample(r#"splade_eval_global_step{task="norquad-tiny"}"#), steps as f64, "{coord_text}");
    for (ck, exported) in [("final", Some(ndcg)), ("checkpoint-12", None)] {
        let p = out.join(format!("eval/{ck}/norquad-tiny.json"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let r: splade_common::eval::TaskResult = serde_json::from_str(&text).unwrap();
        let dev = &r.scores["dev"][0];
        assert_eq!((r.task_name.as_str(), dev.fields["global_step"].as_u64()), ("norquad-tiny", Some(ck_step(ck, steps))));
        if let Some(v) = exported {
            assert!((dev.main_score - v).abs() < 1e-9, "{}: main_score {} vs exported {v}", p.display(), dev.main_score);
        }
        assert!(dev.fields["mrr_at_10"].as_f64().is_some_and(|m| m > 0.0 && m <= 1.0), "{text}");
    }
    let mut exported = exposed_names(&coord_text);
    exported.extend(exposed_names(&worker_text));
    for job in ["splade-coordinator", "splade-worker"] {
        let up = prom_samples(&prom, &format!(r#"up{{job="{job}"}}[10m]"#));
        assert!(up.iter().any(|(_, v)| v == "1"), "Prometheus never scraped {job}: {up:?}");
    }
    exported.insert("up".into());
    let exprs = obs_check(&["promql-exprs"], &[]);
    let exprs = exprs.as_array().unwrap();
    assert!(exprs.len() >= 20, "expected the dashboard's and the rules' expressions, got {}", exprs.len());
    let mut missing = std::collections::BTreeSet::new();
    for e in exprs {
        let expr = e["expr"].as_str().unwrap();
        let names = promql_metric_names(expr);
        assert!(!names.is_empty(), "{}: names no metric: {expr}", e["source"]);
        for name in names {
            if !exported.contains(&name) {
                eprintln!("{}: `{name}` is not exported by the live coordinator or worker", e["source"]);
                missing.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard/alert metrics missing from the live scrapes (coordinator + worker):\n{coord_text}\n--- worker ---\n{worker_text}"
    );
}

fn ck_step(name: &str, last: usize) -> u64 {
    name.strip_prefix("checkpoint-").map_or(last as u64, |s| s.parse().unwrap())
}

fn load_grads(p: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).into_iter().collect()
}

fn rel_l2(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "the same parameters have gradients");
    let (mut diff, mut norm) = (0.0, 0.0);
    for (n, x) in a {
        let y = &b[n];
        diff += f64::try_from((x - y).square().sum(tch::Kind::Double)).unwrap();
        norm += f64::try_from(y.square().sum(tch::Kind::Double)).unwrap();
    }
    (diff / norm).sqrt()
}

/// Two ranks at per-device batch `per_device` with `micro` micro-batches each must give the
/// gradient one process computes on the whole global batch.
async fn gradient_equals_single_process(per_device: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), 32);
    let out = tmp.path().join("out");
    let yaml = job_yaml(&out, &data, per_device, 8, 2, 100, (2, 2));
    let cfg = parse(&yaml);
    let handle = start_coordinator(&cfg).await;
    let addr = handle.local_addr();
    let dump = tmp.path().join("grads");
    let mut workers = vec![
        spawn_worker_with(addr, "w0", tmp.path(), TOKEN, &[], None, &[("--dump-gradients", &dump)]),
        spawn_worker_with(addr, "w1", tmp.path(), TOKEN, &[], None, &[("--dump-gradients", &dump)]),
    ];
    let outcome = finish(handle, &mut workers).await;
    assert_eq!(outcome, JobOutcome::Completed { final_step: 2 }, "w0:\n{}", workers[0].log());
    for w in &mut workers {
        assert!(exit_ok(w, Duration::from_secs(60)), "{}:\n{}", w.id, w.log());
    }
    let g0 = load_grads(&tmp.path().join("grads.rank0"));
    let g1 = load_grads(&tmp.path().join("grads.rank1"));
    assert!(rel_l2(&g0, &g1) == 0.0, "ranks must hold identical reduced gradients");

    tch::set_num_threads(1);
    let mut single_cfg = parse(&yaml);
    single_cfg.training.output_dir = tmp.path().join("single").display().to_string();
    let mut trainer = Trainer::new(single_cfg, Device::Cpu, 8, 1).unwrap();
    let batch = trainer.plan.step(1).unwrap().clone();
    trainer.model.vs.unfreeze();
    let ex = trainer.examples(&batch, &batch.rows);
    trainer.forward_backward(&ex).unwrap();
    let single: BTreeMap<String, Tensor> = trainer
        .model
        .named_parameters()
        .into_iter()
        .filter_map(|(n, p)| {
            let g = p.grad();
            g.defined().then(|| (n, g.copy()))
        })
        .collect();
    let rel = rel_l2(&g0, &single);
    let norm: f64 = single.values().map(|g| f64::try_from(g.square().sum(tch::Kind::Double)).unwrap()).sum::<f64>().sqrt();
    eprintln!("per-device {per_device}: gradient norm {norm:e}, relative L2 to the single process {rel:e}");
    assert!(norm > 0.0, "the single-process gradient is zero");
    assert!(rel < 1e-5, "relative L2 between the all-reduced and the single-process gradient is {rel:e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_gradient_equals_single_process() {
    gradient_equals_single_process(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_gradient_equals_single_process_with_gradient_cache() {
    // Per-device 2 with a global batch of 8 on 2 ranks: 2 gradient-cache micro-batches per rank.
    gradient_equals_single_process(2).await;
}

/// Twenty texts none of the training rows contain, encoded to compare two trained models.
fn probe_texts() -> Vec<String> {
    let words = ["fjell", "kyst", "bibliotek", "jernbane", "festival"];
    (0..20).map(|i| format!("probe {i}: {} og {} i {} tiåret", words[i % 5], words[(i * 3 + 1) % 5], 1900 + 10 * i)).collect()
}

/// `workers` ranks at per-device batch `per_device` (a global batch of 8, so per-device 2 on 2 ranks
/// is 2 gradient-cache micro-batches each) train 20 steps; one process training the whole global
/// batch for 20 steps must end with the same model: the embeddings of 20 probe texts agree within 1e-4.
async fn probes_after_20_steps_equal_single_process(per_device: usize, workers: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let steps = 20;
    let data = write_data(tmp.path(), 8 * steps);
    let out = tmp.path().join("out");
    // lr 1e-4, the training parity tests' rate. At 1e-3 this toy job is at the edge of stability: AdamW
    // turns rounding-level differences in near-zero gradients into lr-sized updates, and the two
    // trajectories drift apart to 1e-2 within 10 steps (measured), as any two reduction orders would.
    let yaml = job_yaml(&out, &data, per_device, 8, steps, 100, (workers, workers)).replace("learning_rate: 1.0e-3", "learning_rate: 1.0e-4");
    assert!(yaml.contains("learning_rate: 1.0e-4"));
    let handle = start_coordinator(&parse(&yaml)).await;
    let addr = handle.local_addr();
    let mut procs: Vec<Worker> = (0..workers).map(|i| spawn_worker(addr, &format!("w{i}"), tmp.path(), TOKEN, &[], None)).collect();
    let outcome = finish(handle, &mut procs).await;
    assert_eq!(outcome, JobOutcome::Completed { final_step: steps as u64 }, "w0:\n{}", procs[0].log());
    for w in &mut procs {
        assert!(exit_ok(w, Duration::from_secs(60)), "{}:\n{}", w.id, w.log());
    }

    let mut single_cfg = parse(&yaml);
    single_cfg.training.output_dir = tmp.path().join("single").display().to_string();
    let mut trainer = Trainer::new(single_cfg, Device::Cpu, 8, 1).unwrap();
    for _ in 0..steps {
        trainer.train_step().unwrap();
    }
    let cluster_model = SparseEncoder::load(&out.join("final"), Device::Cpu, &LoadOptions::default()).unwrap();
    let probes = probe_texts();
    let texts: Vec<&str> = probes.iter().map(String::as_str).collect();
    let embed = |m: &SparseEncoder| -> Tensor {
        tch::no_grad(|| {
            let b = m.tokenize(&texts, TextKind::Document).unwrap();
            m.forward_kind(&b, TextKind::Document, false)
        })
    };
    let (a, b) = (embed(&cluster_model), embed(&trainer.model));
    let diff = f64::try_from((&a - &b).abs().max()).unwrap();
    let active = i64::try_from(b.gt(0.0).sum(tch::Kind::Int64)).unwrap();
    // The untrained model's embeddings, to show 20 steps moved the model further than the tolerance.
    let base = SparseEncoder::load(&model("splade-tiny"), Device::Cpu, &LoadOptions::default()).unwrap();
    let moved = f64::try_from((&embed(&base) - &b).abs().max()).unwrap();
    eprintln!("{workers} worker(s), per-device {per_device}: probe embeddings differ by at most {diff:e} ({active} active entries); training moved them by {moved:e}");
    assert!(active > 0, "the probe embeddings are empty");
    assert!(moved > 1e-2, "20 steps barely changed the model ({moved:e}); the comparison would prove nothing");
    assert!(diff <= 1e-4, "after {steps} steps the cluster's and the single process's probe embeddings differ by {diff:e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_probe_embeddings_after_20_steps_equal_single_process() {
    probes_after_20_steps_equal_single_process(4, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_one_worker_gradient_cache_probe_embeddings_equal_single_process() {
    // One rank at per-device 4 with a global batch of 8: 2 gradient-cache micro-batches.
    probes_after_20_steps_equal_single_process(4, 1).await;
}

/// Two workers train from S3 (moto) and checkpoint to S3; one is killed with SIGKILL after a committed
/// checkpoint. The survivor re-forms, resumes from that checkpoint and completes, and the ledger of
/// consumed rows shows the committed trajectory used exactly the planned rows, none lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_worker_killed_job_resumes() {
    use object_store::{path::Path as ObjPath, PutPayload};
    use splade_tests::MotoServer;

    let moto = tokio::task::spawn_blocking(MotoServer::start).await.unwrap();
    moto.create_bucket("splade-job");
    let tmp = tempfile::tempdir().unwrap();
    let local_data = write_data(tmp.path(), 64);
    let opts = splade_common::store::StoreOptions { overrides: moto.store_overrides() };
    let bucket = Location::parse_with("s3://splade-job", &opts).unwrap();
    let bytes = std::fs::read(&local_data).unwrap();
    bucket.store().put(&ObjPath::from("data/train.jsonl"), PutPayload::from(bytes)).await.unwrap();
    let data = Path::new("s3://splade-job/data/train.jsonl");
    let out = "s3://splade-job/run";
    let steps = 8;
    let cfg = parse(&job_yaml(Path::new(out), data, 4, 8, steps, 2, (1, 2)));
    let loc = Location::parse_with(out, &opts).unwrap();
    let (cluster, mut job) = splade_coordinator::config::from_config(&cfg).unwrap();
    // As the binary does: the data plan goes to the bucket, and workers read their slices from it.
    let published = splade_coordinator::config::publish_data_plan(&cfg, &job, &opts).await.unwrap().1;
    let plan_ref = splade_common::data::DataPlanRef { location: published.location.clone(), sha256: published.sha256.clone() };
    job.data_plan = Some(published);
    let mut copts = CoordinatorOptions::new(cluster, job, "127.0.0.1:0".parse().unwrap(), JoinToken::new(TOKEN).unwrap());
    copts.verifier = Arc::new(StoreVerifier::new(loc.clone()));
    let handle = splade_coordinator::start(copts).await.unwrap();
    let addr = handle.local_addr();
    let mut snaps = handle.subscribe();
    let (ledger, mut workers) = spawn_two_with_ledger(addr, tmp.path(), &moto);
    // Wait for a committed checkpoint in a 2-worker generation, then kill rank 1 hard.
    let t = Instant::now();
    let victim = loop {
        {
            let s = snaps.borrow_and_update();
            if s.world_size == 2 && s.last_checkpoint.is_some() {
                let w = s.workers.iter().find(|w| w.rank == Some(1)).expect("rank 1");
                break w.id.as_str().to_string();
            }
        }
        assert!(t.elapsed() < JOB_LIMIT && !handle.is_finished(), "no checkpoint in a 2-worker generation");
        let _ = tokio::time::timeout(Duration::from_secs(1), snaps.changed()).await;
    };
    let vi = workers.iter().position(|w| w.id == victim).unwrap();
    workers[vi].child.kill().unwrap(); // SIGKILL
    let _ = workers[vi].child.wait();

    let outcome = finish(handle, &mut workers).await;
    let survivor = &mut workers[1 - vi];
    assert_eq!(outcome, JobOutcome::Completed { final_step: steps as u64 }, "survivor:\n{}", survivor.log());
    assert!(exit_ok(survivor, Duration::from_secs(60)), "survivor:\n{}", survivor.log());
    let last = snaps.borrow().clone();
    assert!(last.restarts >= 1 && last.generation >= 2, "{last:?}");
    assert_eq!(verify_checkpoint(&loc, "final", Verify::Full).await.unwrap().step, steps as u64);

    // The ledger: each generation resumed where its checkpoint left off; the committed trajectory
    // (each generation up to where the next one started) consumed exactly the planned rows.
    let mut by_gen: BTreeMap<u64, BTreeMap<u64, Vec<usize>>> = BTreeMap::new();
    // Per (generation, rank): the most plan-chunk bytes that rank's fetcher reported.
    let mut plan_bytes: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for line in std::fs::read_to_string(&ledger).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["bytes_read"].as_u64().is_some(), "a worker did not read its slice through the data plan: {line}");
        let e = plan_bytes.entry((v["generation"].as_u64().unwrap(), v["rank"].as_u64().unwrap())).or_default();
        *e = (*e).max(v["plan_bytes_read"].as_u64().expect("plan_bytes_read"));
        let rows: Vec<usize> = serde_json::from_value(v["rows"].clone()).unwrap();
        by_gen
            .entry(v["generation"].as_u64().unwrap())
            .or_default()
            .entry(v["step"].as_u64().unwrap())
            .or_default()
            .extend(rows);
    }
    let gens: Vec<u64> = by_gen.keys().copied().collect();
    assert!(gens.len() >= 2, "the ledger shows {} generation(s)", gens.len());
    let starts: Vec<u64> = gens.iter().map(|g| by_gen[g].keys().next().unwrap() - 1).collect();
    let mut committed: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, g) in gens.iter().enumerate() {
        let until = starts.get(i + 1).copied().unwrap_or(u64::MAX);
        for (step, rows) in &by_gen[g] {
            if *step <= until {
                assert!(committed.insert(*step, rows.clone()).is_none(), "step {step} committed twice");
            }
        }
    }
    // The plan, from the same rows on local disk (what the workers read from the bucket).
    let plan_cfg = parse(&job_yaml(&tmp.path().join("plan-out"), &local_data, 4, 8, steps, 2, (1, 2)));
    let datasets = load_train_datasets(&plan_cfg).unwrap();
    let plan = build_plan(&plan_cfg, &datasets, 8).unwrap();
    assert_eq!(committed.len(), steps, "committed steps: {:?}", committed.keys().collect::<Vec<_>>());
    for (step, rows) in &mut committed {
        let mut planned = plan.step(*step).unwrap().rows.clone();
        planned.sort_unstable();
        rows.sort_unstable();
        assert_eq!(rows, &planned, "step {step}: consumed rows differ from the plan");
    }
    // A resumed generation started exactly at a committed checkpoint.
    for s in &starts[1..] {
        assert!(*s > 0 && *s % 2 == 0, "generation started after step {s}, which is not a checkpoint");
    }
    // The plan is chunked (2 steps a chunk): the last generation, which trained to the end, fetched exactly
    // the chunks from the one of its first step on, none before it.
    let published = splade_common::data::PublishedPlan::fetch(&plan_ref, &opts).await.unwrap();
    let chunks = &published.manifest.chunks;
    assert_eq!(chunks.len(), steps / 2);
    let (last_gen, last_start) = (*gens.last().unwrap(), *starts.last().unwrap());
    let first_chunk = published.chunk_of(last_start + 1).unwrap();
    assert!(first_chunk >= 1, "the last generation started after step {last_start}");
    let want: u64 = chunks[first_chunk..].iter().map(|c| c.bytes).sum();
    assert_eq!(plan_bytes[&(last_gen, 0)], want, "plan bytes of generation {last_gen} (from step {})", last_start + 1);
}

/// Rank 0 killed with SIGKILL between uploading a checkpoint's files to S3 (moto) and writing its
/// manifest (moto holds the manifest PUT unanswered, so the writer is stopped there by a real store, not by
/// a hook in our code): the half-written checkpoint is in the bucket but `latest_checkpoint` does not pick it
/// and the coordinator never recorded it; the survivor re-forms from scratch, commits the same checkpoint
/// over the leftovers and completes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_worker_killed_mid_checkpoint_leaves_no_resumable_checkpoint() {
    use splade_common::store::checkpoint::{latest_checkpoint, MANIFEST_NAME};
    use splade_tests::MotoServer;

    let moto = tokio::task::spawn_blocking(MotoServer::start).await.unwrap();
    moto.create_bucket("splade-ckpt");
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), 64);
    let out = "s3://splade-ckpt/run";
    let steps = 6;
    let yaml = job_yaml(Path::new(out), &data, 4, 8, steps, 2, (1, 2));
    let cfg = parse(&yaml);
    let opts = splade_common::store::StoreOptions { overrides: moto.store_overrides() };
    let loc = Location::parse_with(out, &opts).unwrap();
    let (cluster, job) = splade_coordinator::config::from_config(&cfg).unwrap();
    let mut copts = CoordinatorOptions::new(cluster, job, "127.0.0.1:0".parse().unwrap(), JoinToken::new(TOKEN).unwrap());
    copts.verifier = Arc::new(StoreVerifier::new(loc.clone()));
    let handle = splade_coordinator::start(copts).await.unwrap();
    let addr = handle.local_addr();
    let snaps = handle.subscribe();

    // The first checkpoint's manifest write (whichever process is rank 0) hangs in the store.
    let held = moto.stall("PUT", &format!("/splade-ckpt/run/checkpoint-2/{}$", regex_escape(MANIFEST_NAME)));
    let env: Vec<(String, String)> = moto.env();
    let env_refs: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (k.as_str(), Path::new(v.as_str()))).collect();
    let mut workers = vec![
        spawn_worker(addr, "w0", tmp.path(), TOKEN, &env_refs, None),
        spawn_worker(addr, "w1", tmp.path(), TOKEN, &env_refs, None),
    ];
    let t = Instant::now();
    while moto.fault_hits(held) == 0 {
        if t.elapsed() > JOB_LIMIT || handle.is_finished() {
            for w in &mut workers {
                let _ = w.child.kill();
                eprintln!("--- {} ---\n{}", w.id, w.log());
            }
            panic!("no worker reached the manifest write of checkpoint-2");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The writer is rank 0 of the generation both workers were assigned to.
    let rank_of = |w: &Worker| w.log().lines().filter(|l| l.contains("assigned")).last().map(|l| l.contains("rank=0"));
    let vi = workers.iter().position(|w| rank_of(w) == Some(true)).expect("a worker was assigned rank 0");
    workers[vi].child.kill().unwrap(); // SIGKILL, files uploaded, manifest not
    let _ = workers[vi].child.wait();
    moto.clear_faults();

    // The bucket holds the half-written checkpoint, and nothing picks it.
    let listed = loc.store().list_with_delimiter(Some(&loc.child("checkpoint-2"))).await.unwrap();
    let keys: Vec<String> = listed.objects.iter().map(|o| o.location.to_string()).collect();
    assert!(!keys.is_empty(), "the killed writer uploaded no checkpoint file; the test did not exercise a half-written checkpoint");
    assert!(!keys.iter().any(|k| k.ends_with(MANIFEST_NAME)), "{keys:?}");
    assert!(latest_checkpoint(&loc).await.unwrap().is_none(), "a resume would pick the half-written checkpoint-2 ({keys:?})");
    assert!(verify_checkpoint(&loc, "checkpoint-2", Verify::Full).await.is_err());
    assert_eq!(handle.snapshot().last_checkpoint, None, "the coordinator recorded an uncommitted checkpoint");

    // The survivor re-forms from scratch (no committed checkpoint), commits checkpoint-2 over the
    // leftovers and finishes.
    let outcome = finish(handle, &mut workers).await;
    let survivor = &mut workers[1 - vi];
    assert_eq!(outcome, JobOutcome::Completed { final_step: steps as u64 }, "survivor:\n{}", survivor.log());
    assert!(exit_ok(survivor, Duration::from_secs(60)), "survivor:\n{}", survivor.log());
    let last = snaps.borrow().clone();
    assert!(last.restarts >= 1 && last.generation >= 2, "{last:?}");
    assert_eq!(verify_checkpoint(&loc, "checkpoint-2", Verify::Full).await.unwrap().step, 2);
    assert_eq!(verify_checkpoint(&loc, "final", Verify::Full).await.unwrap().step, steps as u64);
    assert_eq!(latest_checkpoint(&loc).await.unwrap().map(|c| c.name), Some("checkpoint-4".to_string()));
}

/// `s` with Python `re` metacharacters escaped.
fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if r"\.^$*+?{}[]|()".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}
