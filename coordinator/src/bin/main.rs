use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use splade_coordinator::recover::{self, Recovered};
use splade_coordinator::{
    config, CoordinatorOptions, InMemoryClusterState, JobOutcome, JoinToken, ServerTls, StoreVerifier,
};

/// Coordinates a data-parallel SPLADE training job across splade-worker processes.
/// Exit codes: 0 the job completed, 1 an error or a failed job, 2 stopped by a signal before the job
/// completed (README, "Exit codes").
#[derive(clap::Parser)]
#[command(name = "splade-coordinator", version)]
struct Args {
    /// Training config (YAML); its `cluster:` section configures the coordinator.
    #[arg(long)]
    config: std::path::PathBuf,
    /// gRPC address workers join on.
    #[arg(long, default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Address to serve Prometheus metrics on.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Override a config key: `--set training.max_steps=20` (repeatable; dotted keys; the value read as YAML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Validate the config, datasets, evaluation tasks, output_dir and schedule for `cluster.max_workers`
    /// workers without starting the job; print the plan; exit 1 naming every problem.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    log: splade_common::cli::LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = splade_common::cli::parse_args();
    splade_common::cli::init_logging(&args.log);
    let result = if args.check { check(&args) } else { run(args).await };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", splade_common::cli::error_report(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (cfg, cluster, mut job) = config::load_with(&args.config, &args.set)?;
    for note in cfg.startup_notes() {
        tracing::warn!("{note}");
    }
    for (dataset, files) in
        config::check_datasets(&cfg, &splade_common::store::StoreOptions::from_env()).await?
    {
        tracing::info!(dataset, files, "dataset found");
    }
    let output = splade_common::store::Location::parse(&cfg.training.output_dir)
        .with_context(|| format!("{}: training.output_dir", args.config.display()))?;
    let token = JoinToken::from_env(&cluster.token_env)
        .with_context(|| format!("{}", args.config.display()))?;
    let tls =
        ServerTls::from_settings(&cluster).with_context(|| format!("{}", args.config.display()))?;
    // A coordinator restarted without its state: what output_dir holds decides where the job stands.
    let recovered = recover::from_output(&output)
        .await
        .with_context(|| format!("{}: reading the committed checkpoints in training.output_dir", args.config.display()))?;
    match &recovered {
        Recovered::Complete { final_step, url } => {
            tracing::info!(final_step, model = %url, "the job is already complete");
            eprintln!(
                "splade-coordinator: the job is already complete: {url} holds the final model (step {final_step}); \
                 nothing to train (use another training.output_dir for a new run)"
            );
            return Ok(ExitCode::SUCCESS);
        }
        Recovered::Resume(c) => {
            tracing::info!(step = c.step, checkpoint = %c.location, "resuming the job from its last committed checkpoint")
        }
        Recovered::Fresh => {}
    }
    // Last of the start-up checks: one streaming pass over every dataset. With `num_train_epochs` the plan sets
    // the steps.
    let plan =
        config::plan_job(&cfg, &mut job, &splade_common::store::StoreOptions::from_env()).await?;
    let plan_ref = job.data_plan.clone().expect("plan_job sets the data plan");
    tracing::info!(
        location = plan_ref.location,
        sha256 = plan_ref.sha256,
        steps = plan.batches.len(),
        "data plan published"
    );
    drop(plan);
    // What planning used goes back to the system: the coordinator only waits for workers from here on.
    splade_common::data::scan::release_freed_memory();
    let mut opts = CoordinatorOptions::new(cluster, job, args.listen, token);
    opts.tls = tls;
    opts.verifier = Arc::new(StoreVerifier::new(output));
    let expected = opts.cluster.max_workers as usize;
    let handle = splade_coordinator::start_with_state(opts, InMemoryClusterState::new(recovered.state())).await?;
    let registry = splade_common::obs::Registry::new();
    let _exporter = splade_coordinator::metrics::spawn_exporter(&registry, handle.subscribe(), expected)?;
    let _metrics = match args.metrics_listen {
        Some(addr) => {
            let server = splade_common::obs::serve_metrics(&addr.to_string(), registry.clone())?;
            tracing::info!(url = server.url(), "serving Prometheus metrics");
            Some(server)
        }
        None => None,
    };

    // Progress for a person watching: a bar on a terminal, plain periodic lines otherwise.
    let mut snapshots = handle.subscribe();
    tokio::spawn(async move {
        let first = snapshots.borrow().clone();
        let progress = splade_common::cli::Progress::new("job", first.total_steps, "steps");
        loop {
            let snap = snapshots.borrow_and_update().clone();
            progress.set_total(snap.total_steps);
            progress.set_message(format!(
                "{:?}, workers {}/{}, generation {}",
                snap.phase, snap.workers_alive, expected, snap.generation
            ));
            progress.set_position(snap.global_step);
            if snapshots.changed().await.is_err() {
                progress.finish();
                return;
            }
        }
    });
    let trigger = handle.shutdown_trigger();
    tokio::spawn(async move {
        stop_signal().await;
        tracing::info!("signal received; stopping");
        trigger.shutdown();
    });
    match handle.wait().await? {
        JobOutcome::Completed { final_step } => {
            tracing::info!(final_step, "training complete");
            Ok(ExitCode::SUCCESS)
        }
        JobOutcome::Failed { reason } => {
            eprintln!("splade-coordinator: the job failed: {reason}");
            Ok(ExitCode::FAILURE)
        }
        JobOutcome::ShutDown => {
            eprintln!("splade-coordinator: stopped before the job completed");
            Ok(ExitCode::from(2))
        }
    }
}

/// Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `--check`: the checks of `splade train --check` for a world of `cluster.max_workers` processes. The model is
/// not resolved here: each worker resolves it at start-up (the coordinator never loads it).
fn check(args: &Args) -> anyhow::Result<ExitCode> {
    use splade_common::config::check::{check, CheckOptions};
    let world = splade_common::config::Config::from_path_with(&args.config, &args.set)
        .map(|c| c.cluster.max_workers())
        .unwrap_or(1);
    let resolve = |_: &splade_common::config::Config| -> Result<String, String> {
        Ok("resolved by each worker at start-up; `splade train --check` resolves it on a worker machine".into())
    };
    let opts = CheckOptions { world, resolve_model: &resolve, store: splade_common::store::StoreOptions::from_env() };
    let report = check(&args.config, &args.set, &opts);
    for line in &report.plan {
        println!("{line}");
    }
    if let Some(cfg) = &report.config {
        for note in cfg.startup_notes() {
            println!("note: {note}");
        }
    }
    let origin = args.config.display();
    if report.problems.is_empty() {
        println!("{origin}: check passed");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &report.problems {
        eprintln!("problem: {p}");
    }
    eprintln!("error: {origin}: {} problem(s) found by --check (listed above)", report.problems.len());
    Ok(ExitCode::from(1))
}
