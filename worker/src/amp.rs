//! Mixed precision: autocast scopes as `torch.autocast(device_type, dtype)` opens them.
//!
//! Inside an [`Autocast`] scope, libtorch runs matmuls, linear layers and attention in the
//! lower-precision dtype and keeps precision-sensitive ops (softmax, log, reductions, losses) in
//! fp32; parameters, gradients and optimizer state stay fp32. This is what `training.bf16: true`
//! (`Kind::BFloat16`) and `training.fp16: true` (`Kind::Half`) turn on. bf16 needs no loss scaling
//! (it has fp32's exponent range); fp16 does, and the trainer pairs it with
//! `crate::train::scaler::GradScaler`.

use tch::{Device, Kind};

mod ffi {
    use std::os::raw::c_int;
    extern "C" {
        pub fn splade_amp_enter(device_type: c_int, dtype: c_int, prev_enabled: *mut c_int, prev_dtype: *mut c_int);
        pub fn splade_amp_exit(device_type: c_int, prev_enabled: c_int, prev_dtype: c_int);
        pub fn splade_amp_is_enabled(device_type: c_int) -> c_int;
        pub fn splade_set_tf32(on: c_int);
        pub fn splade_tf32_state(cublas: *mut c_int, cudnn: *mut c_int);
    }
}

/// Allows (or forbids) TF32 in CUDA matmuls (cuBLAS) and cuDNN convolutions, process-wide: PyTorch's
/// `torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32`, which the seed's
/// `hardware.tf32` sets. The flags exist on every build; only CUDA kernels read them.
pub fn set_tf32(on: bool) {
    // SAFETY: sets two flags of libtorch's global context; no pointer crosses.
    unsafe { ffi::splade_set_tf32(on as std::os::raw::c_int) }
}

/// The (cuBLAS, cuDNN) TF32 flags now in effect.
pub fn tf32_state() -> (bool, bool) {
    let (mut a, mut b) = (0, 0);
    // SAFETY: writes two ints we own.
    unsafe { ffi::splade_tf32_state(&mut a, &mut b) };
    (a != 0, b != 0)
}

/// Applies `hardware.tf32` for training on `device`: set on CUDA (and logged); on another device TF32 means
/// nothing, which is said once. Unset: libtorch's defaults stay (cuBLAS off, cuDNN on).
pub fn apply_tf32(tf32: Option<bool>, device: Device) {
    let Some(on) = tf32 else { return };
    if device.is_cuda() {
        set_tf32(on);
        tracing::info!(tf32 = on, "hardware.tf32: TF32 matmuls and cuDNN convolutions {}", if on { "allowed" } else { "off" });
    } else {
        tracing::info!(?device, "hardware.tf32 has no effect here: TF32 is a CUDA matmul/cuDNN mode");
    }
}

/// c10::DeviceType of a tch device; `None` where libtorch has no autocast for it here.
fn device_type(device: Device) -> Option<i32> {
    match device {
        Device::Cpu => Some(0),
        Device::Cuda(_) => Some(1),
        Device::Mps => Some(13),
        Device::Vulkan => None,
    }
}

/// c10::ScalarType of the lower-precision dtypes autocast supports.
fn scalar_type(kind: Kind) -> Option<i32> {
    match kind {
        Kind::Half => Some(5),
        Kind::BFloat16 => Some(15),
        _ => None,
    }
}

/// An open autocast scope on the current thread; dropping it restores the previous state (scopes
/// nest like `with torch.autocast(...)` blocks). Not `Send`: autocast state is thread-local.
pub struct Autocast {
    device_type: i32,
    prev_enabled: i32,
    prev_dtype: i32,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Autocast {
    /// Opens a scope running eligible ops on `device` in `kind` (`Kind::BFloat16` or `Kind::Half`).
    /// Returns `None` for a device or dtype libtorch cannot autocast.
    pub fn new(device: Device, kind: Kind) -> Option<Autocast> {
        let (dt, st) = (device_type(device)?, scalar_type(kind)?);
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: the shim only reads/writes libtorch's thread-local autocast flags and the two
        // out-pointers, which point at live locals.
        unsafe { ffi::splade_amp_enter(dt, st, &mut prev_enabled, &mut prev_dtype) };
        Some(Autocast { device_type: dt, prev_enabled, prev_dtype, _not_send: std::marker::PhantomData })
    }

    /// Whether autocast is on for `device` on this thread.
    pub fn is_enabled(device: Device) -> bool {
        // SAFETY: reads a thread-local flag.
        device_type(device).is_some_and(|dt| unsafe { ffi::splade_amp_is_enabled(dt) } != 0)
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: restores the flags saved by `new` on this same thread (the type is not Send).
        unsafe { ffi::splade_amp_exit(self.device_type, self.prev_enabled, self.prev_dtype) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    /// `hardware.tf32` sets libtorch's two TF32 flags for a CUDA device (both ways), leaves them alone for the
    /// CPU and when unset. The flags are global-context state, readable without a GPU; that CUDA kernels then
    /// use TF32 is libtorch's part.
    #[test]
    fn hardware_tf32_sets_cublas_and_cudnn_flags_for_cuda_only() {
        let before = tf32_state();
        apply_tf32(Some(!before.0), Device::Cpu);
        apply_tf32(None, Device::Cuda(0));
        assert_eq!(tf32_state(), before, "CPU or unset: untouched");
        apply_tf32(Some(true), Device::Cuda(0));
        assert_eq!(tf32_state(), (true, true));
        apply_tf32(Some(false), Device::Cuda(0));
        assert_eq!(tf32_state(), (false, false));
    }

    #[test]
    fn cpu_bf16_scope_casts_matmuls_and_restores_state() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        assert!(!Autocast::is_enabled(Device::Cpu));
        {
            let _outer = Autocast::new(Device::Cpu, Kind::BFloat16).unwrap();
            assert!(Autocast::is_enabled(Device::Cpu));
            assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
            {
                let _inner = Autocast::new(Device::Cpu, Kind::BFloat16).unwrap();
                assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
            }
            assert!(Autocast::is_enabled(Device::Cpu), "closing an inner scope must keep the outer one open");
        }
        assert!(!Autocast::is_enabled(Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        assert!(Autocast::new(Device::Cpu, Kind::Float).is_none());
    }

    #[test]
    fn cpu_fp16_scope_casts_matmuls() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        {
            let _s = Autocast::new(Device::Cpu, Kind::Half).unwrap();
            assert_eq!(a.matmul(&b).kind(), Kind::Half);
        }
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
    }
}
