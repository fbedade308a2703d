//! The Hugging Face Hub for datasets and models, through the cache `huggingface_hub` itself reads and writes.
//!
//! Guarantees:
//! - [`Hub::from_env`] honours what `huggingface_hub` honours: `HF_HUB_CACHE` (and the legacy
//!   `HUGGINGFACE_HUB_CACHE`), `HF_HOME` (cache `$HF_HOME/hub`, token file `$HF_HOME/token`), `HF_TOKEN_PATH`,
//!   `HF_TOKEN`, `HF_ENDPOINT`, `HF_HUB_OFFLINE` (`1`/`true`/`yes`/`on`, any case).
//! - The cache layout is exactly `huggingface_hub`'s: `<cache>/{datasets,models}--owner--name/` with
//!   `blobs/<etag>` (sha256 for LFS files, the git blob sha1 otherwise), `snapshots/<commit>/<path>` as relative
//!   symlinks into `blobs`, and `refs/<revision>` holding the commit a branch or tag resolved to. Python's
//!   `snapshot_download` / `hf_hub_download` with `HF_HUB_OFFLINE=1` find what we write (test
//!   `common/tests/hub.rs`), and we read what they write.
//! - A [`HubRepo`] is pinned to one commit: every file of it comes from that commit, even if the branch moves
//!   while we download (files are fetched by commit id, not by branch name).
//! - Offline, everything comes from the cache; an uncached id is [`HubError::NotCached`], naming the id, the
//!   cache folder searched and `HF_HUB_OFFLINE`. A 401/403 is [`HubError::Gated`] (set `HF_TOKEN`, accept the
//!   conditions on the repo page); a failed download of a file is an error, never a silent default.
//!
//! Why not hf-hub 0.4 (the crate the worker used): its `ApiBuilder::new()` reads neither `HF_ENDPOINT` nor
//! `HF_TOKEN`; its `get` downloads at the branch head each time (files of one snapshot can come from two
//! commits if the branch moves) and, asked for a commit, writes a bogus `refs/<commit>` file; its errors do not
//! tell a gated repo from a missing one. What it does is one metadata request and one download per file, plus
//! the revision info call, all of which are a few lines on `ureq` (already our HTTP client, `obs::mlflow`), so
//! this module talks to the Hub's HTTP API directly ([`http`]).

mod data_files;
mod http;

use std::path::{Path, PathBuf};

use regex::Regex;

pub use data_files::{default_split_files, resolve_data_files, DataFilesSpec};
pub use http::link_snapshot;

/// The kind of a Hub repository (decides the URL prefix and the cache folder name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// `models--owner--name`, URLs without prefix.
    Model,
    /// `datasets--owner--name`, URLs under `datasets/`.
    Dataset,
}

impl RepoKind {
    /// `model` / `dataset`, as in messages and `repo_type=`.
    pub fn name(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }

    /// The cache folder of `repo_id`: `models--owner--name` / `datasets--owner--name`.
    pub fn folder_name(self, repo_id: &str) -> String {
        let prefix = match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        };
        format!("{prefix}--{}", repo_id.replace('/', "--"))
    }
}

/// Why a Hub repository or file could not be had. Each message is one line naming the id, what failed and the fix.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Offline and not in the cache.
    #[error(
        "{kind} `{repo_id}` (revision `{revision}`) is not in the Hugging Face cache {} and HF_HUB_OFFLINE is set; \
         run once with network access (unset HF_HUB_OFFLINE), download it with `hf download {repo_id}{}`, or \
         point HF_HUB_CACHE/HF_HOME at the cache that holds it",
        cache.display(), if *kind == "dataset" { " --repo-type dataset" } else { "" }
    )]
    NotCached {
        /// `dataset` or `model`.
        kind: &'static str,
        /// The id asked for.
        repo_id: String,
        /// The revision asked for (`main` by default).
        revision: String,
        /// The repository's folder in the cache that was searched.
        cache: PathBuf,
    },
    /// Offline and this file of a cached snapshot was never downloaded.
    #[error(
        "{kind} `{repo_id}`: `{path}` is not in the cached snapshot {} and HF_HUB_OFFLINE is set; run once with \
         network access (unset HF_HUB_OFFLINE) to download it",
        snapshot.display()
    )]
    FileNotCached {
        /// `dataset` or `model`.
        kind: &'static str,
        /// Repository id.
        repo_id: String,
        /// Repo-relative path.
        path: String,
        /// The snapshot folder searched.
        snapshot: PathBuf,
    },
    /// 401/403: gated or private.
    #[error(
        "{kind} `{repo_id}`: the Hub refused access (HTTP {status}) to {url}; it is gated or private: set HF_TOKEN \
         (or log in with `hf auth login`) and accept the conditions on {page}"
    )]
    Gated {
        /// `dataset` or `model`.
        kind: &'static str,
        /// Repository id.
        repo_id: String,
        /// 401 or 403.
        status: u16,
        /// The URL refused.
        url: String,
        /// The repository's page, where conditions are accepted.
        page: String,
    },
    /// 404 on the repository or revision.
    #[error(
        "{kind} `{repo_id}` (revision `{revision}`) was not found on {endpoint}; check the id and revision (a \
         private repo also answers 404 without a token: set HF_TOKEN)"
    )]
    RepoNotFound {
        /// `dataset` or `model`.
        kind: &'static str,
        /// Repository id.
        repo_id: String,
        /// Revision asked for.
        revision: String,
        /// The Hub endpoint (`HF_ENDPOINT`).
        endpoint: String,
    },
    /// A file that is not in the repository at that commit.
    #[error("{kind} `{repo_id}` at commit {commit} has no file `{path}`; check the path (files: {listing})")]
    FileNotFound {
        /// `dataset` or `model`.
        kind: &'static str,
        /// Repository id.
        repo_id: String,
        /// The commit.
        commit: String,
        /// Repo-relative path.
        path: String,
        /// A few of the files the repo does have.
        listing: String,
    },
    /// Transport or server failure.
    #[error("{kind} `{repo_id}`: request to {url} failed: {message}; check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache")]
    Http {
        /// `dataset` or `model`.
        kind: &'static str,
        /// Repository id.
        repo_id: String,
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// A local file-system failure in the cache.
    #[error("{}: {source}; check that the Hugging Face cache (HF_HUB_CACHE / HF_HOME) is writable", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The dataset's README `configs:` block cannot be used.
    #[error("dataset `{repo_id}`: README.md `configs:` {problem}")]
    Readme {
        /// Repository id.
        repo_id: String,
        /// What is wrong.
        problem: String,
    },
    /// No such config.
    #[error("dataset `{repo_id}` has no config `{config}`; set `config` to one of: {available}")]
    NoConfig {
        /// Repository id.
        repo_id: String,
        /// Asked for.
        config: String,
        /// The configs the repo has.
        available: String,
    },
    /// Several configs and none chosen.
    #[error("dataset `{repo_id}` has several configs and none is the default; set `config` to one of: {available}")]
    ConfigNeeded {
        /// Repository id.
        repo_id: String,
        /// The configs the repo has.
        available: String,
    },
    /// No such split.
    #[error("dataset `{repo_id}` config `{config}` has no split `{split}`; set `split` to one of: {available}")]
    NoSplit {
        /// Repository id.
        repo_id: String,
        /// Config.
        config: String,
        /// Asked for.
        split: String,
        /// The splits it has.
        available: String,
    },
    /// No data files at all (and no Parquet conversion).
    #[error("dataset `{repo_id}` at commit {commit}: {problem}")]
    NoDataFiles {
        /// Repository id.
        repo_id: String,
        /// Commit.
        commit: String,
        /// What was looked for and the fix.
        problem: String,
    },
}

impl HubError {
    fn io(path: &Path, source: std::io::Error) -> HubError {
        HubError::Io { path: path.to_path_buf(), source }
    }
}

/// A Hub client plus its cache. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    cache: PathBuf,
    endpoint: String,
    token: Option<String>,
    offline: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `huggingface_hub.constants._is_true`.
fn is_true(v: &str) -> bool {
    matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

impl Hub {
    /// The Hub as `huggingface_hub` sees it from this process's environment (see the module doc for the
    /// variables). Default endpoint `https://huggingface.co`, cache `~/.cache/huggingface/hub`.
    pub fn from_env() -> Hub {
        let home = env("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let base = env("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(env("HOME").unwrap_or_else(|| ".".into())).join(".cache")
            });
            base.join("huggingface")
        });
        let cache = env("HF_HUB_CACHE")
            .or_else(|| env("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = env("HF_TOKEN").or_else(|| env("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let path = env("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| home.join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let endpoint = env("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()).trim_end_matches('/').to_string();
        let offline = env("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
        Hub { cache, endpoint, token, offline }
    }

    /// The same Hub with another cache folder (tests).
    pub fn with_cache_dir(mut self, dir: PathBuf) -> Hub {
        self.cache = dir;
        self
    }

    /// The same Hub, offline or not (tests; production follows `HF_HUB_OFFLINE`).
    pub fn with_offline(mut self, offline: bool) -> Hub {
        self.offline = offline;
        self
    }

    /// The same Hub at another endpoint (tests; production follows `HF_ENDPOINT`).
    pub fn with_endpoint(mut self, endpoint: &str) -> Hub {
        self.endpoint = endpoint.trim_end_matches('/').to_string();
        self
    }

    /// The cache folder (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// True under `HF_HUB_OFFLINE=1`: nothing but the cache is read.
    pub fn offline(&self) -> bool {
        self.offline
    }

    /// The endpoint (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Dataset `repo_id` at `revision` (branch, tag or commit; default `main`), pinned to the commit it
    /// resolves to. Online this asks the Hub (and lists the files); offline it reads `refs/<revision>` or a
    /// commit's snapshot folder from the cache.
    pub fn dataset(&self, repo_id: &str, revision: Option<&str>) -> Result<HubRepo, HubError> {
        self.repo(RepoKind::Dataset, repo_id, revision)
    }

    /// Model `repo_id` at `revision`; see [`Hub::dataset`].
    pub fn model(&self, repo_id: &str, revision: Option<&str>) -> Result<HubRepo, HubError> {
        self.repo(RepoKind::Model, repo_id, revision)
    }

    /// Repository `repo_id` of `kind` at `revision`; see [`Hub::dataset`].
    pub fn repo(&self, kind: RepoKind, repo_id: &str, revision: Option<&str>) -> Result<HubRepo, HubError> {
        let revision = revision.unwrap_or("main").to_string();
        let dir = self.cache.join(kind.folder_name(repo_id));
        if self.offline {
            return self.cached(kind, repo_id, &revision).ok_or_else(|| HubError::NotCached {
                kind: kind.name(),
                repo_id: repo_id.into(),
                revision: revision.clone(),
                cache: dir,
            });
        }
        match http::revision_info(self, kind, repo_id, &revision) {
            Ok((commit, files)) => Ok(HubRepo { repo_id: repo_id.into(), commit, revision, kind, files, hub: self.clone() }),
            // As huggingface_hub does: a Hub that cannot be reached falls back to the cache, loudly.
            Err(HubError::Http { message, url, .. }) if http::is_transport(&message) => {
                match self.cached(kind, repo_id, &revision) {
                    Some(repo) => {
                        tracing::warn!(repo_id, url, message, commit = repo.commit, "Hub unreachable; using the cached snapshot");
                        Ok(repo)
                    }
                    None => Err(HubError::Http { kind: kind.name(), repo_id: repo_id.into(), url, message }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The cached snapshot of `repo_id` at `revision`, if any: `refs/<revision>`'s commit, or `revision`
    /// itself when it names a snapshot folder (a commit id).
    fn cached(&self, kind: RepoKind, repo_id: &str, revision: &str) -> Option<HubRepo> {
        let dir = self.cache.join(kind.folder_name(repo_id));
        let commit = match std::fs::read_to_string(dir.join("refs").join(revision)) {
            Ok(c) => c.trim().to_string(),
            Err(_) if is_commit(revision) => revision.to_string(),
            Err(_) => return None,
        };
        let snap = dir.join("snapshots").join(&commit);
        if !snap.is_dir() {
            return None;
        }
        let mut files = Vec::new();
        walk(&snap, "", &mut files);
        files.sort();
        Some(HubRepo { repo_id: repo_id.into(), commit, revision: revision.into(), kind, files, hub: self.clone() })
    }
}

/// A 40-hex commit id.
fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Repo-relative paths of the files under `dir` (symlinks count as files).
fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        let p = e.path();
        if p.is_dir() {
            walk(&p, &rel, out);
        } else if p.exists() {
            out.push(rel);
        }
    }
}

/// One Hub repository pinned to a commit.
#[derive(Debug, Clone)]
pub struct HubRepo {
    /// `owner/name`.
    pub repo_id: String,
    /// The commit every file comes from.
    pub commit: String,
    /// The revision asked for (`main` by default); `refs/<revision>` is written when a file is downloaded.
    pub revision: String,
    /// Model or dataset.
    pub kind: RepoKind,
    files: Vec<String>,
    hub: Hub,
}

impl HubRepo {
    /// Repo-relative paths of the files at [`HubRepo::commit`], sorted. Offline this is what the cached snapshot
    /// holds (files never downloaded are not listed).
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The local snapshot folder, `<cache>/<kind>s--owner--name/snapshots/<commit>`.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.repo_dir().join("snapshots").join(&self.commit)
    }

    /// `<cache>/<kind>s--owner--name`.
    pub fn repo_dir(&self) -> PathBuf {
        self.hub.cache.join(self.kind.folder_name(&self.repo_id))
    }

    /// The Hub this repo was resolved through.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The local path of `path` in the snapshot, downloaded into the cache first if needed (online).
    pub fn get(&self, path: &str) -> Result<PathBuf, HubError> {
        let local = self.snapshot_dir().join(path);
        if local.exists() {
            return Ok(local);
        }
        if self.hub.offline {
            return Err(HubError::FileNotCached {
                kind: self.kind.name(),
                repo_id: self.repo_id.clone(),
                path: path.into(),
                snapshot: self.snapshot_dir(),
            });
        }
        if !self.files.iter().any(|f| f == path) {
            return Err(self.file_not_found(path));
        }
        http::download(self, path)?;
        Ok(local)
    }

    fn file_not_found(&self, path: &str) -> HubError {
        let mut listing: Vec<&str> = self.files.iter().take(8).map(String::as_str).collect();
        if self.files.len() > 8 {
            listing.push("...");
        }
        HubError::FileNotFound {
            kind: self.kind.name(),
            repo_id: self.repo_id.clone(),
            commit: self.commit.clone(),
            path: path.into(),
            listing: if listing.is_empty() { "none".into() } else { listing.join(", ") },
        }
    }

    /// Writes `refs/<revision>` = commit (what huggingface_hub does after a download), unless the revision is
    /// the commit itself.
    fn write_ref(&self) -> Result<(), HubError> {
        if self.revision == self.commit {
            return Ok(());
        }
        let p = self.repo_dir().join("refs").join(&self.revision);
        if std::fs::read_to_string(&p).is_ok_and(|c| c.trim() == self.commit) {
            return Ok(());
        }
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        }
        std::fs::write(&p, &self.commit).map_err(|e| HubError::io(&p, e))
    }

    /// The data files of a (config, split) as `datasets` resolves them, downloaded: the README's YAML
    /// `configs:` / `data_files`, else `datasets`' default patterns (sharded `data/{split}-NNNNN-of-NNNNN*`,
    /// then split names in folder names, then in file names, else everything is `train`), keeping the files of
    /// the most common data format; else, for repos with a loading script, the `refs/convert/parquet`
    /// revision's `{config}/{split}/*.parquet`. `config: None` means the README's default config (or
    /// `default`).
    pub fn split_files(&self, config: Option<&str>, split: &str) -> Result<Vec<PathBuf>, HubError> {
        let (repo, files) = self.resolved_split(config, split)?;
        files.iter().map(|f| repo.get(f)).collect()
    }

    /// Repo-relative paths (in the repo [`split_files`](HubRepo::split_files) downloads from, which is a
    /// `refs/convert/parquet` repo for script datasets) without downloading.
    pub fn resolved_split(&self, config: Option<&str>, split: &str) -> Result<(HubRepo, Vec<String>), HubError> {
        let spec = self.data_files_spec()?;
        match spec {
            Some(spec) => {
                let splits = spec.config(&self.repo_id, config)?;
                match splits.iter().find(|(s, _)| s == split) {
                    Some((_, files)) if files.is_empty() => Err(HubError::NoDataFiles {
                        repo_id: self.repo_id.clone(),
                        commit: self.commit.clone(),
                        problem: format!(
                            "split `{split}` of config `{}` has no file of the config's data format (`datasets` reads one \
                             format per config, chosen by its most common file extension); pick another split or config",
                            spec.config_name(config).unwrap_or_else(|| "default".into())
                        ),
                    }),
                    Some((_, files)) => Ok((self.clone(), files.clone())),
                    None => Err(HubError::NoSplit {
                        repo_id: self.repo_id.clone(),
                        config: spec.config_name(config).unwrap_or_else(|| "default".into()),
                        split: split.into(),
                        available: splits.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", "),
                    }),
                }
            }
            None => {
                let conv = self.parquet_conversion()?;
                let config = config.unwrap_or("default");
                let files = data_files::converted_split(&conv.files, config, split);
                if files.is_empty() {
                    let configs = data_files::converted_configs(&conv.files);
                    if !configs.iter().any(|c| c == config) {
                        return Err(HubError::NoConfig {
                            repo_id: self.repo_id.clone(),
                            config: config.into(),
                            available: configs.join(", "),
                        });
                    }
                    return Err(HubError::NoSplit {
                        repo_id: self.repo_id.clone(),
                        config: config.into(),
                        split: split.into(),
                        available: data_files::converted_splits(&conv.files, config).join(", "),
                    });
                }
                Ok((conv, files))
            }
        }
    }

    /// The configs `datasets` sees (README `configs:` order, else `default`, else the Parquet conversion's).
    pub fn configs(&self) -> Result<Vec<String>, HubError> {
        match self.data_files_spec()? {
            Some(spec) => Ok(spec.config_names()),
            None => Ok(data_files::converted_configs(&self.parquet_conversion()?.files)),
        }
    }

    /// The splits of `config` (`None`: the default config), in `datasets`' order.
    pub fn splits(&self, config: Option<&str>) -> Result<Vec<String>, HubError> {
        match self.data_files_spec()? {
            Some(spec) => Ok(spec.config(&self.repo_id, config)?.into_iter().map(|(s, _)| s).collect()),
            None => Ok(data_files::converted_splits(&self.parquet_conversion()?.files, config.unwrap_or("default"))),
        }
    }

    /// The repo's data-file layout, or `None` when it has no data files (a script dataset).
    fn data_files_spec(&self) -> Result<Option<DataFilesSpec>, HubError> {
        if self.kind != RepoKind::Dataset {
            return Err(HubError::NoDataFiles {
                repo_id: self.repo_id.clone(),
                commit: self.commit.clone(),
                problem: "is a model, not a dataset".into(),
            });
        }
        let readme = if self.files.iter().any(|f| f == "README.md") {
            let p = self.get("README.md")?;
            Some(std::fs::read_to_string(&p).map_err(|e| HubError::io(&p, e))?)
        } else {
            None
        };
        resolve_data_files(&self.repo_id, &self.files, readme.as_deref())
    }

    /// The `refs/convert/parquet` revision of this dataset.
    fn parquet_conversion(&self) -> Result<HubRepo, HubError> {
        let conv = self.hub.dataset(&self.repo_id, Some("refs/convert/parquet")).map_err(|e| match e {
            HubError::RepoNotFound { .. } | HubError::NotCached { .. } => HubError::NoDataFiles {
                repo_id: self.repo_id.clone(),
                commit: self.commit.clone(),
                problem: format!(
                    "no Parquet/JSON/CSV data files and no `refs/convert/parquet` conversion ({e}); point `source` at a \
                     repo with data files"
                ),
            },
            e => e,
        })?;
        Ok(conv)
    }
}

/// A dataset source naming the Hub: `owner/name`, `owner/name@revision`, or
/// `hf://datasets/owner/name[@revision][/path]`. Returns the repo id and the revision; `None` when `s` is not
/// of that shape (a local path such as `data/train.jsonl` or an object-store URL). A bare `owner/name` is only
/// syntax: callers look for a local path of that name first.
pub fn parse_dataset_source(s: &str) -> Option<(String, Option<String>)> {
    parse_dataset_source_path(s).map(|(repo, rev, _)| (repo, rev))
}

/// [`parse_dataset_source`] plus the repo-relative path (file, folder or glob) after the id, if any
/// (only the `hf://` form has one).
pub fn parse_dataset_source_path(s: &str) -> Option<(String, Option<String>, Option<String>)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix("hf://") {
        let rest = rest.strip_prefix("datasets/")?;
        let (owner, rest) = rest.split_once('/')?;
        let (name, rev, path) = match rest.split_once('@') {
            Some((name, after)) => {
                // As huggingface_hub's HfFileSystem: `refs/convert/parquet` and `refs/pr/N` may appear unescaped,
                // other revisions escape `/` as `%2F`.
                let special = Regex::new(r"^(refs/convert/parquet|refs/pr/[0-9]+)(/|$)").expect("valid");
                let (rev, path) = match special.captures(after) {
                    Some(c) => {
                        let r = c[1].to_string();
                        (r.clone(), after[r.len()..].trim_start_matches('/').to_string())
                    }
                    None => match after.split_once('/') {
                        Some((r, p)) => (r.replace("%2F", "/").replace("%2f", "/"), p.to_string()),
                        None => (after.replace("%2F", "/").replace("%2f", "/"), String::new()),
                    },
                };
                (name, (!rev.is_empty()).then_some(rev), path)
            }
            None => match rest.split_once('/') {
                Some((name, p)) => (name, None, p.to_string()),
                None => (rest, None, String::new()),
            },
        };
        let id = format!("{owner}/{name}");
        let path = (!path.is_empty()).then_some(path);
        return valid_repo_id(&id).then_some((id, rev, path));
    }
    if s.contains("://") || s.starts_with(['.', '/', '~']) {
        return None;
    }
    let (id, rev) = match s.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, Some(rev.to_string())),
        Some(_) => return None,
        None => (s, None),
    };
    if !valid_repo_id(id) || id.matches('/').count() != 1 {
        return None;
    }
    let lower = id.to_ascii_lowercase();
    let data_ext = [".jsonl", ".json", ".ndjson", ".gz", ".parquet", ".pq", ".csv", ".txt", ".tsv"];
    if data_ext.iter().any(|e| lower.ends_with(e)) {
        return None;
    }
    Some((id.to_string(), rev, None))
}

/// `huggingface_hub.utils.validate_repo_id` for `owner/name`: letters, digits, `-`, `_`, `.`; no `--` or `..`;
/// not starting or ending with `-` or `.`; at most 96 characters.
fn valid_repo_id(id: &str) -> bool {
    let Some((owner, name)) = id.split_once('/') else { return false };
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !p.contains("--")
            && !p.contains("..")
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
    };
    ok(owner) && ok(name) && !name.contains('/')
}

#[cfg(test)]
mod tests;
