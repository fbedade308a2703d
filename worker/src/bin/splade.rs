//! `splade`: the user CLI (train, eval, encode, decode). All logic lives in `splade_worker::cli`.
//! Exit codes: 0 success (or a clean stop after SIGTERM/Ctrl-C), 1 any error (README, "Exit codes").

fn main() {
    splade_worker::cli::init_process();
    let cli: splade_worker::cli::Cli = splade_common::cli::parse_args();
    splade_worker::cli::init_logging(&cli.log);
    if let Err(e) = splade_worker::cli::run(cli) {
        splade_common::cli::exit_with(&e);
    }
}
