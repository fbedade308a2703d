//! Where every training record lives, and reading back only chosen records.
//!
//! A coordinator builds the batch plan and a [`RecordIndex`] per dataset, and publishes both as one
//! content-addressed, chunked artifact ([`super::artifact`]: a manifest `<output_dir>/data-plan/<sha256>.json`
//! and chunks of consecutive steps). A worker reads the manifest and the chunks of the steps it trains
//! (checking each sha256) and fetches only the records of its slice of each global batch with a
//! [`RangedReader`]:
//! - plain JSONL: each record is a byte range (its line) of its file, fetched with ranged GETs, neighbouring
//!   ranges coalesced;
//! - Parquet: the footer, then only the column chunks of the mapped columns of the row groups that hold wanted
//!   rows;
//! - gzip JSONL: a compressed stream cannot be entered in the middle, so the whole file is fetched once,
//!   decompressed and kept; records are byte ranges of the decompressed stream;
//! - CSV/TSV: records are byte ranges too, but parsing one needs the header row: the whole file is fetched
//!   once and kept.
//!
//! Labels (teacher scores for MarginMSE / KL distillation) travel in the artifact's chunks, a few floats per row:
//! every rank needs the labels of the whole global batch for the loss, and carrying them costs far less than
//! reading every record or an extra collective per step.
//!
//! Guarantees: [`RangedReader::read_rows`] returns exactly the [`Example`]s [`super::load_dataset`] returned for
//! the same rows (same parser); a file that changed since the plan was built (size, ETag or last-modified, see
//! [`IndexedFile::changes`]) is an error before its first read, naming the file, what changed and the fix;
//! [`RangedReader::bytes_read`] counts every byte fetched from storage (coalesced ranges, footers, whole gzip
//! files), so a test can prove a worker read less than the dataset.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use parquet::file::reader::{ChunkReader, Length, SerializedFileReader};
use serde::{Deserialize, Serialize};

use super::plan::{BatchPlan, PlanSpec, PlannedBatch};
use super::scan::ScannedDataset;
use super::{csv_reader, jsonl, parquet_reader, Collector, ColumnMap, DataError, Example, LoadedDataset};
use super::spec::{DataFormat, DatasetSpec, OnBadRecord};
use crate::store::{Location, StoreError, StoreOptions};

/// Ranges closer than this are fetched as one request (the gap is read and thrown away): fewer round trips
/// for a few wasted bytes.
const COALESCE_GAP: u64 = 64 * 1024;

/// Bytes read from the end of a Parquet file to find its footer in one request (small footers fit; a larger
/// one costs a second request).
const PARQUET_TAIL: u64 = 8 * 1024;

pub use super::artifact::DATA_PLAN_VERSION;

/// Where one record lives: `(file, a, b)` with `file` indexing [`RecordIndex::files`] and, by that file's
/// format, (`a`, `b`) = (byte offset, byte length) of its line (JSONL; offsets in the decompressed stream for
/// gzip JSONL, without the line end) or (row group, row in group) (Parquet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordLoc(pub u32, pub u64, pub u64);

impl RecordLoc {
    /// Index into the dataset's files.
    pub fn file(&self) -> usize {
        self.0 as usize
    }
}

/// One file of a dataset as it was when the index was built: where it is, how it is parsed, and what
/// identifies its content as the store lists it (size, last-modified time, ETag). A [`RangedReader`] compares
/// these with the file's head before its first read of the file and refuses a file that changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexedFile {
    /// Absolute local path or object-store URL.
    pub url: String,
    /// How it was parsed.
    pub format: DataFormat,
    /// Its size in bytes.
    pub size: u64,
    /// Its last-modified time as the store reported it (a local file's mtime), if the store reports one.
    #[serde(default)]
    pub last_modified: Option<DateTime<Utc>>,
    /// Its ETag as the store reported it (S3's content hash, a local file's inode-mtime-size), if any.
    #[serde(default)]
    pub etag: Option<String>,
}

impl IndexedFile {
    /// The file at `url` as the store described it in `meta` (from a `head`, `get` or listing).
    pub fn from_meta(url: String, format: DataFormat, meta: &object_store::ObjectMeta) -> Self {
        IndexedFile { url, format, size: meta.size, last_modified: Some(meta.last_modified), etag: meta.e_tag.clone() }
    }

    /// What differs between this file as indexed and `meta` (the store's head of it now), as
    /// `"size 10 → 12 bytes, ..."`; `None` when it is the same file. The size always counts; the ETag when both
    /// sides have one (it is the store's content identity); otherwise the last-modified time, to the second
    /// (S3 listings carry milliseconds, HEAD responses whole seconds).
    pub fn changes(&self, meta: &object_store::ObjectMeta) -> Option<String> {
        let size = meta.size != self.size;
        let etag = matches!((&self.etag, &meta.e_tag), (Some(a), Some(b)) if a != b);
        let both_etags = self.etag.is_some() && meta.e_tag.is_some();
        let mtime = self.last_modified.is_some_and(|t| t.timestamp() != meta.last_modified.timestamp());
        if !(size || etag || (mtime && !both_etags)) {
            return None;
        }
        // Everything that differs, for the reader of the error.
        let mut changed = Vec::new();
        if size {
            changed.push(format!("size {} → {} bytes", self.size, meta.size));
        }
        if let (true, Some(t)) = (mtime, self.last_modified) {
            changed.push(format!("last modified {} → {}", t.to_rfc3339(), meta.last_modified.to_rfc3339()));
        }
        if etag {
            changed.push(format!("etag {} → {}", self.etag.as_deref().unwrap_or("-"), meta.e_tag.as_deref().unwrap_or("-")));
        }
        Some(changed.join(", "))
    }
}

/// The locations of one dataset's training rows, in plan-row order (row `i` of [`BatchPlan`] batches of this
/// dataset is `rows[i]`), plus what is needed to parse them again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordIndex {
    /// The dataset's config name.
    pub dataset: String,
    /// `datasets.<name>.columns` as configured (how file columns map onto roles).
    pub columns: IndexMap<String, String>,
    /// The files the rows point into.
    pub files: Vec<IndexedFile>,
    /// One location per training row.
    pub rows: Vec<RecordLoc>,
    /// Each training row's label, or empty when no row has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Option<Vec<f32>>>,
    /// The Hub commit of each Hub dataset the rows come from ([`super::SplitDataset::hub`]), so a cluster's
    /// checkpoints record them as `splade train`'s do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hub: Vec<super::HubPin>,
    /// A seed loader block's dev split (JSONL, role-named columns): what a cluster's rank 0 evaluates
    /// `eval_loss` on. `None` for file blocks, which hold rows out with `split_ratio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

impl RecordIndex {
    /// The index of `loaded`'s rows `train_ids` (the training split, ascending record numbers).
    pub fn new(name: &str, spec: &DatasetSpec, loaded: &LoadedDataset, train_ids: &[usize]) -> RecordIndex {
        let any_label = train_ids.iter().any(|&i| loaded.examples[i].label.is_some());
        RecordIndex {
            dataset: name.into(),
            columns: spec.columns.clone(),
            files: loaded.file_info.clone(),
            rows: train_ids.iter().map(|&i| loaded.locations[i]).collect(),
            labels: if any_label { train_ids.iter().map(|&i| loaded.examples[i].label.clone()).collect() } else { Vec::new() },
            hub: loaded.hub.iter().cloned().collect(),
            dev: None,
        }
    }

    /// The label of training row `row`, if the dataset has labels.
    pub fn label(&self, row: usize) -> Option<&[f32]> {
        self.labels.get(row).and_then(|l| l.as_deref())
    }

    /// Total size of the files, in bytes: what loading the whole dataset reads.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A pointer to a published [`DataPlan`]: where its manifest is and the sha256 of the manifest's bytes (see
/// [`super::artifact`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPlanRef {
    /// Absolute local path or object-store URL of the artifact.
    pub location: String,
    /// Lower-case hex sha256 of the artifact's bytes.
    pub sha256: String,
}

/// The batch plan of a job plus the record index of each dataset: everything a worker needs to fetch its
/// slice of every global batch without loading the datasets. Independent of the number of workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataPlan {
    /// [`DATA_PLAN_VERSION`].
    pub version: u32,
    /// Rows per planned batch (the global batch).
    pub global_batch_size: usize,
    /// The plan, `batches[k - 1].step == k`.
    pub batches: Vec<PlannedBatch>,
    /// One index per enabled dataset, in config order.
    pub datasets: Vec<RecordIndex>,
}

impl DataPlan {
    /// Plans `data` (as [`super::scan::scan_training_data`] returns it, or [`ScannedDataset::from_split`] of
    /// loaded rows) with `spec`, whose `batch_size` is the global batch: the plan `BatchPlan::build` makes from
    /// the datasets' summaries, which are dropped once it is made; the indexes move into the plan.
    pub fn build(spec: &PlanSpec, data: Vec<ScannedDataset>) -> Result<DataPlan, super::plan::PlanError> {
        let (summaries, datasets): (Vec<_>, Vec<_>) = data.into_iter().map(|d| (d.summary, d.index)).unzip();
        let plan = BatchPlan::build(&summaries, spec)?;
        drop(summaries);
        Ok(DataPlan { version: DATA_PLAN_VERSION, global_batch_size: spec.batch_size, batches: plan.batches, datasets })
    }

    /// The batch plan.
    pub fn plan(&self) -> BatchPlan {
        BatchPlan { batches: self.batches.clone() }
    }

    /// The index of dataset `name`.
    pub fn dataset(&self, name: &str) -> Option<&RecordIndex> {
        self.datasets.iter().find(|d| d.dataset == name)
    }
}

/// Merges sorted ranges closer than `gap` into fewer, larger ones.
fn coalesce(sorted: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => last.end = last.end.max(r.end),
            _ => out.push(r.clone()),
        }
    }
    out
}

/// Part of a file held in memory: the fetched ranges (a sparse Parquet file for the `parquet` crate).
#[derive(Clone)]
struct Sparse {
    len: u64,
    parts: Arc<Vec<(u64, Bytes)>>,
}

impl Sparse {
    fn slice(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        for (at, b) in self.parts.iter() {
            if start >= *at && start + length as u64 <= at + b.len() as u64 {
                let s = (start - at) as usize;
                return Ok(b.slice(s..s + length));
            }
        }
        Err(parquet::errors::ParquetError::General(format!("bytes {start}..+{length} were not fetched")))
    }

    /// From `start` to the end of the fetched part that holds it.
    fn tail_from(&self, start: u64) -> parquet::errors::Result<Bytes> {
        for (at, b) in self.parts.iter() {
            if start >= *at && start < at + b.len() as u64 {
                return Ok(b.slice((start - at) as usize..));
            }
        }
        Err(parquet::errors::ParquetError::General(format!("byte {start} was not fetched")))
    }
}

impl Length for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Sparse {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        Ok(self.tail_from(start)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, length)
    }
}

/// Reads chosen training rows of the datasets of a [`DataPlan`] from their files, fetching only what those rows
/// need (see the module docs). Not thread-safe by design: one reader per prefetch thread.
pub struct RangedReader {
    datasets: BTreeMap<String, RecordIndex>,
    options: StoreOptions,
    bytes_read: Arc<AtomicU64>,
    /// Decompressed gzip files and whole CSV files, by (dataset, file).
    gz: HashMap<(String, usize), Bytes>,
    /// Opened locations, by URL.
    locations: HashMap<String, Location>,
    /// Files whose size was checked against the index.
    checked: BTreeSet<String>,
    /// Parquet footers (the fetched tail of the file), by URL: fetched once per file.
    footers: HashMap<String, (u64, Bytes)>,
}

impl RangedReader {
    /// A reader over `datasets` (credentials and endpoints from `options` and the environment).
    pub fn new(datasets: impl IntoIterator<Item = RecordIndex>, options: StoreOptions) -> RangedReader {
        RangedReader {
            datasets: datasets.into_iter().map(|d| (d.dataset.clone(), d)).collect(),
            options,
            bytes_read: Arc::new(AtomicU64::new(0)),
            gz: HashMap::new(),
            locations: HashMap::new(),
            checked: BTreeSet::new(),
            footers: HashMap::new(),
        }
    }

    /// Bytes fetched from storage so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// The shared counter behind [`RangedReader::bytes_read`] (to read it from another thread).
    pub fn bytes_counter(&self) -> Arc<AtomicU64> {
        self.bytes_read.clone()
    }

    fn location(&mut self, url: &str) -> Result<Location, DataError> {
        if let Some(l) = self.locations.get(url) {
            return Ok(l.clone());
        }
        let l = Location::parse_with(url, &self.options)?;
        self.locations.insert(url.to_string(), l.clone());
        Ok(l)
    }

    fn store_err(url: &str) -> impl Fn(object_store::Error) -> DataError + '_ {
        move |source| DataError::Store(StoreError::ObjectStore { location: url.to_string(), source })
    }

    fn changed(file: &IndexedFile, what: &str) -> DataError {
        DataError::Read {
            file: file.url.clone(),
            message: format!(
                "changed since the data plan was built ({what}); the plan's rows point into the old file: re-plan (start a new job, or delete the job's data-plan/ so the coordinator plans again)"
            ),
        }
    }

    /// Fails when the file is not the one the index was built from (size, ETag or last-modified differ; see
    /// [`IndexedFile::changes`]). Checked once per file, before its first read.
    async fn check_file(&mut self, file: &IndexedFile) -> Result<(), DataError> {
        if self.checked.contains(&file.url) {
            return Ok(());
        }
        let loc = self.location(&file.url)?;
        let meta = loc.store().head(loc.prefix()).await.map_err(Self::store_err(&file.url))?;
        if let Some(what) = file.changes(&meta) {
            return Err(Self::changed(file, &what));
        }
        self.checked.insert(file.url.clone());
        Ok(())
    }

    /// Fetches `ranges` (sorted, coalesced first) of `file`; returns (start, bytes) per fetched range.
    async fn fetch_ranges(&mut self, file: &IndexedFile, ranges: &[Range<u64>]) -> Result<Vec<(u64, Bytes)>, DataError> {
        let merged = coalesce(ranges, COALESCE_GAP);
        if merged.is_empty() {
            return Ok(Vec::new());
        }
        let loc = self.location(&file.url)?;
        let got = loc.store().get_ranges(loc.prefix(), &merged).await.map_err(Self::store_err(&file.url))?;
        let n: u64 = got.iter().map(|b| b.len() as u64).sum();
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
        Ok(merged.iter().map(|r| r.start).zip(got).collect())
    }

    /// The whole decompressed stream of a gzip file, or the whole file of another format (fetched once).
    async fn whole_file(&mut self, dataset: &str, f: usize, file: &IndexedFile) -> Result<Bytes, DataError> {
        if let Some(b) = self.gz.get(&(dataset.to_string(), f)) {
            return Ok(b.clone());
        }
        self.check_file(file).await?;
        let loc = self.location(&file.url)?;
        let got = loc.store().get(loc.prefix()).await.map_err(Self::store_err(&file.url))?;
        let raw = got.bytes().await.map_err(Self::store_err(&file.url))?;
        self.bytes_read.fetch_add(raw.len() as u64, Ordering::Relaxed);
        if raw.len() as u64 != file.size {
            return Err(Self::changed(file, &format!("size {} → {} bytes", file.size, raw.len())));
        }
        let out = if file.format == DataFormat::JsonlGz {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&raw[..]), &mut out)
                .map_err(|e| DataError::Read { file: file.url.clone(), message: format!("gzip: {e}") })?;
            Bytes::from(out)
        } else {
            raw
        };
        self.gz.insert((dataset.to_string(), f), out.clone());
        Ok(out)
    }

    fn index(&self, dataset: &str) -> Result<RecordIndex, DataError> {
        self.datasets.get(dataset).cloned().ok_or_else(|| DataError::PlanArtifact {
            location: format!("dataset `{dataset}`"),
            problem: "is not in the data plan; the plan and the config disagree, restart the job".into(),
        })
    }

    /// Training rows `rows` of dataset `dataset` (plan-row indices into its index's rows), in that order.
    pub async fn read_rows(&mut self, dataset: &str, rows: &[usize]) -> Result<Vec<Example>, DataError> {
        let index = self.index(dataset)?;
        let locs = rows
            .iter()
            .map(|&r| {
                index.rows.get(r).copied().ok_or_else(|| DataError::PlanArtifact {
                    location: format!("dataset `{dataset}`"),
                    problem: format!("row {r} is past its {} training rows", index.rows.len()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.read_locs(dataset, &locs).await
    }

    /// The records at `locs` of dataset `dataset`, in that order (a plan chunk carries its rows' locations, so
    /// the reader's index needs the dataset's files and columns only).
    pub async fn read_locs(&mut self, dataset: &str, locs: &[RecordLoc]) -> Result<Vec<Example>, DataError> {
        let index = self.index(dataset)?;
        let columns = ColumnMap::from_config(&index.columns)
            .map_err(|problem| DataError::Columns { dataset: dataset.into(), problem })?;
        let mut by_file: BTreeMap<usize, Vec<RecordLoc>> = BTreeMap::new();
        for &loc in locs {
            by_file.entry(loc.file()).or_default().push(loc);
        }
        let mut found: HashMap<RecordLoc, Example> = HashMap::new();
        for (f, locs) in by_file {
            let file = index.files.get(f).ok_or_else(|| DataError::PlanArtifact {
                location: format!("dataset `{dataset}`"),
                problem: format!("file {f} is past its {} files", index.files.len()),
            })?;
            match file.format {
                DataFormat::Jsonl => {
                    self.check_file(file).await?;
                    let mut ranges: Vec<Range<u64>> = locs.iter().map(|l| l.1..l.1 + l.2).collect();
                    ranges.sort_by_key(|r| r.start);
                    ranges.dedup();
                    let parts = self.fetch_ranges(file, &ranges).await?;
                    let sparse = Sparse { len: file.size, parts: Arc::new(parts) };
                    for l in locs {
                        let bytes = sparse
                            .slice(l.1, l.2 as usize)
                            .map_err(|e| DataError::Read { file: file.url.clone(), message: e.to_string() })?;
                        let ex = jsonl::parse_at(&file.url, l.1, &bytes, &columns, dataset)?;
                        found.insert(l, ex);
                    }
                }
                DataFormat::JsonlGz => {
                    let stream = self.whole_file(dataset, f, file).await?;
                    for l in locs {
                        let end = (l.1 + l.2) as usize;
                        if end > stream.len() {
                            return Err(Self::changed(file, &format!("its stream ends at byte {} before record end {end}", stream.len())));
                        }
                        let ex = jsonl::parse_at(&file.url, l.1, &stream[l.1 as usize..end], &columns, dataset)?;
                        found.insert(l, ex);
                    }
                }
                DataFormat::Csv | DataFormat::Tsv => {
                    // Records are byte ranges, but parsing one needs the header: the file is fetched once and kept.
                    let bytes = self.whole_file(dataset, f, file).await?;
                    let delimiter = file.format.delimiter().expect("csv");
                    let header = csv_reader::header(&file.url, &bytes, delimiter)?;
                    for l in locs {
                        let end = (l.1 + l.2) as usize;
                        if end > bytes.len() {
                            return Err(Self::changed(file, &format!("it ends at byte {} before record end {end}", bytes.len())));
                        }
                        let ex = csv_reader::parse_at(&file.url, &header, l.1, &bytes[l.1 as usize..end], delimiter, &columns, dataset)?;
                        found.insert(l, ex);
                    }
                }
                DataFormat::JsonlBgzf => {
                    self.check_file(file).await?;
                    for (l, ex) in self.read_bgzf(dataset, file, &locs, &columns).await? {
                        found.insert(l, ex);
                    }
                }
                DataFormat::Parquet => {
                    let groups: BTreeSet<usize> = locs.iter().map(|l| l.1 as usize).collect();
                    let got = self.read_parquet_groups(dataset, f, file, &columns, &groups).await?;
                    for l in locs {
                        let ex = got.get(&l).cloned().ok_or_else(|| DataError::Read {
                            file: file.url.clone(),
                            message: format!(
                                "row group {}, row {} is not a readable record any more; the file changed since the data plan was built, restart the job",
                                l.1, l.2
                            ),
                        })?;
                        found.insert(l, ex);
                    }
                }
            }
        }
        Ok(locs.iter().map(|l| found[l].clone()).collect())
    }

    /// The records `locs` of a multi-member gzip file ([`DataFormat::JsonlBgzf`]): for each member a line starts
    /// in, its compressed bytes from that member on, enough for the lines: compressed data is at most a little
    /// longer than its output (stored blocks, member headers), so the output length plus an eighth and 1 KiB;
    /// a range that falls short is fetched again with twice the slack.
    async fn read_bgzf(
        &mut self,
        dataset: &str,
        file: &IndexedFile,
        locs: &[RecordLoc],
        columns: &ColumnMap,
    ) -> Result<Vec<(RecordLoc, Example)>, DataError> {
        let split = |l: &RecordLoc| (l.2 >> 32, l.2 & 0xffff_ffff);
        let mut need: BTreeMap<u64, u64> = BTreeMap::new();
        for l in locs {
            let (inner, len) = split(l);
            let e = need.entry(l.1).or_default();
            *e = (*e).max(inner + len);
        }
        let want = |at: u64, n: u64, slack: u64| at..(at + n + slack).min(file.size);
        let slack_of = |n: u64| 1024 + n / 8;
        let ranges: Vec<Range<u64>> = need.iter().map(|(&at, &n)| want(at, n, slack_of(n))).collect();
        let sparse = Sparse { len: file.size, parts: Arc::new(self.fetch_ranges(file, &ranges).await?) };
        let gz_err = |e: std::io::Error| DataError::Read { file: file.url.clone(), message: format!("gzip: {e}") };
        let mut out_of: HashMap<u64, Vec<u8>> = HashMap::new();
        for (&at, &n) in &need {
            let mut slack = slack_of(n);
            let mut bytes = sparse.slice(at, (want(at, n, slack).end - at) as usize).map_err(|e| DataError::Read { file: file.url.clone(), message: e.to_string() })?;
            let got = loop {
                if let Some(v) = super::scan::members_prefix(&bytes, n as usize).map_err(gz_err)? {
                    break v;
                }
                let r = want(at, n, slack);
                if r.end >= file.size {
                    return Err(Self::changed(file, &format!("its gzip members from byte {at} end before the record")));
                }
                slack = slack.saturating_mul(2).max(n);
                bytes = self.fetch_ranges(file, std::slice::from_ref(&want(at, n, slack))).await?.swap_remove(0).1;
            };
            out_of.insert(at, got);
        }
        let mut found = Vec::with_capacity(locs.len());
        for l in locs {
            let (inner, len) = split(l);
            let line = &out_of[&l.1][inner as usize..(inner + len) as usize];
            // Offset 0 (a byte-order mark may open the file) only for the file's first line.
            let offset = if l.1 == 0 { inner } else { l.1 + inner };
            found.push((*l, jsonl::parse_at(&file.url, offset, line, columns, dataset)?));
        }
        Ok(found)
    }

    /// Every record of row groups `groups` of a Parquet file, by location, fetching the footer and only the
    /// mapped columns' chunks of those groups.
    async fn read_parquet_groups(
        &mut self,
        dataset: &str,
        f: usize,
        file: &IndexedFile,
        columns: &ColumnMap,
        groups: &BTreeSet<usize>,
    ) -> Result<HashMap<RecordLoc, Example>, DataError> {
        let size = file.size;
        let pq_err = |e: parquet::errors::ParquetError| parquet_reader::read_err(&file.url, e);
        let footer = match self.footers.get(&file.url) {
            Some(f) => f.clone(),
            None => {
                self.check_file(file).await?;
                // The footer: its last 8 bytes give the metadata length.
                let tail_start = size.saturating_sub(PARQUET_TAIL);
                let mut parts = self.fetch_ranges(file, std::slice::from_ref(&(tail_start..size))).await?;
                let tail = &parts[0].1;
                if tail.len() < 8 {
                    return Err(pq_err(parquet::errors::ParquetError::General("file is shorter than a footer".into())));
                }
                let meta_len = u32::from_le_bytes(tail[tail.len() - 8..tail.len() - 4].try_into().expect("4 bytes")) as u64;
                let footer_start = size.saturating_sub(8 + meta_len);
                if footer_start < tail_start {
                    parts = self.fetch_ranges(file, std::slice::from_ref(&(footer_start..size))).await?;
                }
                let f = parts.swap_remove(0);
                self.footers.insert(file.url.clone(), f.clone());
                f
            }
        };
        let mut parts = vec![footer];
        let sparse = Sparse { len: size, parts: Arc::new(parts.clone()) };
        let metadata = parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&sparse).map_err(pq_err)?;
        let schema = metadata.file_metadata().schema_descr().root_schema().clone();
        let (pairs, _) = parquet_reader::projection(&file.url, &schema, columns, dataset)?;
        let wanted: BTreeSet<&str> = pairs.iter().map(|(_, c)| c.as_str()).collect();
        let mut ranges = Vec::new();
        for &g in groups {
            let rg = metadata.row_groups().get(g).ok_or_else(|| DataError::Read {
                file: file.url.clone(),
                message: format!("has no row group {g}; the file changed since the data plan was built, restart the job"),
            })?;
            for c in rg.columns() {
                if c.column_path().parts().first().is_some_and(|top| wanted.contains(top.as_str())) {
                    let (start, len) = c.byte_range();
                    ranges.push(start..start + len);
                }
            }
        }
        ranges.sort_by_key(|r| r.start);
        parts.extend(self.fetch_ranges(file, &ranges).await?);
        let sparse = Sparse { len: size, parts: Arc::new(parts) };
        let reader = SerializedFileReader::new(sparse).map_err(pq_err)?;
        let mut sink = Collector::new(dataset, OnBadRecord::Skip, None);
        sink.warn = false;
        sink.file = f as u32;
        parquet_reader::read_groups(&file.url, &reader, columns, Some(groups), &mut sink)?;
        Ok(sink.locs.into_iter().zip(sink.examples).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use object_store::PutPayload;

    use super::*;
    use crate::data::tests::{write_parquet, Col};
    use crate::data::{load_dataset, LoadedDataset};

    #[test]
    fn coalesce_merges_close_ranges_only() {
        let r = coalesce(&[0..10, 15..20, 200..210], 10);
        assert_eq!(r, vec![0..20, 200..210]);
        assert_eq!(coalesce(&[0..10, 5..8], 0), vec![0..10]);
    }

    /// The data tests' spec, with a held-out split (plan rows are not record numbers) and bad records skipped.
    fn spec(source: &str) -> DatasetSpec {
        DatasetSpec { split_ratio: 0.2, on_bad_record: OnBadRecord::Skip, ..crate::data::tests::spec(source) }
    }

    /// A padded text so records are large enough that a few of them are a small part of a file.
    fn text(kind: &str, i: usize) -> String {
        format!("{kind} {i} {}", "x".repeat(300))
    }

    /// Three files of one dataset: plain JSONL (with a BOM, CRLF line ends, a blank line and a bad record),
    /// gzip JSONL and a Parquet file of several row groups; 100 good records each, with labels.
    fn files() -> Vec<(String, Vec<u8>)> {
        let mut plain = String::from("\u{feff}");
        for i in 0..100 {
            plain.push_str(&format!(
                "{{\"anchor\": \"{}\", \"positive\": \"{}\", \"label\": {i}.5}}\r\n",
                text("qa", i),
                text("pa", i)
            ));
            if i == 10 {
                plain.push_str("\n{\"anchor\": 3}\n");
            }
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for i in 0..100 {
            writeln!(gz, "{{\"anchor\": \"{}\", \"positive\": \"{}\", \"label\": [{i}, 1]}}", text("qb", i), text("pb", i)).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let pq = dir.path().join("c.parquet");
        let anchors: Vec<String> = (0..100).map(|i| text("qc", i)).collect();
        let positives: Vec<String> = (0..100).map(|i| text("pc", i)).collect();
        let extra: Vec<String> = (0..100).map(|i| text("unmapped", i)).collect();
        write_parquet(
            &pq,
            &[
                Col::Str("anchor", anchors.iter().map(|s| Some(s.as_str())).collect()),
                Col::Str("positive", positives.iter().map(|s| Some(s.as_str())).collect()),
                Col::Str("other", extra.iter().map(|s| Some(s.as_str())).collect()),
                Col::F64("label", (0..100).map(|i| Some(i as f64)).collect()),
            ],
            10,
        );
        vec![
            ("a.jsonl".into(), plain.into_bytes()),
            ("b.jsonl.gz".into(), gz.finish().unwrap()),
            ("c.parquet".into(), std::fs::read(&pq).unwrap()),
        ]
    }

    /// Reads chosen rows through the index and checks them against the whole load; returns the bytes read.
    async fn check_same_records(loaded: &LoadedDataset, spec: &DatasetSpec, options: &StoreOptions, rows: &[usize]) -> u64 {
        assert_eq!(loaded.examples.len(), 300);
        assert_eq!(loaded.bad_records, 1);
        let (train_ids, _) = loaded.split_indices(spec.split_ratio, 7);
        let index = RecordIndex::new("d", spec, loaded, &train_ids);
        // The index survives serialization (it travels in the artifact).
        let index: RecordIndex = serde_json::from_str(&serde_json::to_string(&index).unwrap()).unwrap();
        let mut reader = RangedReader::new([index.clone()], options.clone());
        let got = reader.read_rows("d", rows).await.unwrap();
        let want: Vec<Example> = rows.iter().map(|&r| loaded.examples[train_ids[r]].clone()).collect();
        assert_eq!(got, want);
        for &r in rows {
            assert_eq!(index.label(r), loaded.examples[train_ids[r]].label.as_deref());
        }
        // A second read of the same rows (gzip cached) gives the same records.
        assert_eq!(reader.read_rows("d", rows).await.unwrap(), want);
        reader.bytes_read()
    }

    /// Rows from every file (train rows are in file order: 0..~80 plain, ~80..~160 gzip, the rest Parquet).
    fn some_rows() -> Vec<usize> {
        vec![3, 200, 81, 5, 239, 120, 0, 150, 170, 3]
    }

    #[tokio::test]
    async fn ranged_reads_match_the_whole_load_from_local_disk() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files() {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let s = spec(&format!("{}/*", dir.path().display()));
        let loaded = load_dataset("d", &s, &StoreOptions::default()).await.unwrap();
        let read = check_same_records(&loaded, &s, &StoreOptions::default(), &some_rows()).await;
        assert!(read > 0);
    }

    #[tokio::test]
    async fn ranged_reads_match_the_whole_load_from_s3_and_read_less() {
        let moto = splade_tests::MotoServer::start();
        moto.create_bucket("data");
        let opts = crate::store::StoreOptions { overrides: moto.store_overrides() };
        let loc = Location::parse_with("s3://data", &opts).unwrap();
        let mut sizes = BTreeMap::new();
        for (name, bytes) in files() {
            sizes.insert(name.clone(), bytes.len() as u64);
            loc.store().put(&loc.child(&format!("train/{name}")), PutPayload::from(bytes)).await.unwrap();
        }
        let s = spec("s3://data/train/*");
        let loaded = load_dataset("d", &s, &opts).await.unwrap();
        assert_eq!(loaded.file_info[0].url, "s3://data/train/a.jsonl");
        check_same_records(&loaded, &s, &opts, &some_rows()).await;

        // Two neighbouring plain JSONL records cost one short range, far from the whole file (records
        // further apart than COALESCE_GAP would be two requests; closer ones one, gap included).
        let (train_ids, _) = loaded.split_indices(s.split_ratio, 7);
        let index = RecordIndex::new("d", &s, &loaded, &train_ids);
        let mut reader = RangedReader::new([index.clone()], opts.clone());
        reader.read_rows("d", &[3, 2]).await.unwrap();
        assert!(reader.bytes_read() < 2_000, "plain JSONL read {} bytes", reader.bytes_read());
        // Parquet: footer + the mapped columns of one row group, well under the file.
        let mut reader = RangedReader::new([index.clone()], opts.clone());
        let pq_row = (0..index.rows.len()).rev().find(|&r| index.files[index.rows[r].file()].format == DataFormat::Parquet).unwrap();
        reader.read_rows("d", &[pq_row]).await.unwrap();
        assert!(reader.bytes_read() < sizes["c.parquet"] / 2, "parquet read {} of {}", reader.bytes_read(), sizes["c.parquet"]);
        // gzip is streamed whole, once.
        let mut reader = RangedReader::new([index.clone()], opts.clone());
        let gz_rows: Vec<usize> = (0..index.rows.len()).filter(|&r| index.rows[r].file() == 1).take(3).collect();
        reader.read_rows("d", &gz_rows[..1]).await.unwrap();
        reader.read_rows("d", &gz_rows[1..]).await.unwrap();
        assert_eq!(reader.bytes_read(), sizes["b.jsonl.gz"]);

        // A file overwritten since the index was built is refused before its first read, naming it, what changed
        // and the fix: same size, other content (a new ETag), then another size.
        let original = files().remove(0).1;
        let mut same_size = original.clone();
        let at = same_size.iter().position(|&b| b == b'x').unwrap();
        same_size[at] = b'y';
        loc.store().put(&loc.child("train/a.jsonl"), PutPayload::from(same_size)).await.unwrap();
        let mut reader = RangedReader::new([index.clone()], opts.clone());
        let e = reader.read_rows("d", &[2]).await.unwrap_err().to_string();
        let etag = index.files[0].etag.as_deref().expect("S3 lists an ETag");
        assert!(
            e.starts_with("s3://data/train/a.jsonl: changed since the data plan was built (")
                && e.contains(&format!("etag {etag} → "))
                && e.contains("re-plan"),
            "{e}"
        );
        assert_eq!(reader.bytes_read(), 0, "refused before reading");
        loc.store().put(&loc.child("train/a.jsonl"), PutPayload::from(b"{}\n".to_vec())).await.unwrap();
        let mut reader = RangedReader::new([index.clone()], opts.clone());
        let e = reader.read_rows("d", &[2]).await.unwrap_err().to_string();
        assert!(e.contains(&format!("(size {} → 3 bytes", sizes["a.jsonl"])), "{e}");
        // Parquet and gzip files are checked the same way before their first read.
        loc.store().put(&loc.child("train/c.parquet"), PutPayload::from(b"PAR1".to_vec())).await.unwrap();
        let e = reader.read_rows("d", &[pq_row]).await.unwrap_err().to_string();
        assert!(e.starts_with("s3://data/train/c.parquet: changed since the data plan was built (size "), "{e}");
        loc.store().put(&loc.child("train/b.jsonl.gz"), PutPayload::from(b"x".to_vec())).await.unwrap();
        let e = reader.read_rows("d", &gz_rows[..1]).await.unwrap_err().to_string();
        assert!(e.starts_with("s3://data/train/b.jsonl.gz: changed since the data plan was built (size "), "{e}");
        assert_eq!(reader.bytes_read(), 0, "refused before reading");
    }

    #[tokio::test]
    async fn a_local_file_touched_or_rewritten_after_planning_is_refused_before_its_first_read() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files() {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let s = spec(&format!("{}/*", dir.path().display()));
        let loaded = load_dataset("d", &s, &StoreOptions::default()).await.unwrap();
        let (train_ids, _) = loaded.split_indices(s.split_ratio, 7);
        let index = RecordIndex::new("d", &s, &loaded, &train_ids);
        let a = dir.path().join("a.jsonl");
        assert!(index.files[0].last_modified.is_some() && index.files[0].etag.is_some(), "{:?}", index.files[0]);
        // Unchanged: reads.
        RangedReader::new([index.clone()], StoreOptions::default()).read_rows("d", &[2]).await.unwrap();
        // `touch`: same bytes, a new mtime.
        let f = std::fs::File::options().write(true).open(&a).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60)).unwrap();
        drop(f);
        let mut reader = RangedReader::new([index.clone()], StoreOptions::default());
        let e = reader.read_rows("d", &[2]).await.unwrap_err().to_string();
        let was = index.files[0].last_modified.unwrap().to_rfc3339();
        assert!(
            e.starts_with(&format!("{}: changed since the data plan was built (last modified {was} → ", a.display()))
                && e.contains("re-plan (start a new job, or delete the job's data-plan/"),
            "{e}"
        );
        assert_eq!(reader.bytes_read(), 0, "refused before reading");
        // Rewritten with other content of another size.
        let short = b"{\"anchor\": \"q\", \"positive\": \"p\"}\n";
        std::fs::write(&a, short).unwrap();
        let e = RangedReader::new([index.clone()], StoreOptions::default()).read_rows("d", &[2]).await.unwrap_err().to_string();
        assert!(e.contains(&format!("(size {} → {} bytes", index.files[0].size, short.len())), "{e}");
        // Rows of the other files still read.
        let other = (0..index.rows.len()).find(|&r| index.rows[r].file() == 2).unwrap();
        RangedReader::new([index], StoreOptions::default()).read_rows("d", &[other]).await.unwrap();
    }
}
