//! The `splade-coordinator` binary as a real process.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;
use splade_tests::tools::{http_get, promtool_check_metrics, wait_until};
use splade_tests::MotoServer;
use splade_proto::domain::Directive;
use splade_proto::{CoordinatorClient, RetryPolicy};

const CONFIG: &str = "
model:
  base_model: unused/by-the-coordinator
training:
  per_device_train_batch_size: 4
  max_steps: 3
cluster:
  min_workers: 1
  max_workers: 1
  heartbeat_interval: 0.05
  heartbeat_timeout: 0.2
  rendezvous_last_call: 0.1
  token_env: SPLADE_IT_TOKEN
";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn coordinator(config: &std::path::Path, port: u16) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_splade-coordinator"));
    cmd.arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn the_binary_runs_a_job_to_completion_and_exits_0() {
    init_tracing();
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("job.yaml");
        let data = dir.path().join("train.jsonl");
        let lines: String = (0..13).map(|i| format!("{{\"anchor\": \"q{i}\", \"positive\": \"d{i}\"}}\n")).collect();
        std::fs::write(&data, lines).unwrap();
        let out_dir = dir.path().join("out");
        let config = CONFIG.replace("  max_steps: 3\n", &format!("  max_steps: 3\n  output_dir: {}\n", out_dir.display()))
            + &format!("datasets:\n  d:\n    source: {}\n", data.display());
        std::fs::write(&cfg, config).unwrap();
        let port = free_port();
        let metrics = format!("127.0.0.1:{}", free_port());
        let child = coordinator(&cfg, port)
            .arg("--metrics-listen")
            .arg(&metrics)
            .env("SPLADE_IT_TOKEN", TOKEN)
            .spawn()
            .unwrap();

        let retry = RetryPolicy {
            attempts: 50,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(1),
        };
        let client =
            CoordinatorClient::connect_with(&format!("127.0.0.1:{port}"), TOKEN, None, retry)
                .await
                .unwrap();
        let mut w = SimWorker::join_with(client, "w0", None).await.unwrap();
        let a = w.assignment().await;
        assert_eq!(
            (
                a.world_size,
                a.global_batch_size,
                a.micro_batches_per_rank,
                a.total_steps
            ),
            (1, 4, 1, 3)
        );
        // The coordinator published the job's data plan (3 batches of 4 of the 13 records) and points
        // every assignment at it.
        let plan_ref = a.data_plan.clone().expect("the assignment carries the data plan");
        let published = splade_common::data::PublishedPlan::fetch(
            &splade_common::data::DataPlanRef { location: plan_ref.location.clone(), sha256: plan_ref.sha256.clone() },
            &Default::default(),
        )
        .await
        .unwrap();
        let (plan, _) = published.fetch_batch_plan(&Default::default()).await.unwrap();
        assert_eq!(plan_ref.location, format!("{}/data-plan/{}.json", out_dir.display(), plan_ref.sha256));
        assert_eq!(plan.batches.len(), 3);
        assert!(plan.batches.iter().all(|b| b.rows.len() == 4 && b.dataset == "d"));
        assert_eq!(published.manifest.datasets[0].train_rows, 13);
        let shipped = splade_common::config::Config::from_json(&a.config_json, "<assignment>")
            .expect("workers get the parsed config as JSON");
        assert_eq!(
            (shipped.training.max_steps, shipped.cluster.token_env.as_str()),
            (3, "SPLADE_IT_TOKEN")
        );
        // Mid-job, `--metrics-listen` serves the job's series and they pass `promtool check metrics`.
        assert!(w.report(1, &[("loss", 0.75), ("samples", 4.0)]).await.accepted);
        let url = format!("http://{metrics}/metrics");
        // Scrape and promtool off the runtime thread: the simulated worker must keep heartbeating
        // (timeout 0.2 s) meanwhile.
        let (text, (ok, lint)) = tokio::task::spawn_blocking(move || {
            let text = wait_until("the coordinator's /metrics to show step 1", PATIENCE, || {
                http_get(&url)
                    .ok()
                    .filter(|(status, body)| *status == 200 && body.contains("splade_train_global_step 1"))
                    .map(|(_, body)| body)
            });
            let lint = promtool_check_metrics(&text);
            (text, lint)
        })
        .await
        .unwrap();
        assert!(text.contains("splade_train_loss 0.75"), "{text}");
        assert!(text.contains("splade_cluster_workers_alive 1"), "{text}");
        assert!(ok && lint.trim().is_empty(), "promtool check metrics: {lint}\n{text}");
        let ack = w.report(3, &[("loss", 0.5)]).await;
        assert!(ack.accepted, "{}", ack.reason);
        assert_eq!(
            w.final_directive().await,
            Directive::Complete { final_step: 3 }
        );

        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("exits")
            .unwrap();
        assert!(
            out.status.success(),
            "exit {:?}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
}

#[tokio::test]
async fn the_binary_refuses_to_start_without_its_token() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("job.yaml");
        std::fs::write(&cfg, CONFIG).unwrap();
        let child = coordinator(&cfg, free_port())
            .env_remove("SPLADE_IT_TOKEN")
            .spawn()
            .unwrap();
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("exits")
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("job.yaml")
                && stderr.contains("environment variable SPLADE_IT_TOKEN is not set"),
            "{stderr}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_binary_names_a_bad_key() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("job.yaml");
        std::fs::write(&cfg, CONFIG.replace("max_workers: 1", "max_worker: 1")).unwrap();
        let child = coordinator(&cfg, free_port())
            .env("SPLADE_IT_TOKEN", TOKEN)
            .spawn()
            .unwrap();
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("exits")
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("job.yaml") && stderr.contains("cluster.max_worker") && stderr.contains("max_workers"),
            "{stderr}"
        );
    })
    .await;
}

/// A config whose dataset is missing in the bucket (real S3: moto): the binary exits non-zero before it
/// listens, naming the config file, the dataset, its source and the key to fix; a dataset that is there
/// passes the same check. Named `multi_process_*` so nextest runs it alone (it starts moto).
#[tokio::test]
async fn multi_process_the_binary_refuses_datasets_missing_in_the_bucket() {
    init_tracing();
    let moto = tokio::task::spawn_blocking(MotoServer::start).await.unwrap();
    moto.create_bucket("splade-data");
    let present = "s3://splade-data/train/part-0.jsonl";
    let loc = splade_common::store::Location::parse_with("s3://splade-data/train", &splade_common::store::StoreOptions { overrides: moto.store_overrides() }).unwrap();
    loc.store()
        // One global batch (4) of records: the coordinator plans from them at start-up.
        .put(
            &loc.child("part-0.jsonl"),
            (0..4).map(|i| format!("{{\"anchor\": \"q{i}\", \"positive\": \"d{i}\"}}\n")).collect::<String>().into_bytes().into(),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |source: &str, name: &str| {
        let cfg = dir.path().join(name);
        let datasets = format!("datasets:\n  present:\n    source: {present}\n  msmarco:\n    source: {source}\n");
        let config = CONFIG.replace("  max_steps: 3\n", &format!("  max_steps: 3\n  output_dir: {}/out\n", dir.path().display()));
        std::fs::write(&cfg, format!("{config}{datasets}")).unwrap();
        let mut cmd = coordinator(&cfg, free_port());
        cmd.env("SPLADE_IT_TOKEN", TOKEN);
        for (k, v) in moto.env() {
            cmd.env(k, v);
        }
        cmd
    };
    for (source, name) in [
        ("s3://splade-data/msmarco/*.jsonl", "glob.yaml"),
        ("s3://splade-data/msmarco/train.jsonl", "key.yaml"),
    ] {
        let out = tokio::time::timeout(PATIENCE, run(source, name).spawn().unwrap().wait_with_output())
            .await
            .expect("exits")
            .unwrap();
        assert!(!out.status.success(), "a missing dataset must stop the coordinator");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(name)
                && stderr.contains(&format!("source `{source}` matches no file"))
                && stderr.contains("datasets.msmarco.source"),
            "{stderr}"
        );
    }

    // With both datasets present the coordinator starts and waits for workers (stopped by SIGTERM).
    let mut child = run("s3://splade-data/train/", "ok.yaml").env("RUST_LOG", "info").spawn().unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(exited.is_err(), "the coordinator exited although both datasets exist: {exited:?}\n{log}");
    assert!(log.contains("dataset found") && log.contains("msmarco"), "{log}");
}
