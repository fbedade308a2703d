//! What the data layer is asked to load and plan: one dataset's spec (a named block under `datasets:`) and the
//! batch-plan enums. The config schema (`crate::config`) re-exports these; the data layer never sees a whole
//! config.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// `training.batch_sampler`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSamplerKind {
    /// Shuffled batches.
    BatchSampler,
    /// Shuffled batches with no repeated text (anchor, positive or negative) inside one batch.
    NoDuplicates,
}

/// `datasets.sampling_strategy`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingStrategy {
    /// One batch from each dataset in turn; the epoch ends when the smallest dataset runs out.
    RoundRobin,
    /// Datasets drawn at random in proportion to their batch counts; every sample is used.
    Proportional,
}

/// One named block under `datasets:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Local path or glob, `file://`, `s3://`, `gs://`, `az://` URL (globs allowed in the key), or a Hugging
    /// Face Hub dataset: `owner/name[@revision]` or `hf://datasets/owner/name[@revision][/path]` (a local path of
    /// that name wins). Required.
    pub source: String,
    /// Hub datasets: the config (`datasets.load_dataset`'s `name`); default: the repo's default config.
    #[serde(default)]
    pub config: Option<String>,
    /// Hub datasets: the split whose files are read; default `train`.
    #[serde(default)]
    pub split: Option<String>,
    /// Default: from the file extension (`.jsonl`, `.jsonl.gz`, `.parquet`).
    #[serde(default)]
    pub format: Option<DataFormat>,
    /// Maps file columns onto roles `anchor`, `positive`, `negative`, `negative_1`.., `label`: either
    /// `file_column: role` (like `datasets.rename_columns`) or `role: file_column`. Empty: the file's columns
    /// already carry the role names.
    #[serde(default)]
    pub columns: IndexMap<String, String>,
    /// Fraction held out (deterministically, from the seed) for evaluation; default 0.
    #[serde(default)]
    pub split_ratio: f64,
    /// Use only the first N records (before the split); default all.
    #[serde(default)]
    pub max_samples: Option<usize>,
    /// `error` (default) or `skip` (skip and count bad records).
    #[serde(default)]
    pub on_bad_record: OnBadRecord,
}

impl DatasetSpec {
    /// Pins a Hub source to `commit` (what a resume does with the commit a checkpoint recorded):
    /// `hf://datasets/owner/name@<commit>[/path]`. Returns false (and changes nothing) for a source that does not
    /// name the Hub.
    pub fn pin_hub_commit(&mut self, commit: &str) -> bool {
        if !self.source.starts_with("hf://") && std::path::Path::new(&self.source).exists() {
            return false;
        }
        match crate::hub::parse_dataset_source_path(&self.source) {
            Some((repo, _, path)) => {
                self.source = match path {
                    Some(p) => format!("hf://datasets/{repo}@{commit}/{p}"),
                    None => format!("hf://datasets/{repo}@{commit}"),
                };
                true
            }
            None => false,
        }
    }
}

fn yes() -> bool {
    true
}

/// `datasets.*.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataFormat {
    /// One JSON object per line.
    #[serde(rename = "jsonl")]
    Jsonl,
    /// Gzip-compressed JSONL.
    #[serde(rename = "jsonl.gz")]
    JsonlGz,
    /// Apache Parquet.
    #[serde(rename = "parquet")]
    Parquet,
}

/// `datasets.*.on_bad_record`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRecord {
    /// Stop with an error naming the record.
    #[default]
    Error,
    /// Skip it, count it, and report the count.
    Skip,
}

