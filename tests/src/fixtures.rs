//! Test fixtures: where the set-up put the test models, the reference Python and the built binaries, the parity
//! texts, and a sparse-vector comparison.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Repository root (the workspace).
pub fn repo() -> PathBuf {
    crate::tools::repo_root()
}

/// A binary of the workspace built next to the running test (`target/<profile>/NAME`). Tests of another crate
/// than the binary's have no `CARGO_BIN_EXE_*`; `cargo nextest run --workspace` (scripts/test.sh) builds every
/// binary before any test runs.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("test executable in target/<profile>/deps");
    let p = dir.join(name);
    assert!(p.is_file(), "{} not built: run the tests with `cargo nextest run --workspace` (scripts/test.sh), which builds every binary", p.display());
    p
}

fn cache() -> PathBuf {
    std::env::var("SPLADE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/splade"))
}

/// A test model fetched by `scripts/setup.sh` (`splade-tiny` or `minilm`).
pub fn model(name: &str) -> PathBuf {
    let dir = std::env::var("SPLADE_TEST_MODELS").map(PathBuf::from).unwrap_or_else(|_| cache().join("models")).join(name);
    assert!(dir.join("model.safetensors").exists(), "{} missing: run scripts/setup.sh", dir.display());
    dir
}

/// Python of the pinned sentence-transformers reference venv.
pub fn ref_python() -> PathBuf {
    let p = std::env::var("SPLADE_REF_PY").map(PathBuf::from).unwrap_or_else(|_| cache().join("ref-venv/bin/python"));
    assert!(p.exists(), "{} missing: run scripts/setup.sh --reference", p.display());
    p
}

/// Which sentence-transformers runs a reference script: the reference venv's 6.2 / transformers 5.24,
/// or the seed's pinned 5.2 / 4.57 (the light second reference on the same torch, first on PYTHONPATH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    St62,
    St52,
}

impl Stack {
    /// The `sentence_transformers.__version__` this stack reports.
    pub fn version(self) -> &'static str {
        match self {
            Stack::St62 => "6.2.0",
            Stack::St52 => "5.2.0",
        }
    }

    /// A reference-venv command for `script` on this stack, offline.
    pub fn python(self, script: &str) -> Command {
        let mut cmd = Command::new(ref_python());
        cmd.arg(repo().join("scripts/reference").join(script)).env("HF_HUB_OFFLINE", "1");
        if self == Stack::St52 {
            let p = std::env::var("SPLADE_ST52_PATH").map(PathBuf::from).unwrap_or_else(|_| cache().join("st52"));
            assert!(p.join("sentence_transformers").exists(), "{} missing: run scripts/setup.sh --reference", p.display());
            cmd.env("PYTHONPATH", p);
        }
        cmd
    }
}

/// Runs `scripts/reference/st_reference.py` with `args` in the reference venv (6.2); panics with its
/// stderr on failure.
pub fn st_reference(args: &[&str]) {
    st_reference_on(Stack::St62, args)
}

/// [`st_reference`] on `stack`.
pub fn st_reference_on(stack: Stack, args: &[&str]) {
    let out = stack.python("st_reference.py").args(args).output().expect("spawn reference python");
    assert!(out.status.success(), "st_reference.py {args:?} on {stack:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// 30 texts: Norwegian NorQuAD questions and passages (several far longer than 256 tokens) and
/// English sentences, each tagged as query or document.
pub fn parity_texts() -> Vec<(String, bool)> {
    let data = repo().join("data/norquad");
    let queries = std::fs::read_to_string(data.join("queries.jsonl")).unwrap();
    let corpus = std::fs::read_to_string(data.join("corpus.jsonl")).unwrap();
    let mut out = Vec::new();
    for line in queries.lines().take(10) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        out.push((v["text"].as_str().unwrap().to_string(), true));
    }
    for line in corpus.lines().take(10) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        out.push((format!("{} {}", v["title"].as_str().unwrap(), v["text"].as_str().unwrap()), false));
    }
    let english = [
        ("what is the capital of norway", true),
        ("how do sparse retrieval models work?", true),
        ("who wrote the book about the fjords", true),
        ("SPLADE", true),
        ("Oslo is the capital and most populous city of Norway.", false),
        ("Sparse lexical representations expand documents with related vocabulary terms.", false),
        ("The quick brown fox jumps over the lazy dog. ", false),
        ("A", false),
        ("Learned sparse retrieval combines the efficiency of inverted indexes with neural relevance.", false),
        ("Bergen is known for rain, mountains and the Bryggen wharf.", false),
    ];
    for (t, q) in english {
        out.push((t.to_string(), q));
    }
    out
}

/// Asserts two sparse vectors agree within `tol` over the union of their indices.
pub fn assert_sparse_close(a: &(Vec<u32>, Vec<f32>), b: &(Vec<u32>, Vec<f32>), tol: f32, what: &str) {
    use std::collections::BTreeMap;
    let ma: BTreeMap<u32, f32> = a.0.iter().copied().zip(a.1.iter().copied()).collect();
    let mb: BTreeMap<u32, f32> = b.0.iter().copied().zip(b.1.iter().copied()).collect();
    let mut worst = (0u32, 0f32);
    for k in ma.keys().chain(mb.keys()) {
        let d = (ma.get(k).copied().unwrap_or(0.0) - mb.get(k).copied().unwrap_or(0.0)).abs();
        if d > worst.1 {
            worst = (*k, d);
        }
    }
    assert!(worst.1 <= tol, "{what}: index {} differs by {} (> {tol})", worst.0, worst.1);
    assert!(!ma.is_empty() || mb.is_empty(), "{what}: empty on one side only");
}

/// An ST-saved CSR folder over MiniLM (`st_reference.py make-csr`: hidden 1536, k 32, k_aux 256).
pub fn st_csr_folder(dir: &Path, extra: &[&str]) -> PathBuf {
    let out = dir.join("st-csr");
    let base = model("minilm");
    let mut args = vec!["make-csr", "--base", base.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(extra);
    st_reference(&args);
    out
}

/// Copies folder `from` (recursively) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// Runs `scripts/reference/SCRIPT ARGS` in the reference venv (6.2), offline, and parses its last stdout line as
/// JSON; panics with its stderr on failure.
pub fn reference_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(ref_python())
        .arg(repo().join("scripts/reference").join(script))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("spawn reference python");
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{script}: {e}: {stdout}"))
}
