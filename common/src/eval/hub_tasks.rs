//! Retrieval tasks by name from Hugging Face Hub datasets (through [`crate::hub`], so the standard cache and
//! `HF_HUB_OFFLINE` apply): NanoBEIR as sentence-transformers' `SparseNanoBEIREvaluator` loads it, and MTEB
//! retrieval tasks by MTEB name (`crate::config::mteb`).
//!
//! Both are Parquet tables (`corpus`, `queries`, qrels) in a dataset repo's configs; the files of each
//! (config, split) are laid out as the Parquet task layout [`Task::load`] reads (`corpus/…`, `queries/…`,
//! `qrels/<split>-NNNNN-of-NNNNN.parquet`) without copying them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::task::{Task, TaskFiles};
use super::EvalError;
use crate::config::mteb::MtebTask;
use crate::hub::{Hub, HubRepo};

/// The dataset sentence-transformers' `NanoBEIREvaluator` reads by default (`dataset_id`).
pub const NANOBEIR_DATASET: &str = "sentence-transformers/NanoBEIR-en";

/// `DATASET_NAME_TO_HUMAN_READABLE` of sentence-transformers' `nano_beir.py`: the names `nanobeir_datasets`
/// takes and the split (`Nano<Name>`) each one is.
pub const NANOBEIR_NAMES: &[(&str, &str)] = &[
    ("climatefever", "ClimateFEVER"),
    ("dbpedia", "DBPedia"),
    ("fever", "FEVER"),
    ("fiqa2018", "FiQA2018"),
    ("hotpotqa", "HotpotQA"),
    ("msmarco", "MSMARCO"),
    ("nfcorpus", "NFCorpus"),
    ("nq", "NQ"),
    ("quoraretrieval", "QuoraRetrieval"),
    ("scidocs", "SCIDOCS"),
    ("arguana", "ArguAna"),
    ("scifact", "SciFact"),
    ("touche2020", "Touche2020"),
];

/// Task files named by layout path, each a local file (in the hub cache).
struct Mapped {
    root: String,
    files: BTreeMap<String, PathBuf>,
}

impl TaskFiles for Mapped {
    fn list(&self) -> Result<Vec<String>, EvalError> {
        Ok(self.files.keys().cloned().collect())
    }
    fn read(&self, rel: &str) -> Result<Vec<u8>, EvalError> {
        let p = self.files.get(rel).ok_or_else(|| EvalError::Task(format!("{}: no file {rel}", self.root)))?;
        std::fs::read(p).map_err(|e| EvalError::io(p, e))
    }
    fn describe(&self) -> String {
        self.root.clone()
    }
}

fn hub_err(repo: &str, what: &str, e: impl std::fmt::Display) -> EvalError {
    EvalError::Task(format!("{repo}: {what}: {e}"))
}

/// The files of `repo`'s (config, split) as the layout's `table` (`corpus`, `queries`, or `qrels` for split
/// `qrels_split`).
fn add_table(
    repo: &HubRepo,
    config: &str,
    split: &str,
    table: &str,
    qrels_split: &str,
    out: &mut BTreeMap<String, PathBuf>,
) -> Result<(), EvalError> {
    let files = repo
        .split_files(Some(config), split)
        .map_err(|e| hub_err(&repo.repo_id, &format!("config `{config}` split `{split}`"), e))?;
    let parquet: Vec<PathBuf> = files.into_iter().filter(|f| f.extension().is_some_and(|x| x == "parquet")).collect();
    if parquet.is_empty() {
        return Err(EvalError::Task(format!(
            "{}: config `{config}` split `{split}` has no Parquet file; a retrieval task needs corpus, queries and qrels as Parquet",
            repo.repo_id
        )));
    }
    let n = parquet.len();
    for (i, f) in parquet.into_iter().enumerate() {
        let rel = if table == "qrels" {
            format!("qrels/{qrels_split}-{i:05}-of-{n:05}.parquet")
        } else {
            format!("{table}/{split}-{i:05}-of-{n:05}.parquet")
        };
        out.insert(rel, f);
    }
    Ok(())
}

/// The split of `repo`'s `config` holding `want`, else its only split (MTEB's corpus/queries configs may keep
/// one split while qrels hold the eval split).
fn split_of(repo: &HubRepo, config: &str, want: &str) -> Result<String, EvalError> {
    let splits = repo.splits(Some(config)).map_err(|e| hub_err(&repo.repo_id, &format!("config `{config}`"), e))?;
    if splits.iter().any(|s| s == want) {
        return Ok(want.to_string());
    }
    match splits.as_slice() {
        [only] => Ok(only.clone()),
        _ => Err(EvalError::Task(format!(
            "{}: config `{config}` has no split `{want}` (splits: {splits:?})",
            repo.repo_id
        ))),
    }
}

/// NanoBEIR dataset `name` (`msmarco`, case-insensitive) as `SparseNanoBEIREvaluator` loads it: configs `corpus`,
/// `queries`, `qrels` of [`NANOBEIR_DATASET`], split `Nano<Name>`; the task is named `Nano<Name>`.
pub fn nanobeir_task(hub: &Hub, name: &str) -> Result<Task, EvalError> {
    let human = NANOBEIR_NAMES.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, h)| *h).ok_or_else(|| {
        EvalError::Task(format!(
            "`{name}` is not a NanoBEIR dataset; use one of {}",
            NANOBEIR_NAMES.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let split = format!("Nano{human}");
    let repo = hub.dataset(NANOBEIR_DATASET, None).map_err(|e| hub_err(NANOBEIR_DATASET, "NanoBEIR", e))?;
    let mut files = BTreeMap::new();
    for (config, table) in [("corpus", "corpus"), ("queries", "queries"), ("qrels", "qrels")] {
        add_table(&repo, config, &split, table, &split, &mut files)?;
    }
    let root = format!("hf://datasets/{}@{} ({split})", repo.repo_id, repo.commit);
    Task::load(&Mapped { root, files }, Some(&split), Some(&split))
}

/// MTEB task `task` from its Hub dataset at MTEB's revision: configs `corpus`, `queries` and the qrels
/// (`default`, or `qrels`), the task's eval split; named as MTEB names it.
pub fn mteb_hub_task(hub: &Hub, task: &MtebTask) -> Result<Task, EvalError> {
    let repo = hub.dataset(task.dataset, Some(task.revision)).map_err(|e| hub_err(task.dataset, task.name, e))?;
    let configs = repo.configs().map_err(|e| hub_err(task.dataset, task.name, e))?;
    let qrels_config = ["default", "qrels"].into_iter().find(|c| configs.iter().any(|x| x == c)).ok_or_else(|| {
        EvalError::Task(format!(
            "{} ({}): no qrels config (`default` or `qrels`) among {configs:?}; this repo is not in MTEB's retrieval layout",
            task.dataset, task.name
        ))
    })?;
    let mut files = BTreeMap::new();
    for (config, table) in [("corpus", "corpus"), ("queries", "queries"), (qrels_config, "qrels")] {
        let split = split_of(&repo, config, task.eval_split)?;
        add_table(&repo, config, &split, table, task.eval_split, &mut files)?;
    }
    let root = format!("hf://datasets/{}@{} ({})", repo.repo_id, repo.commit, task.name);
    Task::load(&Mapped { root, files }, Some(task.eval_split), Some(task.name))
}
