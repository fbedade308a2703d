//! MLflow reporting (`report_to: mlflow`): params, metrics per step, tags and the final model
//! folder as artifacts.
//!
//! Two back-ends, chosen by `mlflow.tracking_uri`:
//!
//! * `http://` / `https://` — the MLflow REST API (`experiments/get-by-name|create`,
//!   `runs/create`, `runs/log-batch`, `runs/update`) and, for artifacts, the tracking server's
//!   artifact proxy (`PUT /api/2.0/mlflow-artifacts/artifacts/...`, the default of
//!   `mlflow server` since 2.0). If the server hands out a local `file:` artifact URI instead, the
//!   files are copied there. Credentials come from `MLFLOW_TRACKING_TOKEN` (bearer) or
//!   `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` (basic), as with MLflow's client.
//! * a path or `file:` URI (e.g. the seed configs' `mlruns`) — MLflow's file-store layout, written
//!   directly. Current MLflow reads it only with `MLFLOW_ALLOW_FILE_STORE=true` set (the file store
//!   is in maintenance mode upstream), e.g.
//!   `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri ./mlruns`.
//!
//! All work happens on a background thread fed by a bounded queue, so a `log_*` call never waits
//! for the network. A failing call is retried with exponential back-off; when it still fails, one
//! warning is logged and the reporter goes quiet for the rest of the run. Training is never failed
//! by MLflow.
//!
//! Metric keys are sanitised to MLflow's allowed characters (`[A-Za-z0-9_\-. /]`): `@` becomes
//! `_at_`, anything else invalid becomes `_` (so `eval/dev/ndcg@10` is logged as
//! `eval/dev/ndcg_at_10`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::reporter::Reporter;
use super::{now_millis, ObsError};

/// How to reach MLflow and what to call the run.
#[derive(Debug, Clone, PartialEq)]
pub struct MlflowSettings {
    /// `http(s)://host:port[/prefix]` of a tracking server, or a local path / `file:` URI of a
    /// file store (relative paths are relative to the working directory).
    pub tracking_uri: String,
    /// Experiment name; created if missing.
    pub experiment_name: String,
    /// Run name (`mlflow.runName`); MLflow-style default when `None`.
    pub run_name: Option<String>,
    /// Run tags.
    pub tags: BTreeMap<String, String>,
    /// Delays between retries of a failing call; the call is tried `len() + 1` times.
    pub retry_backoff: Vec<Duration>,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Longest [`Reporter::finish`] waits for the queue (including the model upload) to drain.
    pub finish_timeout: Duration,
}

impl MlflowSettings {
    /// Settings with the default retry policy (0.5 s, 1 s, 2 s, 4 s), a 30 s request timeout and
    /// a 10 min finish timeout.
    pub fn new(tracking_uri: impl Into<String>, experiment_name: impl Into<String>) -> Self {
        Self {
            tracking_uri: tracking_uri.into(),
            experiment_name: experiment_name.into(),
            run_name: None,
            tags: BTreeMap::new(),
            retry_backoff: [500, 1000, 2000, 4000].map(Duration::from_millis).to_vec(),
            request_timeout: Duration::from_secs(30),
            finish_timeout: Duration::from_secs(600),
        }
    }
}

/// Which store a tracking URI names.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Rest(String),
    Files(PathBuf),
}

fn parse_target(uri: &str) -> Result<Target, ObsError> {
    let uri = uri.trim();
    if uri.is_empty() {
        return Err(ObsError::Mlflow(
            "mlflow.tracking_uri is empty (fix: an http(s):// server URL or a local directory such as ./mlruns)".into(),
        ));
    }
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return Ok(Target::Rest(uri.trim_end_matches('/').to_string()));
    }
    let path = if let Some(rest) = uri.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if let Some(rest) = uri.strip_prefix("file:") {
        PathBuf::from(rest)
    } else if uri.contains("://") || uri.starts_with("sqlite:") || uri.starts_with("databricks") {
        return Err(ObsError::Mlflow(format!(
            "mlflow.tracking_uri '{uri}' is not supported (fix: an http(s):// tracking server, which can front any MLflow backend, or a local directory such as ./mlruns)"
        )));
    } else {
        PathBuf::from(uri)
    };
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map_err(|e| ObsError::io(&path, e))?
            .join(path)
    };
    Ok(Target::Files(path))
}

/// MLflow key sanitising, see the module docs.
pub fn sanitize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' | '.' | ' ' | '/' => out.push(c),
            '@' => out.push_str("_at_"),
            _ => out.push('_'),
        }
    }
    out
}

enum Cmd {
    Params(Vec<(String, String)>),
    Metrics {
        step: u64,
        timestamp: i64,
        values: Vec<(String, f64)>,
    },
    Text {
        tag: String,
        text: String,
    },
    Flush(SyncSender<()>),
    Finish {
        model_dir: Option<PathBuf>,
        status: RunEnd,
        done: SyncSender<()>,
    },
}

/// How a run ended, as MLflow records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// `FINISHED`: training completed.
    Finished,
    /// `FAILED`: training stopped with an error (or the reporter was dropped without `finish`).
    Failed,
}

impl RunEnd {
    fn rest(self) -> &'static str {
        match self {
            RunEnd::Finished => "FINISHED",
            RunEnd::Failed => "FAILED",
        }
    }
    /// MLflow's `RunStatus` number in file-store `meta.yaml`.
    fn code(self) -> u8 {
        match self {
            RunEnd::Finished => 3,
            RunEnd::Failed => 4,
        }
    }
}

/// The MLflow [`Reporter`]. Creating it starts the background thread; the run itself is created
/// by that thread on first use.
pub struct MlflowReporter {
    tx: Option<SyncSender<Cmd>>,
    thread: Option<JoinHandle<()>>,
    finish_timeout: Duration,
    dropped_warned: bool,
    run_id: std::sync::Arc<std::sync::OnceLock<String>>,
}

/// Queue length: about an hour of steps at one log call per second before calls are dropped.
const QUEUE: usize = 4096;

impl MlflowReporter {
    /// Validates the tracking URI and starts the reporter. Fails only on a URI that names no
    /// supported store; an unreachable server is not an error here (see the module docs).
    pub fn new(settings: MlflowSettings) -> Result<Self, ObsError> {
        let target = parse_target(&settings.tracking_uri)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let run_id = std::sync::Arc::new(std::sync::OnceLock::new());
        let finish_timeout = settings.finish_timeout;
        let worker = Worker {
            settings,
            target,
            run_id: run_id.clone(),
            quiet: false,
        };
        let thread = std::thread::Builder::new()
            .name("mlflow-reporter".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| ObsError::Mlflow(format!("cannot start the reporter thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            finish_timeout,
            dropped_warned: false,
            run_id,
        })
    }

    /// The MLflow run id, once the background thread has created the run.
    pub fn run_id(&self) -> Option<String> {
        self.run_id.get().cloned()
    }

    fn send(&mut self, cmd: Cmd) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(cmd) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if !self.dropped_warned {
                    self.dropped_warned = true;
                    tracing::warn!("mlflow reporting is falling behind; dropping log calls until it catches up (training continues)");
                }
            }
            Err(TrySendError::Disconnected(_)) => self.tx = None,
        }
    }

    /// Sends a command that acknowledges, waiting at most `timeout` for the acknowledgement.
    fn send_and_wait(
        &mut self,
        make: impl FnOnce(SyncSender<()>) -> Cmd,
        timeout: Duration,
    ) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut cmd = make(done_tx);
        // The queue may be full; keep offering until the deadline rather than dropping a finish.
        loop {
            match tx.try_send(cmd) {
                Ok(()) => break,
                Err(TrySendError::Full(c)) if Instant::now() < deadline => {
                    cmd = c;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => return false,
            }
        }
        match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => true,
            Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

impl Reporter for MlflowReporter {
    fn name(&self) -> &str {
        "mlflow"
    }

    fn log_params(&mut self, params: &[(String, String)]) {
        self.send(Cmd::Params(params.to_vec()));
    }

    fn log_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) {
        let values = scalars.iter().map(|(k, v)| (sanitize_key(k), *v)).collect();
        self.send(Cmd::Metrics {
            step,
            timestamp: now_millis(),
            values,
        });
    }

    fn log_text(&mut self, tag: &str, text: &str) {
        self.send(Cmd::Text {
            tag: tag.to_string(),
            text: text.to_string(),
        });
    }

    fn flush(&mut self) {
        let timeout = self.finish_timeout;
        self.send_and_wait(Cmd::Flush, timeout);
    }

    fn finish(&mut self, model_dir: Option<&Path>) {
        self.end(model_dir, RunEnd::Finished);
    }
}

impl MlflowReporter {
    /// Ends the run as `FAILED` (training stopped with an error), without artifacts; bounded like
    /// [`Reporter::finish`].
    pub fn finish_failed(&mut self) {
        self.end(None, RunEnd::Failed);
    }

    fn end(&mut self, model_dir: Option<&Path>, status: RunEnd) {
        if self.tx.is_none() {
            return;
        }
        let model_dir = model_dir.map(Path::to_path_buf);
        let timeout = self.finish_timeout;
        if !self.send_and_wait(
            |done| Cmd::Finish {
                model_dir,
                status,
                done,
            },
            timeout,
        ) {
            tracing::warn!("mlflow reporting did not finish within {timeout:?}; leaving the run as it is (training is done)");
        }
        self.tx = None;
        // The thread ends when the channel closes; detach if it is still stuck in a request.
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for MlflowReporter {
    fn drop(&mut self) {
        // Dropped without `finish`: training did not complete. Mark the run failed once the queue
        // drains, without blocking the dropping thread; closing the channel then ends the thread.
        if let Some(tx) = self.tx.take() {
            let (done, _) = mpsc::sync_channel(1);
            let _ = tx.try_send(Cmd::Finish {
                model_dir: None,
                status: RunEnd::Failed,
                done,
            });
        }
    }
}

/// The background thread's state.
struct Worker {
    settings: MlflowSettings,
    target: Target,
    run_id: std::sync::Arc<std::sync::OnceLock<String>>,
    quiet: bool,
}

/// Why a call failed, and whether trying again may help.
#[derive(Debug)]
struct CallError {
    message: String,
    retry: bool,
}

impl CallError {
    fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: false,
        }
    }
    fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: true,
        }
    }
}

/// A started MLflow run in one of the two stores.
trait Run {
    fn id(&self) -> &str;
    fn log_batch(
        &mut self,
        metrics: &[(String, f64, i64, u64)],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<(), CallError>;
    fn upload_dir(&mut self, local: &Path, artifact_path: &str) -> Result<usize, CallError>;
    fn upload_text(&mut self, text: &str, artifact_file: &str) -> Result<(), CallError>;
    fn terminate(&mut self, status: RunEnd) -> Result<(), CallError>;
}

impl Worker {
    fn run(mut self, rx: Receiver<Cmd>) {
        let mut run: Option<Box<dyn Run>> = None;
        let mut pending: Option<Cmd> = None;
        loop {
            let cmd = match pending.take() {
                Some(c) => c,
                None => match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            // Acknowledge flush/finish even when quiet so callers never wait for nothing.
            if self.quiet {
                ack(cmd);
                continue;
            }
            if run.is_none() {
                match self.retrying("start the run", |w| w.start()) {
                    Some(r) => {
                        let _ = self.run_id.set(r.id().to_string());
                        run = Some(r);
                    }
                    None => {
                        ack(cmd);
                        continue;
                    }
                }
            }
            let r = run.as_mut().expect("started above");
            match cmd {
                Cmd::Params(params) => {
                    let params: Vec<(String, String)> = params
                        .into_iter()
                        .map(|(k, v)| (sanitize_key(&k), truncate(v, 6000)))
                        .collect();
                    for chunk in params.chunks(100) {
                        if self
                            .retrying("log params", |_| r.log_batch(&[], chunk, &[]))
                            .is_none()
                        {
                            break;
                        }
                    }
                }
                Cmd::Metrics {
                    step,
                    timestamp,
                    values,
                } => {
                    // Coalesce queued metric calls into one request (MLflow allows 1000 per batch).
                    let mut batch: Vec<(String, f64, i64, u64)> = Vec::new();
                    fn add(
                        batch: &mut Vec<(String, f64, i64, u64)>,
                        step: u64,
                        ts: i64,
                        values: Vec<(String, f64)>,
                    ) {
                        // Non-finite values are logged too: a NaN loss is what a
                        // person looking at the run most needs to see.
                        batch.extend(values.into_iter().map(|(k, v)| (k, v, ts, step)))
                    }
                    add(&mut batch, step, timestamp, values);
                    while let Ok(next) = rx.try_recv() {
                        match next {
                            Cmd::Metrics {
                                step,
                                timestamp,
                                values,
                            } if values.len() < 900 => add(&mut batch, step, timestamp, values),
                            other => {
                                pending = Some(other);
                                break;
                            }
                        }
                        if batch.len() >= 900 {
                            break;
                        }
                    }
                    for chunk in batch.chunks(1000) {
                        if self
                            .retrying("log metrics", |_| r.log_batch(chunk, &[], &[]))
                            .is_none()
                        {
                            break;
                        }
                    }
                }
                Cmd::Text { tag, text } => {
                    let file = format!("text/{}.txt", sanitize_key(&tag).replace('/', "_"));
                    self.retrying("log text", |_| r.upload_text(&text, &file));
                }
                Cmd::Flush(done) => {
                    let _ = done.try_send(());
                }
                Cmd::Finish {
                    model_dir,
                    status,
                    done,
                } => {
                    if let Some(dir) = model_dir {
                        if let Some(n) =
                            self.retrying("upload the model", |_| r.upload_dir(&dir, "model"))
                        {
                            tracing::info!("mlflow: logged {n} model files from '{}' as artifacts under 'model/'", dir.display());
                        }
                    }
                    self.retrying("mark the run ended", |_| r.terminate(status));
                    let _ = done.try_send(());
                    break;
                }
            }
        }
    }

    /// Runs `f` with the back-off policy; on final failure warns once and turns the reporter quiet.
    fn retrying<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Self) -> Result<T, CallError>,
    ) -> Option<T> {
        if self.quiet {
            return None;
        }
        let mut attempt = 0;
        loop {
            match f(self) {
                Ok(v) => return Some(v),
                Err(e) if e.retry && attempt < self.settings.retry_backoff.len() => {
                    tracing::debug!(
                        "mlflow: cannot {what} (attempt {}): {}; retrying",
                        attempt + 1,
                        e.message
                    );
                    std::thread::sleep(self.settings.retry_backoff[attempt]);
                    attempt += 1;
                }
                Err(e) => {
                    self.quiet = true;
                    tracing::warn!(
                        "mlflow reporting to '{}' failed and is now off for the rest of this run (training continues): cannot {what} after {} attempt(s): {}",
                        self.settings.tracking_uri,
                        attempt + 1,
                        e.message
                    );
                    return None;
                }
            }
        }
    }

    fn start(&mut self) -> Result<Box<dyn Run>, CallError> {
        let run: Box<dyn Run> = match self.target.clone() {
            Target::Rest(base) => Box::new(RestRun::start(&base, &self.settings)?),
            Target::Files(root) => Box::new(FileRun::start(&root, &self.settings)?),
        };
        Ok(run)
    }
}

fn ack(cmd: Cmd) {
    match cmd {
        Cmd::Flush(done) | Cmd::Finish { done, .. } => {
            let _ = done.try_send(());
        }
        _ => {}
    }
}

fn truncate(mut s: String, max_chars: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(max_chars) {
        s.truncate(i);
    }
    s
}

fn default_run_name() -> String {
    format!("splade-{}", now_millis())
}

/// Tags every run gets, MLflow-style, before the user's tags (which may override them).
fn system_tags(settings: &MlflowSettings, run_name: &str) -> Vec<(String, String)> {
    let mut tags = vec![
        ("mlflow.runName".to_string(), run_name.to_string()),
        ("mlflow.source.name".to_string(), "splade".to_string()),
        ("mlflow.source.type".to_string(), "LOCAL".to_string()),
        ("host".to_string(), super::hostname()),
    ];
    if let Ok(user) = std::env::var("USER") {
        tags.push(("mlflow.user".to_string(), user));
    }
    for (k, v) in &settings.tags {
        tags.retain(|(tk, _)| tk != k);
        tags.push((k.clone(), v.clone()));
    }
    tags
}

/// Files under `dir`, recursively, as (absolute, relative with `/`) pairs, sorted.
fn walk_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .expect("walked under dir")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((path, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// REST back-end

struct RestRun {
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
    run_id: String,
    artifacts: ArtifactStore,
}

enum ArtifactStore {
    /// Path under the server's `mlflow-artifacts` proxy root.
    Proxy(String),
    /// A directory this process can write.
    Local(PathBuf),
    /// Anything else (e.g. `s3://`): not reachable from here.
    Unsupported(String),
}

fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn percent_encode_query(s: &str) -> String {
    percent_encode_path(s).replace('/', "%2F")
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

impl RestRun {
    fn start(base: &str, settings: &MlflowSettings) -> Result<Self, CallError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(settings.request_timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let auth = if let Ok(token) = std::env::var("MLFLOW_TRACKING_TOKEN") {
            Some(format!("Bearer {token}"))
        } else if let (Ok(u), Ok(p)) = (
            std::env::var("MLFLOW_TRACKING_USERNAME"),
            std::env::var("MLFLOW_TRACKING_PASSWORD"),
        ) {
            Some(format!("Basic {}", base64(format!("{u}:{p}").as_bytes())))
        } else {
            None
        };
        let mut this = Self {
            base: base.to_string(),
            agent,
            auth,
            run_id: String::new(),
            artifacts: ArtifactStore::Unsupported(String::new()),
        };
        let name = &settings.experiment_name;
        let experiment_id = match this.get_experiment(name)? {
            Some(id) => id,
            None => match this.call("POST", "experiments/create", Some(json!({ "name": name }))) {
                Ok(v) => str_field(&v, &["experiment_id"])?,
                // Someone else created it in between.
                Err(_) => this.get_experiment(name)?.ok_or_else(|| {
                    CallError::fatal(format!("cannot create experiment '{name}'"))
                })?,
            },
        };
        let run_name = settings.run_name.clone().unwrap_or_else(default_run_name);
        let tags: Vec<Value> = system_tags(settings, &run_name)
            .into_iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        let v = this.call(
            "POST",
            "runs/create",
            Some(json!({
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": now_millis(),
                "tags": tags,
            })),
        )?;
        this.run_id = str_field(&v, &["run", "info", "run_id"])?;
        let artifact_uri = str_field(&v, &["run", "info", "artifact_uri"]).unwrap_or_default();
        this.artifacts = if let Some(rest) = artifact_uri.strip_prefix("mlflow-artifacts:") {
            // `mlflow-artifacts:/0/<run>/artifacts` or `mlflow-artifacts://host:port/0/<run>/artifacts`.
            let path = match rest.strip_prefix("//") {
                Some(hosted) => hosted.split_once('/').map_or("", |(_, p)| p),
                None => rest,
            };
            ArtifactStore::Proxy(path.trim_matches('/').to_string())
        } else if let Some(p) = artifact_uri.strip_prefix("file://") {
            ArtifactStore::Local(PathBuf::from(p))
        } else if artifact_uri.starts_with('/') {
            ArtifactStore::Local(PathBuf::from(&artifact_uri))
        } else {
            ArtifactStore::Unsupported(artifact_uri)
        };
        tracing::info!(run_id = %this.run_id, "mlflow: logging to run {} of experiment '{name}' at {base}", this.run_id);
        Ok(this)
    }

    fn get_experiment(&self, name: &str) -> Result<Option<String>, CallError> {
        let path = format!(
            "experiments/get-by-name?experiment_name={}",
            percent_encode_query(name)
        );
        match self.call("GET", &path, None) {
            Ok(v) => Ok(Some(str_field(&v, &["experiment", "experiment_id"])?)),
            Err(e) if e.message.contains("RESOURCE_DOES_NOT_EXIST") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One REST call to `/api/2.0/mlflow/<endpoint>`. 5xx, 429 and transport errors are
    /// retryable; other HTTP errors are not.
    fn call(&self, method: &str, endpoint: &str, body: Option<Value>) -> Result<Value, CallError> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        let result = match method {
            "GET" => {
                let mut req = self.agent.get(&url);
                if let Some(a) = &self.auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            _ => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &self.auth {
                    req = req.header("Authorization", a);
                }
                req.send(body.unwrap_or(Value::Null).to_string())
            }
        };
        let mut resp = result.map_err(|e| CallError::transient(format!("{method} {url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if !(200..300).contains(&status) {
            let msg = format!(
                "{method} {url}: HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            );
            return Err(CallError {
                message: msg,
                retry: status >= 500 || status == 429,
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| CallError::fatal(format!("{method} {url}: response is not JSON: {e}")))
    }

    fn put_artifact(&self, rel: &str, body: impl ureq::AsSendBody) -> Result<(), CallError> {
        let ArtifactStore::Proxy(prefix) = &self.artifacts else {
            unreachable!("put_artifact is only used with the proxy")
        };
        let url = format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{}",
            self.base,
            percent_encode_path(&format!("{prefix}/{rel}"))
        );
        let mut req = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream");
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let mut resp = req
            .send(body)
            .map_err(|e| CallError::transient(format!("PUT {url}: {e}")))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let msg = format!(
                "PUT {url}: HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            );
            return Err(CallError {
                message: msg,
                retry: status >= 500 || status == 429,
            });
        }
        Ok(())
    }
}

fn str_field(v: &Value, path: &[&str]) -> Result<String, CallError> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p).ok_or_else(|| {
            CallError::fatal(format!("MLflow response lacks '{}': {v}", path.join(".")))
        })?;
    }
    cur.as_str().map(str::to_string).ok_or_else(|| {
        CallError::fatal(format!(
            "MLflow response field '{}' is not a string: {v}",
            path.join(".")
        ))
    })
}

/// A double as proto3's JSON mapping writes it: a number, or the strings `NaN`, `Infinity`, `-Infinity`
/// (serde_json would write `null`, which MLflow rejects or drops).
fn proto_double(v: f64) -> Value {
    if v.is_nan() {
        Value::from("NaN")
    } else if v.is_infinite() {
        Value::from(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Value::from(v)
    }
}

impl Run for RestRun {
    fn id(&self) -> &str {
        &self.run_id
    }

    fn log_batch(
        &mut self,
        metrics: &[(String, f64, i64, u64)],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<(), CallError> {
        let metrics: Vec<Value> = metrics
            .iter()
            .map(|(k, v, ts, step)| json!({"key": k, "value": proto_double(*v), "timestamp": ts, "step": step}))
            .collect();
        let params: Vec<Value> = params
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        let tags: Vec<Value> = tags
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        self.call(
            "POST",
            "runs/log-batch",
            Some(
                json!({"run_id": self.run_id, "metrics": metrics, "params": params, "tags": tags}),
            ),
        )
        .map(|_| ())
    }

    fn upload_dir(&mut self, local: &Path, artifact_path: &str) -> Result<usize, CallError> {
        let files = walk_files(local).map_err(|e| {
            CallError::fatal(format!(
                "cannot list model folder '{}': {e}",
                local.display()
            ))
        })?;
        match &self.artifacts {
            ArtifactStore::Proxy(_) => {
                for (abs, rel) in &files {
                    let file = std::fs::File::open(abs)
                        .map_err(|e| CallError::fatal(format!("cannot read '{}': {e}", abs.display())))?;
                    self.put_artifact(&format!("{artifact_path}/{rel}"), file)?;
                }
            }
            ArtifactStore::Local(root) => copy_files(&files, &root.join(artifact_path))?,
            ArtifactStore::Unsupported(uri) => {
                return Err(CallError::fatal(format!(
                    "the run's artifact store '{uri}' is not reachable from here (fix: start `mlflow server` with --serve-artifacts, the default)"
                )))
            }
        }
        Ok(files.len())
    }

    fn upload_text(&mut self, text: &str, artifact_file: &str) -> Result<(), CallError> {
        match &self.artifacts {
            ArtifactStore::Proxy(_) => self.put_artifact(artifact_file, text.as_bytes()),
            ArtifactStore::Local(root) => write_file(&root.join(artifact_file), text.as_bytes()),
            ArtifactStore::Unsupported(_) => Ok(()),
        }
    }

    fn terminate(&mut self, status: RunEnd) -> Result<(), CallError> {
        self.call(
            "POST",
            "runs/update",
            Some(json!({"run_id": self.run_id, "status": status.rest(), "end_time": now_millis()})),
        )
        .map(|_| ())
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), CallError> {
    let io =
        |e: std::io::Error| CallError::fatal(format!("cannot write '{}': {e}", path.display()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, data).map_err(io)
}

fn copy_files(files: &[(PathBuf, String)], dest: &Path) -> Result<(), CallError> {
    for (abs, rel) in files {
        let to = dest.join(rel);
        let io = |e: std::io::Error| {
            CallError::fatal(format!(
                "cannot copy '{}' to '{}': {e}",
                abs.display(),
                to.display()
            ))
        };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::copy(abs, &to).map_err(io)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// File-store back-end

struct FileRun {
    run_id: String,
    run_dir: PathBuf,
    meta: BTreeMap<&'static str, String>,
}

/// A YAML single-quoted scalar (always valid, whatever the content).
fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Reads the `name:` of an experiment `meta.yaml` as written by MLflow (plain, single- or
/// double-quoted scalar).
fn yaml_top_level(text: &str, key: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let v = line[key.len() + 1..].trim();
    Some(
        if let Some(inner) = v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
            inner.replace("''", "'")
        } else if let Some(inner) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            inner.replace("\\\"", "\"").replace("\\\\", "\\")
        } else {
            v.to_string()
        },
    )
}

fn random_hex32() -> String {
    let mut bytes = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !ok {
        // Fall back to std's randomly keyed hasher.
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(now_millis() as u128 + i as u128);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_meta(dir: &Path, entries: &[(&str, String)]) -> Result<(), CallError> {
    let mut text = String::new();
    for (k, v) in entries {
        text.push_str(&format!("{k}: {v}\n"));
    }
    // Write-then-rename so a reader never sees a half-written meta.yaml.
    let tmp = dir.join(".meta.yaml.tmp");
    write_file(&tmp, text.as_bytes())?;
    std::fs::rename(&tmp, dir.join("meta.yaml")).map_err(|e| {
        CallError::fatal(format!(
            "cannot write '{}': {e}",
            dir.join("meta.yaml").display()
        ))
    })
}

impl FileRun {
    fn start(root: &Path, settings: &MlflowSettings) -> Result<Self, CallError> {
        let io = |p: &Path, e: std::io::Error| {
            CallError::fatal(format!("mlflow file store '{}': {e}", p.display()))
        };
        let fresh = !root.exists();
        std::fs::create_dir_all(root.join(".trash")).map_err(|e| io(root, e))?;
        if fresh {
            // What MLflow itself does for a new store: experiment 0, "Default".
            Self::create_experiment(root, "0", "Default")?;
        }
        let name = &settings.experiment_name;
        let mut found = None;
        let mut max_id: u64 = 0;
        for entry in std::fs::read_dir(root).map_err(|e| io(root, e))? {
            let entry = entry.map_err(|e| io(root, e))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok(n) = id.parse::<u64>() else { continue };
            max_id = max_id.max(n);
            if let Ok(text) = std::fs::read_to_string(entry.path().join("meta.yaml")) {
                let active = yaml_top_level(&text, "lifecycle_stage").is_none_or(|s| s == "active");
                if active && yaml_top_level(&text, "name").as_deref() == Some(name.as_str()) {
                    found = Some(id);
                }
            }
        }
        let experiment_id = match found {
            Some(id) => id,
            None => {
                // create_dir (not _all) makes a concurrent creator pick the next id.
                let mut id = max_id + 1;
                loop {
                    match std::fs::create_dir(root.join(id.to_string())) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => id += 1,
                        Err(e) => return Err(io(root, e)),
                    }
                }
                Self::create_experiment(root, &id.to_string(), name)?;
                id.to_string()
            }
        };
        let run_id = random_hex32();
        let run_dir = root.join(&experiment_id).join(&run_id);
        for sub in ["metrics", "params", "tags", "artifacts"] {
            std::fs::create_dir_all(run_dir.join(sub)).map_err(|e| io(&run_dir, e))?;
        }
        let run_name = settings.run_name.clone().unwrap_or_else(default_run_name);
        let mut meta = BTreeMap::new();
        meta.insert(
            "artifact_uri",
            yaml_str(&run_dir.join("artifacts").display().to_string()),
        );
        meta.insert("end_time", "null".to_string());
        meta.insert("entry_point_name", "''".to_string());
        meta.insert("experiment_id", yaml_str(&experiment_id));
        meta.insert("lifecycle_stage", "active".to_string());
        meta.insert("run_id", yaml_str(&run_id));
        meta.insert("run_name", yaml_str(&run_name));
        meta.insert("run_uuid", yaml_str(&run_id));
        meta.insert("source_name", "''".to_string());
        meta.insert("source_type", "4".to_string());
        meta.insert("source_version", "''".to_string());
        meta.insert("start_time", now_millis().to_string());
        meta.insert("status", "1".to_string());
        meta.insert("tags", "[]".to_string());
        meta.insert(
            "user_id",
            yaml_str(&std::env::var("USER").unwrap_or_else(|_| "unknown".into())),
        );
        let mut this = Self {
            run_id: run_id.clone(),
            run_dir,
            meta,
        };
        this.write_run_meta()?;
        let tags = system_tags(settings, &run_name);
        this.log_batch(&[], &[], &tags)?;
        tracing::info!(run_id = %run_id, "mlflow: logging to run {run_id} of experiment '{name}' in file store {}", root.display());
        Ok(this)
    }

    fn create_experiment(root: &Path, id: &str, name: &str) -> Result<(), CallError> {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CallError::fatal(format!("cannot create '{}': {e}", dir.display())))?;
        let now = now_millis().to_string();
        write_meta(
            &dir,
            &[
                ("artifact_location", yaml_str(&dir.display().to_string())),
                ("creation_time", now.clone()),
                ("experiment_id", yaml_str(id)),
                ("last_update_time", now),
                ("lifecycle_stage", "active".into()),
                ("name", yaml_str(name)),
            ],
        )
    }

    fn write_run_meta(&self) -> Result<(), CallError> {
        let entries: Vec<(&str, String)> = self.meta.iter().map(|(k, v)| (*k, v.clone())).collect();
        write_meta(&self.run_dir, &entries)
    }

    /// `metrics/train/loss` for key `train/loss`; keys are sanitised, so no `..` component can
    /// escape the run directory, but reject it anyway.
    fn key_path(&self, sub: &str, key: &str) -> Result<PathBuf, CallError> {
        if key.is_empty()
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(CallError::fatal(format!("invalid MLflow key '{key}'")));
        }
        Ok(self.run_dir.join(sub).join(key))
    }
}

impl Run for FileRun {
    fn id(&self) -> &str {
        &self.run_id
    }

    fn log_batch(
        &mut self,
        metrics: &[(String, f64, i64, u64)],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<(), CallError> {
        // Group lines per key so each metric file gets one append.
        let mut lines: BTreeMap<&str, String> = BTreeMap::new();
        for (k, v, ts, step) in metrics {
            lines
                .entry(k.as_str())
                .or_default()
                .push_str(&format!("{ts} {v} {step}\n"));
        }
        for (k, text) in lines {
            let path = match self.key_path("metrics", k) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!("mlflow: skipping metric: {}", e.message);
                    continue;
                }
            };
            let io = |e: std::io::Error| {
                CallError::fatal(format!("cannot append to '{}': {e}", path.display()))
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
        }
        for (k, v) in params {
            if let Ok(p) = self.key_path("params", k) {
                write_file(&p, v.as_bytes())?;
            }
        }
        for (k, v) in tags {
            if let Ok(p) = self.key_path("tags", k) {
                write_file(&p, v.as_bytes())?;
            }
        }
        Ok(())
    }

    fn upload_dir(&mut self, local: &Path, artifact_path: &str) -> Result<usize, CallError> {
        let files = walk_files(local).map_err(|e| {
            CallError::fatal(format!(
                "cannot list model folder '{}': {e}",
                local.display()
            ))
        })?;
        copy_files(&files, &self.run_dir.join("artifacts").join(artifact_path))?;
        Ok(files.len())
    }

    fn upload_text(&mut self, text: &str, artifact_file: &str) -> Result<(), CallError> {
        write_file(
            &self.run_dir.join("artifacts").join(artifact_file),
            text.as_bytes(),
        )
    }

    fn terminate(&mut self, status: RunEnd) -> Result<(), CallError> {
        self.meta.insert("status", status.code().to_string());
        self.meta.insert("end_time", now_millis().to_string());
        self.write_run_meta()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sanitised_for_mlflow() {
        assert_eq!(
            sanitize_key("eval/dev set/ndcg@10"),
            "eval/dev set/ndcg_at_10"
        );
        assert_eq!(sanitize_key("train/loss(total)"), "train/loss_total_");
    }

    #[test]
    fn tracking_uris() {
        assert_eq!(
            parse_target("http://h:5000/").unwrap(),
            Target::Rest("http://h:5000".into())
        );
        assert_eq!(
            parse_target("file:///tmp/mlruns").unwrap(),
            Target::Files("/tmp/mlruns".into())
        );
        assert!(
            matches!(parse_target("mlruns").unwrap(), Target::Files(p) if p.is_absolute() && p.ends_with("mlruns"))
        );
        let err = parse_target("sqlite:///x.db").unwrap_err().to_string();
        assert!(
            err.contains("sqlite:///x.db") && err.contains("fix"),
            "{err}"
        );
    }

    #[test]
    fn yaml_round_trip() {
        let text = format!(
            "name: {}\nlifecycle_stage: active\n",
            yaml_str("it's: a test")
        );
        assert_eq!(
            yaml_top_level(&text, "name").as_deref(),
            Some("it's: a test")
        );
        assert_eq!(
            yaml_top_level("name: plain\n", "name").as_deref(),
            Some("plain")
        );
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }
}
