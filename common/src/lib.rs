//! Everything the SPLADE system needs that does not touch libtorch: the YAML config schema, dataset
//! readers, object storage and the checkpoint commit protocol, retrieval evaluation, observability.
//!
//! Kept free of `tch` so it compiles fast and its tests run without libtorch.

pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod hub;
pub mod obs;
pub mod runtime;
pub mod store;
