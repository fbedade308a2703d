//! The cross-crate tests link libtorch through `splade-worker`; like the worker's own binaries they carry
//! libtorch's library directory as an rpath, so they run without LD_LIBRARY_PATH. The directory is the one
//! torch-sys links against: `$LIBTORCH/lib` (scripts/env.sh sets LIBTORCH). Only the test targets get it:
//! the kit library itself does not touch libtorch.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(root) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{root}/lib");
    }
}
