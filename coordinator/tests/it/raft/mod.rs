//! The Raft-replicated job state (`splade_coordinator::raft`) under faults: real openraft nodes on real redb state
//! dirs, connected by a lossy in-process network (`router.rs`) or by the real gRPC service on loopback.

mod router;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use splade_coordinator::raft::{
    NodeId, PeerNode, RaftClusterState, RaftNodeOptions, RaftStartError, RaftStatus, RaftTimings, StoreError,
};
use splade_coordinator::state::{
    ClusterState, GenerationRecord, JobCommand, JobPhase, JobRecord, JobState, StateError, WorkerRecord,
};
use splade_proto::domain::{CheckpointRef, WorkerId};

use self::router::{Faults, Router};

/// Short enough for a test, long enough that a loaded 2-core machine does not see leaders flap all the time.
fn test_timings() -> RaftTimings {
    RaftTimings {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(600),
        election_max: Duration::from_millis(1200),
        snapshot_every: 8,
        keep_beyond_snapshot: 4,
    }
}

const JOB: &str = "output_dir=/tmp/job config_sha256=abc";

fn peer(id: NodeId) -> PeerNode {
    PeerNode {
        raft: format!("raft-{id}"),
        api: format!("api-{id}"),
    }
}

/// Nodes of one in-process group, each with its own state dir.
struct Group {
    router: Router,
    root: tempfile::TempDir,
    nodes: BTreeMap<NodeId, RaftClusterState>,
}

impl Group {
    async fn new(ids: &[NodeId], seed: u64, faults: Faults) -> Self {
        let mut g = Self {
            router: Router::new(seed, faults),
            root: tempfile::tempdir().unwrap(),
            nodes: BTreeMap::new(),
        };
        for &id in ids {
            g.start(id).await.unwrap();
        }
        let members = ids.iter().map(|&id| (id, peer(id))).collect();
        g.nodes[&ids[0]].initialize(members).await.unwrap();
        g
    }

    fn dir(&self, id: NodeId) -> PathBuf {
        self.root.path().join(format!("node-{id}"))
    }

    /// Starts (or restarts, from its state dir) node `id`.
    async fn start(&mut self, id: NodeId) -> Result<(), RaftStartError> {
        let opts = RaftNodeOptions {
            node_id: id,
            state_dir: self.dir(id),
            job: JOB.into(),
            timings: test_timings(),
        };
        let node = RaftClusterState::start(opts, self.router.for_node(id)).await?;
        self.router.add(id, node.raft().clone());
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Stops node `id` as a crash would: no more messages in or out; its state dir stays as it is.
    async fn kill(&mut self, id: NodeId) {
        self.router.remove(id);
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await;
        }
    }

    fn statuses(&self) -> Vec<RaftStatus> {
        self.nodes.values().map(|n| n.status()).collect()
    }

    fn status(&self, id: NodeId) -> RaftStatus {
        self.nodes[&id].status()
    }

    /// The live node that is leader, waiting up to `within` for one.
    async fn leader(&self, within: Duration) -> NodeId {
        let t0 = Instant::now();
        loop {
            if let Some((&id, _)) = self.nodes.iter().find(|(_, n)| n.status().is_leader) {
                return id;
            }
            assert!(
                t0.elapsed() < within,
                "no leader within {within:?}: {:?}",
                self.nodes.values().map(|n| n.status()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn wid(s: &str) -> WorkerId {
    WorkerId::new(s).unwrap()
}

fn checkpoint(step: u64) -> CheckpointRef {
    CheckpointRef {
        step,
        location: format!("s3://bucket/run/checkpoint-{step}"),
        manifest_sha256: format!("{step:064x}"),
    }
}

const FINAL_STEP: u64 = 100;
/// Steps at which the running generation loses a worker.
const FAILURES: [u64; 2] = [30, 70];

/// The next command a coordinator driving a job would commit, decided from the committed state alone, so a
/// leader that takes over (or a retry after a commit of unknown outcome) carries on without doing anything twice:
/// register two workers, form a generation from the latest checkpoint, record a checkpoint every 10 steps, lose
/// the generation's first member at each of `FAILURES` (end the generation, count the restart once, forget the
/// worker, register a new one, re-form), and complete at `FINAL_STEP`.
fn next_command(s: &JobState) -> Option<JobCommand> {
    if s.job().is_none() {
        return Some(JobCommand::SetJob(JobRecord {
            config_sha256: "abc".into(),
            global_batch_size: 8,
            per_device_batch_size: 4,
            total_steps: FINAL_STEP,
            data_plan: None,
        }));
    }
    if matches!(s.phase(), JobPhase::Completed { .. }) {
        return None;
    }
    let latest = s.latest_checkpoint().map_or(0, |c| c.step);
    match s.generation() {
        Some(g) if g.ended.is_none() => {
            if *s.phase() != JobPhase::Running {
                return Some(JobCommand::SetPhase(JobPhase::Running));
            }
            if latest >= FINAL_STEP {
                return Some(JobCommand::SetPhase(JobPhase::Completed {
                    final_step: FINAL_STEP,
                }));
            }
            if FAILURES.contains(&latest) && g.start_step < latest {
                return Some(JobCommand::EndGeneration {
                    reason: format!("worker {} lost after step {latest}", g.members[0]),
                });
            }
            Some(JobCommand::RecordCheckpoint(checkpoint(latest + 10)))
        }
        ended => {
            if let Some(g) = ended {
                if s.restarts() < g.number as u32 {
                    return Some(JobCommand::CountRestart);
                }
                if s.worker(&g.members[0]).is_some() {
                    return Some(JobCommand::RemoveWorker(g.members[0].clone()));
                }
            }
            let workers = s.workers();
            if workers.len() < 2 {
                let seq = s.next_join_seq();
                return Some(JobCommand::PutWorker(WorkerRecord {
                    id: wid(&format!("w{seq}")),
                    advertise_host: "127.0.0.1".into(),
                    store_port: None,
                    device: "cpu".into(),
                    join_seq: seq,
                }));
            }
            let number = ended.map_or(1, |g| g.number + 1);
            Some(JobCommand::StartGeneration(GenerationRecord {
                number,
                members: workers.iter().map(|w| w.id.clone()).collect(),
                store_host: "127.0.0.1".into(),
                store_port: 29500,
                restore: s.latest_checkpoint().cloned(),
                start_step: latest,
                micro_batches_per_rank: 1,
                ended: None,
            }))
        }
    }
}

/// What the driver saw, checked after every read: acknowledged checkpoints stay, a generation's members never
/// change, the restart count never exceeds the failed generations.
#[derive(Default)]
struct Observed {
    acked_checkpoints: BTreeSet<u64>,
    members: BTreeMap<u64, Vec<WorkerId>>,
    leaders: BTreeSet<NodeId>,
}

impl Observed {
    fn check(&mut self, s: &JobState, ctx: &str) {
        let present: BTreeSet<u64> = s.checkpoints().map(|c| c.step).collect();
        let lost: Vec<_> = self.acked_checkpoints.difference(&present).collect();
        assert!(lost.is_empty(), "{ctx}: acknowledged checkpoints {lost:?} are gone from {present:?}");
        if let Some(g) = s.generation() {
            let seen = self.members.entry(g.number).or_insert_with(|| g.members.clone());
            assert_eq!(*seen, g.members, "{ctx}: generation {}'s members changed", g.number);
            let failed = g.number - u64::from(g.ended.is_none());
            assert!(
                u64::from(s.restarts()) <= failed,
                "{ctx}: {} restarts counted for {failed} failed generations",
                s.restarts()
            );
        }
    }
}

/// Commits or reads through node `id`, bounded: a leader killed mid-call never answers.
async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| Err(StateError::Unavailable("no answer within 5 s".into())))
}

/// Drives the job to completion through whichever node leads, over a lossy network, killing the leader (at once,
/// or while a commit is in flight) every few commits and restarting it from its state dir a few commits later.
async fn drive_job_through_leader_kills(seed: u64) {
    let faults = Faults {
        drop_request: 0.05,
        drop_reply: 0.05,
        max_delay: Duration::from_millis(15),
    };
    let mut group = Group::new(&[1, 2, 3], seed, faults).await;
    let mut seen = Observed::default();
    let mut acked = 0u32;
    let mut kills = 0u32;
    let mut down: Option<(NodeId, u32)> = None;
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(60), "seed {seed}: the job did not complete in 60 s");
        let leader = group.leader(Duration::from_secs(10)).await;
        seen.leaders.insert(leader);
        let node = group.nodes[&leader].clone();
        let state = match bounded(node.read()).await {
            Ok(s) => s,
            Err(_) => continue, // deposed meanwhile, or no quorum yet
        };
        seen.check(&state, &format!("seed {seed}, read on node {leader}"));
        let Some(cmd) = next_command(&state) else { break };

        // Every 7th acknowledged command, kill the leader (a second time only after the first came back).
        let kill_now = acked > 0 && acked % 7 == 0 && kills < 3 && down.is_none();
        let result = if kill_now {
            kills += 1;
            let outcome = if seed % 2 == 1 {
                // The commit is on its way when the leader dies: it may or may not survive.
                let in_flight = tokio::spawn({
                    let (node, cmd) = (node.clone(), cmd.clone());
                    async move { bounded(node.commit(cmd)).await }
                });
                tokio::time::sleep(Duration::from_millis(1 + seed % 4)).await;
                group.kill(leader).await;
                in_flight.await.unwrap()
            } else {
                group.kill(leader).await;
                Err(StateError::Unavailable("not sent".into()))
            };
            down = Some((leader, acked));
            outcome
        } else {
            bounded(node.commit(cmd.clone())).await
        };
        if result.is_ok() {
            acked += 1;
            if let JobCommand::RecordCheckpoint(c) = &cmd {
                seen.acked_checkpoints.insert(c.step);
            }
        }
        if let Some((id, at)) = down {
            if acked >= at + 3 {
                group.start(id).await.unwrap();
                down = None;
            }
        }
    }
    if let Some((id, _)) = down {
        group.start(id).await.unwrap();
    }

    let leader = group.leader(Duration::from_secs(10)).await;
    let state = bounded(group.nodes[&leader].read()).await.unwrap();
    seen.check(&state, &format!("seed {seed}, final"));
    assert_eq!(*state.phase(), JobPhase::Completed { final_step: FINAL_STEP }, "seed {seed}");
    let g = state.generation().unwrap();
    assert_eq!(g.number, 1 + FAILURES.len() as u64, "seed {seed}: one generation per failure, plus the first");
    assert_eq!(state.restarts(), FAILURES.len() as u32, "seed {seed}: each restart counted once");
    let steps: Vec<u64> = state.checkpoints().map(|c| c.step).collect();
    assert_eq!(steps, (1..=10).map(|i| i * 10).collect::<Vec<_>>(), "seed {seed}");
    assert!(kills >= 2, "seed {seed}: the test killed the leader {kills} times");

    // Every node ends with the leader's state once it has applied the last entry.
    let target = group.status(leader).commit_index;
    for id in [1, 2, 3] {
        wait_until(Duration::from_secs(10), || group.status(id).last_applied >= target, || group.statuses()).await;
        assert_eq!(group.nodes[&id].local_state(), state, "seed {seed}: node {id}'s state");
    }
    eprintln!(
        "seed {seed}: {acked} commits acknowledged, {kills} leader kills, leaders {:?}, {:.1} s",
        seen.leaders,
        t0.elapsed().as_secs_f64()
    );
    for id in [1, 2, 3] {
        group.kill(id).await;
    }
}

/// Waits until `ok`; on a timeout, fails with what `state` describes.
async fn wait_until<D: std::fmt::Debug>(within: Duration, mut ok: impl FnMut() -> bool, state: impl Fn() -> D) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < within, "condition not met within {within:?}: {:?}", state());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_job_completes_with_every_checkpoint_and_restart_once_through_leader_kills_on_a_lossy_network() {
    crate::harness::init_tracing();
    for seed in 1..=4 {
        drive_job_through_leader_kills(seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_follower_restarted_from_its_state_dir_catches_up_and_an_empty_replacement_is_promoted() {
    crate::harness::init_tracing();
    let mut group = Group::new(&[1, 2, 3], 7, Faults::NONE).await;
    let leader = group.leader(Duration::from_secs(10)).await;
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let group_peers: BTreeMap<_, _> = [1, 2, 3].into_iter().map(|i| (i, peer(i))).collect();
    wait_until(Duration::from_secs(10), || group.nodes[&follower].recorded_peers().is_some(), || group.statuses()).await;
    assert_eq!(group.nodes[&follower].recorded_peers(), Some(group_peers.clone()));
    let node = group.nodes[&leader].clone();
    for step in 1..=5 {
        node.commit(JobCommand::RecordCheckpoint(checkpoint(step))).await.unwrap();
    }

    // Down while the log grows past two snapshots (every 8 entries, 4 kept).
    group.kill(follower).await;
    for step in 6..=30 {
        node.commit(JobCommand::RecordCheckpoint(checkpoint(step))).await.unwrap();
    }
    group.start(follower).await.unwrap();
    wait_until(Duration::from_secs(5), || group.nodes[&follower].recorded_peers().is_some(), || group.statuses()).await;
    assert_eq!(group.nodes[&follower].recorded_peers(), Some(group_peers.clone()), "the restarted node's group");
    let leader_commit = group.status(leader).commit_index;
    wait_until(Duration::from_secs(10), || group.status(follower).commit_index == leader_commit, || group.statuses()).await;
    wait_until(Duration::from_secs(10), || group.status(follower).last_applied == leader_commit, || group.statuses()).await;
    let expected = node.read().await.unwrap();
    assert_eq!(group.nodes[&follower].local_state(), expected);
    assert_eq!(expected.checkpoints().count(), 30);

    // Its disk is lost: a node with the same id and an empty state dir is added back as a learner, catches up
    // (from the leader's snapshot: the early log is purged) and is promoted to voter.
    group.kill(follower).await;
    std::fs::remove_dir_all(group.dir(follower)).unwrap();
    group.start(follower).await.unwrap();
    assert_eq!(group.status(follower).last_applied, 0, "the replacement starts empty");
    assert_eq!(group.nodes[&follower].recorded_peers(), None, "an empty state dir records no group");
    node.replace_lost_voter(follower, peer(follower), Duration::from_secs(10)).await.unwrap();
    let s = group.status(leader);
    assert_eq!(s.voters, BTreeSet::from([1, 2, 3]), "{s:?}");
    assert!(s.learners.is_empty(), "{s:?}");
    node.commit(JobCommand::RecordCheckpoint(checkpoint(31))).await.unwrap();
    let leader_commit = group.status(leader).commit_index;
    wait_until(Duration::from_secs(10), || group.status(follower).last_applied == leader_commit, || group.statuses()).await;
    assert_eq!(group.nodes[&follower].local_state(), node.read().await.unwrap());

    // The promoted node votes: with the other follower down, the leader and it still commit.
    let other = [1, 2, 3].into_iter().find(|&i| i != leader && i != follower).unwrap();
    group.kill(other).await;
    bounded(node.commit(JobCommand::RecordCheckpoint(checkpoint(32)))).await.unwrap();
    for id in [leader, follower] {
        group.kill(id).await;
    }
}

#[tokio::test]
async fn raft_state_dir_of_another_job_or_node_is_refused_at_start() {
    let root = tempfile::tempdir().unwrap();
    let router = Router::new(0, Faults::NONE);
    let opts = |id, job: &str| RaftNodeOptions {
        node_id: id,
        state_dir: root.path().join("state"),
        job: job.into(),
        timings: test_timings(),
    };
    let node = RaftClusterState::start(opts(1, JOB), router.for_node(1)).await.unwrap();
    node.shutdown().await;
    drop(node);

    let err = RaftClusterState::start(opts(1, "output_dir=/tmp/other config_sha256=def"), router.for_node(1))
        .await
        .unwrap_err();
    assert!(matches!(err, RaftStartError::Store(StoreError::OtherJob { .. })), "{err:?}");
    let msg = err.to_string();
    for part in [root.path().join("state").display().to_string(), JOB.into(), "--state-dir".into()] {
        assert!(msg.contains(&part), "the message names {part:?}: {msg}");
    }

    let err = RaftClusterState::start(opts(2, JOB), router.for_node(2)).await.unwrap_err();
    assert!(matches!(err, RaftStartError::Store(StoreError::OtherNode { found: 1, expected: 2, .. })), "{err:?}");
    assert!(err.to_string().contains("--node-id 2"), "{err}");
}

/// A node reachable over the real gRPC service on loopback with `token`.
async fn grpc_node(
    root: &std::path::Path,
    id: NodeId,
    token: &str,
    listener: tokio::net::TcpListener,
    timings: RaftTimings,
) -> (RaftClusterState, tokio::task::JoinHandle<()>) {
    grpc_node_tls(root, id, token, listener, timings, None).await
}

/// [`grpc_node`] with TLS: the server's identity and client CA, and the client's CA and identity.
async fn grpc_node_tls(
    root: &std::path::Path,
    id: NodeId,
    token: &str,
    listener: tokio::net::TcpListener,
    timings: RaftTimings,
    tls: Option<(tonic::transport::ServerTlsConfig, splade_proto::ClientTls)>,
) -> (RaftClusterState, tokio::task::JoinHandle<()>) {
    use splade_coordinator::raft::{raft_service, GrpcNetwork};
    let opts = RaftNodeOptions {
        node_id: id,
        state_dir: root.join(format!("node-{id}")),
        job: JOB.into(),
        timings,
    };
    let (server_tls, client_tls) = tls.unzip();
    let node = RaftClusterState::start(opts, GrpcNetwork::new(token, client_tls)).await.unwrap();
    let svc = raft_service(node.raft().clone(), token, "SPLADE_CLUSTER_TOKEN");
    let mut builder = tonic::transport::Server::builder();
    if let Some(cfg) = server_tls {
        builder = builder.tls_config(cfg).unwrap();
    }
    let server = tokio::spawn(async move {
        builder
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (node, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_peer_with_a_wrong_token_cannot_join_or_disturb_the_group_over_grpc() {
    crate::harness::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut listeners = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=4u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.insert(id, PeerNode::shared(l.local_addr().unwrap().to_string()));
        listeners.insert(id, l);
    }
    let mut nodes = BTreeMap::new();
    let mut servers = Vec::new();
    for (id, token) in [(1, "right"), (2, "right"), (3, "wrong"), (4, "right")] {
        let (n, s) = grpc_node(root.path(), id, token, listeners.remove(&id).unwrap(), test_timings()).await;
        nodes.insert(id, n);
        servers.push(s);
    }
    nodes[&1]
        .initialize(BTreeMap::from([(1, addrs[&1].clone()), (2, addrs[&2].clone())]))
        .await
        .unwrap();
    let t0 = Instant::now();
    let leader = loop {
        if let Some(id) = [1, 2].into_iter().find(|i| nodes[i].status().is_leader) {
            break id;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no leader of 1 and 2 over gRPC");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lead = nodes[&leader].clone();
    lead.commit(JobCommand::RecordCheckpoint(checkpoint(10))).await.unwrap();
    let term = lead.term();

    // Node 3 presents another token: the leader cannot replicate to it, so it never catches up as a learner.
    let err = lead.add_learner(3, addrs[&3].clone(), Duration::from_secs(3)).await.unwrap_err();
    assert!(err.to_string().contains("did not catch up"), "{err}");
    assert_eq!(nodes[&3].status().last_applied, 0, "node 3 received entries");
    assert_eq!(nodes[&3].raft().metrics().borrow().last_log_index, None);

    // Nor can it win or disturb an election: believing itself a voter of {1, 2, 3}, it campaigns in vain.
    nodes[&3]
        .initialize(BTreeMap::from([(1, addrs[&1].clone()), (2, addrs[&2].clone()), (3, addrs[&3].clone())]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(nodes[&3].status().term > term, "node 3 campaigned: {:?}", nodes[&3].status());
    let s = lead.status();
    assert!(s.is_leader && s.term == term, "the group was disturbed: {s:?}");
    assert!(!nodes[&3].status().is_leader);

    // The same steps with the right token succeed (node 4): the refusal above is the token's doing.
    lead.add_learner(4, addrs[&4].clone(), Duration::from_secs(10)).await.unwrap();
    lead.commit(JobCommand::RecordCheckpoint(checkpoint(20))).await.unwrap();
    let target = lead.status().commit_index;
    wait_until(Duration::from_secs(10), || nodes[&4].status().last_applied >= target, || nodes[&4].status()).await;
    assert_eq!(nodes[&4].local_state(), lead.read().await.unwrap());

    for n in nodes.values() {
        n.shutdown().await;
    }
    for s in servers {
        s.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_new_leader_within_10_s_of_a_leader_kill_with_the_default_timings_over_grpc() {
    crate::harness::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut listeners = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.insert(id, PeerNode::shared(l.local_addr().unwrap().to_string()));
        listeners.insert(id, l);
    }
    let mut nodes = BTreeMap::new();
    let mut servers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = listeners.remove(&id).unwrap();
        let (n, s) = grpc_node(root.path(), id, "token", l, RaftTimings::default()).await;
        nodes.insert(id, n);
        servers.insert(id, s);
    }
    nodes[&1].initialize(addrs.clone()).await.unwrap();
    let leader_among = |nodes: &BTreeMap<NodeId, RaftClusterState>| {
        nodes.iter().find(|(_, n)| n.status().is_leader).map(|(&id, _)| id)
    };
    let t0 = Instant::now();
    let first = loop {
        if let Some(id) = leader_among(&nodes) {
            break id;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "no first leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    nodes[&first].commit(JobCommand::RecordCheckpoint(checkpoint(10))).await.unwrap();

    // kill -9 of the leader's process, in effect: its server stops answering and its Raft stops.
    servers.remove(&first).unwrap().abort();
    nodes.remove(&first).unwrap().shutdown().await;
    let killed = Instant::now();
    let second = loop {
        if let Some(id) = leader_among(&nodes) {
            break id;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no new leader within 10 s: {:?}",
            nodes.values().map(|n| n.status()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = killed.elapsed();
    let state = nodes[&second].read().await.unwrap();
    assert_eq!(state.checkpoints().map(|c| c.step).collect::<Vec<_>>(), vec![10]);
    assert!(nodes[&second].status().leader_changes >= 1);
    eprintln!("node {second} leads {:.2} s after node {first} was killed", took.as_secs_f64());
    for n in nodes.values() {
        n.shutdown().await;
    }
    for s in servers.values() {
        s.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_peers_replicate_over_mutual_tls_and_a_peer_certified_by_another_ca_cannot_join() {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    crate::harness::init_tracing();
    // Node 3's server and client certificates come from another CA (it trusts ours: it would join if it could).
    let (ours, theirs) = (crate::security::pki(), crate::security::pki());
    let tls = |own: &crate::security::Pki| {
        let server = ServerTlsConfig::new()
            .identity(Identity::from_pem(&own.server.0, &own.server.1))
            .client_ca_root(Certificate::from_pem(&ours.ca_pem));
        let client = splade_proto::ClientTls {
            ca_pem: ours.ca_pem.clone().into_bytes(),
            identity: Some((own.client.0.clone().into_bytes(), own.client.1.clone().into_bytes())),
            domain: None,
        };
        Some((server, client))
    };
    let root = tempfile::tempdir().unwrap();
    let mut nodes = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    let mut servers = Vec::new();
    for (id, pki) in [(1u64, &ours), (2, &ours), (3, &theirs)] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // The server certificates are for `localhost`.
        addrs.insert(id, PeerNode::shared(format!("localhost:{}", l.local_addr().unwrap().port())));
        let (n, s) = grpc_node_tls(root.path(), id, "token", l, test_timings(), tls(pki)).await;
        nodes.insert(id, n);
        servers.push(s);
    }
    nodes[&1]
        .initialize(BTreeMap::from([(1, addrs[&1].clone()), (2, addrs[&2].clone())]))
        .await
        .unwrap();
    let t0 = Instant::now();
    let leader = loop {
        if let Some(id) = [1, 2].into_iter().find(|i| nodes[i].status().is_leader) {
            break id;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no leader of 1 and 2 over mutual TLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lead = nodes[&leader].clone();
    lead.commit(JobCommand::RecordCheckpoint(checkpoint(10))).await.unwrap();
    let other = 3 - leader;
    let target = lead.status().commit_index;
    wait_until(Duration::from_secs(10), || nodes[&other].status().last_applied >= target, || nodes[&other].status()).await;
    assert_eq!(nodes[&other].local_state(), lead.read().await.unwrap());
    let term = lead.term();

    let err = lead.add_learner(3, addrs[&3].clone(), Duration::from_secs(3)).await.unwrap_err();
    assert!(err.to_string().contains("did not catch up"), "{err}");
    assert_eq!(nodes[&3].raft().metrics().borrow().last_log_index, None, "node 3 received entries");
    nodes[&3].initialize(addrs.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(nodes[&3].status().term > term, "node 3 campaigned: {:?}", nodes[&3].status());
    let s = lead.status();
    assert!(s.is_leader && s.term == term, "the group was disturbed: {s:?}");

    for n in nodes.values() {
        n.shutdown().await;
    }
    for s in servers {
        s.abort();
    }
}
