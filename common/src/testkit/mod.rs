//! Test helpers shared by this crate's tests and other crates' (feature `testkit`): a real S3 server
//! (`moto[server]` from the tools venv) on loopback.
//!
//! The server binds 127.0.0.1 on a free port, is killed when the [`MotoServer`] is dropped, and also stops by
//! itself when the process that started it exits or after [`MotoServer::MAX_LIFETIME_S`] seconds, so an
//! aborted test run leaves nothing behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::store::StoreOptions;

pub mod hub;
pub mod promql;
pub mod tools;

/// A running `moto` S3 server on 127.0.0.1.
pub struct MotoServer {
    child: Child,
    port: u16,
}

/// Runs moto's server, exiting when the parent process goes away or the lifetime runs out.
const LAUNCHER: &str = r#"
import os, sys, threading, time
parent, port, limit = os.getppid(), sys.argv[1], float(sys.argv[2])
def watch():
    start = time.time()
    while os.getppid() == parent and time.time() - start < limit:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(["-H", "127.0.0.1", "-p", port])
"#;

impl MotoServer {
    /// Longest a server lives, even if its owner never drops it.
    pub const MAX_LIFETIME_S: u64 = 900;

    /// Starts a server; panics with a message naming `scripts/setup.sh` when the tools venv or moto is missing.
    pub fn start() -> MotoServer {
        match Self::try_start() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Longest wait for a fresh server to answer. moto imports a few hundred modules; on a 2-core CI machine
    /// that is also running sentence-transformers reference processes this took over 30 s.
    pub const START_TIMEOUT_S: u64 = 180;

    /// Starts a server and waits (up to [`MotoServer::START_TIMEOUT_S`]) until it answers HTTP.
    pub fn try_start() -> Result<MotoServer, String> {
        let py = std::env::var("SPLADE_TOOLS_PY").map_err(|_| {
            "SPLADE_TOOLS_PY is not set: source scripts/env.sh (run scripts/setup.sh first to create the tools venv with moto[server])".to_string()
        })?;
        if !std::path::Path::new(&py).exists() {
            return Err(format!("SPLADE_TOOLS_PY={py} does not exist: run scripts/setup.sh"));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let child = Command::new(&py)
            .args(["-c", LAUNCHER, &port.to_string(), &Self::MAX_LIFETIME_S.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {py}: {e}; run scripts/setup.sh"))?;
        let mut server = MotoServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(Self::START_TIMEOUT_S);
        loop {
            if let Some(status) = server.child.try_wait().map_err(|e| e.to_string())? {
                let mut err = String::new();
                if let Some(mut s) = server.child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                return Err(format!(
                    "moto server exited ({status}): {}; run scripts/setup.sh to install moto[server] into the tools venv",
                    err.lines().last().unwrap_or("")
                ));
            }
            if server.request("GET", "/").is_ok_and(|(code, _)| code > 0) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moto server on port {} did not answer within {} s (machine overloaded, or a broken tools venv: run scripts/setup.sh)",
                    server.port,
                    Self::START_TIMEOUT_S
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (idempotent); panics if the server refuses.
    pub fn create_bucket(&self, name: &str) {
        let (code, body) = self.request("PUT", &format!("/{name}")).expect("moto answers");
        assert!(code == 200 || code == 409, "creating bucket {name}: HTTP {code}: {body}");
    }

    /// Environment variables for a child process (`object_store` and boto3 both read them).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
        ]
    }

    /// The same settings as [`MotoServer::env`], as in-process [`StoreOptions`].
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            overrides: vec![
                ("aws_endpoint".into(), self.endpoint()),
                ("aws_allow_http".into(), "true".into()),
                ("aws_access_key_id".into(), "testing".into()),
                ("aws_secret_access_key".into(), "testing".into()),
                ("aws_region".into(), "us-east-1".into()),
            ],
        }
    }

    /// A bare HTTP/1.1 request without a body; returns (status, body).
    fn request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port)?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((code, resp))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
