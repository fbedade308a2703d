use crate::harness::*;
use splade_coordinator::PhaseKind;

#[tokio::test]
async fn two_workers_get_ranks_generation_and_the_store_of_rank_0() {
    init_tracing();
    bounded(async {
        let coord = start(settings(2, 2, 0), job(100)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join_with(client(addr, TOKEN).await.unwrap(), "w0", Some(29777))
            .await
            .unwrap();
        let reason = w0.wait_reason().await.unwrap();
        assert!(
            reason.contains("1 worker(s) registered, min_workers 2"),
            "{reason}"
        );
        let mut w1 = SimWorker::join(addr, "w1").await.unwrap();

        let a0 = w0.assignment().await;
        let a1 = w1.assignment().await;
        assert_eq!((a0.generation, a0.rank, a0.world_size), (1, 0, 2));
        assert_eq!((a1.generation, a1.rank, a1.world_size), (1, 1, 2));
        for a in [&a0, &a1] {
            assert_eq!(a.store_host, "w0.test", "rank 0 hosts the store");
            assert_eq!(a.store_port, 29777, "on the port rank 0 asked for");
            assert_eq!(a.members, vec![wid("w0"), wid("w1")]);
            assert_eq!(
                (
                    a.global_batch_size,
                    a.per_device_batch_size,
                    a.micro_batches_per_rank
                ),
                (16, 4, 2)
            );
            assert_eq!(
                (a.restore.clone(), a.start_step, a.total_steps),
                (None, 0, 100)
            );
            assert_eq!(a.config_json, job(100).config_json);
        }

        let s = snapshot_until(&coord, "generation 1 with 2 workers", |s| {
            is_running(s, 1, 2)
        })
        .await;
        assert_eq!(s.workers_alive, 2);
        assert_eq!(s.restarts, 0);
        let ranks: Vec<_> = s
            .workers
            .iter()
            .map(|w| (w.id.to_string(), w.rank))
            .collect();
        assert_eq!(
            ranks,
            vec![("w0".to_owned(), Some(0)), ("w1".to_owned(), Some(1))]
        );
        coord.shutdown();
        assert_eq!(
            coord.wait().await.unwrap(),
            splade_coordinator::JobOutcome::ShutDown
        );
    })
    .await;
}

#[tokio::test]
async fn a_third_worker_beyond_max_workers_is_refused() {
    init_tracing();
    bounded(async {
        let coord = start(settings(2, 2, 0), job(100)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        let _w1 = SimWorker::join(addr, "w1").await.unwrap();
        w0.assignment().await;
        let err = client(addr, TOKEN)
            .await
            .unwrap()
            .join(join_request("w2", None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted), "{err}");
        assert!(err.to_string().contains("max_workers 2"), "{err}");
        let s = coord.snapshot();
        assert_eq!((s.phase, s.workers_alive), (PhaseKind::Running, 2));
        coord.shutdown();
    })
    .await;
}

#[tokio::test]
async fn rendezvous_timeout_fails_the_job_with_who_came() {
    init_tracing();
    bounded(async {
        let mut cluster = settings(2, 2, 0);
        cluster.rendezvous_timeout = std::time::Duration::from_millis(500);
        let coord = start(cluster, job(100)).await;
        let mut w0 = SimWorker::join(coord.local_addr(), "w0").await.unwrap();
        match w0.final_directive().await {
            splade_proto::domain::Directive::Failed { reason } => {
                assert!(
                    reason.contains(
                        "rendezvous timed out after 500ms: 1 of min_workers 2 joined (w0)"
                    ),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        match coord.wait().await.unwrap() {
            splade_coordinator::JobOutcome::Failed { reason } => {
                assert!(reason.contains("rendezvous timed out"))
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
}
