//! `splade-worker`: joins a splade-coordinator and trains as one data-parallel replica.
//! Exit codes: 0 the job completed (or a clean leave after SIGTERM), 1 any error (README, "Exit codes").
use splade_worker::node::{run_node, NodeOptions, TlsFiles};

/// A libtorch data-parallel replica of a splade-coordinator job.
#[derive(clap::Parser, Debug)]
#[command(name = "splade-worker", version)]
struct Args {
    /// Coordinator address HOST:PORT, or several comma-separated (the replicas of a replicated coordinator): tried
    /// in turn, following a non-leader's redirect to the leader.
    #[arg(long)]
    join: String,
    /// auto, cpu, cuda:N or mps.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Host other workers reach this one at (the c10d store when rank 0); default 127.0.0.1.
    #[arg(long)]
    advertise: Option<String>,
    /// Serve Prometheus metrics here.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Worker id (default <hostname>-<pid>).
    #[arg(long, env = "SPLADE_WORKER_ID")]
    id: Option<String>,
    /// Write the batch plan this worker trains (dataset and rows per step, as `splade train --dump-batches`).
    #[arg(long)]
    dump_batches: Option<std::path::PathBuf>,
    /// PEM CA that signed the coordinator's certificate: connect with TLS (`https`).
    #[arg(long, env = "SPLADE_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for a coordinator that requires one (with --tls-key).
    #[arg(long, env = "SPLADE_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, env = "SPLADE_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// Name to verify the coordinator's certificate against (default: the host of --join).
    #[arg(long)]
    tls_domain: Option<String>,
    /// A training config whose cluster.tls_ca, tls_cert and tls_key fill the TLS flags left unset.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Append one JSON line per finished step (generation, rank, step, dataset, rows consumed, bytes read).
    #[arg(long)]
    ledger: Option<std::path::PathBuf>,
    /// Write step 1's all-reduced gradients (safetensors) to PATH.rank<R>.
    #[arg(long)]
    dump_gradients: Option<std::path::PathBuf>,
    /// Seconds to wait for a coordinator that stopped answering, once not training, before exiting and naming
    /// what this worker finished (default: the job's cluster.coordinator_wait, 60 before any assignment).
    #[arg(long, value_name = "SECONDS")]
    coordinator_wait: Option<f64>,
    #[command(flatten)]
    log: splade_common::cli::LogArgs,
    /// The shared join token.
    #[arg(long, env = "SPLADE_CLUSTER_TOKEN", hide_env_values = true)]
    token: String,
}

fn main() {
    splade_worker::cli::init_process();
    let args: Args = splade_common::cli::parse_args();
    splade_worker::cli::init_logging(&args.log);
    let tls = TlsFiles {
        ca: args.tls_ca,
        cert: args.tls_cert,
        key: args.tls_key,
        domain: args.tls_domain,
        config: args.config,
    };
    let tls = match tls.client_tls() {
        Ok(t) => t,
        Err(e) => splade_common::cli::exit_with(&anyhow::Error::new(e)),
    };
    let coordinator_wait = match args.coordinator_wait.map(std::time::Duration::try_from_secs_f64) {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(_) => splade_common::cli::exit_with(&anyhow::anyhow!(
            "--coordinator-wait {}: must be a positive number of seconds (e.g. 60)",
            args.coordinator_wait.unwrap_or_default()
        )),
    };
    let opts = NodeOptions {
        join: args.join,
        device: args.device,
        advertise: args.advertise,
        metrics_listen: args.metrics_listen,
        worker_id: args.id,
        token: args.token,
        dump_batches: args.dump_batches,
        tls,
        ledger: args.ledger,
        dump_gradients: args.dump_gradients,
        coordinator_wait,
    };
    if let Err(e) = run_node(opts) {
        splade_common::cli::exit_with(&anyhow::Error::new(e));
    }
}
