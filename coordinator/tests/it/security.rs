use crate::harness::*;
use splade_coordinator::PhaseKind;
use splade_proto::domain::{Directive, Heartbeat};
use splade_proto::{pb, ClientTls, PROTOCOL_VERSION};

#[tokio::test]
async fn wrong_token_is_refused_and_changes_nothing() {
    init_tracing();
    bounded(async {
        let coord = start(settings(2, 2, 0), job(100)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        w0.wait_reason().await.unwrap();

        // An intruder cannot fill the second slot of the rendezvous ...
        let mut intruder = client(addr, "not-the-token").await.unwrap();
        let err = intruder
            .join(join_request("intruder", None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
        assert!(
            err.to_string().contains("SPLADE_CLUSTER_TOKEN"),
            "the message names the variable: {err}"
        );
        let s = coord.snapshot();
        assert_eq!(
            (s.phase, s.workers_alive, s.generation),
            (PhaseKind::Rendezvous, 1, 0)
        );

        let mut w1 = SimWorker::join(addr, "w1").await.unwrap();
        w0.assignment().await;
        w1.assignment().await;

        // ... nor speak for a member: a forged leave or heartbeat is refused before it reaches the state.
        let err = intruder
            .leave(splade_proto::domain::LeaveRequest {
                worker_id: wid("w1"),
                reason: "forged".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::Unauthenticated));
        let err = intruder
            .heartbeat(Heartbeat {
                worker_id: wid("w1"),
                generation: Some(1),
                step: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::Unauthenticated));

        // A client with no token header at all.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut bare = pb::coordinator_client::CoordinatorClient::new(channel);
        let status = bare
            .join(pb::JoinRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: "x".into(),
                advertise_host: "h".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);

        tokio::time::sleep(HEARTBEAT_TIMEOUT * 2).await;
        let s = coord.snapshot();
        assert!(is_running(&s, 1, 2), "the job runs on undisturbed: {s:#?}");
        assert_eq!(s.restarts, 0);
        coord.shutdown();
    })
    .await;
}

#[tokio::test]
async fn another_protocol_version_is_refused_naming_both_versions() {
    init_tracing();
    bounded(async {
        let coord = start(settings(1, 1, 0), job(100)).await;
        let mut c = client(coord.local_addr(), TOKEN).await.unwrap();
        let status = c
            .raw()
            .join(pb::JoinRequest {
                protocol_version: PROTOCOL_VERSION + 1,
                worker_id: "future".into(),
                advertise_host: "h".into(),
                store_port: 0,
                device: "cpu".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let msg = status.message();
        assert!(
            msg.contains(&format!("peer speaks version {}", PROTOCOL_VERSION + 1))
                && msg.contains(&format!("this build speaks version {PROTOCOL_VERSION}")),
            "{msg}"
        );
        let status = c
            .raw()
            .heartbeat(pb::HeartbeatRequest {
                protocol_version: 0,
                worker_id: "future".into(),
                generation: 0,
                step: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(coord.snapshot().workers_alive, 0, "nothing was registered");

        // An invalid field is named.
        let status = c
            .raw()
            .join(pb::JoinRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: "ok".into(),
                advertise_host: "".into(),
                store_port: 0,
                device: "cpu".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "JoinRequest.advertise_host: is empty");

        // The job still forms for a worker of the right version.
        let mut w = SimWorker::join(coord.local_addr(), "w0").await.unwrap();
        assert_eq!(w.assignment().await.generation, 1);
        coord.shutdown();
    })
    .await;
}

/// A worker of another protocol version cannot join a running job, nor speak for one of its members:
/// every call is refused with FAILED_PRECONDITION naming both versions, and the job's state does not move.
#[tokio::test]
async fn another_protocol_version_leaves_a_running_job_unchanged() {
    init_tracing();
    bounded(async {
        let coord = start(settings(1, 2, 0), job(100)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        let a = w0.assignment().await;
        assert!(w0.report(3, &[("loss", 0.7)]).await.accepted);
        let before = snapshot_until(&coord, "step 3", |s| s.global_step == 3).await;
        assert!(is_running(&before, a.generation, 1), "{before:#?}");

        let both_versions = |status: &tonic::Status, theirs: u32| {
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
            let msg = status.message();
            assert!(
                msg.contains(&format!("peer speaks version {theirs}"))
                    && msg.contains(&format!("this build speaks version {PROTOCOL_VERSION}")),
                "the refusal names both versions: {msg}"
            );
        };
        let mut old = client(addr, TOKEN).await.unwrap();
        for theirs in [PROTOCOL_VERSION + 1, PROTOCOL_VERSION - 1] {
            // A newcomer: would be the second member of a max_workers 2 job.
            let status = old
                .raw()
                .join(pb::JoinRequest {
                    protocol_version: theirs,
                    worker_id: "other-version".into(),
                    advertise_host: "127.0.0.1".into(),
                    store_port: 0,
                    device: "cpu".into(),
                })
                .await
                .unwrap_err();
            both_versions(&status, theirs);
            // Calls in the name of the running member.
            let status = old
                .raw()
                .report_progress(pb::ProgressReport {
                    protocol_version: theirs,
                    worker_id: "w0".into(),
                    generation: a.generation,
                    step: 50,
                    train: Some(pb::StepProgress {
                        loss: Some(pb::LossParts { total: 9.0, ..Default::default() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            both_versions(&status, theirs);
            let status = old
                .raw()
                .commit_checkpoint(pb::CheckpointCommit {
                    protocol_version: theirs,
                    worker_id: "w0".into(),
                    generation: a.generation,
                    step: 50,
                    location: "/nowhere/checkpoint-50".into(),
                    manifest_sha256: "0".repeat(64),
                })
                .await
                .unwrap_err();
            both_versions(&status, theirs);
            let status = old
                .raw()
                .leave(pb::LeaveRequest {
                    protocol_version: theirs,
                    worker_id: "w0".into(),
                    reason: "other version".into(),
                })
                .await
                .unwrap_err();
            both_versions(&status, theirs);
        }

        // Past a heartbeat timeout the job still runs as before: same generation, world, step and
        // progress, no restart, no checkpoint, and the newcomer is not registered.
        tokio::time::sleep(HEARTBEAT_TIMEOUT * 2).await;
        let after = coord.snapshot();
        assert!(is_running(&after, a.generation, 1), "{after:#?}");
        assert_eq!(
            (after.workers_alive, after.restarts, after.global_step, after.progress_step),
            (before.workers_alive, before.restarts, before.global_step, before.progress_step)
        );
        assert_eq!(after.progress, before.progress);
        assert_eq!(after.last_checkpoint, None);
        assert_eq!(
            after.workers.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
            vec!["w0"]
        );
        // The member of the right version carries on.
        assert!(w0.report(4, &[("loss", 0.6)]).await.accepted);
        snapshot_until(&coord, "step 4", |s| s.global_step == 4).await;
        coord.shutdown();
    })
    .await;
}

#[tokio::test]
async fn heartbeat_of_an_unknown_worker_asks_it_to_rejoin() {
    init_tracing();
    bounded(async {
        let coord = start(settings(1, 1, 0), job(100)).await;
        let mut c = client(coord.local_addr(), TOKEN).await.unwrap();
        match c
            .heartbeat(Heartbeat {
                worker_id: wid("ghost"),
                generation: None,
                step: 0,
            })
            .await
            .unwrap()
            .directive
        {
            Directive::Rejoin { reason } => {
                assert!(reason.contains("ghost is not registered"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        coord.shutdown();
    })
    .await;
}

/// A CA, a server certificate for `localhost` and a client certificate, all signed by the CA.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    pub(crate) server: (String, String),
    pub(crate) client: (String, String),
}

pub(crate) fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf("localhost"),
        client: leaf("worker"),
    }
}

#[tokio::test]
async fn mutual_tls_accepts_certified_workers_only() {
    init_tracing();
    bounded(async {
        let pki = pki();
        // Room for a second worker, so a refusal below can only come from TLS, not from max_workers.
        let mut opts = options(settings(1, 2, 0), job(100));
        opts.tls = Some(splade_coordinator::ServerTls {
            cert_pem: pki.server.0.clone().into_bytes(),
            key_pem: pki.server.1.clone().into_bytes(),
            client_ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        });
        let coord = splade_coordinator::start(opts).await.unwrap();
        let url = format!("https://localhost:{}", coord.local_addr().port());
        let tls = ClientTls {
            ca_pem: pki.ca_pem.clone().into_bytes(),
            identity: Some((
                pki.client.0.clone().into_bytes(),
                pki.client.1.clone().into_bytes(),
            )),
            domain: None,
        };
        let mut w = SimWorker::join_with(
            client_tls(&url, TOKEN, Some(tls.clone())).await.unwrap(),
            "w0",
            None,
        )
        .await
        .unwrap();
        assert_eq!(w.assignment().await.generation, 1);

        // Without a client certificate the handshake (or the first call) fails.
        let no_identity = ClientTls {
            identity: None,
            ..tls.clone()
        };
        let refused = match client_tls(&url, TOKEN, Some(no_identity)).await {
            Err(_) => true,
            Ok(mut c) => c.join(join_request("w9", None)).await.is_err(),
        };
        assert!(
            refused,
            "a worker without a client certificate must not get in"
        );

        // Plain text to a TLS port does not work either.
        let plain = format!("http://localhost:{}", coord.local_addr().port());
        let refused = match client_tls(&plain, TOKEN, None).await {
            Err(_) => true,
            Ok(mut c) => c.join(join_request("w8", None)).await.is_err(),
        };
        assert!(refused, "plain HTTP/2 must not reach a TLS coordinator");
        assert_eq!(coord.snapshot().workers_alive, 1);
        coord.shutdown();
    })
    .await;
}

/// The gRPC category of issue #17's bad-input table: malformed messages from an authenticated peer are
/// refused with INVALID_ARGUMENT naming `Message.field` and the value, and none disturbs the running job.
#[tokio::test]
async fn bad_grpc_messages_are_refused_naming_the_field_and_leave_the_job_running() {
    init_tracing();
    bounded(async {
        let coord = start(settings(1, 2, 0), job(100)).await;
        let addr = coord.local_addr();
        let mut w0 = SimWorker::join(addr, "w0").await.unwrap();
        let a = w0.assignment().await;
        assert!(w0.report(2, &[("loss", 0.5)]).await.accepted);
        let before = snapshot_until(&coord, "step 2", |s| s.global_step == 2).await;
        let mut c = client(addr, TOKEN).await.unwrap();
        let v = PROTOCOL_VERSION;
        let join = |worker_id: &str, host: &str, port: u32| pb::JoinRequest {
            protocol_version: v,
            worker_id: worker_id.into(),
            advertise_host: host.into(),
            store_port: port,
            device: "cpu".into(),
        };
        let progress = |train: Option<pb::StepProgress>, evals: Vec<pb::EvalScore>, ckpt: Option<f64>| pb::ProgressReport {
            protocol_version: v,
            worker_id: "w0".into(),
            generation: a.generation,
            step: 3,
            train,
            evals,
            checkpoint_seconds: ckpt,
            stopped_early: false,
        };
        let eval = |task: &str| pb::EvalScore { task: task.into(), ..Default::default() };
        let commit = |sha: &str| pb::CheckpointCommit {
            protocol_version: v,
            worker_id: "w0".into(),
            generation: a.generation,
            step: 2,
            location: "file:///tmp/x/checkpoint-2".into(),
            manifest_sha256: sha.into(),
        };
        // (what, the call's status, the message it must hold)
        let cases: Vec<(&str, tonic::Status, &str)> = vec![
            ("join: empty advertise_host", c.raw().join(join("w9", "", 0)).await.unwrap_err(), "JoinRequest.advertise_host: is empty"),
            ("join: empty worker id", c.raw().join(join("", "h", 0)).await.unwrap_err(), "JoinRequest.worker_id: worker id"),
            ("join: worker id with a slash", c.raw().join(join("a/b", "h", 0)).await.unwrap_err(), "JoinRequest.worker_id: worker id"),
            ("join: port above 65535", c.raw().join(join("w9", "h", 70000)).await.unwrap_err(), "port 70000 is above 65535"),
            (
                "progress: NaN checkpoint_seconds",
                c.raw().report_progress(progress(None, vec![], Some(f64::NAN))).await.unwrap_err(),
                "ProgressReport.checkpoint_seconds: is NaN; it must be a finite number >= 0",
            ),
            (
                "progress: train without loss",
                c.raw().report_progress(progress(Some(pb::StepProgress::default()), vec![], None)).await.unwrap_err(),
                "ProgressReport.train.loss: is missing",
            ),
            (
                "progress: an eval task twice",
                c.raw().report_progress(progress(None, vec![eval("t"), eval("t")], None)).await.unwrap_err(),
                "ProgressReport.evals.task: \"t\" appears twice",
            ),
            (
                "commit: sha256 not hex",
                c.raw().commit_checkpoint(commit("not-a-digest")).await.unwrap_err(),
                "is not 64 hex digits",
            ),
            (
                "heartbeat: empty worker id",
                c.raw()
                    .heartbeat(pb::HeartbeatRequest { protocol_version: v, worker_id: "".into(), generation: 0, step: 0 })
                    .await
                    .unwrap_err(),
                "HeartbeatRequest.worker_id",
            ),
            (
                "leave: empty worker id",
                c.raw().leave(pb::LeaveRequest { protocol_version: v, worker_id: "".into(), reason: "x".into() }).await.unwrap_err(),
                "LeaveRequest.worker_id",
            ),
        ];
        for (what, status, want) in &cases {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status}");
            assert!(status.message().contains(want), "{what}: {:?} should contain {want:?}", status.message());
        }
        let after = coord.snapshot();
        assert!(is_running(&after, a.generation, 1), "{after:#?}");
        assert_eq!((after.global_step, after.restarts, after.workers_alive), (before.global_step, 0, 1));
        coord.shutdown();
    })
    .await;
}
