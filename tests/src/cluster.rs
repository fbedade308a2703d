//! In-process cluster harness: a coordinator on 127.0.0.1 port 0, and workers that join and heartbeat through the
//! real `splade_proto::WorkerSession` (as `splade-worker` does) without training.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use splade_coordinator::{
    ClusterSettings, CoordinatorHandle, CoordinatorOptions, JobSnapshot, JobSpec, JoinToken,
    PhaseKind,
};
use splade_proto::domain::{
    Assignment, CheckpointCommit, CheckpointRef, Directive, JoinRequest, ProgressReport, WorkerId,
};
use splade_proto::session::PositionSetter;
use splade_proto::{ClientTls, CoordinatorClient, RetryPolicy, WorkerSession};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-join-token-4f9c";
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(200);
/// Upper bound for anything a test waits on; far above the timings involved, so hitting it means a bug.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Cluster settings with short timings for tests.
pub fn settings(min: u32, max: u32, max_restarts: u32) -> ClusterSettings {
    ClusterSettings {
        min_workers: min,
        max_workers: max,
        rendezvous_timeout: Duration::from_secs(5),
        rendezvous_last_call: Duration::from_millis(150),
        heartbeat_interval: HEARTBEAT_INTERVAL,
        heartbeat_timeout: HEARTBEAT_TIMEOUT,
        max_restarts,
        ..Default::default()
    }
}

/// Global batch 16 at 4 per device: world sizes 1, 2 and 4 split it.
pub fn job(total_steps: u64) -> JobSpec {
    JobSpec {
        config_json: r#"{"training": {"per_device_train_batch_size": 4}}"#.into(),
        global_batch_size: 16,
        per_device_batch_size: 4,
        total_steps,
        data_plan: None,
    }
}

pub fn options(cluster: ClusterSettings, job: JobSpec) -> CoordinatorOptions {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    CoordinatorOptions::new(cluster, job, listen, JoinToken::new(TOKEN).unwrap())
}

pub async fn start(cluster: ClusterSettings, job: JobSpec) -> CoordinatorHandle {
    splade_coordinator::start(options(cluster, job))
        .await
        .expect("coordinator starts")
}

/// A client that tries once: tests want to see refusals, not retries.
pub async fn client(addr: SocketAddr, token: &str) -> anyhow::Result<CoordinatorClient> {
    client_tls(&addr.to_string(), token, None).await
}

pub async fn client_tls(
    addr: &str,
    token: &str,
    tls: Option<ClientTls>,
) -> anyhow::Result<CoordinatorClient> {
    let retry = RetryPolicy {
        attempts: 1,
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    Ok(CoordinatorClient::connect_with(addr, token, tls, retry).await?)
}

pub fn wid(s: &str) -> WorkerId {
    WorkerId::new(s).unwrap()
}

pub fn join_request(id: &str, store_port: Option<u16>) -> JoinRequest {
    JoinRequest {
        worker_id: wid(id),
        advertise_host: format!("{id}.test"),
        store_port,
        device: "cpu".into(),
    }
}

pub fn checkpoint(step: u64) -> CheckpointRef {
    CheckpointRef {
        step,
        location: format!("/ckpt/checkpoint-{step}"),
        manifest_sha256: format!("{step:064x}"),
    }
}

/// Waits until `pred` holds for the coordinator's snapshot.
pub async fn snapshot_until(
    handle: &CoordinatorHandle,
    what: &str,
    pred: impl Fn(&JobSnapshot) -> bool,
) -> JobSnapshot {
    let mut rx = handle.subscribe();
    let wait = async {
        loop {
            let s = rx.borrow_and_update().clone();
            if pred(&s) {
                return s;
            }
            if rx.changed().await.is_err() {
                return handle.snapshot();
            }
        }
    };
    match tokio::time::timeout(PATIENCE, wait).await {
        Ok(s) if pred(&s) => s,
        Ok(s) => panic!("coordinator stopped before {what}; last snapshot {s:#?}"),
        Err(_) => panic!(
            "timed out waiting for {what}; snapshot {:#?}",
            handle.snapshot()
        ),
    }
}

#[derive(Default)]
struct Shared {
    generation: Option<u64>,
    step: u64,
}

/// A well-behaved worker process stand-in built on the real [`WorkerSession`] (join, background heartbeat,
/// re-join when forgotten): it adopts each assignment as `splade-worker` does and passes every directive other
/// than "keep going" to the test, in order. Tests that send malformed or out-of-turn messages use a raw
/// [`CoordinatorClient`] ([`client`], or [`SimWorker::client`]).
pub struct SimWorker {
    pub id: WorkerId,
    /// The session's connection, for progress reports, commits and deliberately raw calls.
    pub client: CoordinatorClient,
    session: WorkerSession,
    shared: Arc<Mutex<Shared>>,
    directives: mpsc::UnboundedReceiver<Directive>,
    forward: JoinHandle<()>,
}

impl SimWorker {
    pub async fn join(addr: SocketAddr, id: &str) -> anyhow::Result<Self> {
        Self::join_with(client(addr, TOKEN).await?, id, None).await
    }

    pub async fn join_with(
        client: CoordinatorClient,
        id: &str,
        store_port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let session = WorkerSession::join(client, join_request(id, store_port), PATIENCE)
            .await
            .with_context(|| format!("{id} joins"))?;
        assert_eq!(session.ack().heartbeat_interval, HEARTBEAT_INTERVAL);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, directives) = mpsc::unbounded_channel();
        let forward = tokio::spawn(forward_directives(session.directive(), session.position_setter(), shared.clone(), tx));
        Ok(Self {
            id: session.worker_id().clone(),
            client: session.client(),
            session,
            shared,
            directives,
            forward,
        })
    }

    /// The next directive that is not "keep going".
    pub async fn next(&mut self) -> Directive {
        match tokio::time::timeout(PATIENCE, self.directives.recv()).await {
            Ok(Some(d)) => d,
            Ok(None) => panic!("{}: the session ended", self.id),
            Err(_) => panic!("{}: no directive within {PATIENCE:?}", self.id),
        }
    }

    /// Skips waits until an assignment arrives; anything else is a test failure.
    pub async fn assignment(&mut self) -> Assignment {
        loop {
            match self.next().await {
                Directive::Wait { .. } => continue,
                Directive::Assign(a) => return *a,
                other => panic!("{}: expected an assignment, got {other:?}", self.id),
            }
        }
    }

    /// Skips waits until the job's end (complete or failed) is announced.
    pub async fn final_directive(&mut self) -> Directive {
        loop {
            match self.next().await {
                Directive::Wait { .. } | Directive::Assign(_) => continue,
                d => return d,
            }
        }
    }

    /// Waits for the next `Wait` and returns its reason.
    pub async fn wait_reason(&mut self) -> anyhow::Result<String> {
        match self.next().await {
            Directive::Wait { reason } => Ok(reason),
            other => bail!("{}: expected to be told to wait, got {other:?}", self.id),
        }
    }

    /// Reports `step` as finished with the next heartbeat.
    pub fn set_step(&self, step: u64) {
        let generation = {
            let mut s = self.shared.lock().unwrap();
            s.step = step;
            s.generation
        };
        self.session.set_position(generation, step);
    }

    pub fn generation(&self) -> Option<u64> {
        self.shared.lock().unwrap().generation
    }

    pub async fn report(
        &mut self,
        step: u64,
        metrics: &[(&str, f64)],
    ) -> splade_proto::domain::Ack {
        self.set_step(step);
        let mut report = ProgressReport::new(
            self.id.clone(),
            self.generation().expect("reporting worker is training"),
            step,
        );
        report.train = Some(step_progress(metrics));
        self.client
            .report_progress(report)
            .await
            .expect("progress report")
    }

    pub async fn commit(
        &mut self,
        step: u64,
    ) -> Result<splade_proto::domain::Ack, splade_proto::ClientError> {
        let commit = CheckpointCommit {
            worker_id: self.id.clone(),
            generation: self.generation().expect("committing worker is training"),
            checkpoint: checkpoint(step),
        };
        self.client.commit_checkpoint(commit).await
    }

    /// Leaves the job the way `splade-worker` does on SIGTERM ([`WorkerSession::leave`]).
    pub async fn leave(self, reason: &str) -> Result<(), splade_proto::ClientError> {
        self.forward.abort();
        self.session.leave(reason).await
    }

    /// Stops heartbeating at once, like a process killed with SIGKILL.
    pub fn kill(self) {
        self.forward.abort();
        drop(self.session);
    }
}

/// Hands each directive the session publishes to the test, adopting assignments (generation and start step
/// go into the next heartbeat) and dropping the generation on a wait, as the worker's loop does.
async fn forward_directives(
    mut rx: watch::Receiver<Directive>,
    position: PositionSetter,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::UnboundedSender<Directive>,
) {
    // The session's first value is its own placeholder ("joined; waiting for the first heartbeat"), not
    // something the coordinator said.
    rx.borrow_and_update();
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let d = rx.borrow_and_update().clone();
        let (generation, step) = {
            let mut s = shared.lock().unwrap();
            match &d {
                Directive::Assign(a) => {
                    s.generation = Some(a.generation);
                    s.step = a.start_step;
                }
                Directive::Wait { .. } => s.generation = None,
                _ => {}
            }
            (s.generation, s.step)
        };
        position.set(generation, step);
        let end = matches!(d, Directive::Complete { .. } | Directive::Failed { .. });
        if tx.send(d).is_err() || end {
            return;
        }
    }
}

/// Runs a test body with a hard time limit, so no test can hang the suite.
pub async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    if tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .is_err()
    {
        panic!("test exceeded 30 s");
    }
}

pub fn is_running(s: &JobSnapshot, generation: u64, world: u32) -> bool {
    s.phase == PhaseKind::Running && s.generation == generation && s.world_size == world
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A step's training values with the named fields set (the rest 0): `loss`, `samples`, `samples_per_second`.
pub fn step_progress(values: &[(&str, f64)]) -> splade_proto::domain::StepProgress {
    let mut t = splade_proto::domain::StepProgress::default();
    for (k, v) in values {
        match *k {
            "loss" => t.loss.total = *v,
            "samples" => t.samples = *v as u64,
            "samples_per_second" => t.samples_per_second = *v,
            other => panic!("step_progress: no field {other:?} in this helper"),
        }
    }
    t
}
