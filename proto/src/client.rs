//! Typed client for the coordinator, used by `splade-worker` (and the coordinator's tests).
//!
//! It speaks domain types only: requests are stamped with [`PROTOCOL_VERSION`] and the join token on the way out,
//! answers are validated through `TryFrom` on the way in.

use std::path::Path;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::convert::ProtoError;
use crate::domain::{
    Ack, CheckpointCommit, Heartbeat, HeartbeatReply, JoinAck, JoinRequest, LeaveRequest, ProgressReport,
};
use crate::pb;

/// Metadata key carrying the join token (`Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";

/// Metadata key of an `UNAVAILABLE` answer from a coordinator that is not the leader: the leader's worker-API
/// address (`HOST:PORT`), where the call should go instead.
pub const LEADER_METADATA: &str = "x-splade-leader";

/// Errors of [`CoordinatorClient`]; each names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("coordinator address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("join token: {0}")]
    InvalidToken(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(
        "could not connect to the coordinator at {addr} after {attempts} attempt(s): {source}"
    )]
    Connect {
        addr: String,
        attempts: u32,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{rpc} refused by the coordinator ({:?}): {}", status.code(), status.message())]
    Rpc {
        rpc: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("{rpc}: unusable answer from the coordinator: {source}")]
    Decode {
        rpc: &'static str,
        #[source]
        source: ProtoError,
    },
}

impl ClientError {
    /// The gRPC status code when the coordinator answered with an error status.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// TLS settings of a client: the CA that signed the coordinator's certificate, optionally a client identity (when
/// the coordinator requires client certificates) and the name to verify the coordinator's certificate against.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// PEM of the CA certificate(s) to trust.
    pub ca_pem: Vec<u8>,
    /// PEM certificate chain and private key presented to the coordinator (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Server name to verify; defaults to the host part of the address.
    pub domain: Option<String>,
}

impl ClientTls {
    /// Reads the CA and, when given, the client certificate and key (PEM files).
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, ClientError> {
        let read = |p: &Path, what: &str| {
            std::fs::read(p)
                .map_err(|e| ClientError::Tls(format!("reading {what} {}: {e}", p.display())))
        };
        let identity = match identity {
            Some((cert, key)) => {
                Some((read(cert, "client certificate")?, read(key, "client key")?))
            }
            None => None,
        };
        Ok(Self {
            ca_pem: read(ca, "CA certificate")?,
            identity,
            domain: None,
        })
    }
}

/// How hard [`CoordinatorClient::connect_with`] tries: `attempts` tries, the pause doubling from `initial_backoff`
/// up to `max_backoff` between them.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Limit on one TCP/TLS connection attempt.
    pub connect_timeout: Duration,
}

impl Default for RetryPolicy {
    /// About a minute in all: long enough for a coordinator pod that starts after its workers.
    fn default() -> Self {
        Self {
            attempts: 12,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Adds the join token to every call.
#[derive(Clone)]
pub struct TokenInterceptor {
    header: MetadataValue<Ascii>,
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(AUTHORIZATION, self.header.clone());
        Ok(req)
    }
}

/// The generated client with the token interceptor; reachable through [`CoordinatorClient::raw`].
pub type RawClient =
    pb::coordinator_client::CoordinatorClient<InterceptedService<Channel, TokenInterceptor>>;

/// A connection to the coordinator. Cheap to clone (clones share one HTTP/2 connection).
#[derive(Clone)]
pub struct CoordinatorClient {
    inner: RawClient,
}

impl CoordinatorClient {
    /// Connects to `addr` (`host:port`, or a URL with `http://`/`https://`), retrying with [`RetryPolicy::default`].
    /// With `tls`, the connection is TLS (`https`) verified against its CA.
    pub async fn connect(
        addr: &str,
        token: &str,
        tls: Option<ClientTls>,
    ) -> Result<Self, ClientError> {
        Self::connect_with(addr, token, tls, RetryPolicy::default()).await
    }

    /// [`Self::connect`] with an explicit retry policy.
    pub async fn connect_with(
        addr: &str,
        token: &str,
        tls: Option<ClientTls>,
        retry: RetryPolicy,
    ) -> Result<Self, ClientError> {
        let header = bearer(token)?;
        let endpoint = endpoint(addr, tls.as_ref())?
            .connect_timeout(retry.connect_timeout)
            .tcp_nodelay(true);
        let attempts = retry.attempts.max(1);
        let mut backoff = retry.initial_backoff;
        let mut attempt = 1;
        let channel = loop {
            match endpoint.connect().await {
                Ok(c) => break c,
                Err(source) if attempt >= attempts => {
                    return Err(ClientError::Connect {
                        addr: addr.to_owned(),
                        attempts,
                        source,
                    })
                }
                Err(e) => {
                    tracing::warn!(addr, attempt, attempts, error = %e, "coordinator not reachable yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry.max_backoff);
                    attempt += 1;
                }
            }
        };
        let inner = pb::coordinator_client::CoordinatorClient::with_interceptor(
            channel,
            TokenInterceptor { header },
        );
        Ok(Self { inner })
    }

    /// Registers this worker.
    pub async fn join(&mut self, req: JoinRequest) -> Result<JoinAck, ClientError> {
        let rsp = self
            .inner
            .join(pb::JoinRequest::from(req))
            .await
            .map_err(rpc("Join"))?;
        rsp.into_inner().try_into().map_err(decode("Join"))
    }

    /// Sends a heartbeat and returns what the worker must do now, with the term and generation it was given in.
    pub async fn heartbeat(&mut self, hb: Heartbeat) -> Result<HeartbeatReply, ClientError> {
        let rsp = self
            .inner
            .heartbeat(pb::HeartbeatRequest::from(hb))
            .await
            .map_err(rpc("Heartbeat"))?;
        rsp.into_inner().try_into().map_err(decode("Heartbeat"))
    }

    /// Reports progress of this rank.
    pub async fn report_progress(&mut self, report: ProgressReport) -> Result<Ack, ClientError> {
        let rsp = self
            .inner
            .report_progress(pb::ProgressReport::from(report))
            .await
            .map_err(rpc("ReportProgress"))?;
        rsp.into_inner()
            .try_into()
            .map_err(decode("ReportProgress"))
    }

    /// Announces a checkpoint whose manifest has been written.
    pub async fn commit_checkpoint(
        &mut self,
        commit: CheckpointCommit,
    ) -> Result<Ack, ClientError> {
        let rsp = self
            .inner
            .commit_checkpoint(pb::CheckpointCommit::from(commit))
            .await
            .map_err(rpc("CommitCheckpoint"))?;
        rsp.into_inner()
            .try_into()
            .map_err(decode("CommitCheckpoint"))
    }

    /// Leaves the job.
    pub async fn leave(&mut self, req: LeaveRequest) -> Result<Ack, ClientError> {
        let rsp = self
            .inner
            .leave(pb::LeaveRequest::from(req))
            .await
            .map_err(rpc("Leave"))?;
        rsp.into_inner().try_into().map_err(decode("Leave"))
    }

    /// The generated client on the same connection (token included). Messages sent through it skip the domain
    /// types' validation; meant for tests and diagnostics.
    pub fn raw(&mut self) -> &mut RawClient {
        &mut self.inner
    }
}

fn rpc(name: &'static str) -> impl FnOnce(tonic::Status) -> ClientError {
    move |status| ClientError::Rpc {
        rpc: name,
        status: Box::new(status),
    }
}

fn decode(name: &'static str) -> impl FnOnce(ProtoError) -> ClientError {
    move |source| ClientError::Decode { rpc: name, source }
}

fn bearer(token: &str) -> Result<MetadataValue<Ascii>, ClientError> {
    if token.is_empty() {
        return Err(ClientError::InvalidToken("is empty".into()));
    }
    format!("Bearer {token}").parse().map_err(|_| {
        ClientError::InvalidToken(
            "contains characters not allowed in a gRPC header (use printable ASCII)".into(),
        )
    })
}

fn endpoint(addr: &str, tls: Option<&ClientTls>) -> Result<Endpoint, ClientError> {
    let bad = |reason: String| ClientError::InvalidAddress {
        addr: addr.to_owned(),
        reason,
    };
    let url = if addr.contains("://") {
        addr.to_owned()
    } else if tls.is_some() {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    if tls.is_some() && url.starts_with("http://") {
        return Err(bad(
            "TLS is configured but the address says http://; use https:// or host:port".into(),
        ));
    }
    let mut ep =
        Endpoint::from_shared(url).map_err(|e| bad(format!("{e} (expected host:port)")))?;
    if let Some(tls) = tls {
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &tls.domain {
            cfg = cfg.domain_name(d.clone());
        }
        ep = ep
            .tls_config(cfg)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    Ok(ep)
}

/// The endpoint (not yet connected) and the token interceptor for a client of `addr` with the same address rules,
/// TLS and token as [`CoordinatorClient::connect`]: what the coordinators' Raft RPCs to each other use, so peers
/// authenticate exactly as workers do.
pub fn peer_endpoint(
    addr: &str,
    token: &str,
    tls: Option<&ClientTls>,
) -> Result<(Endpoint, TokenInterceptor), ClientError> {
    let header = bearer(token)?;
    Ok((endpoint(addr, tls)?.tcp_nodelay(true), TokenInterceptor { header }))
}
