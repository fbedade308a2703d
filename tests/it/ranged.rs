//! Cluster workers read only their slice of each global batch: two workers train from a dataset in S3
//! (moto) through the coordinator's published, chunked data plan, and each fetches a small fraction of the
//! file and exactly the plan chunks of the steps it trains.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use splade_common::data::plan::slice_for_rank;
use splade_common::data::{DataPlanRef, PublishedPlan};
use splade_common::store::checkpoint::{verify_checkpoint, Verify};
use splade_common::store::Location;
use splade_tests::MotoServer;
use splade_coordinator::{CoordinatorOptions, JobOutcome, JoinToken, StoreVerifier};

use crate::cluster::{exit_ok, finish, job_yaml, pairs_jsonl, parse, spawn_two_with_ledger, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_workers_read_only_their_slices_from_s3() {
    let moto = tokio::task::spawn_blocking(MotoServer::start).await.unwrap();
    moto.create_bucket("splade-data");
    let opts = splade_common::store::StoreOptions { overrides: moto.store_overrides() };
    let bucket = Location::parse_with("s3://splade-data", &opts).unwrap();
    // Rows of about 1 KiB, so a few rows per step are a small part of the file.
    let text = pairs_jsonl(2000, 80);
    let dataset_bytes = text.len() as u64;
    bucket.store().put(&bucket.child("train/part-0.jsonl"), text.into_bytes().into()).await.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let out = "s3://splade-data/run";
    let steps = 6;
    let yaml = job_yaml(Path::new(out), Path::new("s3://splade-data/train/part-0.jsonl"), 4, 8, steps, 2, (2, 2));
    let cfg = parse(&yaml);
    let (cluster, mut job) = splade_coordinator::config::from_config(&cfg).unwrap();
    let (plan, plan_ref) = splade_coordinator::config::publish_data_plan(&cfg, &job, &opts).await.unwrap();
    assert!(plan_ref.location.starts_with("s3://splade-data/run/data-plan/"), "{}", plan_ref.location);
    job.data_plan = Some(plan_ref.clone());
    let loc = Location::parse_with(out, &opts).unwrap();
    let mut copts = CoordinatorOptions::new(cluster, job, "127.0.0.1:0".parse().unwrap(), JoinToken::new(TOKEN).unwrap());
    copts.verifier = Arc::new(StoreVerifier::new(loc.clone()));
    let handle = splade_coordinator::start(copts).await.unwrap();
    let addr = handle.local_addr();

    let (ledger, mut workers) = spawn_two_with_ledger(addr, tmp.path(), &moto);
    let outcome = finish(handle, &mut workers).await;
    assert_eq!(outcome, JobOutcome::Completed { final_step: steps as u64 }, "w0:\n{}\nw1:\n{}", workers[0].log(), workers[1].log());
    for w in &mut workers {
        assert!(exit_ok(w, Duration::from_secs(60)), "{}:\n{}", w.id, w.log());
    }
    assert_eq!(verify_checkpoint(&loc, "final", Verify::Full).await.unwrap().step, steps as u64);

    // Each rank consumed exactly its slice of every planned batch, and fetched a small part of the file.
    let published = PublishedPlan::fetch(&DataPlanRef { location: plan_ref.location, sha256: plan_ref.sha256 }, &opts).await.unwrap();
    assert_eq!(published.fetch_batch_plan(&opts).await.unwrap().0, plan.plan());
    let chunks = &published.manifest.chunks;
    assert_eq!(chunks.len(), 3, "6 steps in chunks of 2");
    let mut bytes_by_rank: BTreeMap<usize, u64> = BTreeMap::new();
    let mut plan_bytes_by_rank: BTreeMap<usize, u64> = BTreeMap::new();
    let mut metric_by_rank: BTreeMap<usize, u64> = BTreeMap::new();
    let mut seen = 0;
    for line in std::fs::read_to_string(&ledger).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (rank, step) = (v["rank"].as_u64().unwrap() as usize, v["step"].as_u64().unwrap());
        let rows: Vec<usize> = serde_json::from_value(v["rows"].clone()).unwrap();
        assert_eq!(rows, slice_for_rank(&plan.batches[step as usize - 1], rank, 2), "rank {rank} step {step}");
        let read = v["bytes_read"].as_u64().expect("workers on a data plan report bytes_read");
        let e = bytes_by_rank.entry(rank).or_default();
        *e = (*e).max(read);
        // What the worker adds to splade_worker_data_bytes_read_total{kind="plan"} (after the manifest).
        let plan_read = v["plan_bytes_read"].as_u64().expect("workers on a data plan report plan_bytes_read");
        let e = plan_bytes_by_rank.entry(rank).or_default();
        *e = (*e).max(plan_read);
        let e = metric_by_rank.entry(rank).or_default();
        *e = (*e).max(v["metric_plan_bytes"].as_u64().expect("metric_plan_bytes"));
        seen += 1;
    }
    assert_eq!(seen, 2 * steps, "one ledger line per rank and step");
    for (rank, read) in &bytes_by_rank {
        eprintln!("rank {rank} read {read} of {dataset_bytes} dataset bytes");
        assert!(*read > 0 && *read < dataset_bytes / 20, "rank {rank} read {read} bytes of a {dataset_bytes}-byte dataset");
    }
    // Both ranks train every step of this job, so each fetched the manifest and every chunk exactly once:
    // splade_worker_data_bytes_read_total{kind="plan"} says so.
    let all: u64 = chunks.iter().map(|c| c.bytes).sum();
    for rank in 0..2 {
        let sizes: Vec<u64> = chunks.iter().map(|c| c.bytes).collect();
        assert_eq!(plan_bytes_by_rank[&rank], all, "rank {rank}'s chunk bytes against chunks of {sizes:?} bytes");
        assert_eq!(metric_by_rank[&rank], published.manifest_bytes + all, "rank {rank}'s plan-bytes metric");
    }
}

/// A seed loader block in a cluster: the coordinator materialises it from its hub cache and publishes the split
/// files under `output_dir` (S3 on moto), and the data plan points there. A worker with neither the hub cache nor
/// the coordinator's seed-data cache then reads the same training rows through its ranged reader, and a
/// plan-following rank 0 the same dev rows for `eval_loss`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_loader_block_files_are_published_under_output_dir_for_workers_on_other_machines() {
    use splade_common::data::{load_training_data, RangedReader};
    use splade_tests::fixtures::{ref_python, repo};
    use splade_tests::hub::{files_of_dir, write_hub_repo, RepoKind};
    let moto = tokio::task::spawn_blocking(MotoServer::start).await.unwrap();
    moto.create_bucket("splade-data");
    let opts = splade_common::store::StoreOptions { overrides: moto.store_overrides() };
    let tmp = tempfile::tempdir().unwrap();

    // The seed's NLI fixture as Hub dataset `Fremtind/all-nli-norwegian` in the coordinator's hub cache.
    let fixtures = tmp.path().join("fixtures");
    let out = std::process::Command::new(ref_python())
        .arg(repo().join("scripts/seed_loaders_ref.py"))
        .args(["fixtures", fixtures.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "seed_loaders_ref.py fixtures:\n{}", String::from_utf8_lossy(&out.stderr));
    let mut files = files_of_dir(&fixtures.join("hub/Fremtind/all-nli-norwegian"));
    let readme = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: default/train/*.parquet\n  - split: dev\n    path: default/dev/*.parquet\n  - split: test\n    path: default/test/*.parquet\n---\n";
    files.push(("README.md".into(), readme.as_bytes().to_vec()));
    let hub_cache = tmp.path().join("hub");
    write_hub_repo(&hub_cache, RepoKind::Dataset, "Fremtind/all-nli-norwegian", &files);
    let seed_cache = tmp.path().join("seed-cache");
    // This test process is the coordinator, then a worker (nextest runs each test in its own process).
    std::env::set_var("HF_HUB_CACHE", &hub_cache);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("SPLADE_CACHE", &seed_cache);
    for (k, v) in moto.env() {
        std::env::set_var(k, v);
    }

    let output = "s3://splade-data/run";
    let yaml = job_yaml(Path::new(output), Path::new("@DATA@"), 4, 8, 4, 2, (2, 2))
        .replace("  toy:\n    source: @DATA@\n", "  nli:\n    enabled: true\n")
        .replace("  report_to: none\n", "  report_to: none\n  eval_strategy: steps\n  eval_steps: 2\n");
    let cfg = parse(&yaml);
    let local = load_training_data(cfg.datasets.enabled(), cfg.training.seed, &opts).await.unwrap();
    let (_, job) = splade_coordinator::config::from_config(&cfg).unwrap();
    let (plan, plan_ref) = splade_coordinator::config::publish_data_plan(&cfg, &job, &opts).await.unwrap();
    let nli = plan.dataset("nli").unwrap();
    assert_eq!(nli.files.len(), 1);
    for url in [&nli.files[0].url, nli.dev.as_ref().expect("the nli block has dev rows")] {
        assert!(url.starts_with("s3://splade-data/run/seed-data/"), "{url}");
    }

    // A worker elsewhere: no seed-data cache, an empty hub cache.
    std::fs::remove_dir_all(&seed_cache).unwrap();
    std::env::set_var("HF_HUB_CACHE", tmp.path().join("empty-hub"));
    let fetched = PublishedPlan::fetch(&DataPlanRef { location: plan_ref.location, sha256: plan_ref.sha256 }, &opts).await.unwrap();
    assert_eq!(fetched.manifest.datasets[0].files, nli.files, "the manifest points workers at the published copies");
    let mut reader = RangedReader::new(plan.datasets.clone(), opts.clone());
    let rows: Vec<usize> = (0..local[0].train.len()).collect();
    assert_eq!(reader.read_rows("nli", &rows).await.unwrap(), local[0].train);
    let dev = tokio::task::spawn_blocking(move || {
        let trainer = splade_worker::train::Trainer::with_plan(cfg, tch::Device::Cpu, std::sync::Arc::new(fetched), 1).unwrap();
        splade_worker::train::dev::plan_dev_sets(&trainer).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(dev.len(), 1);
    assert_eq!((dev[0].name.as_str(), &dev[0].rows), ("nli", &local[0].eval));
    assert!(!local[0].eval.is_empty());
}
