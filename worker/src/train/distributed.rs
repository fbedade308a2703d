//! The data-parallel step: each rank embeds its slice of the global batch, the embeddings are
//! gathered so the loss (in-batch negatives, FLOPS regularizers) is the *global* batch's, each
//! rank back-propagates that loss through its own rows only, and the gradients are SUMMED across
//! ranks (see `crate::dist` for why the sum, not the mean, is the global-batch gradient).
//!
//! Layout: [`Trainer::embed`] returns candidates column-major (all positives, then each negative
//! column), while [`gather_global_batch`] concatenates ranks row-wise. So local candidates are
//! turned row-major (query `i`'s `k` candidates together) before the gather and the global result
//! is turned column-major again, giving exactly the tensor a single process would build for the
//! same global batch.

use splade_common::data::Example;
use tch::{Kind, Tensor};

use super::{fill_loss_stats, other, StepStats, TrainError, Trainer};
use crate::dist::{gather_global_batch, AllReduceStats, ProcessGroup};

/// `[k·b, V]` column-major (positives, then each negative column) → `[b·k, V]` row-major.
fn col_to_row(d: &Tensor, k: i64) -> Tensor {
    let s = d.size();
    let b = s[0] / k;
    d.view([k, b, s[1]]).transpose(0, 1).reshape([b * k, s[1]])
}

/// Inverse of [`col_to_row`].
fn row_to_col(d: &Tensor, k: i64) -> Tensor {
    let s = d.size();
    let b = s[0] / k;
    d.view([b, k, s[1]]).transpose(0, 1).reshape([k * b, s[1]])
}

impl Trainer {
    /// Forward + backward of the global-batch loss for this rank's rows `local` (a contiguous
    /// slice of `global`, as `slice_for_rank` gives it), then the SUM all-reduce of the
    /// gradients. Afterwards every rank holds the gradient of the global-batch loss in its
    /// parameters, identical on all ranks; call [`Trainer::apply_gradients`] next.
    ///
    /// With `micro_batches > 1` this rank embeds its rows in micro-batches without a graph,
    /// takes the global loss on the cached embeddings, then re-runs each micro-batch with a graph
    /// and back-propagates the cached embedding gradients (gradient cache): the result is exact
    /// and independent of how the global batch is split into ranks and micro-batches.
    ///
    /// Stats: loss values are the global batch's (the same on every rank); `samples` is the
    /// global batch size; `tokens` counts this rank's tokens only.
    pub fn forward_backward_distributed(
        &self,
        global: &[&Example],
        local: &[&Example],
        pg: &mut ProcessGroup,
    ) -> Result<(StepStats, AllReduceStats), TrainError> {
        self.forward_backward_slice(local, Self::labels(global)?, global.len(), pg)
    }

    /// [`Trainer::forward_backward_distributed`] for a rank that holds only its own rows: `labels` are the
    /// whole global batch's (`[global_len, width]`, as [`Trainer::labels`] builds them from all rows) and
    /// `global_len` its size.
    pub fn forward_backward_slice(
        &self,
        local: &[&Example],
        labels: Option<Tensor>,
        global_len: usize,
        pg: &mut ProcessGroup,
    ) -> Result<(StepStats, AllReduceStats), TrainError> {
        if local.is_empty() {
            return Err(other("this rank's slice of the global batch is empty; lower the world size or raise the batch size"));
        }
        let step = self.state.global_step;
        let total = self.state.total_steps;
        let k = local[0].negatives.len() as i64 + 1;
        let mut stats = StepStats { step: step + 1, samples: global_len, ..Default::default() };
        let dist = |e: crate::dist::DistError| other(format!("data-parallel step {}: {e}", step + 1));
        // Micro-batch indices are global (rank r's first micro-batch is r·micro_batches), so
        // dropout masks differ between ranks and match a single process running all of them.
        let micro0 = pg.rank() * self.micro_batches.max(1);
        if self.micro_batches <= 1 {
            self.seed_for(micro0);
            let (q, d, tokens) = self.embed(local, true)?;
            stats.tokens = tokens;
            let g = gather_global_batch(pg, &q, &col_to_row(&d, k)).map_err(dist)?;
            let d_all = row_to_col(&g.d, k);
            let parts = self.compute_loss(&g.q, &d_all, labels.as_ref(), step, total)?;
            self.backward(&parts.total);
            fill_loss_stats(&mut stats, &parts, &g.q, &d_all);
        } else {
            let mb = local.len().div_ceil(self.micro_batches);
            let chunks: Vec<&[&Example]> = local.chunks(mb).collect();
            let mut qs = Vec::new();
            let mut ds = Vec::new();
            tch::no_grad(|| -> Result<(), TrainError> {
                for (i, c) in chunks.iter().enumerate() {
                    self.seed_for(micro0 + i);
                    let (q, d, tokens) = self.embed(c, true)?;
                    stats.tokens += tokens;
                    qs.push(q);
                    ds.push(col_to_row(&d, k));
                }
                Ok(())
            })?;
            // Row-major local candidates: micro-batches simply concatenate.
            let q_leaf = Tensor::cat(&qs, 0).detach().set_requires_grad(true);
            let d_leaf = Tensor::cat(&ds, 0).detach().set_requires_grad(true);
            let g = gather_global_batch(pg, &q_leaf, &d_leaf).map_err(dist)?;
            let d_all = row_to_col(&g.d, k);
            let parts = self.compute_loss(&g.q, &d_all, labels.as_ref(), step, total)?;
            self.backward(&parts.total);
            fill_loss_stats(&mut stats, &parts, &g.q, &d_all);
            let gq = q_leaf.grad();
            let gd = d_leaf.grad();
            let mut offset = 0i64;
            for (i, c) in chunks.iter().enumerate() {
                self.seed_for(micro0 + i);
                let (q, d, _) = self.embed(c, true)?;
                let len = c.len() as i64;
                let gq_i = gq.narrow(0, offset, len);
                let gd_i = row_to_col(&gd.narrow(0, offset * k, len * k), k);
                let surrogate = (q * gq_i).sum(Kind::Float) + (d * gd_i).sum(Kind::Float);
                surrogate.backward();
                offset += len;
            }
        }
        // Parameters outside the graph have no gradient on any rank (same graph everywhere), so
        // skipping them keeps the ranks' tensor lists identical. With fp16 these are still the
        // scaled gradients: they are unscaled and checked for inf/NaN after the all-reduce
        // (`apply_gradients`), so every rank sees the same sums and skips the same steps.
        self.scale_replicated_grads(pg.world_size());
        let mut grads: Vec<Tensor> = self.opt.params().iter().map(Tensor::grad).filter(Tensor::defined).collect();
        let ar = pg.all_reduce_sum(&mut grads).map_err(dist)?;
        // This rank's documents only (windowing cost is not all-reduced).
        stats.windows_per_doc = self.window_cost.take();
        Ok((stats, ar))
    }
}
