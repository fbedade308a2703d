//! The distributed data plane: libtorch's own c10d (the engine under PyTorch DDP) reached
//! through a small C++ shim (`csrc/dist_shim.cpp`).
//!
//! * [`Store`] — c10d `TCPStore`, hosted by rank 0, the rendezvous of one job.
//! * [`ProcessGroup`] — one elastic generation's `ProcessGroupGloo` (CPU) or `ProcessGroupNCCL`
//!   (CUDA, `cuda` feature) over a `PrefixStore` keyed by the generation, with the collectives
//!   the trainer needs: bucketed [`ProcessGroup::all_reduce_sum`], [`ProcessGroup::all_gather`],
//!   [`ProcessGroup::all_gather_varlen`], [`ProcessGroup::broadcast`], [`ProcessGroup::barrier`].
//! * [`gather_global_batch`] — the global-batch embeddings for the loss: every rank's rows, with
//!   this rank's own rows still attached to its autograd graph.
//!
//! # Why the gradients are summed, not averaged
//!
//! Let θ be the parameters (identical on every rank) and `e_r = f(x_r; θ)` the embeddings rank
//! `r` computes for its slice of the global batch. The loss is the *global* batch's,
//! `L(e_0, …, e_{W-1})`: in-batch negatives and FLOPS means over all `W` slices, normalised by
//! the global batch size. Its true gradient is
//!
//! ```text
//! dL/dθ = Σ_r  ∂L/∂e_r · ∂e_r/∂θ
//! ```
//!
//! Rank `r` builds `L` from [`gather_global_batch`]'s tensors: slice `r` is its live `e_r`, the
//! other slices are detached copies with the same values. So the loss value is `L` on every
//! rank, and backward on rank `r` yields `∂L/∂e_r · ∂e_r/∂θ` — the partial derivative in `e_r`
//! holds the other slices fixed, exactly what the detached copies are — i.e. precisely the
//! `r`-th term, and nothing else (the detached slices contribute no path to θ). Summing the
//! ranks' gradients therefore gives `dL/dθ`. Averaging would give `dL/dθ / W`. (Plain DDP
//! averages because there each rank's loss is a mean over its *local* batch; here the loss
//! already is the global mean, computed identically everywhere.)
//!
//! Gradient accumulation/caching composes: accumulate the per-micro-batch gradients locally and
//! call [`ProcessGroup::all_reduce_sum`] once per optimizer step.
//!
//! # One training step
//!
//! ```ignore
//! let mut pg = ProcessGroup::connect(&store_host, store_port, GroupOptions {
//!     backend: Backend::for_device(device), rank, world_size, generation,
//!     timeout: Duration::from_secs(300), gloo_host: Some(advertise_ip),
//! })?;
//! // every step:
//! let batch = gather_global_batch(&mut pg, &q_local, &d_local)?; // [B, V], [B*k, V]
//! let loss = global_loss(&batch.q, &batch.d);                    // same value on every rank
//! loss.backward();
//! let mut grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
//! let stats = pg.all_reduce_sum(&mut grads)?;                   // SUM: see above
//! optimizer.step();
//! metrics.allreduce_seconds(stats.seconds);
//! ```
//!
//! A dead peer turns the next collective into [`DistError::Collective`] (Gloo notices a closed
//! connection at once, otherwise after `GroupOptions::timeout`); the caller then ends the
//! generation, drops the group and forms a new one with the next generation number.

pub(crate) mod ffi;
mod global_batch;
mod group;

pub use global_batch::{gather_global_batch, gather_rows, GatheredRows, GlobalBatch};
pub use group::{AllReduceStats, Backend, GroupOptions, ProcessGroup, Store, DEFAULT_BUCKET_BYTES};

/// Errors of the distributed data plane. Messages from c10d are passed through verbatim.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// Creating or connecting to the TCPStore failed (address in use, master unreachable,
    /// not all ranks connected within the timeout).
    #[error("c10d store at {host}:{port}: {message}")]
    Store { host: String, port: u16, message: String },
    /// Forming the process group failed (rendezvous timeout, transport error, NCCL not built in).
    #[error("forming the {backend:?} process group (rank {rank} of {world_size}, generation {generation}): {message}")]
    Group { backend: Backend, rank: usize, world_size: usize, generation: u64, message: String },
    /// A collective failed or timed out (typically: a peer died).
    #[error("c10d collective failed: {0}")]
    Collective(String),
    /// Ranks passed tensors whose shapes cannot be gathered together.
    #[error("all_gather_varlen: rank {rank} has shape {theirs:?}, this rank {ours:?}; only dim 0 may differ")]
    ShapeMismatch { rank: usize, theirs: Vec<i64>, ours: Vec<i64> },
    /// A caller error: bad rank, root, tensor or string.
    #[error("{0}")]
    InvalidArgument(String),
    /// A tensor operation around a collective (flattening, copying back) failed.
    #[error("tensor operation: {0}")]
    Torch(#[from] tch::TchError),
}
