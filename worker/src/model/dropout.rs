//! Dropout for training on the CPU with a cheap mask generator.
//!
//! `torch.nn.functional.dropout` on the CPU draws its mask with `bernoulli_` from libtorch's
//! Mersenne twister: 194 ms for the 25 M attention probabilities of one MiniLM layer at batch 32 ×
//! 256 tokens, measured with torch 2.11 on this 2-core machine, and 1.5 s of a 6.9 s forward +
//! backward of that batch (torch profiler). Here the mask is a counter-based hash of (seed, element
//! index), about 10 ms for the same tensor, and the seed is one draw from libtorch's generator. So
//! masks stay a function of `tch::manual_seed`: the trainer's per-step seeding still replays them on
//! resume and in gradient cache's second pass.
//!
//! Guarantees: each element is kept independently with probability `1 − p` (to within 2⁻³²) and
//! kept elements are scaled by `1/(1 − p)`, as PyTorch's dropout does; the gradient is the
//! incoming gradient times the same mask and scale. Only the random stream differs from PyTorch's.
//! On other devices (CUDA's Philox dropout is already fast) it is ATen's dropout.

use tch::{Device, Kind, Tensor};

/// Below this many elements one thread fills the mask; above it, libtorch's intra-op thread count.
const PARALLEL_ELEMENTS: usize = 1 << 20;

/// `xs` with each element zeroed with probability `p` and the rest scaled by `1/(1 − p)` when
/// `train`; `xs` itself otherwise.
pub(crate) fn dropout(xs: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return xs.shallow_clone();
    }
    if xs.device() != Device::Cpu || p >= 1.0 {
        return xs.dropout(p, train);
    }
    // The bool mask is what autograd saves for the backward (one byte per element, as ATen's
    // dropout saves); the scale is a second, scalar multiply that saves nothing.
    (xs * keep_mask(&xs.size(), 1.0 - p)) * (1.0 / (1.0 - p))
}

/// A bool tensor of `shape` on the CPU, each element true with probability `keep`, drawn from a seed
/// taken from libtorch's CPU generator.
pub(crate) fn keep_mask(shape: &[i64], keep: f64) -> Tensor {
    let seed = i64::try_from(Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu))).expect("one int64") as u64;
    let mask = Tensor::empty(shape, (Kind::Bool, Device::Cpu));
    let n = mask.numel();
    if n == 0 {
        return mask;
    }
    // Threshold on 32-bit uniforms: keep iff u < keep·2³².
    let threshold = (keep.clamp(0.0, 1.0) * 4294967296.0).round() as u64;
    // SAFETY: `mask` is a freshly allocated, contiguous CPU bool tensor of `n` one-byte elements that
    // nothing else references until this function returns; writing 0 or 1 keeps every byte a valid bool.
    let bytes = unsafe { std::slice::from_raw_parts_mut(mask.data_ptr() as *mut u8, n) };
    let threads = if n < PARALLEL_ELEMENTS { 1 } else { tch::get_num_threads().max(1) as usize };
    // Chunks start at even indices so each 64-bit hash feeds exactly two elements of one chunk.
    let per = (n.div_ceil(threads) + 1) & !1;
    std::thread::scope(|s| {
        for (c, chunk) in bytes.chunks_mut(per).enumerate() {
            s.spawn(move || fill(chunk, (c * per) as u64, seed, threshold));
        }
    });
    mask
}

/// Writes the keep decisions of elements `first..first + out.len()` (`first` even).
fn fill(out: &mut [u8], first: u64, seed: u64, threshold: u64) {
    for (j, pair) in out.chunks_mut(2).enumerate() {
        let r = mix(seed ^ (first / 2 + j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        pair[0] = ((r & 0xFFFF_FFFF) < threshold) as u8;
        if let Some(b) = pair.get_mut(1) {
            *b = ((r >> 32) < threshold) as u8;
        }
    }
}

/// SplitMix64's finalizer: a bijective 64-bit mix whose outputs for consecutive counters pass
/// BigCrush (it is SplitMix64's output function over a Weyl sequence).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keep rate, scale, and a gradient equal to the mask times the scale; same seed, same mask.
    #[test]
    fn keeps_one_minus_p_scales_and_back_propagates_the_mask() {
        tch::manual_seed(3);
        let x = Tensor::ones([3_000_001], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = dropout(&x, 0.1, true);
        let kept = y.ne(0.0);
        let rate = f64::try_from(kept.to_kind(Kind::Double).mean(Kind::Double)).unwrap();
        // 3 M Bernoulli(0.9) draws: standard error 1.7e-4.
        assert!((rate - 0.9).abs() < 1e-3, "keep rate {rate}");
        let scaled = f64::try_from(y.masked_select(&kept).mean(Kind::Double)).unwrap();
        assert!((scaled - 1.0 / 0.9).abs() < 1e-6, "kept elements scaled to {scaled}");
        y.sum(Kind::Float).backward();
        assert!(x.grad().equal(&(kept.to_kind(Kind::Float) / 0.9)), "gradient is not mask × scale");
        // The two 32-bit halves of one hash, and neighbouring elements, are not correlated.
        let k = kept.to_kind(Kind::Double);
        let (a, b) = (k.narrow(0, 0, 3_000_000).view([-1, 2]).select(1, 0), k.narrow(0, 0, 3_000_000).view([-1, 2]).select(1, 1));
        let both = f64::try_from((&a * &b).mean(Kind::Double)).unwrap();
        assert!((both - 0.81).abs() < 2e-3, "P(both kept) {both}");
        tch::manual_seed(3);
        assert!(keep_mask(&[3_000_001], 0.9).equal(&kept), "same seed gave a different mask");
        assert!(!keep_mask(&[3_000_001], 0.9).equal(&kept), "the next draw repeated the mask");
    }

    /// Outside training, and with p = 0, the input passes through untouched.
    #[test]
    fn identity_outside_training() {
        let x = Tensor::randn([100], (Kind::Float, Device::Cpu));
        assert!(dropout(&x, 0.1, false).equal(&x));
        assert!(dropout(&x, 0.0, true).equal(&x));
    }
}
