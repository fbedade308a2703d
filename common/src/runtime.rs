//! The process's one tokio runtime for synchronous callers (the trainer, the worker's control loop, the data
//! prefetch thread).
//!
//! Clients built in one [`block_on`] call (object-store connection pools, gRPC channels) are used in later ones;
//! their connections are driven by the runtime that opened them, so every call must run on the same runtime,
//! which lives as long as the process. Its worker threads also run spawned tasks (the worker's heartbeats)
//! while the calling thread trains.

use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// Worker threads of the shared runtime: I/O and heartbeats, never compute.
const WORKER_THREADS: usize = 2;

/// The process's runtime, started on first use.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("splade-io")
            .enable_all()
            .build()
            .expect("the process's tokio runtime can be started")
    })
}

/// Runs a future to completion on [`runtime`] from synchronous code. Works inside or outside a tokio runtime:
/// inside one, it waits on a scoped helper thread so it never blocks the caller's runtime from a runtime context
/// (where tokio refuses to block).
pub fn block_on<F: std::future::Future + Send>(fut: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| runtime().block_on(fut)).join().expect("block_on thread panicked"))
    } else {
        runtime().block_on(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection opened in one call is still driven in the next ones, outside and inside another runtime;
    /// with a runtime per call its I/O driver would be gone with the first call's runtime.
    #[test]
    fn a_connection_opened_in_one_call_works_in_later_calls() {
        let (addr, server) = block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            // Spawned like a client's connection task: it must outlive this call.
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 4];
                loop {
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    s.write_all(&buf).await.unwrap();
                }
            });
            (addr, server)
        });
        let mut stream = block_on(tokio::net::TcpStream::connect(addr)).unwrap();
        let echo = |stream: &mut tokio::net::TcpStream, msg: [u8; 4]| {
            block_on(async {
                stream.write_all(&msg).await.unwrap();
                let mut back = [0u8; 4];
                stream.read_exact(&mut back).await.unwrap();
                back
            })
        };
        assert_eq!(&echo(&mut stream, *b"ping"), b"ping");
        assert_eq!(&echo(&mut stream, *b"pong"), b"pong");
        let other = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert_eq!(&other.block_on(async { echo(&mut stream, *b"from") }), b"from");
        drop(stream);
        block_on(server).unwrap();
    }

    #[test]
    fn spawned_tasks_run_on_the_shared_runtime_workers() {
        let worker = block_on(async { tokio::spawn(async { std::thread::current().name().map(str::to_owned) }).await.unwrap() });
        assert_eq!(worker.as_deref(), Some("splade-io"));
    }
}
