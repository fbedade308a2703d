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
    /// The seed project's loader this block runs: blocks named `nli`, `scandi_qa`, `ddsc` and `eti` (see
    /// [`SeedLoader`]). `None` for file blocks. A loader block reads its Hub datasets itself; `source` is empty
    /// and the file keys above keep their defaults. [`crate::config::DatasetsConfig`] reads and writes it.
    #[serde(skip)]
    pub loader: Option<SeedLoader>,
    /// For a seed loader block: the commit (by Hub repo id) each of its datasets is read at; the others are
    /// read at `main`. Set by a resume from the commits its checkpoint recorded ([`DatasetSpec::pin_hub_commits`]),
    /// never from the YAML file.
    #[serde(skip)]
    pub hub_commits: std::collections::BTreeMap<String, String>,
}

impl DatasetSpec {
    /// The block of a seed loader: enabled as the loader says, every file key at its default.
    pub fn for_loader(loader: SeedLoader) -> DatasetSpec {
        DatasetSpec {
            enabled: loader.enabled(),
            source: String::new(),
            config: None,
            split: None,
            format: None,
            columns: IndexMap::new(),
            split_ratio: 0.0,
            max_samples: None,
            on_bad_record: OnBadRecord::Error,
            loader: Some(loader),
            hub_commits: Default::default(),
        }
    }
}

/// The seed project's dataset blocks (`train_sparse_multidataset.py`'s `load_datasets` and the loaders in its
/// `utils/`), with the script's `.get(key, default)` defaults. Each reads its Hub datasets and formats, filters,
/// shuffles and splits them exactly as the seed does (`crate::data::loaders`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SeedLoader {
    /// `nli:` — `load_nli_data`.
    Nli(NliLoader),
    /// `scandi_qa:` — `load_scandi_qa_data`.
    ScandiQa(ScandiQaLoader),
    /// `ddsc:` — `load_ddsc_data`.
    Ddsc(DdscLoader),
    /// `eti:` — `load_eti_data`.
    Eti(EtiLoader),
}

/// The block names that are seed loaders, in the order the seed's script loads them.
pub const SEED_LOADER_NAMES: [&str; 4] = ["nli", "scandi_qa", "ddsc", "eti"];

impl SeedLoader {
    /// Whether the block is enabled (`enabled:`; the seed's default is true for `nli`, `scandi_qa` and `ddsc`,
    /// whose `enabled` it reads without a default, and false for `eti`).
    pub fn enabled(&self) -> bool {
        match self {
            SeedLoader::Nli(l) => l.enabled,
            SeedLoader::ScandiQa(l) => l.enabled,
            SeedLoader::Ddsc(l) => l.enabled,
            SeedLoader::Eti(l) => l.enabled,
        }
    }

    /// The block name this loader is read from.
    pub fn block_name(&self) -> &'static str {
        match self {
            SeedLoader::Nli(_) => "nli",
            SeedLoader::ScandiQa(_) => "scandi_qa",
            SeedLoader::Ddsc(_) => "ddsc",
            SeedLoader::Eti(_) => "eti",
        }
    }
}

/// `split_ratio: [train, dev, test]`: the seed takes `int(n * train)` rows for training, the next
/// `int(n * dev)` for dev and the rest for test (so `test` itself is not read).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitRatio(pub [f64; 3]);

impl Default for SplitRatio {
    fn default() -> Self {
        SplitRatio([0.98, 0.01, 0.01])
    }
}

impl SplitRatio {
    /// (train, dev, test) sizes of `n` rows as the seed computes them: `int(n * a)`, `int(n * b)`, the rest.
    /// Python's `int(float)` truncates; `n * a` is the same IEEE double product here.
    pub fn sizes(&self, n: usize) -> (usize, usize, usize) {
        let train = ((n as f64) * self.0[0]) as usize;
        let dev = ((n as f64) * self.0[1]) as usize;
        let train = train.min(n);
        let dev = dev.min(n - train);
        (train, dev, n - train - dev)
    }

    /// Why the ratios cannot split a dataset, if they cannot: each must be in [0, 1] and train + dev ≤ 1 (the
    /// seed's `select` would run past the end).
    pub fn problem(&self) -> Option<String> {
        let [a, b, c] = self.0;
        if [a, b, c].iter().any(|x| !x.is_finite() || !(0.0..=1.0).contains(x)) {
            return Some("each fraction must be between 0 and 1, e.g. [0.98, 0.01, 0.01]".into());
        }
        if a + b > 1.0 + 1e-9 {
            return Some(format!("train + dev is {} > 1; the test split is what is left, e.g. [0.98, 0.01, 0.01]", a + b));
        }
        None
    }
}

fn nli_source() -> String {
    "Fremtind/all-nli-norwegian".into()
}
fn eti_source() -> String {
    "thivy/eti-embedding-training-data".into()
}
fn norwegian() -> Vec<String> {
    vec!["norwegian".into()]
}
fn scandi_languages() -> Vec<String> {
    ["no", "da", "sv"].map(String::from).to_vec()
}
fn ddsc_languages() -> Vec<String> {
    ["norwegian", "danish", "swedish"].map(String::from).to_vec()
}
fn paws_dir() -> String {
    "data/paws-x/x-final".into()
}
fn no() -> bool {
    false
}

/// `datasets.nli`: the Hub dataset's own `train`/`dev`/`test` splits with `anchor`, `positive`, `negative`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NliLoader {
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Hub dataset id; default `Fremtind/all-nli-norwegian`.
    #[serde(default = "nli_source")]
    pub source: String,
    /// Read and passed on by the seed, which does not use it (default `[norwegian]`).
    #[serde(default = "norwegian")]
    pub languages: Vec<String>,
    /// Read and passed on by the seed, which does not use it: NLI keeps the Hub dataset's splits.
    #[serde(default)]
    pub split_ratio: SplitRatio,
}

/// `datasets.scandi_qa`: question/passage pairs from up to five sources, concatenated in the seed's order;
/// the training rows are then shuffled (`shuffle(seed=42)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScandiQaLoader {
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `ltg/norquad` (question → context); default true.
    #[serde(default = "yes")]
    pub use_norquad: bool,
    /// `ltg/noropenbookqa`, config `nb` (question_stem → fact); its test split is halved into dev and test;
    /// default true.
    #[serde(default = "yes")]
    pub use_openbookqa: bool,
    /// `alexandrainst/scandi-qa` per language (question → context), train split 90/10 into train/dev; default
    /// true.
    #[serde(default = "yes")]
    pub use_scandiqa: bool,
    /// `jealk/supervised-da` (query → pos), 80/10/10; default true.
    #[serde(default = "yes")]
    pub use_supervised_da: bool,
    /// Norwegian PAWS-X paraphrases (label 1) from `paws_data_dir`; default true.
    #[serde(default = "yes")]
    pub use_paws: bool,
    /// ScandiQA configs to read, in order; default `[no, da, sv]`.
    #[serde(default = "scandi_languages")]
    pub scandiqa_languages: Vec<String>,
    /// Local folder with `nb/translated_{train,dev_2k,test_2k}.json` (relative paths from the working
    /// directory, as in the seed); default `data/paws-x/x-final`.
    #[serde(default = "paws_dir")]
    pub paws_data_dir: String,
}

/// `datasets.ddsc`: `DDSC/nordic-embedding-training-data`, filtered by language and task, shuffled
/// (`shuffle(seed=42)`) and split by `split_ratio`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DdscLoader {
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Values of the `language` column to keep. As in the seed, the filter applies only to a non-empty list
    /// of fewer than three languages. Default `[norwegian, danish, swedish]`.
    #[serde(default = "ddsc_languages")]
    pub languages: Vec<String>,
    /// Values of the `task` column to keep; null or empty keeps all (default).
    #[serde(default)]
    pub tasks: Option<Vec<String>>,
    /// Default `[0.98, 0.01, 0.01]`.
    #[serde(default)]
    pub split_ratio: SplitRatio,
}

/// `datasets.eti`: the Hub dataset's `train`/`dev`/`test` splits, or its `train` split cut by `split_ratio`
/// (in order, no shuffle) when it has no dev and test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtiLoader {
    /// Default false, as in the seed's script (`.get('enabled', False)`).
    #[serde(default = "no")]
    pub enabled: bool,
    /// Hub dataset id; default `thivy/eti-embedding-training-data`.
    #[serde(default = "eti_source")]
    pub source: String,
    /// Default `[0.98, 0.01, 0.01]`.
    #[serde(default)]
    pub split_ratio: SplitRatio,
}

impl DatasetSpec {
    /// Pins the block's Hub datasets to the commits a checkpoint recorded for it (what a resume does): a Hub
    /// source becomes `hf://datasets/owner/name@<commit>[/path]`; a seed loader block reads each of `pins`' repos
    /// at its commit ([`DatasetSpec::hub_commits`]). Returns false (and changes nothing) for a block that names
    /// no Hub dataset.
    pub fn pin_hub_commits(&mut self, pins: &[super::HubPin]) -> bool {
        if self.loader.is_some() {
            self.hub_commits = pins.iter().map(|p| (p.repo_id.clone(), p.commit.clone())).collect();
            return !pins.is_empty();
        }
        let Some(pin) = pins.first() else { return false };
        if !self.source.starts_with("hf://") && std::path::Path::new(&self.source).exists() {
            return false;
        }
        match crate::hub::parse_dataset_source_path(&self.source) {
            Some((repo, _, path)) => {
                self.source = match path {
                    Some(p) => format!("hf://datasets/{repo}@{}/{p}", pin.commit),
                    None => format!("hf://datasets/{repo}@{}", pin.commit),
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
    /// Comma-separated values with a header row (`datasets`' `csv` builder).
    #[serde(rename = "csv")]
    Csv,
    /// Tab-separated values with a header row (`datasets` reads `.tsv` with its `csv` builder, `sep="\t"`).
    #[serde(rename = "tsv")]
    Tsv,
    /// Multi-member gzip JSONL (`bgzip`, or gzip files concatenated), read as [`DataFormat::JsonlGz`]; the
    /// streaming pass records a file of several members so, and a record's location then points into the
    /// member its line starts in (see [`crate::data::scan`]), so a ranged read decompresses only that member.
    #[serde(rename = "jsonl.bgzf")]
    JsonlBgzf,
}

impl DataFormat {
    /// The field delimiter of [`DataFormat::Csv`] and [`DataFormat::Tsv`].
    pub fn delimiter(self) -> Option<u8> {
        match self {
            DataFormat::Csv => Some(b','),
            DataFormat::Tsv => Some(b'\t'),
            _ => None,
        }
    }
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

