use crate::harness::*;
use splade_coordinator::{JobOutcome, PhaseKind};
use splade_proto::domain::Directive;

#[tokio::test]
async fn final_step_tells_everyone_to_stop_and_the_server_exits() {
    init_tracing();
    bounded(async {
        let coord = start(settings(2, 2, 0), job(12)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        let mut w1 = SimWorker::join(addr, "w1").await.unwrap();
        w0.assignment().await;
        w1.assignment().await;

        assert!(w1.report(6, &[("loss", 2.0)]).await.accepted);
        let s = snapshot_until(&coord, "step 6", |s| s.global_step == 6).await;
        assert_eq!(s.progress.train.map(|t| t.loss.total), Some(2.0));
        assert!(
            w0.report(12, &[("loss", 0.75), ("samples_per_second", 512.0)])
                .await
                .accepted
        );

        for w in [&mut w0, &mut w1] {
            assert_eq!(
                w.final_directive().await,
                Directive::Complete { final_step: 12 }
            );
        }
        let s = snapshot_until(&coord, "completed", |s| s.phase == PhaseKind::Completed).await;
        assert_eq!(s.progress_step, 12);
        assert_eq!(s.progress.train.map(|t| t.samples_per_second), Some(512.0));
        assert_eq!(
            coord.wait().await.unwrap(),
            JobOutcome::Completed { final_step: 12 }
        );
        assert!(
            client(addr, TOKEN).await.is_err(),
            "the server is down after completion"
        );
    })
    .await;
}

#[tokio::test]
async fn progress_from_an_ended_generation_is_ignored() {
    init_tracing();
    bounded(async {
        let coord = start(settings(1, 2, 2), job(10)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        let mut w1 = SimWorker::join(addr, "w1").await.unwrap();
        w0.assignment().await;
        w1.assignment().await;
        let mut stale = w1.client.clone();
        w1.kill();
        assert_eq!(w0.assignment().await.generation, 2);
        // w1's process "comes back" and reports the final step of generation 1: it must not complete the job.
        let report = splade_proto::domain::ProgressReport::new(wid("w1"), 1, 10);
        let ack = stale.report_progress(report).await.unwrap();
        assert!(!ack.accepted, "{ack:?}");
        assert_eq!(coord.snapshot().phase, PhaseKind::Running);
        coord.shutdown();
    })
    .await;
}
