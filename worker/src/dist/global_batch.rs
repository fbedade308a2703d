//! Global-batch embeddings for the loss: all ranks' rows, this rank's own rows differentiable.

use std::ops::Range;

use tch::Tensor;

use super::{DistError, ProcessGroup};

/// All ranks' rows of a tensor, concatenated in rank order.
pub struct GatheredRows {
    /// `[Σ_r n_r, …]`. Rows `local_rows` are the caller's tensor itself (autograd flows through
    /// them); all other rows are detached copies of the other ranks' tensors.
    pub global: Tensor,
    /// Where this rank's rows sit in `global`.
    pub local_rows: Range<i64>,
}

/// Gathers `local` (`[n_r, …]`, `n_r` may differ between ranks) from every rank and splices the
/// live local tensor back in at this rank's position, so a loss over `global` back-propagates
/// into this rank's graph only through its own rows. See the module docs for why the gradients
/// are then summed across ranks.
pub fn gather_rows(pg: &mut ProcessGroup, local: &Tensor) -> Result<GatheredRows, DistError> {
    let gathered = pg.all_gather_varlen(local)?;
    let rank = pg.rank();
    let start: i64 = gathered[..rank].iter().map(|t| t.size()[0]).sum();
    let n = local.size()[0];
    let pieces: Vec<Tensor> =
        gathered.into_iter().enumerate().map(|(r, t)| if r == rank { local.shallow_clone() } else { t }).collect();
    let global = Tensor::f_cat(&pieces, 0)?;
    Ok(GatheredRows { global, local_rows: start..start + n })
}

/// Query and document embeddings of the whole global batch.
pub struct GlobalBatch {
    /// `[B, V]`, B = Σ_r b_r queries; rows `q_rows` carry this rank's autograd graph.
    pub q: Tensor,
    /// `[D, V]`, D = Σ_r d_r documents; rows `d_rows` carry this rank's autograd graph.
    pub d: Tensor,
    pub q_rows: Range<i64>,
    pub d_rows: Range<i64>,
}

/// Builds the global batch from this rank's query embeddings `q_local` (`[b, V]`) and document
/// embeddings `d_local` (`[b·k, V]`, query `i`'s `k` documents at rows `i·k..(i+1)·k`). Because
/// ranks are concatenated in order and each keeps `k` documents per query, the layout carries
/// over: global query `i`'s documents are global rows `i·k..(i+1)·k` whenever every rank uses the
/// same `k`. The loss computed from the result must be the global one (normalised by the global
/// batch), and the gradients must then be combined with [`ProcessGroup::all_reduce_sum`].
pub fn gather_global_batch(pg: &mut ProcessGroup, q_local: &Tensor, d_local: &Tensor) -> Result<GlobalBatch, DistError> {
    let q = gather_rows(pg, q_local)?;
    let d = gather_rows(pg, d_local)?;
    Ok(GlobalBatch { q: q.global, d: d.global, q_rows: q.local_rows, d_rows: d.local_rows })
}
