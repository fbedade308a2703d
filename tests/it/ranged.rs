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
        seen += 1;
    }
    assert_eq!(seen, 2 * steps, "one ledger line per rank and step");
    for (rank, read) in &bytes_by_rank {
        eprintln!("rank {rank} read {read} of {dataset_bytes} dataset bytes");
        assert!(*read > 0 && *read < dataset_bytes / 20, "rank {rank} read {read} bytes of a {dataset_bytes}-byte dataset");
    }
    // Both ranks train every step of this job, so each fetched every chunk exactly once.
    let all: u64 = chunks.iter().map(|c| c.bytes).sum();
    for rank in 0..2 {
        assert_eq!(plan_bytes_by_rank[&rank], all, "rank {rank}'s plan bytes against chunks of {:?} bytes", chunks.iter().map(|c| c.bytes).collect::<Vec<_>>());
    }
}
