//! Integration tests of the worker crate (one binary: libtorch links are slow).
mod support;

mod amp;
mod architectures;
mod cli_errors;
mod cluster;
mod csr;
mod eval_parity;
mod gptbert;
mod lean_head;
mod native_archs;
mod norbert3;
mod one_loop;
mod worker_tls;
mod dist;
mod inference_free;
mod parity;
mod ranged;
mod progress;
mod robust;
mod train;
mod train_obs;
mod train_windows;
mod windows;
