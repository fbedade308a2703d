//! Cluster coordinator library; `src/bin/main.rs` is the thin binary.
//!
//! One loop owns the job's state machine ([`machine::Machine`]); gRPC calls reach it over a channel
//! (`service.rs`), timers drive timeouts, and a broadcast stops everything. Durable state sits behind
//! [`state::ClusterState`]: the machine's changes are [`state::JobCommand`]s the loop commits before it answers
//! ([`state::InMemoryClusterState`] in one process; a replicated store for fail-over).
//!
//! Start one with [`server::start`]; the returned [`CoordinatorHandle`] gives the bound address, a
//! [`JobSnapshot`] for metrics, shutdown, and the job's [`JobOutcome`].

pub mod config;
pub mod machine;
pub mod raft;
pub mod metrics;
pub mod recover;
pub mod server;
mod service;
pub mod settings;
pub mod snapshot;
pub mod state;
pub mod verify;

pub use machine::{JobOutcome, Machine};
pub use server::{
    start, start_with_state, CoordinatorError, CoordinatorHandle, CoordinatorOptions,
    ShutdownTrigger,
};
pub use settings::{
    ClusterSettings, JobSpec, JoinToken, ServerTls, SettingsError, DEFAULT_TOKEN_ENV,
};
pub use snapshot::{JobSnapshot, PhaseKind, Progress, WorkerStatus};
pub use state::{
    ClusterState, GenerationRecord, InMemoryClusterState, JobCommand, JobPhase, JobRecord, JobState, StateError,
    WorkerRecord,
};
pub use verify::{CheckpointVerifier, StoreVerifier, TrustWorkers, VerifyError, VerifyFuture};
