//! The seed project's dataset loaders (`nli`, `scandi_qa`, `ddsc`, `eti` blocks, [`SeedLoader`]), built in:
//! the same Hub datasets, the same row formatting, the same rows in each train/dev/test split in the same order
//! as `train_sparse_multidataset.py`'s `load_datasets` followed by its `prepare_multi_dataset_dict`.
//!
//! Guarantees:
//! - Rows are formatted as the seed's `utils/data_loader_*.py` and `utils/sparse_data_formatter.py` do, and a
//!   row with a null in any column the seed keeps is dropped, as `prepare_multi_dataset_dict` drops it (so a
//!   DDSC row without a hard negative is dropped; an ETI split whose first row has no negative loses its
//!   `negative` column instead). The test split is filtered the same way (the seed leaves it unfiltered and
//!   unused).
//! - Where the seed shuffles (`Dataset.shuffle(seed=42)`: the `scandi_qa` training rows, the filtered `ddsc`
//!   rows) the order is NumPy's `default_rng(42).permutation(n)` ([`nprandom`]).
//! - Rows stream: each source is read once into a staging file of JSON lines whose offsets are kept (12 bytes a
//!   row), then each split is written by reading the staged rows in split order. No dataset is held in memory.
//! - The splits land as `train.jsonl`, `dev.jsonl` and `test.jsonl` (`anchor`, `positive`, `negative` keys) in
//!   `$SPLADE_CACHE/seed-data/<sha256>/`, the digest covering the loader's settings and every input file's path
//!   (hub cache paths name the commit), size and modification time. The folder is written under a temporary
//!   name and renamed into place, so a folder that exists is complete.
//! - Errors name the dataset block, the Hub dataset (config, split) or file, what was found and the key to set.
//!
//! Where the seed differs from its own intent, we follow the seed's rows but not two of its side effects, both
//! said in the README: a ScandiQA language that fails to load is an error here (the seed logs a warning and
//! skips it), and DDSC's `instruction`/`task`/`language` columns stay metadata (the seed's trainer passes every
//! column to the loss, so they became extra negatives there).

pub mod nprandom;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::spec::{DdscLoader, EtiLoader, NliLoader, OnBadRecord, ScandiQaLoader, SeedLoader};
use super::{DataError, DataFormat, DatasetSpec, HubPin};

/// The seed's shuffle seed (`shuffle(seed=42)` in both loaders that shuffle); not `training.seed`.
pub const SEED_SHUFFLE_SEED: u128 = 42;

/// Bumped when the materialised rows of the same inputs would change.
const FORMAT_VERSION: &str = "seed-data v1";

/// Where the Parquet files of a Hub dataset's split are (the hub cache, or a test folder).
pub trait SplitFiles: Send + Sync {
    /// The data files of split `split` of config `config` (`None`: the default config) of dataset `repo`, in
    /// the order `datasets` reads them (sorted), or `None` when the dataset has no such split. An error when the
    /// dataset or config is not available at all.
    fn split_files(&self, repo: &str, config: Option<&str>, split: &str) -> Result<Option<Vec<PathBuf>>, DataError>;

    /// The Hub commit the files of `repo` came from, once [`SplitFiles::split_files`] read it; `None` for files
    /// that are no Hub dataset (a folder).
    fn hub_pin(&self, _repo: &str) -> Option<HubPin> {
        None
    }
}

/// Records which datasets a block read through `inner`, so the block's Hub commits can be listed.
struct Recording<'a> {
    inner: &'a dyn SplitFiles,
    repos: std::sync::Mutex<Vec<String>>,
}

impl SplitFiles for Recording<'_> {
    fn split_files(&self, repo: &str, config: Option<&str>, split: &str) -> Result<Option<Vec<PathBuf>>, DataError> {
        let mut repos = self.repos.lock().expect("not poisoned");
        if !repos.iter().any(|r| r == repo) {
            repos.push(repo.to_string());
        }
        drop(repos);
        self.inner.split_files(repo, config, split)
    }
}

impl Recording<'_> {
    /// The Hub commits of the datasets read, in the order first read.
    fn pins(&self) -> Vec<HubPin> {
        self.repos.lock().expect("not poisoned").iter().filter_map(|r| self.inner.hub_pin(r)).collect()
    }
}

/// [`SplitFiles`] over a folder laid out as `<root>/<owner>/<name>/<config>/<split>/*.parquet` (config
/// `default` when none is named), like a dataset's `refs/convert/parquet` branch. For tests and for data
/// exported by hand.
#[derive(Debug, Clone)]
pub struct DirSplitFiles {
    /// The folder holding `<owner>/<name>/...`.
    pub root: PathBuf,
}

impl SplitFiles for DirSplitFiles {
    fn split_files(&self, repo: &str, config: Option<&str>, split: &str) -> Result<Option<Vec<PathBuf>>, DataError> {
        let repo_dir = self.root.join(repo);
        let config_dir = repo_dir.join(config.unwrap_or("default"));
        if !config_dir.is_dir() {
            return Err(DataError::Read {
                file: config_dir.display().to_string(),
                message: format!(
                    "dataset `{repo}`{} not found; export its Parquet files to {}/<split>/",
                    config.map(|c| format!(" config `{c}`")).unwrap_or_default(),
                    config_dir.display()
                ),
            });
        }
        let dir = config_dir.join(split);
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(None) };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        files.sort();
        Ok(if files.is_empty() { None } else { Some(files) })
    }
}

/// The files a seed loader block was materialised into.
#[derive(Debug, Clone, PartialEq)]
pub struct Materialized {
    /// `$SPLADE_CACHE/seed-data/<sha256>/`.
    pub dir: PathBuf,
    /// `train.jsonl`.
    pub train: PathBuf,
    /// `dev.jsonl` (the seed's `eval` split).
    pub dev: PathBuf,
    /// `test.jsonl`.
    pub test: PathBuf,
    /// Rows in train, dev, test.
    pub rows: [usize; 3],
    /// The Hub commit of every dataset the block read, in the order read (empty for folders).
    pub hub: Vec<HubPin>,
}

impl Materialized {
    /// A file block reading split `path` (one of [`Materialized::train`], `dev`, `test`): JSONL, role-named
    /// columns, nothing held out.
    pub fn file_spec(path: &Path) -> DatasetSpec {
        Self::file_spec_at(&path.display().to_string())
    }

    /// [`Materialized::file_spec`] for a split file at `location` (a local path or an object-store URL: a
    /// published copy, [`publish_seed_data`]).
    pub fn file_spec_at(location: &str) -> DatasetSpec {
        DatasetSpec {
            enabled: true,
            source: location.to_string(),
            config: None,
            split: None,
            format: Some(DataFormat::Jsonl),
            columns: indexmap::IndexMap::new(),
            split_ratio: 0.0,
            max_samples: None,
            on_bad_record: OnBadRecord::Error,
            loader: None,
            hub_commits: Default::default(),
        }
    }
}

/// `$SPLADE_CACHE`, else `$HOME/.cache/splade`.
pub fn cache_root() -> PathBuf {
    match std::env::var_os("SPLADE_CACHE").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/splade"),
    }
}

/// One staged row: whether every kept metadata column is non-null, and the three role columns (`negative`:
/// `None` when the source has no negative column, `Some(None)` for a null).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    extras_ok: bool,
    anchor: Option<String>,
    positive: Option<String>,
    negative: Option<Option<String>>,
}

/// Rows of every source, in the order read, as JSON lines in a file; a row is found again by its offset.
struct Stage {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    reader: Option<File>,
    offsets: Vec<(u64, u32)>,
    pos: u64,
}

impl Stage {
    fn create(path: PathBuf) -> Result<Stage, DataError> {
        let f = File::create(&path).map_err(|e| io_err(&path, e))?;
        Ok(Stage { path, writer: Some(BufWriter::new(f)), reader: None, offsets: Vec::new(), pos: 0 })
    }

    /// Stages `row`; returns its id.
    fn push(&mut self, row: &Row) -> Result<u64, DataError> {
        let mut items = vec![Value::Bool(row.extras_ok), opt(&row.anchor), opt(&row.positive)];
        if let Some(n) = &row.negative {
            items.push(opt(n));
        }
        let mut line = serde_json::to_vec(&Value::Array(items)).expect("JSON");
        line.push(b'\n');
        let w = self.writer.as_mut().expect("staging before reading");
        w.write_all(&line).map_err(|e| io_err(&self.path, e))?;
        self.offsets.push((self.pos, line.len() as u32));
        self.pos += line.len() as u64;
        Ok(self.offsets.len() as u64 - 1)
    }

    fn len(&self) -> u64 {
        self.offsets.len() as u64
    }

    fn get(&mut self, id: u64) -> Result<Row, DataError> {
        if let Some(w) = self.writer.take() {
            w.into_inner().map_err(|e| io_err(&self.path, e.into_error()))?;
            self.reader = Some(File::open(&self.path).map_err(|e| io_err(&self.path, e))?);
        }
        let (at, len) = self.offsets[id as usize];
        let r = self.reader.as_mut().expect("reader");
        let mut buf = vec![0u8; len as usize];
        r.seek(SeekFrom::Start(at)).and_then(|_| r.read_exact(&mut buf)).map_err(|e| io_err(&self.path, e))?;
        let v: Vec<Value> = serde_json::from_slice(&buf).expect("staged row");
        let s = |v: &Value| v.as_str().map(String::from);
        Ok(Row { extras_ok: v[0].as_bool().unwrap_or(false), anchor: s(&v[1]), positive: s(&v[2]), negative: v.get(3).map(s) })
    }
}

fn opt(v: &Option<String>) -> Value {
    v.as_ref().map(|s| Value::String(s.clone())).unwrap_or(Value::Null)
}

fn io_err(path: &Path, e: std::io::Error) -> DataError {
    DataError::Read { file: path.display().to_string(), message: format!("{e}; check the disk and the permissions of the seed-data cache") }
}

/// Where a staged source came from, for error messages.
struct Src<'a> {
    block: &'a str,
    repo: &'a str,
    config: Option<&'a str>,
    split: &'a str,
    /// What to do about a missing column.
    fix: &'a str,
}

impl Src<'_> {
    fn describe(&self) -> String {
        match self.config {
            Some(c) => format!("`{}` (config `{c}`, split `{}`)", self.repo, self.split),
            None => format!("`{}` (split `{}`)", self.repo, self.split),
        }
    }
}

/// Reads every row of `files` (one split) into `each`: the values of `want` (text or null), and whether every
/// other projected column is non-null. Projected columns: `want`, plus every other column except `drop` when
/// `extras` is true. `required` columns must exist besides `want`.
fn read_parquet(
    src: &Src,
    files: &[PathBuf],
    want: &[&str],
    required: &[&str],
    extras: Option<&[&str]>,
    mut each: impl FnMut(Vec<Option<String>>, bool) -> Result<(), DataError>,
) -> Result<(), DataError> {
    for path in files {
        let file_name = path.display().to_string();
        let read_err = |e: parquet::errors::ParquetError| DataError::Read {
            file: file_name.clone(),
            message: format!("not a readable Parquet file ({e}); delete it from the cache and download it again"),
        };
        let f = File::open(path).map_err(|e| io_err(path, e))?;
        let reader = SerializedFileReader::new(f).map_err(read_err)?;
        let schema = reader.metadata().file_metadata().schema_descr().root_schema().clone();
        let fields = schema.get_fields();
        let found: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        for need in want.iter().chain(required) {
            if !found.contains(need) {
                return Err(DataError::Columns {
                    dataset: src.block.into(),
                    problem: format!(
                        "{} has no column `{need}` (columns found: {}; in {}); {}",
                        src.describe(),
                        found.join(", "),
                        file_name,
                        src.fix
                    ),
                });
            }
        }
        let projected: Vec<_> = fields
            .iter()
            .filter(|f| want.contains(&f.name()) || extras.is_some_and(|drop| !drop.contains(&f.name())))
            .cloned()
            .collect();
        let projection = Type::group_type_builder(schema.name()).with_fields(projected).build().map_err(read_err)?;
        for (r, row) in reader.get_row_iter(Some(projection)).map_err(read_err)?.enumerate() {
            let row = row.map_err(read_err)?;
            let mut values = vec![None; want.len()];
            let mut extras_ok = true;
            for (name, value) in row.get_column_iter() {
                match want.iter().position(|w| w == name) {
                    Some(i) => {
                        values[i] = match value {
                            Field::Str(s) => Some(s.clone()),
                            Field::Null => None,
                            v => {
                                return Err(DataError::BadRecord {
                                    file: file_name.clone(),
                                    location: format!("row {r}, column `{name}`"),
                                    problem: format!("`{}` is not text", super::jsonl::snippet(&v.to_string())),
                                    fix: format!("the seed's `{}` loader reads `{name}` as text; {}", src.block, src.fix),
                                })
                            }
                        }
                    }
                    None => extras_ok &= !matches!(value, Field::Null),
                }
            }
            each(values, extras_ok)?;
        }
    }
    Ok(())
}

/// The files of a split that must exist.
fn required_split(files: &dyn SplitFiles, block: &str, repo: &str, config: Option<&str>, split: &str, fix: &str) -> Result<Vec<PathBuf>, DataError> {
    files.split_files(repo, config, split)?.ok_or_else(|| DataError::Columns {
        dataset: block.into(),
        problem: format!(
            "`{repo}`{} has no `{split}` split, which the seed's loader reads; {fix}",
            config.map(|c| format!(" (config `{c}`)")).unwrap_or_default()
        ),
    })
}

/// Every input of a block, resolved before anything is read (the cache key covers them).
struct Inputs {
    files: Vec<PathBuf>,
}

impl Inputs {
    fn add(&mut self, f: &[PathBuf]) -> Vec<PathBuf> {
        self.files.extend_from_slice(f);
        f.to_vec()
    }
}

/// The dataset ids the seed's loaders read (fixed in its code; `nli` and `eti` take `source`).
pub mod ids {
    /// `ltg/norquad`
    pub const NORQUAD: &str = "ltg/norquad";
    /// `ltg/noropenbookqa`, config `nb`
    pub const OPENBOOKQA: &str = "ltg/noropenbookqa";
    /// `alexandrainst/scandi-qa`, one config per language
    pub const SCANDIQA: &str = "alexandrainst/scandi-qa";
    /// `jealk/supervised-da`
    pub const SUPERVISED_DA: &str = "jealk/supervised-da";
    /// `DDSC/nordic-embedding-training-data`
    pub const DDSC: &str = "DDSC/nordic-embedding-training-data";
}

/// The splits as lists of staged row ids, in output order.
struct Splits {
    train: Vec<u64>,
    dev: Vec<u64>,
    test: Vec<u64>,
    /// ETI's rule: a split whose first row has a null negative drops the column.
    first_row_decides_negative: bool,
}

/// Stages one Parquet split with the given formatting; returns the ids in order.
fn stage_split(
    stage: &mut Stage,
    src: &Src,
    files: &[PathBuf],
    want: &[&str],
    required: &[&str],
    extras: Option<&[&str]>,
    format: impl Fn(&[Option<String>], bool) -> Option<Row>,
) -> Result<Vec<u64>, DataError> {
    let mut ids = Vec::new();
    read_parquet(src, files, want, required, extras, |values, extras_ok| {
        if let Some(row) = format(&values, extras_ok) {
            ids.push(stage.push(&row)?);
        }
        Ok(())
    })?;
    Ok(ids)
}

fn triplet(v: &[Option<String>], extras_ok: bool) -> Option<Row> {
    Some(Row { extras_ok, anchor: v[0].clone(), positive: v[1].clone(), negative: Some(v[2].clone()) })
}

fn pair(v: &[Option<String>], _: bool) -> Option<Row> {
    Some(Row { extras_ok: true, anchor: v[0].clone(), positive: v[1].clone(), negative: None })
}

/// Applies `default_rng(42).permutation(len)` to `ids` (what `Dataset.shuffle(seed=42)` does to its rows).
fn shuffled(ids: &[u64]) -> Vec<u64> {
    nprandom::permutation(SEED_SHUFFLE_SEED, ids.len()).into_iter().map(|p| ids[p as usize]).collect()
}

fn nli(block: &str, l: &NliLoader, files: &dyn SplitFiles, inputs: &mut Inputs) -> Result<Plan, DataError> {
    let fix = format!("set `datasets.{block}.source` to a dataset with `anchor`, `positive` and `negative` columns and train/dev/test splits");
    let mut parts = Vec::new();
    for split in ["train", "dev", "test"] {
        let f = required_split(files, block, &l.source, None, split, &fix)?;
        parts.push(inputs.add(&f));
    }
    let source = l.source.clone();
    let block = block.to_string();
    Ok(Box::new(move |stage: &mut Stage| {
        let mut out = Vec::new();
        for (split, f) in ["train", "dev", "test"].iter().zip(&parts) {
            let src = Src { block: &block, repo: &source, config: None, split, fix: &fix };
            // format_nli_for_sparse keeps every column, so a null anywhere drops the row.
            out.push(stage_split(stage, &src, f, &["anchor", "positive", "negative"], &[], Some(&[]), triplet)?);
        }
        let test = out.pop().unwrap();
        let dev = out.pop().unwrap();
        Ok(Splits { train: out.pop().unwrap(), dev, test, first_row_decides_negative: false })
    }))
}

fn eti(block: &str, l: &EtiLoader, files: &dyn SplitFiles, inputs: &mut Inputs) -> Result<Plan, DataError> {
    let fix = format!("set `datasets.{block}.source` to a dataset with `anchor` and `positive` columns");
    let [train, dev, test] = ["train", "dev", "test"].map(|s| files.split_files(&l.source, None, s));
    let (train, dev, test) = (train?, dev?, test?);
    let Some(train) = train else {
        return Err(DataError::Columns {
            dataset: block.into(),
            problem: format!("`{}` has no `train` split; the seed's ETI loader needs one; {fix}", l.source),
        });
    };
    let given = match (dev, test) {
        (Some(d), Some(t)) => Some((inputs.add(&d), inputs.add(&t))),
        _ => None,
    };
    let train = inputs.add(&train);
    let source = l.source.clone();
    let block = block.to_string();
    let ratio = l.split_ratio;
    Ok(Box::new(move |stage: &mut Stage| {
        // format_eti_for_sparse keeps anchor, positive and negative only; negative is optional.
        let read = |stage: &mut Stage, split: &str, f: &[PathBuf]| -> Result<Vec<u64>, DataError> {
            let src = Src { block: &block, repo: &source, config: None, split, fix: &fix };
            let has_negative = has_column(f, "negative")?;
            let want: &[&str] = if has_negative { &["anchor", "positive", "negative"] } else { &["anchor", "positive"] };
            stage_split(stage, &src, f, want, &[], None, if has_negative { triplet } else { pair })
        };
        let train_ids = read(stage, "train", &train)?;
        let (train, dev, test) = match &given {
            Some((d, t)) => (train_ids, read(stage, "dev", d)?, read(stage, "test", t)?),
            None => {
                let (a, b, _) = ratio.sizes(train_ids.len());
                (train_ids[..a].to_vec(), train_ids[a..a + b].to_vec(), train_ids[a + b..].to_vec())
            }
        };
        Ok(Splits { train, dev, test, first_row_decides_negative: true })
    }))
}

fn has_column(files: &[PathBuf], name: &str) -> Result<bool, DataError> {
    let Some(first) = files.first() else { return Ok(false) };
    let f = File::open(first).map_err(|e| io_err(first, e))?;
    let reader = SerializedFileReader::new(f).map_err(|e| DataError::Read {
        file: first.display().to_string(),
        message: format!("not a readable Parquet file ({e}); delete it from the cache and download it again"),
    })?;
    let found = reader.metadata().file_metadata().schema_descr().root_schema().get_fields().iter().any(|f| f.name() == name);
    Ok(found)
}

fn ddsc(block: &str, l: &DdscLoader, files: &dyn SplitFiles, inputs: &mut Inputs) -> Result<Plan, DataError> {
    let fix = format!(
        "the seed's DDSC loader reads `{}` with columns query, positive, negative, prompt, response (and language, task when it filters by them); check the cached files or set `datasets.{block}.enabled: false`",
        ids::DDSC
    );
    let f = required_split(files, block, ids::DDSC, None, "train", &fix)?;
    let f = inputs.add(&f);
    // As the seed: the language filter applies only to a non-empty list of fewer than three.
    let languages = (!l.languages.is_empty() && l.languages.len() < 3).then(|| l.languages.clone());
    let tasks = l.tasks.clone().filter(|t| !t.is_empty());
    let ratio = l.split_ratio;
    let block = block.to_string();
    Ok(Box::new(move |stage: &mut Stage| {
        let src = Src { block: &block, repo: ids::DDSC, config: None, split: "train", fix: &fix };
        let mut want = vec!["query", "positive", "negative"];
        if languages.is_some() {
            want.push("language");
        }
        if tasks.is_some() {
            want.push("task");
        }
        let (lang_at, task_at) = (want.iter().position(|c| *c == "language"), want.iter().position(|c| *c == "task"));
        let keep = |v: &Option<String>, list: &Option<Vec<String>>| match list {
            None => true,
            Some(list) => v.as_ref().is_some_and(|v| list.contains(v)),
        };
        let ids = stage_split(stage, &src, &f, &want, &["prompt", "response"], Some(&["prompt", "response"]), |v, ok| {
            let lang_ok = lang_at.is_none_or(|i| keep(&v[i], &languages));
            let task_ok = task_at.is_none_or(|i| keep(&v[i], &tasks));
            // A null language or task in a filtered column is dropped by the filter; unfiltered it is an extra.
            (lang_ok && task_ok).then(|| Row { extras_ok: ok, anchor: v[0].clone(), positive: v[1].clone(), negative: Some(v[2].clone()) })
        })?;
        let ids = shuffled(&ids);
        let (a, b, _) = ratio.sizes(ids.len());
        Ok(Splits { train: ids[..a].to_vec(), dev: ids[a..a + b].to_vec(), test: ids[a + b..].to_vec(), first_row_decides_negative: false })
    }))
}

/// The PAWS-X files of `paws_data_dir` (`nb/translated_{train,dev_2k,test_2k}.json`).
fn paws_files(block: &str, dir: &str) -> Result<[PathBuf; 3], DataError> {
    let base = Path::new(dir).join("nb");
    let files = ["translated_train.json", "translated_dev_2k.json", "translated_test_2k.json"].map(|f| base.join(f));
    for f in &files {
        if !f.is_file() {
            return Err(DataError::Columns {
                dataset: block.into(),
                problem: format!(
                    "PAWS-X file {} not found; extract `norwegian-x-final.tar.gz` of the Hub dataset NbAiLab/norwegian-paws-x so that `{dir}/nb/` holds it (the seed's data_loader_paws.py does), set `datasets.{block}.paws_data_dir`, or set `datasets.{block}.use_paws: false`",
                    f.display()
                ),
            });
        }
    }
    Ok(files)
}

/// Stages the paraphrase pairs (`label == 1`) of one PAWS-X JSON-lines file.
fn stage_paws(stage: &mut Stage, block: &str, path: &Path) -> Result<Vec<u64>, DataError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut ids = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| io_err(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| DataError::BadRecord {
            file: path.display().to_string(),
            location: format!("line {}", i + 1),
            problem,
            fix: format!("fix the line, or set `datasets.{block}.use_paws: false`"),
        };
        let v: Value = serde_json::from_str(line.trim()).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let Some(label) = v.get("label") else { return Err(bad("no `label`".into())) };
        // Python's `x['label'] == 1`: true for 1, 1.0 and True.
        let is_one = label.as_f64() == Some(1.0) || *label == Value::Bool(true);
        if !is_one {
            continue;
        }
        let text = |k: &str| -> Result<Option<String>, DataError> {
            match v.get(k) {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Null) => Ok(None),
                Some(other) => Err(bad(format!("`{k}` is `{}`, not text", super::jsonl::snippet(&other.to_string())))),
                None => Err(bad(format!("no `{k}`"))),
            }
        };
        let row = Row { extras_ok: true, anchor: text("sentence1")?, positive: text("sentence2")?, negative: None };
        ids.push(stage.push(&row)?);
    }
    Ok(ids)
}

fn scandi_qa(block_name: &str, l: &ScandiQaLoader, files: &dyn SplitFiles, inputs: &mut Inputs) -> Result<Plan, DataError> {
    let block = block_name.to_string();
    let fix = {
        let block = block.clone();
        move |key: &str| format!("set `datasets.{block}.{key}: false` to leave this source out")
    };
    let block = block.as_str();
    let mut norquad = None;
    if l.use_norquad {
        let f = ["train", "validation", "test"].map(|s| required_split(files, block, ids::NORQUAD, None, s, &fix("use_norquad")));
        let [a, b, c] = f;
        norquad = Some([inputs.add(&a?), inputs.add(&b?), inputs.add(&c?)]);
    }
    let mut openbook = None;
    if l.use_openbookqa {
        let a = required_split(files, block, ids::OPENBOOKQA, Some("nb"), "train", &fix("use_openbookqa"))?;
        let b = required_split(files, block, ids::OPENBOOKQA, Some("nb"), "test", &fix("use_openbookqa"))?;
        openbook = Some([inputs.add(&a), inputs.add(&b)]);
    }
    let mut scandi = Vec::new();
    if l.use_scandiqa {
        for lang in &l.scandiqa_languages {
            let fx = format!("set `datasets.{block}.scandiqa_languages` to the configs you have, or `use_scandiqa: false`");
            let a = required_split(files, block, ids::SCANDIQA, Some(lang), "train", &fx)?;
            let b = required_split(files, block, ids::SCANDIQA, Some(lang), "test", &fx)?;
            scandi.push((lang.clone(), [inputs.add(&a), inputs.add(&b)]));
        }
    }
    let mut supervised = None;
    if l.use_supervised_da {
        let a = required_split(files, block, ids::SUPERVISED_DA, None, "train", &fix("use_supervised_da"))?;
        supervised = Some(inputs.add(&a));
    }
    let mut paws = None;
    if l.use_paws {
        let p = paws_files(block, &l.paws_data_dir)?;
        inputs.add(&p);
        paws = Some(p);
    }
    let block = block_name.to_string();
    Ok(Box::new(move |stage: &mut Stage| {
        let (mut train, mut dev, mut test) = (Vec::new(), Vec::new(), Vec::new());
        if let Some([a, b, c]) = &norquad {
            let fx = fix("use_norquad");
            for (split, f, out) in [("train", a, &mut train), ("validation", b, &mut dev), ("test", c, &mut test)] {
                let src = Src { block: &block, repo: ids::NORQUAD, config: None, split, fix: &fx };
                out.extend(stage_split(stage, &src, f, &["question", "context"], &[], None, pair)?);
            }
        }
        if let Some([a, b]) = &openbook {
            let fx = fix("use_openbookqa");
            // positive: `fact` when it is truthy (not null, not empty), else the question stem.
            let fmt = |v: &[Option<String>], _: bool| {
                let fact = v[1].clone().filter(|f| !f.is_empty());
                Some(Row { extras_ok: true, anchor: v[0].clone(), positive: fact.or_else(|| v[0].clone()), negative: None })
            };
            let src = Src { block: &block, repo: ids::OPENBOOKQA, config: Some("nb"), split: "train", fix: &fx };
            train.extend(stage_split(stage, &src, a, &["question_stem", "fact"], &[], None, fmt)?);
            let src = Src { block: &block, repo: ids::OPENBOOKQA, config: Some("nb"), split: "test", fix: &fx };
            let t = stage_split(stage, &src, b, &["question_stem", "fact"], &[], None, fmt)?;
            let half = t.len() / 2;
            dev.extend_from_slice(&t[..half]);
            test.extend_from_slice(&t[half..]);
        }
        for (lang, [a, b]) in &scandi {
            let fx = format!("set `datasets.{block}.scandiqa_languages` without `{lang}`, or `use_scandiqa: false`");
            let src = Src { block: &block, repo: ids::SCANDIQA, config: Some(lang), split: "train", fix: &fx };
            let t = stage_split(stage, &src, a, &["question", "context"], &[], None, pair)?;
            let n = (0.9 * t.len() as f64) as usize;
            train.extend_from_slice(&t[..n]);
            dev.extend_from_slice(&t[n..]);
            let src = Src { block: &block, repo: ids::SCANDIQA, config: Some(lang), split: "test", fix: &fx };
            test.extend(stage_split(stage, &src, b, &["question", "context"], &[], None, pair)?);
        }
        if let Some(a) = &supervised {
            let fx = fix("use_supervised_da");
            let src = Src { block: &block, repo: ids::SUPERVISED_DA, config: None, split: "train", fix: &fx };
            let t = stage_split(stage, &src, a, &["query", "pos"], &[], None, pair)?;
            let (n_train, n_dev) = ((0.8 * t.len() as f64) as usize, (0.1 * t.len() as f64) as usize);
            train.extend_from_slice(&t[..n_train]);
            dev.extend_from_slice(&t[n_train..n_train + n_dev]);
            test.extend_from_slice(&t[n_train + n_dev..]);
        }
        if let Some([a, b, c]) = &paws {
            train.extend(stage_paws(stage, &block, a)?);
            dev.extend(stage_paws(stage, &block, b)?);
            test.extend(stage_paws(stage, &block, c)?);
        }
        Ok(Splits { train: shuffled(&train), dev, test, first_row_decides_negative: false })
    }))
}

/// What builds a block's splits once its inputs are known.
type Plan = Box<dyn FnOnce(&mut Stage) -> Result<Splits, DataError>>;

/// Writes one split as JSON lines, dropping rows as `prepare_multi_dataset_dict` does; returns the row count.
fn write_split(stage: &mut Stage, ids: &[u64], path: &Path, first_row_decides_negative: bool) -> Result<usize, DataError> {
    let drop_negative = first_row_decides_negative
        && match ids.first() {
            Some(&id) => matches!(stage.get(id)?.negative, Some(None)),
            None => false,
        };
    let f = File::create(path).map_err(|e| io_err(path, e))?;
    let mut w = BufWriter::new(f);
    let mut n = 0;
    for &id in ids {
        let row = stage.get(id)?;
        let negative = if drop_negative { None } else { row.negative };
        let (Some(anchor), Some(positive)) = (row.anchor, row.positive) else { continue };
        if !row.extras_ok || matches!(negative, Some(None)) {
            continue;
        }
        let mut obj = serde_json::Map::new();
        obj.insert("anchor".into(), Value::String(anchor));
        obj.insert("positive".into(), Value::String(positive));
        if let Some(Some(neg)) = negative {
            obj.insert("negative".into(), Value::String(neg));
        }
        let mut line = serde_json::to_vec(&Value::Object(obj)).expect("JSON");
        line.push(b'\n');
        w.write_all(&line).map_err(|e| io_err(path, e))?;
        n += 1;
    }
    w.into_inner().map_err(|e| io_err(path, e.into_error()))?.sync_all().map_err(|e| io_err(path, e))?;
    Ok(n)
}

/// Every file seed loader block `name` reads (Hub split files and PAWS-X files), found without reading them:
/// what a start-up check lists. Errors as [`materialize`]'s for a missing dataset, split or folder.
pub fn input_files(name: &str, loader: &SeedLoader, files: &dyn SplitFiles) -> Result<Vec<PathBuf>, DataError> {
    let mut inputs = Inputs { files: Vec::new() };
    match loader {
        SeedLoader::Nli(l) => drop(nli(name, l, files, &mut inputs)?),
        SeedLoader::ScandiQa(l) => drop(scandi_qa(name, l, files, &mut inputs)?),
        SeedLoader::Ddsc(l) => drop(ddsc(name, l, files, &mut inputs)?),
        SeedLoader::Eti(l) => drop(eti(name, l, files, &mut inputs)?),
    }
    Ok(inputs.files)
}

/// [`materialize`] for a command that may lack the Hub: `seed_files` is `None` where only file blocks can be
/// read, and a loader block is then an error naming the dataset.
pub fn materialize_block(
    name: &str,
    loader: &SeedLoader,
    seed_files: Option<(&dyn SplitFiles, &Path)>,
) -> Result<Materialized, DataError> {
    let (files, cache) = seed_files.ok_or_else(|| DataError::Columns {
        dataset: name.into(),
        problem: "a seed loader block needs the Hugging Face hub; this command reads file blocks only".into(),
    })?;
    materialize(name, loader, files, cache)
}

/// Materialises seed loader block `name` into `<cache_root>/seed-data/<sha256>/`, or finds it there already.
pub fn materialize(name: &str, loader: &SeedLoader, files: &dyn SplitFiles, cache_root: &Path) -> Result<Materialized, DataError> {
    let mut inputs = Inputs { files: Vec::new() };
    let recording = Recording { inner: files, repos: Default::default() };
    let files: &dyn SplitFiles = &recording;
    let plan = match loader {
        SeedLoader::Nli(l) => nli(name, l, files, &mut inputs)?,
        SeedLoader::ScandiQa(l) => scandi_qa(name, l, files, &mut inputs)?,
        SeedLoader::Ddsc(l) => ddsc(name, l, files, &mut inputs)?,
        SeedLoader::Eti(l) => eti(name, l, files, &mut inputs)?,
    };
    let mut h = Sha256::new();
    h.update(FORMAT_VERSION.as_bytes());
    h.update(serde_json::to_vec(loader).expect("JSON"));
    for f in &inputs.files {
        let meta = std::fs::metadata(f).map_err(|e| io_err(f, e))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
        let abs = std::path::absolute(f).unwrap_or_else(|_| f.clone());
        h.update(format!("\n{}\t{}\t{}", abs.display(), meta.len(), mtime).as_bytes());
    }
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let parent = cache_root.join("seed-data");
    let dir = parent.join(&digest);
    let names = |d: &Path| (d.join("train.jsonl"), d.join("dev.jsonl"), d.join("test.jsonl"));
    if let Some(m) = read_meta(&dir)? {
        return Ok(m);
    }
    std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, e))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = parent.join(format!(".{digest}.tmp-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    let result = (|| {
        let mut stage = Stage::create(tmp.join("staged.jsonl"))?;
        let splits = plan(&mut stage)?;
        tracing::debug!(dataset = name, staged = stage.len(), "seed loader rows staged");
        let (train, dev, test) = names(&tmp);
        let rows = [
            write_split(&mut stage, &splits.train, &train, splits.first_row_decides_negative)?,
            write_split(&mut stage, &splits.dev, &dev, splits.first_row_decides_negative)?,
            write_split(&mut stage, &splits.test, &test, splits.first_row_decides_negative)?,
        ];
        drop(stage);
        std::fs::remove_file(tmp.join("staged.jsonl")).map_err(|e| io_err(&tmp, e))?;
        let meta = serde_json::json!({ "dataset": name, "loader": loader, "rows": rows,
            "inputs": inputs.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(), "hub": recording.pins() });
        std::fs::write(tmp.join("meta.json"), serde_json::to_vec_pretty(&meta).expect("JSON")).map_err(|e| io_err(&tmp, e))?;
        Ok::<_, DataError>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process may have written the same folder meanwhile; it holds the same rows.
        if read_meta(&dir)?.is_none() {
            return Err(io_err(&dir, e));
        }
    }
    read_meta(&dir)?.ok_or_else(|| io_err(&dir, std::io::Error::other("seed-data folder vanished after writing")))
}

fn read_meta(dir: &Path) -> Result<Option<Materialized>, DataError> {
    let meta_path = dir.join("meta.json");
    let Ok(bytes) = std::fs::read(&meta_path) else { return Ok(None) };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| DataError::Read {
        file: meta_path.display().to_string(),
        message: format!("unreadable ({e}); delete {} and run again", dir.display()),
    })?;
    let rows = v["rows"].as_array().filter(|r| r.len() == 3).ok_or_else(|| DataError::Read {
        file: meta_path.display().to_string(),
        message: format!("no row counts; delete {} and run again", dir.display()),
    })?;
    let n = |i: usize| rows[i].as_u64().unwrap_or(0) as usize;
    // The digest covers the input paths, which name the commits, so the recorded pins are this folder's.
    let hub = v.get("hub").and_then(|h| serde_json::from_value(h.clone()).ok()).unwrap_or_default();
    Ok(Some(Materialized {
        dir: dir.to_path_buf(),
        train: dir.join("train.jsonl"),
        dev: dir.join("dev.jsonl"),
        test: dir.join("test.jsonl"),
        rows: [n(0), n(1), n(2)],
        hub,
    }))
}

/// The Hub datasets of seed loader blocks: [`crate::hub::Hub::from_env`] (the standard Hugging Face hub
/// cache, `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`), each dataset named in `pins`
/// (repo id → commit: what a resume reads) at that commit, the others at `main`.
pub fn hub_split_files(pins: std::collections::BTreeMap<String, String>) -> Result<Box<dyn SplitFiles>, DataError> {
    Ok(Box::new(HubSplitFiles::new(crate::hub::Hub::from_env()).with_pins(pins)))
}

/// A dataset's splits as `datasets.load_dataset(repo, config)` resolves them (data files, else the
/// `refs/convert/parquet` conversion), downloaded into the hub cache unless offline. Each dataset is resolved
/// to a commit once, so every split of it comes from the same commit ([`SplitFiles::hub_pin`]) even if its
/// branch moves meanwhile.
pub struct HubSplitFiles {
    hub: crate::hub::Hub,
    pins: std::collections::BTreeMap<String, String>,
    resolved: std::sync::Mutex<std::collections::BTreeMap<String, (crate::hub::HubRepo, Option<HubPin>)>>,
}

impl HubSplitFiles {
    /// Every dataset at `main`.
    pub fn new(hub: crate::hub::Hub) -> HubSplitFiles {
        HubSplitFiles { hub, pins: Default::default(), resolved: Default::default() }
    }

    /// The datasets named in `pins` (repo id → commit) at that commit. Offline, a commit missing from the cache
    /// is an error naming the dataset, the commit and the cache.
    pub fn with_pins(mut self, pins: std::collections::BTreeMap<String, String>) -> HubSplitFiles {
        self.pins = pins;
        self
    }
}

impl SplitFiles for HubSplitFiles {
    fn split_files(&self, repo: &str, config: Option<&str>, split: &str) -> Result<Option<Vec<PathBuf>>, DataError> {
        let hub_err = |source| DataError::Hub { dataset: repo.to_string(), source };
        let mut resolved = self.resolved.lock().expect("not poisoned");
        if !resolved.contains_key(repo) {
            let r = self.hub.dataset(repo, self.pins.get(repo).map(String::as_str)).map_err(hub_err)?;
            resolved.insert(repo.to_string(), (r, None));
        }
        let (r, pin) = resolved.get_mut(repo).expect("inserted above");
        if !r.splits(config).map_err(hub_err)?.iter().any(|s| s == split) {
            return Ok(None);
        }
        // The repo the files come from: the dataset's, or its `refs/convert/parquet` conversion's.
        let (from, names) = r.resolved_split(config, split).map_err(hub_err)?;
        let files = names.iter().map(|n| from.get(n)).collect::<Result<Vec<_>, _>>().map_err(hub_err)?;
        if pin.is_none() {
            tracing::info!(repo_id = repo, revision = from.revision, commit = from.commit, "Hub dataset of a seed loader resolved");
            *pin = Some(HubPin { repo_id: repo.to_string(), revision: from.revision.clone(), commit: from.commit.clone() });
        }
        Ok(Some(files))
    }

    fn hub_pin(&self, repo: &str) -> Option<HubPin> {
        self.resolved.lock().expect("not poisoned").get(repo).and_then(|(_, p)| p.clone())
    }
}

/// Publishes the materialised seed-data files a data plan points at to `<output>/seed-data/<digest>/` and points
/// the plan there, so cluster workers on other machines read them from the store (they have neither the
/// coordinator's `$SPLADE_CACHE` nor need the Hub). Files under `<cache_root>/seed-data/` are copied (a copy of
/// the same size already there is kept: the folders are content-addressed); every other file is left as it is.
/// Both the training rows ([`crate::data::RecordIndex::files`]) and the dev split
/// ([`crate::data::RecordIndex::dev`]) are published. Errors name the file or the store location.
pub async fn publish_seed_data(
    datasets: &mut [crate::data::RecordIndex],
    output: &crate::store::Location,
    cache_root: &Path,
) -> Result<(), DataError> {
    for index in datasets.iter_mut() {
        for f in index.files.iter_mut() {
            if let Some((url, meta)) = publish_seed_file(&f.url, output, cache_root).await? {
                // The published copy is what workers read: its fingerprint (an object store's ETag) is the one
                // their ranged reads check, not the local file's.
                *f = crate::data::IndexedFile::from_meta(url, f.format, &meta);
            }
        }
        if let Some(dev) = index.dev.as_mut() {
            if let Some((url, _)) = publish_seed_file(dev, output, cache_root).await? {
                *dev = url;
            }
        }
    }
    Ok(())
}

/// Copies one materialised seed-data file (a path under `cache_root/seed-data`) to the same relative key under
/// `output` unless a copy of its size is there, and returns the copy's URL and metadata; `None` for any other URL.
async fn publish_seed_file(
    url: &str,
    output: &crate::store::Location,
    cache_root: &Path,
) -> Result<Option<(String, object_store::ObjectMeta)>, DataError> {
    let root = std::path::absolute(cache_root.join("seed-data")).unwrap_or_else(|_| cache_root.join("seed-data"));
    let path = PathBuf::from(url);
    let seed_data = cache_root.join("seed-data");
    let Ok(rel) = path.strip_prefix(&root).or_else(|_| path.strip_prefix(&seed_data)) else { return Ok(None) };
    let rel = format!("seed-data/{}", rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/"));
    let key = output.child(&rel);
    let store_err = |source| crate::store::StoreError::ObjectStore { location: output.url_of(&rel), source };
    let size = std::fs::metadata(&path).map_err(|e| io_err(&path, e))?.len();
    let meta = match output.store().head(&key).await {
        Ok(m) if m.size == size => m,
        _ => {
            let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
            output.store().put(&key, bytes.into()).await.map_err(store_err)?;
            tracing::info!(file = %path.display(), published = output.url_of(&rel), "seed-data file published for the workers");
            output.store().head(&key).await.map_err(store_err)?
        }
    };
    Ok(Some((output.url_of(&rel), meta)))
}
