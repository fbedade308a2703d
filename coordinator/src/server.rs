//! Running the coordinator: the gRPC server, the single loop that owns the state machine, and the handle callers
//! keep (address, snapshot, shutdown, outcome).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::machine::{JobOutcome, Machine};
use crate::service::{AuthInterceptor, Command, CoordinatorService};
use crate::settings::{ClusterSettings, JobSpec, JoinToken, ServerTls, SettingsError};
use crate::snapshot::JobSnapshot;
use splade_proto::domain::HeartbeatReply;
use crate::state::{ClusterState, InMemoryClusterState, JobCommand, JobRecord, StateError};
use crate::verify::{CheckpointVerifier, TrustWorkers};
use splade_proto::pb::coordinator_server::CoordinatorServer;

/// Errors starting or running the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS set-up (cluster.tls_cert/tls_key/tls_ca): {0}")]
    Tls(String),
    #[error("gRPC server failed: {0}")]
    Serve(String),
    #[error("coordinator task panicked: {0}")]
    Panicked(String),
    /// The job state could not be read or written at start-up.
    #[error("the job state: {0}")]
    State(#[from] StateError),
    /// The store holds the state of another job (another config or data plan).
    #[error("{0}")]
    OtherJob(String),
}

/// Everything a coordinator is started with.
pub struct CoordinatorOptions {
    pub cluster: ClusterSettings,
    pub job: JobSpec,
    /// Where to serve gRPC; port 0 picks a free one (see [`CoordinatorHandle::local_addr`]).
    pub listen: SocketAddr,
    pub token: JoinToken,
    /// TLS material; `None` serves plain HTTP/2.
    pub tls: Option<ServerTls>,
    /// Checks announced checkpoints before they are recorded.
    pub verifier: Arc<dyn CheckpointVerifier>,
}

impl CoordinatorOptions {
    /// Options with TLS off and the [`TrustWorkers`] verifier.
    pub fn new(
        cluster: ClusterSettings,
        job: JobSpec,
        listen: SocketAddr,
        token: JoinToken,
    ) -> Self {
        Self {
            cluster,
            job,
            listen,
            token,
            tls: None,
            verifier: Arc::new(TrustWorkers),
        }
    }
}

/// A running coordinator. Dropping it does not stop the coordinator; call [`Self::shutdown`] or wait for the job.
pub struct CoordinatorHandle {
    local_addr: SocketAddr,
    shutdown: broadcast::Sender<()>,
    snapshot: watch::Receiver<JobSnapshot>,
    task: JoinHandle<Result<JobOutcome, CoordinatorError>>,
}

impl CoordinatorHandle {
    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The job as of the loop's last event or timer tick (at most a tick, ~heartbeat_timeout/8, old).
    pub fn snapshot(&self) -> JobSnapshot {
        self.snapshot.borrow().clone()
    }

    /// A receiver that sees every snapshot the loop publishes (for a metrics exporter).
    pub fn subscribe(&self) -> watch::Receiver<JobSnapshot> {
        self.snapshot.clone()
    }

    /// Asks the loop and the server to stop; [`Self::wait`] then returns [`JobOutcome::ShutDown`] unless the job had
    /// already ended.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(());
    }

    /// A cloneable trigger for [`Self::shutdown`], e.g. for a signal handler task.
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger(self.shutdown.clone())
    }

    /// True once the coordinator has stopped (job over or shut down).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the job ends (and the server has stopped).
    pub async fn wait(self) -> Result<JobOutcome, CoordinatorError> {
        self.task
            .await
            .map_err(|e| CoordinatorError::Panicked(e.to_string()))?
    }
}

/// Stops a running coordinator from anywhere (see [`CoordinatorHandle::shutdown_trigger`]).
#[derive(Clone)]
pub struct ShutdownTrigger(broadcast::Sender<()>);

impl ShutdownTrigger {
    /// Same as [`CoordinatorHandle::shutdown`].
    pub fn shutdown(&self) {
        let _ = self.0.send(());
    }
}

/// Starts a coordinator with in-memory state.
pub async fn start(opts: CoordinatorOptions) -> Result<CoordinatorHandle, CoordinatorError> {
    start_with_state(opts, InMemoryClusterState::default()).await
}

/// Starts a coordinator on the given state store: validates the settings, reads the store's state (a store that
/// holds another job's state is refused; a new one gets [`JobCommand::SetJob`]), binds the listener, and spawns
/// the state loop and the gRPC server. Returns once the server accepts connections.
pub async fn start_with_state<S: ClusterState>(
    opts: CoordinatorOptions,
    state: S,
) -> Result<CoordinatorHandle, CoordinatorError> {
    let CoordinatorOptions {
        cluster,
        job,
        listen,
        token,
        tls,
        verifier,
    } = opts;
    cluster.validate()?;
    job.validate(&cluster)?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| CoordinatorError::Bind {
            addr: listen,
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| CoordinatorError::Bind {
            addr: listen,
            source,
        })?;

    let record = JobRecord::of(&job);
    let mut current = state.read().await?;
    match current.job() {
        None => {
            state.commit(JobCommand::SetJob(record.clone())).await?;
            current = state.read().await?;
        }
        Some(theirs) => check_same_job(theirs, &record)?,
    }

    let (shutdown, _) = broadcast::channel(1);
    let (commands, rx) = mpsc::channel(256);
    let machine = Machine::new(current, cluster.clone(), job, Instant::now());
    let (snap_tx, snapshot) = watch::channel(machine.snapshot(Instant::now()));

    let mut builder = Server::builder();
    if let Some(tls) = &tls {
        let mut cfg =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        if let Some(ca) = &tls.client_ca_pem {
            cfg = cfg.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder
            .tls_config(cfg)
            .map_err(|e| CoordinatorError::Tls(e.to_string()))?;
    }
    let service = CoordinatorService { commands, verifier };
    let auth = AuthInterceptor::new(token.expose(), &cluster.token_env);
    let router = builder.add_service(InterceptedService::new(
        CoordinatorServer::new(service),
        auth,
    ));
    let mut server_stop = shutdown.subscribe();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async move {
            let _ = server_stop.recv().await;
        },
    ));

    tracing::info!(
        %local_addr, tls = tls.is_some(), min_workers = cluster.min_workers, max_workers = cluster.max_workers,
        "coordinator listening"
    );
    let tick = cluster.tick();
    let loop_task = tokio::spawn(run_loop(machine, state, rx, shutdown.subscribe(), snap_tx, tick));
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let outcome = loop_task
            .await
            .map_err(|e| CoordinatorError::Panicked(e.to_string()))?;
        let _ = stop.send(());
        // Graceful: in-flight calls finish; idle worker connections are told to go away.
        match tokio::time::timeout(Duration::from_secs(10), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(CoordinatorError::Serve(e.to_string())),
            Ok(Err(e)) => return Err(CoordinatorError::Panicked(e.to_string())),
            Err(_) => tracing::warn!("gRPC server did not stop within 10 s; abandoning it"),
        }
        Ok(outcome)
    });
    Ok(CoordinatorHandle {
        local_addr,
        shutdown,
        snapshot,
        task,
    })
}

/// Refuses to drive a job whose recorded identity differs from this coordinator's config.
fn check_same_job(theirs: &JobRecord, ours: &JobRecord) -> Result<(), CoordinatorError> {
    if theirs == ours {
        return Ok(());
    }
    let mut diffs = Vec::new();
    if theirs.config_sha256 != ours.config_sha256 {
        diffs.push(format!("config sha256 {} (ours {})", theirs.config_sha256, ours.config_sha256));
    }
    if theirs.total_steps != ours.total_steps {
        diffs.push(format!("total_steps {} (ours {})", theirs.total_steps, ours.total_steps));
    }
    if (theirs.global_batch_size, theirs.per_device_batch_size) != (ours.global_batch_size, ours.per_device_batch_size) {
        diffs.push(format!(
            "global/per-device batch {}/{} (ours {}/{})",
            theirs.global_batch_size, theirs.per_device_batch_size, ours.global_batch_size, ours.per_device_batch_size
        ));
    }
    if theirs.data_plan != ours.data_plan {
        diffs.push(format!("data plan {:?} (ours {:?})", theirs.data_plan, ours.data_plan));
    }
    Err(CoordinatorError::OtherJob(format!(
        "the job state belongs to another job: {}; start this coordinator with that job's config, or with an empty \
         state (another --state-dir)",
        diffs.join(", ")
    )))
}

/// Commits what the machine changed while handling one input, as one command. On a refusal the machine takes the
/// store's state back (so its view never runs ahead of the store); if even that read fails, `stale` is set and
/// the loop retries the read on each tick, refusing inputs meanwhile.
async fn settle<S: ClusterState>(machine: &mut Machine, store: &S, stale: &mut bool) -> Result<(), StateError> {
    let mut cmds = machine.take_commands();
    let cmd = match cmds.len() {
        0 => return Ok(()),
        1 => cmds.pop().expect("one command"),
        _ => JobCommand::Batch(cmds),
    };
    let Err(e) = store.commit(cmd).await else {
        return Ok(());
    };
    tracing::warn!(error = %e, "the job state refused a change; taking the store's state back");
    resync(machine, store, stale).await;
    Err(e)
}

/// Asks the store whether this node may drive the job. Losing the lead is logged; regaining it (or leading for
/// the first time after following) marks the view stale, so the store's state is read before the next input.
async fn check_leader<S: ClusterState>(
    machine: &mut Machine,
    store: &S,
    leading: &mut bool,
    stale: &mut bool,
) -> Result<(), StateError> {
    let r = store.ensure_leader().await;
    match (&r, *leading) {
        (Err(e), true) => {
            tracing::warn!(error = %e, "not the leader: refusing worker calls until this node leads again");
            *leading = false;
            machine.take_commands();
        }
        (Ok(()), false) => {
            tracing::info!("leading again: reading the job state before driving it");
            *leading = true;
            *stale = true;
        }
        _ => {}
    }
    r
}

async fn resync<S: ClusterState>(machine: &mut Machine, store: &S, stale: &mut bool) {
    match store.read().await {
        Ok(state) => {
            machine.adopt(state, Instant::now());
            *stale = false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the job state; refusing calls until it can be read");
            *stale = true;
        }
    }
}

/// The one place the state machine lives: commands in, answers out, timers between, until the job ends or a
/// shutdown is broadcast.
async fn run_loop<S: ClusterState>(
    mut machine: Machine,
    store: S,
    mut commands: mpsc::Receiver<Command>,
    mut shutdown: broadcast::Receiver<()>,
    snapshots: watch::Sender<JobSnapshot>,
    tick: Duration,
) -> JobOutcome {
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stale = false;
    let mut leading = true;
    loop {
        // An input's answer goes out only after its changes (and the time-driven ones with it) are committed: a
        // caller never acts on a change the store refused. A caller that gave up (deadline, disconnect) dropped
        // its receiver; the state change stands.
        let mut outcome = None;
        tokio::select! {
            _ = shutdown.recv() => {
                tracing::info!("coordinator shutting down on request");
                return JobOutcome::ShutDown;
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return JobOutcome::ShutDown };
                let leader = check_leader(&mut machine, &store, &mut leading, &mut stale).await;
                if stale && leader.is_ok() {
                    resync(&mut machine, &store, &mut stale).await;
                }
                let now = Instant::now();
                macro_rules! answer {
                    ($tx:expr, $value:expr) => {{
                        let value = match (&leader, stale) {
                            (Err(e), _) => Err(e.clone()),
                            (Ok(()), true) => Err(StateError::Unavailable("the job state cannot be read".into())),
                            (Ok(()), false) => Ok($value),
                        };
                        let result = match value {
                            Err(e) => Err(e),
                            Ok(v) => {
                                outcome = machine.advance(now);
                                settle(&mut machine, &store, &mut stale).await.map(|()| v)
                            }
                        };
                        if result.is_err() {
                            outcome = None;
                        }
                        let _ = $tx.send(result);
                    }};
                }
                match cmd {
                    Command::Join(req, tx) => answer!(tx, machine.join(req, now)),
                    Command::Heartbeat(hb, tx) => answer!(tx, {
                        let directive = machine.heartbeat(hb, now);
                        HeartbeatReply {
                            term: store.term(),
                            generation: machine.state().generation().map_or(0, |g| g.number),
                            directive,
                        }
                    }),
                    Command::Progress(r, tx) => answer!(tx, machine.progress(r, now)),
                    Command::Commit(c, tx) => answer!(tx, machine.commit(c, now)),
                    Command::Leave(l, tx) => answer!(tx, machine.leave(l, now)),
                }
            }
            _ = timer.tick() => {
                let leader = check_leader(&mut machine, &store, &mut leading, &mut stale).await;
                if stale && leader.is_ok() {
                    resync(&mut machine, &store, &mut stale).await;
                }
                if !stale && leader.is_ok() {
                    outcome = machine.advance(Instant::now());
                    if settle(&mut machine, &store, &mut stale).await.is_err() {
                        outcome = None;
                    }
                }
            }
        }
        let now = Instant::now();
        snapshots.send_replace(machine.snapshot(now));
        if let Some(outcome) = outcome {
            match &outcome {
                JobOutcome::Completed { final_step } => tracing::info!(final_step, "job completed"),
                JobOutcome::Failed { reason } => tracing::error!(%reason, "job failed"),
                JobOutcome::ShutDown => {}
            }
            return outcome;
        }
    }
}
