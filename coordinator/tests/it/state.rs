//! The coordinator on a store that can refuse, as a Raft follower refuses: a refused change reaches no caller and
//! leaves no trace in the machine's view, and a store of another job is refused at start-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::harness::*;
use splade_coordinator::{
    start_with_state, ClusterState, CoordinatorError, InMemoryClusterState, JobCommand, JobRecord, JobState,
    StateError,
};
use splade_proto::client::LEADER_METADATA;
use splade_proto::domain::{Directive, Heartbeat};
use splade_proto::{RetryPolicy, WorkerSession};

const LEADER: &str = "10.1.2.3:50051";

/// The in-memory store, answering `NotLeader { leader }` to commits while `refuse` is set (a leader deposed
/// between its check and its commit) and to the leadership check too while `follow` is set; term 7.
struct Refusing {
    inner: InMemoryClusterState,
    refuse: AtomicBool,
    follow: AtomicBool,
    leader: String,
}

impl Refusing {
    fn new(leader: &str) -> Arc<Self> {
        Arc::new(Self { inner: InMemoryClusterState::default(), refuse: AtomicBool::new(false), follow: AtomicBool::new(false), leader: leader.into() })
    }
}

#[async_trait::async_trait]
impl ClusterState for Refusing {
    async fn commit(&self, cmd: JobCommand) -> Result<(), StateError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(StateError::NotLeader { leader: Some(self.leader.clone()) });
        }
        self.inner.commit(cmd).await
    }
    async fn read(&self) -> Result<JobState, StateError> {
        self.inner.read().await
    }
    fn term(&self) -> u64 {
        7
    }
    async fn ensure_leader(&self) -> Result<(), StateError> {
        match self.follow.load(Ordering::SeqCst) {
            true => Err(StateError::NotLeader { leader: Some(self.leader.clone()) }),
            false => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_refused_commit_answers_unavailable_naming_the_leader_and_leaves_no_trace() {
    init_tracing();
    bounded(async {
        let store = Refusing::new(LEADER);
        let coord = start_with_state(options(settings(1, 1, 0), job(20)), store.clone()).await.unwrap();
        let mut c = client(coord.local_addr(), TOKEN).await.unwrap();
        store.refuse.store(true, Ordering::SeqCst);
        let e = c.join(join_request("w0", None)).await.unwrap_err();
        let splade_proto::ClientError::Rpc { status, .. } = &e else { panic!("{e}") };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{e}");
        assert!(status.message().contains("not the leader") && status.message().contains(LEADER), "{e}");
        assert_eq!(status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()), Some(LEADER));
        // Neither the store nor the machine's view holds the refused worker; a heartbeat is told to join again.
        assert!(store.read().await.unwrap().workers().is_empty());
        assert!(coord.snapshot().workers.is_empty(), "{:?}", coord.snapshot());
        store.refuse.store(false, Ordering::SeqCst);
        let hb = Heartbeat { worker_id: wid("w0"), generation: None, step: 0 };
        let reply = c.heartbeat(hb.clone()).await.unwrap();
        assert!(matches!(reply.directive, Directive::Rejoin { .. }), "{reply:?}");
        // Accepted once the store commits: the answer carries the store's term and the generation.
        c.join(join_request("w0", None)).await.unwrap();
        let reply = c.heartbeat(hb).await.unwrap();
        let Directive::Assign(a) = &reply.directive else { panic!("{reply:?}") };
        assert_eq!((reply.term, reply.generation, a.generation), (7, 1, 1));
        let state = store.read().await.unwrap();
        assert_eq!(state.generation().map(|g| g.members.clone()), Some(vec![wid("w0")]));
        assert_eq!(state.job(), Some(&JobRecord::of(&job(20))));
        coord.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_store_holding_another_jobs_state_is_refused_at_start_naming_what_differs() {
    init_tracing();
    bounded(async {
        let mut theirs = JobState::default();
        theirs.apply(&JobCommand::SetJob(JobRecord::of(&job(20))));
        let store = InMemoryClusterState::new(theirs);
        let e = match start_with_state(options(settings(1, 1, 0), job(30)), store).await {
            Err(e) => e,
            Ok(_) => panic!("started on another job's state"),
        };
        assert!(matches!(e, CoordinatorError::OtherJob(_)), "{e:?}");
        let m = e.to_string();
        assert!(m.contains("belongs to another job") && m.contains("total_steps 20 (ours 30)"), "{m}");
    })
    .await;
}

#[tokio::test]
async fn join_any_skips_a_dead_address_and_follows_a_followers_redirect_to_the_leader() {
    init_tracing();
    bounded(async {
        let leader = start(settings(1, 1, 0), job(20)).await;
        let store = Refusing::new(&leader.local_addr().to_string());
        let follower = start_with_state(options(settings(1, 1, 0), job(20)), store.clone()).await.unwrap();
        store.refuse.store(true, Ordering::SeqCst);
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let addrs = vec![dead, follower.local_addr().to_string()];
        let retry = RetryPolicy {
            attempts: 3,
            initial_backoff: std::time::Duration::from_millis(50),
            max_backoff: std::time::Duration::from_millis(200),
            connect_timeout: std::time::Duration::from_secs(1),
        };
        let (session, at) = WorkerSession::join_any(&addrs, TOKEN, None, join_request("w0", None), retry.clone(), PATIENCE)
            .await
            .unwrap();
        assert_eq!(at, leader.local_addr().to_string());
        assert_eq!(session.worker_id(), &wid("w0"));
        snapshot_until(&leader, "w0 registered at the leader", |s| s.workers.iter().any(|w| w.id == wid("w0"))).await;
        assert!(follower.snapshot().workers.is_empty() && store.read().await.unwrap().workers().is_empty());
        // A refusal no retry fixes ends the search at once, with the coordinator's reason.
        let e = match WorkerSession::join_any(&addrs, "wrong-token", None, join_request("w1", None), retry, PATIENCE).await {
            Err(e) => e,
            Ok(_) => panic!("joined with a wrong token"),
        };
        assert_eq!(e.code(), Some(tonic::Code::Unauthenticated), "{e}");
        leader.shutdown();
        follower.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_joined_session_follows_a_redirect_to_the_leader_and_the_follower_answers_nothing_else() {
    init_tracing();
    bounded(async {
        let leader = start(settings(1, 1, 0), job(20)).await;
        let store = Refusing::new(&leader.local_addr().to_string());
        let follower = start_with_state(options(settings(1, 1, 0), job(20)), store.clone()).await.unwrap();
        let retry = RetryPolicy { attempts: 2, ..RetryPolicy::default() };
        let addrs = vec![follower.local_addr().to_string()];
        let (session, at) =
            WorkerSession::join_any(&addrs, TOKEN, None, join_request("w0", None), retry, PATIENCE).await.unwrap();
        assert_eq!(at, follower.local_addr().to_string());
        // The node that took the join stops leading: the session's heartbeats are refused naming the leader, and it
        // moves there and joins (the leader, holding no record of w0, asks it to).
        store.refuse.store(true, Ordering::SeqCst);
        store.follow.store(true, Ordering::SeqCst);
        snapshot_until(&leader, "w0 registered at the leader", |s| s.workers.iter().any(|w| w.id == wid("w0"))).await;
        // Calls through the session now reach the leader; the follower refuses even a call that changes nothing.
        let hb = Heartbeat { worker_id: wid("w0"), generation: None, step: 0 };
        assert!(session.client().heartbeat(hb.clone()).await.is_ok());
        let mut direct = client(follower.local_addr(), TOKEN).await.unwrap();
        let e = direct.heartbeat(hb).await.unwrap_err();
        assert_eq!(splade_proto::session::leader_of(&e), Some(leader.local_addr().to_string()), "{e}");
        leader.shutdown();
        follower.shutdown();
    })
    .await;
}
