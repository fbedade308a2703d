//! The one YAML config schema every command reads (`splade train`, the coordinator, evaluation).
//!
//! It accepts sentence-transformers `SparseEncoder` training configs: sections `model`, `training`, `loss`,
//! `datasets`, `evaluation`, `mlflow`, `model_card`, `hardware`, `cluster`, `document_windows`. Defaults follow
//! sentence-transformers / Hugging Face `TrainingArguments` (documented on each field).
//!
//! Guarantees:
//! - An unknown key is an error naming the file, its line, the dotted key and the nearest valid key.
//! - A wrong type names the file, line, key, the value as written and the expected type.
//! - String values (and numbers written as `${VAR}`) expand `${VAR}` and `${VAR:-default}` from the environment;
//!   `$${` writes a literal `${`. An unset variable without a default is an error naming it.
//! - Numbers are read by the type the key expects, so `learning_rate: 5e-5` is a number (PyYAML would read a
//!   string there).
//! - Keys that are parsed but not acted on yet are listed by [`Config::inactive_keys`] (see [`INACTIVE_KEYS`]).

// Config errors carry file, line, key, value and choices so each reads on its own; they occur once per run, so
// their size does not matter.
#![allow(clippy::result_large_err)]

mod error;
pub mod check;
pub mod mteb;
mod yaml;

use std::collections::BTreeMap;
use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use crate::data::spec::{
    BatchSamplerKind, DataFormat, DatasetSpec, DdscLoader, EtiLoader, NliLoader, OnBadRecord, SamplingStrategy,
    ScandiQaLoader, SeedLoader, SplitRatio, SEED_LOADER_NAMES,
};

/// Keys the project parses but does not act on, each with the reason. The trainer reports each one set in the
/// file at start-up (see [`Config::inactive_keys`]); remove a key from this list when a component starts
/// honouring it.
pub const INACTIVE_KEYS: &[(&str, &str)] = &[
    ("training.dataloader_num_workers", "rows are read by the data path and the next step is tokenized on one background thread; there are no loader worker processes to size"),
    ("training.dataloader_prefetch_factor", "the tokenizer thread works one step ahead of training; the depth is not configurable"),
    ("training.push_to_hub", HUB_REASON),
    ("training.hub_model_id", HUB_REASON),
    ("training.hub_strategy", HUB_REASON),
    ("training.hub_private_repo", HUB_REASON),
    ("training.torch_compile", "libtorch runs eager kernels from Rust; torch.compile is a Python-side graph compiler"),
    ("hardware.gradient_checkpointing", "not needed here: the lean max-pooled head never builds the [batch, length, vocabulary] logits, and `document_windows` bounds the sequence length; those are this project's answer to activation memory"),
    ("hardware.tf32", "libtorch's TF32 defaults apply (cuDNN convolutions on, cuBLAS matmuls off); NVIDIA_TF32_OVERRIDE=0 turns it off everywhere"),
    ("evaluation.mteb_tasks", "the names are checked and mapped to MTEB task names; like the seed's training script, training does not evaluate them: run `splade eval --model OUT/final --task NorQuadRetrieval` (MTEB names resolve from the Hub)"),
];

const HUB_REASON: &str =
    "no Hub uploads from the trainer: upload `output_dir/final` (a sentence-transformers folder) with `huggingface-cli upload`";


/// A parsed, not yet validated config. Call [`Config::validate`] before acting on it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The encoder to train.
    pub model: ModelConfig,
    /// Optimisation, schedule, checkpointing and logging (Hugging Face `TrainingArguments` names).
    pub training: TrainingConfig,
    /// The SPLADE loss and its regularizers.
    pub loss: LossConfig,
    /// Training datasets and how batches are drawn from them.
    pub datasets: DatasetsConfig,
    /// Retrieval evaluation.
    pub evaluation: EvaluationConfig,
    /// MLflow tracking.
    pub mlflow: MlflowConfig,
    /// Metadata for the saved model card.
    pub model_card: ModelCardConfig,
    /// Device and threading.
    pub hardware: HardwareConfig,
    /// Multi-node training (coordinator and workers).
    pub cluster: ClusterConfig,
    /// Splitting long documents into overlapping windows; absent means no windowing.
    pub document_windows: Option<DocumentWindowsConfig>,
    /// sentence-transformers' Router settings (inference-free SPLADE): column routes and per-parameter
    /// learning rates.
    pub router: RouterConfig,
    /// Where the config came from (a path, or the name given to [`Config::from_str`]); used in errors.
    #[serde(skip)]
    pub origin: String,
    /// Every dotted key written in the file, with its line and whether its value is "off".
    #[serde(skip)]
    written: BTreeMap<String, Written>,
    /// The `--set key=value` arguments applied on top of the file, in order; errors about their values name
    /// them instead of a line.
    #[serde(skip)]
    sets: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Written {
    line: usize,
    off: bool,
}

/// `model:`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A Hugging Face model id or a local folder. Required.
    pub base_model: String,
    /// Default `splade`.
    pub architecture: Architecture,
    /// SPLADE pooling over tokens; default `max`.
    pub pooling_strategy: PoolingStrategy,
    /// sentence-transformers' Router module: inference-free SPLADE is always saved as a Router (query route a
    /// `SparseStaticEmbedding`, document route the MLM); `true` with `architecture: splade` is refused.
    pub use_router: bool,
    /// Inference-free only: keep the query-side static weights fixed. Default false.
    pub freeze_static_embedding: bool,
    /// Load `base_model` as a finished sparse encoder (sentence-transformers folder) instead of building one
    /// from an MLM checkpoint. Default false.
    pub load_pretrained_sparse_encoder: bool,
    /// NorBERT4 / GPT-BERT: run the MLM head without its `30·sigmoid(x/7.5)` (which makes every
    /// logit positive, so nothing is sparse), as the seed's `patch_norbert4_for_splade.py` does; the
    /// saved `modeling_gptbert.py` is patched to match. Unset: the seed's defaults, true when building
    /// from a base model, and on the `load_pretrained_sparse_encoder` path whatever the folder's own
    /// code does. Other architectures ignore it.
    pub patch_sigmoid_for_sparsity: Option<bool>,
    /// Overrides the checkpoint's dropout (hidden and attention) when set; 0 for parity tests.
    pub dropout: Option<f64>,
    /// CSR: latents kept per text by the sparse autoencoder (`SparseAutoEncoder.k`); default 256
    /// (the seed's). Training also takes the top 4·k, so 4·k must fit in `csr_hidden_dim`.
    pub csr_k: Option<usize>,
    /// CSR: latents of the auxiliary (dead-latent) reconstruction (`k_aux`); default 512.
    pub csr_k_aux: Option<usize>,
    /// CSR: autoencoder width (`hidden_dim`); default 4 × the base's embedding dimension.
    pub csr_hidden_dim: Option<usize>,
    /// CSR: layer-normalise the dense embedding before encoding (`normalize`); default false.
    pub csr_normalize: Option<bool>,
    /// CSR: steps without activation after which a latent counts as dead (`dead_threshold`); default 30.
    pub csr_dead_threshold: Option<u64>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            base_model: String::new(),
            architecture: Architecture::Splade,
            pooling_strategy: PoolingStrategy::Max,
            use_router: false,
            freeze_static_embedding: false,
            load_pretrained_sparse_encoder: false,
            patch_sigmoid_for_sparsity: None,
            dropout: None,
            csr_k: None,
            csr_k_aux: None,
            csr_hidden_dim: None,
            csr_normalize: None,
            csr_dead_threshold: None,
        }
    }
}

/// `model.architecture`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// MLM encoder + SPLADE pooling on both sides.
    #[serde(rename = "splade")]
    Splade,
    /// Learned per-token query weights (`SparseStaticEmbedding`), MLM encoder for documents.
    #[serde(rename = "inference-free-splade")]
    InferenceFreeSplade,
    /// Contrastive Sparse Representation: a dense encoder, its pooling, and a top-k sparse
    /// autoencoder (sentence-transformers' `SparseAutoEncoder`); trained with `loss.type: csr_loss`.
    #[serde(rename = "csr")]
    Csr,
}

/// `model.pooling_strategy`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingStrategy {
    /// `max_i log(1 + relu(logit))`, SPLADE v2+.
    Max,
    /// `sum_i log(1 + relu(logit))`, SPLADE v1.
    Sum,
}

/// `training:` — names and defaults as Hugging Face `TrainingArguments` / sentence-transformers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// Local path or object-store URL for checkpoints and the final model. Default `output`.
    pub output_dir: String,
    /// Default 3.0 (HF). Ignored when `max_steps` > 0.
    pub num_train_epochs: f64,
    /// Optimizer steps to run; -1 (default, HF) means "run `num_train_epochs`".
    pub max_steps: i64,
    /// Default 8 (HF).
    pub per_device_train_batch_size: usize,
    /// Default 8 (HF).
    pub per_device_eval_batch_size: usize,
    /// Default 1 (HF).
    pub gradient_accumulation_steps: usize,
    /// Exact large-batch accumulation (GradCache); default false.
    pub gradient_cache: bool,
    /// Default 5e-5 (HF).
    pub learning_rate: f64,
    /// Learning rate of the inference-free query weights; default: `learning_rate`.
    pub query_learning_rate: Option<f64>,
    /// Fraction of steps with linear warm-up; default 0 (HF).
    pub warmup_ratio: f64,
    /// AdamW weight decay; default 0 (HF).
    pub weight_decay: f64,
    /// Gradient clipping norm; default 1.0 (HF); 0 disables clipping.
    pub max_grad_norm: f64,
    /// Default false. True runs the encoder forwards under fp16 autocast with dynamic loss scaling
    /// (torch's `GradScaler` defaults: scale 2^16, ×2 after 2000 finite steps, ×0.5 and the optimizer
    /// step skipped on inf/NaN gradients); parameters, gradients and optimizer state stay fp32.
    /// Exclusive with `bf16`.
    pub fp16: bool,
    /// Default false. True runs the encoder forwards under bf16 autocast (CUDA, MPS, and CPUs with
    /// AVX512-BF16/AMX); parameters, gradients and optimizer state stay fp32.
    pub bf16: bool,
    /// Truncation length for both sides when the side-specific ones are unset; default: the model's.
    pub max_seq_length: Option<usize>,
    /// Query truncation length; default `max_seq_length`.
    pub query_max_length: Option<usize>,
    /// Document truncation length; default `max_seq_length`.
    pub document_max_length: Option<usize>,
    /// Default `batch_sampler` (sentence-transformers' default).
    pub batch_sampler: BatchSamplerKind,
    /// Inactive (see [`INACTIVE_KEYS`]). Default false.
    pub group_by_length: bool,
    /// `no` (default), `steps` or `epoch`.
    pub eval_strategy: IntervalStrategy,
    /// Steps between evaluations (a value below 1 is a fraction of the total); default `logging_steps`.
    pub eval_steps: Option<f64>,
    /// Steps between log lines (a value below 1 is a fraction of the total); default 500 (HF).
    pub logging_steps: f64,
    /// TensorBoard event-file folder. Default: `output_dir/runs/<run_name>`.
    pub logging_dir: Option<String>,
    /// `steps` (default), `epoch`, `best` or `no`.
    pub save_strategy: SaveStrategy,
    /// Steps between checkpoints (a value below 1 is a fraction of the total); default 500 (HF).
    pub save_steps: f64,
    /// Keep at most this many checkpoints (the best one is never deleted); default unlimited.
    pub save_total_limit: Option<usize>,
    /// Default false.
    pub load_best_model_at_end: bool,
    /// e.g. `eval_norquad_ndcg@10`, `eval_NanoBEIR_mean_dot_ndcg@10` (the mean over tasks) or `loss`; default: the mean NDCG@10.
    pub metric_for_best_model: Option<String>,
    /// Default: true unless the metric is a loss (HF).
    pub greater_is_better: Option<bool>,
    /// Default: `YYYYmmdd-HHMMSS-<host>` (UTC).
    pub run_name: Option<String>,
    /// Integrations (`mlflow`, `tensorboard`, `none`, ...); a single string or a list. Default none.
    #[serde(deserialize_with = "one_or_many")]
    pub report_to: Vec<String>,
    /// Default 42 (HF).
    pub seed: u64,
    /// `true` (latest checkpoint in `output_dir`), a checkpoint path, or unset/false.
    #[serde(deserialize_with = "resume_opt")]
    pub resume_from_checkpoint: Option<ResumeFrom>,
    /// Inactive (see [`INACTIVE_KEYS`]). Default 0.
    pub dataloader_num_workers: usize,
    /// Batches reach CUDA through pinned (page-locked) host memory with non-blocking copies; default true
    /// (Hugging Face `TrainingArguments`). No effect on CPU and MPS.
    pub dataloader_pin_memory: Option<bool>,
    /// Inactive (see [`INACTIVE_KEYS`]).
    pub dataloader_prefetch_factor: Option<usize>,
    /// Stop after this many evaluations without improvement of `metric_for_best_model`
    /// (transformers' `EarlyStoppingCallback`); unset: no early stopping.
    pub early_stopping_patience: Option<u64>,
    /// The improvement that counts (`EarlyStoppingCallback`'s `early_stopping_threshold`); default 0.
    pub early_stopping_threshold: f64,
    /// Inactive. Default false.
    pub push_to_hub: bool,
    /// Inactive.
    pub hub_model_id: Option<String>,
    /// Inactive. Default `every_save`.
    pub hub_strategy: String,
    /// Inactive.
    pub hub_private_repo: Option<bool>,
    /// Inactive. Default false.
    pub torch_compile: bool,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            output_dir: "output".into(),
            num_train_epochs: 3.0,
            max_steps: -1,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            gradient_cache: false,
            learning_rate: 5e-5,
            query_learning_rate: None,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            fp16: false,
            bf16: false,
            max_seq_length: None,
            query_max_length: None,
            document_max_length: None,
            batch_sampler: BatchSamplerKind::BatchSampler,
            group_by_length: false,
            eval_strategy: IntervalStrategy::No,
            eval_steps: None,
            logging_steps: 500.0,
            logging_dir: None,
            save_strategy: SaveStrategy::Steps,
            save_steps: 500.0,
            save_total_limit: None,
            load_best_model_at_end: false,
            metric_for_best_model: None,
            greater_is_better: None,
            run_name: None,
            report_to: Vec::new(),
            seed: 42,
            resume_from_checkpoint: None,
            dataloader_num_workers: 0,
            dataloader_pin_memory: None,
            dataloader_prefetch_factor: None,
            early_stopping_patience: None,
            early_stopping_threshold: 0.0,
            push_to_hub: false,
            hub_model_id: None,
            hub_strategy: "every_save".into(),
            hub_private_repo: None,
            torch_compile: false,
        }
    }
}

impl TrainingConfig {
    /// `max_steps` when positive.
    pub fn max_steps(&self) -> Option<u64> {
        (self.max_steps > 0).then_some(self.max_steps as u64)
    }
}

/// `training.eval_strategy`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalStrategy {
    /// Never.
    No,
    /// Every `eval_steps`.
    Steps,
    /// At the end of each epoch.
    Epoch,
}

/// `training.save_strategy`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveStrategy {
    /// Never (only the final model).
    No,
    /// Every `save_steps`.
    Steps,
    /// At the end of each epoch.
    Epoch,
    /// Whenever `metric_for_best_model` improves.
    Best,
}

/// `training.resume_from_checkpoint`: `true` or a path/URL (null or leaving it out means "do not resume").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The latest verified checkpoint under `output_dir`.
    Latest,
    /// This checkpoint (local path or URL).
    Path(String),
}

impl Serialize for ResumeFrom {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ResumeFrom::Latest => s.serialize_bool(true),
            ResumeFrom::Path(p) => s.serialize_str(p),
        }
    }
}

/// `true` → latest, `false`/null/"" → no resume, other strings → that checkpoint.
fn resume_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ResumeFrom>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<ResumeFrom>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true, false or a checkpoint path")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.then_some(ResumeFrom::Latest))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok((!v.is_empty()).then(|| ResumeFrom::Path(v.to_string())))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// A string or a list of strings, as a list (null is empty).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Vec<String>, E> {
            Ok(vec![v])
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Vec<String>, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// `loss:`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Only `splade_loss` (the wrapper adding FLOPS regularizers).
    #[serde(rename = "type")]
    pub kind: LossType,
    /// The ranking loss inside; default `sparse_multiple_negatives_ranking_loss`.
    pub inner_loss: InnerLoss,
    /// FLOPS weight on queries; default 5e-5 (sentence-transformers' SPLADE example).
    pub query_regularizer_weight: f64,
    /// FLOPS weight on documents; default 3e-5 (sentence-transformers' SPLADE example).
    pub document_regularizer_weight: f64,
    /// Fraction of training over which the regularizer weights grow quadratically from 0; default 1/3.
    pub regularizer_warmup_ratio: f64,
    /// Multiplier on dot products in sparse MNRL; default 1.0 (sentence-transformers' sparse MNRL).
    pub scale: f64,
    /// Distillation temperature for `sparse_distill_kldiv`; default 2.0 (sentence-transformers).
    pub temperature: f64,
    /// `csr_loss`: the weight of the auxiliary (dead-latent) reconstruction term, `CSRLoss`'s `beta`;
    /// default 0.1. The seed passes it as `aux_loss_weight`, a keyword `CSRLoss` does not take.
    pub aux_loss_weight: f64,
    /// `csr_loss`: the weight of the inner ranking loss, `CSRLoss`'s `gamma`; default 1.0.
    pub gamma: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            kind: LossType::SpladeLoss,
            inner_loss: InnerLoss::SparseMultipleNegativesRankingLoss,
            query_regularizer_weight: 5e-5,
            document_regularizer_weight: 3e-5,
            regularizer_warmup_ratio: 1.0 / 3.0,
            scale: 1.0,
            temperature: 2.0,
            aux_loss_weight: 0.1,
            gamma: 1.0,
        }
    }
}

/// `loss.type`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// sentence-transformers' `SpladeLoss`.
    SpladeLoss,
    /// sentence-transformers' `CSRLoss` (reconstruction + auxiliary + inner ranking loss), for
    /// `model.architecture: csr`.
    CsrLoss,
}

/// `loss.inner_loss`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InnerLoss {
    /// Cross-entropy over in-batch and hard negatives.
    SparseMultipleNegativesRankingLoss,
    /// MSE on teacher margins (`label`: one margin per negative).
    SparseMarginMse,
    /// KL divergence to teacher scores (`label`: one score per candidate).
    SparseDistillKldiv,
}

/// `datasets:` — `sampling_strategy` plus one named block per dataset, in the order written. Blocks named
/// `nli`, `scandi_qa`, `ddsc` and `eti` are the seed project's loader blocks ([`SeedLoader`], with the seed's
/// keys and defaults); every other name is a file block ([`DatasetSpec`] with a `source`).
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetsConfig {
    /// How batches alternate between datasets; default `proportional` (sentence-transformers' default).
    pub sampling_strategy: SamplingStrategy,
    /// The dataset blocks, in file order.
    pub datasets: Vec<(String, DatasetSpec)>,
}

impl Default for DatasetsConfig {
    fn default() -> Self {
        DatasetsConfig { sampling_strategy: SamplingStrategy::Proportional, datasets: Vec::new() }
    }
}

impl DatasetsConfig {
    /// The enabled datasets, in file order.
    pub fn enabled(&self) -> impl Iterator<Item = (&str, &DatasetSpec)> {
        self.datasets.iter().filter(|(_, d)| d.enabled).map(|(n, d)| (n.as_str(), d))
    }
}

impl Serialize for DatasetsConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.datasets.len() + 1))?;
        m.serialize_entry("sampling_strategy", &self.sampling_strategy)?;
        for (name, spec) in &self.datasets {
            match &spec.loader {
                Some(SeedLoader::Nli(l)) => m.serialize_entry(name, l)?,
                Some(SeedLoader::ScandiQa(l)) => m.serialize_entry(name, l)?,
                Some(SeedLoader::Ddsc(l)) => m.serialize_entry(name, l)?,
                Some(SeedLoader::Eti(l)) => m.serialize_entry(name, l)?,
                None => m.serialize_entry(name, spec)?,
            }
        }
        m.end()
    }
}

/// A dataset name that close to `sampling_strategy` is almost certainly a typo of it.
struct DatasetKey(String);

impl<'de> Deserialize<'de> for DatasetKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let key = String::deserialize(d)?;
        if key != "sampling_strategy" && strsim::jaro_winkler(&key, "sampling_strategy") >= 0.9 {
            return Err(serde::de::Error::unknown_field(&key, &["sampling_strategy"]));
        }
        Ok(DatasetKey(key))
    }
}

impl<'de> Deserialize<'de> for DatasetsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DatasetsConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping: `sampling_strategy` and one block per dataset")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<DatasetsConfig, E> {
                Ok(DatasetsConfig::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<DatasetsConfig, A::Error> {
                let mut out = DatasetsConfig::default();
                while let Some(DatasetKey(key)) = map.next_key::<DatasetKey>()? {
                    if key == "sampling_strategy" {
                        out.sampling_strategy = map.next_value()?;
                    } else {
                        if out.datasets.iter().any(|(n, _)| *n == key) {
                            return Err(serde::de::Error::custom(format!("dataset `{key}` is defined twice")));
                        }
                        // The seed's loader blocks go by name, as in its script (`dataset_config['nli']`, ...).
                        let spec = match key.as_str() {
                            "nli" => DatasetSpec::for_loader(SeedLoader::Nli(map.next_value()?)),
                            "scandi_qa" => DatasetSpec::for_loader(SeedLoader::ScandiQa(map.next_value()?)),
                            "ddsc" => DatasetSpec::for_loader(SeedLoader::Ddsc(map.next_value()?)),
                            "eti" => DatasetSpec::for_loader(SeedLoader::Eti(map.next_value()?)),
                            _ => map.next_value::<DatasetSpec>()?,
                        };
                        out.datasets.push((key, spec));
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// `evaluation:`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Retrieval tasks (BEIR layout folders).
    pub tasks: Vec<EvalTask>,
    /// Log mean active dimensions of queries and documents; default true.
    pub track_sparsity: bool,
    /// How many decoded query/document expansions to log per evaluation (`true` = 3); default 0.
    #[serde(deserialize_with = "count_or_bool")]
    pub log_decoded_samples: usize,
    /// `sparse_nanobeir`: evaluate on NanoBEIR (`nanobeir_datasets`) as sentence-transformers'
    /// `SparseNanoBEIREvaluator`, from the Hub dataset it reads, logged under its metric names.
    pub evaluator: Option<EvaluatorKind>,
    /// NanoBEIR dataset names (`msmarco`, `nfcorpus`, ...); default (the seed's) msmarco and nfcorpus.
    pub nanobeir_datasets: Vec<String>,
    /// MTEB retrieval tasks by MTEB name or the seed's short name (`NorQuAD` → `NorQuadRetrieval`; see
    /// [`mteb::resolve_task`]); an unknown name is an error listing the close ones.
    pub mteb_tasks: Vec<String>,
}

/// `evaluation.evaluator`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvaluatorKind {
    /// sentence-transformers' `SparseNanoBEIREvaluator`.
    SparseNanobeir,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        EvaluationConfig {
            tasks: Vec::new(),
            track_sparsity: true,
            log_decoded_samples: 0,
            evaluator: None,
            nanobeir_datasets: Vec::new(),
            mteb_tasks: Vec::new(),
        }
    }
}

fn count_or_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a non-negative integer or true/false")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<usize, E> {
            Ok(if v { 3 } else { 0 })
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::invalid_type(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<usize, E> {
            Ok(v as usize)
        }
    }
    d.deserialize_any(V)
}

/// One entry of `evaluation.tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTask {
    /// Used in metric names (`eval_{name}_ndcg@10`). Required.
    pub name: String,
    /// A BEIR-layout folder (`corpus.jsonl`, `queries.jsonl`, `qrels/{split}.tsv`), local or URL. Required.
    pub source: String,
    /// Which qrels file; default `dev`.
    #[serde(default = "dev")]
    pub split: String,
}

fn dev() -> String {
    "dev".into()
}

/// `mlflow:`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlflowConfig {
    /// e.g. `http://127.0.0.1:5000` or `file:./mlruns`.
    pub tracking_uri: Option<String>,
    /// Default: the run name.
    pub experiment_name: Option<String>,
    /// Extra run tags, in file order.
    pub tags: IndexMap<String, String>,
}

/// `model_card:`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelCardConfig {
    /// ISO codes; a string or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub language: Vec<String>,
    /// e.g. `apache-2.0`.
    pub license: Option<String>,
    /// Hub tags.
    pub tags: Vec<String>,
    /// Human-readable model name.
    pub model_name: Option<String>,
    /// Dataset ids or names shown on the card.
    pub datasets_used: Vec<String>,
    /// The card's `library_name`; default `sentence-transformers` (the only library that loads the folder).
    pub library_name: Option<String>,
}

/// `hardware:`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HardwareConfig {
    /// Default `auto` (CUDA if present, then MPS, then CPU).
    pub device: DeviceKind,
    /// Intra-op CPU threads; default: libtorch's choice.
    pub num_threads: Option<usize>,
    /// Recompute activations in the backward pass; default false.
    pub gradient_checkpointing: bool,
    /// Allow TF32 matmuls on Ampere+; default: libtorch's choice. Inactive (see [`INACTIVE_KEYS`]).
    pub tf32: Option<bool>,
    /// The seed's `torchrun` switch. Here multi-process training is the cluster commands
    /// (`splade-coordinator --config F` and one `splade-worker --join` per process); `splade train` says so
    /// at start-up when this is true or `world_size` is above 1, and trains on one process.
    pub distributed: bool,
    /// Processes of a `torchrun` job; see `distributed`.
    pub world_size: Option<usize>,
}

/// `router:` — sentence-transformers' Router settings, used with `model.use_router: true` (as the seed's
/// script does; otherwise ignored with a notice).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Dataset column → route (`query` or `document`), sentence-transformers' `router_mapping`. The data path
    /// sends `anchor` through the query route and every other text column through the document route; a
    /// mapping that says otherwise is refused. Default that same mapping.
    pub mapping: IndexMap<String, Route>,
    /// Regex over sentence-transformers' parameter names (`0.sub_modules.query.0.weight`) → learning rate,
    /// as `learning_rate_mapping`: a parameter takes the rate of the last pattern (in file order) that
    /// `re.search`es its name; the others keep `training.learning_rate` (see
    /// [`Config::learning_rate_pattern_of`]).
    pub learning_rate_patterns: IndexMap<String, f64>,
}

/// A Router route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// The query route (the static embedding in inference-free SPLADE).
    Query,
    /// The document route (the MLM encoder).
    Document,
}

/// `hardware.device`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Best available.
    #[default]
    Auto,
    /// CPU.
    Cpu,
    /// NVIDIA GPU.
    Cuda,
    /// Apple GPU.
    Mps,
}

/// `cluster:` — used by `splade-coordinator` and `splade-worker`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Workers needed to start a generation; default 1.
    pub min_workers: usize,
    /// Most workers admitted; default `min_workers`.
    pub max_workers: Option<usize>,
    /// Seconds to wait for `min_workers`; default 300.
    pub rendezvous_timeout: f64,
    /// Seconds between worker heartbeats; default 5.
    pub heartbeat_interval: f64,
    /// Seconds without a heartbeat before a worker is declared lost; default 30.
    pub heartbeat_timeout: f64,
    /// Generations re-formed after failures before giving up; default 3.
    pub max_restarts: usize,
    /// Environment variable holding the shared join token; default `SPLADE_CLUSTER_TOKEN`.
    pub token_env: String,
    /// PEM certificate for gRPC TLS (with `tls_key`).
    pub tls_cert: Option<String>,
    /// PEM private key for gRPC TLS.
    pub tls_key: Option<String>,
    /// PEM CA bundle to verify peers.
    pub tls_ca: Option<String>,
    /// `auto` (default: NCCL on CUDA, Gloo otherwise), `gloo` or `nccl`.
    pub c10d_backend: C10dBackend,
    /// Seconds to wait for more workers (up to `max_workers`) once `min_workers` are there; default 10.
    pub rendezvous_last_call: f64,
    /// Port rank 0 hosts the c10d store on when its worker names none; default 29500.
    pub store_port: u16,
    /// Samples per optimizer step across all workers, fixed whatever the world size; default
    /// `per_device_train_batch_size × gradient_accumulation_steps × max_workers`.
    pub global_batch_size: Option<usize>,
    /// Steps per chunk of the published data plan (a worker fetches the chunks of the steps it trains);
    /// default 1000 (`splade_common::data::DEFAULT_CHUNK_STEPS`).
    pub data_plan_chunk_steps: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            min_workers: 1,
            max_workers: None,
            rendezvous_timeout: 300.0,
            heartbeat_interval: 5.0,
            heartbeat_timeout: 30.0,
            max_restarts: 3,
            token_env: "SPLADE_CLUSTER_TOKEN".into(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            c10d_backend: C10dBackend::Auto,
            rendezvous_last_call: 10.0,
            store_port: 29500,
            global_batch_size: None,
            data_plan_chunk_steps: crate::data::DEFAULT_CHUNK_STEPS,
        }
    }
}

impl ClusterConfig {
    /// `max_workers`, defaulting to `min_workers`.
    pub fn max_workers(&self) -> usize {
        self.max_workers.unwrap_or(self.min_workers)
    }
}

/// `cluster.c10d_backend`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum C10dBackend {
    /// NCCL on CUDA, Gloo otherwise.
    #[default]
    Auto,
    /// Gloo (CPU).
    Gloo,
    /// NCCL (CUDA).
    Nccl,
}

/// `document_windows:` — long documents split into overlapping token windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentWindowsConfig {
    /// Window length in tokens; default 256.
    pub size: usize,
    /// Tokens between window starts (≤ `size`); default 128.
    pub stride: usize,
    /// At most this many windows per document; default 8.
    pub max_windows: usize,
    /// `all` windows as training documents, or `sample` one per step (default).
    pub training_mode: WindowTrainingMode,
}

impl Default for DocumentWindowsConfig {
    fn default() -> Self {
        DocumentWindowsConfig { size: 256, stride: 128, max_windows: 8, training_mode: WindowTrainingMode::Sample }
    }
}

/// `document_windows.training_mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowTrainingMode {
    /// Every window is a training document.
    All,
    /// One window per document per step, drawn from the seed.
    Sample,
}

impl Config {
    /// The batch-plan spec this config asks for, with `batch_size` rows per planned batch (the caller decides how
    /// the global batch relates to `per_device_train_batch_size`, world size and accumulation). Stops at
    /// `training.max_steps` when set, else after `training.num_train_epochs`.
    pub fn plan_spec(&self, batch_size: usize) -> crate::data::PlanSpec {
        let t = &self.training;
        crate::data::PlanSpec {
            batch_size,
            sampling: self.datasets.sampling_strategy,
            batch_sampler: t.batch_sampler,
            seed: t.seed,
            group_by_length: t.group_by_length,
            stop: match t.max_steps() {
                Some(m) => crate::data::PlanStop::MaxSteps(m),
                None => crate::data::PlanStop::Epochs(t.num_train_epochs),
            },
        }
    }

    /// The step intervals of a run of `total` steps, as Hugging Face's Trainer resolves them: a value below 1 is
    /// a fraction of `total` (rounded up), `eval_steps` defaults to `logging_steps`; 0 means "never" for saves
    /// and evaluations by step.
    pub fn intervals(&self, total: u64) -> Intervals {
        let t = &self.training;
        Intervals {
            log_every: interval_steps(t.logging_steps, total).max(1),
            save_every: match t.save_strategy {
                SaveStrategy::Steps => interval_steps(t.save_steps, total),
                _ => 0,
            },
            eval_every: match t.eval_strategy {
                IntervalStrategy::Steps => interval_steps(t.eval_steps.unwrap_or(t.logging_steps), total).max(1),
                _ => 0,
            },
        }
    }

    /// Why `load_best_model_at_end` cannot work with these intervals (transformers' rule: every saved checkpoint
    /// must have been evaluated), or `None`.
    pub fn best_model_schedule_problem(&self, save_every: u64, eval_every: u64) -> Option<String> {
        let t = &self.training;
        if !t.load_best_model_at_end {
            return None;
        }
        let why = match (t.save_strategy, t.eval_strategy) {
            (SaveStrategy::Best, _) | (SaveStrategy::Epoch, IntervalStrategy::Epoch) => return None,
            (SaveStrategy::Steps, IntervalStrategy::Steps) => {
                if eval_every != 0 && save_every % eval_every == 0 {
                    return None;
                }
                format!(
                    "needs save_steps ({save_every}) to be a multiple of eval_steps ({eval_every}) so each saved checkpoint was evaluated; fix save_steps or eval_steps"
                )
            }
            (s, e) => format!(
                "needs save_strategy to match eval_strategy (save_strategy {s:?}, eval_strategy {e:?}); set both to steps or both to epoch, or save_strategy: best"
            ),
        };
        Some(format!("{}: `training.load_best_model_at_end: true` {why}", self.locate("training.load_best_model_at_end")))
    }

    /// Reads and parses a YAML config. Errors name the path; every problem of the file is reported at once
    /// ([`ConfigError::Many`] when there are several).
    pub fn from_path(path: &Path) -> Result<Config, ConfigError> {
        Self::from_path_with(path, &[])
    }

    /// [`Config::from_path`] with `--set key=value` overrides applied to the YAML tree before it is read (see
    /// [`Config::parse_all`]).
    pub fn from_path_with(path: &Path, sets: &[String]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_str_with(&text, &path.display().to_string(), sets)
    }

    /// Parses YAML text; `origin` names it in errors (a path, or e.g. `<inline>`).
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::from_str_with(text, origin, &[])
    }

    /// [`Config::from_str`] with `--set` overrides.
    pub fn from_str_with(text: &str, origin: &str, sets: &[String]) -> Result<Config, ConfigError> {
        let (config, errors) = Self::parse_all(text, origin, sets);
        match ConfigError::from_list(origin, errors) {
            Some(e) => Err(e),
            None => Ok(config.expect("a config when there is no error")),
        }
    }

    /// Parses YAML text and reports every problem: syntax, unknown keys, wrong types and values, in document
    /// order. `sets` are `--set key=value` arguments (dotted keys; the value read as YAML, so typed as the
    /// same text in the file would be) applied to the tree before it is read, so they meet the same checks;
    /// errors about them name the argument instead of a line. Returns the config read from what was valid
    /// (a bad key's default applies; `None` when the text is no YAML mapping) and the problems.
    pub fn parse_all(text: &str, origin: &str, sets: &[String]) -> (Option<Config>, Vec<ConfigError>) {
        let mut root = match yaml::parse(text, origin) {
            Ok(root) => root,
            Err(e) => return (None, vec![e]),
        };
        if !matches!(root.kind, yaml::NodeKind::Map(_)) && !root.is_null() {
            let e = ConfigError::Other {
                file: origin.to_string(),
                line: root.line,
                key: "(top level)".into(),
                message: format!("the config is `{}` but must be a mapping of sections (model:, training:, ...)", root.describe()),
            };
            return (None, vec![e]);
        }
        let mut errors = Vec::new();
        for (i, arg) in sets.iter().enumerate() {
            if let Err(message) = yaml::apply_set(&mut root, i, arg) {
                let key = arg.split('=').next().unwrap_or_default().trim().to_string();
                errors.push(ConfigError::Other { file: format!("--set {arg}"), line: 0, key, message });
            }
        }
        let (config, more) = yaml::from_node_all::<Config>(&root, origin, 200);
        errors.extend(more);
        for e in &mut errors {
            relocate_set(e, sets);
        }
        let config = config.map(|mut c| {
            c.origin = origin.to_string();
            c.sets = sets.to_vec();
            collect_written(&root, "", 0, &mut c.written);
            c
        });
        (config, errors)
    }

    /// Keys written in the file that are parsed but not acted on (see [`INACTIVE_KEYS`]), skipping those
    /// set to "off" (false, null, empty): dotted names with the reason, in [`INACTIVE_KEYS`] order.
    pub fn inactive_keys(&self) -> Vec<(String, &'static str)> {
        INACTIVE_KEYS
            .iter()
            .filter(|(k, _)| self.written.get(*k).is_some_and(|w| !w.off))
            .map(|(k, why)| (k.to_string(), *why))
            .collect()
    }

    /// What a run of this config says at start-up, one line each, located: every key set but not acted on
    /// with the reason ([`INACTIVE_KEYS`]), how the cluster commands do what `hardware.distributed` /
    /// `world_size` asked `torchrun` for, a `router:` section ignored without `model.use_router: true` (as the
    /// seed's script ignores it), and each seed short name in `evaluation.mteb_tasks` with its MTEB name.
    pub fn startup_notes(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .inactive_keys()
            .into_iter()
            .map(|(k, why)| format!("{}: `{k}` is parsed but not acted on: {why}", self.locate(&k)))
            .collect();
        let h = &self.hardware;
        let world = h.world_size.unwrap_or(1);
        if h.distributed || world > 1 {
            let key = if h.distributed { "hardware.distributed" } else { "hardware.world_size" };
            out.push(format!(
                "{}: `{key}`: this command trains on one process; for {} data-parallel processes run \
                 `splade-coordinator --config {}` (cluster.min_workers/max_workers: {world}) and one \
                 `splade-worker --join HOST:PORT` per process (per GPU)",
                self.locate(key),
                if world > 1 { world.to_string() } else { "N".into() },
                self.origin,
            ));
        }
        if !self.model.use_router
            && (!self.router.mapping.is_empty() || !self.router.learning_rate_patterns.is_empty())
        {
            out.push(format!(
                "{}: `router` is ignored because model.use_router is not true (as the seed's script does); \
                 every parameter trains at training.learning_rate",
                self.locate("router")
            ));
        }
        for name in &self.evaluation.mteb_tasks {
            if let Ok(r) = mteb::resolve_task(name) {
                if r.from_short_name {
                    out.push(format!(
                        "{}: evaluation.mteb_tasks: `{name}` is the MTEB task `{}`",
                        self.locate("evaluation.mteb_tasks"),
                        r.task.name
                    ));
                }
            }
        }
        out
    }

    /// Which `router.learning_rate_patterns` entry sets the learning rate of each parameter, given the
    /// parameters' names as sentence-transformers' trainer sees them (the loss module's `named_parameters()`,
    /// e.g. `model.0.sub_modules.query.0.weight`), as its `create_optimizer` applies `learning_rate_mapping`:
    /// patterns are applied in file order, each taking every parameter it `re.search`es out of the groups made
    /// so far, so the last matching pattern wins; `None` keeps `training.learning_rate`. Only with
    /// `model.use_router: true` (the seed's script passes the patterns only then; otherwise all `None`). A
    /// pattern that matches no parameter is an error, as in sentence-transformers.
    pub fn learning_rate_pattern_of(&self, st_names: &[String]) -> Result<Vec<Option<(usize, f64)>>, ConfigError> {
        let mut out = vec![None; st_names.len()];
        if !self.model.use_router {
            return Ok(out);
        }
        let mut problems = Vec::new();
        for (i, (pattern, lr)) in self.router.learning_rate_patterns.iter().enumerate() {
            let Ok(re) = regex::Regex::new(pattern) else { continue }; // reported by validate()
            let mut any = false;
            for (slot, name) in out.iter_mut().zip(st_names) {
                if re.is_match(name) {
                    *slot = Some((i, *lr));
                    any = true;
                }
            }
            if !any {
                let mut sample: Vec<&str> = st_names.iter().map(String::as_str).take(3).collect();
                if let Some(q) = st_names.iter().find(|n| n.contains("query")) {
                    sample.insert(0, q);
                }
                problems.push(self.invalid("router.learning_rate_patterns", pattern, &format!(
                    "matches no parameter of the model (sentence-transformers refuses such a pattern too); parameter names look like {}",
                    sample.join(", ")
                )));
            }
        }
        match ConfigError::from_list(&self.origin, problems) {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Whether a dotted key was written in the file (or given by `--set`).
    pub fn is_written(&self, key: &str) -> bool {
        self.written.contains_key(key)
    }

    /// Where a dotted key was written, for messages: `file:line`, `--set ARG` or the file alone.
    pub fn locate(&self, key: &str) -> String {
        match self.raw_line(key) {
            Some(l) if l >= yaml::SET_LINE_BASE => match self.sets.get(l - yaml::SET_LINE_BASE) {
                Some(arg) => format!("--set {arg}"),
                None => self.origin.clone(),
            },
            Some(l) => format!("{}:{l}", self.origin),
            None => self.origin.clone(),
        }
    }

    /// The line a dotted key was written on, if it was written in the file.
    /// (`None` for keys given by `--set`: see [`Config::locate`].)
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.raw_line(key).filter(|l| *l < yaml::SET_LINE_BASE)
    }

    fn raw_line(&self, key: &str) -> Option<usize> {
        self.written.get(key).map(|w| w.line)
    }

    /// A broken rule about `key`, located where the key was written (file line or `--set`).
    pub fn invalid(&self, key: &str, value: impl std::fmt::Display, fix: &str) -> ConfigError {
        let mut e = ConfigError::Invalid {
            file: self.origin.clone(),
            line: self.raw_line(key),
            key: key.to_string(),
            value: value.to_string(),
            fix: fix.to_string(),
        };
        relocate_set(&mut e, &self.sets);
        e
    }

    /// The CSR rules: `csr_loss` and `architecture: csr` go together, and the autoencoder sizes fit.
    fn validate_csr(&self) -> Result<(), ConfigError> {
        let m = &self.model;
        let csr = m.architecture == Architecture::Csr;
        if self.loss.kind == LossType::CsrLoss && !csr {
            return Err(self.invalid("loss.type", "csr_loss",
                "CSRLoss trains a sparse autoencoder: set `model.architecture: csr`, or use `loss.type: splade_loss`"));
        }
        if csr && self.loss.kind != LossType::CsrLoss {
            return Err(self.invalid("loss.type", "splade_loss",
                "`model.architecture: csr` trains with `loss.type: csr_loss` (CSRLoss)"));
        }
        if !csr {
            for (key, set) in [("csr_k", m.csr_k.is_some()), ("csr_k_aux", m.csr_k_aux.is_some()),
                ("csr_hidden_dim", m.csr_hidden_dim.is_some()), ("csr_normalize", m.csr_normalize.is_some()),
                ("csr_dead_threshold", m.csr_dead_threshold.is_some())] {
                if set {
                    return Err(self.invalid(&format!("model.{key}"), "set",
                        "applies to `model.architecture: csr` only; set the architecture or remove the key"));
                }
            }
            return Ok(());
        }
        if let Some(k) = m.csr_k {
            if k == 0 {
                return Err(self.invalid("model.csr_k", 0, "must be at least 1"));
            }
        }
        if let (Some(k), Some(h)) = (m.csr_k, m.csr_hidden_dim) {
            if k > h {
                return Err(self.invalid("model.csr_k", k,
                    &format!("is larger than model.csr_hidden_dim {h}; k latents are chosen among hidden_dim, lower csr_k or raise csr_hidden_dim")));
            }
            if 4 * k > h {
                return Err(self.invalid("model.csr_k", k,
                    &format!("CSRLoss also reconstructs from the top 4·k = {} latents, more than model.csr_hidden_dim {h}; \
                     lower csr_k to at most {} or raise csr_hidden_dim", 4 * k, h / 4)));
            }
        }
        if let (Some(ka), Some(h)) = (m.csr_k_aux, m.csr_hidden_dim) {
            if ka > h {
                return Err(self.invalid("model.csr_k_aux", ka,
                    &format!("is larger than model.csr_hidden_dim {h}; lower csr_k_aux or raise csr_hidden_dim")));
            }
        }
        if self.loss.inner_loss != InnerLoss::SparseMultipleNegativesRankingLoss {
            return Err(self.invalid("loss.inner_loss", format!("{:?}", self.loss.inner_loss),
                "csr_loss supports `sparse_multiple_negatives_ranking_loss` (the seed's and CSRLoss's default) as its inner loss"));
        }
        Ok(())
    }

    /// A seed loader block's rules: `split_ratio` splits, the lists it filters by are not empty where that
    /// would drop everything, and the Hub ids are set.
    fn validate_loader(&self, name: &str, loader: &SeedLoader) -> Result<(), ConfigError> {
        let key = |k: &str| format!("datasets.{name}.{k}");
        let ratio = |r: &SplitRatio| -> Result<(), ConfigError> {
            match r.problem() {
                Some(fix) => Err(self.invalid(&key("split_ratio"), format!("{:?}", r.0), &fix)),
                None => Ok(()),
            }
        };
        let id = |id: &str| -> Result<(), ConfigError> {
            if id.trim().is_empty() {
                Err(self.invalid(&key("source"), "", "set it to a Hugging Face dataset id (owner/name), or leave it out for the seed's default"))
            } else {
                Ok(())
            }
        };
        match loader {
            SeedLoader::Nli(l) => {
                id(&l.source)?;
                ratio(&l.split_ratio)
            }
            SeedLoader::Eti(l) => {
                id(&l.source)?;
                ratio(&l.split_ratio)
            }
            SeedLoader::Ddsc(l) => ratio(&l.split_ratio),
            SeedLoader::ScandiQa(l) => {
                if l.enabled && !(l.use_norquad || l.use_openbookqa || l.use_scandiqa || l.use_supervised_da || l.use_paws) {
                    return Err(self.invalid(&key("use_norquad"), "false",
                        "every `use_*` source is off; turn one on (use_norquad, use_openbookqa, use_scandiqa, use_supervised_da, use_paws) or set `enabled: false`"));
                }
                if l.use_scandiqa && l.scandiqa_languages.is_empty() {
                    return Err(self.invalid(&key("scandiqa_languages"), "[]",
                        "list the ScandiQA configs to read (no, da, sv), or set `use_scandiqa: false`"));
                }
                Ok(())
            }
        }
    }

    /// Checks the rules serde cannot express. Returns every broken rule ([`ConfigError::Many`] when there are
    /// several), each naming key, value and fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match ConfigError::from_list(&self.origin, self.rule_problems()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every rule serde cannot express that this config breaks, in schema order.
    pub fn rule_problems(&self) -> Vec<ConfigError> {
        let t = &self.training;
        let l = &self.loss;
        let found = std::cell::RefCell::new(Vec::new());
        let check = |ok: bool, key: &str, value: String, fix: &str| {
            if !ok {
                found.borrow_mut().push(self.invalid(key, value, fix));
            }
        };
        check(!self.model.base_model.trim().is_empty(), "model.base_model", "".into(),
            "set it to a Hugging Face model id or a local model folder");
        check(t.per_device_train_batch_size >= 1, "training.per_device_train_batch_size",
            t.per_device_train_batch_size.to_string(), "must be at least 1");
        check(t.per_device_eval_batch_size >= 1, "training.per_device_eval_batch_size",
            t.per_device_eval_batch_size.to_string(), "must be at least 1");
        check(t.gradient_accumulation_steps >= 1, "training.gradient_accumulation_steps",
            t.gradient_accumulation_steps.to_string(), "must be at least 1");
        check(t.max_steps == -1 || t.max_steps > 0, "training.max_steps", t.max_steps.to_string(),
            "must be a positive step count, or -1 to train for num_train_epochs");
        check(t.max_steps > 0 || (t.num_train_epochs.is_finite() && t.num_train_epochs > 0.0),
            "training.num_train_epochs", t.num_train_epochs.to_string(),
            "must be positive when max_steps is not set");
        check(t.learning_rate.is_finite() && t.learning_rate > 0.0, "training.learning_rate",
            t.learning_rate.to_string(), "must be a positive number such as 2e-5");
        if let Some(q) = t.query_learning_rate {
            check(q.is_finite() && q > 0.0, "training.query_learning_rate", q.to_string(),
                "must be a positive number such as 1e-3");
        }
        check((0.0..=1.0).contains(&t.warmup_ratio), "training.warmup_ratio", t.warmup_ratio.to_string(),
            "must be between 0 and 1");
        check(t.weight_decay >= 0.0, "training.weight_decay", t.weight_decay.to_string(), "must be ≥ 0");
        check(t.max_grad_norm >= 0.0, "training.max_grad_norm", t.max_grad_norm.to_string(),
            "must be ≥ 0 (0 disables clipping)");
        check(!(t.fp16 && t.bf16), "training.bf16", "true".into(),
            "`training.fp16` is true as well; fp16 and bf16 autocast exclude each other, set one of them to false");
        check(t.logging_steps > 0.0, "training.logging_steps", t.logging_steps.to_string(), "must be positive");
        check(t.save_steps > 0.0, "training.save_steps", t.save_steps.to_string(), "must be positive");
        if let Some(e) = t.eval_steps {
            check(e > 0.0, "training.eval_steps", e.to_string(), "must be positive");
        }
        for key in ["max_seq_length", "query_max_length", "document_max_length"] {
            let v = match key {
                "max_seq_length" => t.max_seq_length,
                "query_max_length" => t.query_max_length,
                _ => t.document_max_length,
            };
            if let Some(v) = v {
                check(v >= 1, &format!("training.{key}"), v.to_string(), "must be at least 1 token");
            }
        }
        if let Some(n) = t.save_total_limit {
            check(n >= 1, "training.save_total_limit", n.to_string(), "must be at least 1, or left out");
        }
        if let Some(n) = self.hardware.num_threads {
            check((1..=i32::MAX as usize).contains(&n), "hardware.num_threads", n.to_string(),
                "must be at least 1 (libtorch's intra-op threads), or left out for libtorch's default");
        }
        check(!t.load_best_model_at_end || t.eval_strategy != IntervalStrategy::No,
            "training.load_best_model_at_end", "true".into(),
            "needs evaluation during training: set eval_strategy to steps or epoch (and metric_for_best_model)");

        check(l.query_regularizer_weight >= 0.0, "loss.query_regularizer_weight",
            l.query_regularizer_weight.to_string(), "must be ≥ 0");
        check(l.document_regularizer_weight >= 0.0, "loss.document_regularizer_weight",
            l.document_regularizer_weight.to_string(), "must be ≥ 0");
        check((0.0..=1.0).contains(&l.regularizer_warmup_ratio), "loss.regularizer_warmup_ratio",
            l.regularizer_warmup_ratio.to_string(), "must be between 0 and 1");
        check(l.scale > 0.0, "loss.scale", l.scale.to_string(), "must be positive");
        check(l.temperature > 0.0, "loss.temperature", l.temperature.to_string(), "must be positive");
        if let Err(e) = self.validate_csr() {
            found.borrow_mut().push(e);
        }
        if let Some(p) = t.early_stopping_patience {
            check(p >= 1, "training.early_stopping_patience", p.to_string(), "must be at least 1 evaluation, or left out");
            // transformers' EarlyStoppingCallback asserts both in on_train_begin.
            check(t.eval_strategy != IntervalStrategy::No, "training.early_stopping_patience", p.to_string(),
                "needs evaluation during training: set eval_strategy to steps or epoch (and metric_for_best_model)");
            check(t.metric_for_best_model.is_some(), "training.early_stopping_patience", p.to_string(),
                "needs training.metric_for_best_model (e.g. eval_loss or eval_NanoBEIR_mean_dot_ndcg@10)");
        }
        check(t.early_stopping_threshold.is_finite() && t.early_stopping_threshold >= 0.0, "training.early_stopping_threshold",
            t.early_stopping_threshold.to_string(), "must be ≥ 0");
        if let Some(f) = t.dataloader_prefetch_factor {
            check(f >= 1, "training.dataloader_prefetch_factor", f.to_string(), "must be at least 1, or left out");
        }
        if let Some(w) = self.hardware.world_size {
            check(w >= 1, "hardware.world_size", w.to_string(), "must be at least 1");
        }
        for name in &self.evaluation.mteb_tasks {
            if let Err(e) = mteb::resolve_task(name) {
                found.borrow_mut().push(self.invalid("evaluation.mteb_tasks", name, &e));
            }
        }
        found.borrow_mut().extend(self.router_problems());

        for (name, d) in &self.datasets.datasets {
            let key = |k: &str| format!("datasets.{name}.{k}");
            if let Some(loader) = &d.loader {
                if let Err(e) = self.validate_loader(name, loader) {
                    found.borrow_mut().push(e);
                }
                continue;
            }
            check(!d.source.trim().is_empty(), &key("source"), "".into(), "set it to a path, glob or URL");
            check((0.0..1.0).contains(&d.split_ratio), &key("split_ratio"), d.split_ratio.to_string(),
                "must be in [0, 1): the fraction held out for evaluation");
            if let Some(m) = d.max_samples {
                check(m >= 1, &key("max_samples"), m.to_string(), "must be at least 1, or left out");
            }
            if let Err(e) = crate::data::ColumnMap::from_config(&d.columns) {
                found.borrow_mut().push(self.invalid(&key("columns"), format!("{:?}", d.columns), &e));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, task) in self.evaluation.tasks.iter().enumerate() {
            check(names.insert(task.name.as_str()), &format!("evaluation.tasks[{i}].name"), task.name.clone(),
                "task names must be unique");
        }

        let c = &self.cluster;
        check(c.min_workers >= 1, "cluster.min_workers", c.min_workers.to_string(), "must be at least 1");
        check(c.max_workers() >= c.min_workers, "cluster.max_workers", c.max_workers().to_string(),
            "must be ≥ min_workers");
        check(c.rendezvous_timeout > 0.0, "cluster.rendezvous_timeout", c.rendezvous_timeout.to_string(),
            "must be positive (seconds)");
        check(c.heartbeat_interval > 0.0, "cluster.heartbeat_interval", c.heartbeat_interval.to_string(),
            "must be positive (seconds)");
        check(c.heartbeat_timeout > c.heartbeat_interval, "cluster.heartbeat_timeout",
            c.heartbeat_timeout.to_string(), "must be longer than heartbeat_interval");
        check(c.rendezvous_last_call >= 0.0, "cluster.rendezvous_last_call", c.rendezvous_last_call.to_string(),
            "must be ≥ 0 (seconds)");
        check(c.store_port >= 1, "cluster.store_port", c.store_port.to_string(), "use a fixed port such as 29500");
        check(c.data_plan_chunk_steps >= 1, "cluster.data_plan_chunk_steps", c.data_plan_chunk_steps.to_string(),
            "must be at least 1 (steps per data-plan chunk; default 1000)");
        if let Some(g) = c.global_batch_size {
            check(g >= 1, "cluster.global_batch_size", g.to_string(), "must be at least 1, or left out");
        }
        check(c.tls_cert.is_some() == c.tls_key.is_some(), "cluster.tls_cert",
            c.tls_cert.clone().unwrap_or_default(), "tls_cert and tls_key go together; set both or neither");

        if let Some(w) = &self.document_windows {
            check(w.size >= 1, "document_windows.size", w.size.to_string(), "must be at least 1 token");
            check(w.stride >= 1 && w.stride <= w.size, "document_windows.stride", w.stride.to_string(),
                "must be between 1 and document_windows.size");
            check(w.max_windows >= 1, "document_windows.max_windows", w.max_windows.to_string(),
                "must be at least 1");
        }
        found.into_inner()
    }

    /// `router:` rules: each learning-rate pattern is a valid regex with a positive rate, and the mapping
    /// routes `anchor` to the query route and every other column to the document route (what the data path
    /// does).
    fn router_problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        for (pattern, lr) in &self.router.learning_rate_patterns {
            let key = "router.learning_rate_patterns";
            if let Err(e) = regex::Regex::new(pattern) {
                let first = e.to_string().lines().last().unwrap_or_default().trim().to_string();
                out.push(self.invalid(key, pattern, &format!("not a valid regex ({first}); write a Python `re` pattern such as `.*\\\\.query\\\\..*` (YAML double quotes need the backslashes doubled)")));
            }
            if !(lr.is_finite() && *lr > 0.0) {
                out.push(self.invalid(key, format!("{pattern}: {lr}"), "the learning rate must be a positive number such as 1e-3"));
            }
        }
        for (column, route) in &self.router.mapping {
            let expected = if column == "anchor" { Route::Query } else { Route::Document };
            if *route != expected {
                out.push(self.invalid(&format!("router.mapping.{column}"), format!("{route:?}").to_lowercase(),
                    &format!("the data path sends `anchor` through the query route and every other column through the document route; \
                     map `{column}` to `{}` or rename the dataset's columns (datasets.<name>.columns)",
                     format!("{expected:?}").to_lowercase())));
            }
        }
        out
    }

    /// Like [`Config::validate`], plus what `splade train` needs: at least one enabled dataset.
    pub fn validate_for_training(&self) -> Result<(), ConfigError> {
        let mut problems = self.rule_problems();
        if self.datasets.enabled().next().is_none() {
            problems.push(self.invalid("datasets", "no enabled dataset",
                "add a dataset block with a `source` (and `enabled: true`)"));
        }
        match ConfigError::from_list(&self.origin, problems) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The config as JSON (what the coordinator sends to workers); [`Config::from_json`] reads it back.
    pub fn to_json(&self) -> String {
        // The file it came from and each key's line travel along (appended last, after the config's own
        // keys, whose order is kept: dataset order matters), so a worker's errors about the coordinator's
        // config name that file and line, not `<assignment>`.
        let body = serde_json::to_string(self).expect("config serializes");
        let lines: BTreeMap<&str, (usize, bool)> = self.written.iter().map(|(k, w)| (k.as_str(), (w.line, w.off))).collect();
        let extra = format!(
            "\"{ORIGIN_KEY}\":{},\"{LINES_KEY}\":{}",
            serde_json::to_string(&self.origin).expect("a string serializes"),
            serde_json::to_string(&lines).expect("lines serialize")
        );
        match body.strip_suffix('}') {
            Some(head) if head.len() > 1 => format!("{head},{extra}}}"),
            Some(head) => format!("{head}{extra}}}"),
            None => body,
        }
    }

    /// Reads [`Config::to_json`] output. Errors name the file and lines it was read from when the JSON
    /// carries them, else `origin`.
    pub fn from_json(text: &str, origin: &str) -> Result<Config, ConfigError> {
        #[derive(Deserialize)]
        struct Extras {
            #[serde(rename = "_origin")]
            origin: Option<String>,
            #[serde(rename = "_lines", default)]
            lines: BTreeMap<String, (usize, bool)>,
        }
        let bad = |e: serde_json::Error| ConfigError::Other { file: origin.to_string(), line: e.line(), key: String::new(), message: e.to_string() };
        let extras: Extras = serde_json::from_str(text).map_err(bad)?;
        // `to_json` writes its two keys last at the top level; a key inside a JSON string would be escaped.
        let marker = format!(",\"{ORIGIN_KEY}\":");
        let config_text = match text.rfind(&marker) {
            Some(i) => format!("{}}}", &text[..i]),
            None => text.to_string(),
        };
        let mut c: Config = serde_json::from_str(&config_text).map_err(bad)?;
        c.origin = extras.origin.filter(|o| !o.is_empty()).unwrap_or_else(|| origin.to_string());
        for (k, (line, off)) in extras.lines {
            c.written.insert(k, Written { line, off });
        }
        Ok(c)
    }
}

/// Steps between events for a `*_steps` value: below 1 a fraction of `total` (rounded up, at least 1), else the
/// value itself; 0 or less is "never" (0).
pub fn interval_steps(v: f64, total: u64) -> u64 {
    if v <= 0.0 {
        0
    } else if v < 1.0 {
        ((total as f64 * v).ceil() as u64).max(1)
    } else {
        v as u64
    }
}

/// Log/save/evaluate intervals of a run ([`Config::intervals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// Steps between log lines (at least 1).
    pub log_every: u64,
    /// Steps between checkpoints with `save_strategy: steps`, else 0.
    pub save_every: u64,
    /// Steps between evaluations with `eval_strategy: steps`, else 0.
    pub eval_every: u64,
}

/// Errors about values from `--set` name the argument instead of a line past the file's end.
fn relocate_set(e: &mut ConfigError, sets: &[String]) {
    if let Some((file, line)) = e.location_mut() {
        if *line >= yaml::SET_LINE_BASE {
            if let Some(arg) = sets.get(*line - yaml::SET_LINE_BASE) {
                *file = format!("--set {arg}");
            }
            *line = 0;
        }
    }
}
/// Keys [`Config::to_json`] adds for the origin and the line of each key.
const ORIGIN_KEY: &str = "_origin";
const LINES_KEY: &str = "_lines";

fn collect_written(node: &yaml::Node, path: &str, depth: usize, out: &mut BTreeMap<String, Written>) {
    if let yaml::NodeKind::Map(entries) = &node.kind {
        for (key, line, value) in entries {
            let dotted = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            out.insert(dotted.clone(), Written { line: *line, off: value.is_off() });
            // Sections, and dataset blocks under `datasets`, are two levels deep at most.
            if depth < 2 {
                collect_written(value, &dotted, depth + 1, out);
            }
        }
    }
}

#[cfg(test)]
mod tests;
