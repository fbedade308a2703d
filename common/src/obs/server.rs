//! The `/metrics` HTTP endpoint (`--metrics-listen`).
//!
//! It runs on its own OS thread with its own tiny HTTP server, so it needs no async runtime and a
//! scrape never runs on (or waits for) the training loop: the trainer only touches atomics, and
//! the server thread reads them when Prometheus asks.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus::Registry;

use super::ObsError;

/// Content type of the Prometheus text exposition format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running `/metrics` server. Dropping it (or calling [`MetricsServer::shutdown`]) stops the
/// server thread and releases the port.
pub struct MetricsServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address actually bound (resolves port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The scrape URL, `http://ADDR/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// Stops serving and waits for the server thread to end.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `registry` on `addr` (e.g. `0.0.0.0:9100`, or `127.0.0.1:0` in tests):
/// `GET /metrics` returns the text exposition, `GET /healthz` returns `ok`, anything else 404.
///
/// Returns once the socket is bound, so a bad address or a port in use is reported immediately as
/// [`ObsError::Listen`] naming the address.
pub fn serve_metrics(addr: &str, registry: Registry) -> Result<MetricsServer, ObsError> {
    let listen_err = |message: String| ObsError::Listen {
        addr: addr.to_string(),
        message,
    };
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| listen_err(e.to_string()))?
        .next()
        .ok_or_else(|| listen_err("resolves to no address".into()))?;
    let server = tiny_http::Server::http(sock).map_err(|e| listen_err(e.to_string()))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| listen_err("bound to a non-IP socket".into()))?;
    let server = Arc::new(server);
    let srv = Arc::clone(&server);
    let thread = std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || serve_loop(&srv, &registry))
        .map_err(|e| listen_err(format!("cannot start the server thread: {e}")))?;
    tracing::info!(addr = %bound, "serving Prometheus metrics on http://{bound}/metrics");
    Ok(MetricsServer {
        addr: bound,
        server,
        thread: Some(thread),
    })
}

fn serve_loop(server: &tiny_http::Server, registry: &Registry) {
    // `recv` returns an error once `unblock` is called.
    while let Ok(request) = server.recv() {
        let response = respond(request.method(), request.url(), registry);
        // A client that went away is its own problem; keep serving the others.
        let _ = request.respond(response);
    }
}

fn respond(
    method: &tiny_http::Method,
    url: &str,
    registry: &Registry,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let path = url.split('?').next().unwrap_or("");
    let header = |v: &str| {
        tiny_http::Header::from_bytes(&b"Content-Type"[..], v.as_bytes())
            .expect("static header is valid")
    };
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return tiny_http::Response::from_string("method not allowed\n").with_status_code(405);
    }
    match path {
        "/metrics" => match super::metrics::encode_text(registry) {
            Ok(body) => {
                tiny_http::Response::from_string(body).with_header(header(TEXT_CONTENT_TYPE))
            }
            Err(e) => tiny_http::Response::from_string(format!("cannot encode metrics: {e}\n"))
                .with_status_code(500),
        },
        "/healthz" => tiny_http::Response::from_string("ok\n"),
        "/" => tiny_http::Response::from_string("<a href=\"/metrics\">/metrics</a>\n")
            .with_header(header("text/html; charset=utf-8")),
        _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
    }
}
