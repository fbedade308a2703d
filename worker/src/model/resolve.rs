//! Turning `model.base_model` into a local folder: a path, a `file://` URL, an object-store URL
//! (`s3://`, `gs://`, `az://`; copied into a local cache), or a Hugging Face Hub id resolved through
//! the standard HF cache (`HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`).

use std::path::{Path, PathBuf};

use super::ModelError;

/// Files a SPLADE folder may hold; downloaded from the Hub when present there.
const HUB_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "1_SpladePooling/config.json",
];

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

fn hub_cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("HF_HOME") {
        return PathBuf::from(d).join("hub");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/huggingface/hub")
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").map(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes")).unwrap_or(false)
}

/// The snapshot folder of `repo_id` in the HF cache (layout shared with huggingface_hub), if any.
pub fn cached_snapshot(repo_id: &str) -> Option<PathBuf> {
    let repo_dir = hub_cache_dir().join(format!("models--{}", repo_id.replace('/', "--")));
    let rev = std::fs::read_to_string(repo_dir.join("refs/main")).ok()?;
    let snap = repo_dir.join("snapshots").join(rev.trim());
    snap.join("config.json").exists().then_some(snap)
}

fn hub(repo_id: &str) -> Result<PathBuf, ModelError> {
    if let Some(snap) = cached_snapshot(repo_id) {
        return Ok(snap);
    }
    if offline() {
        return Err(ModelError::Resolve(format!(
            "model '{repo_id}' is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; download it once \
             with network access (unset HF_HUB_OFFLINE, or `huggingface-cli download {repo_id}`), or point \
             base_model at a local folder",
            hub_cache_dir().display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(hub_cache_dir())
        .with_progress(false)
        .build()
        .map_err(|e| ModelError::Resolve(format!("model '{repo_id}': cannot set up the Hub client: {e}")))?;
    let repo = api.model(repo_id.to_string());
    let mut dir = None;
    for f in HUB_FILES {
        match repo.get(f) {
            Ok(p) => {
                if *f == "config.json" {
                    dir = p.parent().map(Path::to_path_buf);
                }
            }
            Err(e) if matches!(*f, "config.json" | "model.safetensors" | "tokenizer.json") => {
                return Err(ModelError::Resolve(format!(
                    "model '{repo_id}': cannot download {f} from the Hugging Face Hub ({e}); check the id and your \
                     network, or set HF_TOKEN for a private model"
                )))
            }
            Err(_) => {}
        }
    }
    dir.ok_or_else(|| ModelError::Resolve(format!("model '{repo_id}': the Hub returned no config.json")))
}
