//! Hook for checking a checkpoint before it is recorded as committed.

use std::future::Future;
use std::pin::Pin;

use splade_proto::domain::CheckpointRef;

/// Why a checkpoint was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct VerifyError {
    pub reason: String,
}

/// Boxed future of a verification.
pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), VerifyError>> + Send + 'a>>;

/// Decides whether a checkpoint a worker announces really is committed (its manifest exists and every file it
/// lists has the listed sha256). Runs outside the coordinator's state loop, so it may do I/O against object
/// storage without stalling heartbeats. Only checkpoints it accepts are ever handed to workers to restore.
pub trait CheckpointVerifier: Send + Sync + 'static {
    fn verify<'a>(&'a self, checkpoint: &'a CheckpointRef) -> VerifyFuture<'a>;
}

/// Records what workers report without looking at storage. Stands in until the manifest check of
/// `splade_common`'s checkpoint store is wired in; the coordinator logs a warning at start-up while it is used.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrustWorkers;

impl CheckpointVerifier for TrustWorkers {
    fn verify<'a>(&'a self, _checkpoint: &'a CheckpointRef) -> VerifyFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}
