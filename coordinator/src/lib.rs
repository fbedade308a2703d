//! Cluster coordinator library; `src/bin/main.rs` is the thin binary.
