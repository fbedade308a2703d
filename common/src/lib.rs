//! Everything the SPLADE system needs that does not touch libtorch: the YAML config schema, dataset
//! readers, object storage and the checkpoint commit protocol, retrieval evaluation, observability.
//!
//! Kept free of `tch` so it compiles fast and its tests run without libtorch.
pub mod obs;
