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

/// Verifies announced checkpoints against the job's output location with `splade_common`'s checkpoint store:
/// the checkpoint must lie directly under `output` (workers cannot point the job elsewhere), its manifest must
/// exist, every listed file must have the listed size and sha256, the manifest's step must be the announced
/// step, and the manifest's digest (sha256 of its pretty JSON) must be the announced one.
#[derive(Debug, Clone)]
pub struct StoreVerifier {
    output: splade_common::store::Location,
}

impl StoreVerifier {
    /// A verifier for checkpoints under `output` (the config's `training.output_dir`).
    pub fn new(output: splade_common::store::Location) -> Self {
        Self { output }
    }
}

/// The digest workers announce in a `CheckpointRef` ([`Manifest::digest`](splade_common::store::checkpoint::Manifest::digest)).
pub fn manifest_digest(m: &splade_common::store::checkpoint::Manifest) -> String {
    m.digest()
}

impl CheckpointVerifier for StoreVerifier {
    fn verify<'a>(&'a self, checkpoint: &'a CheckpointRef) -> VerifyFuture<'a> {
        Box::pin(async move {
            let fail = |reason: String| VerifyError { reason: format!("checkpoint {}: {reason}", checkpoint.location) };
            let name = checkpoint.location.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            if self.output.url_of(name) != checkpoint.location.trim_end_matches('/') {
                return Err(fail(format!("is not under the job's output {}", self.output.url())));
            }
            let info = splade_common::store::checkpoint::verify_checkpoint(
                &self.output,
                name,
                splade_common::store::checkpoint::Verify::Full,
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
            if info.step != checkpoint.step {
                return Err(fail(format!("the manifest says step {} but step {} was announced", info.step, checkpoint.step)));
            }
            let digest = manifest_digest(&info.manifest);
            if digest != checkpoint.manifest_sha256 {
                return Err(fail(format!("manifest sha256 is {digest}, not the announced {}", checkpoint.manifest_sha256)));
            }
            Ok(())
        })
    }
}
