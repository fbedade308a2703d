//! CSR (Contrastive Sparse Representation): a dense sentence embedding (the encoder's hidden
//! states, pooled as the base folder's `Pooling` module says, optionally `Normalize`d) fed to a
//! top-k sparse autoencoder, sentence-transformers' `SparseAutoEncoder`. Reads top to bottom: the
//! dense pooling, the autoencoder's config, the autoencoder, its training forward.
//!
//! Guarantee: [`CsrHead::encode`] gives the `sentence_embedding` of `SparseAutoEncoder.forward`
//! under `torch.inference_mode` (top-k of the pre-activations, then ReLU), and
//! [`CsrHead::train_forward`] gives every feature its training forward returns, updating
//! `stats_last_nonzero` exactly as its two `top_k` calls do (once for k, once for 4·k).

use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Reduction, Tensor};

use super::tokenize::Batch;
use super::weights::Weights;
use super::ModelError;

/// How token states become one dense vector: sentence-transformers' `Pooling` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DensePooling {
    Mean,
    Cls,
    Max,
    MeanSqrtLen,
}

impl DensePooling {
    /// The mode of a `Pooling/config.json`: 6.x writes `pooling_mode`, 5.x one boolean per mode.
    pub fn from_config(v: &serde_json::Value, path: &Path) -> Result<Self, ModelError> {
        if let Some(mode) = v["pooling_mode"].as_str() {
            return Self::from_name(mode).ok_or_else(|| unsupported(path, mode));
        }
        if let Some(modes) = v["pooling_mode"].as_array() {
            if modes.len() == 1 {
                let m = modes[0].as_str().unwrap_or_default();
                return Self::from_name(m).ok_or_else(|| unsupported(path, m));
            }
            return Err(unsupported(path, &format!("{modes:?}")));
        }
        let on = |k: &str| v[k].as_bool().unwrap_or(false);
        let set: Vec<&str> = [
            "pooling_mode_cls_token",
            "pooling_mode_mean_tokens",
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
            "pooling_mode_lasttoken",
        ]
        .into_iter()
        .filter(|k| on(k))
        .collect();
        match set.as_slice() {
            ["pooling_mode_cls_token"] => Ok(Self::Cls),
            ["pooling_mode_mean_tokens"] => Ok(Self::Mean),
            ["pooling_mode_max_tokens"] => Ok(Self::Max),
            ["pooling_mode_mean_sqrt_len_tokens"] => Ok(Self::MeanSqrtLen),
            other => Err(unsupported(path, &format!("{other:?}"))),
        }
    }

    fn from_name(m: &str) -> Option<Self> {
        Some(match m {
            "mean" => Self::Mean,
            "cls" => Self::Cls,
            "max" => Self::Max,
            "mean_sqrt_len_tokens" => Self::MeanSqrtLen,
            _ => return None,
        })
    }

    /// The 5.x `Pooling/config.json` (which 6.2 reads too).
    pub fn config_json(self, dim: i64) -> serde_json::Value {
        serde_json::json!({
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": self == Self::Cls,
            "pooling_mode_mean_tokens": self == Self::Mean,
            "pooling_mode_max_tokens": self == Self::Max,
            "pooling_mode_mean_sqrt_len_tokens": self == Self::MeanSqrtLen,
            "pooling_mode_weightedmean_tokens": false,
            "pooling_mode_lasttoken": false,
            "include_prompt": true
        })
    }

    /// [B, L, H] token states → [B, H], as `Pooling.forward` computes it.
    pub fn pool(self, hidden: &Tensor, attention_mask: &Tensor) -> Tensor {
        let mask = attention_mask.unsqueeze(-1).to_kind(hidden.kind());
        match self {
            Self::Cls => hidden.select(1, 0),
            Self::Max => {
                let filled = hidden.masked_fill(&mask.eq(0.0), -1e9);
                filled.amax([1i64].as_slice(), false)
            }
            Self::Mean | Self::MeanSqrtLen => {
                let sum = (hidden * &mask).sum_dim_intlist([1i64].as_slice(), false, hidden.kind());
                let n = mask.sum_dim_intlist([1i64].as_slice(), false, hidden.kind()).clamp_min(1e-9);
                if self == Self::Mean {
                    sum / n
                } else {
                    sum / n.sqrt()
                }
            }
        }
    }
}

fn unsupported(path: &Path, mode: &str) -> ModelError {
    ModelError::file(
        path,
        format!("pooling mode {mode} is not supported for CSR; use one of mean, cls, max, mean_sqrt_len_tokens"),
    )
}

/// `SparseAutoEncoder/config.json`, key for key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CsrConfig {
    pub input_dim: i64,
    #[serde(default = "default_hidden")]
    pub hidden_dim: i64,
    #[serde(default = "default_k")]
    pub k: i64,
    #[serde(default = "default_k_aux")]
    pub k_aux: i64,
    #[serde(default)]
    pub normalize: bool,
    #[serde(default = "default_dead")]
    pub dead_threshold: i64,
}

fn default_hidden() -> i64 {
    512
}
fn default_k() -> i64 {
    8
}
fn default_k_aux() -> i64 {
    512
}
fn default_dead() -> i64 {
    30
}

impl CsrConfig {
    /// The sizes must let `topk` run: k and k_aux latents among `hidden_dim`.
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::file(path, m));
        if self.k < 1 || self.k > self.hidden_dim {
            return bad(format!(
                "k = {} must be between 1 and hidden_dim = {} (csr_k larger than csr_hidden_dim: lower csr_k or raise csr_hidden_dim)",
                self.k, self.hidden_dim
            ));
        }
        if self.k_aux < 0 || self.k_aux > self.hidden_dim {
            return bad(format!(
                "k_aux = {} must be between 0 and hidden_dim = {} (lower csr_k_aux or raise csr_hidden_dim)",
                self.k_aux, self.hidden_dim
            ));
        }
        Ok(())
    }
}

/// The VarStore prefix of the autoencoder's parameters (kept apart from the encoder's names).
pub const CSR_PREFIX: &str = "sparse_auto_encoder";

/// Everything `SparseAutoEncoder.forward` returns while training, plus the backbone it was given.
pub struct CsrFeatures {
    /// `sentence_embedding_backbone`: the dense input x.
    pub backbone: Tensor,
    /// `sentence_embedding`: top-k latents after ReLU.
    pub latents_k: Tensor,
    pub decoded_k: Tensor,
    pub decoded_4k: Tensor,
    /// `None` when `k_aux` is 0.
    pub decoded_aux: Option<Tensor>,
    pub decoded_k_pre_bias: Tensor,
}

/// The dense pooling plus the sparse autoencoder: a sparse head over an encoder's hidden states.
pub struct CsrHead {
    pub config: CsrConfig,
    pub pooling: DensePooling,
    /// A `Normalize` module between the pooling and the autoencoder.
    pub normalize_embedding: bool,
    pub pre_bias: Tensor,
    /// `encoder.weight` [hidden_dim, input_dim]; the decoder is its transpose (tied).
    pub encoder_weight: Tensor,
    pub latent_bias: Tensor,
    /// `stats_last_nonzero` [hidden_dim] (int64): calls of `top_k` since each latent last fired.
    pub stats_last_nonzero: Mutex<Tensor>,
    /// `config_sentence_transformers.json`'s `max_active_dims` (the SparseEncoder's default k at encode).
    pub max_active_dims: Option<i64>,
}

impl CsrHead {
    /// Loads a `SparseAutoEncoder` folder (`config.json`, `model.safetensors`) into `vs`.
    pub fn load(vs: &nn::Path, dir: &Path, pooling: DensePooling, normalize_embedding: bool) -> Result<Self, ModelError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::file(&cfg_path, format!("cannot read: {e}")))?;
        let config: CsrConfig =
            serde_json::from_str(&text).map_err(|e| ModelError::file(&cfg_path, format!("invalid SparseAutoEncoder config: {e}")))?;
        config.validate(&cfg_path)?;
        let file = dir.join("model.safetensors");
        // Names as saved (the BERT canonicalisation would turn `encoder.weight` into `bert.…`).
        let mut w = Weights::load_as(&file, super::encoder::Architecture::XlmRoberta)?;
        let (h, d) = (config.hidden_dim, config.input_dim);
        // The tied decoder shares the encoder's storage; safetensors keeps one name of the two.
        let enc = match w.take_optional("encoder.weight") {
            Some(t) => {
                let _ = w.take_optional("decoder.linear.weight");
                t
            }
            None => w.take("decoder.linear.weight", &[h, d])?,
        };
        if enc.size() != [h, d] {
            return Err(ModelError::file(&file, format!("encoder.weight has shape {:?}, expected [{h}, {d}] (hidden_dim, input_dim)", enc.size())));
        }
        let pre_bias = w.take("pre_bias", &[d])?;
        let latent_bias = w.take("latent_bias", &[h])?;
        let stats = match w.take_optional("stats_last_nonzero") {
            Some(s) => s.to_kind(Kind::Int64),
            None => Tensor::zeros([h], (Kind::Int64, Device::Cpu)),
        };
        let p = vs / CSR_PREFIX;
        Ok(Self {
            pre_bias: p.var_copy("pre_bias", &pre_bias),
            encoder_weight: (&p / "encoder").var_copy("weight", &enc),
            latent_bias: p.var_copy("latent_bias", &latent_bias),
            stats_last_nonzero: Mutex::new(stats),
            config,
            pooling,
            normalize_embedding,
            max_active_dims: None,
        })
    }

    /// A fresh autoencoder as `SparseAutoEncoder(input_dim, ...)` builds it: zero biases, the encoder
    /// weight initialised as `nn.Linear` does (kaiming-uniform, a = √5: U(−1/√in, 1/√in)), seeded by
    /// `tch::manual_seed`.
    pub fn fresh(vs: &nn::Path, config: CsrConfig, pooling: DensePooling, normalize_embedding: bool) -> Self {
        let p = vs / CSR_PREFIX;
        let (h, d) = (config.hidden_dim, config.input_dim);
        let bound = 1.0 / (d as f64).sqrt();
        Self {
            pre_bias: p.var("pre_bias", &[d], nn::Init::Const(0.0)),
            encoder_weight: (&p / "encoder").var("weight", &[h, d], nn::Init::Uniform { lo: -bound, up: bound }),
            latent_bias: p.var("latent_bias", &[h], nn::Init::Const(0.0)),
            stats_last_nonzero: Mutex::new(Tensor::zeros([h], (Kind::Int64, Device::Cpu))),
            config,
            pooling,
            normalize_embedding,
            max_active_dims: None,
        }
    }

    /// The dense sentence embedding [B, H] of hidden states [B, L, H]: pooling, then `Normalize`.
    pub fn backbone(&self, hidden: &Tensor, batch: &Batch) -> Tensor {
        let x = self.pooling.pool(hidden, &batch.attention_mask);
        if self.normalize_embedding {
            // F.normalize(p=2, dim=1, eps=1e-12)
            let n = x.norm_scalaropt_dim(2.0, [1i64].as_slice(), true).clamp_min(1e-12);
            x / n
        } else {
            x
        }
    }

    /// `prepare`: layer norm with the unbiased std when `normalize` (returning mu, std).
    fn prepare(&self, x: &Tensor) -> (Tensor, Option<(Tensor, Tensor)>) {
        if !self.config.normalize {
            return (x.shallow_clone(), None);
        }
        let mu = x.mean_dim([-1i64].as_slice(), true, x.kind());
        let xc = x - &mu;
        let std = xc.std_dim([-1i64].as_slice(), true, true);
        (&xc / (&std + 1e-5), Some((mu, std)))
    }

    fn encode_pre_act(&self, x: &Tensor) -> Tensor {
        (x - &self.pre_bias).linear(&self.encoder_weight, Some(&self.latent_bias))
    }

    /// Top-`k` of `x` scattered into zeros, then ReLU.
    fn top_k(x: &Tensor, k: i64) -> (Tensor, Tensor, Tensor) {
        let (values, indices) = x.topk(k, -1, true, true);
        let z = Tensor::zeros_like(x).scatter(-1, &indices, &values);
        (z.relu(), values, indices)
    }

    /// `top_k`'s statistics update (training with gradients on): latents among the top k with a
    /// value above 1e-5 reset to 0, then every counter +1.
    fn update_stats(&self, values: &Tensor, indices: &Tensor) {
        let mut stats = self.stats_last_nonzero.lock().unwrap_or_else(|e| e.into_inner());
        let dev = stats.device();
        let idx = indices.reshape([-1]).to_device(dev);
        let fired = values.gt(1e-5).to_kind(Kind::Int64).reshape([-1]).to_device(dev);
        let tmp = Tensor::zeros_like(&stats).scatter_add(0, &idx, &fired);
        *stats = &*stats * (tmp.clamp_max(1).neg() + 1i64) + 1i64;
    }

    /// How many latents are dead (`stats_last_nonzero > dead_threshold`).
    pub fn dead_latents(&self) -> i64 {
        let stats = self.stats_last_nonzero.lock().unwrap_or_else(|e| e.into_inner());
        stats.gt(self.config.dead_threshold).sum(Kind::Int64).int64_value(&[])
    }

    /// Sum of `stats_last_nonzero` (a fingerprint of the whole counter vector).
    pub fn stats_sum(&self) -> i64 {
        let stats = self.stats_last_nonzero.lock().unwrap_or_else(|e| e.into_inner());
        stats.sum(Kind::Int64).int64_value(&[])
    }

    /// The sparse embedding [B, hidden_dim] of dense embeddings [B, H] at inference: the top
    /// `k` latents (`max_active_dims` when given, as `SparseEncoder.encode(max_active_dims=…)` passes
    /// it to the module), after ReLU. No statistics change.
    pub fn encode(&self, x: &Tensor, max_active_dims: Option<i64>) -> Tensor {
        let k = max_active_dims.or(self.max_active_dims).unwrap_or(self.config.k).min(self.config.hidden_dim);
        let (xp, _) = self.prepare(x);
        Self::top_k(&self.encode_pre_act(&xp), k).0
    }

    fn decode(&self, latents: &Tensor, info: &Option<(Tensor, Tensor)>) -> Tensor {
        // TiedTranspose: F.linear(latents, encoder.weight.t()) = latents · W.
        let ret = latents.matmul(&self.encoder_weight) + &self.pre_bias;
        match info {
            Some((mu, std)) => ret * std + mu,
            None => ret,
        }
    }

    /// `SparseAutoEncoder.forward` in training mode on dense embeddings `x` [B, H]; updates the
    /// dead-latent statistics when `track` (the module does under `self.training and
    /// torch.is_grad_enabled()`, which holds for every training loss call).
    pub fn train_forward(&self, x: &Tensor, track: bool) -> CsrFeatures {
        let c = &self.config;
        let (xp, info) = self.prepare(x);
        let pre = self.encode_pre_act(&xp);
        let (latents_k, values, indices) = Self::top_k(&pre, c.k);
        if track {
            self.update_stats(&values, &indices);
        }
        let latents_aux = (c.k_aux > 0).then(|| {
            let stats = self.stats_last_nonzero.lock().unwrap_or_else(|e| e.into_inner());
            let dead = stats.gt(c.dead_threshold).to_device(pre.device());
            drop(stats);
            Self::top_k(&(&pre * dead), c.k_aux).0
        });
        let (latents_4k, v4, i4) = Self::top_k(&pre, (4 * c.k).min(c.hidden_dim));
        if track {
            self.update_stats(&v4, &i4);
        }
        let decoded_k = self.decode(&latents_k, &info);
        let decoded_4k = self.decode(&latents_4k, &info);
        let mut decoded_aux = latents_aux.map(|a| a.matmul(&self.encoder_weight) + &self.pre_bias);
        let mut decoder_bias = self.pre_bias.shallow_clone();
        if let Some((_, std)) = &info {
            decoder_bias = decoder_bias * std;
            decoded_aux = decoded_aux.map(|a| a * std);
        }
        let decoded_k_pre_bias = &decoded_k - decoder_bias;
        CsrFeatures { backbone: x.shallow_clone(), latents_k, decoded_k, decoded_4k, decoded_aux, decoded_k_pre_bias }
    }

    /// The autoencoder's parameters by the names `SparseAutoEncoder` saves: safetensors keeps one name
    /// of the tied encoder/decoder weight, `decoder.linear.weight` (a file with both is refused).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu).contiguous();
        let stats = self.stats_last_nonzero.lock().unwrap_or_else(|e| e.into_inner());
        vec![
            ("decoder.linear.weight".into(), cpu(&self.encoder_weight)),
            ("latent_bias".into(), cpu(&self.latent_bias)),
            ("pre_bias".into(), cpu(&self.pre_bias)),
            ("stats_last_nonzero".into(), stats.to_device(Device::Cpu).contiguous()),
        ]
    }

    /// Moves the statistics next to the parameters.
    pub fn set_device(&self, device: Device) {
        let mut stats = self.stats_last_nonzero.lock().unwrap_or_else(|e| e.into_inner());
        *stats = stats.to_device(device);
    }
}

/// `normalized_mean_squared_error`: MSE over the batch variance of `original` (plain MSE when the
/// variance is 0 or every row equals the first).
pub fn normalized_mse(reconstruction: &Tensor, original: &Tensor) -> Tensor {
    let mean = original.mean_dim([0i64].as_slice(), true, Kind::Float).expand_as(original);
    let norm = mean.mse_loss(original, Reduction::Mean);
    let all_same = original.eq_tensor(&original.narrow(0, 0, 1)).all();
    let degenerate = norm.eq(0.0).logical_or(&all_same);
    let norm = norm.where_self(&degenerate.logical_not(), &Tensor::ones_like(&norm));
    reconstruction.mse_loss(original, Reduction::Mean) / norm
}
