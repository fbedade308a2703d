//! Cross-crate integration tests: real `splade-worker` processes (c10d Gloo on CPU) against a real coordinator,
//! real servers on loopback (moto S3, Prometheus, MLflow). One binary: libtorch links are slow.
mod cluster;
mod csr_cluster;
mod memory;
mod one_loop;
mod ranged;
mod restart;
mod worker_tls;
