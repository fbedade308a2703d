//! Raft's RPCs between coordinators over tonic gRPC (`proto/raft.proto`), authenticated as workers' calls are:
//! the server side sits behind the coordinator's token check ([`crate::service::AuthInterceptor`]), and the client
//! side presents the cluster token (and, with `cluster.tls_*`, its TLS identity) through
//! [`splade_proto::client::peer_endpoint`]. A coordinator with another token gets `UNAUTHENTICATED` from every
//! peer, so it can neither receive entries nor win a vote: it cannot join or disturb the group.
//!
//! The payloads are openraft's request and response types as JSON (see the proto file for why).

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use splade_proto::client::{peer_endpoint, TokenInterceptor};
use splade_proto::ClientTls;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::{JobRaft, NodeId, PeerNode, TypeConfig};
use crate::service::AuthInterceptor;

/// Generated wire types, client and server of package `splade.raft.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("splade.raft.v1");
}

/// TLS of the Raft client: the CA that signed the peers' certificates and this coordinator's own identity.
pub type RaftTls = ClientTls;

/// Serves this node's Raft to its peers.
pub struct RaftPeerService {
    raft: JobRaft,
}

/// The worker API's token check ([`AuthInterceptor`]) in front of the Raft service.
#[derive(Clone)]
pub struct PeerAuth(AuthInterceptor);

impl tonic::service::Interceptor for PeerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.0.call(req)
    }
}

/// The Raft service for the coordinator's tonic server, behind the same token check as the worker API.
pub fn raft_service(
    raft: JobRaft,
    token: &str,
    token_env: &str,
) -> InterceptedService<pb::raft_peer_server::RaftPeerServer<RaftPeerService>, PeerAuth> {
    pb::raft_peer_server::RaftPeerServer::with_interceptor(
        RaftPeerService { raft },
        PeerAuth(AuthInterceptor::new(token, token_env)),
    )
}

fn decode_request<T: DeserializeOwned>(rpc: &str, p: pb::RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&p.json)
        .map_err(|e| Status::invalid_argument(format!("{rpc}: the payload is not an openraft 0.9 request: {e}")))
}

fn reply<T: Serialize>(v: &T) -> Response<pb::RaftPayload> {
    Response::new(pb::RaftPayload {
        json: serde_json::to_vec(v).expect("openraft replies serialize to JSON"),
    })
}

#[tonic::async_trait]
impl pb::raft_peer_server::RaftPeer for RaftPeerService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request("AppendEntries", request.into_inner())?;
        Ok(reply(&self.raft.append_entries(rpc).await))
    }

    async fn vote(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode_request("Vote", request.into_inner())?;
        Ok(reply(&self.raft.vote(rpc).await))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request("InstallSnapshot", request.into_inner())?;
        Ok(reply(&self.raft.install_snapshot(rpc).await))
    }
}

/// Reaches peers over gRPC with the cluster token and optional TLS.
#[derive(Clone)]
pub struct GrpcNetwork {
    token: String,
    tls: Option<RaftTls>,
}

impl GrpcNetwork {
    pub fn new(token: impl Into<String>, tls: Option<RaftTls>) -> Self {
        Self {
            token: token.into(),
            tls,
        }
    }
}

type PeerClient = pb::raft_peer_client::RaftPeerClient<InterceptedService<Channel, TokenInterceptor>>;

/// One peer's connection (lazy: connected on the first call, reconnected by tonic after a failure).
pub struct GrpcPeer {
    target: NodeId,
    addr: String,
    client: Result<PeerClient, String>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcPeer;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> GrpcPeer {
        let client = peer_endpoint(&node.raft, &self.token, self.tls.as_ref())
            .map(|(ep, token)| pb::raft_peer_client::RaftPeerClient::with_interceptor(ep.connect_lazy(), token))
            .map_err(|e| e.to_string());
        if let Err(e) = &client {
            tracing::error!(peer = target, addr = %node.raft, error = %e, "cannot reach a Raft peer");
        }
        GrpcPeer {
            target,
            addr: node.raft.clone(),
            client,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Raft peer {target} at {addr}: {message}")]
struct PeerError {
    target: NodeId,
    addr: String,
    message: String,
}

fn peer_error(target: NodeId, addr: &str, message: impl Into<String>) -> PeerError {
    PeerError {
        target,
        addr: addr.to_owned(),
        message: message.into(),
    }
}

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl GrpcPeer {
    fn error(&self, message: impl Into<String>) -> PeerError {
        peer_error(self.target, &self.addr, message)
    }

    /// Sends one request and decodes the peer's `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let (target, addr) = (self.target, self.addr.clone());
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => {
                let e = peer_error(target, &addr, e.clone());
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        let mut request = Request::new(pb::RaftPayload {
            json: serde_json::to_vec(req).expect("openraft requests serialize to JSON"),
        });
        request.set_timeout(ttl);
        let answer = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let payload = match answer {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = peer_error(target, &addr, format!("{}: {}", status.code(), status.message()));
                return Err(match status.code() {
                    Code::Unauthenticated => {
                        tracing::warn!(error = %e, "a Raft peer refused our cluster token");
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    Code::Unavailable | Code::Unknown => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&payload.json).map_err(|e| {
            RPCError::Network(NetworkError::new(&self.error(format!("undecodable reply: {e}"))))
        })?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.call(Rpc::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}
