//! Hub caches for tests: writes a dataset or model repository into a cache folder in the layout
//! `huggingface_hub` writes (`blobs/<etag>` named by the file's sha256 for LFS files and its git blob sha1
//! otherwise, `snapshots/<commit>/<path>` as relative symlinks, `refs/<revision>` = commit), so
//! `Hub::with_cache_dir(..).with_offline(true)` and Python's `huggingface_hub` with `HF_HUB_OFFLINE=1` both
//! read it.

use std::path::Path;

use sha1::{Digest as _, Sha1};
use sha2::Sha256;

pub use crate::hub::RepoKind;

/// Extensions the Hub stores in LFS by default (the `.gitattributes` a new repo gets), so their etag is the
/// sha256 of the content.
const LFS_EXTENSIONS: &[&str] = &[
    "7z", "arrow", "bin", "bz2", "ckpt", "ftz", "gz", "h5", "joblib", "mlmodel", "model", "msgpack", "npy", "npz", "onnx",
    "ot", "parquet", "pb", "pickle", "pkl", "pt", "pth", "rar", "safetensors", "tflite", "tgz", "wasm", "xz", "zip",
    "zst",
];

/// The etag the Hub gives `path` with `content`: sha256 for LFS files, the git blob sha1 otherwise.
pub fn hub_etag(path: &str, content: &[u8]) -> String {
    let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    if LFS_EXTENSIONS.contains(&ext.as_str()) || content.len() > 10 * 1024 * 1024 {
        hex(&Sha256::digest(content))
    } else {
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", content.len()).as_bytes());
        h.update(content);
        hex(&h.finalize())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes repository `repo_id` of `kind` with `files` (repo-relative path, content) at revision `main` into
/// the hub cache `cache`; returns the commit id (a sha1 over the paths and etags, so equal content gives an
/// equal commit).
pub fn write_hub_repo(cache: &Path, kind: RepoKind, repo_id: &str, files: &[(String, Vec<u8>)]) -> String {
    write_hub_repo_at(cache, kind, repo_id, "main", files)
}

/// [`write_hub_repo`] at another revision (a branch, or `refs/convert/parquet`).
pub fn write_hub_repo_at(cache: &Path, kind: RepoKind, repo_id: &str, revision: &str, files: &[(String, Vec<u8>)]) -> String {
    let repo_dir = cache.join(kind.folder_name(repo_id));
    let mut entries: Vec<(String, String)> = files.iter().map(|(p, c)| (p.clone(), hub_etag(p, c))).collect();
    entries.sort();
    let mut h = Sha1::new();
    h.update(revision.as_bytes());
    for (p, e) in &entries {
        h.update(format!("{p}\0{e}\n").as_bytes());
    }
    let commit = hex(&h.finalize());
    std::fs::create_dir_all(repo_dir.join("blobs")).expect("create blobs");
    for (path, content) in files {
        let etag = hub_etag(path, content);
        std::fs::write(repo_dir.join("blobs").join(&etag), content).expect("write blob");
        crate::hub::link_snapshot(&repo_dir, &commit, path, &etag).expect("link snapshot");
    }
    let r = repo_dir.join("refs").join(revision);
    std::fs::create_dir_all(r.parent().expect("refs")).expect("create refs");
    std::fs::write(r, &commit).expect("write ref");
    commit
}

/// The files under `dir` (recursively) as `(repo-relative path, content)`, for [`write_hub_repo`].
pub fn files_of_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).expect("read dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            if e.path().is_dir() {
                walk(&e.path(), &rel, out);
            } else {
                out.push((rel, std::fs::read(e.path()).expect("read file")));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}
