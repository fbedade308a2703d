//! What a coordinator started without job state learns from the job's `output_dir`: the checkpoints committed
//! there and the `final/` model, with `splade_common`'s checkpoint protocol (a checkpoint exists iff its manifest
//! does and its files match it).
//!
//! A coordinator that Kubernetes restarted without a state dir (or with a lost one) must neither start the job
//! over nor train over a finished run: with `final/` committed the job is complete; otherwise it resumes from the
//! newest committed checkpoint that verifies.

use splade_common::store::checkpoint::{latest_checkpoint, verify_checkpoint, Verify};
use splade_common::store::{Location, StoreError};
use splade_proto::domain::CheckpointRef;

use crate::state::{JobCommand, JobPhase, JobState};

/// What `output_dir` says about the job.
#[derive(Clone, Debug, PartialEq)]
pub enum Recovered {
    /// Nothing committed: the job starts from step 0.
    Fresh,
    /// Checkpoints are committed; the newest that verifies is the restore point.
    Resume(CheckpointRef),
    /// `final/` is committed: the job is complete at `final_step` (the model is at `url`).
    Complete { final_step: u64, url: String },
}

impl Recovered {
    /// The job state a coordinator starts from: the restore point recorded as committed, or the job complete.
    pub fn state(&self) -> JobState {
        let mut s = JobState::default();
        match self {
            Recovered::Fresh => {}
            Recovered::Resume(c) => s.apply(&JobCommand::RecordCheckpoint(c.clone())),
            Recovered::Complete { final_step, .. } => {
                s.apply(&JobCommand::SetPhase(JobPhase::Completed { final_step: *final_step }))
            }
        }
        s
    }
}

/// Reads `output` (local or object store). `final/` counts when its manifest exists and its files have the
/// listed sizes; a checkpoint counts when every file's sha256 matches (only the newest good one is read in full).
/// Errors are the store's (unreachable, unreadable), never "nothing there".
pub async fn from_output(output: &Location) -> Result<Recovered, StoreError> {
    match verify_checkpoint(output, "final", Verify::Sizes).await {
        Ok(info) => {
            return Ok(Recovered::Complete {
                final_step: info.manifest.step,
                url: info.url,
            })
        }
        Err(StoreError::NotFound { .. }) => {}
        Err(e @ (StoreError::Verify { .. } | StoreError::Manifest { .. })) => {
            tracing::warn!(error = %e, "final/ is incomplete; not treating the job as complete");
        }
        Err(e) => return Err(e),
    }
    Ok(match latest_checkpoint(output).await? {
        Some(info) => Recovered::Resume(CheckpointRef {
            step: info.step,
            location: info.url,
            manifest_sha256: info.manifest.digest(),
        }),
        None => Recovered::Fresh,
    })
}
