//! An in-process network for Raft nodes of one test: requests go straight to the target node's `Raft` handle after
//! a JSON round trip (as on the wire), with faults drawn from a seeded RNG: each request may be delayed, dropped
//! before it arrives, or delivered with its answer dropped (so the sender cannot tell whether it took effect).
//! Killing a node removes it from the router; every message to it is then unreachable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Serialize;
use splade_coordinator::raft::openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use splade_coordinator::raft::openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use splade_coordinator::raft::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use splade_coordinator::raft::{JobRaft, NodeId, PeerNode, TypeConfig};

/// How lossy the network is.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Probability that a request is lost before it arrives.
    pub drop_request: f64,
    /// Probability that a delivered request's answer is lost.
    pub drop_reply: f64,
    /// Each message waits a uniform delay up to this.
    pub max_delay: Duration,
}

impl Faults {
    pub const NONE: Faults = Faults {
        drop_request: 0.0,
        drop_reply: 0.0,
        max_delay: Duration::ZERO,
    };
}

#[derive(Clone)]
pub struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, JobRaft>>>,
    rng: Arc<Mutex<StdRng>>,
    faults: Arc<Mutex<Faults>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Lost(String);

impl Router {
    pub fn new(seed: u64, faults: Faults) -> Self {
        Self {
            nodes: Default::default(),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            faults: Arc::new(Mutex::new(faults)),
        }
    }

    /// Makes `id` reachable through `raft`.
    pub fn add(&self, id: NodeId, raft: JobRaft) {
        self.nodes.lock().unwrap().insert(id, raft);
    }

    /// Makes `id` unreachable.
    pub fn remove(&self, id: NodeId) {
        self.nodes.lock().unwrap().remove(&id);
    }

    /// The network factory node `source` uses.
    pub fn for_node(&self, source: NodeId) -> NodeNet {
        NodeNet {
            router: self.clone(),
            source,
        }
    }

    fn roll(&self) -> (Duration, bool, bool) {
        let f = *self.faults.lock().unwrap();
        let mut rng = self.rng.lock().unwrap();
        let delay = if f.max_delay.is_zero() {
            Duration::ZERO
        } else {
            f.max_delay.mul_f64(rng.gen::<f64>())
        };
        (delay, rng.gen_bool(f.drop_request), rng.gen_bool(f.drop_reply))
    }
}

/// One node's view of the router.
#[derive(Clone)]
pub struct NodeNet {
    router: Router,
    source: NodeId,
}

pub struct Link {
    router: Router,
    source: NodeId,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NodeNet {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, _node: &PeerNode) -> Link {
        Link {
            router: self.router.clone(),
            source: self.source,
            target,
        }
    }
}

fn wire<T: Serialize + DeserializeOwned>(v: &T) -> T {
    serde_json::from_slice(&serde_json::to_vec(v).unwrap()).unwrap()
}

impl Link {
    async fn deliver<Req, Resp, E, F, Fut>(
        &self,
        req: Req,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize + DeserializeOwned,
        Resp: Serialize + DeserializeOwned,
        E: std::error::Error + Serialize + DeserializeOwned,
        F: FnOnce(JobRaft, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, RaftError<NodeId, E>>>,
    {
        let (delay, drop_request, drop_reply) = self.router.roll();
        tokio::time::sleep(delay).await;
        let lost = |what: &str| Lost(format!("{what} {} -> {}", self.source, self.target));
        if drop_request {
            return Err(RPCError::Unreachable(Unreachable::new(&lost("dropped the request"))));
        }
        let target = self.router.nodes.lock().unwrap().get(&self.target).cloned();
        let Some(raft) = target else {
            return Err(RPCError::Unreachable(Unreachable::new(&lost("no node at"))));
        };
        let answer = call(raft, wire(&req)).await;
        if drop_reply {
            return Err(RPCError::Network(NetworkError::new(&lost("dropped the reply"))));
        }
        wire(&answer).map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.deliver(rpc, |r, q| async move { r.append_entries(q).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.deliver(rpc, |r, q| async move { r.install_snapshot(q).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.deliver(rpc, |r, q| async move { r.vote(q).await }).await
    }
}
