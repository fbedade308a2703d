//! `splade`: the user CLI (train, eval, encode, decode). All logic lives in `splade_worker::cli`.
use clap::Parser;

fn main() {
    splade_worker::cli::init_process();
    splade_worker::cli::init_logging();
    let cli = splade_worker::cli::Cli::parse();
    if let Err(e) = splade_worker::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
