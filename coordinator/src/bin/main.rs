use clap::Parser;

/// Coordinates a data-parallel SPLADE training job across splade-worker processes.
#[derive(Parser)]
#[command(name = "splade-coordinator", version)]
struct Args {
    /// Training config (YAML).
    #[arg(long)]
    config: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("splade-coordinator: not implemented yet")
}
