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
use crate::state::{ClusterState, InMemoryClusterState};
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

/// Starts a coordinator on the given state store: validates the settings, binds the listener, and spawns the
/// state loop and the gRPC server. Returns once the server accepts connections.
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

    let (shutdown, _) = broadcast::channel(1);
    let (commands, rx) = mpsc::channel(256);
    let machine = Machine::new(state, cluster.clone(), job, Instant::now());
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
    let loop_task = tokio::spawn(run_loop(machine, rx, shutdown.subscribe(), snap_tx, tick));
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

/// The one place the state machine lives: commands in, answers out, timers between, until the job ends or a
/// shutdown is broadcast.
async fn run_loop<S: ClusterState>(
    mut machine: Machine<S>,
    mut commands: mpsc::Receiver<Command>,
    mut shutdown: broadcast::Receiver<()>,
    snapshots: watch::Sender<JobSnapshot>,
    tick: Duration,
) -> JobOutcome {
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.recv() => {
                tracing::info!("coordinator shutting down on request");
                return JobOutcome::ShutDown;
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return JobOutcome::ShutDown };
                let now = Instant::now();
                // A caller that gave up (deadline, disconnect) dropped its receiver; the state change stands.
                match cmd {
                    Command::Join(req, tx) => { let _ = tx.send(machine.join(req, now)); }
                    Command::Heartbeat(hb, tx) => { let _ = tx.send(machine.heartbeat(hb, now)); }
                    Command::Progress(r, tx) => { let _ = tx.send(machine.progress(r, now)); }
                    Command::Commit(c, tx) => { let _ = tx.send(machine.commit(c, now)); }
                    Command::Leave(l, tx) => { let _ = tx.send(machine.leave(l, now)); }
                }
            }
            _ = timer.tick() => {}
        }
        let now = Instant::now();
        let outcome = machine.advance(now);
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
