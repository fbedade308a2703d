//! Integration tests of the worker crate (one binary: libtorch links are slow).
mod support;

mod amp;
mod architectures;
mod cli_errors;
mod csr;
mod dev_eval;
mod eval_by_name;
mod eval_parity;
mod gptbert;
mod hub;
mod lean_head;
mod native_archs;
mod norbert3;
mod dist;
mod inference_free;
mod parity;
mod progress;
mod robust;
mod train;
mod train_obs;
mod train_windows;
mod windows;
mod seed_project;
mod seed_schema;
