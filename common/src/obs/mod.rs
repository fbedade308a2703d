//! Observability: Prometheus series and the `/metrics` endpoint, and the experiment reporters
//! (`report_to: tensorboard | mlflow`, plus a `metrics.jsonl` file).
//!
//! The guarantee every part of this module keeps: **monitoring never fails or stalls training.**
//! Metric updates are atomics; the `/metrics` server has its own thread; reporters swallow their
//! own I/O errors (each reporter warns once, then goes quiet) and the network-bound MLflow reporter
//! queues its work for a background thread.
//!
//! Typical trainer wiring:
//!
//! ```no_run
//! use splade_common::obs::{self, Reporter};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = obs::Registry::new();
//! let training = obs::TrainingMetrics::new(&registry)?;
//! let worker = obs::WorkerMetrics::new(&registry)?;
//! let _server = obs::serve_metrics("127.0.0.1:9100", registry.clone())?;
//! let mut report = obs::FanOut::new(vec![
//!     Box::new(obs::JsonlReporter::create("out/metrics.jsonl")?),
//!     Box::new(obs::TensorBoardWriter::create("out/runs/run-1")?),
//! ]);
//! report.log_params(&[("learning_rate".into(), "2e-5".into())]);
//! let stats = obs::StepStats { step: 1, loss: 1.5, ..Default::default() };
//! training.record_step(&stats);
//! worker.record_step(0.2, 0.01);
//! report.log_scalars(stats.step, &stats.scalars());
//! report.finish(Some(std::path::Path::new("out/final")));
//! # Ok(()) }
//! ```

mod metrics;
pub mod mlflow;
mod reporter;
mod server;
pub mod tfevents;

pub use metrics::{
    encode_text, names, ClusterMetrics, StepStats, TrainingMetrics, WorkerMetrics, METRIC_FAMILIES,
};
pub use mlflow::{MlflowReporter, MlflowSettings, RunEnd};
/// The registry type the metric groups register on (re-exported so callers need no `prometheus` dependency).
pub use prometheus::Registry;
pub use reporter::{flatten_params, FanOut, JsonlReporter, Reporter};
pub use server::{serve_metrics, MetricsServer, TEXT_CONTENT_TYPE};
pub use tfevents::TensorBoardWriter;

use std::path::PathBuf;

/// Errors of the observability module. Only set-up can fail (binding the metrics port, creating a
/// log directory, registering a series twice); recording never returns an error.
#[derive(Debug, thiserror::Error)]
pub enum ObsError {
    /// A metric could not be defined or registered (a name registered twice on one registry).
    #[error("Prometheus metric registration failed: {0} (each metrics group can be registered once per registry)")]
    Prometheus(#[from] prometheus::Error),
    /// The `/metrics` server could not listen on the address.
    #[error("cannot serve metrics on '{addr}': {message} (fix --metrics-listen: HOST:PORT that is free, e.g. 0.0.0.0:9100)")]
    Listen {
        /// The address as given.
        addr: String,
        /// Why binding failed.
        message: String,
    },
    /// A log file or directory could not be created or written.
    #[error("cannot write '{path}': {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The MLflow settings are unusable (e.g. an unsupported tracking URI scheme).
    #[error("mlflow: {0}")]
    Mlflow(String),
}

impl ObsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Milliseconds since the Unix epoch (MLflow's timestamp unit).
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This machine's host name, for event-file names and run tags.
pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string())
}
