//! Retrieval tasks: corpus, queries and relevance judgements, read from the BEIR layout or from the
//! MTEB/NanoBEIR Parquet layout, through a small [`TaskFiles`] trait so any storage can serve them.
//!
//! Layouts:
//! - **BEIR**: `corpus.jsonl[.gz]` (`_id`, `title`, `text`), `queries.jsonl[.gz]` (`_id`, `text`),
//!   `qrels/<split>.tsv` with a header line `query-id corpus-id score` (tab separated).
//! - **Parquet** (Hugging Face exports of NanoBEIR and MTEB datasets): tables `corpus`, `queries` and
//!   `qrels`, each either one file (`corpus.parquet`) or a directory of shards (`corpus/train-00000-of-00001.parquet`).
//!   The qrels split is the shard name before `-NNNNN-of-NNNNN` (`qrels/dev-00000-of-00001.parquet` → `dev`,
//!   `qrels/test.parquet` → `test`); a single `qrels.parquet` is split `default`. MTEB names the qrels table
//!   `default`, so a `default/` directory is read as qrels when `qrels` is absent. NanoBEIR qrels have no
//!   `score` column: every row is relevant with grade 1.
//!
//! Text fed to the encoder (see [`Doc::text`]): `title + " " + text`, stripped, which is what
//! sentence-transformers' documentation feeds its `InformationRetrievalEvaluator` for BEIR/MTEB corpora
//! (`(x["title"] + " " + x["text"]).strip()`); with an empty or missing title that is just `text`, so
//! NanoBEIR (no title column) gets exactly the text its `NanoBEIREvaluator` encodes. Like that evaluator,
//! documents and queries whose text is empty are dropped (counted in [`Task::warnings`]), and only queries
//! with at least one relevant document are evaluated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::EvalError;

/// Read-only access to the files of one task directory, by `/`-separated paths relative to its root.
/// The local implementation is [`LocalDir`]; an object-store implementation only needs these two calls.
pub trait TaskFiles: Send + Sync {
    /// Every file below the root, recursively, as relative `/`-separated paths (any order).
    fn list(&self) -> Result<Vec<String>, EvalError>;
    /// The whole content of one file.
    fn read(&self, rel: &str) -> Result<Vec<u8>, EvalError>;
    /// How errors name the root (a path or URL).
    fn describe(&self) -> String;
}

/// A task directory on the local file system.
#[derive(Clone, Debug)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// Wraps `root`; nothing is read until [`TaskFiles::list`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl TaskFiles for LocalDir {
    fn list(&self) -> Result<Vec<String>, EvalError> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), EvalError> {
            let entries = std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| EvalError::io(dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let rel = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                let ty = entry
                    .file_type()
                    .map_err(|e| EvalError::io(entry.path(), e))?;
                if ty.is_dir() || (ty.is_symlink() && entry.path().is_dir()) {
                    walk(&entry.path(), &rel, out)?;
                } else {
                    out.push(rel);
                }
            }
            Ok(())
        }
        if !self.root.is_dir() {
            return Err(EvalError::Task(format!(
                "task directory {} does not exist or is not a directory",
                self.root.display()
            )));
        }
        let mut out = Vec::new();
        walk(&self.root, "", &mut out)?;
        Ok(out)
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>, EvalError> {
        let p = self.root.join(rel);
        std::fs::read(&p).map_err(|e| EvalError::io(&p, e))
    }

    fn describe(&self) -> String {
        // Canonical where possible, so `.` or `data/norquad/` still name the task by its directory.
        std::fs::canonicalize(&self.root)
            .unwrap_or_else(|_| self.root.clone())
            .display()
            .to_string()
    }
}

/// One corpus entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    /// The corpus id (`_id`), unique within the task.
    pub id: String,
    /// The title, empty when absent.
    pub title: String,
    /// The body text.
    pub body: String,
}

impl Doc {
    /// The text to encode: `title + " " + body`, stripped; just the body when the title is empty.
    pub fn text(&self) -> String {
        if self.title.is_empty() {
            self.body.trim().to_string()
        } else {
            format!("{} {}", self.title, self.body).trim().to_string()
        }
    }
}

/// One evaluated query (only queries with at least one relevant document are kept).
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The query id (`_id`).
    pub id: String,
    /// The text to encode.
    pub text: String,
}

/// Relevance judgements: query id → corpus id → grade. Grades ≤ 0 are kept (they are judged non-relevant,
/// as pytrec_eval treats them) but never count as relevant.
pub type Qrels = BTreeMap<String, BTreeMap<String, i32>>;

/// A loaded retrieval task for one split.
#[derive(Clone, Debug)]
pub struct Task {
    /// The task's name (the directory's last component unless the caller overrides it).
    pub name: String,
    /// The split the qrels came from.
    pub split: String,
    /// Corpus in file order, empty-text documents dropped.
    pub corpus: Vec<Doc>,
    /// Queries that have at least one relevant document in the split, in file order.
    pub queries: Vec<Query>,
    /// Judgements of the evaluated queries (may name documents that are not in the corpus; see `warnings`).
    pub qrels: Qrels,
    /// Human-readable counted warnings (documents missing from the corpus, dropped empty texts, …).
    pub warnings: Vec<String>,
}

impl Task {
    /// Loads a task from `files`. `split`: `None` takes the only split present and errors when there are
    /// several, listing them. `name`: the task name; `None` uses the last component of `files.describe()`.
    pub fn load(
        files: &dyn TaskFiles,
        split: Option<&str>,
        name: Option<&str>,
    ) -> Result<Task, EvalError> {
        let listing = files.list()?;
        let set: BTreeSet<&str> = listing.iter().map(String::as_str).collect();
        let root = files.describe();
        let name = name.map(str::to_string).unwrap_or_else(|| {
            root.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("task")
                .to_string()
        });
        let beir_corpus = ["corpus.jsonl", "corpus.jsonl.gz"]
            .into_iter()
            .find(|f| set.contains(f));
        let raw = if let Some(corpus_file) = beir_corpus {
            read_beir(files, &set, corpus_file, split)?
        } else if set.iter().any(|f| f.ends_with(".parquet")) {
            read_parquet_layout(files, &listing, split)?
        } else {
            return Err(EvalError::Task(format!(
                "{root}: no corpus found; expected BEIR files (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv) \
                 or Parquet tables (corpus.parquet or corpus/*.parquet, queries…, qrels…)"
            )));
        };
        finish(root, name, raw)
    }
}

/// What a layout reader produces before the checks shared by all layouts.
struct RawTask {
    split: String,
    corpus: Vec<Doc>,
    corpus_file: String,
    queries: Vec<Query>,
    queries_file: String,
    /// (query id, corpus id, grade, "file:line" for errors)
    qrels: Vec<(String, String, i32, String)>,
}

fn finish(root: String, name: String, raw: RawTask) -> Result<Task, EvalError> {
    let mut warnings = Vec::new();
    // Duplicate ids are an error, never a silent overwrite: which text would be scored is undefined.
    let mut doc_ids: HashMap<&str, usize> = HashMap::with_capacity(raw.corpus.len());
    for (i, d) in raw.corpus.iter().enumerate() {
        if let Some(prev) = doc_ids.insert(&d.id, i) {
            return Err(EvalError::Task(format!(
                "{root}/{}: duplicate corpus _id '{}' (records {} and {}); ids must be unique",
                raw.corpus_file,
                d.id,
                prev + 1,
                i + 1
            )));
        }
    }
    let mut query_ids: HashMap<&str, usize> = HashMap::with_capacity(raw.queries.len());
    for (i, q) in raw.queries.iter().enumerate() {
        if let Some(prev) = query_ids.insert(&q.id, i) {
            return Err(EvalError::Task(format!(
                "{root}/{}: duplicate query _id '{}' (records {} and {}); ids must be unique",
                raw.queries_file,
                q.id,
                prev + 1,
                i + 1
            )));
        }
    }
    let empty_docs: BTreeSet<String> = raw
        .corpus
        .iter()
        .filter(|d| d.text().is_empty())
        .map(|d| d.id.clone())
        .collect();
    let empty_queries: BTreeSet<String> = raw
        .queries
        .iter()
        .filter(|q| q.text.trim().is_empty())
        .map(|q| q.id.clone())
        .collect();

    let mut qrels: Qrels = BTreeMap::new();
    let mut missing_docs = 0usize;
    let mut missing_example = None;
    let mut dropped_qrels_empty_query = 0usize;
    let mut repeated_rows = 0usize;
    for (qid, did, grade, at) in &raw.qrels {
        if !query_ids.contains_key(qid.as_str()) {
            return Err(EvalError::Task(format!(
                "{root}/{at}: query-id '{qid}' is not in {}; the qrels and queries files do not belong together",
                raw.queries_file
            )));
        }
        if empty_queries.contains(qid.as_str()) {
            dropped_qrels_empty_query += 1;
            continue;
        }
        if !doc_ids.contains_key(did.as_str()) || empty_docs.contains(did.as_str()) {
            missing_docs += 1;
            missing_example.get_or_insert_with(|| format!("{at}: '{did}'"));
        }
        let per_query = qrels.entry(qid.clone()).or_default();
        match per_query.insert(did.clone(), *grade) {
            // Some public qrels repeat a row verbatim; harmless, but counted.
            Some(prev) if prev == *grade => repeated_rows += 1,
            Some(prev) => {
                return Err(EvalError::Task(format!(
                    "{root}/{at}: query '{qid}' and document '{did}' judged again with score {grade} (earlier \
                     {prev}); keep one judgement per pair"
                )))
            }
            None => {}
        }
    }
    if missing_docs > 0 {
        warnings.push(format!(
            "{missing_docs} qrels rows name documents missing from the corpus (first at {}); they still count as \
             relevant (recall and nDCG denominators), as in sentence-transformers and pytrec_eval",
            missing_example.unwrap_or_default()
        ));
    }
    if repeated_rows > 0 {
        warnings.push(format!("{repeated_rows} repeated qrels rows ignored"));
    }
    if !empty_docs.is_empty() {
        warnings.push(format!(
            "{} corpus documents with empty text dropped",
            empty_docs.len()
        ));
    }
    if !empty_queries.is_empty() {
        warnings.push(format!(
            "{} queries with empty text dropped ({dropped_qrels_empty_query} qrels rows with them)",
            empty_queries.len()
        ));
    }
    drop(doc_ids);
    drop(query_ids);
    let corpus: Vec<Doc> = raw
        .corpus
        .into_iter()
        .filter(|d| !empty_docs.contains(d.id.as_str()))
        .collect();
    if corpus.is_empty() {
        return Err(EvalError::Task(format!(
            "{root}/{}: the corpus is empty (no document with non-empty text)",
            raw.corpus_file
        )));
    }
    let n_queries = raw.queries.len();
    let queries: Vec<Query> = raw
        .queries
        .into_iter()
        .filter(|q| qrels.get(&q.id).is_some_and(|m| m.values().any(|&g| g > 0)))
        .collect();
    let unjudged = n_queries - empty_queries.len() - queries.len();
    if unjudged > 0 {
        warnings.push(format!(
            "{unjudged} queries have no relevant document in split '{}' and are not evaluated",
            raw.split
        ));
    }
    if queries.is_empty() {
        return Err(EvalError::Task(format!(
            "{root}: no query of {} has a relevant document (grade > 0) in split '{}'",
            raw.queries_file, raw.split
        )));
    }
    let kept: BTreeSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    qrels.retain(|qid, _| kept.contains(qid.as_str()));
    Ok(Task {
        name,
        split: raw.split,
        corpus,
        queries,
        qrels,
        warnings,
    })
}

fn pick_split(
    root_hint: &str,
    mut splits: Vec<String>,
    wanted: Option<&str>,
) -> Result<String, EvalError> {
    splits.sort();
    splits.dedup();
    match wanted {
        Some(s) if splits.iter().any(|x| x == s) => Ok(s.to_string()),
        Some(s) => Err(EvalError::Task(format!(
            "{root_hint}: split '{s}' not found; available splits: {}",
            if splits.is_empty() {
                "none".to_string()
            } else {
                splits.join(", ")
            }
        ))),
        None if splits.len() == 1 => Ok(splits.remove(0)),
        None if splits.is_empty() => Err(EvalError::Task(format!(
            "{root_hint}: no qrels split found"
        ))),
        None => Err(EvalError::Task(format!(
            "{root_hint}: several splits ({}); choose one with --split",
            splits.join(", ")
        ))),
    }
}

fn decompress_if_gz(name: &str, bytes: Vec<u8>) -> Result<Vec<u8>, EvalError> {
    if !name.ends_with(".gz") {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .map_err(|e| EvalError::Task(format!("{name}: not a valid gzip file: {e}")))?;
    Ok(out)
}

#[derive(Deserialize)]
struct JsonRecord {
    #[serde(rename = "_id")]
    id: serde_json::Value,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

fn id_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a JSON-lines file of `{_id, title?, text}` records; errors name the file and line.
fn read_jsonl(
    root: &str,
    name: &str,
    bytes: Vec<u8>,
) -> Result<Vec<(String, String, String)>, EvalError> {
    let bytes = decompress_if_gz(name, bytes)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| EvalError::Task(format!("{root}/{name}: not UTF-8: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: JsonRecord = serde_json::from_str(line).map_err(|e| {
            EvalError::Task(format!(
                "{root}/{name}:{}: invalid record ({e}); expected {{\"_id\", \"text\"}}",
                i + 1
            ))
        })?;
        let id = id_string(&rec.id).ok_or_else(|| {
            EvalError::Task(format!(
                "{root}/{name}:{}: _id must be a string or number, got {}",
                i + 1,
                rec.id
            ))
        })?;
        let body = rec.text.ok_or_else(|| {
            EvalError::Task(format!(
                "{root}/{name}:{}: record '{id}' has no \"text\" field",
                i + 1
            ))
        })?;
        out.push((id, rec.title.unwrap_or_default(), body));
    }
    Ok(out)
}

fn read_beir(
    files: &dyn TaskFiles,
    set: &BTreeSet<&str>,
    corpus_file: &str,
    split: Option<&str>,
) -> Result<RawTask, EvalError> {
    let root = files.describe();
    let queries_file = ["queries.jsonl", "queries.jsonl.gz"]
        .into_iter()
        .find(|f| set.contains(f))
        .ok_or_else(|| {
            EvalError::Task(format!(
                "{root}: queries.jsonl is missing next to {corpus_file}"
            ))
        })?;
    let splits: Vec<String> = set
        .iter()
        .filter_map(|f| {
            f.strip_prefix("qrels/")
                .and_then(|s| s.strip_suffix(".tsv"))
        })
        .filter(|s| !s.contains('/'))
        .map(str::to_string)
        .collect();
    let split = pick_split(&format!("{root}/qrels"), splits, split)?;
    let qrels_file = format!("qrels/{split}.tsv");

    let corpus = read_jsonl(&root, corpus_file, files.read(corpus_file)?)?
        .into_iter()
        .map(|(id, title, body)| Doc { id, title, body })
        .collect();
    let queries = read_jsonl(&root, queries_file, files.read(queries_file)?)?
        .into_iter()
        .map(|(id, _, text)| Query { id, text })
        .collect();

    let bytes = files.read(&qrels_file)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| EvalError::Task(format!("{root}/{qrels_file}: not UTF-8: {e}")))?;
    let mut qrels = Vec::new();
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h))
            if h.split('\t')
                .map(str::trim)
                .take(2)
                .eq(["query-id", "corpus-id"]) => {}
        Some((_, h)) => {
            return Err(EvalError::Task(format!(
                "{root}/{qrels_file}:1: header is '{h}'; expected 'query-id\\tcorpus-id\\tscore'"
            )))
        }
        None => {
            return Err(EvalError::Task(format!(
                "{root}/{qrels_file}: empty file, expected a header line"
            )))
        }
    }
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{qrels_file}:{}", i + 1);
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 3 {
            return Err(EvalError::Task(format!(
                "{root}/{at}: expected 3 tab-separated columns (query-id, corpus-id, score), got {}: '{line}'",
                cols.len()
            )));
        }
        let grade = parse_grade(cols[2].trim()).ok_or_else(|| {
            EvalError::Task(format!(
                "{root}/{at}: score '{}' is not an integer",
                cols[2]
            ))
        })?;
        qrels.push((
            cols[0].trim().to_string(),
            cols[1].trim().to_string(),
            grade,
            at,
        ));
    }
    Ok(RawTask {
        split,
        corpus,
        corpus_file: corpus_file.to_string(),
        queries,
        queries_file: queries_file.to_string(),
        qrels,
    })
}

/// Integer grades; a float that is an exact integer (`1.0`) is accepted since some exports write them so.
fn parse_grade(s: &str) -> Option<i32> {
    s.parse::<i32>().ok().or_else(|| {
        let f = s.parse::<f64>().ok()?;
        (f.fract() == 0.0 && f.abs() < i32::MAX as f64).then_some(f as i32)
    })
}

/// Strips a Hugging Face shard suffix: `dev-00000-of-00001` → `dev`.
fn split_of_shard(stem: &str) -> &str {
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    if parts.len() == 4
        && parts[1] == "of"
        && [parts[0], parts[2]]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        parts[3]
    } else {
        stem
    }
}

/// Files of one Parquet table: `name.parquet`, or every `.parquet` below `name/`, as (split, path).
fn table_files(listing: &[String], name: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for f in listing {
        if f == &format!("{name}.parquet") {
            out.push(("default".to_string(), f.clone()));
        } else if let Some(rest) = f.strip_prefix(&format!("{name}/")) {
            if let Some(stem) = rest
                .rsplit('/')
                .next()
                .and_then(|b| b.strip_suffix(".parquet"))
            {
                out.push((split_of_shard(stem).to_string(), f.clone()));
            }
        }
    }
    out.sort();
    out
}

fn read_parquet_layout(
    files: &dyn TaskFiles,
    listing: &[String],
    split: Option<&str>,
) -> Result<RawTask, EvalError> {
    let root = files.describe();
    let corpus_files = table_files(listing, "corpus");
    let query_files = table_files(listing, "queries");
    let mut qrels_files = table_files(listing, "qrels");
    if qrels_files.is_empty() {
        qrels_files = table_files(listing, "default");
    }
    for (what, fs) in [
        ("corpus", &corpus_files),
        ("queries", &query_files),
        ("qrels", &qrels_files),
    ] {
        if fs.is_empty() {
            return Err(EvalError::Task(format!(
                "{root}: Parquet table '{what}' missing; expected {what}.parquet or {what}/*.parquet"
            )));
        }
    }
    let split = pick_split(
        &format!("{root}/qrels"),
        qrels_files.iter().map(|(s, _)| s.clone()).collect(),
        split,
    )?;
    // Corpus and queries shards are usually one HF split of their own ("corpus", "queries", "train"); when
    // they are split like the qrels, take the matching shards.
    let select = |fs: &[(String, String)]| -> Vec<String> {
        let matching: Vec<String> = fs
            .iter()
            .filter(|(s, _)| *s == split)
            .map(|(_, f)| f.clone())
            .collect();
        if matching.is_empty() {
            fs.iter().map(|(_, f)| f.clone()).collect()
        } else {
            matching
        }
    };
    let corpus_sel = select(&corpus_files);
    let query_sel = select(&query_files);
    let qrels_sel: Vec<String> = qrels_files
        .iter()
        .filter(|(s, _)| *s == split)
        .map(|(_, f)| f.clone())
        .collect();

    let mut corpus = Vec::new();
    for f in &corpus_sel {
        for (i, row) in parquet_rows(files, f, &["_id", "text"], &["title"])?
            .into_iter()
            .enumerate()
        {
            let [id, text, title]: [Option<String>; 3] = row.try_into().expect("3 columns");
            corpus.push(Doc {
                id: id.ok_or_else(|| null_err(&root, f, i, "_id"))?,
                title: title.unwrap_or_default(),
                body: text.unwrap_or_default(),
            });
        }
    }
    let mut queries = Vec::new();
    for f in &query_sel {
        for (i, row) in parquet_rows(files, f, &["_id", "text"], &[])?
            .into_iter()
            .enumerate()
        {
            let [id, text]: [Option<String>; 2] = row.try_into().expect("2 columns");
            queries.push(Query {
                id: id.ok_or_else(|| null_err(&root, f, i, "_id"))?,
                text: text.unwrap_or_default(),
            });
        }
    }
    let mut qrels = Vec::new();
    for f in &qrels_sel {
        for (i, row) in parquet_rows(files, f, &["query-id", "corpus-id"], &["score"])?
            .into_iter()
            .enumerate()
        {
            let [q, d, s]: [Option<String>; 3] = row.try_into().expect("3 columns");
            let at = format!("{f}:row {}", i + 1);
            let grade = match s {
                None => 1,
                Some(s) => parse_grade(&s).ok_or_else(|| {
                    EvalError::Task(format!("{root}/{at}: score '{s}' is not an integer"))
                })?,
            };
            qrels.push((
                q.ok_or_else(|| null_err(&root, f, i, "query-id"))?,
                d.ok_or_else(|| null_err(&root, f, i, "corpus-id"))?,
                grade,
                at,
            ));
        }
    }
    Ok(RawTask {
        split,
        corpus,
        corpus_file: corpus_sel.join(", "),
        queries,
        queries_file: query_sel.join(", "),
        qrels,
    })
}

fn null_err(root: &str, file: &str, row: usize, col: &str) -> EvalError {
    EvalError::Task(format!(
        "{root}/{file}:row {}: column '{col}' is null",
        row + 1
    ))
}

/// Reads the named columns of every row as strings (numbers formatted, nulls as `None`). `required`
/// columns must exist; `optional` ones yield `None` when absent.
fn parquet_rows(
    files: &dyn TaskFiles,
    rel: &str,
    required: &[&str],
    optional: &[&str],
) -> Result<Vec<Vec<Option<String>>>, EvalError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let root = files.describe();
    let bytes = bytes::Bytes::from(files.read(rel)?);
    let perr = |e: parquet::errors::ParquetError| {
        EvalError::Task(format!("{root}/{rel}: invalid Parquet file: {e}"))
    };
    let reader = SerializedFileReader::new(bytes).map_err(perr)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let names: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    for r in required {
        if !names.iter().any(|n| n == r) {
            return Err(EvalError::Task(format!(
                "{root}/{rel}: column '{r}' missing (columns: {})",
                names.join(", ")
            )));
        }
    }
    let wanted: Vec<&str> = required.iter().chain(optional).copied().collect();
    let mut out = Vec::new();
    for (i, row) in reader.get_row_iter(None).map_err(perr)?.enumerate() {
        let row = row.map_err(perr)?;
        let mut vals: Vec<Option<String>> = vec![None; wanted.len()];
        for (name, field) in row.get_column_iter() {
            let Some(pos) = wanted.iter().position(|w| w == name) else {
                continue;
            };
            vals[pos] = match field {
                Field::Null => None,
                Field::Str(s) => Some(s.clone()),
                Field::Bool(b) => Some(b.to_string()),
                Field::Byte(v) => Some(v.to_string()),
                Field::Short(v) => Some(v.to_string()),
                Field::Int(v) => Some(v.to_string()),
                Field::Long(v) => Some(v.to_string()),
                Field::UByte(v) => Some(v.to_string()),
                Field::UShort(v) => Some(v.to_string()),
                Field::UInt(v) => Some(v.to_string()),
                Field::ULong(v) => Some(v.to_string()),
                Field::Float(v) => Some(v.to_string()),
                Field::Double(v) => Some(v.to_string()),
                Field::Bytes(b) => Some(String::from_utf8_lossy(b.data()).into_owned()),
                other => {
                    return Err(EvalError::Task(format!(
                        "{root}/{rel}:row {}: column '{name}' has unsupported type ({other})",
                        i + 1
                    )))
                }
            };
        }
        out.push(vals);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        assert_eq!(split_of_shard("dev-00000-of-00001"), "dev");
        assert_eq!(split_of_shard("test"), "test");
        assert_eq!(split_of_shard("my-split-00001-of-00002"), "my-split");
        assert_eq!(split_of_shard("a-b"), "a-b");
    }

    #[test]
    fn doc_text_joins_title() {
        let d = Doc {
            id: "1".into(),
            title: "T".into(),
            body: "body ".into(),
        };
        assert_eq!(d.text(), "T body");
        let d = Doc {
            id: "1".into(),
            title: String::new(),
            body: " body".into(),
        };
        assert_eq!(d.text(), "body");
    }
}
