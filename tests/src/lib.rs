//! The test kit, a dev-dependency of every crate in the workspace:
//! - [`MotoServer`]: a real S3 server (moto) on loopback, with fault rules that hold or refuse chosen requests;
//! - [`tools`]: the observability tools (`promtool`, a `prometheus` server, `mlflow server`, the Python readers in
//!   `scripts/obs_check.py`), free ports, process-group guards, the repository root;
//! - [`promql`]: which metric names a PromQL expression selects and a `/metrics` text exposes;
//! - [`cluster`]: an in-process coordinator on loopback and workers on the real `WorkerSession`;
//! - [`hub`]: Hugging Face Hub caches in `huggingface_hub`'s layout, and a loopback Hub both our client and Python's
//!   accept;
//! - [`fixtures`]: the test models, the reference Python (sentence-transformers 6.2 and the seed's 5.2), the
//!   workspace's binaries, parity texts.
//!
//! Cross-crate integration tests (real `splade-worker` processes against a real coordinator) live in `it/`.

pub mod cluster;
pub mod fixtures;
pub mod hub;
mod moto;
pub mod promql;
pub mod tools;

pub use moto::MotoServer;
