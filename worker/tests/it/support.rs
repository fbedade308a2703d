//! The workspace test kit's fixtures (`splade_tests::fixtures`), under the name these tests use.
pub use splade_tests::fixtures::*;
