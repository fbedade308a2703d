//! A real S3 server (`moto[server]` from the tools venv) on loopback, with fault rules a test can set.
//!
//! The server binds 127.0.0.1 on a free port, is killed when the [`MotoServer`] is dropped, and also stops by
//! itself when the process that started it exits or after [`MotoServer::MAX_LIFETIME_S`] seconds, so an
//! aborted test run leaves nothing behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};


/// A running `moto` S3 server on 127.0.0.1.
pub struct MotoServer {
    child: Child,
    port: u16,
}

/// Runs moto's server, exiting when the parent process goes away or the lifetime runs out. moto's own WSGI app is
/// wrapped in a fault layer that the test drives over HTTP at `/__faults__` ([`MotoServer::stall`],
/// [`MotoServer::refuse`]): matching requests are held without an answer, or answered with an S3 error, so a test
/// can stop or fail a real client between two real requests. Nothing of this sits in the code under test.
const LAUNCHER: &str = r#"
import json, os, re, sys, threading, time
parent, port, limit = os.getppid(), sys.argv[1], float(sys.argv[2])
def watch():
    start = time.time()
    while os.getppid() == parent and time.time() - start < limit:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
os.environ.setdefault("MOTO_PORT", port)
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

rules, lock = [], threading.Lock()

class Faults:
    def __init__(self, app):
        self.app = app
    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if path == "/__faults__":
            with lock:
                if method == "POST":
                    n = int(environ.get("CONTENT_LENGTH") or 0)
                    rule = json.loads(environ["wsgi.input"].read(n))
                    rule.update(id=len(rules), hits=0, pattern=re.compile(rule["path_regex"]))
                    rules.append(rule)
                    body = {"id": rule["id"]}
                elif method == "DELETE":
                    rules.clear()
                    body = {}
                else:
                    body = [{"id": r["id"], "hits": r["hits"]} for r in rules]
            out = json.dumps(body).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
            return [out]
        hit = None
        with lock:
            for r in rules:
                if r["method"] == method and r["pattern"].search(path) and (r.get("times") is None or r["hits"] < r["times"]):
                    r["hits"] += 1
                    hit = dict(r)
                    break
        if hit and hit["action"] == "stall":
            while True:
                time.sleep(3600)
        if hit and hit["action"] == "refuse":
            status = int(hit.get("status", 503))
            xml = "<?xml version='1.0' encoding='UTF-8'?><Error><Code>%s</Code><Message>refused by the test's fault rule</Message></Error>" % hit.get("code", "ServiceUnavailable")
            start_response("%d Refused" % status, [("Content-Type", "application/xml"), ("Content-Length", str(len(xml)))])
            return [xml.encode()]
        return self.app(environ, start_response)

app = DomainDispatcherApplication(create_backend_app)
run_simple("127.0.0.1", int(port), Faults(app), threaded=True, request_handler=MotoRequestHandler)
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
            if server.request("GET", "/", "").is_ok_and(|(code, _)| code > 0) {
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
        let (code, body) = self.request("PUT", &format!("/{name}"), "").expect("moto answers");
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

    /// The same settings as [`MotoServer::env`], as `object_store` configuration keys (what
    /// `splade_common::store::StoreOptions::overrides` holds).
    pub fn store_overrides(&self) -> Vec<(String, String)> {
        vec![
                ("aws_endpoint".into(), self.endpoint()),
                ("aws_allow_http".into(), "true".into()),
                ("aws_access_key_id".into(), "testing".into()),
                ("aws_secret_access_key".into(), "testing".into()),
                ("aws_region".into(), "us-east-1".into()),
        ]
    }

    /// Holds every `method` request whose path matches `path_regex` (Python `re.search`) without an answer, as a
    /// store that hangs mid-write; returns the rule's id for [`MotoServer::fault_hits`].
    pub fn stall(&self, method: &str, path_regex: &str) -> usize {
        self.add_fault(serde_json::json!({"method": method, "path_regex": path_regex, "action": "stall"}))
    }

    /// Answers the first `times` (every, when `None`) `method` requests whose path matches `path_regex` with HTTP
    /// `status` and the S3 error `code` (e.g. 403 `AccessDenied`, 507 `InsufficientStorage`), as a store that refuses
    /// the write; returns the rule's id.
    pub fn refuse(&self, method: &str, path_regex: &str, status: u16, code: &str, times: Option<u32>) -> usize {
        self.add_fault(serde_json::json!({
            "method": method, "path_regex": path_regex, "action": "refuse", "status": status, "code": code, "times": times,
        }))
    }

    /// How many requests fault rule `id` caught so far.
    pub fn fault_hits(&self, id: usize) -> usize {
        let (code, body) = self.request("GET", "/__faults__", "").expect("moto answers");
        assert_eq!(code, 200, "{body}");
        let rules: serde_json::Value = serde_json::from_str(http_body(&body)).expect("fault list is JSON");
        rules.as_array().and_then(|a| a.iter().find(|r| r["id"] == id)).and_then(|r| r["hits"].as_u64()).unwrap_or(0) as usize
    }

    /// Removes every fault rule (requests already held stay held).
    pub fn clear_faults(&self) {
        let (code, body) = self.request("DELETE", "/__faults__", "").expect("moto answers");
        assert_eq!(code, 200, "{body}");
    }

    fn add_fault(&self, rule: serde_json::Value) -> usize {
        let (code, body) = self.request("POST", "/__faults__", &rule.to_string()).expect("moto answers");
        assert_eq!(code, 200, "adding fault rule {rule}: {body}");
        let v: serde_json::Value = serde_json::from_str(http_body(&body)).expect("fault id is JSON");
        v["id"].as_u64().expect("fault id") as usize
    }

    /// A bare HTTP/1.1 request; returns (status, the whole response).
    fn request(&self, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((code, resp))
    }
}

/// The body of a raw HTTP response.
fn http_body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
