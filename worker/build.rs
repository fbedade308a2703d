//! Embeds libtorch's library directory as an rpath so binaries and tests run without LD_LIBRARY_PATH,
//! and compiles the C++ shims (`csrc/`: c10d, autocast, `torch.save` reading) against libtorch's headers.
use std::path::{Path, PathBuf};

fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    build_dist_shim();
}

/// libtorch's include directory: next to the lib directory torch-sys linked against, so the
/// shim always sees the same headers as the library it calls.
fn libtorch_include() -> PathBuf {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let inc = Path::new(&lib).join("../include");
        if inc.join("torch").exists() {
            return inc;
        }
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let root = std::env::var("LIBTORCH").expect("neither DEP_TCH_LIBTORCH_LIB nor LIBTORCH is set: run scripts/setup.sh and `source scripts/env.sh`");
    PathBuf::from(root).join("include")
}

fn build_dist_shim() {
    println!("cargo:rerun-if-changed=csrc/dist_shim.cpp");
    println!("cargo:rerun-if-changed=csrc/amp_shim.cpp");
    println!("cargo:rerun-if-changed=csrc/pickle_shim.cpp");
    let inc = libtorch_include();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&inc)
        .include(inc.join("torch/csrc/api/include"))
        // ProcessGroupGloo.hpp includes gloo headers: Debian's libgloo-dev puts them on the
        // default search path (/usr/include/gloo); the symbols come from libtorch_cpu.so.
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DUSE_C10D_GLOO")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/dist_shim.cpp")
        .file("csrc/amp_shim.cpp")
        .file("csrc/pickle_shim.cpp");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        build.flag("-DUSE_C10D_NCCL").flag("-DSPLADE_WITH_NCCL").flag("-Wno-interference-size");
        for dir in cuda_include_dirs() {
            build.include(dir);
        }
        // Keep libtorch_cuda as a dependency even where no symbol of it is referenced directly:
        // libtorch registers its CUDA backend when that library loads.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    build.compile("splade_dist_shim");
}

/// Include directories of the CUDA runtime, CRT, CCCL and NCCL header wheels that
/// `scripts/setup.sh --cuda` installs under `$SPLADE_CUDA_HEADERS`
/// (default `$SPLADE_CACHE/cuda-headers`), i.e. every `nvidia/*/include` and `nvidia/*/*/include`.
fn cuda_include_dirs() -> Vec<PathBuf> {
    println!("cargo:rerun-if-env-changed=SPLADE_CUDA_HEADERS");
    println!("cargo:rerun-if-env-changed=SPLADE_CACHE");
    let root = std::env::var("SPLADE_CUDA_HEADERS").map(PathBuf::from).unwrap_or_else(|_| {
        let cache = std::env::var("SPLADE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/splade"));
        cache.join("cuda-headers")
    });
    let mut dirs = Vec::new();
    let nvidia = root.join("nvidia");
    let mut stack = vec![(nvidia.clone(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "include") {
                dirs.push(p);
            } else if depth < 2 {
                stack.push((p, depth + 1));
            }
        }
    }
    if !dirs.iter().any(|d| d.join("nccl.h").exists()) {
        panic!(
            "feature `cuda`: nccl.h not found under {} (run `scripts/setup.sh --cuda`, or set SPLADE_CUDA_HEADERS)",
            nvidia.display()
        );
    }
    dirs.sort();
    dirs
}
