//! The `splade` command line: `train`, `eval`, `encode`, `decode`, `index`, `search`. Each subcommand is a function
//! over parsed arguments so tests can call it without a process.

pub mod encode;
mod eval;
mod index;
mod search;
mod train;

use clap::{Parser, Subcommand};

/// Train and use SPLADE sparse retrieval encoders.
#[derive(Parser, Debug)]
#[command(name = "splade", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: splade_common::cli::LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a SPLADE encoder on one node from a YAML config.
    Train(train::TrainArgs),
    /// Encode texts into sparse vectors.
    Encode(encode::EncodeArgs),
    /// Show the top-weighted vocabulary tokens of texts.
    Decode(encode::DecodeArgs),
    /// Evaluate retrieval (MTEB-format results, sparsity analysis, BM25 and hybrid baselines).
    Eval(eval::EvalArgs),
    /// Encode a corpus into a persistent inverted index (and export it for search engines).
    Index(index::IndexArgs),
    /// Search an index written by `splade index`.
    Search(search::SearchArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(a) => train::run_train(a),
        Command::Encode(a) => encode::run_encode(a),
        Command::Decode(a) => encode::run_decode(a),
        Command::Eval(a) => eval::run_eval(a),
        Command::Index(a) => index::run_index(a),
        Command::Search(a) => search::run_search(a),
    }
}

/// Process set-up the binaries share, called first in `main` while the process has one thread:
/// libtorch backs CPU tensors of 2 MB and more with transparent huge pages
/// (`THP_MEM_ALLOC_ENABLE=1`, read once at libtorch's first allocation) unless the environment already
/// sets the variable. Training frees and re-allocates gigabytes of activations every step, which glibc
/// returns to and takes back from the kernel; with huge pages MiniLM training (batch 32 × 256 tokens,
/// 2 cores) took 0.39 M page faults instead of 7.2 M and peaked at 4.2 GB instead of 5.1 GB, at the
/// same step time (`/usr/bin/time` on `splade train`, 4 steps).
pub fn init_process() {
    if std::env::var_os("THP_MEM_ALLOC_ENABLE").is_none() {
        // Safe here: no other thread exists yet to read the environment concurrently.
        std::env::set_var("THP_MEM_ALLOC_ENABLE", "1");
    }
}

/// Installs the `tracing` subscriber the binaries share: see [`splade_common::cli`] (RUST_LOG, `--quiet`,
/// `--log-format json`, no colour off a terminal or with NO_COLOR).
pub fn init_logging(args: &splade_common::cli::LogArgs) {
    splade_common::cli::init_logging(args);
}
