//! The three Hub HTTP calls we need, as `huggingface_hub` makes them: the revision info
//! (`/api/{datasets/}owner/name/revision/{rev}`: commit and file list), a file's metadata (`HEAD …/resolve/{commit}/{path}`
//! without following absolute redirects: `X-Repo-Commit`, `X-Linked-Etag`/`ETag`, the CDN `Location`) and the
//! download itself into `blobs/<etag>`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use super::{Hub, HubError, HubRepo, RepoKind};

/// Marks transport failures (no HTTP answer at all) in [`HubError::Http`] messages.
const TRANSPORT: &str = "no answer: ";

/// True for a [`HubError::Http`] message of a request that got no HTTP answer (network down, DNS).
pub(super) fn is_transport(message: &str) -> bool {
    message.starts_with(TRANSPORT)
}

/// Characters escaped in one path segment (and in a revision, where `/` is escaped too).
const SEGMENT: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?').add(b'`').add(b'{').add(b'}').add(b'/');

fn agent(redirects: u32) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(redirects)
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(300)))
        .user_agent(concat!("splade-rs/", env!("CARGO_PKG_VERSION"), "; hf_hub-compatible"))
        .build()
        .into()
}

fn url_prefix(kind: RepoKind) -> &'static str {
    match kind {
        RepoKind::Model => "",
        RepoKind::Dataset => "datasets/",
    }
}

fn page(hub: &Hub, kind: RepoKind, repo_id: &str) -> String {
    format!("{}/{}{repo_id}", hub.endpoint, url_prefix(kind))
}

fn with_token<B>(hub: &Hub, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    match &hub.token {
        Some(t) => req.header("authorization", format!("Bearer {t}")),
        None => req,
    }
}

fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

struct Ctx<'a> {
    hub: &'a Hub,
    kind: RepoKind,
    repo_id: &'a str,
    revision: &'a str,
}

impl Ctx<'_> {
    fn transport(&self, url: &str, e: impl std::fmt::Display) -> HubError {
        HubError::Http { kind: self.kind.name(), repo_id: self.repo_id.into(), url: url.into(), message: format!("{TRANSPORT}{e}") }
    }

    /// Maps an HTTP error status the way `huggingface_hub.utils.hf_raise_for_status` does (`X-Error-Code`
    /// first, then the status).
    fn status(&self, url: &str, resp: &mut ureq::http::Response<ureq::Body>, path: Option<&str>, files: &[String]) -> HubError {
        let status = resp.status().as_u16();
        let code = header(resp, "x-error-code").unwrap_or("").to_string();
        let name = self.kind.name();
        match (code.as_str(), status) {
            ("GatedRepo", _) | ("", 401 | 403) | (_, 403) => HubError::Gated {
                kind: name,
                repo_id: self.repo_id.into(),
                status,
                url: url.into(),
                page: page(self.hub, self.kind, self.repo_id),
            },
            ("EntryNotFound", _) => HubError::FileNotFound {
                kind: name,
                repo_id: self.repo_id.into(),
                commit: self.revision.into(),
                path: path.unwrap_or("").into(),
                listing: files.iter().take(8).cloned().collect::<Vec<_>>().join(", "),
            },
            ("RepoNotFound" | "RevisionNotFound", _) | (_, 401 | 404) => HubError::RepoNotFound {
                kind: name,
                repo_id: self.repo_id.into(),
                revision: self.revision.into(),
                endpoint: self.hub.endpoint.clone(),
            },
            _ => {
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                HubError::Http {
                    kind: name,
                    repo_id: self.repo_id.into(),
                    url: url.into(),
                    message: format!("HTTP {status} {}", body.chars().take(200).collect::<String>()),
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct RevisionInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(serde::Deserialize)]
struct Sibling {
    rfilename: String,
}

/// The commit `revision` resolves to and the repo's files at that commit.
pub(super) fn revision_info(hub: &Hub, kind: RepoKind, repo_id: &str, revision: &str) -> Result<(String, Vec<String>), HubError> {
    let ctx = Ctx { hub, kind, repo_id, revision };
    let plural = match kind {
        RepoKind::Model => "models",
        RepoKind::Dataset => "datasets",
    };
    let url = format!("{}/api/{plural}/{repo_id}/revision/{}", hub.endpoint, utf8_percent_encode(revision, SEGMENT));
    let mut resp = with_token(hub, agent(10).get(&url)).call().map_err(|e| ctx.transport(&url, e))?;
    if !resp.status().is_success() {
        return Err(ctx.status(&url, &mut resp, None, &[]));
    }
    let text = resp.body_mut().read_to_string().map_err(|e| ctx.transport(&url, e))?;
    let info: RevisionInfo = serde_json::from_str(&text).map_err(|e| HubError::Http {
        kind: kind.name(),
        repo_id: repo_id.into(),
        url: url.clone(),
        message: format!("unexpected answer ({e}); is HF_ENDPOINT a Hugging Face Hub?"),
    })?;
    let mut files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    files.sort();
    Ok((info.sha, files))
}

/// `huggingface_hub.file_download._normalize_etag`.
fn normalize_etag(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

/// Downloads `path` of `repo` at its commit into `blobs/<etag>` and links `snapshots/<commit>/<path>` to it.
pub(super) fn download(repo: &HubRepo, path: &str) -> Result<(), HubError> {
    let hub = &repo.hub;
    let ctx = Ctx { hub, kind: repo.kind, repo_id: &repo.repo_id, revision: &repo.commit };
    let encoded: Vec<String> = path.split('/').map(|s| utf8_percent_encode(s, SEGMENT).to_string()).collect();
    let mut url = format!("{}/{}{}/resolve/{}/{}", hub.endpoint, url_prefix(repo.kind), repo.repo_id, repo.commit, encoded.join("/"));
    // HEAD without following redirects; relative ones (renamed repos) are followed by hand, as huggingface_hub does.
    let no_redirect = agent(0);
    let mut hops = 0;
    let (etag, download_url) = loop {
        let mut resp = with_token(hub, no_redirect.head(&url)).call().map_err(|e| ctx.transport(&url, e))?;
        let status = resp.status().as_u16();
        let location = header(&resp, "location").map(str::to_string);
        if (300..400).contains(&status) {
            let Some(loc) = location else {
                return Err(ctx.status(&url, &mut resp, Some(path), &repo.files));
            };
            if loc.starts_with('/') && hops < 5 {
                hops += 1;
                let origin = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
                url = format!("{origin}{loc}");
                continue;
            }
            let etag = header(&resp, "x-linked-etag").or_else(|| header(&resp, "etag")).map(normalize_etag);
            break (etag, loc);
        }
        if !resp.status().is_success() {
            return Err(ctx.status(&url, &mut resp, Some(path), &repo.files));
        }
        let etag = header(&resp, "x-linked-etag").or_else(|| header(&resp, "etag")).map(normalize_etag);
        break (etag, url.clone());
    };
    let etag = etag.filter(|e| !e.is_empty()).ok_or_else(|| HubError::Http {
        kind: repo.kind.name(),
        repo_id: repo.repo_id.clone(),
        url: url.clone(),
        message: "the answer has no ETag; is HF_ENDPOINT a Hugging Face Hub?".into(),
    })?;
    let blobs = repo.repo_dir().join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| HubError::io(&blobs, e))?;
    let blob = blobs.join(&etag);
    if !blob.exists() {
        let tmp = blobs.join(format!("{etag}.incomplete"));
        // The CDN gets no token (ureq drops Authorization on redirects to another host, as requests does).
        let is_hub = download_url.starts_with(&hub.endpoint);
        let req = agent(10).get(&download_url);
        let req = if is_hub { with_token(hub, req) } else { req };
        let mut resp = req.call().map_err(|e| ctx.transport(&download_url, e))?;
        if !resp.status().is_success() {
            return Err(ctx.status(&download_url, &mut resp, Some(path), &repo.files));
        }
        let mut out = std::fs::File::create(&tmp).map_err(|e| HubError::io(&tmp, e))?;
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut reader, &mut out).map_err(|e| ctx.transport(&download_url, e))?;
        out.flush().map_err(|e| HubError::io(&tmp, e))?;
        drop(out);
        std::fs::rename(&tmp, &blob).map_err(|e| HubError::io(&blob, e))?;
    }
    link_snapshot(&repo.repo_dir(), &repo.commit, path, &etag)?;
    repo.write_ref()
}

/// Links `snapshots/<commit>/<path>` to `blobs/<etag>` with a relative symlink, as huggingface_hub does.
pub fn link_snapshot(repo_dir: &Path, commit: &str, path: &str, etag: &str) -> Result<PathBuf, HubError> {
    let pointer = repo_dir.join("snapshots").join(commit).join(path);
    let parent = pointer.parent().expect("a snapshot file has a parent");
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    let depth = path.split('/').count() + 1; // <path's folders>/ + <commit>/ + snapshots/
    let target: PathBuf = std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(etag);
    let _ = std::fs::remove_file(&pointer);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, &pointer).map_err(|e| HubError::io(&pointer, e))?;
    #[cfg(not(unix))]
    std::fs::copy(repo_dir.join("blobs").join(etag), &pointer).map_err(|e| HubError::io(&pointer, e))?;
    Ok(pointer)
}
