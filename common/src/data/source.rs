//! Turns a dataset `source` (path, glob, directory, URL, URL with a glob in its key, Hugging Face Hub dataset) into a
//! sorted list of files.

use std::path::PathBuf;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjPath;

use super::{DataError, HubPin};
use crate::hub::HubError;
use crate::store::{is_url, Location, StoreError, StoreOptions};

/// One file of a dataset.
pub(crate) enum SourceFile {
    Local(PathBuf),
    Remote { location: Location, key: ObjPath, url: String },
}

impl SourceFile {
    pub fn display(&self) -> String {
        match self {
            SourceFile::Local(p) => p.display().to_string(),
            SourceFile::Remote { url, .. } => url.clone(),
        }
    }

    /// What the store says about the file now (size, last-modified, ETag): local files through `object_store`'s
    /// local file system, so the fingerprint a plan records is the one a [`super::RangedReader`] checks.
    pub async fn head(&self) -> Result<object_store::ObjectMeta, DataError> {
        match self {
            SourceFile::Local(p) => {
                let loc = Location::parse(&p.display().to_string())?;
                loc.store()
                    .head(loc.prefix())
                    .await
                    .map_err(|source| StoreError::ObjectStore { location: p.display().to_string(), source }.into())
            }
            SourceFile::Remote { location, key, url } => location
                .store()
                .head(key)
                .await
                .map_err(|source| StoreError::ObjectStore { location: url.clone(), source }.into()),
        }
    }

    pub async fn read(&self) -> Result<Bytes, DataError> {
        match self {
            SourceFile::Local(p) => std::fs::read(p)
                .map(Bytes::from)
                .map_err(|e| DataError::Read { file: p.display().to_string(), message: e.to_string() }),
            SourceFile::Remote { location, key, url } => {
                let got = location
                    .store()
                    .get(key)
                    .await
                    .map_err(|source| StoreError::ObjectStore { location: url.clone(), source })?;
                Ok(got.bytes().await.map_err(|source| StoreError::ObjectStore { location: url.clone(), source })?)
            }
        }
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn is_data_file(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    [".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".parquet", ".pq"].iter().any(|e| l.ends_with(e))
}

/// What a source resolved to: its files and, for a Hub dataset, the commit they come from.
pub(crate) struct Resolved {
    pub files: Vec<SourceFile>,
    pub hub: Option<HubPin>,
}

/// The Hub dataset a source names, if it names one: `hf://datasets/...` always, a bare `owner/name[@rev]` only
/// when no local path of that name exists.
fn hub_source(source: &str) -> Option<(String, Option<String>, Option<String>)> {
    if !source.starts_with("hf://") && std::path::Path::new(source).exists() {
        return None;
    }
    crate::hub::parse_dataset_source_path(source)
}

/// The files of a Hub dataset source: `path` inside the repo (a file, folder or glob) when given, else the files
/// of (`config`, `split`) as `datasets` resolves them ([`crate::hub::HubRepo::split_files`]).
fn resolve_hub(
    dataset: &str,
    (repo_id, revision, path): (String, Option<String>, Option<String>),
    config: Option<&str>,
    split: Option<&str>,
) -> Result<Resolved, DataError> {
    let hub_err = |source| DataError::Hub { dataset: dataset.into(), source };
    let repo = crate::hub::Hub::from_env().dataset(&repo_id, revision.as_deref()).map_err(hub_err)?;
    let (repo, names) = match path {
        Some(p) => {
            let p = p.trim_end_matches('/');
            let pattern = glob::Pattern::new(p).map_err(|e| DataError::Columns {
                dataset: dataset.into(),
                problem: format!("the path `{p}` in the source is not a valid glob ({e}); fix `datasets.{dataset}.source`"),
            })?;
            let opts = glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: true };
            let under = format!("{p}/");
            let names: Vec<String> = repo
                .files()
                .iter()
                .filter(|f| pattern.matches_with(f, opts) || (f.starts_with(&under) && is_data_file(f)))
                .cloned()
                .collect();
            if names.is_empty() {
                return Err(DataError::Hub {
                    dataset: dataset.into(),
                    source: crate::hub::HubError::NoDataFiles {
                        repo_id: repo_id.clone(),
                        commit: repo.commit.clone(),
                        problem: format!("no file matches `{p}`; fix the path in `datasets.{dataset}.source`"),
                    },
                });
            }
            (repo, names)
        }
        None => repo.resolved_split(config, split.unwrap_or("train")).map_err(hub_err)?,
    };
    let mut files = Vec::new();
    for n in &names {
        files.push(SourceFile::Local(repo.get(n).map_err(hub_err)?));
    }
    tracing::info!(dataset, repo_id = repo.repo_id, revision = repo.revision, commit = repo.commit, files = names.len(), "Hub dataset resolved");
    Ok(Resolved { files, hub: Some(HubPin { repo_id: repo.repo_id.clone(), revision: repo.revision.clone(), commit: repo.commit.clone() }) })
}

fn unreadable(dataset: &str, path: &std::path::Path, e: &std::io::Error) -> DataError {
    DataError::Read {
        file: path.display().to_string(),
        message: format!(
            "cannot be read ({e}); fix its permissions or remove it, or narrow `datasets.{dataset}.source` so it does not match"
        ),
    }
}

/// `p` as a data file of a source: files are kept (in a directory only those with a data extension),
/// directories skipped, and anything else that matched (a dangling link, a path that cannot be stat'ed)
/// is an error naming it.
fn data_file(dataset: &str, p: PathBuf, by_extension: bool) -> Result<Option<PathBuf>, DataError> {
    let wanted = !by_extension || is_data_file(&p.to_string_lossy());
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(wanted.then_some(p)),
        Ok(_) => Ok(None),
        Err(e) if wanted => Err(unreadable(dataset, &p, &e)),
        Err(_) => Ok(None),
    }
}

/// The files of `source`, sorted by path. A directory (or key prefix) means its data files; a glob may appear in
/// a local path or in an object key; a Hub dataset means the files of (`config`, `split`).
pub(crate) async fn resolve(
    dataset: &str,
    source: &str,
    config: Option<&str>,
    split: Option<&str>,
    options: &StoreOptions,
) -> Result<Resolved, DataError> {
    if let Some(hub) = hub_source(source) {
        return resolve_hub(dataset, hub, config, split).map_err(|e| match e {
            // A bare `owner/name` may have been meant as a local folder: say that it is not one.
            DataError::Hub { dataset, source: hub_err @ (HubError::NotCached { .. } | HubError::RepoNotFound { .. }) }
                if !source.starts_with("hf://") =>
            {
                let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| ".".into());
                DataError::HubOrPath { dataset, source_path: source.into(), cwd, source: hub_err }
            }
            e => e,
        });
    }
    Ok(Resolved { files: resolve_files(dataset, source, options).await?, hub: None })
}

async fn resolve_files(dataset: &str, source: &str, options: &StoreOptions) -> Result<Vec<SourceFile>, DataError> {
    let not_found = || DataError::NotFound { dataset: dataset.into(), source_path: source.into() };
    let local_path = if let Some(rest) = source.strip_prefix("file://") {
        Some(rest.to_string())
    } else if is_url(source) {
        None
    } else {
        Some(source.to_string())
    };
    if let Some(path) = local_path {
        let mut files: Vec<PathBuf> = if has_glob(&path) {
            let paths = glob::glob(&path).map_err(|e| DataError::Columns {
                dataset: dataset.into(),
                problem: format!("source `{source}` is not a valid glob ({e}); fix `datasets.{dataset}.source`"),
            })?;
            let mut files = Vec::new();
            for entry in paths {
                // A path the glob matched but could not read is an error, never silently one file fewer.
                let p = entry.map_err(|e| unreadable(dataset, e.path(), e.error()))?;
                if let Some(p) = data_file(dataset, p, false)? {
                    files.push(p);
                }
            }
            files
        } else {
            let p = PathBuf::from(&path);
            if p.is_file() {
                vec![p]
            } else if p.is_dir() {
                let mut files = Vec::new();
                for entry in std::fs::read_dir(&p).map_err(|e| DataError::Read { file: path.clone(), message: e.to_string() })? {
                    let entry = entry.map_err(|e| unreadable(dataset, &p, &e))?;
                    if let Some(f) = data_file(dataset, entry.path(), true)? {
                        files.push(f);
                    }
                }
                files
            } else {
                Vec::new()
            }
        };
        files.sort();
        if files.is_empty() {
            return Err(not_found());
        }
        return Ok(files.into_iter().map(SourceFile::Local).collect());
    }

    // Object store: list under the part of the key before any wildcard.
    let (base, pattern) = match source.find(['*', '?', '[']) {
        Some(i) => {
            let cut = source[..i].rfind('/').map(|j| j + 1).unwrap_or(i);
            (&source[..cut], Some(&source[cut..]))
        }
        None => (source, None),
    };
    let location = Location::parse_with(base, options)?;
    let store = location.store().clone();
    let url_of = |key: &ObjPath| {
        let scheme_host = &base[..base.find("://").map(|i| i + 3).unwrap_or(0)];
        let bucket = base[scheme_host.len()..].split('/').next().unwrap_or("");
        format!("{scheme_host}{bucket}/{key}")
    };
    let mut keys: Vec<ObjPath> = Vec::new();
    if pattern.is_none() && !location.prefix().as_ref().is_empty() {
        match store.head(location.prefix()).await {
            Ok(meta) => keys.push(meta.location),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source_err) => {
                return Err(StoreError::ObjectStore { location: source.into(), source: source_err }.into())
            }
        }
    }
    if keys.is_empty() {
        let matcher = pattern.map(|p| {
            let full = if location.prefix().as_ref().is_empty() {
                p.to_string()
            } else {
                format!("{}/{}", location.prefix(), p)
            };
            glob::Pattern::new(&full)
        });
        let matcher = match matcher {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                return Err(DataError::Columns {
                    dataset: dataset.into(),
                    problem: format!("source `{source}` is not a valid glob ({e}); fix `datasets.{dataset}.source`"),
                })
            }
            None => None,
        };
        let opts = glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };
        let mut listing = store.list(Some(location.prefix()));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| StoreError::ObjectStore { location: source.into(), source: e })?;
            let key = meta.location.as_ref();
            let ok = match &matcher {
                Some(m) => m.matches_with(key, opts),
                None => is_data_file(key),
            };
            if ok {
                keys.push(meta.location);
            }
        }
    }
    keys.sort();
    if keys.is_empty() {
        return Err(not_found());
    }
    Ok(keys
        .into_iter()
        .map(|key| {
            let url = url_of(&key);
            SourceFile::Remote { location: location.clone(), key, url }
        })
        .collect())
}
