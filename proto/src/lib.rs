//! gRPC API between coordinator and workers.
