//! `splade-worker` over TLS: against a coordinator that requires client certificates (mutual TLS), one worker
//! takes its CA, certificate and key from the flags, the other from `--config` (`cluster.tls_*`, relative to the
//! config file); both join and train the job to completion. Named `cluster_*` so nextest runs it alone.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use splade_common::store::Location;
use splade_coordinator::{CoordinatorOptions, JobOutcome, JoinToken, ServerTls, StoreVerifier};

use crate::cluster::{exit_ok, finish, job_yaml, parse, write_data, Worker, TOKEN};
use splade_tests::fixtures::bin;

/// A CA and, signed by it, the coordinator's certificate for `localhost` and a worker's client certificate.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki { ca: ca.pem(), server: leaf("localhost"), client: leaf("worker") }
}

fn spawn(join: &str, id: &str, dir: &Path, tls_args: &[String]) -> Worker {
    let log = dir.join(format!("{id}.log"));
    let child = Command::new(bin("splade-worker"))
        .args(["--join", join, "--device", "cpu", "--advertise", "127.0.0.1", "--id", id])
        .args(tls_args)
        .env("SPLADE_CLUSTER_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Worker { id: id.into(), child, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_workers_join_a_mutual_tls_coordinator_from_flags_and_from_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki();
    let pem = tmp.path().join("pem");
    std::fs::create_dir(&pem).unwrap();
    for (name, text) in [
        ("ca.pem", &pki.ca),
        ("server.pem", &pki.server.0),
        ("server.key", &pki.server.1),
        ("worker.pem", &pki.client.0),
        ("worker.key", &pki.client.1),
    ] {
        std::fs::write(pem.join(name), text).unwrap();
    }
    let data = write_data(tmp.path(), 16);
    let out = tmp.path().join("out");
    // The worker's config names its own identity and the CA, relative to the config file.
    let yaml = job_yaml(&out, &data, 2, 4, 2, 10, (2, 2))
        + "  tls_ca: pem/ca.pem\n  tls_cert: pem/worker.pem\n  tls_key: pem/worker.key\n";
    let cfg_path = tmp.path().join("worker.yaml");
    std::fs::write(&cfg_path, &yaml).unwrap();
    let cfg = parse(&yaml);

    let (cluster, job) = splade_coordinator::config::from_config(&cfg).unwrap();
    let mut opts = CoordinatorOptions::new(cluster, job, "127.0.0.1:0".parse().unwrap(), JoinToken::new(TOKEN).unwrap());
    opts.verifier = Arc::new(StoreVerifier::new(Location::parse(&cfg.training.output_dir).unwrap()));
    opts.tls = Some(ServerTls {
        cert_pem: pki.server.0.clone().into_bytes(),
        key_pem: pki.server.1.clone().into_bytes(),
        client_ca_pem: Some(pki.ca.clone().into_bytes()),
    });
    let handle = splade_coordinator::start(opts).await.unwrap();
    let port = handle.local_addr().port();

    let p = |name: &str| pem.join(name).display().to_string();
    let flags = ["--tls-ca", &p("ca.pem"), "--tls-cert", &p("worker.pem"), "--tls-key", &p("worker.key")].map(String::from);
    // By IP, so the certificate's name comes from --tls-domain.
    let w0 = spawn(&format!("127.0.0.1:{port}"), "w0", tmp.path(), &[&flags[..], &["--tls-domain".into(), "localhost".into()]].concat());
    let w1 = spawn(&format!("https://localhost:{port}"), "w1", tmp.path(), &["--config".into(), cfg_path.display().to_string()]);
    let mut workers = vec![w0, w1];
    let outcome = finish(handle, &mut workers).await;
    assert_eq!(outcome, JobOutcome::Completed { final_step: 2 }, "w0:\n{}\nw1:\n{}", workers[0].log(), workers[1].log());
    for w in &mut workers {
        assert!(exit_ok(w, Duration::from_secs(60)), "{}:\n{}", w.id, w.log());
        assert!(w.log().contains("joined"), "{}:\n{}", w.id, w.log());
    }
    assert!(out.join("final/model.safetensors").exists());
}

/// Half an identity is refused before any connection, naming the flag.
#[test]
fn worker_tls_with_a_certificate_but_no_key_names_the_flags() {
    let out = Command::new(bin("splade-worker"))
        .args(["--join", "127.0.0.1:9", "--tls-ca", "/nonexistent/ca.pem", "--tls-cert", "/nonexistent/w.pem"])
        .env("SPLADE_CLUSTER_TOKEN", TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--tls-cert is set alone") && err.contains("--tls-key"), "{err}");
}
