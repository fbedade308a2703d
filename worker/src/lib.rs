//! The libtorch side of the SPLADE system: the encoder (`model`), the `splade` user CLI (`cli`),
//! and (in later modules) the trainer and the data-parallel worker.
//!
//! Binaries are thin wrappers in `src/bin/` over this library.

pub mod amp;
pub mod cli;
pub mod device;
pub mod evaluate;
pub mod dist;
pub mod model;
pub mod node;
pub mod train;
