//! Turning `model.base_model` into a local folder: a path, a `file://` URL, an object-store URL
//! (`s3://`, `gs://`, `az://`; copied into a local cache), or a Hugging Face Hub id (`owner/name[@revision]`)
//! resolved through [`splade_common::hub::Hub`] and the standard HF cache (`HF_HOME`, `HF_HUB_CACHE`,
//! `HF_HUB_OFFLINE`, `HF_TOKEN`, `HF_ENDPOINT`).

use std::path::{Path, PathBuf};

use splade_common::hub::{Hub, HubError, HubRepo};

use super::ModelError;

/// Resolves `spec` to a local model folder, downloading when it is a Hub id that is not cached
/// and the Hub may be reached.
pub fn resolve_model(spec: &str) -> Result<PathBuf, ModelError> {
    if let Some(rest) = spec.strip_prefix("file://") {
        return local(Path::new(rest), spec);
    }
    if spec.contains("://") {
        return from_object_store(spec);
    }
    let p = Path::new(spec);
    if p.exists() || spec.starts_with('.') || spec.starts_with('/') || spec.matches('/').count() > 1 {
        return local(p, spec);
    }
    hub(spec)
}

/// Copies an object-store model folder into `$SPLADE_CACHE/remote-models/<hash of the URL>` (fresh
/// each time, so a changed remote folder is never served stale) and returns that folder.
fn from_object_store(spec: &str) -> Result<PathBuf, ModelError> {
    use sha2::{Digest, Sha256};
    let loc = splade_common::store::Location::parse(spec).map_err(|e| ModelError::Resolve(format!("model '{spec}': {e}")))?;
    let cache = std::env::var("SPLADE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache/splade"));
    let dir = cache.join("remote-models").join(hex::encode(&Sha256::digest(spec.as_bytes())[..8]));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| ModelError::Resolve(format!("model '{spec}': cannot create {}: {e}", dir.display())))?;
    splade_common::store::block_on(splade_common::store::download_prefix(&loc, &dir))
        .map_err(|e| ModelError::Resolve(format!("model '{spec}': {e}")))?;
    Ok(dir)
}

fn local(p: &Path, spec: &str) -> Result<PathBuf, ModelError> {
    if p.is_dir() {
        Ok(p.to_path_buf())
    } else {
        Err(ModelError::Resolve(format!(
            "model '{spec}': no such directory; pass a local model folder, an s3://, gs://, az:// or file:// URL, \
             or a Hugging Face Hub id such as naver/splade-v3"
        )))
    }
}

/// The snapshot folder of `repo_id` (at `main`) in the HF cache, if it is cached with a `config.json`.
pub fn cached_snapshot(repo_id: &str) -> Option<PathBuf> {
    let repo = Hub::from_env().with_offline(true).model(repo_id, None).ok()?;
    let snap = repo.snapshot_dir();
    snap.join("config.json").exists().then_some(snap)
}

/// Downloads (or, offline, finds in the cache) every file a model folder needs and returns the snapshot folder.
fn hub(spec: &str) -> Result<PathBuf, ModelError> {
    let (repo_id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (spec, None),
    };
    let err = |e: HubError| ModelError::Resolve(format!("model '{spec}': {e}"));
    let repo = Hub::from_env().model(repo_id, revision).map_err(err)?;
    let needed = needed_files(&repo).map_err(err)?;
    for f in &needed {
        repo.get(f).map_err(err)?;
    }
    tracing::info!(repo_id, commit = repo.commit, files = needed.len(), "Hub model resolved");
    Ok(repo.snapshot_dir())
}

/// Files of other frameworks or exports that a libtorch folder never reads.
fn unneeded(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let lower = name.to_ascii_lowercase();
    path.starts_with("onnx/")
        || path.contains("/onnx/")
        || path.starts_with("openvino/")
        || path.contains("/openvino/")
        || [".h5", ".msgpack", ".onnx", ".ot", ".tflite", ".mlmodel", ".gguf"].iter().any(|e| lower.ends_with(e))
        || lower == ".gitattributes"
}

/// What a model folder needs from the repo: the root's config, tokenizer, weights (safetensors preferred, a
/// sharded index with its shards, else `pytorch_model.bin`) and `*.py` remote code, plus every file of each folder
/// `modules.json` names and of each sub-folder a Router's `router_config.json` names (the inference-free
/// layout's `query_0_*` / `document_1_*`). A file named there but missing is an error, never skipped.
fn needed_files(repo: &HubRepo) -> Result<Vec<String>, HubError> {
    let files = repo.files();
    let has = |f: &str| files.iter().any(|x| x == f);
    let mut folders: Vec<String> = vec![String::new()];
    // Modules that keep no files (sentence-transformers' `Normalize`): their folder may be absent from the repo.
    let mut file_less: Vec<String> = Vec::new();
    if has("modules.json") {
        let p = repo.get("modules.json")?;
        let modules: serde_json::Value = read_json(&p)?;
        for m in modules.as_array().into_iter().flatten() {
            if let Some(path) = m["path"].as_str() {
                let path = path.trim_matches('/').to_string();
                if m["type"].as_str().is_some_and(|t| t.ends_with(".Normalize")) {
                    file_less.push(path.clone());
                }
                folders.push(path);
            }
        }
    }
    let mut routers = Vec::new();
    for f in folders.iter() {
        let rc = if f.is_empty() { "router_config.json".to_string() } else { format!("{f}/router_config.json") };
        if has(&rc) {
            let v = read_json(&repo.get(&rc)?)?;
            for sub in v["types"].as_object().into_iter().flat_map(|o| o.keys()) {
                routers.push(if f.is_empty() { sub.clone() } else { format!("{f}/{sub}") });
            }
        }
    }
    folders.extend(routers);
    folders.sort();
    folders.dedup();
    let mut out: Vec<String> = Vec::new();
    for folder in &folders {
        let prefix = if folder.is_empty() { String::new() } else { format!("{folder}/") };
        let direct: Vec<&String> = files
            .iter()
            .filter(|f| f.starts_with(&prefix) && (!folder.is_empty() || !f.contains('/')) && !unneeded(f))
            .collect();
        if !folder.is_empty() && direct.is_empty() && !file_less.contains(folder) {
            return Err(HubError::FileNotFound {
                kind: "model",
                repo_id: repo.repo_id.clone(),
                commit: repo.commit.clone(),
                path: format!("{folder}/ (named in modules.json / router_config.json)"),
                listing: files.iter().take(8).cloned().collect::<Vec<_>>().join(", "),
            });
        }
        // Each folder's weights: safetensors when there are any, else the torch pickle.
        let has_st = direct.iter().any(|f| f[prefix.len()..].ends_with(".safetensors"));
        for f in direct {
            let rel = &f[prefix.len()..];
            if has_st && (rel.ends_with(".bin") && rel.starts_with("pytorch_model")) {
                continue;
            }
            if rel.starts_with("pytorch_model") && rel.ends_with(".bin.index.json") && has_st {
                continue;
            }
            out.push(f.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn read_json(p: &Path) -> Result<serde_json::Value, HubError> {
    let text = std::fs::read_to_string(p).map_err(|e| HubError::Io { path: p.to_path_buf(), source: e })?;
    serde_json::from_str(&text).map_err(|e| HubError::Io {
        path: p.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not JSON: {e}")),
    })
}
