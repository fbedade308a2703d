//! AdamW, gradient clipping and the linear warm-up/decay schedule, written out so their state can
//! be checkpointed and so the arithmetic is torch's own (`torch.optim.AdamW` single-tensor path,
//! `clip_grad_norm_`, transformers' `get_linear_schedule_with_warmup`).

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;

use super::TrainError;

/// A parameter with its optimizer hyper-parameters.
pub struct ParamGroup {
    pub names: Vec<String>,
    pub params: Vec<Tensor>,
    pub weight_decay: f64,
    /// Multiplies the scheduled learning rate (e.g. `query_learning_rate / learning_rate`).
    pub lr_scale: f64,
}

/// AdamW with β = (0.9, 0.999), ε = 1e-8, decoupled weight decay: torch's defaults, as the HF
/// Trainer uses them.
pub struct AdamW {
    pub groups: Vec<ParamGroup>,
    exp_avg: BTreeMap<String, Tensor>,
    exp_avg_sq: BTreeMap<String, Tensor>,
    /// Optimizer steps taken (torch's per-parameter `step`, equal for every parameter here).
    pub step: u64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

/// Whether transformers would exempt a parameter from weight decay: biases and LayerNorm weights.
pub fn no_decay(name: &str) -> bool {
    // `_bias`: the CSR autoencoder's pre_bias / latent_bias (the HF Trainer skips every name holding "bias").
    name.ends_with(".bias") || name.ends_with("_bias") || name.contains("LayerNorm") || name.ends_with("predictions.bias")
}

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>) -> Self {
        let mut exp_avg = BTreeMap::new();
        let mut exp_avg_sq = BTreeMap::new();
        for g in &groups {
            for (n, p) in g.names.iter().zip(&g.params) {
                exp_avg.insert(n.clone(), p.zeros_like());
                exp_avg_sq.insert(n.clone(), p.zeros_like());
            }
        }
        Self { groups, exp_avg, exp_avg_sq, step: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    /// One update with learning rate `lr` (scaled per group), then gradients are left untouched.
    pub fn step(&mut self, lr: f64) {
        let _g = tch::no_grad_guard();
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - self.beta2.powi(self.step as i32)).sqrt();
        for g in &self.groups {
            let lr = lr * g.lr_scale;
            for (n, p) in g.names.iter().zip(&g.params) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                if g.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * g.weight_decay);
                }
                let m = self.exp_avg.get_mut(n).expect("state for every parameter");
                let _ = m.lerp_(&grad, 1.0 - self.beta1);
                let v = self.exp_avg_sq.get_mut(n).expect("state for every parameter");
                let _ = v.g_mul_scalar_(self.beta2).addcmul_(&grad, &grad.g_mul_scalar(1.0 - self.beta2));
                let denom = (v.sqrt() / bc2_sqrt) + self.eps;
                let _ = p.addcdiv_(&(m.g_mul_scalar(-lr / bc1)), &denom);
            }
        }
    }

    /// Zeroes every gradient (keeps the buffers, as `zero_grad(set_to_none=False)`).
    pub fn zero_grad(&self) {
        for g in &self.groups {
            for p in &g.params {
                let mut grad = p.grad();
                if grad.defined() {
                    let _ = grad.zero_();
                }
            }
        }
    }

    /// All parameters, for clipping and all-reduce.
    pub fn params(&self) -> Vec<Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter().map(Tensor::shallow_clone)).collect()
    }

    /// Writes the moments and step count to `path` (safetensors; names `m.<param>`, `v.<param>`).
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (n, t) in &self.exp_avg {
            named.push((format!("m.{n}"), t.to_device(tch::Device::Cpu)));
        }
        for (n, t) in &self.exp_avg_sq {
            named.push((format!("v.{n}"), t.to_device(tch::Device::Cpu)));
        }
        named.push(("step".into(), Tensor::from_slice(&[self.step as i64])));
        Tensor::write_safetensors(&named, path)
    }

    /// Reads what [`AdamW::save`] wrote and checks it against this optimizer: a moment for every
    /// parameter, of its shape and dtype, and the step count. Nothing is changed; [`AdamW::restore`]
    /// applies the result. `checkpoint` names the checkpoint in errors.
    pub fn read_state(&self, path: &Path, checkpoint: &str) -> Result<OptimState, TrainError> {
        let bad = |problem: String| TrainError::Checkpoint { checkpoint: checkpoint.to_string(), problem };
        let tensors = Tensor::read_safetensors(path)
            .map_err(|source| TrainError::Tensor { context: format!("checkpoint `{checkpoint}`: {}", path.display()), source })?;
        let mut map: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let mut state = OptimState { exp_avg: BTreeMap::new(), exp_avg_sq: BTreeMap::new(), step: 0 };
        for (store, out, prefix) in [(&self.exp_avg, &mut state.exp_avg, "m."), (&self.exp_avg_sq, &mut state.exp_avg_sq, "v.")] {
            for (n, t) in store {
                let key = format!("{prefix}{n}");
                let src = map.remove(&key).ok_or_else(|| {
                    bad(format!("{} has no optimizer state `{key}` for parameter `{n}` (saved by another model or config)", OPT_FILE))
                })?;
                if src.size() != t.size() || src.kind() != t.kind() {
                    return Err(bad(format!(
                        "{OPT_FILE}: `{key}` is {:?} {:?}, the parameter is {:?} {:?}",
                        src.kind(),
                        src.size(),
                        t.kind(),
                        t.size()
                    )));
                }
                out.insert(n.clone(), src);
            }
        }
        let step = map.remove("step").ok_or_else(|| bad(format!("{OPT_FILE} has no `step`")))?;
        state.step = step
            .f_int64_value(&[0])
            .ok()
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| bad(format!("{OPT_FILE}: `step` is not one non-negative integer ({:?} {:?})", step.kind(), step.size())))?;
        Ok(state)
    }

    /// Puts checked state (from [`AdamW::read_state`]) in place.
    pub fn restore(&mut self, state: OptimState) -> Result<(), TrainError> {
        let _g = tch::no_grad_guard();
        for (store, src) in [(&mut self.exp_avg, state.exp_avg), (&mut self.exp_avg_sq, state.exp_avg_sq)] {
            for (n, s) in src {
                if let Some(t) = store.get_mut(&n) {
                    t.f_copy_(&s).map_err(|source| TrainError::Tensor { context: format!("restoring optimizer state `{n}`"), source })?;
                }
            }
        }
        self.step = state.step;
        Ok(())
    }
}

/// File name of the optimizer state in a checkpoint, for messages.
const OPT_FILE: &str = super::state::OPTIMIZER_STATE;

/// Optimizer state read from a checkpoint and checked against the optimizer ([`AdamW::read_state`]).
pub struct OptimState {
    exp_avg: BTreeMap<String, Tensor>,
    exp_avg_sq: BTreeMap<String, Tensor>,
    step: u64,
}

/// `clip_grad_norm_(params, max_norm)`: returns the total L2 norm before clipping.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    let _g = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
    let total = Tensor::stack(&norms, 0).norm();
    let total_f = total.double_value(&[]);
    if max_norm > 0.0 {
        // As torch: the coefficient is a float32 tensor op, clamped at 1, applied to every gradient.
        let coef = (Tensor::from(max_norm as f32) / (&total + 1e-6)).clamp_max(1.0);
        for g in &grads {
            let _ = g.shallow_clone().g_mul_(&coef);
        }
    }
    total_f
}

/// Linear warm-up from 0 over `warmup` steps, then linear decay to 0 at `total`
/// (transformers' `get_linear_schedule_with_warmup`); `step` is the 0-based step about to run.
pub fn linear_schedule(base_lr: f64, step: u64, warmup: u64, total: u64) -> f64 {
    let s = step as f64;
    if step < warmup {
        base_lr * s / (warmup.max(1) as f64)
    } else {
        base_lr * ((total as f64 - s) / ((total - warmup).max(1) as f64)).max(0.0)
    }
}

/// Warm-up steps for a ratio, as transformers computes them: `ceil(total × ratio)`.
pub fn warmup_steps(total: u64, ratio: f64) -> u64 {
    (total as f64 * ratio).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn schedule_matches_transformers() {
        // total 30, ratio 0.1 → 3 warm-up steps: 0, 1/3, 2/3, then 1 decaying to 1/27 at step 29.
        assert_eq!(warmup_steps(30, 0.1), 3);
        assert_eq!(linear_schedule(1.0, 0, 3, 30), 0.0);
        assert!((linear_schedule(1.0, 1, 3, 30) - 1.0 / 3.0).abs() < 1e-12);
        assert!((linear_schedule(1.0, 3, 3, 30) - 1.0).abs() < 1e-12);
        assert!((linear_schedule(1.0, 29, 3, 30) - 1.0 / 27.0).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let p = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        (&p * &p).sum(Kind::Float).backward(); // grad = 2p = (6, 8), norm 10
        let n = clip_grad_norm(&[p.shallow_clone()], 1.0);
        assert!((n - 10.0).abs() < 1e-5);
        assert!((p.grad().norm().double_value(&[]) - 1.0).abs() < 1e-5);
    }
}
