//! Dynamic loss scaling for fp16 training: `torch.amp.GradScaler` in libtorch ops.
//!
//! fp16 has a 5-bit exponent: gradients below ~6e-8 flush to zero in the encoder's fp16 backward.
//! Multiplying the loss by a large scale before the backward keeps them representable; the
//! gradients are divided by the same scale before clipping and the optimizer step.
//!
//! Guarantees (the same as `GradScaler(init_scale, growth_factor, backoff_factor, growth_interval)`,
//! checked against torch 2.11 by `worker/tests/it/amp.rs`):
//! - [`GradScaler::scale_loss`] multiplies by the current scale held as an fp32 tensor, as
//!   `scaler.scale(loss)` does.
//! - [`GradScaler::unscale_`] multiplies every defined gradient in place by `(1 / scale)` computed
//!   in float64 then rounded to float32, and reports whether any gradient held an inf or NaN, with
//!   ATen's own `_amp_foreach_non_finite_check_and_unscale_` (what `scaler.unscale_` runs).
//! - [`GradScaler::update`] runs ATen's `_amp_update_scale_`: after a non-finite step the scale is
//!   multiplied by `backoff_factor` and the growth tracker reset; after `growth_interval`
//!   consecutive finite steps the scale is multiplied by `growth_factor` (kept only if finite).
//! - The caller skips the optimizer step when [`unscale_`](GradScaler::unscale_) found a
//!   non-finite gradient (the trainer does, see `Trainer::apply_gradients`), so such a step leaves
//!   weights and optimizer moments untouched.
//! - [`GradScaler::state`] / [`GradScaler::load_state`] round-trip the state exactly (the scale is
//!   an fp32 value, stored as the float64 it widens to), under the keys of torch's
//!   `GradScaler.state_dict()`.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The shape of a 0-dim tensor.
const SCALAR: &[i64] = &[];

/// `GradScaler`'s constructor arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalerConfig {
    /// Scale before the first step; torch's default 2^16.
    pub init_scale: f64,
    /// Multiplies the scale after `growth_interval` consecutive finite steps; default 2.
    pub growth_factor: f64,
    /// Multiplies the scale after a step with inf/NaN gradients; default 0.5.
    pub backoff_factor: f64,
    /// Consecutive finite steps before the scale grows; default 2000.
    pub growth_interval: i64,
}

impl Default for ScalerConfig {
    /// torch.amp.GradScaler's defaults, which the Hugging Face Trainer uses with `fp16: true`.
    fn default() -> Self {
        Self { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

/// What a checkpoint records of the scaler: the keys and meaning of torch's
/// `GradScaler.state_dict()` (`scale`, `growth_factor`, `backoff_factor`, `growth_interval`,
/// `_growth_tracker`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalerState {
    /// The current scale (an fp32 value, widened exactly).
    pub scale: f64,
    /// See [`ScalerConfig::growth_factor`].
    pub growth_factor: f64,
    /// See [`ScalerConfig::backoff_factor`].
    pub backoff_factor: f64,
    /// See [`ScalerConfig::growth_interval`].
    pub growth_interval: i64,
    /// Consecutive finite steps since the scale last changed.
    #[serde(rename = "_growth_tracker")]
    pub growth_tracker: i64,
}

/// A dynamic loss scaler on one device. Its scale (fp32) and growth tracker (int32) are 0-dim
/// tensors on the gradients' device, as torch keeps them, so checking and updating never leaves
/// the device; reading them back ([`GradScaler::scale`], [`GradScaler::step_was_skipped`]) syncs.
#[derive(Debug)]
pub struct GradScaler {
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: i64,
    scale: Tensor,
    growth_tracker: Tensor,
}

impl GradScaler {
    /// A scaler at `cfg.init_scale` with its state on `device`.
    pub fn new(cfg: ScalerConfig, device: Device) -> Self {
        Self {
            growth_factor: cfg.growth_factor,
            backoff_factor: cfg.backoff_factor,
            growth_interval: cfg.growth_interval,
            scale: Tensor::full(SCALAR, cfg.init_scale, (Kind::Float, device)),
            growth_tracker: Tensor::full(SCALAR, 0, (Kind::Int, device)),
        }
    }

    /// The current scale.
    pub fn scale(&self) -> f64 {
        self.scale.double_value(&[])
    }

    /// Consecutive finite steps since the scale last changed.
    pub fn growth_tracker(&self) -> i64 {
        self.growth_tracker.int64_value(&[])
    }

    /// `loss × scale`: back-propagate this instead of `loss`.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.scale.to_device(loss.device())
    }

    /// Divides the defined gradients of `params` by the scale in place and returns `found_inf`, a
    /// 0-dim fp32 tensor that is 1 if any of them held an inf or NaN (before or after unscaling)
    /// and 0 otherwise. Pass it to [`GradScaler::update`]; test it with
    /// [`GradScaler::step_was_skipped`]. Call once per step, after every backward (and after any
    /// all-reduce, so all ranks decide alike).
    pub fn unscale_(&self, params: &[Tensor]) -> Tensor {
        let _g = tch::no_grad_guard();
        // As torch: the reciprocal in float64, then rounded to float32.
        let inv_scale = self.scale.to_kind(Kind::Double).reciprocal().to_kind(Kind::Float);
        let mut found_inf = Tensor::zeros(SCALAR, (Kind::Float, self.scale.device()));
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                // One tensor per call of `_amp_foreach_non_finite_check_and_unscale_`: the op is
                // per-tensor (found_inf is OR-ed), so this equals one call over the whole list.
                g.internal_amp_non_finite_check_and_unscale(&mut found_inf, &inv_scale);
            }
        }
        found_inf
    }

    /// Whether `found_inf` (from [`GradScaler::unscale_`]) means the optimizer step must be skipped.
    pub fn step_was_skipped(found_inf: &Tensor) -> bool {
        found_inf.double_value(&[]) != 0.0
    }

    /// Backs off or grows the scale after a step, as `GradScaler.update()`.
    pub fn update(&mut self, found_inf: &Tensor) {
        let found_inf = found_inf.to_device(self.scale.device());
        let _ = self.scale.internal_amp_update_scale_(
            &self.growth_tracker,
            &found_inf,
            self.growth_factor,
            self.backoff_factor,
            self.growth_interval,
        );
    }

    /// The state to checkpoint (after [`GradScaler::update`]).
    pub fn state(&self) -> ScalerState {
        ScalerState {
            scale: self.scale(),
            growth_factor: self.growth_factor,
            backoff_factor: self.backoff_factor,
            growth_interval: self.growth_interval,
            growth_tracker: self.growth_tracker(),
        }
    }

    /// Restores what [`GradScaler::state`] returned (factors and interval included, as torch's
    /// `load_state_dict` does).
    pub fn load_state(&mut self, s: &ScalerState) {
        let device = self.scale.device();
        self.growth_factor = s.growth_factor;
        self.backoff_factor = s.backoff_factor;
        self.growth_interval = s.growth_interval;
        self.scale = Tensor::full(SCALAR, s.scale, (Kind::Float, device));
        self.growth_tracker = Tensor::full(SCALAR, s.growth_tracker, (Kind::Int, device));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_with_grad(g: &[f32]) -> Tensor {
        let p = Tensor::zeros([g.len() as i64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(g)).sum(Kind::Float).backward();
        p
    }

    #[test]
    fn unscale_divides_and_flags_non_finite() {
        let s = GradScaler::new(ScalerConfig { init_scale: 4.0, ..Default::default() }, Device::Cpu);
        let p = param_with_grad(&[8.0, -2.0]);
        let f = s.unscale_(&[p.shallow_clone()]);
        assert!(!GradScaler::step_was_skipped(&f));
        assert_eq!(Vec::<f32>::try_from(&p.grad()).unwrap(), vec![2.0, -0.5]);
        let q = param_with_grad(&[1.0, f32::INFINITY]);
        assert!(GradScaler::step_was_skipped(&s.unscale_(&[p.shallow_clone(), q])));
        let r = param_with_grad(&[f32::NAN]);
        assert!(GradScaler::step_was_skipped(&s.unscale_(&[r])));
    }

    #[test]
    fn update_backs_off_and_grows() {
        let cfg = ScalerConfig { init_scale: 1024.0, growth_interval: 2, ..Default::default() };
        let mut s = GradScaler::new(cfg, Device::Cpu);
        let (fin, inf) = (Tensor::from(0f32), Tensor::from(1f32));
        s.update(&inf);
        assert_eq!((s.scale(), s.growth_tracker()), (512.0, 0));
        s.update(&fin);
        assert_eq!((s.scale(), s.growth_tracker()), (512.0, 1));
        s.update(&fin);
        assert_eq!((s.scale(), s.growth_tracker()), (1024.0, 0));
        let saved = s.state();
        let mut t = GradScaler::new(ScalerConfig::default(), Device::Cpu);
        t.load_state(&serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap());
        assert_eq!(t.state(), saved);
    }
}
