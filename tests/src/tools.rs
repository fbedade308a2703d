//! Real observability tools for tests: `promtool`/`prometheus` (Debian `prometheus`), `mlflow server`
//! and the Python readers in `scripts/obs_check.py` (tools venv, `$SPLADE_TOOLS_PY`).
//!
//! A missing tool panics with a message naming `scripts/setup.sh`. Servers bind 127.0.0.1 on a
//! free port and are killed, with every process they started, when their guard is dropped.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root: the parent of the crate whose tests are running.
///
/// Read from `CARGO_MANIFEST_DIR` at run time (cargo and nextest set it for every test process), the
/// compile-time value only as a fallback: cargo reuses a build of this crate for a checkout at
/// another path with the same sources, and the baked-in path then names the other checkout.
pub fn repo_root() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    crate_dir.parent().expect("crate in a workspace").to_path_buf()
}

/// Python of the tools venv (`$SPLADE_TOOLS_PY`, else `$SPLADE_CACHE/tools-venv/bin/python`).
pub fn tools_py() -> PathBuf {
    let py = std::env::var("SPLADE_TOOLS_PY").unwrap_or_else(|_| {
        let cache = std::env::var("SPLADE_CACHE")
            .unwrap_or_else(|_| format!("{}/.cache/splade", std::env::var("HOME").unwrap_or_default()));
        format!("{cache}/tools-venv/bin/python")
    });
    assert!(
        Path::new(&py).is_file(),
        "Python tools venv not found at {py}: run scripts/setup.sh (and `source scripts/env.sh`)"
    );
    PathBuf::from(py)
}

/// A program from the Debian `prometheus` package found on `PATH`.
pub fn debian_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()));
    found.unwrap_or_else(|| panic!("`{name}` not found on PATH: run scripts/setup.sh (Debian package prometheus)"))
}

/// Runs `scripts/obs_check.py ARGS` in the tools venv and parses its last stdout line as JSON;
/// panics with its output on failure.
pub fn obs_check(args: &[&str], envs: &[(&str, &str)]) -> serde_json::Value {
    let out = Command::new(tools_py())
        .arg(repo_root().join("scripts/obs_check.py"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run obs_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "obs_check.py {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills and reaps a process group started with [`spawn_group`] when dropped (also on panic):
/// `mlflow server` runs children that would outlive a plain kill of the parent.
pub struct ChildGuard(pub Child);

/// Spawns `cmd` as the leader of a new process group, guarded by [`ChildGuard`].
pub fn spawn_group(cmd: &mut Command) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    ChildGuard(cmd.process_group(0).spawn().expect("spawn server"))
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill").args([sig, "--", &group]).stderr(Stdio::null()).status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        signal("-KILL");
        let _ = self.0.wait();
    }
}

/// GET `url` with a 10 s timeout; returns (status, body) for any HTTP status.
pub fn http_get(url: &str) -> Result<(u16, String), String> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).http_status_as_error(false).build().into();
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string().map_err(|e| e.to_string())?))
}

/// Polls `f` every 250 ms until it returns `Some`; panics naming `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `promtool check metrics` on an exposition: (exit success, its output; empty when lint-clean).
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(debian_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), msg)
}

/// A `prometheus` server on 127.0.0.1 scraping its targets every second.
pub struct PrometheusServer {
    _guard: ChildGuard,
    /// Its HTTP port.
    pub port: u16,
    dir: ScratchDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `target` (`HOST:PORT`) as job `job`, data in a temp dir.
    pub fn start(target: &str, job: &str) -> Self {
        Self::start_jobs(&[(job, target)])
    }

    /// Starts Prometheus with one scrape job per `(job, target)` pair (`target` is `HOST:PORT`).
    pub fn start_jobs(jobs: &[(&str, &str)]) -> Self {
        let prometheus = debian_tool("prometheus");
        let dir = ScratchDir::new();
        let config = dir.path().join("prometheus.yml");
        let mut yaml = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n");
        for (job, target) in jobs {
            yaml.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"));
        }
        std::fs::write(&config, yaml).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let guard = spawn_group(
            Command::new(prometheus)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        Self { _guard: guard, port, dir }
    }

    /// Runs an instant PromQL query; `None` until the server answers 200.
    pub fn query(&self, promql: &str) -> Option<serde_json::Value> {
        let q: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (status, body) = http_get(&format!("http://127.0.0.1:{}/api/v1/query?query={q}", self.port)).ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// Lines of the server's log at level error.
    pub fn errors(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("prometheus.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=ERROR"))
            .map(str::to_string)
            .collect()
    }
}

/// An `mlflow server` (tools venv) on 127.0.0.1 with a SQLite store and proxied artifacts.
pub struct MlflowServer {
    _guard: ChildGuard,
    /// `http://127.0.0.1:PORT`.
    pub uri: String,
    dir: ScratchDir,
}

impl MlflowServer {
    /// Starts the server and waits (up to 120 s) for `/health`.
    pub fn start() -> Self {
        let py = tools_py();
        let dir = ScratchDir::new();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("mlflow.log")).unwrap();
        let guard = spawn_group(
            Command::new(&py)
                .args(["-m", "mlflow", "server", "--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
                .arg("--backend-store-uri")
                .arg(format!("sqlite:///{}", dir.path().join("mlflow.db").display()))
                .arg("--artifacts-destination")
                .arg(dir.path().join("artifacts"))
                .current_dir(dir.path())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let uri = format!("http://127.0.0.1:{port}");
        wait_until("mlflow server /health", Duration::from_secs(120), || {
            http_get(&format!("{uri}/health")).ok().filter(|(s, _)| *s == 200).map(|_| ())
        });
        Self { _guard: guard, uri, dir }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mlflow.log")).unwrap_or_default()
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `$TMPDIR/splade-testkit-<pid>-<n>`.
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir()
            .join(format!("splade-testkit-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for ScratchDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
