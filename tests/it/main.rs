//! Cross-crate integration tests (one binary: libtorch links are slow).
