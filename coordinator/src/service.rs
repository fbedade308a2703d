//! The gRPC edge: authenticates calls, converts prost messages into domain types, forwards them to the state loop
//! and maps refusals onto gRPC statuses.

use std::sync::Arc;

use splade_proto::convert::ProtoError;
use splade_proto::domain::{self, Ack, HeartbeatReply, JoinAck};
use splade_proto::pb;
use splade_proto::pb::coordinator_server::Coordinator;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::machine::JoinRefused;
use crate::state::StateError;
use crate::verify::CheckpointVerifier;

/// The loop's answer: the machine's, or the store's refusal to commit what the machine changed.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StateError>>;

/// A request for the state loop, with the channel its answer goes back on.
pub(crate) enum Command {
    Join(domain::JoinRequest, Reply<Result<JoinAck, JoinRefused>>),
    Heartbeat(domain::Heartbeat, Reply<HeartbeatReply>),
    Progress(domain::ProgressReport, Reply<Ack>),
    Commit(domain::CheckpointCommit, Reply<Ack>),
    Leave(domain::LeaveRequest, Reply<Ack>),
}

/// Metadata key of a `NotLeader` refusal naming the leader's worker-API address (`HOST:PORT`).
pub const LEADER_METADATA: &str = splade_proto::client::LEADER_METADATA;

/// A store refusal as the worker sees it: `UNAVAILABLE` (retry), with the leader's address in the
/// [`LEADER_METADATA`] metadata when this coordinator is not the leader and knows who is.
pub(crate) fn state_status(e: StateError) -> Status {
    let mut status = Status::unavailable(e.to_string());
    if let StateError::NotLeader { leader: Some(leader) } = &e {
        if let Ok(v) = leader.parse() {
            status.metadata_mut().insert(LEADER_METADATA, v);
        }
    }
    status
}

/// Checks the join token on every call. A wrong or missing token is refused with `UNAUTHENTICATED` and logged; the
/// call never reaches the state loop, so it changes nothing.
#[derive(Clone)]
pub(crate) struct AuthInterceptor {
    expected: Arc<[u8]>,
    token_env: Arc<str>,
}

impl AuthInterceptor {
    pub(crate) fn new(token: &str, token_env: &str) -> Self {
        Self {
            expected: format!("Bearer {token}").into_bytes().into(),
            token_env: token_env.into(),
        }
    }
}

/// Compares without an early exit so the time taken does not reveal how much of the token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let presented = req
            .metadata()
            .get(splade_proto::client::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match presented {
            Some(p) if constant_time_eq(p, &self.expected) => Ok(req),
            other => {
                tracing::warn!(
                    peer = ?req.remote_addr(),
                    token_present = other.is_some(),
                    "refused a call with a missing or wrong join token"
                );
                Err(Status::unauthenticated(format!(
                    "missing or wrong join token: workers must present the value of {} that the coordinator was \
                     started with",
                    self.token_env
                )))
            }
        }
    }
}

/// Implements the generated `Coordinator` service on top of the state loop.
pub(crate) struct CoordinatorService {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) verifier: Arc<dyn CheckpointVerifier>,
}

fn refused(e: ProtoError) -> Status {
    match e {
        ProtoError::VersionMismatch { .. } => {
            tracing::warn!(error = %e, "refused a message of another protocol version");
            Status::failed_precondition(e.to_string())
        }
        ProtoError::Invalid { .. } => {
            tracing::warn!(error = %e, "refused an invalid message");
            Status::invalid_argument(e.to_string())
        }
    }
}

impl CoordinatorService {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Status> {
        let gone = || Status::unavailable("the coordinator is shutting down");
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?.map_err(state_status)
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let peer = request.remote_addr();
        let req = domain::JoinRequest::try_from(request.into_inner()).map_err(refused)?;
        tracing::debug!(worker = %req.worker_id, ?peer, "join");
        match self.ask(|tx| Command::Join(req, tx)).await? {
            Ok(ack) => Ok(Response::new(ack.into())),
            Err(JoinRefused::JobOver(m)) => Err(Status::failed_precondition(m)),
            Err(JoinRefused::Full(m)) => Err(Status::resource_exhausted(m)),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let hb = domain::Heartbeat::try_from(request.into_inner()).map_err(refused)?;
        let directive = self.ask(|tx| Command::Heartbeat(hb, tx)).await?;
        Ok(Response::new(directive.into()))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ProgressReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        let report = domain::ProgressReport::try_from(request.into_inner()).map_err(refused)?;
        Ok(Response::new(
            self.ask(|tx| Command::Progress(report, tx)).await?.into(),
        ))
    }

    async fn commit_checkpoint(
        &self,
        request: Request<pb::CheckpointCommit>,
    ) -> Result<Response<pb::Ack>, Status> {
        let commit = domain::CheckpointCommit::try_from(request.into_inner()).map_err(refused)?;
        // Verified here, outside the state loop: the check may read object storage.
        if let Err(e) = self.verifier.verify(&commit.checkpoint).await {
            tracing::warn!(
                worker = %commit.worker_id, step = commit.checkpoint.step, location = %commit.checkpoint.location,
                error = %e, "checkpoint does not verify; not recorded"
            );
            return Err(Status::invalid_argument(format!(
                "checkpoint at step {} ({}) does not verify: {e}",
                commit.checkpoint.step, commit.checkpoint.location
            )));
        }
        Ok(Response::new(
            self.ask(|tx| Command::Commit(commit, tx)).await?.into(),
        ))
    }

    async fn leave(&self, request: Request<pb::LeaveRequest>) -> Result<Response<pb::Ack>, Status> {
        let req = domain::LeaveRequest::try_from(request.into_inner()).map_err(refused)?;
        Ok(Response::new(
            self.ask(|tx| Command::Leave(req, tx)).await?.into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
    }
}
