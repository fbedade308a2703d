//! gRPC API between `splade-coordinator` and `splade-worker`.
//!
//! - [`pb`]: the prost/tonic types generated from `proto/splade/v1/cluster.proto` (package `splade.v1`).
//! - [`domain`]: validated types the two sides reason about; [`convert`]: the `TryFrom`/`From` edge between them.
//! - [`client::CoordinatorClient`]: the typed client a worker uses (token, TLS, connect retries).
//! - [`session::WorkerSession`]: join plus a background heartbeat publishing the worker's current directive.

pub mod client;
pub mod convert;
pub mod domain;
pub mod session;

/// Generated wire types, client and server of package `splade.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("splade.v1");
}

pub use client::{ClientError, ClientTls, CoordinatorClient, RetryPolicy};
pub use convert::ProtoError;
pub use domain::PROTOCOL_VERSION;
pub use session::WorkerSession;
