//! Max-pooled SPLADE head without the `[batch, seq, vocab]` logits tensor.
//!
//! The forward pass walks the sequence in chunks under `no_grad`, keeping per (row, vocab id) the
//! running max of the masked logits and the position that won. Because `log1p(relu(·))` is
//! monotonic, pooling the activations equals activating the pooled logit, so only the winners
//! matter. For the backward pass the winning logits of the active entries (max > 0; everything
//! else has zero gradient through `relu`) are recomputed differentiably as a row-wise dot product of
//! the transformed hidden state at `argmax[b, v]` with decoder row `v`: autograd turns that into an
//! index-add over the active entries instead of a dense `[B, L, V]` matmul. Values come from the
//! chunked forward (so they equal the dense path's), gradients from the recomputation (so they
//! equal the dense path's gradients of `max`).
//!
//! Built from ATen ops only, so the same code runs on CPU and CUDA. The running max is kept in
//! fp32 whatever the autocast dtype.

use tch::{Kind, Tensor};

use super::bert::BertForMaskedLm;
use super::pooling::PoolingConfig;

/// Upper bound on elements of one logits chunk (`B × chunk × V`): 32 Mi floats = 128 MiB.
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
    let h_sel = t.index(&[Some(&bi), Some(&li)]).to_kind(Kind::Float);
    let w_sel = w.index_select(0, &vi).to_kind(Kind::Float);
    let logit = (h_sel * w_sel).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) + bias.index_select(0, &vi).to_kind(Kind::Float);
    // Value from the chunked forward, gradient from the recomputed logit.
    let logit = best.index(&[Some(&bi), Some(&vi)]) + (&logit - logit.detach());
    let values = pooling.activate(&logit);
    Tensor::zeros([b, v], (Kind::Float, t.device())).index_put(&[Some(bi), Some(vi)], &values, false)
}

/// Running max over the sequence of the masked logits and the position of each max, in fp32.
fn running_max(t: &Tensor, w: &Tensor, bias: &Tensor, mask: &Tensor, b: i64, l: i64, v: i64) -> (Tensor, Tensor) {
    let dev = t.device();
    let chunk = (CHUNK_ELEMENTS / (b * v).max(1)).clamp(1, l.max(1));
    let wt = w.tr();
    let maskf = mask.to_kind(Kind::Float).unsqueeze(-1);
    let mut best = Tensor::full([b, v], f64::NEG_INFINITY, (Kind::Float, dev));
    let mut pos = Tensor::zeros([b, v], (Kind::Int64, dev));
    let mut start = 0;
    while start < l {
        let len = chunk.min(l - start);
        // Padding positions score 0, exactly as SpladePooling multiplies logits by the mask.
        let logits = (t.narrow(1, start, len).matmul(&wt) + bias).to_kind(Kind::Float) * maskf.narrow(1, start, len);
        let (cmax, cidx) = logits.max_dim(1, false);
        let better = cmax.gt_tensor(&best);
        best = best.maximum(&cmax);
        pos = pos.where_self(&better.logical_not(), &(cidx + start));
        start += len;
    }
    (best, pos)
}
