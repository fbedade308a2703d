//! The commit protocol against local disk and a real S3 server (moto on loopback), same scenarios for both.

use std::path::Path;

use object_store::PutPayload;

use super::*;
use splade_tests::MotoServer;

/// A fake checkpoint folder: weights, trainer state and a nested module folder.
fn make_files(dir: &Path, seed: u8) {
    std::fs::create_dir_all(dir.join("1_SpladePooling")).unwrap();
    std::fs::write(dir.join("model.safetensors"), vec![seed; 3000]).unwrap();
    std::fs::write(dir.join("trainer_state.json"), format!("{{\"step\": {seed}}}")).unwrap();
    std::fs::write(dir.join("1_SpladePooling/config.json"), b"{\"pooling_strategy\": \"max\"}").unwrap();
}

async fn put(loc: &Location, rel: &str, bytes: Vec<u8>) {
    loc.store().put(&loc.child(rel), PutPayload::from(bytes)).await.unwrap();
}

/// Every scenario, on any location.
async fn protocol_scenarios(loc: &Location) {
    let work = tempfile::tempdir().unwrap();
    assert!(latest_checkpoint(loc).await.unwrap().is_none(), "empty location has no checkpoint");

    // Commit two checkpoints.
    for step in [10u64, 20] {
        let src = work.path().join(format!("src-{step}"));
        make_files(&src, step as u8);
        let info = commit_checkpoint(loc, &format!("checkpoint-{step}"), step, &src).await.unwrap();
        assert_eq!(info.step, step);
        assert_eq!(info.manifest.files.len(), 3);
        assert_eq!(info.manifest.files[0].path, "1_SpladePooling/config.json");
        assert!(info.manifest.created.ends_with('Z'));
    }
    let listed = list_checkpoints(loc).await.unwrap();
    assert_eq!(listed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["checkpoint-10", "checkpoint-20"]);
    assert_eq!(latest_checkpoint(loc).await.unwrap().unwrap().name, "checkpoint-20");

    // Re-committing identical files is a no-op; different files under a committed name are refused.
    let src20 = work.path().join("src-20");
    commit_checkpoint(loc, "checkpoint-20", 20, &src20).await.unwrap();
    let other = work.path().join("other");
    make_files(&other, 99);
    let e = commit_checkpoint(loc, "checkpoint-20", 20, &other).await.unwrap_err();
    assert!(matches!(e, StoreError::AlreadyCommitted { .. }), "{e}");

    // Crash between the files and the manifest: files of checkpoint-30 uploaded, no manifest.
    for rel in ["model.safetensors", "trainer_state.json", "1_SpladePooling/config.json"] {
        put(loc, &format!("checkpoint-30/{rel}"), b"partial".to_vec()).await;
    }
    assert_eq!(latest_checkpoint(loc).await.unwrap().unwrap().name, "checkpoint-20", "a checkpoint without manifest is never picked");
    assert_eq!(list_checkpoints(loc).await.unwrap().len(), 2);
    let e = fetch_checkpoint(loc, "checkpoint-30", &work.path().join("x")).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    // The same name commits cleanly afterwards (leftovers replaced).
    let src30 = work.path().join("src-30");
    make_files(&src30, 30);
    commit_checkpoint(loc, "checkpoint-30", 30, &src30).await.unwrap();
    assert_eq!(latest_checkpoint(loc).await.unwrap().unwrap().name, "checkpoint-30");

    // Fetch downloads and verifies.
    let fetched = work.path().join("fetched");
    let info = fetch_checkpoint(loc, "checkpoint-30", &fetched).await.unwrap();
    assert_eq!(info.step, 30);
    assert_eq!(std::fs::read(fetched.join("model.safetensors")).unwrap(), vec![30u8; 3000]);
    assert_eq!(std::fs::read(fetched.join("1_SpladePooling/config.json")).unwrap(), b"{\"pooling_strategy\": \"max\"}");
    assert!(fetched.join(MANIFEST_NAME).exists());

    // Corrupt one file of checkpoint-30, same size: full verification fails, the cheap one does not.
    put(loc, "checkpoint-30/model.safetensors", vec![7u8; 3000]).await;
    let e = verify_checkpoint(loc, "checkpoint-30", Verify::Full).await.unwrap_err().to_string();
    assert!(e.contains("checkpoint-30` fails verification: model.safetensors: ") && e.contains("sha256"), "{e}");
    verify_checkpoint(loc, "checkpoint-30", Verify::Sizes).await.unwrap();
    assert_eq!(latest_checkpoint(loc).await.unwrap().unwrap().name, "checkpoint-20", "corrupt checkpoint skipped");
    assert_eq!(list_checkpoints(loc).await.unwrap().len(), 2);
    assert_eq!(list_checkpoints_with(loc, Verify::Sizes).await.unwrap().len(), 3);
    let bad_dir = work.path().join("bad");
    let e = fetch_checkpoint(loc, "checkpoint-30", &bad_dir).await.unwrap_err();
    assert!(matches!(e, StoreError::Verify { .. }), "{e}");
    assert!(!bad_dir.join("model.safetensors").exists(), "no corrupt file left under its name");
    let got = fetch_latest_checkpoint(loc, &work.path().join("latest")).await.unwrap().unwrap();
    assert_eq!(got.name, "checkpoint-20");

    // A truncated file fails even the cheap check.
    put(loc, "checkpoint-30/trainer_state.json", b"{}".to_vec()).await;
    let e = verify_checkpoint(loc, "checkpoint-30", Verify::Sizes).await.unwrap_err().to_string();
    assert!(e.contains("trainer_state.json: size 2 but the manifest says"), "{e}");

    // Prune: keep the last 2 plus the protected best one; `final` is never touched.
    for step in [40u64, 50] {
        let src = work.path().join(format!("src-{step}"));
        make_files(&src, step as u8);
        commit_checkpoint(loc, &format!("checkpoint-{step}"), step, &src).await.unwrap();
    }
    commit_checkpoint(loc, "final", 50, &work.path().join("src-50")).await.unwrap();
    let deleted = prune(loc, 2, &["checkpoint-10"]).await.unwrap();
    assert_eq!(deleted, ["checkpoint-20", "checkpoint-30"]);
    let names: Vec<_> = list_checkpoints(loc).await.unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["checkpoint-10", "checkpoint-40", "checkpoint-50", "final"]);
    // Nothing of the pruned ones is left.
    let mut left = loc.store().list(Some(&loc.child("checkpoint-20")));
    use futures::StreamExt;
    assert!(left.next().await.is_none());
}

#[tokio::test]
async fn protocol_on_local_disk() {
    let root = tempfile::tempdir().unwrap();
    let loc = Location::parse(root.path().join("run").to_str().unwrap()).unwrap();
    protocol_scenarios(&loc).await;
    // No temporary folders left behind.
    let stray: Vec<_> = std::fs::read_dir(root.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[tokio::test]
async fn protocol_on_s3() {
    let moto = MotoServer::start();
    moto.create_bucket("ckpt");
    let loc = Location::parse_with("s3://ckpt/runs/exp1", &crate::store::StoreOptions { overrides: moto.store_overrides() }).unwrap();
    protocol_scenarios(&loc).await;
    // The manifest is written with a create-only put: a second create of the same key is refused by the store.
    let manifest = loc.child("checkpoint-40/manifest.json");
    let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
    let e = loc.store().put_opts(&manifest, PutPayload::from_static(b"{}"), opts).await.unwrap_err();
    assert!(matches!(e, object_store::Error::AlreadyExists { .. }), "{e}");

    // A store without create-only puts: the manifest falls back to a plain put (with a logged note).
    let mut opts = crate::store::StoreOptions { overrides: moto.store_overrides() };
    opts.overrides.push(("aws_conditional_put".into(), "disabled".into()));
    let plain = Location::parse_with("s3://ckpt/runs/plain", &opts).unwrap();
    let src = tempfile::tempdir().unwrap();
    make_files(src.path(), 1);
    commit_checkpoint(&plain, "checkpoint-1", 1, src.path()).await.unwrap();
    assert_eq!(latest_checkpoint(&plain).await.unwrap().unwrap().name, "checkpoint-1");
}

#[tokio::test]
async fn local_commit_in_place_writes_only_the_manifest() {
    let root = tempfile::tempdir().unwrap();
    let loc = Location::parse(root.path().to_str().unwrap()).unwrap();
    let dir = root.path().join("checkpoint-5");
    make_files(&dir, 5);
    // Before the manifest the folder is not a checkpoint.
    assert!(latest_checkpoint(&loc).await.unwrap().is_none());
    commit_checkpoint(&loc, "checkpoint-5", 5, &dir).await.unwrap();
    let info = latest_checkpoint(&loc).await.unwrap().unwrap();
    assert_eq!((info.name.as_str(), info.step), ("checkpoint-5", 5));
    // Fetching into its own folder just verifies.
    fetch_checkpoint(&loc, "checkpoint-5", &dir).await.unwrap();
    // Deleting the manifest (the first step of a prune) un-commits it.
    std::fs::remove_file(dir.join(MANIFEST_NAME)).unwrap();
    assert!(latest_checkpoint(&loc).await.unwrap().is_none());
}

#[tokio::test]
async fn bad_names_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let loc = Location::parse(root.path().to_str().unwrap()).unwrap();
    for name in ["", "a/b", ".hidden"] {
        let e = commit_checkpoint(&loc, name, 1, root.path()).await.unwrap_err().to_string();
        assert!(e.contains("not a valid checkpoint name"), "{e}");
    }
}

/// S3 settings from the standard AWS_* variables alone (AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, keys, region): the
/// check runs in a child test process so this process's environment is never mutated.
#[test]
fn s3_settings_come_from_aws_env_vars() {
    let moto = MotoServer::start();
    moto.create_bucket("envb");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::checkpoint_tests::env_child", "--ignored", "--nocapture"])
        .envs(moto.env())
        .env("SPLADE_ENV_CHILD_URL", "s3://envb/run")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by s3_settings_come_from_aws_env_vars with the AWS_* variables set"]
fn env_child() {
    let url = std::env::var("SPLADE_ENV_CHILD_URL").expect("run through s3_settings_come_from_aws_env_vars");
    let loc = Location::parse(&url).unwrap();
    let src = tempfile::tempdir().unwrap();
    make_files(src.path(), 3);
    block_on(async {
        commit_checkpoint(&loc, "checkpoint-3", 3, src.path()).await.unwrap();
        assert_eq!(latest_checkpoint(&loc).await.unwrap().unwrap().step, 3);
    });
}

/// An object store that refuses a checkpoint's write part-way (moto answers one file's PUT with 403
/// AccessDenied, after others were uploaded): the commit is a clear error naming that file, the objects it had
/// written are removed, nothing a resume would pick is left, and the previous checkpoint stays the latest.
#[tokio::test]
async fn s3_refusing_a_write_part_way_commits_nothing_and_leaves_the_previous_checkpoint() {
    let moto = MotoServer::start();
    moto.create_bucket("ckpt");
    let loc = Location::parse_with("s3://ckpt/runs/refused", &crate::store::StoreOptions { overrides: moto.store_overrides() }).unwrap();
    let src = tempfile::tempdir().unwrap();
    make_files(src.path(), 1);
    commit_checkpoint(&loc, "checkpoint-1", 1, src.path()).await.unwrap();
    make_files(src.path(), 2);
    let rule = moto.refuse("PUT", "/ckpt/runs/refused/checkpoint-2/trainer_state.json$", 403, "AccessDenied", None);
    let e = commit_checkpoint(&loc, "checkpoint-2", 2, src.path()).await.unwrap_err().to_string();
    assert!(moto.fault_hits(rule) >= 1, "the refusal rule never matched: the test did not exercise a refused write");
    assert!(e.contains("checkpoint-2/trainer_state.json"), "the error names the refused file: {e}");
    let left = loc.store().list_with_delimiter(Some(&loc.child("checkpoint-2"))).await.unwrap();
    assert!(left.objects.is_empty(), "objects of the failed commit were left: {:?}", left.objects.iter().map(|o| o.location.to_string()).collect::<Vec<_>>());
    assert_eq!(latest_checkpoint(&loc).await.unwrap().unwrap().name, "checkpoint-1");
    // With the store accepting writes again, the same checkpoint commits.
    moto.clear_faults();
    commit_checkpoint(&loc, "checkpoint-2", 2, src.path()).await.unwrap();
    assert_eq!(latest_checkpoint(&loc).await.unwrap().unwrap().name, "checkpoint-2");
}
