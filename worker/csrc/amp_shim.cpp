// Autocast (automatic mixed precision) scopes for the Rust `amp` module: the same switches that
// `torch.autocast(device_type, dtype)` flips. tch only exposes CUDA autocast with its default fp16
// dtype; bf16, and CPU autocast, need the per-device-type API below.
//
// Contract: plain C ABI, no C++ exception crosses it (these calls only set thread-local flags).
// `device_type` is c10::DeviceType's value (0 CPU, 1 CUDA); `dtype` is c10::ScalarType's
// (5 Half, 15 BFloat16).
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>

extern "C" {

// Enables autocast for `device_type` with `dtype` on this thread and returns the previous state
// in *prev_enabled / *prev_dtype, for splade_amp_exit.
void splade_amp_enter(int device_type, int dtype, int* prev_enabled, int* prev_dtype) {
  auto dev = static_cast<c10::DeviceType>(device_type);
  *prev_enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
  *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
  at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(dtype));
  at::autocast::set_autocast_enabled(dev, true);
  at::autocast::increment_nesting();
}

// Restores the state splade_amp_enter saved; clears the cast cache when the outermost scope ends,
// as torch.autocast's __exit__ does (cached casts of the weights would otherwise go stale after
// the optimizer step).
void splade_amp_exit(int device_type, int prev_enabled, int prev_dtype) {
  auto dev = static_cast<c10::DeviceType>(device_type);
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(dev, prev_enabled != 0);
  at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(prev_dtype));
}

int splade_amp_is_enabled(int device_type) {
  return at::autocast::is_autocast_enabled(static_cast<c10::DeviceType>(device_type)) ? 1 : 0;
}

// `hardware.tf32`: what `torch.backends.cuda.matmul.allow_tf32 = on` and `torch.backends.cudnn.allow_tf32 = on`
// set (process-wide flags of libtorch's global context, read by CUDA matmuls and cuDNN convolutions).
void splade_set_tf32(int on) {
  at::globalContext().setAllowTF32CuBLAS(on != 0);
  at::globalContext().setAllowTF32CuDNN(on != 0);
}

void splade_tf32_state(int* cublas, int* cudnn) {
  *cublas = at::globalContext().allowTF32CuBLAS() ? 1 : 0;
  *cudnn = at::globalContext().allowTF32CuDNN() ? 1 : 0;
}

}  // extern "C"
