//! Integration tests of `splade-coordinator`: a real gRPC server on loopback driven by real clients.
//! Timings are short (heartbeat 50 ms, timeout 200 ms) and every test is bounded (see `harness::bounded`). The
//! harness is the workspace test kit's in-process cluster (`splade_tests::cluster`).

use splade_tests::cluster as harness;

mod binary;
mod raft;
mod completion;
mod elastic;
mod rendezvous;
mod security;
mod session;
mod state;
