//! Bad model folders fail before libtorch sees them: one line naming the file and the fix,
//! non-zero exit, no panic, no C++ trace.

use std::path::Path;
use std::process::Command;

use crate::support::model;

/// Copies SPLADE-tiny into a temp dir and lets `damage` break it.
fn broken_model(damage: impl FnOnce(&Path)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model("splade-tiny").join(f), tmp.path().join(f)).unwrap();
    }
    damage(tmp.path());
    tmp
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(p, v.to_string()).unwrap();
}

/// Runs `splade encode` on `dir` and returns its single stderr line.
fn one_line_error(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_splade"))
        .args(["encode", "--device", "cpu", "--model", dir.to_str().unwrap(), "some text"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line, got:\n{stderr}");
    for bad in ["panicked", "C++", "Exception raised", "frame #"] {
        assert!(!stderr.contains(bad), "stderr shows '{bad}':\n{stderr}");
    }
    lines[0].to_string()
}

#[test]
fn missing_config_json() {
    let dir = broken_model(|d| std::fs::remove_file(d.join("config.json")).unwrap());
    let e = one_line_error(dir.path());
    assert!(e.contains(&dir.path().join("config.json").display().to_string()) && e.contains("missing"), "{e}");
    assert!(e.contains("save_pretrained"), "error should say how to fix it: {e}");
}

#[test]
fn unsupported_model_type() {
    let dir = broken_model(|d| edit_config(d, "model_type", "gpt2".into()));
    let e = one_line_error(dir.path());
    assert!(e.contains("config.json") && e.contains("unsupported model_type 'gpt2'"), "{e}");
}

#[test]
fn tokenizer_larger_than_model_vocabulary() {
    let dir = broken_model(|d| edit_config(d, "vocab_size", 1000.into()));
    let e = one_line_error(dir.path());
    assert!(e.contains("tokenizer.json") && e.contains("30522 tokens") && e.contains("vocab_size is 1000"), "{e}");
}

#[test]
fn padded_model_vocabulary_is_fine() {
    // A model vocabulary larger than the tokenizer's (padded for tensor cores) is legal; the shape
    // check then fails only because SPLADE-tiny's tensors are 30522 rows, proving the tokenizer
    // check passed.
    let dir = broken_model(|d| edit_config(d, "vocab_size", 30528.into()));
    let e = one_line_error(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("shape"), "{e}");
}

#[test]
fn truncated_safetensors() {
    let dir = broken_model(|d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    let e = one_line_error(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");
    assert!(e.contains("fetch the model again"), "{e}");
}

/// Runs `splade train` on `yaml` (written to a temp file) and returns its stderr.
fn train_error(yaml: &str) -> (String, std::path::PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_splade")).args(["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (stderr, cfg, tmp)
}

fn base_yaml(data: &str) -> String {
    format!(
        "model:\n  base_model: {}\ntraining:\n  output_dir: out\n  max_steps: 2\n  per_device_train_batch_size: 2\ndatasets:\n  d:\n    source: {data}\nhardware:\n  device: cpu\n",
        model("splade-tiny").display()
    )
}

#[test]
fn train_config_typo_names_file_line_key_and_suggestion() {
    let yaml = base_yaml("x.jsonl").replace("  max_steps: 2", "  max_stepz: 2");
    let (e, cfg, _t) = train_error(&yaml);
    assert!(e.contains(&format!("{}:5:", cfg.display())) && e.contains("`training.max_stepz`") && e.contains("did you mean `training.max_steps`"), "{e}");
}

#[test]
fn train_bad_jsonl_line_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.jsonl");
    std::fs::write(&data, "{\"anchor\": \"a\", \"positive\": \"b\"}\nnot json\n").unwrap();
    let (e, _, _t) = train_error(&base_yaml(data.to_str().unwrap()));
    assert!(e.contains(&format!("{}:2:", data.display())) && e.contains("not valid JSON") && e.contains("on_bad_record: skip"), "{e}");
    let missing = tmp.path().join("nope.jsonl");
    let (e, _, _t) = train_error(&base_yaml(missing.to_str().unwrap()));
    assert!(e.contains("nope.jsonl") && e.contains("datasets.d.source"), "{e}");
}
