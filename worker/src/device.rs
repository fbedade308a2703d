//! Choosing the libtorch device from `--device` / `hardware.device`.

use tch::Device;

/// Parses `auto`, `cpu`, `cuda`, `cuda:N` or `mps`. `auto` picks CUDA when libtorch sees a GPU
/// (only with the `cuda` feature), else MPS on Apple silicon, else CPU.
pub fn parse_device(spec: &str) -> Result<Device, String> {
    match spec {
        "auto" => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else if tch::utils::has_mps() {
            Device::Mps
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        "mps" => {
            if tch::utils::has_mps() {
                Ok(Device::Mps)
            } else {
                Err("device 'mps' requested but this libtorch has no MPS backend; use --device cpu".into())
            }
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = match s.strip_prefix("cuda:") {
                None => 0,
                Some(i) => i.parse().map_err(|_| format!("bad device '{s}': expected cuda:N with N a GPU index"))?,
            };
            if !tch::Cuda::is_available() {
                return Err(format!(
                    "device '{s}' requested but libtorch sees no CUDA GPU; build with `--features cuda` against a \
                     CUDA libtorch, or use --device cpu"
                ));
            }
            if n as i64 >= tch::Cuda::device_count() {
                return Err(format!("device '{s}': only {} GPU(s) visible", tch::Cuda::device_count()));
            }
            Ok(Device::Cuda(n))
        }
        other => Err(format!("unknown device '{other}': expected auto, cpu, cuda, cuda:N or mps")),
    }
}
