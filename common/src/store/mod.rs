//! Object storage: the one place that turns a location (local path, `file://`, `s3://bucket/prefix`, `gs://`,
//! `az://`) into an [`ObjectStore`] and a prefix, plus the checkpoint commit protocol ([`checkpoint`]).
//!
//! Credentials and endpoints come from the standard environment variables of each cloud (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...;
//! `GOOGLE_*`; `AZURE_*`), read by `object_store`'s builders. [`StoreOptions`] overrides them per call (tests pass
//! a loopback S3 server's settings this way instead of mutating the process environment).

pub mod checkpoint;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjPath;
use object_store::ObjectStore;

pub use checkpoint::{
    commit_checkpoint, fetch_checkpoint, fetch_latest_checkpoint, latest_checkpoint, list_checkpoints,
    list_checkpoints_with, prune, verify_checkpoint, CheckpointInfo, Manifest, ManifestFile, Verify,
    MANIFEST_NAME,
};

/// Why a storage operation failed; each names the location and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The location string cannot be turned into a store.
    #[error("storage location `{location}`: {reason}; {fix}")]
    BadLocation {
        /// As given.
        location: String,
        /// What is wrong.
        reason: String,
        /// How to fix it.
        fix: String,
    },
    /// The object store refused or failed.
    #[error("storage `{location}`: {source}")]
    ObjectStore {
        /// The object's URL.
        location: String,
        /// From `object_store`.
        #[source]
        source: object_store::Error,
    },
    /// Local file-system error.
    #[error("{path}: {source}")]
    Io {
        /// The local path.
        path: String,
        /// From the OS.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint's file does not match its manifest.
    #[error("checkpoint `{checkpoint}` fails verification: {file}: {reason}; the checkpoint is incomplete or corrupt, resume from an earlier one")]
    Verify {
        /// Checkpoint URL.
        checkpoint: String,
        /// The file inside it.
        file: String,
        /// Size or sha256 mismatch, or missing.
        reason: String,
    },
    /// No committed checkpoint of that name.
    #[error("checkpoint `{name}` not found under `{location}` (no manifest.json: it was never committed); list the committed ones with `latest_checkpoint`")]
    NotFound {
        /// The location searched.
        location: String,
        /// The checkpoint's name.
        name: String,
    },
    /// A manifest that is not valid.
    #[error("checkpoint manifest `{location}` is unreadable: {reason}")]
    Manifest {
        /// The manifest's URL.
        location: String,
        /// Why.
        reason: String,
    },
    /// A different checkpoint of the same name is already committed.
    #[error("checkpoint `{name}` is already committed under `{location}` with different contents; use a new name or prune the old one first")]
    AlreadyCommitted {
        /// The location.
        location: String,
        /// The checkpoint's name.
        name: String,
    },
}

/// `object_store` configuration keys that override the environment (e.g. `("aws_endpoint", "http://...")`).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Key/value pairs in `object_store`'s config-key spelling (`aws_endpoint`, `aws_allow_http`, ...).
    pub overrides: Vec<(String, String)>,
}

impl StoreOptions {
    /// No overrides: the environment alone.
    pub fn from_env() -> StoreOptions {
        StoreOptions::default()
    }
}

/// A store plus the prefix inside it. Local locations keep their file-system path too, because the commit
/// protocol uses rename + fsync there.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: String,
    local: Option<PathBuf>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location").field("url", &self.url).field("prefix", &self.prefix).finish()
    }
}

/// True for strings that name an object-store URL rather than a local path.
pub fn is_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+'))
}

impl Location {
    /// Parses a location, credentials and endpoints from the environment.
    pub fn parse(location: &str) -> Result<Location, StoreError> {
        Self::parse_with(location, &StoreOptions::default())
    }

    /// Parses a location; `options` override the environment.
    pub fn parse_with(location: &str, options: &StoreOptions) -> Result<Location, StoreError> {
        let bad = |reason: String, fix: &str| StoreError::BadLocation {
            location: location.to_string(),
            reason,
            fix: fix.to_string(),
        };
        if !is_url(location) {
            return Self::local(Path::new(location), location);
        }
        let url = url::Url::parse(location)
            .map_err(|e| bad(format!("not a valid URL ({e})"), "write it as scheme://bucket/prefix"))?;
        let scheme = url.scheme();
        if scheme == "file" {
            let path = url
                .to_file_path()
                .map_err(|_| bad("not an absolute file path".into(), "write file:///absolute/path"))?;
            return Self::local(&path, location);
        }
        let key = url.path().trim_start_matches('/');
        let prefix = ObjPath::parse(key).map_err(|e| bad(format!("bad object key ({e})"), "remove empty or `..` segments"))?;
        let config_err = |e: object_store::Error| bad(e.to_string(), "check the credentials/endpoint environment variables");
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(location);
                for (k, v) in &options.overrides {
                    let key = k.parse().map_err(|_| bad(format!("unknown S3 option `{k}`"), "use object_store's aws_* keys"))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().map_err(config_err)?)
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(location);
                for (k, v) in &options.overrides {
                    let key = k.parse().map_err(|_| bad(format!("unknown GCS option `{k}`"), "use object_store's google_* keys"))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().map_err(config_err)?)
            }
            "az" | "azure" | "abfs" | "abfss" | "adl" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(location);
                for (k, v) in &options.overrides {
                    let key = k.parse().map_err(|_| bad(format!("unknown Azure option `{k}`"), "use object_store's azure_* keys"))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().map_err(config_err)?)
            }
            "hf" => {
                return Err(bad(
                    "hf:// is read-only here: the Hugging Face Hub serves dataset sources and models, not output or checkpoint locations".into(),
                    "use an hf:// or owner/name id as a `datasets.<name>.source` (or `model.base_model`), and a local path or s3://, gs://, az:// for outputs",
                ))
            }
            other => {
                return Err(bad(format!("unsupported scheme `{other}`"), "use a local path, file://, s3://, gs:// or az://"))
            }
        };
        Ok(Location { store, prefix, url: location.trim_end_matches('/').to_string(), local: None })
    }

    fn local(path: &Path, original: &str) -> Result<Location, StoreError> {
        let abs = std::path::absolute(path).map_err(|source| StoreError::Io { path: original.to_string(), source })?;
        let prefix = ObjPath::from_absolute_path(&abs).map_err(|e| StoreError::BadLocation {
            location: original.to_string(),
            reason: e.to_string(),
            fix: "use a plain path".into(),
        })?;
        Ok(Location {
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            prefix,
            url: abs.display().to_string(),
            local: Some(abs),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix inside the store (no leading or trailing slash).
    pub fn prefix(&self) -> &ObjPath {
        &self.prefix
    }

    /// The local directory, for local locations.
    pub fn local_path(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    /// The location as a URL or absolute path, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object path of `rel` (slash-separated) under the prefix.
    pub fn child(&self, rel: &str) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.child(part);
        }
        p
    }

    /// A sub-location `rel` below this one (same store).
    pub fn join(&self, rel: &str) -> Location {
        Location {
            store: self.store.clone(),
            prefix: self.child(rel),
            url: format!("{}/{}", self.url, rel.trim_matches('/')),
            local: self.local.as_ref().map(|l| l.join(rel)),
        }
    }

    /// The URL of `rel` under this location, for messages.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}/{}", self.url, rel)
    }

    pub(crate) fn os_err(&self, rel: &str, source: object_store::Error) -> StoreError {
        StoreError::ObjectStore { location: self.url_of(rel), source }
    }
}

/// Runs a future on the process's one runtime from synchronous code; see [`crate::runtime::block_on`].
pub use crate::runtime::block_on;

#[cfg(test)]
mod checkpoint_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_file_urls_are_local() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(loc.local_path(), Some(dir.path()));
        let url = format!("file://{}", dir.path().display());
        let loc2 = Location::parse(&url).unwrap();
        assert_eq!(loc2.local_path(), Some(dir.path()));
        assert!(!is_url("relative/path"));
        assert!(is_url("s3://bucket/x"));
    }

    #[test]
    fn s3_location_has_bucket_prefix() {
        let opts = StoreOptions {
            overrides: vec![
                ("aws_endpoint".into(), "http://127.0.0.1:9".into()),
                ("aws_allow_http".into(), "true".into()),
                ("aws_access_key_id".into(), "x".into()),
                ("aws_secret_access_key".into(), "y".into()),
                ("aws_region".into(), "us-east-1".into()),
            ],
        };
        let loc = Location::parse_with("s3://bucket/runs/a/", &opts).unwrap();
        assert_eq!(loc.prefix().as_ref(), "runs/a");
        assert_eq!(loc.child("checkpoint-1/manifest.json").as_ref(), "runs/a/checkpoint-1/manifest.json");
        assert!(loc.local_path().is_none());
    }

    #[test]
    fn unsupported_schemes_name_the_fix() {
        let e = Location::parse("hf://datasets/ltg/norquad").unwrap_err().to_string();
        assert!(e.contains("hf:// is read-only here") && e.contains("datasets.<name>.source"), "{e}");
        let e = Location::parse("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("unsupported scheme `ftp`") && e.contains("s3://"), "{e}");
        let e = Location::parse_with("s3://b/x", &StoreOptions { overrides: vec![("nonsense".into(), "1".into())] })
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown S3 option `nonsense`"), "{e}");
    }

    #[test]
    fn block_on_works_inside_and_outside_a_runtime() {
        assert_eq!(block_on(async { 1 + 1 }), 2);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(async { block_on(async { 3 }) }), 3);
    }
}

#[cfg(test)]
mod cloud_url_tests {
    use super::*;

    #[test]
    fn gs_and_az_urls_build_stores_with_prefixes() {
        let gs = Location::parse_with(
            "gs://bucket/runs/a",
            &StoreOptions { overrides: vec![("google_skip_signature".into(), "true".into())] },
        )
        .unwrap();
        assert_eq!(gs.prefix().as_ref(), "runs/a");
        let az = Location::parse_with(
            "az://container/runs/b",
            &StoreOptions {
                overrides: vec![
                    ("azure_storage_account_name".into(), "acct".into()),
                    ("azure_skip_signature".into(), "true".into()),
                ],
            },
        )
        .unwrap();
        assert_eq!(az.prefix().as_ref(), "runs/b");
    }
}

/// Copies every object under `location` (a model folder in object storage) into `local_dir`, keeping
/// relative paths, and returns how many files were copied. Used to resolve `model.base_model: s3://…`.
/// A prefix with no objects is an error naming the location.
pub async fn download_prefix(location: &Location, local_dir: &Path) -> Result<usize, StoreError> {
    use futures::StreamExt;
    let prefix = location.prefix().clone();
    let mut listed = location.store().list(Some(&prefix));
    let mut n = 0;
    while let Some(meta) = listed.next().await {
        let meta = meta.map_err(|e| location.os_err("", e))?;
        let key = meta.location.to_string();
        let rel = key.strip_prefix(prefix.as_ref()).unwrap_or(&key).trim_start_matches('/').to_string();
        if rel.is_empty() {
            continue;
        }
        let bytes = location.store().get(&meta.location).await.map_err(|e| location.os_err(&rel, e))?;
        let bytes = bytes.bytes().await.map_err(|e| location.os_err(&rel, e))?;
        let dest = local_dir.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Io { path: parent.display().to_string(), source: e })?;
        }
        std::fs::write(&dest, &bytes).map_err(|e| StoreError::Io { path: dest.display().to_string(), source: e })?;
        n += 1;
    }
    if n == 0 {
        return Err(StoreError::BadLocation {
            location: location.url().to_string(),
            reason: "no objects under this prefix".into(),
            fix: "point model.base_model at the folder that holds config.json and model.safetensors".into(),
        });
    }
    Ok(n)
}
