use crate::harness::*;
use splade_coordinator::JobOutcome;
use splade_proto::domain::Directive;

#[tokio::test]
async fn heartbeat_timeout_reforms_generation_2_with_the_survivor_from_the_checkpoint() {
    init_tracing();
    bounded(async {
        let coord = start(settings(1, 2, 3), job(100)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        let mut w1 = SimWorker::join(addr, "w1").await.unwrap();
        assert_eq!(w0.assignment().await.world_size, 2);
        assert_eq!(w1.assignment().await.rank, 1);

        assert!(w0.report(7, &[("loss", 1.25)]).await.accepted);
        let ack = w0.commit(5).await.unwrap();
        assert!(ack.accepted, "{ack:?}");
        snapshot_until(&coord, "checkpoint 5 recorded", |s| {
            s.last_checkpoint == Some(checkpoint(5))
        })
        .await;

        w1.kill();
        let reason = w0.wait_reason().await.unwrap();
        assert!(
            reason.contains("generation 1 ended: worker(s) w1"),
            "{reason}"
        );
        assert!(reason.contains("heartbeat_timeout 200 ms"), "{reason}");
        let a = w0.assignment().await;
        assert_eq!((a.generation, a.rank, a.world_size), (2, 0, 1));
        assert_eq!(
            a.restore,
            Some(checkpoint(5)),
            "restores the latest committed checkpoint"
        );
        assert_eq!(a.start_step, 5);
        assert_eq!(
            a.micro_batches_per_rank, 4,
            "global batch 16 kept: 1 rank x 4 per device x 4 micro-batches"
        );
        assert_eq!(a.global_batch_size, 16);

        let s = snapshot_until(&coord, "generation 2", |s| is_running(s, 2, 1)).await;
        assert_eq!((s.restarts, s.workers_alive), (1, 1));
        coord.shutdown();
    })
    .await;
}

#[tokio::test]
async fn newcomer_replaces_a_lost_worker_when_min_workers_is_2() {
    init_tracing();
    bounded(async {
        let coord = start(settings(2, 2, 3), job(100)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        let mut w1 = SimWorker::join(addr, "w1").await.unwrap();
        w0.assignment().await;
        w1.assignment().await;
        w0.commit(10).await.unwrap();

        w1.kill();
        let reason = w0.wait_reason().await.unwrap();
        assert!(reason.contains("generation 1 ended"), "{reason}");
        let s = snapshot_until(&coord, "w1 dropped", |s| s.workers_alive == 1).await;
        assert_eq!(s.generation, 1, "no generation forms below min_workers");

        let mut w2 = SimWorker::join(addr, "w2").await.unwrap();
        let a0 = w0.assignment().await;
        let a2 = w2.assignment().await;
        assert_eq!(
            (a0.generation, a0.rank, a0.world_size),
            (2, 0, 2),
            "the survivor keeps rank 0"
        );
        assert_eq!(
            (a2.generation, a2.rank, a2.world_size),
            (2, 1, 2),
            "the newcomer gets rank 1"
        );
        assert_eq!(a2.restore, Some(checkpoint(10)));
        assert_eq!(a2.members, vec![wid("w0"), wid("w2")]);
        assert_eq!(coord.snapshot().restarts, 1);
        coord.shutdown();
    })
    .await;
}

#[tokio::test]
async fn standby_newcomer_is_added_at_the_next_checkpoint_without_a_restart() {
    init_tracing();
    bounded(async {
        let coord = start(settings(1, 2, 0), job(100)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        assert_eq!(w0.assignment().await.world_size, 1);

        let mut w2 = SimWorker::join(addr, "w2").await.unwrap();
        let reason = w2.wait_reason().await.unwrap();
        assert!(
            reason.starts_with("standby: generation 1 is running with world size 1"),
            "{reason}"
        );

        assert!(w0.commit(20).await.unwrap().accepted);
        let a0 = w0.assignment().await;
        let a2 = w2.assignment().await;
        assert_eq!(
            (
                a0.generation,
                a0.rank,
                a0.world_size,
                a0.micro_batches_per_rank
            ),
            (2, 0, 2, 2)
        );
        assert_eq!((a2.rank, a2.start_step), (1, 20));
        assert_eq!(coord.snapshot().restarts, 0, "scaling up is not a failure");
        coord.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_leave_reforms_from_the_checkpoint_without_counting_a_restart() {
    init_tracing();
    bounded(async {
        let coord = start(settings(1, 2, 0), job(100)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        let mut w1 = SimWorker::join(addr, "w1").await.unwrap();
        assert_eq!(w0.assignment().await.world_size, 2);
        w1.assignment().await;
        assert!(w0.commit(4).await.unwrap().accepted);
        snapshot_until(&coord, "checkpoint 4 recorded", |s| s.last_checkpoint == Some(checkpoint(4))).await;

        // max_restarts 0: a failure would end the job; a planned departure re-forms it.
        w1.leave("SIGTERM").await.unwrap(); // what splade-worker's session does on SIGTERM
        let reason = w0.wait_reason().await.unwrap();
        assert!(reason.starts_with("rendezvous (generation 1 ended: worker w1 left (SIGTERM))"), "{reason}");
        let a = w0.assignment().await;
        assert_eq!((a.generation, a.rank, a.world_size, a.start_step), (2, 0, 1, 4));
        assert_eq!(a.restore, Some(checkpoint(4)));
        let s = snapshot_until(&coord, "generation 2", |s| is_running(s, 2, 1)).await;
        assert_eq!((s.restarts, s.workers_alive), (0, 1));
        coord.shutdown();
    })
    .await;
}

#[tokio::test]
async fn max_restarts_exceeded_fails_the_job_with_a_clear_reason() {
    init_tracing();
    bounded(async {
        let coord = start(settings(1, 2, 1), job(100)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        let mut w1 = SimWorker::join(addr, "w1").await.unwrap();
        w0.assignment().await;
        w1.assignment().await;

        w1.kill(); // restart 1 of 1: generation 2 with w0 alone
        assert_eq!(w0.assignment().await.generation, 2);
        let mut w2 = SimWorker::join(addr, "w2").await.unwrap(); // standby
        assert!(w2.wait_reason().await.unwrap().starts_with("standby"));

        // A leave is planned (no restart); a lost heartbeat is a failure and exhausts the restarts.
        w0.kill();
        let reason = match w2.final_directive().await {
            Directive::Failed { reason } => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason.starts_with("generation 2 ended: worker(s) w0 ("), "{reason}");
        assert!(reason.ends_with("max_restarts 1 exhausted (1 restart(s) so far)"), "{reason}");
        assert_eq!(coord.wait().await.unwrap(), JobOutcome::Failed { reason });
        let err = client(addr, TOKEN).await.err().expect("server stopped after the job failed");
        assert!(err.to_string().contains("could not connect"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn a_checkpoint_the_verifier_rejects_is_not_recorded() {
    use splade_coordinator::{CheckpointVerifier, VerifyError, VerifyFuture};
    use splade_proto::domain::CheckpointRef;

    /// Accepts only even steps: stands in for a manifest check.
    struct EvenSteps;
    impl CheckpointVerifier for EvenSteps {
        fn verify<'a>(&'a self, c: &'a CheckpointRef) -> VerifyFuture<'a> {
            Box::pin(async move {
                if c.step.is_multiple_of(2) {
                    Ok(())
                } else {
                    Err(VerifyError {
                        reason: format!("manifest of step {} is missing", c.step),
                    })
                }
            })
        }
    }

    init_tracing();
    bounded(async {
        let mut opts = options(settings(1, 1, 0), job(100));
        opts.verifier = std::sync::Arc::new(EvenSteps);
        let coord = splade_coordinator::start(opts).await.unwrap();
        let mut w0 = SimWorker::join(coord.local_addr(), "w0").await.unwrap();
        w0.assignment().await;
        assert!(w0.commit(4).await.unwrap().accepted);
        let err = w0.commit(5).await.unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
        assert!(err.to_string().contains("checkpoint at step 5 (/ckpt/checkpoint-5) does not verify: manifest of step 5 is missing"), "{err}");
        let stale = w0.commit(2).await.unwrap();
        assert!(!stale.accepted && stale.reason.contains("not newer than the committed step 4"), "{stale:?}");
        assert_eq!(coord.snapshot().last_checkpoint, Some(checkpoint(4)));
        coord.shutdown();
    })
    .await;
}
