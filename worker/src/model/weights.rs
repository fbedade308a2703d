//! Reading and writing `model.safetensors` with the names transformers uses.
//!
//! The file is parsed and bounds-checked by the `safetensors` crate before any byte reaches
//! libtorch, so a truncated or corrupt file is a one-line error instead of a C++ exception.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Kind, Tensor};

use super::encoder::Architecture;
use super::ModelError;

/// Weight files looked for in a transformer folder, in this order.
pub const WEIGHT_FILES: &[&str] = &["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"];

/// Checkpoint tensors by canonical name (`bert.…`, `cls.predictions.…`), taken out one by one
/// while the model is built so leftovers can be reported.
pub struct Weights {
    file: PathBuf,
    tensors: BTreeMap<String, Tensor>,
}

/// Maps the legacy and headless spellings onto BertForMaskedLM's names: TF-era `gamma`/`beta`
/// LayerNorm parameters and a bare `BertModel` (no `bert.` prefix). Other architectures keep the
/// checkpoint's names as they are.
fn canonical_name(name: &str, arch: Architecture) -> String {
    if arch != Architecture::Bert {
        return name.to_string();
    }
    let mut n = name.to_string();
    if let Some(stem) = n.strip_suffix(".gamma") {
        n = format!("{stem}.weight");
    } else if let Some(stem) = n.strip_suffix(".beta") {
        n = format!("{stem}.bias");
    }
    if n.starts_with("embeddings.") || n.starts_with("encoder.") || n.starts_with("pooler.") {
        n = format!("bert.{n}");
    }
    n
}

fn kind_of(dtype: Dtype, file: &Path, name: &str) -> Result<Kind, ModelError> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        other => {
            return Err(ModelError::file(
                file,
                format!("tensor '{name}' has dtype {other:?}, which the encoder does not load; re-save it as float32"),
            ))
        }
    })
}

impl Weights {
    /// Reads the checkpoint of the transformer folder `dir`: `model.safetensors`, else the shards a
    /// `model.safetensors.index.json` names, else a `torch.save` archive `pytorch_model.bin`
    /// (NorBERT4's converter writes one). Names are `arch`'s state-dict names.
    pub fn load_dir(dir: &Path, arch: Architecture) -> Result<Self, ModelError> {
        let single = dir.join(WEIGHT_FILES[0]);
        if single.exists() {
            return Self::load_as(&single, arch);
        }
        let index = dir.join(WEIGHT_FILES[1]);
        if index.exists() {
            return Self::load_sharded(&index, arch);
        }
        let bin = dir.join(WEIGHT_FILES[2]);
        if bin.exists() {
            return Self::load_torch(&bin, arch);
        }
        Err(ModelError::file(
            &single,
            format!(
                "missing; a transformer folder needs its weights as one of {} (save the model with save_pretrained)",
                WEIGHT_FILES.join(", ")
            ),
        ))
    }

    /// Every shard named by the `weight_map` of a sharded checkpoint's index file.
    fn load_sharded(index: &Path, arch: Architecture) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(index).map_err(|e| ModelError::file(index, format!("cannot read: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::file(index, format!("not valid JSON: {e}")))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
            ModelError::file(index, "has no \"weight_map\" object; re-save the model with save_pretrained")
        })?;
        let shards: std::collections::BTreeSet<&str> = map.values().filter_map(|s| s.as_str()).collect();
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut tensors = BTreeMap::new();
        for shard in shards {
            let part = Self::load_as(&dir.join(shard), arch)?;
            tensors.extend(part.tensors);
        }
        for name in map.keys() {
            if !tensors.contains_key(&canonical_name(name, arch)) {
                return Err(ModelError::file(index, format!("names tensor '{name}', which none of its shards holds; fetch the model again")));
            }
        }
        Ok(Self { file: index.to_path_buf(), tensors })
    }

    /// A `torch.save` archive of a state dict, read by libtorch's `torch::pickle_load` (the C++ side
    /// of `torch.load`; `csrc/pickle_shim.cpp`).
    fn load_torch(file: &Path, arch: Architecture) -> Result<Self, ModelError> {
        let named = pickle_load_state_dict(file).map_err(|e| {
            ModelError::file(
                file,
                format!(
                    "cannot read as a torch.save state dict ({}); libtorch's C++ loader reads a pickled dict \
                     of tensors (what transformers 4 and NorBERT4's converter write) but not the OrderedDict \
                     with `_metadata` that `torch.save(model.state_dict())` pickles: convert it with \
                     `model.save_pretrained(dir, safe_serialization=True)` or re-save it as \
                     `torch.save(dict(state_dict), path)`",
                    e.lines().next().unwrap_or_default()
                ),
            )
        })?;
        let mut tensors = BTreeMap::new();
        for (name, t) in named {
            let t = if matches!(t.kind(), Kind::Half | Kind::BFloat16 | Kind::Double) { t.to_kind(Kind::Float) } else { t };
            tensors.insert(canonical_name(&name, arch), t);
        }
        Ok(Self { file: file.to_path_buf(), tensors })
    }

    /// Reads every tensor of the BERT checkpoint `file` onto the CPU as float32 (integer buffers
    /// keep their kind).
    pub fn load(file: &Path) -> Result<Self, ModelError> {
        Self::load_as(file, Architecture::Bert)
    }

    /// Reads every tensor of `file` onto the CPU as float32 (integer buffers keep their kind), named
    /// as `arch` names them.
    pub fn load_as(file: &Path, arch: Architecture) -> Result<Self, ModelError> {
        let bytes = std::fs::read(file).map_err(|e| ModelError::file(file, format!("cannot read: {e}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            ModelError::file(
                file,
                format!("not a valid safetensors file ({e}); the download was probably cut short: fetch the model again"),
            )
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let kind = kind_of(view.dtype(), file, &name)?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let mut t = Tensor::from_data_size(view.data(), &shape, kind);
            if matches!(kind, Kind::Half | Kind::BFloat16 | Kind::Double) {
                t = t.to_kind(Kind::Float);
            }
            tensors.insert(canonical_name(&name, arch), t);
        }
        Ok(Self { file: file.to_path_buf(), tensors })
    }

    /// The file the tensors came from, for error messages.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Whether a tensor of this canonical name is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns the tensor `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let t = self.tensors.remove(name).ok_or_else(|| {
            let near = match self.nearest(name) {
                Some(n) => format!(" (the nearest name the checkpoint holds and no component took yet is '{n}')"),
                None => String::new(),
            };
            ModelError::file(
                &self.file,
                format!(
                    "missing tensor '{name}'{near}; the checkpoint does not match its config.json (another \
                     architecture or variant, or a converter that renamed its tensors)"
                ),
            )
        })?;
        if t.size() != shape {
            return Err(ModelError::file(
                &self.file,
                format!("tensor '{name}' has shape {:?} but config.json implies {:?}", t.size(), shape),
            ));
        }
        Ok(t)
    }

    /// The remaining name closest to `name`: the longest shared suffix of dot-separated parts, then
    /// the longest shared prefix (a renamed prefix such as `roberta.` vs `bert.` keeps the suffix).
    fn nearest(&self, name: &str) -> Option<&str> {
        let parts: Vec<&str> = name.split('.').collect();
        self.tensors
            .keys()
            .map(|k| {
                let kp: Vec<&str> = k.split('.').collect();
                let suffix = parts.iter().rev().zip(kp.iter().rev()).take_while(|(a, b)| a == b).count();
                let prefix = parts.iter().zip(kp.iter()).take_while(|(a, b)| a == b).count();
                (suffix, prefix, k.as_str())
            })
            .filter(|&(suffix, prefix, _)| suffix + prefix > 0)
            .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| b.2.cmp(a.2)))
            .map(|(_, _, k)| k)
    }

    /// Removes `name` if present.
    pub fn take_optional(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Names that no component consumed, minus buffers the reference code rebuilds itself
    /// (`position_ids`, NorBERT3's `position_indices`) and BERT's unused pooler.
    pub fn leftovers(&self) -> Vec<String> {
        self.tensors
            .keys()
            .filter(|k| !k.ends_with("position_ids") && !k.ends_with("position_indices") && !k.starts_with("bert.pooler."))
            .cloned()
            .collect()
    }
}

mod ffi {
    use std::ffi::{c_char, c_void};
    extern "C" {
        pub fn splade_pickle_load_state_dict(
            path: *const c_char,
            ctx: *mut c_void,
            f: extern "C" fn(*mut c_void, *const c_char, *mut c_void),
        ) -> *mut c_char;
    }
}

/// Every (name, tensor) of the dict pickled in `file` by `torch.save`.
fn pickle_load_state_dict(file: &Path) -> Result<Vec<(String, Tensor)>, String> {
    use std::ffi::{c_char, c_void, CStr, CString};
    extern "C" fn push(ctx: *mut c_void, name: *const c_char, tensor: *mut c_void) {
        // SAFETY: `ctx` is the Vec passed below, alive for the call; `name` is a NUL-terminated
        // string valid during the callback; `tensor` is a heap at::Tensor whose ownership we take.
        let out = unsafe { &mut *(ctx as *mut Vec<(String, Tensor)>) };
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        out.push((name, unsafe { Tensor::from_ptr(tensor as *mut torch_sys::C_tensor) }));
    }
    let path = CString::new(file.as_os_str().as_encoded_bytes()).map_err(|_| "the path holds a NUL byte".to_string())?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let err = unsafe { ffi::splade_pickle_load_state_dict(path.as_ptr(), &mut out as *mut _ as *mut c_void, push) };
    crate::dist::ffi::check(err)?;
    Ok(out)
}

/// Writes `tensors` as float32 safetensors with the `{"format": "pt"}` metadata transformers checks.
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), ModelError> {
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let numel = shape.iter().product::<usize>();
        let mut buf = vec![0f32; numel];
        t.copy_data(&mut buf, numel);
        let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), bytes, shape));
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, b, s)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("sizes computed above")))
        .collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(meta), path)
        .map_err(|e| ModelError::file(path, format!("cannot write safetensors: {e}")))
}
