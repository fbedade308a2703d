//! Hub caches for tests: writes a dataset or model repository into a cache folder in the layout
//! `huggingface_hub` writes (`blobs/<etag>` named by the file's sha256 for LFS files and its git blob sha1
//! otherwise, `snapshots/<commit>/<path>` as relative symlinks, `refs/<revision>` = commit), so
//! `Hub::with_cache_dir(..).with_offline(true)` and Python's `huggingface_hub` with `HF_HUB_OFFLINE=1` both
//! read it.

use std::path::Path;

use sha1::{Digest as _, Sha1};
use sha2::Sha256;

pub use splade_common::hub::RepoKind;

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
        splade_common::hub::link_snapshot(&repo_dir, &commit, path, &etag).expect("link snapshot");
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

/// One repository a [`LoopbackHub`] serves at one commit (`main` resolves to it).
#[derive(Debug, Clone)]
pub struct HostedRepo {
    /// Model or dataset.
    pub kind: RepoKind,
    /// `owner/name`; under `gated-org/` it is refused without `Authorization: Bearer good-token`.
    pub repo_id: String,
    /// The commit `revision` resolves to.
    pub commit: String,
    /// The branch this entry serves (`main`; `refs/convert/parquet` for a dataset's Parquet conversion, served
    /// as a second entry of the same repo id).
    pub revision: String,
    /// Repo-relative path and content.
    pub files: Vec<(String, Vec<u8>)>,
    /// Files listed by the API whose download answers HTTP 500 (a broken download).
    pub failing: Vec<String>,
}

impl HostedRepo {
    /// A repo with these files and no failing download.
    pub fn new(kind: RepoKind, repo_id: &str, commit: &str, files: Vec<(String, Vec<u8>)>) -> HostedRepo {
        HostedRepo { kind, repo_id: repo_id.into(), commit: commit.into(), revision: "main".into(), files, failing: Vec::new() }
    }

    /// The same repo's branch `revision` (e.g. `refs/convert/parquet`) at `commit` with `files`.
    pub fn at_revision(mut self, revision: &str) -> HostedRepo {
        self.revision = revision.into();
        self
    }
}

/// A Hub on 127.0.0.1 speaking the HTTP API `huggingface_hub` uses: revision info
/// (`/api/{models,datasets}/<id>/revision/<rev>`), the tree listing newer clients use, and
/// `…/resolve/<rev>/<path>` with `X-Repo-Commit` and `ETag`; LFS files (see [`hub_etag`]) answer with
/// `X-Linked-Etag` and a redirect to a "CDN" on another host name (`localhost`). Errors carry the Hub's
/// `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`). The real Hub cannot be
/// reached from tests; the real Python client accepts this one (common/tests/hub.rs), so ours is tested
/// against the protocol the real client speaks. Stops when dropped.
pub struct LoopbackHub {
    server: std::sync::Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// `http://127.0.0.1:<port>`: the `HF_ENDPOINT`.
    pub url: String,
}

impl LoopbackHub {
    /// Serves `repos` until dropped.
    pub fn start(repos: Vec<HostedRepo>) -> LoopbackHub {
        let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind loopback"));
        let url = format!("http://{}", server.server_addr().to_ip().expect("ip listener"));
        let (srv, base) = (server.clone(), url.clone());
        let thread = std::thread::spawn(move || {
            for req in srv.incoming_requests() {
                let resp = answer(&base, &repos, &req);
                let _ = req.respond(resp);
            }
        });
        LoopbackHub { server, thread: Some(thread), url }
    }
}

impl Drop for LoopbackHub {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(base: &str, repos: &[HostedRepo], req: &tiny_http::Request) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let h = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("header");
    let path = req.url().split('?').next().unwrap_or("").to_string();
    // tiny_http sends no body to a HEAD request but keeps the Content-Length of the data, as the Hub does.
    let body = |b: Vec<u8>| b;
    let authorized = req.headers().iter().any(|x| x.field.equiv("authorization") && x.value.as_str() == "Bearer good-token");
    let status = |code: u16, error_code: &str| {
        tiny_http::Response::from_data(Vec::new()).with_status_code(code).with_header(h("X-Error-Code", error_code))
    };
    let json = |v: serde_json::Value| {
        tiny_http::Response::from_data(body(v.to_string().into_bytes())).with_header(h("Content-Type", "application/json"))
    };
    if let Some(hash) = path.strip_prefix("/cdn/") {
        for r in repos {
            if let Some((_, c)) = r.files.iter().find(|(p, c)| hub_etag(p, c) == hash) {
                return tiny_http::Response::from_data(body(c.clone()));
            }
        }
        return status(404, "EntryNotFound");
    }
    for r in repos {
        let (api, files_prefix) = match r.kind {
            RepoKind::Model => (format!("/api/models/{}/", r.repo_id), format!("/{}/resolve/", r.repo_id)),
            RepoKind::Dataset => (format!("/api/datasets/{}/", r.repo_id), format!("/datasets/{}/resolve/", r.repo_id)),
        };
        // Revisions arrive percent-encoded (`refs%2Fconvert%2Fparquet`).
        let rev_ok = |rev: &str| {
            let rev = rev.replace("%2F", "/").replace("%2f", "/");
            rev == r.revision || rev == r.commit
        };
        let mine = path.starts_with(&api) || path.starts_with(&files_prefix);
        if !mine {
            continue;
        }
        // Another entry of the same repo may serve this revision.
        let asked = path
            .strip_prefix(&api)
            .and_then(|rest| rest.strip_prefix("revision/").or_else(|| rest.strip_prefix("tree/")))
            .map(|r| r.split('/').next().unwrap_or(r))
            .or_else(|| path.strip_prefix(&files_prefix).and_then(|rest| rest.split('/').next()));
        if asked.is_some_and(|a| !rev_ok(a))
            && repos.iter().any(|o| o.repo_id == r.repo_id && o.kind == r.kind && !std::ptr::eq(o, r) && {
                let a = asked.unwrap().replace("%2F", "/").replace("%2f", "/");
                a == o.revision || a == o.commit
            })
        {
            continue;
        }
        if r.repo_id.starts_with("gated-org/") && !authorized {
            return status(401, "GatedRepo");
        }
        if let Some(rest) = path.strip_prefix(&api) {
            if let Some(rev) = rest.strip_prefix("revision/") {
                if !rev_ok(rev) {
                    return status(404, "RevisionNotFound");
                }
                let siblings: Vec<serde_json::Value> = r.files.iter().map(|(p, _)| serde_json::json!({"rfilename": p})).collect();
                return json(serde_json::json!({"id": r.repo_id, "sha": r.commit, "siblings": siblings}));
            }
            if let Some(rev) = rest.strip_prefix("tree/") {
                if !rev_ok(rev) {
                    return status(404, "RevisionNotFound");
                }
                let entries: Vec<serde_json::Value> = r
                    .files
                    .iter()
                    .map(|(p, c)| {
                        let etag = hub_etag(p, c);
                        let mut e = serde_json::json!({"type": "file", "path": p, "size": c.len(), "oid": etag});
                        if etag.len() == 64 {
                            e["oid"] = "0000000000000000000000000000000000000000".into();
                            e["lfs"] = serde_json::json!({"oid": etag, "size": c.len(), "pointerSize": 130});
                        }
                        e
                    })
                    .collect();
                return json(serde_json::Value::Array(entries));
            }
        }
        if let Some(rest) = path.strip_prefix(&files_prefix) {
            let Some((rev, file)) = rest.split_once('/') else { return status(404, "EntryNotFound") };
            if !rev_ok(rev) {
                return status(404, "RevisionNotFound");
            }
            if r.failing.iter().any(|f| f == file) {
                return tiny_http::Response::from_data(b"internal error".to_vec()).with_status_code(500);
            }
            let Some((p, c)) = r.files.iter().find(|(p, _)| p == file) else { return status(404, "EntryNotFound") };
            let etag = hub_etag(p, c);
            if etag.len() == 64 {
                // LFS: the file's etag is X-Linked-Etag, its bytes on the CDN (another host name).
                return tiny_http::Response::from_data(Vec::new())
                    .with_status_code(302)
                    .with_header(h("X-Repo-Commit", &r.commit))
                    .with_header(h("ETag", "\"0000000000000000000000000000000000000000\""))
                    .with_header(h("X-Linked-Etag", &format!("\"{etag}\"")))
                    .with_header(h("X-Linked-Size", &c.len().to_string()))
                    .with_header(h("Location", &format!("{}/cdn/{etag}", base.replace("127.0.0.1", "localhost"))));
            }
            return tiny_http::Response::from_data(body(c.clone()))
                .with_header(h("X-Repo-Commit", &r.commit))
                .with_header(h("ETag", &format!("\"{etag}\"")));
        }
    }
    status(404, "RepoNotFound")
}
