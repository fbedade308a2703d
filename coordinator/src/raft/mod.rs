//! The job's state replicated over Raft: [`RaftClusterState`] implements [`ClusterState`] on `openraft` 0.9 (the
//! current stable line; 0.10 is an alpha with another API), with each node's log, vote and snapshots in `redb`
//! ([`store`]), and Raft's RPCs over tonic gRPC between coordinators ([`grpc`]).
//!
//! Every change to the job's durable state is a [`JobCommand`] log entry; a committed entry is applied with
//! [`JobState::apply`], the only way the state changes, so every node that applied the same prefix of the log holds
//! the same state (and a snapshot plus the rest of the log gives it too: `store`'s property test).
//!
//! - `commit` is a `client_write` on the leader; a follower answers [`StateError::NotLeader`] with the leader's
//!   worker-API address from the membership's node info ([`PeerNode::api`]).
//! - `read` checks leadership with a quorum (`ensure_linearizable`) before it answers from the applied state, so
//!   a deposed leader never answers from a stale view.
//! - `term` is the node's current term, carried in directives so workers ignore a deposed leader.
//!
//! # Timings
//! [`RaftTimings::default`] is sized for a loaded 2-core machine that runs three coordinators and the workers'
//! libtorch steps: a heartbeat every 250 ms and an election timeout drawn from 1–2 s. A step's compute can hold
//! both cores for a while, so a tokio task may run a few hundred milliseconds late; at four heartbeats per
//! minimum timeout, a follower does not start an election unless the leader really went silent. After a leader's
//! death a follower's timer fires within 2 s; the other follower grants its vote once its own lease on the dead
//! leader (the maximum timeout) has run out, so a first candidate may be refused and try again one timeout
//! later: a new leader is in place within about 4 s, under the 10 s the job's fail-over allows (measured over
//! gRPC on loopback by the `raft_new_leader_within_10_s…` test).
//! Snapshots are taken every 200 entries and the last 100 entries are kept beyond one, so a node that was down for
//! a while catches up from the log, and a new node from the snapshot.

mod grpc;
pub mod peers;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
// `declare_raft_types!` names its default snapshot type, `Cursor<Vec<u8>>`, unqualified.
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, Raft, RaftNetworkFactory, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

pub use grpc::{raft_service, GrpcNetwork, PeerAuth, RaftTls};
pub use openraft;
pub use peers::{check_listed, check_recorded, parse_peers, PeersError};
pub use store::{Applied, LogStore, StateMachineStore, StoreError};

use crate::state::{ClusterState, JobCommand, JobState, StateError};

/// A coordinator's id in the Raft group (`--node-id`).
pub type NodeId = u64;

/// Where a coordinator is reached: the Raft RPCs and the worker API. They are the same address when both services
/// share the coordinator's gRPC port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// `HOST:PORT` of the Raft service.
    pub raft: String,
    /// `HOST:PORT` of the worker API; what [`StateError::NotLeader`] names.
    pub api: String,
}

impl PeerNode {
    /// A peer that serves Raft and the worker API on one address.
    pub fn shared(addr: impl Into<String>) -> Self {
        let addr = addr.into();
        Self {
            raft: addr.clone(),
            api: addr,
        }
    }
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.raft == self.api {
            write!(f, "{}", self.raft)
        } else {
            write!(f, "raft {} api {}", self.raft, self.api)
        }
    }
}

openraft::declare_raft_types!(
    /// The job's Raft: entries are [`JobCommand`]s, the state machine is [`JobState::apply`].
    pub TypeConfig:
        D = JobCommand,
        R = (),
        NodeId = NodeId,
        Node = PeerNode,
);

/// The Raft node type of this crate.
pub type JobRaft = Raft<TypeConfig>;

/// Heartbeat and election timing (see the module doc for why the defaults are what they are).
#[derive(Clone, Debug)]
pub struct RaftTimings {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// A snapshot every this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept in the log beyond the last snapshot.
    pub keep_beyond_snapshot: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(2000),
            snapshot_every: 200,
            keep_beyond_snapshot: 100,
        }
    }
}

impl RaftTimings {
    fn config(&self) -> Result<Config, RaftStartError> {
        Config {
            cluster_name: "splade-coordinator".into(),
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            election_timeout_min: self.election_min.as_millis() as u64,
            election_timeout_max: self.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_beyond_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftStartError::Config(e.to_string()))
    }
}

/// Why a Raft node could not start or change the group.
#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid Raft timings: {0}")]
    Config(String),
    #[error("the Raft node stopped: {0}")]
    Fatal(String),
    #[error("cannot change the Raft group's membership: {0}")]
    Membership(String),
}

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct RaftNodeOptions {
    pub node_id: NodeId,
    /// Its state dir: created if missing; holds `raft.redb`.
    pub state_dir: PathBuf,
    /// The job's identity (for example the output dir and the config's hash); a state dir of another job is
    /// refused with [`StoreError::OtherJob`].
    pub job: String,
    pub timings: RaftTimings,
}

/// Metrics of one node for Prometheus.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftStatus {
    pub node_id: NodeId,
    pub is_leader: bool,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The highest log index this node knows to be committed.
    pub commit_index: u64,
    /// The index of the last entry applied to its state.
    pub last_applied: u64,
    /// How often this node has seen the leader change (from none or another node to a new one).
    pub leader_changes: u64,
    /// Voters of the current membership.
    pub voters: BTreeSet<NodeId>,
    /// Learners of the current membership.
    pub learners: BTreeSet<NodeId>,
}

/// [`ClusterState`] replicated over Raft. Cheap to clone: clones share the node.
#[derive(Clone)]
pub struct RaftClusterState {
    node_id: NodeId,
    raft: JobRaft,
    applied: Arc<RwLock<Applied>>,
    commit_index: Arc<AtomicU64>,
    leader_changes: Arc<AtomicU64>,
}

impl fmt::Debug for RaftClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftClusterState").field("node_id", &self.node_id).finish()
    }
}

impl RaftClusterState {
    /// Opens the node's state dir and starts its Raft task with `network` to reach the peers. A state dir that
    /// already holds a log resumes where it stopped; an empty one waits to be initialized
    /// ([`Self::initialize`]) or added by the leader ([`Self::add_learner`]).
    pub async fn start<N>(opts: RaftNodeOptions, network: N) -> Result<Self, RaftStartError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let config = Arc::new(opts.timings.config()?);
        let (log, sm) = store::open(&opts.state_dir, opts.node_id, &opts.job)?;
        let applied = sm.applied();
        let commit_index = log.commit_index();
        let raft = Raft::new(opts.node_id, config, network, log, sm)
            .await
            .map_err(|e| RaftStartError::Fatal(e.to_string()))?;
        let leader_changes = Arc::new(AtomicU64::new(0));
        tokio::spawn(count_leader_changes(raft.metrics(), leader_changes.clone()));
        Ok(Self {
            node_id: opts.node_id,
            raft,
            applied,
            commit_index,
            leader_changes,
        })
    }

    /// The underlying Raft node (for its RPC service and tests).
    pub fn raft(&self) -> &JobRaft {
        &self.raft
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Makes `members` the first membership of a new group, if this node holds no log yet. Call it on one node of
    /// a new group only; a node that already holds a log (a restart) is left as it is.
    pub async fn initialize(&self, members: BTreeMap<NodeId, PeerNode>) -> Result<(), RaftStartError> {
        if self.raft.is_initialized().await.map_err(|e| RaftStartError::Fatal(e.to_string()))? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(RaftStartError::Membership(e.to_string())),
        }
    }

    /// On the leader: adds `id` as a learner and waits up to `within` until it holds the log up to the entry that
    /// added it (openraft's own "blocking" wait counts a learner 5000 entries behind as caught up).
    pub async fn add_learner(&self, id: NodeId, node: PeerNode, within: Duration) -> Result<(), RaftStartError> {
        let added = self
            .raft
            .add_learner(id, node, false)
            .await
            .map_err(|e| RaftStartError::Membership(e.to_string()))?;
        let upto = added.log_id.index;
        self.raft
            .wait(Some(within))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|matched| matched.index >= upto)
                },
                format!("node {id} catches up with the log up to index {upto}"),
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                RaftStartError::Membership(format!(
                    "node {id} was added as a learner but did not catch up: {e} (is it running, with this \
                     cluster's token and TLS settings?)"
                ))
            })
    }

    /// On the leader: makes `voters` the voting members (learners among them are promoted; voters left out are
    /// removed from the group).
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), RaftStartError> {
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
            .map(|_| ())
            .map_err(|e| RaftStartError::Membership(e.to_string()))
    }

    /// On the leader: brings back voter `id` whose state dir was lost, now running with an empty one at `node`.
    /// It is taken out of the voters (an empty node must not count towards a quorum, nor vote with a vote record
    /// it lost), added as a learner, caught up (from the last snapshot and the log after it), and promoted.
    pub async fn replace_lost_voter(
        &self,
        id: NodeId,
        node: PeerNode,
        within: Duration,
    ) -> Result<(), RaftStartError> {
        let mut voters = self.status().voters;
        if voters.remove(&id) {
            self.change_voters(voters.clone()).await?;
        }
        self.add_learner(id, node, within).await?;
        voters.insert(id);
        self.change_voters(voters).await
    }

    /// This node's view for Prometheus (`splade_coordinator_is_leader`, term, commit index, last applied, leader
    /// changes).
    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let last_applied = m.last_applied.map_or(0, |l| l.index);
        RaftStatus {
            node_id: self.node_id,
            is_leader: m.state == ServerState::Leader,
            leader: m.current_leader,
            term: m.current_term,
            // Raft saves the commit index when it applies entries; a snapshot install commits its whole prefix
            // without that, and everything applied is committed.
            commit_index: self.commit_index.load(Ordering::Relaxed).max(last_applied),
            last_applied,
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            voters,
            learners,
        }
    }

    /// The group this node's state dir records (voters and learners with their addresses); `None` before the
    /// node has joined one. Compare with `--peers` through [`check_recorded`].
    pub fn recorded_peers(&self) -> Option<BTreeMap<NodeId, PeerNode>> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.log_id().as_ref()?;
        Some(m.membership().nodes().map(|(id, n)| (*id, n.clone())).collect())
    }

    /// The applied state without a leadership check: what this node has applied so far (a follower's view may
    /// lag the leader's).
    pub fn local_state(&self) -> JobState {
        self.applied.read().unwrap_or_else(|p| p.into_inner()).state.clone()
    }

    /// Stops the Raft task; the state dir keeps everything committed.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(node = self.node_id, error = %e, "the Raft task ended with an error");
        }
    }

    fn not_leader(&self, leader: Option<PeerNode>) -> StateError {
        StateError::NotLeader {
            leader: leader.map(|n| n.api),
        }
    }
}

/// Counts leader changes from the metrics channel until the node stops.
async fn count_leader_changes(
    mut rx: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, PeerNode>>,
    changes: Arc<AtomicU64>,
) {
    let mut last = rx.borrow().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow().current_leader;
        if now.is_some() && now != last {
            changes.fetch_add(1, Ordering::Relaxed);
        }
        if now.is_some() {
            last = now;
        }
    }
}

#[async_trait::async_trait]
impl ClusterState for RaftClusterState {
    async fn commit(&self, cmd: JobCommand) -> Result<(), StateError> {
        match self.raft.client_write(cmd).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(self.not_leader(f.leader_node)),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(StateError::Unavailable(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(StateError::Unavailable(format!("the Raft node stopped: {e}"))),
        }
    }

    async fn read(&self) -> Result<JobState, StateError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(self.local_state()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(self.not_leader(f.leader_node)),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(StateError::Unavailable(format!("no quorum confirms this leader: {e}")))
            }
            Err(RaftError::Fatal(e)) => Err(StateError::Unavailable(format!("the Raft node stopped: {e}"))),
        }
    }

    fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// A local check (no round trip, since the loop asks before every input): this node believes it leads.
    /// A deposed leader that has not heard of its successor yet still passes; what keeps it harmless is that
    /// its `commit` and `read` need a quorum of its term, and workers ignore directives of an older term.
    async fn ensure_leader(&self) -> Result<(), StateError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.node_id) {
            return Ok(());
        }
        let leader = m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        Err(self.not_leader(leader))
    }
}
