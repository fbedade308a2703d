//! `splade-worker`: joins a splade-coordinator and trains as one data-parallel replica.
use clap::Parser;

/// A libtorch data-parallel replica of a splade-coordinator job.
#[derive(Parser, Debug)]
#[command(name = "splade-worker", version)]
struct Args {
    /// Coordinator address HOST:PORT.
    #[arg(long)]
    join: String,
    /// auto, cpu, cuda:N or mps.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Address other workers reach this one at (the c10d store when rank 0).
    #[arg(long)]
    advertise: Option<String>,
    /// Serve Prometheus metrics here.
    #[arg(long)]
    metrics_listen: Option<String>,
}

fn main() {
    splade_worker::cli::init_logging();
    let args = Args::parse();
    eprintln!("error: joining {} is not implemented yet", args.join);
    std::process::exit(1);
}
