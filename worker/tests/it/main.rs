//! Integration tests of the worker crate (one binary: libtorch links are slow).
mod support;

mod cli_errors;
mod dist;
mod parity;
