//! Training data: readers for JSONL, gzip JSONL and Parquet from local paths, globs and object-store URLs,
//! mapped onto `anchor` / `positive` / `negative…` / `label` ([`Example`]), and the deterministic multi-dataset
//! batch plan ([`plan`]).
//!
//! Guarantees:
//! - Files of one dataset are read in sorted path order, records in file order: row `i` of a dataset is the same
//!   on every machine.
//! - Every bad record error names the file and line (JSONL) or row group, row and column (Parquet), the bad
//!   value and the fix. With `on_bad_record: skip` bad records are skipped and counted instead
//!   ([`LoadedDataset::bad_records`]).
//! - A source that matches no file, a dataset with no records, a Parquet file without the needed columns: each a
//!   one-line error naming the dataset, the source and the fix.

pub mod artifact;
mod csv_reader;
pub mod index;
mod jsonl;
pub mod loaders;
mod parquet_reader;
pub mod plan;
pub mod scan;
mod source;
pub mod spec;

use indexmap::IndexMap;

pub use spec::{BatchSamplerKind, DataFormat, DatasetSpec, OnBadRecord, SamplingStrategy, SeedLoader};
use crate::store::{StoreError, StoreOptions};

pub use artifact::{ChunkBatch, PlanChunk, PlanManifest, PublishedPlan, DEFAULT_CHUNK_STEPS};
pub use index::{DataPlan, DataPlanRef, IndexedFile, RangedReader, RecordIndex, RecordLoc};
pub use plan::{slice_for_rank, BatchPlan, PlanDataset, PlanSpec, PlanStop, PlannedBatch, TextHashes};
pub use scan::{scan_training_data, ScannedDataset};

/// The commit a Hub dataset source resolved to: recorded in checkpoints so a resume reads the same data
/// ([`DatasetSpec::pin_hub_commits`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HubPin {
    /// `owner/name`.
    pub repo_id: String,
    /// The revision the source asked for (`main` by default; `refs/convert/parquet` for a converted dataset).
    pub revision: String,
    /// The commit the files were read from.
    pub commit: String,
}

/// One training record.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The query.
    pub anchor: String,
    /// The relevant document.
    pub positive: String,
    /// Hard negatives, in column order (`negative`, `negative_1`, `negative_2`, ...).
    pub negatives: Vec<String>,
    /// Teacher scores or margins (MarginMSE, KL distillation); a scalar label becomes a one-element vector.
    pub label: Option<Vec<f32>>,
}

impl Example {
    /// Every text of the record: anchor, positive, negatives (what `no_duplicates` compares).
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.anchor.as_str()).chain(std::iter::once(self.positive.as_str())).chain(self.negatives.iter().map(String::as_str))
    }
}

/// Why a dataset could not be loaded. Each message is one line naming the dataset/file, the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The source matches no file.
    #[error("dataset `{dataset}`: source `{source_path}` matches no file; check `datasets.{dataset}.source` (a path, glob or URL)")]
    NotFound {
        /// Dataset name.
        dataset: String,
        /// As configured.
        source_path: String,
    },
    /// No usable records.
    #[error("dataset `{dataset}`: `{source_path}` holds no records{}; point `datasets.{dataset}.source` at a non-empty file or set `enabled: false`", skipped_note(*.skipped))]
    Empty {
        /// Dataset name.
        dataset: String,
        /// As configured.
        source_path: String,
        /// Bad records skipped (they may be why it is empty).
        skipped: usize,
    },
    /// One record is bad and `on_bad_record` is `error`.
    #[error("{file}:{location}: {problem}; {fix}")]
    BadRecord {
        /// The file.
        file: String,
        /// `line N` (JSONL) or `row group G, row R, column C` (Parquet).
        location: String,
        /// What is wrong, with the bad value.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// A Parquet file whose columns do not fit.
    #[error("{file}: {problem}; {fix}")]
    Schema {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// The format cannot be told from the name.
    #[error("{file}: cannot tell the format from the file name; name it .jsonl, .jsonl.gz, .parquet, .csv or .tsv, or set `datasets.{dataset}.format`")]
    UnknownFormat {
        /// Dataset name.
        dataset: String,
        /// The file.
        file: String,
    },
    /// `columns` does not map onto the roles.
    #[error("dataset `{dataset}`: {problem}")]
    Columns {
        /// Dataset name.
        dataset: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Reading failed (I/O, gzip, Parquet decoding).
    #[error("{file}: {message}")]
    Read {
        /// The file.
        file: String,
        /// What failed.
        message: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bare `owner/name` source that is neither a local path nor a Hub dataset that could be had.
    #[error("dataset `{dataset}`: `{source_path}` is no local path (from {cwd}), and as a Hugging Face Hub id: {source}")]
    HubOrPath {
        /// Dataset name.
        dataset: String,
        /// As configured.
        source_path: String,
        /// The working directory relative paths are read from.
        cwd: String,
        /// Why the Hub could not serve it.
        #[source]
        source: crate::hub::HubError,
    },
    /// A Hugging Face Hub dataset could not be resolved or downloaded.
    #[error("dataset `{dataset}`: {source}")]
    Hub {
        /// Dataset name.
        dataset: String,
        /// What failed, with the fix.
        #[source]
        source: crate::hub::HubError,
    },
    /// A data-plan artifact (see [`index::DataPlan`]) that cannot be used.
    #[error("data plan `{location}`: {problem}")]
    PlanArtifact {
        /// The artifact's location (or the dataset concerned).
        location: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn skipped_note(n: usize) -> String {
    if n > 0 {
        format!(" ({n} bad records were skipped)")
    } else {
        String::new()
    }
}

/// A role a file column can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The query.
    Anchor,
    /// The relevant document.
    Positive,
    /// `negative` is 0, `negative_N` is N.
    Negative(u32),
    /// Teacher score(s).
    Label,
}

impl Role {
    /// Parses `anchor`, `positive`, `negative`, `negative_N` (N ≥ 1), `label`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "anchor" => Some(Role::Anchor),
            "positive" => Some(Role::Positive),
            "negative" => Some(Role::Negative(0)),
            "label" => Some(Role::Label),
            _ => s.strip_prefix("negative_").and_then(|n| n.parse::<u32>().ok()).filter(|n| *n >= 1).map(Role::Negative),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Anchor => f.write_str("anchor"),
            Role::Positive => f.write_str("positive"),
            Role::Negative(0) => f.write_str("negative"),
            Role::Negative(n) => write!(f, "negative_{n}"),
            Role::Label => f.write_str("label"),
        }
    }
}

/// How a dataset's file columns map onto roles.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnMap {
    /// The file's columns already carry role names; other columns are ignored.
    Identity,
    /// Exactly these (role, file column) pairs, sorted by role.
    Explicit(Vec<(Role, String)>),
}

impl ColumnMap {
    /// Reads `datasets.*.columns`: empty is [`ColumnMap::Identity`]; `file_column: role` when every value is a
    /// role, else `role: file_column` when every key is a role. Needs `anchor` and `positive`; a role may appear
    /// once. The error says what to write.
    pub fn from_config(columns: &IndexMap<String, String>) -> Result<ColumnMap, String> {
        if columns.is_empty() {
            return Ok(ColumnMap::Identity);
        }
        let pairs: Vec<(Role, String)> = if columns.values().all(|v| Role::parse(v).is_some()) {
            columns.iter().map(|(file, role)| (Role::parse(role).unwrap(), file.clone())).collect()
        } else if columns.keys().all(|k| Role::parse(k).is_some()) {
            columns.iter().map(|(role, file)| (Role::parse(role).unwrap(), file.clone())).collect()
        } else {
            let bad = columns.values().find(|v| Role::parse(v).is_none()).cloned().unwrap_or_default();
            return Err(format!(
                "`{bad}` is not a role; write `file_column: role` pairs with roles anchor, positive, negative, negative_1.., label"
            ));
        };
        let mut pairs = pairs;
        pairs.sort();
        for w in pairs.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(format!("role `{}` is mapped twice (from `{}` and `{}`); map each role once", w[0].0, w[0].1, w[1].1));
            }
        }
        for need in [Role::Anchor, Role::Positive] {
            if !pairs.iter().any(|(r, _)| *r == need) {
                return Err(format!("no column is mapped to `{need}`; add `your_column: {need}`"));
            }
        }
        Ok(ColumnMap::Explicit(pairs))
    }

    /// The (role, column) pairs for a file with columns `available` (in file order): explicit pairs as they
    /// are, or the role-named columns for [`ColumnMap::Identity`].
    pub fn resolve<'a>(&self, available: impl IntoIterator<Item = &'a str>) -> Vec<(Role, String)> {
        match self {
            ColumnMap::Explicit(pairs) => pairs.clone(),
            ColumnMap::Identity => {
                let mut v: Vec<(Role, String)> =
                    available.into_iter().filter_map(|c| Role::parse(c).map(|r| (r, c.to_string()))).collect();
                v.sort();
                v
            }
        }
    }
}

/// The fix suggested for a bad record: map columns or skip.
fn bad_record_fix(dataset: &str) -> String {
    format!("fix the record, map columns with `datasets.{dataset}.columns`, or set `datasets.{dataset}.on_bad_record: skip`")
}

/// A dataset read into memory.
#[derive(Debug, Clone)]
pub struct LoadedDataset {
    /// Its name in the config.
    pub name: String,
    /// The files read, in order.
    pub files: Vec<String>,
    /// Records, in file order (after `max_samples`).
    pub examples: Vec<Example>,
    /// Bad records skipped under `on_bad_record: skip`.
    pub bad_records: usize,
    /// Where each of [`LoadedDataset::examples`] lives (same order), for ranged reads.
    pub locations: Vec<RecordLoc>,
    /// The files read, with their formats and sizes; [`RecordLoc::file`] indexes this.
    pub file_info: Vec<IndexedFile>,
    /// For a Hub dataset: the commit its files come from.
    pub hub: Option<HubPin>,
}

impl LoadedDataset {
    /// Splits off `ratio` of the records (rounded, at least one when `ratio` > 0 and there are two or more
    /// records) for evaluation, chosen by a seeded shuffle of the row indices: the same for the same seed,
    /// dataset name and size. Returns (train, eval) row indices into [`LoadedDataset::examples`], each ascending.
    pub fn split_indices(&self, ratio: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        split_ids(&self.name, self.examples.len(), ratio, seed)
    }

    /// [`LoadedDataset::split_indices`] as rows: (train, eval), both in file order.
    pub fn split(&self, ratio: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
        let (train, eval) = self.split_indices(ratio, seed);
        let pick = |ids: &[usize]| ids.iter().map(|&i| self.examples[i].clone()).collect();
        (pick(&train), pick(&eval))
    }
}

/// Which of `n` records of dataset `name` are held out: `true` for the `ratio` share (rounded, at least one
/// when `ratio` > 0 and `n` ≥ 2) a seeded shuffle of the record numbers puts first. Needs only the count, so
/// the streaming pass and the in-memory path split alike.
pub(crate) fn eval_mask(name: &str, n: usize, ratio: f64, seed: u64) -> Vec<bool> {
    let mut is_eval = vec![false; n];
    if ratio <= 0.0 || n < 2 {
        return is_eval;
    }
    let n_eval = ((n as f64 * ratio).round() as usize).clamp(1, n - 1);
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = plan::rng(seed, plan::fnv1a(name.as_bytes()), 0, plan::PURPOSE_SPLIT);
    plan::shuffle(&mut idx, &mut rng);
    for &i in &idx[..n_eval] {
        is_eval[i] = true;
    }
    is_eval
}

fn split_ids(name: &str, n: usize, ratio: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let is_eval = eval_mask(name, n, ratio, seed);
    (0..n).partition(|&i| !is_eval[i])
}

/// Sink for records that also applies `on_bad_record` and `max_samples`. It keeps each record whole
/// (`examples`, the in-memory path) or only its fixed-size summary (`summaries`, the streaming pass); the
/// locations are kept either way.
pub(crate) struct Collector<'a> {
    pub dataset: &'a str,
    pub on_bad: OnBadRecord,
    pub max: Option<usize>,
    pub examples: Vec<Example>,
    /// When set, records are summarised into it instead of kept in `examples`.
    pub summaries: Option<scan::Summaries>,
    pub bad: usize,
    /// Location of each record taken.
    pub locs: Vec<RecordLoc>,
    /// Index of the file being read (into the dataset's file list).
    pub file: u32,
    /// Warn about skipped records (off when re-reading for ranged reads).
    pub warn: bool,
}

impl<'a> Collector<'a> {
    fn full(&self) -> bool {
        self.max.is_some_and(|m| self.locs.len() >= m)
    }

    fn new(dataset: &'a str, on_bad: OnBadRecord, max: Option<usize>) -> Collector<'a> {
        Collector { dataset, on_bad, max, examples: Vec::new(), summaries: None, bad: 0, locs: Vec::new(), file: 0, warn: true }
    }

    /// Handles one record's outcome, found at (`a`, `b`) of the current file (see [`RecordLoc`]); `Err`
    /// stops the load.
    fn take(&mut self, r: Result<Example, DataError>, a: u64, b: u64) -> Result<(), DataError> {
        match r {
            Ok(e) => {
                match &mut self.summaries {
                    Some(s) => s.push(e),
                    None => self.examples.push(e),
                }
                self.locs.push(RecordLoc(self.file, a, b));
                Ok(())
            }
            Err(e @ DataError::BadRecord { .. }) if self.on_bad == OnBadRecord::Skip => {
                if self.warn && self.bad < 5 {
                    tracing::warn!(dataset = self.dataset, error = %e, "skipping bad record");
                }
                self.bad += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

fn format_of(dataset: &str, file: &str, configured: Option<DataFormat>) -> Result<DataFormat, DataError> {
    if let Some(f) = configured {
        return Ok(f);
    }
    let lower = file.to_ascii_lowercase();
    if lower.ends_with(".jsonl.gz") || lower.ends_with(".json.gz") || lower.ends_with(".ndjson.gz") {
        Ok(DataFormat::JsonlGz)
    } else if lower.ends_with(".jsonl") || lower.ends_with(".json") || lower.ends_with(".ndjson") {
        Ok(DataFormat::Jsonl)
    } else if lower.ends_with(".parquet") || lower.ends_with(".pq") {
        Ok(DataFormat::Parquet)
    } else if lower.ends_with(".csv") {
        Ok(DataFormat::Csv)
    } else if lower.ends_with(".tsv") {
        Ok(DataFormat::Tsv)
    } else {
        Err(DataError::UnknownFormat { dataset: dataset.into(), file: file.into() })
    }
}

/// The files dataset `name`'s `source` resolves to (path, glob, directory, URL or URL glob), sorted,
/// without reading them: what a coordinator checks before it starts a job.
/// Errors: [`DataError::NotFound`] naming the dataset, its source and the config key when it matches no
/// file; a store error naming the location when the store cannot be listed (missing bucket, credentials).
pub async fn list_source_files(name: &str, source: &str, options: &StoreOptions) -> Result<Vec<String>, DataError> {
    Ok(source::resolve(name, source, None, None, options).await?.files.iter().map(|f| f.display()).collect())
}

/// [`list_source_files`] for a dataset block: a Hub source lists the files of its `config` / `split`.
pub async fn list_dataset_files(name: &str, spec: &DatasetSpec, options: &StoreOptions) -> Result<Vec<String>, DataError> {
    let r = source::resolve(name, &spec.source, spec.config.as_deref(), spec.split.as_deref(), options).await?;
    Ok(r.files.iter().map(|f| f.display()).collect())
}

/// Reads dataset `name` as `spec` describes (sources, format, columns, `max_samples`, `on_bad_record`).
/// `split_ratio` is applied separately by [`LoadedDataset::split`].
pub async fn load_dataset(name: &str, spec: &DatasetSpec, options: &StoreOptions) -> Result<LoadedDataset, DataError> {
    let columns =
        ColumnMap::from_config(&spec.columns).map_err(|problem| DataError::Columns { dataset: name.into(), problem })?;
    let resolved = source::resolve(name, &spec.source, spec.config.as_deref(), spec.split.as_deref(), options).await?;
    let files = resolved.files;
    let mut sink = Collector::new(name, spec.on_bad_record, spec.max_samples);
    let mut names = Vec::new();
    let mut file_info = Vec::new();
    for file in &files {
        if sink.full() {
            break;
        }
        let display = file.display();
        names.push(display.clone());
        let format = format_of(name, &display, spec.format)?;
        // The head before the read: a file that changes between them is refused at its first ranged read
        // (the fingerprint is older than the rows), never silently indexed with a newer fingerprint.
        let meta = file.head().await?;
        let bytes = file.read().await?;
        sink.file = file_info.len() as u32;
        let format = match format {
            DataFormat::Parquet => {
                parquet_reader::read(&display, bytes, &columns, &mut sink)?;
                format
            }
            DataFormat::Csv | DataFormat::Tsv => {
                csv_reader::read(&display, &bytes, format.delimiter().expect("csv"), &columns, &mut sink)?;
                format
            }
            _ => scan::read_jsonl_file(&display, format, std::io::Cursor::new(bytes), &columns, &mut sink, &scan::ScanLimits::default())?,
        };
        file_info.push(IndexedFile::from_meta(display.clone(), format, &meta));
    }
    if sink.locs.is_empty() {
        return Err(DataError::Empty { dataset: name.into(), source_path: spec.source.clone(), skipped: sink.bad });
    }
    if sink.bad > 0 {
        tracing::warn!(dataset = name, skipped = sink.bad, "bad records skipped (on_bad_record: skip)");
    }
    Ok(LoadedDataset {
        name: name.into(),
        files: names,
        examples: sink.examples,
        bad_records: sink.bad,
        locations: sink.locs,
        file_info,
        hub: resolved.hub,
    })
}

/// One enabled dataset of a config, loaded and split.
#[derive(Debug, Clone)]
pub struct SplitDataset {
    /// Config name.
    pub name: String,
    /// Training rows (what [`BatchPlan`] row indices point into).
    pub train: Vec<Example>,
    /// Held-out rows (`split_ratio`; a seed loader block's dev split).
    pub eval: Vec<Example>,
    /// For each training row, its record number in the dataset (files in sorted order, records in file
    /// order, after skipped bad records): stable ids for ledgers and ranged reads.
    pub train_ids: Vec<usize>,
    /// Bad records skipped.
    pub bad_records: usize,
    /// Where each training row lives, in [`SplitDataset::train`] order (see [`RecordIndex`]).
    pub index: RecordIndex,
    /// The Hub commit of each Hub dataset read: the source's for a file block, every dataset's a seed loader
    /// block read. Empty for local and object-store data.
    pub hub: Vec<HubPin>,
}

/// Loads and splits `datasets` (name and spec; the config's enabled ones in config order), in the order given,
/// each split with `seed`. Seed loader blocks ([`DatasetSpec::loader`]) are materialised first
/// ([`loaders::materialize`], Hub datasets from [`loaders::hub_split_files`], cache under
/// [`loaders::cache_root`]): their training rows are the seed's train split and [`SplitDataset::eval`] its dev
/// split.
pub async fn load_training_data<'a>(
    datasets: impl IntoIterator<Item = (&'a str, &'a DatasetSpec)>,
    seed: u64,
    options: &StoreOptions,
) -> Result<Vec<SplitDataset>, DataError> {
    let datasets: Vec<(&str, &DatasetSpec)> = datasets.into_iter().collect();
    let pins = datasets.iter().flat_map(|(_, s)| s.hub_commits.clone()).collect();
    let hub = if datasets.iter().any(|(_, s)| s.loader.is_some()) { Some(loaders::hub_split_files(pins)?) } else { None };
    let files = hub.as_deref().map(|h| (h, loaders::cache_root()));
    load_training_data_from(datasets, seed, options, files.as_ref().map(|(h, c)| (*h, c.as_path()))).await
}

/// [`load_training_data`] with the Hub files and cache root of seed loader blocks given (`None`: a seed
/// loader block is an error).
pub async fn load_training_data_from<'a>(
    datasets: impl IntoIterator<Item = (&'a str, &'a DatasetSpec)>,
    seed: u64,
    options: &StoreOptions,
    seed_files: Option<(&dyn loaders::SplitFiles, &std::path::Path)>,
) -> Result<Vec<SplitDataset>, DataError> {
    let mut out = Vec::new();
    for (name, spec) in datasets {
        let (loaded, spec, eval, hub, dev) = match &spec.loader {
            Some(loader) => {
                let m = loaders::materialize_block(name, loader, seed_files)?;
                let train_spec = loaders::Materialized::file_spec(&m.train);
                let loaded = load_dataset(name, &train_spec, options).await?;
                let eval = if m.rows[1] == 0 {
                    Vec::new()
                } else {
                    load_dataset(name, &loaders::Materialized::file_spec(&m.dev), options).await?.examples
                };
                let dev = (m.rows[1] > 0).then(|| m.dev.display().to_string());
                (loaded, train_spec, Some(eval), m.hub, dev)
            }
            None => {
                let loaded = load_dataset(name, spec, options).await?;
                let hub = loaded.hub.iter().cloned().collect();
                (loaded, spec.clone(), None, hub, None)
            }
        };
        let (train_ids, eval_ids) = loaded.split_indices(spec.split_ratio, seed);
        let pick = |ids: &[usize]| ids.iter().map(|&i| loaded.examples[i].clone()).collect::<Vec<_>>();
        let (train, eval) = (pick(&train_ids), eval.unwrap_or_else(|| pick(&eval_ids)));
        let index = RecordIndex { hub: hub.clone(), dev, ..RecordIndex::new(name, &spec, &loaded, &train_ids) };
        out.push(SplitDataset {
            name: name.to_string(),
            train,
            eval,
            train_ids,
            bad_records: loaded.bad_records,
            index,
            hub,
        });
    }
    Ok(out)
}

/// The dev split files of the config's enabled seed loader blocks, in config order (materialising them if
/// needed): what evaluation reads for `eval_loss`. File blocks hold their evaluation rows out with
/// `split_ratio` instead ([`SplitDataset::eval`]).
pub fn dev_split_files<'a>(
    datasets: impl IntoIterator<Item = (&'a str, &'a DatasetSpec)>,
    files: &dyn loaders::SplitFiles,
    cache_root: &std::path::Path,
) -> Result<Vec<(String, std::path::PathBuf)>, DataError> {
    let mut out = Vec::new();
    for (name, spec) in datasets {
        if let Some(loader) = &spec.loader {
            out.push((name.to_string(), loaders::materialize(name, loader, files, cache_root)?.dev));
        }
    }
    Ok(out)
}

/// The plan inputs for loaded datasets (with text hashes, so `no_duplicates` works).
pub fn plan_inputs(datasets: &[SplitDataset]) -> Vec<PlanDataset> {
    datasets.iter().map(|d| PlanDataset::from_examples(&d.name, &d.train)).collect()
}

/// [`load_dataset`] for synchronous callers (see [`crate::store::block_on`]).
pub fn load_dataset_blocking(name: &str, spec: &DatasetSpec, options: &StoreOptions) -> Result<LoadedDataset, DataError> {
    crate::store::block_on(load_dataset(name, spec, options))
}

#[cfg(test)]
mod tests;
