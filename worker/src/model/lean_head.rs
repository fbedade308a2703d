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

use super::pooling::PoolingConfig;

/// Upper bound on elements of one logits chunk (`tokens × V`): 32 Mi floats = 128 MiB.
const CHUNK_ELEMENTS: i64 = 32 << 20;

/// Max-pooled SPLADE embeddings [B, V]: `activate(max over positions where attention_mask is set of
/// w · t[b, l] + bias)` for the head's transformed hidden states `t` [B, L, H], decoder weight `w`
/// [V, H] and bias [V] (which may hold −inf for ids that never activate). Values equal the dense
/// path's; gradients flow to `t`, `w` and `bias` as through the dense path's `max`.
pub fn max_pooled(t: &Tensor, w: &Tensor, bias: &Tensor, pooling: &PoolingConfig, attention_mask: &Tensor) -> Tensor {
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
        gathered_logits(t, w, &bi, &vi, &li)
    } else {
        winning_logits(t, w, &bi, &vi, &li, b, v)
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
/// One sampled dense-dense product over the whole batch (`W · T_flatᵀ` with T_flat = `t` as
/// [B·L, H], evaluated only at the pattern (v, b·L + l)) instead of gathering `t[b, l]` and `w[v]` per
/// entry: autograd then saves `t` and `W` themselves, not two `[active entries, hidden]` copies. Early
/// in training most entries are active, and those copies outgrew sentence-transformers' dense head
/// (MiniLM, batch 32 × 256 tokens: 13.7 GB vs 10.2 GB). Its backward is two sparse × dense products
/// with one entry per active pair. One product per row instead cost 3.1 s of backward at that size,
/// mostly filling and adding 32 dense `[V, H]` gradients; the single product 0.33 s.
fn winning_logits(t: &Tensor, w: &Tensor, bi: &Tensor, vi: &Tensor, li: &Tensor, b: i64, v: i64) -> Tensor {
    let dev = t.device();
    let (l, h) = (t.size()[1], t.size()[2]);
    // CSR over [V, B·L] needs the entries ordered by vocabulary id, then column; sorting by
    // v·B + b does it (columns b·L + l grow with b inside one id, and each (b, v) occurs once).
    let order = (vi * b + bi).argsort(0, false);
    let (bi, vi, li) = (bi.index_select(0, &order), vi.index_select(0, &order), li.index_select(0, &order));
    let col = &bi * l + &li;
    let crow = Tensor::cat(&[Tensor::zeros([1], (Kind::Int64, dev)), vi.bincount(None::<Tensor>, v).cumsum(0, Kind::Int64)], 0);
    let n = col.size()[0];
    let pattern = Tensor::sparse_csr_tensor_crow_col_value_size(&crow, &col, &Tensor::zeros([n], (Kind::Float, dev)), [v, b * l], (Kind::Float, dev));
    let t_flat = t.to_kind(Kind::Float).reshape([b * l, h]);
    let sampled = pattern.sparse_sampled_addmm(&w.to_kind(Kind::Float), &t_flat.tr()).values();
    // Back to the callers' (row, id) order.
    sampled.index_select(0, &order.argsort(0, false))
}

/// Running max over the real (unmasked) tokens of each row of the logits, and the position of each max,
/// in fp32: the screened path ([`screened_running_max`]) where a bf16 GEMM is fast and exactness can be
/// bounded, else the plain fp32 path ([`exact_running_max`]). Both give the fp32 dense head's values.
fn running_max(t: &Tensor, w: &Tensor, bias: &Tensor, mask: &Tensor, b: i64, l: i64, v: i64) -> (Tensor, Tensor) {
    let screened = if screening_pays(t) { screened_running_max(t, w, bias, mask, b, v, SCREEN_ELEMENTS, SCREEN_MAX_KEPT) } else { None };
    screened.unwrap_or_else(|| exact_running_max(t, w, bias, mask, b, l, v))
}

/// Whether [`screened_running_max`] is used: fp32 hidden states outside autocast (under autocast the
/// products are bf16 anyway), on a CPU with native bf16 dot-product units (`avx512_bf16` or
/// `amx_bf16`), where a bf16 GEMM runs about 3x faster than fp32. `SPLADE_HEAD_SCREEN=0` turns it off,
/// `=1` forces it on any CPU (it is exact everywhere, only not faster).
fn screening_pays(t: &Tensor) -> bool {
    use std::sync::OnceLock;
    static CPU: OnceLock<bool> = OnceLock::new();
    if t.device() != tch::Device::Cpu || t.kind() != Kind::Float || crate::amp::Autocast::is_enabled(tch::Device::Cpu) {
        return false;
    }
    *CPU.get_or_init(|| match std::env::var("SPLADE_HEAD_SCREEN").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
            c.lines().filter(|l| l.starts_with("flags")).take(1).any(|l| {
                l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16")
            })
        }),
    })
}

/// Row by row, the logits are computed as `W · h_bᵀ` ([V, n_b], n_b = the row's real tokens) and reduced
/// over their last, contiguous axis. Compared with one `[B, L, V]` product reduced over the middle axis
/// this skips padding, the mask multiply and the per-position bias add (max(x + b) = max(x) + b), and
/// measured 3.4x faster than sentence-transformers' dense head on 2 CPU cores (B 32, L 256, V 30522).
/// Padding positions never win: the dense path scores them 0, which only matters when every real logit
/// is ≤ 0, and then the activation is 0 either way and the entry gets no gradient.
fn exact_running_max(t: &Tensor, w: &Tensor, bias: &Tensor, mask: &Tensor, b: i64, l: i64, v: i64) -> (Tensor, Tensor) {
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


/// Bound on `|bf16 GEMM logit − exact logit| / (‖w_v‖·‖h_t‖)`. Rounding `w` and `h` to bf16 (unit
/// roundoff u = 2⁻⁸) moves each product by at most (2u + u²)·|w_i h_i|; fp32 accumulation of
/// H ≤ 1024 exact bf16 products adds at most H·2⁻²⁴·Σ|w_i h_i| ≤ 6.1e-5·Σ (H up to 60 000 still fits); rounding the result to bf16
/// adds u·|logit|. With Σ|w_i h_i| ≤ ‖w‖‖h‖ (Cauchy–Schwarz) the total is below 3u + 3u² + 1.3e-4
/// ≈ 0.0119, and 2⁻⁶ = 0.0156 leaves a third to spare.
const SCREEN_BOUND: f64 = 1.0 / 64.0;

/// Rows share one screening product only while their tokens add up to at most this: short texts
/// (queries) need products wide enough to run efficiently, long ones reduce fastest alone.
const GROUP_TOKENS: i64 = 128;

/// Share of (row, id) pairs the first screened group may keep for screening to go on; above it the
/// exact path runs instead (a fresh MLM head keeps all of them).
const SCREEN_MAX_KEPT: f64 = 0.25;

/// Upper bound on one bf16 screening chunk (`tokens × V` bf16 elements): 16 Mi elements = 32 MiB, reused.
const SCREEN_ELEMENTS: i64 = 16 << 20;

/// [`exact_running_max`]'s result, computed in two passes:
/// 1. a bf16 GEMM of all real tokens (several rows per product), reduced to `am[b, v]`, the max of the
///    approximate logits of row `b`;
/// 2. per row, the exact fp32 logits of the vocabulary ids that can still be positive
///    (`am + ε_v + bias > 0`, ε_v = [`SCREEN_BOUND`]·‖w_v‖·max_t ‖h_t‖ bounds the bf16 error), reduced
///    as the exact path does.
///
/// Every id left out has a true max ≤ its bound ≤ 0, so its activation is 0 and it gets no gradient,
/// exactly as in the dense head; its `best` is that (non-positive) bound and its position 0. A trained
/// SPLADE model keeps a few hundred of the 30522 ids per text, so pass 2 is small and the whole head
/// costs about the bf16 GEMM. Hidden states with inf/NaN make the bound NaN, and NaN ids stay in pass
/// 2, so they surface as the dense path's would.
///
/// `None` when the first group of rows keeps more than `max_kept` of its (row, id) pairs: screening would
/// cost more than it saves, and the caller runs the exact path.
#[allow(clippy::too_many_arguments)]
fn screened_running_max(
    t: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    mask: &Tensor,
    b: i64,
    v: i64,
    budget: i64,
    max_kept: f64,
) -> Option<(Tensor, Tensor)> {
    let dev = t.device();
    let hdim = t.size()[2];
    let lens: Vec<i64> = Vec::<i64>::try_from(&mask.to_kind(Kind::Int64).sum_dim_intlist([1i64].as_slice(), false, Kind::Int64).to_device(tch::Device::Cpu))
        .expect("int64 row lengths");
    let real = mask.to_kind(Kind::Bool).reshape([-1]).nonzero().squeeze_dim(1);
    // Positions within each row of every real token, in row order (what `pos` reports).
    let within = real.remainder(t.size()[1]);
    let h_all = t.reshape([-1, hdim]).index_select(0, &real);
    let total = h_all.size()[0];
    let best = Tensor::zeros([b, v], (Kind::Float, dev));
    let pos = Tensor::zeros([b, v], (Kind::Int64, dev));
    if total == 0 {
        return Some((best, pos));
    }
    let wb = w.to_kind(Kind::BFloat16);
    let hb = h_all.to_kind(Kind::BFloat16);
    let w_norm = w.norm_scalaropt_dim(2, [1i64].as_slice(), false);
    let bias = bias.to_kind(Kind::Float);
    let chunk = (budget / v.max(1)).max(1);
    let buf = Tensor::empty([chunk.min(total) * v], (Kind::BFloat16, dev));
    // Pass 1: approximate row maxima, over groups of whole rows (a row longer than a chunk is split).
    let am = Tensor::full([b, v], f64::NEG_INFINITY, (Kind::Float, dev));
    let starts: Vec<i64> = lens.iter().scan(0, |s, &n| { let x = *s; *s += n; Some(x) }).collect();
    let h_norm = h_all.norm_scalaropt_dim(2, [1i64].as_slice(), false);
    let bound_of = |r: usize| -> Tensor {
        let hn = h_norm.narrow(0, starts[r], lens[r]).max();
        let a = am.get(r as i64);
        // A little absolute slack for the fp32 rounding of the sum itself.
        let bound = &a + &w_norm * &hn * SCREEN_BOUND + &bias;
        &bound + (a.abs() + bias.abs()) * 1e-6
    };
    let mut row = 0usize;
    let mut checked = false;
    while row < lens.len() {
        if lens[row] == 0 {
            row += 1;
            continue;
        }
        // Rows [row, end) fit one chunk, or row alone is split into pieces of `chunk` tokens.
        let mut end = row + 1;
        let mut n = lens[row];
        while end < lens.len() && n + lens[end] <= chunk.min(GROUP_TOKENS) {
            n += lens[end];
            end += 1;
        }
        let first = starts[row];
        let mut done = 0;
        while done < n {
            let len = (n - done).min(chunk);
            // A row alone in its product (a long text) is reduced as vocabulary × tokens over the last,
            // contiguous axis: 1.6x faster than tokens × vocabulary over the first (bf16, one thread,
            // 256 tokens). Several short rows share tokens × vocabulary, where each row is a contiguous
            // block reduced along the vocabulary: strided blocks of ~15 tokens reduced over the last
            // axis took half of query encoding.
            let alone = end - row == 1;
            let h_piece = hb.narrow(0, first + done, len);
            let out = if alone {
                let out = buf.narrow(0, 0, len * v).view([v, len]);
                let _ = wb.mm_out(&out, &h_piece.tr());
                out
            } else {
                let out = buf.narrow(0, 0, len * v).view([len, v]);
                let _ = h_piece.mm_out(&out, &wb.tr());
                out
            };
            for r in row..end {
                let (s, e) = (starts[r].max(first + done), (starts[r] + lens[r]).min(first + done + len));
                if s >= e {
                    continue;
                }
                let m = if alone {
                    out.narrow(1, s - first - done, e - s).amax([1i64].as_slice(), false)
                } else {
                    out.narrow(0, s - first - done, e - s).amax([0i64].as_slice(), false)
                }
                .to_kind(Kind::Float);
                let mut dst = am.get(r as i64);
                let _ = dst.copy_(&dst.maximum(&m));
            }
            done += len;
        }
        if !checked {
            // A fresh MLM head (MiniLM with a tied decoder) has nearly every id positive: screening
            // then saves nothing, so the first group decides, from the inputs alone (resume stays
            // bit-exact), whether the rest is worth screening.
            checked = true;
            let kept: i64 = (row..end).filter(|&r| lens[r] > 0).map(|r| i64::try_from(bound_of(r).le(0.0).logical_not().sum(Kind::Int64)).unwrap_or(0)).sum();
            let rows = (row..end).filter(|&r| lens[r] > 0).count() as i64;
            if kept as f64 > max_kept * (rows * v) as f64 {
                return None;
            }
        }
        row = end;
    }
    // Pass 2: exact logits of the ids that may be positive.
    for (r, &n) in lens.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let h_row = h_all.narrow(0, starts[r], n);
        let bound = bound_of(r);
        let keep = bound.le(0.0).logical_not().nonzero().squeeze_dim(1);
        let mut best_row = best.get(r as i64);
        let _ = best_row.copy_(&bound.clamp_max(0.0));
        if keep.size()[0] == 0 {
            continue;
        }
        let logits = w.index_select(0, &keep).mm(&h_row.tr()).to_kind(Kind::Float);
        let (mx, ix) = logits.max_dim(1, false);
        let _ = best_row.index_copy_(0, &keep, &(mx + bias.index_select(0, &keep)));
        let won = within.narrow(0, starts[r], n).index_select(0, &ix);
        let _ = pos.get(r as i64).index_copy_(0, &keep, &won);
    }
    Some((best, pos))
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
    /// The screened running max equals the exact one wherever the activation is positive (value and
    /// winning position), and is ≤ 0 wherever the exact max is: with padding, an empty row, rows split
    /// across screening chunks, several rows per chunk, and many maxima within rounding of zero.
    #[test]
    fn screened_running_max_equals_exact() {
        tch::manual_seed(11);
        let (b, l, h, v) = (6i64, 40i64, 32i64, 300i64);
        let opts = (Kind::Float, tch::Device::Cpu);
        let t = Tensor::randn([b, l, h], opts);
        let w = Tensor::randn([v, h], opts) * 0.3;
        let lens = [40i64, 3, 0, 17, 40, 1];
        let mask = Tensor::arange(l, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0).lt_tensor(&Tensor::from_slice(&lens).unsqueeze(1)).to_kind(Kind::Int64);
        let (exact0, _) = exact_running_max(&t, &w, &Tensor::zeros([v], opts), &mask, b, l, v);
        // Bias = −(row 0's max) for half the ids, plus a hair: those maxima sit on the boundary.
        let hair = Tensor::randn([v], opts) * 1e-4;
        let half = Tensor::arange(v, (Kind::Int64, tch::Device::Cpu)).remainder(2).eq(0);
        let bias = (-exact0.get(0) + hair).where_self(&half, &(Tensor::randn([v], opts) * 2.0));
        let (eb, ep) = exact_running_max(&t, &w, &bias, &mask, b, l, v);
        for budget in [7 * v, 20 * v, 1000 * v] {
            let (sb, sp) = screened_running_max(&t, &w, &bias, &mask, b, v, budget, 1.0).expect("max_kept 1 always screens");
            let pos = eb.gt(0.0);
            let n_pos = i64::try_from(pos.sum(Kind::Int64)).unwrap();
            assert!(n_pos > 50 && n_pos < 4 * v, "want a mixed pattern, got {n_pos} positive maxima");
            let diff = f64::try_from((&sb - &eb).abs().masked_select(&pos).max()).unwrap();
            assert!(diff <= 1e-6, "budget {budget}: positive maxima differ by {diff:e}");
            assert!(sp.masked_select(&pos).equal(&ep.masked_select(&pos)), "budget {budget}: winning positions differ");
            assert!(bool::try_from(sb.masked_select(&pos.logical_not()).le(0.0).all()).unwrap(), "budget {budget}: a non-positive max came out positive");
            // The empty row has nothing.
            assert!(bool::try_from(sb.get(2).le(0.0).all()).unwrap());
        }
    }

    /// With every id positive (a fresh MLM head) screening gives up after the first group.
    #[test]
    fn screening_declines_when_nearly_everything_is_positive() {
        tch::manual_seed(5);
        let (b, l, h, v) = (3i64, 10i64, 16i64, 200i64);
        let opts = (Kind::Float, tch::Device::Cpu);
        let t = Tensor::randn([b, l, h], opts);
        let w = Tensor::randn([v, h], opts);
        let bias = Tensor::full([v], 100.0, opts);
        let mask = Tensor::ones([b, l], (Kind::Int64, tch::Device::Cpu));
        assert!(screened_running_max(&t, &w, &bias, &mask, b, v, SCREEN_ELEMENTS, SCREEN_MAX_KEPT).is_none());
        assert!(screened_running_max(&t, &w, &(bias - 200.0), &mask, b, v, SCREEN_ELEMENTS, SCREEN_MAX_KEPT).is_some());
    }
}
