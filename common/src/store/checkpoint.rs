//! The checkpoint commit protocol, the same for every store.
//!
//! A checkpoint `NAME` under a location is the folder/prefix `location/NAME/`. It **exists iff
//! `location/NAME/manifest.json` exists and every file it lists has the listed size and sha256**. The manifest is
//! always written last:
//! - object stores: every file is uploaded under the final prefix first (each object appears atomically), then
//!   the manifest with a create-only conditional put (`PutMode::Create`; where the store lacks it, a plain put
//!   with a logged note). A crash before the manifest leaves files that no reader treats as a checkpoint.
//! - local disk: files are copied into a temporary sibling folder, fsynced, the manifest written and fsynced
//!   there, then the folder is renamed into place and the parent fsynced. When the files already sit in the final
//!   folder (the trainer wrote them there), only the manifest is written: temp file, fsync, rename.
//!
//! Deleting ([`prune`]) removes the manifest first, so a half-deleted checkpoint is never picked.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Location, StoreError};

/// The manifest's file name inside a checkpoint.
pub const MANIFEST_NAME: &str = "manifest.json";
const FORMAT: &str = "splade-checkpoint/1";
const TMP_PREFIX: &str = ".tmp-";

/// What `manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `splade-checkpoint/1`.
    pub format: String,
    /// The checkpoint's name (its folder), e.g. `checkpoint-20`.
    pub name: String,
    /// The optimizer step it was taken after.
    pub step: u64,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Every file, sorted by path.
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// sha256 (lower-case hex) of the manifest's pretty JSON: the digest a worker announces for a committed
    /// checkpoint and the coordinator checks it against (one definition for both sides).
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(serde_json::to_vec_pretty(self).expect("a manifest serializes")))
    }
}

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Slash-separated, relative to the checkpoint folder.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
}

/// A committed checkpoint, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// e.g. `checkpoint-20`.
    pub name: String,
    /// Its step.
    pub step: u64,
    /// The checkpoint's URL or absolute path.
    pub url: String,
    /// Its manifest.
    pub manifest: Manifest,
}

/// How thoroughly to check a checkpoint's files against its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Existence and size of every file (metadata only: cheap on object stores).
    Sizes,
    /// Size and sha256 of every file (reads every byte).
    Full,
}

fn now() -> (String, u64) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    (rfc3339(secs), secs)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io { path: path.display().to_string(), source }
}

/// Files under `dir`, relative and slash-separated, sorted; `manifest.json` at the top level is left out.
fn local_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), StoreError> {
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let path = entry.path();
            let ty = entry.file_type().map_err(|e| io_err(&path, e))?;
            if ty.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                if rel != MANIFEST_NAME {
                    out.push((rel, path));
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn hash_local(path: &Path) -> Result<(u64, String), StoreError> {
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    // Directories can be opened read-only and fsynced on Unix; that makes renames inside them durable.
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| io_err(dir, e))
}

fn write_durable(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut f = std::fs::File::create(path).map_err(|e| io_err(path, e))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(|e| io_err(path, e))
}

fn temp_name(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{TMP_PREFIX}{name}-{}-{nanos}", std::process::id())
}

fn check_name(loc: &Location, name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(StoreError::BadLocation {
            location: loc.url_of(name),
            reason: format!("`{name}` is not a valid checkpoint name"),
            fix: "use a single folder name such as checkpoint-20".into(),
        });
    }
    Ok(())
}

/// Commits the files under `local_dir` as checkpoint `name` (taken after `step`) under `location`, with the
/// protocol described in the module docs. Committing the same contents twice is a no-op; committing different
/// contents under a committed name is [`StoreError::AlreadyCommitted`].
pub async fn commit_checkpoint(
    location: &Location,
    name: &str,
    step: u64,
    local_dir: &Path,
) -> Result<CheckpointInfo, StoreError> {
    check_name(location, name)?;
    let files = local_files(local_dir)?;
    let mut entries = Vec::with_capacity(files.len());
    for (rel, path) in &files {
        let (size, sha256) = hash_local(path)?;
        entries.push(ManifestFile { path: rel.clone(), size, sha256 });
    }
    let (created, created_unix) = now();
    let manifest = Manifest { format: FORMAT.into(), name: name.into(), step, created, created_unix, files: entries };
    let body = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");

    // A committed checkpoint of this name with the same files makes this a no-op.
    if let Ok(existing) = read_manifest(location, name).await {
        if existing.files == manifest.files {
            return Ok(info(location, existing));
        }
        if location.local_path().is_none() {
            return Err(StoreError::AlreadyCommitted { location: location.url().into(), name: name.into() });
        }
    }

    match location.local_path() {
        Some(root) => commit_local(root, name, local_dir, &files, &body, location)?,
        None => commit_remote(location, name, &files, body).await?,
    }
    Ok(info(location, manifest))
}

fn commit_local(
    root: &Path,
    name: &str,
    local_dir: &Path,
    files: &[(String, PathBuf)],
    manifest: &[u8],
    location: &Location,
) -> Result<(), StoreError> {
    std::fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
    let dest = root.join(name);
    let same = match (dest.canonicalize(), local_dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        // The files are already in place: only the manifest needs an atomic write.
        let tmp = dest.join(temp_name(MANIFEST_NAME));
        write_durable(&tmp, manifest)?;
        for (_, path) in files {
            std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| io_err(path, e))?;
        }
        std::fs::rename(&tmp, dest.join(MANIFEST_NAME)).map_err(|e| io_err(&dest, e))?;
        return fsync_dir(&dest);
    }
    if dest.exists() {
        // A different committed checkpoint, or leftovers of a crashed commit: refuse the first, clear the second.
        if dest.join(MANIFEST_NAME).exists() {
            return Err(StoreError::AlreadyCommitted { location: location.url().into(), name: name.into() });
        }
        std::fs::remove_dir_all(&dest).map_err(|e| io_err(&dest, e))?;
    }
    let tmp = root.join(temp_name(name));
    let staged = (|| {
        for (rel, src) in files {
            let target = tmp.join(rel);
            let parent = target.parent().expect("has parent");
            std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
            // The error names the file being written (a full disk is the destination's problem).
            std::fs::copy(src, &target).map_err(|e| io_err(&target, e))?;
            std::fs::File::open(&target).and_then(|f| f.sync_all()).map_err(|e| io_err(&target, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        write_durable(&tmp.join(MANIFEST_NAME), manifest)?;
        let mut dirs: Vec<PathBuf> = files.iter().filter_map(|(rel, _)| tmp.join(rel).parent().map(Path::to_path_buf)).collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            fsync_dir(&d)?;
        }
        fsync_dir(&tmp)
    })();
    if let Err(e) = staged {
        // A write failed part-way (a full disk): the staging folder was never a checkpoint (no name a resume
        // lists); remove it so it does not hold the space either.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dest).map_err(|e| io_err(&dest, e))?;
    fsync_dir(root)
}

async fn commit_remote(
    location: &Location,
    name: &str,
    files: &[(String, PathBuf)],
    manifest: Vec<u8>,
) -> Result<(), StoreError> {
    let store = location.store().clone();
    if let Err(e) = upload_files(location, name, files).await {
        // The store refused a write part-way: nothing is committed (no manifest); the objects already
        // written are removed (best effort) so they neither linger nor confuse a retry.
        for (rel, _) in files {
            let _ = store.delete(&location.child(&format!("{name}/{rel}"))).await;
        }
        return Err(e);
    }
    let key = format!("{name}/{MANIFEST_NAME}");
    let obj = location.child(&key);
    let payload = PutPayload::from(manifest.clone());
    let create = PutOptions { mode: PutMode::Create, ..Default::default() };
    match store.put_opts(&obj, payload, create).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::NotImplemented) => {
            tracing::warn!(
                checkpoint = %location.url_of(name),
                "store has no create-only conditional put; writing the manifest with a plain put (concurrent writers of the same checkpoint could overwrite each other)"
            );
            store.put(&obj, PutPayload::from(manifest)).await.map_err(|e| location.os_err(&key, e))?;
            Ok(())
        }
        Err(object_store::Error::AlreadyExists { .. }) => {
            // Someone committed the same name between our check and now: fine only if it is the same content.
            let existing = read_manifest(location, name).await?;
            let ours: Manifest = serde_json::from_slice(&manifest).expect("own manifest parses");
            if existing.files == ours.files {
                Ok(())
            } else {
                Err(StoreError::AlreadyCommitted { location: location.url().into(), name: name.into() })
            }
        }
        Err(e) => Err(location.os_err(&key, e)),
    }
}

/// Uploads a checkpoint's files (not its manifest) under `name/`.
async fn upload_files(location: &Location, name: &str, files: &[(String, PathBuf)]) -> Result<(), StoreError> {
    let store = location.store().clone();
    for (rel, src) in files {
        let key = format!("{name}/{rel}");
        let obj = location.child(&key);
        // BufWriter switches to a multipart upload above its buffer size, so large weights stream.
        let mut writer = object_store::buffered::BufWriter::new(store.clone(), obj);
        let mut f = std::fs::File::open(src).map_err(|e| io_err(src, e))?;
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| io_err(src, e))?;
            if n == 0 {
                break;
            }
            writer.put(Bytes::copy_from_slice(&buf[..n])).await.map_err(|e| location.os_err(&key, e))?;
        }
        writer.shutdown().await.map_err(|e| StoreError::Io { path: location.url_of(&key), source: e })?;
    }
    Ok(())
}

fn info(location: &Location, manifest: Manifest) -> CheckpointInfo {
    CheckpointInfo { name: manifest.name.clone(), step: manifest.step, url: location.url_of(&manifest.name), manifest }
}

async fn read_manifest(location: &Location, name: &str) -> Result<Manifest, StoreError> {
    let key = format!("{name}/{MANIFEST_NAME}");
    let bytes = match location.local_path() {
        Some(root) => {
            let p = root.join(name).join(MANIFEST_NAME);
            match std::fs::read(&p) {
                Ok(b) => Bytes::from(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound { location: location.url().into(), name: name.into() })
                }
                Err(e) => return Err(io_err(&p, e)),
            }
        }
        None => match location.store().get(&location.child(&key)).await {
            Ok(r) => r.bytes().await.map_err(|e| location.os_err(&key, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::NotFound { location: location.url().into(), name: name.into() })
            }
            Err(e) => return Err(location.os_err(&key, e)),
        },
    };
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Manifest { location: location.url_of(&key), reason: e.to_string() })?;
    if m.format != FORMAT || m.name != name {
        return Err(StoreError::Manifest {
            location: location.url_of(&key),
            reason: format!("format `{}` name `{}`, expected `{FORMAT}` and `{name}`", m.format, m.name),
        });
    }
    if m.files.iter().any(|f| f.path.split('/').any(|s| s.is_empty() || s == "." || s == "..")) {
        return Err(StoreError::Manifest { location: location.url_of(&key), reason: "a file path escapes the checkpoint".into() });
    }
    Ok(m)
}

/// Checks every file of committed checkpoint `name` against its manifest.
pub async fn verify_checkpoint(location: &Location, name: &str, how: Verify) -> Result<CheckpointInfo, StoreError> {
    let manifest = read_manifest(location, name).await?;
    let ckpt = location.url_of(name);
    let fail = |file: &str, reason: String| StoreError::Verify { checkpoint: ckpt.clone(), file: file.into(), reason };
    for f in &manifest.files {
        let key = format!("{name}/{}", f.path);
        match location.local_path() {
            Some(root) => {
                let p = root.join(name).join(&f.path);
                let meta = std::fs::metadata(&p).map_err(|_| fail(&f.path, "missing".into()))?;
                if meta.len() != f.size {
                    return Err(fail(&f.path, format!("size {} but the manifest says {}", meta.len(), f.size)));
                }
                if how == Verify::Full {
                    let (_, sha) = hash_local(&p)?;
                    if sha != f.sha256 {
                        return Err(fail(&f.path, format!("sha256 {sha} but the manifest says {}", f.sha256)));
                    }
                }
            }
            None => {
                let obj = location.child(&key);
                match how {
                    Verify::Sizes => {
                        let meta = match location.store().head(&obj).await {
                            Ok(m) => m,
                            Err(object_store::Error::NotFound { .. }) => return Err(fail(&f.path, "missing".into())),
                            Err(e) => return Err(location.os_err(&key, e)),
                        };
                        if meta.size != f.size {
                            return Err(fail(&f.path, format!("size {} but the manifest says {}", meta.size, f.size)));
                        }
                    }
                    Verify::Full => {
                        let (size, sha) = remote_stream(location, &key, None).await.map_err(|e| match e {
                            StoreError::ObjectStore { source: object_store::Error::NotFound { .. }, .. } => {
                                fail(&f.path, "missing".into())
                            }
                            e => e,
                        })?;
                        if size != f.size || sha != f.sha256 {
                            return Err(fail(
                                &f.path,
                                format!("size {size} sha256 {sha} but the manifest says size {} sha256 {}", f.size, f.sha256),
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(info(location, manifest))
}

/// Streams object `key`, hashing it, optionally writing it to `to`. Returns (size, sha256).
async fn remote_stream(location: &Location, key: &str, mut to: Option<&mut std::fs::File>) -> Result<(u64, String), StoreError> {
    let got = location.store().get(&location.child(key)).await.map_err(|e| location.os_err(key, e))?;
    let mut stream = got.into_stream();
    let mut h = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| location.os_err(key, e))?;
        h.update(&chunk);
        size += chunk.len() as u64;
        if let Some(f) = to.as_deref_mut() {
            f.write_all(&chunk).map_err(|e| StoreError::Io { path: location.url_of(key), source: e })?;
        }
    }
    Ok((size, hex(&h.finalize())))
}

/// Names of the folders/prefixes directly under `location` that hold a manifest (committed or being deleted).
async fn manifest_names(location: &Location) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    match location.local_path() {
        Some(root) => {
            let rd = match std::fs::read_dir(root) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
                Err(e) => return Err(io_err(root, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| io_err(root, e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if !name.starts_with('.') && entry.path().join(MANIFEST_NAME).is_file() {
                    names.push(name);
                }
            }
        }
        None => {
            let listing = location
                .store()
                .list_with_delimiter(Some(location.prefix()))
                .await
                .map_err(|e| location.os_err("", e))?;
            for p in listing.common_prefixes {
                let Some(name) = p.filename().map(str::to_string) else { continue };
                if name.starts_with('.') {
                    continue;
                }
                let key = format!("{name}/{MANIFEST_NAME}");
                match location.store().head(&location.child(&key)).await {
                    Ok(_) => names.push(name),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(location.os_err(&key, e)),
                }
            }
        }
    }
    Ok(names)
}

/// Committed checkpoints under `location` whose every file verifies fully (sha256), sorted by step then name.
/// Reads every byte of every checkpoint; prefer [`latest_checkpoint`] or [`list_checkpoints_with`] with
/// [`Verify::Sizes`] on large object-store checkpoints.
pub async fn list_checkpoints(location: &Location) -> Result<Vec<CheckpointInfo>, StoreError> {
    list_checkpoints_with(location, Verify::Full).await
}

/// Committed checkpoints that pass `how`, sorted by step then name. Ones that fail are logged and left out.
pub async fn list_checkpoints_with(location: &Location, how: Verify) -> Result<Vec<CheckpointInfo>, StoreError> {
    let mut out = Vec::new();
    for name in manifest_names(location).await? {
        match verify_checkpoint(location, &name, how).await {
            Ok(info) => out.push(info),
            Err(e @ (StoreError::Verify { .. } | StoreError::Manifest { .. } | StoreError::NotFound { .. })) => {
                tracing::warn!(checkpoint = %location.url_of(&name), error = %e, "skipping a checkpoint that does not verify");
            }
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| (a.step, &a.name).cmp(&(b.step, &b.name)));
    Ok(out)
}

/// `checkpoint-<N>` names with a readable manifest, as (manifest step, name) in ascending order: the
/// candidates for resuming. Other names (`final`, an exported model) are not training checkpoints.
async fn resumable(location: &Location) -> Result<Vec<(u64, String)>, StoreError> {
    let mut candidates = Vec::new();
    for name in manifest_names(location).await? {
        if name.strip_prefix("checkpoint-").and_then(|s| s.parse::<u64>().ok()).is_none() {
            continue;
        }
        if let Ok(m) = read_manifest(location, &name).await {
            candidates.push((m.step, name));
        }
    }
    candidates.sort();
    Ok(candidates)
}

/// The resumable `checkpoint-<N>` with the highest step whose files verify fully; checks newest first and
/// stops at the first good one, so only that one is read in full. Other names (`final`, an exported model)
/// are not training checkpoints and are never returned.
pub async fn latest_checkpoint(location: &Location) -> Result<Option<CheckpointInfo>, StoreError> {
    for (_, name) in resumable(location).await?.into_iter().rev() {
        match verify_checkpoint(location, &name, Verify::Full).await {
            Ok(info) => return Ok(Some(info)),
            Err(e @ StoreError::Verify { .. }) => {
                tracing::warn!(checkpoint = %location.url_of(&name), error = %e, "skipping a checkpoint that does not verify");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Downloads committed checkpoint `name` into `local_dir` (created; existing files of the same names are
/// replaced), verifying every file's size and sha256, and writes its `manifest.json` there too. On a mismatch
/// nothing partial is left under the file's name.
pub async fn fetch_checkpoint(location: &Location, name: &str, local_dir: &Path) -> Result<CheckpointInfo, StoreError> {
    let manifest = read_manifest(location, name).await?;
    let ckpt = location.url_of(name);
    std::fs::create_dir_all(local_dir).map_err(|e| io_err(local_dir, e))?;
    let same_dir = location
        .local_path()
        .and_then(|root| root.join(name).canonicalize().ok())
        .is_some_and(|src| local_dir.canonicalize().is_ok_and(|dst| dst == src));
    if same_dir {
        return verify_checkpoint(location, name, Verify::Full).await;
    }
    for f in &manifest.files {
        let target = local_dir.join(&f.path);
        let parent = target.parent().expect("has parent");
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        let tmp = parent.join(temp_name("part"));
        let mut out = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let (size, sha) = match location.local_path() {
            Some(root) => {
                let src = root.join(name).join(&f.path);
                let mut input = std::fs::File::open(&src).map_err(|_| StoreError::Verify {
                    checkpoint: ckpt.clone(),
                    file: f.path.clone(),
                    reason: "missing".into(),
                })?;
                std::io::copy(&mut input, &mut out).map_err(|e| io_err(&src, e))?;
                hash_local(&tmp)?
            }
            None => remote_stream(location, &format!("{name}/{}", f.path), Some(&mut out)).await?,
        };
        drop(out);
        if size != f.size || sha != f.sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::Verify {
                checkpoint: ckpt,
                file: f.path.clone(),
                reason: format!("size {size} sha256 {sha} but the manifest says size {} sha256 {}", f.size, f.sha256),
            });
        }
        std::fs::rename(&tmp, &target).map_err(|e| io_err(&target, e))?;
    }
    let body = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    write_durable(&local_dir.join(MANIFEST_NAME), &body)?;
    Ok(info(location, manifest))
}

/// Fetches the newest `checkpoint-<N>` that downloads and verifies, falling back to older ones (each failure logged).
pub async fn fetch_latest_checkpoint(location: &Location, local_dir: &Path) -> Result<Option<CheckpointInfo>, StoreError> {
    for (_, name) in resumable(location).await?.into_iter().rev() {
        match fetch_checkpoint(location, &name, local_dir).await {
            Ok(info) => return Ok(Some(info)),
            Err(e @ StoreError::Verify { .. }) => {
                tracing::warn!(checkpoint = %location.url_of(&name), error = %e, "checkpoint does not verify; trying an older one");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// `save_total_limit`: keeps the `keep_last` highest-step `checkpoint-*` checkpoints plus every name in
/// `protect` (e.g. the best one), deletes the other `checkpoint-*` ones — manifest first — and returns the
/// deleted names in step order. Other names (`final`, ...) are never touched.
pub async fn prune(location: &Location, keep_last: usize, protect: &[&str]) -> Result<Vec<String>, StoreError> {
    let mut ckpts: Vec<(u64, String)> = Vec::new();
    for name in manifest_names(location).await? {
        let Some(step) = name.strip_prefix("checkpoint-").and_then(|s| s.parse::<u64>().ok()) else { continue };
        ckpts.push((step, name));
    }
    ckpts.sort();
    let cut = ckpts.len().saturating_sub(keep_last);
    let mut deleted = Vec::new();
    for (_, name) in ckpts.into_iter().take(cut) {
        if protect.contains(&name.as_str()) {
            continue;
        }
        delete_checkpoint(location, &name).await?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// Deletes checkpoint `name`: the manifest first, so a half-deleted checkpoint is never listed.
pub async fn delete_checkpoint(location: &Location, name: &str) -> Result<(), StoreError> {
    match location.local_path() {
        Some(root) => {
            let dir = root.join(name);
            let m = dir.join(MANIFEST_NAME);
            std::fs::remove_file(&m).map_err(|e| io_err(&m, e))?;
            fsync_dir(&dir)?;
            std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))
        }
        None => {
            let key = format!("{name}/{MANIFEST_NAME}");
            location.store().delete(&location.child(&key)).await.map_err(|e| location.os_err(&key, e))?;
            let prefix = location.child(name);
            let mut listed = location.store().list(Some(&prefix));
            let mut keys = BTreeMap::new();
            while let Some(meta) = listed.next().await {
                let meta = meta.map_err(|e| location.os_err(name, e))?;
                keys.insert(meta.location.to_string(), meta.location);
            }
            for (k, path) in keys {
                match location.store().delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(location.os_err(&k, e)),
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
