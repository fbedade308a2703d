//! `splade_proto::WorkerSession`, the worker-side heartbeat driver, against the real coordinator.

use std::time::Duration;

use crate::harness::*;
use splade_coordinator::JobOutcome;
use splade_proto::domain::{Assignment, Directive, ProgressReport};
use splade_proto::WorkerSession;
use tokio::sync::watch;

async fn session(addr: std::net::SocketAddr, id: &str) -> WorkerSession {
    WorkerSession::join(
        client(addr, TOKEN).await.unwrap(),
        join_request(id, None),
        Duration::from_secs(2),
    )
    .await
    .unwrap()
}

async fn next_assignment(rx: &mut watch::Receiver<Directive>, after_generation: u64) -> Assignment {
    let wait = async {
        loop {
            if let Directive::Assign(a) = &*rx.borrow_and_update() {
                if a.generation > after_generation {
                    return (**a).clone();
                }
            }
            rx.changed().await.expect("session alive");
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("an assignment in time")
}

#[tokio::test]
async fn sessions_follow_generations_to_completion() {
    init_tracing();
    bounded(async {
        let coord = start(settings(1, 2, 2), job(20)).await;
        let addr = coord.local_addr();
        let s0 = session(addr, "w0").await;
        let s1 = session(addr, "w1").await;
        let (mut d0, mut d1) = (s0.directive(), s1.directive());
        let a0 = next_assignment(&mut d0, 0).await;
        let a1 = next_assignment(&mut d1, 0).await;
        assert_eq!((a0.rank, a1.rank, a0.world_size), (0, 1, 2));
        s0.set_position(Some(a0.generation), 3);
        s1.set_position(Some(a1.generation), 3);
        snapshot_until(&coord, "steps from heartbeats", |s| s.global_step == 3).await;

        drop(s1); // the process dies: no more heartbeats
        let a0 = next_assignment(&mut d0, 1).await;
        assert_eq!((a0.generation, a0.world_size), (2, 1));
        s0.set_position(Some(2), 20);
        let report = ProgressReport::new(wid("w0"), 2, 20);
        assert!(s0.client().report_progress(report).await.unwrap().accepted);
        tokio::time::timeout(
            PATIENCE,
            d0.wait_for(|d| matches!(d, Directive::Complete { .. })),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            coord.wait().await.unwrap(),
            JobOutcome::Completed { final_step: 20 }
        );
        tokio::time::timeout(PATIENCE, async {
            while !s0.is_finished() {
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            }
        })
        .await
        .expect("the session stops after completion");
    })
    .await;
}

#[tokio::test]
async fn a_session_the_coordinator_forgot_joins_again() {
    init_tracing();
    bounded(async {
        let coord = start(settings(2, 2, 0), job(20)).await;
        let addr = coord.local_addr();
        let s0 = session(addr, "w0").await;
        let mut d0 = s0.directive();
        snapshot_until(&coord, "w0 registered", |s| s.workers_alive == 1).await;
        // The coordinator forgets w0 (here: a leave on its behalf); its next heartbeat is answered "rejoin".
        let mut other = client(addr, TOKEN).await.unwrap();
        let left = other.leave(splade_proto::domain::LeaveRequest {
            worker_id: wid("w0"),
            reason: "test".into(),
        });
        assert!(left.await.unwrap().accepted);
        // Only if the session re-registered can a generation of two form once w1 arrives.
        let mut w1 = SimWorker::join(addr, "w1").await.unwrap();
        let a0 = next_assignment(&mut d0, 0).await;
        let a1 = w1.assignment().await;
        assert_eq!((a0.generation, a0.world_size), (1, 2));
        assert_eq!(a1.members, a0.members);
        assert!(a0.members.contains(&wid("w0")));
        coord.shutdown();
    })
    .await;
}
