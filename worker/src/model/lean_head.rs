//! Max-pooled SPLADE head without the `[batch, seq, vocab]` logits tensor.
//!
//! The forward pass walks the batch row by row (and long rows in chunks) under `no_grad`, keeping per
//! (row, vocab id) the max of the logits over the row's real tokens and the position that won. Because `log1p(relu(·))` is
//! monotonic, pooling the activations equals activating the pooled logit, so only the winners
//! matter. For the backward pass the winning logits of the active entries (max > 0; everything
//! else has zero gradient through `relu`) are recomputed differentiably as a sampled dense-dense
//! product: `W · t_bᵀ` evaluated only at (v, argmax[b, v]), so the backward is a sparse product over
//! the active entries instead of a dense `[B, L, V]` matmul. Values come from the forward (so they
//! equal the dense path's), gradients from the recomputation (so they equal the dense path's
//! gradients of `max`).
//!
//! Built from ATen ops only, so the same code runs on CPU and CUDA. The running max is kept in
//! fp32 whatever the autocast dtype.

use tch::{Kind, Tensor};

use super::bert::BertForMaskedLm;
use super::pooling::PoolingConfig;

/// Upper bound on elements of one logits chunk (`tokens × V`): 32 Mi floats = 128 MiB.
const CHUNK_ELEMENTS: i64 = 32 << 20;

/// Max-pooled SPLADE embeddings [B, V] from final hidden states `hidden` [B, L, H].
pub fn max_pooled(mlm: &BertForMaskedLm, pooling: &PoolingConfig, hidden: &Tensor, attention_mask: &Tensor) -> Tensor {
    let t = mlm.head.transform(hidden);
    let w = mlm.head.decoder_weight(mlm.word_embeddings());
    let bias = mlm.head.bias();
    let (b, l, _h) = t.size3().expect("hidden states are [batch, seq, hidden]");
    let v = w.size()[0];
    let (best, argmax) = tch::no_grad(|| running_max(&t.detach(), &w.detach(), &bias.detach(), attention_mask, b, l, v));
    let needs_grad = t.requires_grad() || w.requires_grad() || bias.requires_grad();
    if !needs_grad {
        return pooling.activate(&best);
    }
    let active = best.gt(0.0).nonzero();
    if active.size()[0] == 0 {
        // Nothing is positive: the embedding is all zeros and no gradient flows, as in the dense path.
        return Tensor::zeros([b, v], (Kind::Float, t.device())) + (t.sum(Kind::Float) * 0.0);
    }
    let bi = active.select(1, 0);
    let vi = active.select(1, 1);
    let li = argmax.index(&[Some(&bi), Some(&vi)]);
    let h = t.size()[2];
    let logit = if active.size()[0] * h <= GATHER_ELEMENTS {
        gathered_logits(&t, &w, &bi, &vi, &li)
    } else {
        winning_logits(&t, &w, &bi, &vi, &li, b, v)
    } + bias.index_select(0, &vi).to_kind(Kind::Float);
    // Value from the chunked forward, gradient from the recomputed logit.
    let logit = best.index(&[Some(&bi), Some(&vi)]) + (&logit - logit.detach());
    let values = pooling.activate(&logit);
    Tensor::zeros([b, v], (Kind::Float, t.device())).index_put(&[Some(bi), Some(vi)], &values, false)
}

/// Largest `[active entries, hidden]` gather (elements) the backward recomputation may save per side
/// (64 Mi floats = 256 MiB); above it, [`winning_logits`]' sampled product, which saves nothing that
/// grows with the entries but costs a per-row loop. Trained SPLADE models activate a few hundred
/// entries per text and stay far below; a fresh MLM head activates most of the vocabulary.
const GATHER_ELEMENTS: i64 = 64 << 20;

/// [`winning_logits`] by gathering `t[b, l]` and `w[v]` per active entry: fastest when entries are few.
fn gathered_logits(t: &Tensor, w: &Tensor, bi: &Tensor, vi: &Tensor, li: &Tensor) -> Tensor {
    let h_sel = t.index(&[Some(bi), Some(li)]).to_kind(Kind::Float);
    let w_sel = w.index_select(0, vi).to_kind(Kind::Float);
    (h_sel * w_sel).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
}

/// The logits `t[b, l] · w[v]` of the active entries (`bi`, `vi`, `li`: row, vocabulary id, winning
/// position; sorted by row, then vocabulary id, as `nonzero` returns them), differentiable in `t` and `w`.
///
/// Per row, a sampled dense-dense product (`W · t_bᵀ` evaluated only at the pattern (v, l)) instead of
/// gathering `t[b, l]` and `w[v]` per entry: autograd then saves `t` and `W` themselves, not two
/// `[active entries, hidden]` copies. Early in training most entries are active, and those copies
/// outgrew sentence-transformers' dense head (MiniLM, batch 32 × 256 tokens: 13.7 GB vs 10.2 GB; with
/// this product 5.4 GB).
fn winning_logits(t: &Tensor, w: &Tensor, bi: &Tensor, vi: &Tensor, li: &Tensor, b: i64, v: i64) -> Tensor {
    let dev = t.device();
    let (l, _h) = (t.size()[1], t.size()[2]);
    let counts = bi.bincount(None::<Tensor>, b).to_device(tch::Device::Cpu);
    let counts: Vec<i64> = Vec::<i64>::try_from(&counts).expect("bincount gives int64 counts");
    let w = w.to_kind(Kind::Float);
    let mut parts = Vec::with_capacity(b as usize);
    let mut start = 0;
    for (row, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let (v_row, l_row) = (vi.narrow(0, start, n), li.narrow(0, start, n));
        // CSR pattern over [V, L]: one entry in each active vocabulary row, at its winning position.
        let rows_hit = Tensor::zeros([v], (Kind::Int64, dev)).index_fill(0, &v_row, 1);
        let crow = Tensor::cat(&[Tensor::zeros([1], (Kind::Int64, dev)), rows_hit.cumsum(0, Kind::Int64)], 0);
        let pattern = Tensor::sparse_csr_tensor_crow_col_value_size(
            &crow,
            &l_row,
            &Tensor::zeros([n], (Kind::Float, dev)),
            [v, l],
            (Kind::Float, dev),
        );
        let t_row = t.get(row as i64).to_kind(Kind::Float);
        parts.push(pattern.sparse_sampled_addmm(&w, &t_row.tr()).values());
        start += n;
    }
    Tensor::cat(&parts, 0)
}

/// Running max over the real (unmasked) tokens of each row of the logits, and the position of each max,
/// in fp32.
///
/// Row by row, the logits are computed as `W · h_bᵀ` ([V, n_b], n_b = the row's real tokens) and reduced
/// over their last, contiguous axis. Compared with one `[B, L, V]` product reduced over the middle axis
/// this skips padding, the mask multiply and the per-position bias add (max(x + b) = max(x) + b), and
/// measured 3.4x faster than sentence-transformers' dense head on 2 CPU cores (B 32, L 256, V 30522).
/// Padding positions never win: the dense path scores them 0, which only matters when every real logit
/// is ≤ 0, and then the activation is 0 either way and the entry gets no gradient.
fn running_max(t: &Tensor, w: &Tensor, bias: &Tensor, mask: &Tensor, b: i64, l: i64, v: i64) -> (Tensor, Tensor) {
    let dev = t.device();
    let max_tokens = (CHUNK_ELEMENTS / v.max(1)).clamp(1, l.max(1));
    let mask_cpu = mask.to_device(tch::Device::Cpu).to_kind(Kind::Bool);
    let best = Tensor::zeros([b, v], (Kind::Float, dev));
    let pos = Tensor::zeros([b, v], (Kind::Int64, dev));
    for row in 0..b {
        let real = mask_cpu.get(row).nonzero().squeeze_dim(1);
        let n = real.size()[0];
        if n == 0 {
            continue;
        }
        let real = real.to_device(dev);
        let h = t.get(row).index_select(0, &real);
        let (mut row_best, mut row_pos) = (None::<Tensor>, None::<Tensor>);
        let mut start = 0;
        while start < n {
            let len = max_tokens.min(n - start);
            let logits = w.mm(&h.narrow(0, start, len).tr()).to_kind(Kind::Float);
            let (cmax, cidx) = logits.max_dim(1, false);
            let cidx = cidx + start;
            (row_best, row_pos) = match (row_best, row_pos) {
                (Some(bb), Some(pp)) => {
                    let better = cmax.gt_tensor(&bb);
                    (Some(bb.maximum(&cmax)), Some(cidx.where_self(&better, &pp)))
                }
                _ => (Some(cmax), Some(cidx)),
            };
            start += len;
        }
        let (row_best, row_pos) = (row_best.expect("n > 0"), row_pos.expect("n > 0"));
        best.get(row).copy_(&(row_best + bias.to_kind(Kind::Float)));
        pos.get(row).copy_(&real.index_select(0, &row_pos));
    }
    (best, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two recomputations give the same logits and the same gradients for `t` and `w`.
    #[test]
    fn sampled_product_equals_gather() {
        tch::manual_seed(7);
        let (b, l, h, v) = (3, 9, 16, 50);
        let run = |sampled: bool| {
            let t = Tensor::randn([b, l, h], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
            let w = Tensor::randn([v, h], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
            (t, w, sampled)
        };
        let (t1, w1, _) = run(false);
        let (t2, w2) = (t1.detach().copy().set_requires_grad(true), w1.detach().copy().set_requires_grad(true));
        // A mixed pattern of entries (random logits' maxima are nearly all positive, so a higher cut),
        // sorted as nonzero returns them.
        let logits = t1.detach().matmul(&w1.detach().tr());
        let (best, argmax) = logits.max_dim(1, false);
        let active = best.gt(6.0).nonzero();
        let (bi, vi) = (active.select(1, 0), active.select(1, 1));
        let li = argmax.index(&[Some(&bi), Some(&vi)]);
        assert!(active.size()[0] > 10 && active.size()[0] < b * v, "want a mixed pattern");
        let g = gathered_logits(&t1, &w1, &bi, &vi, &li);
        let s = winning_logits(&t2, &w2, &bi, &vi, &li, b, v);
        assert!(g.allclose(&s, 1e-5, 1e-6, false), "logits differ");
        assert!(g.allclose(&best.index(&[Some(&bi), Some(&vi)]), 1e-5, 1e-5, false), "not the winning logits");
        let weights = Tensor::randn([active.size()[0]], (Kind::Float, tch::Device::Cpu));
        (&g * &weights).sum(Kind::Float).backward();
        (&s * &weights).sum(Kind::Float).backward();
        assert!(t1.grad().allclose(&t2.grad(), 1e-5, 1e-6, false), "t gradients differ");
        assert!(w1.grad().allclose(&w2.grad(), 1e-5, 1e-6, false), "w gradients differ");
    }
}
