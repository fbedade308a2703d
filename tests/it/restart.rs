//! The `splade-coordinator` binary killed under running `splade-worker` processes: restarted without its state it
//! resumes from what `output_dir` holds and never trains over a finished run; killed for good, its orphaned
//! workers finish their generation and exit naming what they finished. Named `cluster_*`: one at a time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use splade_common::store::checkpoint::{verify_checkpoint, Verify};
use splade_common::store::Location;
use splade_tests::fixtures::bin;

use crate::cluster::{assert_ledger_follows_the_plan, exit_ok, job_yaml, spawn_worker_with, write_data, Worker, TOKEN};

const LIMIT: Duration = Duration::from_secs(300);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A coordinator process on `config`, listening on `port`, logging (info) to `log`.
fn coordinator(config: &Path, port: u16, log: &Path) -> Child {
    Command::new(bin("splade-coordinator"))
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("SPLADE_CLUSTER_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {}", child.id());
}

/// Waits (bounded by [`LIMIT`]) until `what` holds; on timeout prints the logs and fails.
fn wait_for(what: &str, logs: &[&Path], mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > LIMIT {
            for l in logs {
                eprintln!("--- {} ---\n{}", l.display(), std::fs::read_to_string(l).unwrap_or_default());
            }
            panic!("{what}: not within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) for `child` to exit; on timeout kills it, prints the logs and fails.
fn wait_exit(child: &mut Child, limit: Duration, logs: &[&Path]) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            for l in logs {
                eprintln!("--- {} ---\n{}", l.display(), read(l));
            }
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

struct Job {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    data: PathBuf,
    out: PathBuf,
    port: u16,
}

/// 8 steps of 8 rows (2 workers x 4), a checkpoint every 2 steps, both workers required.
const STEPS: usize = 8;

fn job() -> Job {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let data = write_data(&dir, 64);
    let out = dir.join("out");
    let config = dir.join("job.yaml");
    std::fs::write(&config, job_yaml(&out, &data, 4, 8, STEPS, 2, (2, 2))).unwrap();
    Job { _tmp: tmp, dir, config, data, out, port: free_port() }
}

fn manifest(out: &Path, name: &str) -> bool {
    out.join(name).join("manifest.json").is_file()
}

fn workers(j: &Job, extra: &[(&str, &Path)]) -> (PathBuf, Vec<Worker>) {
    let ledger = j.dir.join("ledger.jsonl");
    let addr = format!("127.0.0.1:{}", j.port).parse().unwrap();
    let mut flags = vec![("--ledger", ledger.as_path())];
    flags.extend_from_slice(extra);
    let ws = ["w0", "w1"].map(|id| spawn_worker_with(addr, id, &j.dir, TOKEN, &[], None, &flags));
    (ledger, ws.into())
}

/// `kill -9` of the coordinator after a committed checkpoint; a new one on the same config and port reads the
/// checkpoint from `output_dir`, the workers rejoin, and the job completes from it with every planned row used
/// once (numbering its generations above the one the workers trained in). A third start exits 0 reporting the job
/// complete, without training.
#[test]
fn cluster_coordinator_restarted_without_state_resumes_from_output_dir_and_never_retrains_a_finished_run() {
    let j = job();
    let (log1, log2, log3) = (j.dir.join("coord1.log"), j.dir.join("coord2.log"), j.dir.join("coord3.log"));
    let mut c1 = coordinator(&j.config, j.port, &log1);
    let (ledger, mut ws) = workers(&j, &[]);
    let logs = [log1.as_path(), log2.as_path(), ws[0].log.as_path(), ws[1].log.as_path()];
    wait_for("checkpoint-2 committed", &logs, || manifest(&j.out, "checkpoint-2"));
    // Hold the workers still while the coordinator is replaced, so they cannot train to the end in between (that
    // case is the orphan test's): the new coordinator finds them mid-run.
    for w in &ws {
        signal(&w.child, "-STOP");
    }
    c1.kill().unwrap(); // SIGKILL
    c1.wait().unwrap();
    assert!(!manifest(&j.out, "final"), "the job finished before the coordinator was killed");
    let mut c2 = coordinator(&j.config, j.port, &log2);
    wait_for("the new coordinator resumes from a checkpoint", &logs, || {
        read(&log2).contains("resuming the job from its last committed checkpoint")
    });
    for w in &ws {
        signal(&w.child, "-CONT");
    }
    let status = wait_exit(&mut c2, LIMIT, &logs);
    assert!(status.success(), "second coordinator: {status}\n{}", read(&log2));
    for w in &mut ws {
        assert!(exit_ok(w, Duration::from_secs(60)), "{}:\n{}", w.id, w.log());
    }
    let resumed_at: u64 = {
        let log = read(&log2);
        let line = log.lines().find(|l| l.contains("resuming the job")).unwrap().to_string();
        let step = line.split("step=").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap();
        step.parse().unwrap()
    };
    assert!(resumed_at >= 2 && resumed_at % 2 == 0, "resumed at {resumed_at}");
    let loc = Location::parse(j.out.to_str().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert_eq!(rt.block_on(verify_checkpoint(&loc, "final", Verify::Full)).unwrap().step, STEPS as u64);

    let (gens, starts, _) = assert_ledger_follows_the_plan(&ledger, &j.data, STEPS);
    // The second coordinator's first generation starts at the checkpoint it read, numbered above the first's.
    assert!(gens.len() >= 2, "generations {gens:?}");
    let i = starts.iter().position(|s| *s == resumed_at).unwrap_or_else(|| panic!("no generation started at {resumed_at}: {starts:?}"));
    assert!(i >= 1 && gens[i] > gens[0], "generations {gens:?} starting after {starts:?}");

    // A third start: the run is finished, so it trains nothing and exits 0 saying so.
    let before = read(&ledger);
    let mut c3 = coordinator(&j.config, j.port, &log3);
    let status = wait_exit(&mut c3, Duration::from_secs(120), &[log3.as_path()]);
    let log = read(&log3);
    assert!(status.success() && log.contains("already complete") && log.contains("(step 8)"), "{status}\n{log}");
    assert_eq!(read(&ledger), before);
}

/// `kill -9` of the coordinator for good after a committed checkpoint: the workers train their generation to its
/// end (rank 0 commits every checkpoint and `final/`), then wait `--coordinator-wait` for a coordinator and exit 0
/// naming the final model, within that bound.
#[test]
fn cluster_orphaned_workers_finish_their_generation_and_exit_naming_it_within_the_wait() {
    let j = job();
    let log1 = j.dir.join("coord1.log");
    let mut c1 = coordinator(&j.config, j.port, &log1);
    let wait = Path::new("4");
    let (_, mut ws) = workers(&j, &[("--coordinator-wait", wait)]);
    let logs = [log1.as_path(), ws[0].log.as_path(), ws[1].log.as_path()];
    wait_for("checkpoint-2 committed", &logs, || manifest(&j.out, "checkpoint-2"));
    c1.kill().unwrap(); // SIGKILL, for good
    c1.wait().unwrap();
    assert!(!manifest(&j.out, "final"), "the job finished before the coordinator was killed");
    wait_for("final/ committed by the orphaned workers", &logs, || manifest(&j.out, "final"));
    let done = Instant::now();
    for w in &mut ws {
        // 4 s of waiting plus heartbeat retries and start-up slack on a loaded machine.
        assert!(exit_ok(w, Duration::from_secs(30)), "{}:\n{}", w.id, w.log());
        let log = w.log();
        assert!(
            log.contains("no coordinator answered") && log.contains("this worker finished the job")
                && log.contains("trained the last step 8") && log.contains(&format!("{}/final", j.out.display())),
            "{}:\n{log}",
            w.id
        );
    }
    let waited = done.elapsed();
    assert!(waited >= Duration::from_secs(3), "exited after {waited:?}, before the wait");
    // Every save step before the last (the last step writes final/).
    for step in (2..STEPS).step_by(2) {
        assert!(manifest(&j.out, &format!("checkpoint-{step}")), "checkpoint-{step} is not committed");
    }
}
