//! Bad model folders fail before libtorch sees them: one line naming the file and the fix,
//! non-zero exit, no panic, no C++ trace.

use std::path::Path;
use std::process::Command;

use splade_worker::train::Trainer;

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

/// One bad input of issue #17's table: the `splade` arguments, and what the error must name (the file,
/// key or line, the value, the fix).
struct Bad {
    category: &'static str,
    what: &'static str,
    args: Vec<String>,
    want: Vec<String>,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Issue #17's table of bad inputs (the gRPC category is `coordinator` `security.rs`'s
/// `bad_grpc_messages_are_refused_naming_the_field_and_leave_the_job_running`): each exits 1 with an error
/// naming the file, key or line, the value and the fix, panics nowhere, and leaves nothing a resume would pick.
#[test]
fn bad_inputs_exit_1_naming_file_value_and_fix_and_leave_nothing_to_resume() {
    use splade_common::store::checkpoint::{commit_checkpoint, latest_checkpoint};
    use splade_common::store::{block_on, Location};

    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let tiny = s(&model("splade-tiny"));
    let pairs = crate::train::small_pairs(t, 16);
    let out = t.join("out");
    // A config writing to `out` (resumable only if a case left something there), with `edit` applied.
    let yaml = |name: &str, edit: &dyn Fn(String) -> String| -> String {
        let text = crate::train::tiny_config(&out, &pairs, "  max_steps: 2\n  per_device_train_batch_size: 4\n  max_seq_length: 32", "");
        let p = t.join(name);
        std::fs::write(&p, edit(text)).unwrap();
        s(&p)
    };
    let with_data = |name: &str, source: &str| yaml(name, &|c: String| c.replace(&s(&pairs), source));
    let write = |name: &str, bytes: &[u8]| -> String {
        let p = t.join(name);
        std::fs::write(&p, bytes).unwrap();
        s(&p)
    };
    let train = |cfg: &str| vec!["train".to_string(), "--config".into(), cfg.to_string()];
    let mut cases: Vec<Bad> = Vec::new();
    let mut add = |category, what, args: Vec<String>, want: &[&str]| {
        cases.push(Bad { category, what, args, want: want.iter().map(|s| s.to_string()).collect() })
    };

    // --- config
    let c = yaml("typo.yaml", &|c| c.replace("  max_steps: 2", "  max_stepz: 2"));
    add("config", "unknown key", train(&c), &[&format!("{c}:"), "training.max_stepz", "did you mean `training.max_steps`"]);
    let c = yaml("batch0.yaml", &|c| c.replace("per_device_train_batch_size: 4", "per_device_train_batch_size: 0"));
    add("config", "batch size 0", train(&c), &[&format!("{c}:"), "`training.per_device_train_batch_size` is `0`", "must be at least 1"]);
    let c = yaml("threads0.yaml", &|c| c.replace("  device: cpu", "  device: cpu\n  num_threads: 0"));
    add("config", "num_threads 0", train(&c), &[&format!("{c}:"), "`hardware.num_threads` is `0`", "must be at least 1"]);
    let c = yaml("doclen.yaml", &|c| c.replace("  max_seq_length: 32", "  max_seq_length: 32\n  document_max_length: 4096"));
    add("config", "document_max_length past the positions", train(&c), &["document_max_length 4096", "config.json", "set document_max_length to 512 or less"]);
    let c = yaml("yamlsyntax.yaml", &|c| c.replace("  max_steps: 2", "  max_steps: [2"));
    add("config", "YAML syntax", train(&c), &[&format!("{c}:"), "not valid YAML"]);
    let c = yaml("lr.yaml", &|c| c.replace("learning_rate: 1.0e-4", "learning_rate: fast"));
    add("config", "a word for a number", train(&c), &[&format!("{c}:"), "training.learning_rate", "fast"]);
    let c = yaml("amp.yaml", &|c| c.replace("  max_seq_length: 32", "  max_seq_length: 32\n  fp16: true\n  bf16: true"));
    add("config", "fp16 and bf16", train(&c), &[&format!("{c}:"), "fp16", "bf16"]);
    add("config", "missing config file", train(&s(&t.join("nope.yaml"))), &["nope.yaml"]);

    // --- data files (JSONL, gzip, Parquet)
    let f = write("notjson.jsonl", b"{\"anchor\": \"a\", \"positive\": \"b\"}\nnot json\n");
    add("data", "JSONL line not JSON", train(&with_data("d1.yaml", &f)), &[&format!("{f}:2:"), "not valid JSON", "on_bad_record: skip"]);
    let f = write("noanchor.jsonl", b"{\"positive\": \"b\"}\n");
    add("data", "JSONL row without anchor", train(&with_data("d2.yaml", &f)), &[&format!("{f}:1:"), "anchor"]);
    let f = write("notgzip.jsonl.gz", b"{\"anchor\": \"a\", \"positive\": \"b\"}\n");
    add("data", "gzip that is not gzip", train(&with_data("d3.yaml", &f)), &[&f]);
    let gz = std::fs::read(crate::support::repo().join("data/norquad/train.jsonl.gz")).unwrap();
    let f = write("truncated.jsonl.gz", &gz[..gz.len() / 2]);
    add("data", "truncated gzip", train(&with_data("d4.yaml", &f)), &[&f]);
    let f = write("garbage.parquet", b"PAR1 this is not parquet at all PAR1");
    add("data", "Parquet that is not Parquet", train(&with_data("d5.yaml", &f)), &[&f]);
    let f = write("empty.jsonl", b"");
    add("data", "empty file", train(&with_data("d6.yaml", &f)), &[&f, "holds no records"]);
    let nomatch = s(&t.join("nothing-*.jsonl"));
    add("data", "glob matching nothing", train(&with_data("d7.yaml", &nomatch)), &[&nomatch, "matches no file", "datasets.norquad.source"]);
    let dangling = t.join("links");
    std::fs::create_dir_all(&dangling).unwrap();
    std::fs::copy(&pairs, dangling.join("a.jsonl")).unwrap();
    std::os::unix::fs::symlink(t.join("gone.jsonl"), dangling.join("b.jsonl")).unwrap();
    add("data", "dangling link in a glob", train(&with_data("d8.yaml", &format!("{}/*.jsonl", s(&dangling)))), &[
        &s(&dangling.join("b.jsonl")),
        "cannot be read",
    ]);
    let f = write("kl.jsonl", b"{\"anchor\": \"a\", \"positive\": \"b\", \"label\": [1.0]}\n".repeat(16).as_slice());
    let c = yaml("d9.yaml", &|c: String| c.replace(&s(&pairs), &f).replace("sparse_multiple_negatives_ranking_loss", "sparse_margin_mse"));
    let f2 = write("nolabel.jsonl", b"{\"anchor\": \"a\", \"positive\": \"b\"}\n".repeat(16).as_slice());
    let c2 = yaml("d10.yaml", &|c: String| c.replace(&s(&pairs), &f2).replace("sparse_multiple_negatives_ranking_loss", "sparse_margin_mse"));
    add("data", "margin MSE rows without label", train(&c2), &[&f2, "no `label`", "sparse_margin_mse"]);
    let _ = c;

    // --- model folders
    let enc = |dir: &str| vec!["encode".to_string(), "--device".into(), "cpu".into(), "--model".into(), dir.to_string(), "text".into()];
    let models = std::cell::RefCell::new(Vec::new());
    let m = |damage: &dyn Fn(&Path)| {
        let d = broken_model(damage);
        let p = s(d.path());
        models.borrow_mut().push(d);
        p
    };
    let d = m(&|d| std::fs::remove_file(d.join("config.json")).unwrap());
    add("model", "no config.json", enc(&d), &[&format!("{d}/config.json"), "save_pretrained"]);
    let d = m(&|d| edit_config(d, "model_type", "gpt2".into()));
    add("model", "unsupported model_type", enc(&d), &["config.json", "gpt2"]);
    let d = m(&|d| edit_config(d, "vocab_size", 1000.into()));
    add("model", "tokenizer larger than vocab", enc(&d), &["tokenizer.json", "vocab_size is 1000"]);
    let d = m(&|d| {
        let p = d.join("model.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 3]).unwrap();
    });
    add("model", "truncated safetensors", enc(&d), &["model.safetensors", "fetch the model again"]);
    let d = m(&|d| std::fs::write(d.join("config.json"), "{not json").unwrap());
    add("model", "config.json not JSON", enc(&d), &["config.json"]);
    let d = m(&|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    add("model", "no tokenizer", enc(&d), &["tokenizer"]);
    add("model", "no such folder", enc(&s(&t.join("no-model"))), &["no-model"]);

    // --- checkpoints (resume_from_checkpoint: <path>), from one real committed checkpoint
    let ck_root = t.join("ck");
    let ck_cfg = crate::train::tiny_config(&ck_root, &pairs, "  max_steps: 2\n  per_device_train_batch_size: 4\n  max_seq_length: 32", "");
    let mut trainer = Trainer::new(splade_common::config::Config::from_str(&ck_cfg, "ck.yaml").unwrap(), tch::Device::Cpu, 4, 1).unwrap();
    trainer.train_step().unwrap();
    trainer.save_checkpoint().unwrap();
    drop(trainer);
    let good = ck_root.join("checkpoint-1");
    let ck_loc = Location::parse(&s(&ck_root)).unwrap();
    let variant = |name: &str, edit: &dyn Fn(&Path), recommit: bool| -> String {
        let dir = ck_root.join(name);
        crate::support::copy_dir(&good, &dir);
        if recommit {
            std::fs::remove_file(dir.join("manifest.json")).unwrap();
            let staging = t.join(format!("staging-{name}"));
            std::fs::rename(&dir, &staging).unwrap();
            edit(&staging);
            block_on(commit_checkpoint(&ck_loc, name, 1, &staging)).unwrap();
        } else {
            edit(&dir);
        }
        s(&dir)
    };
    let resume = |name: &str, ckpt: &str| train(&yaml(name, &|c| c.replace("  max_seq_length: 32", &format!("  max_seq_length: 32\n  resume_from_checkpoint: {ckpt}"))));
    // Same name as committed (the manifest names it), weights cut short after the commit.
    let trunc = t.join("ck-trunc/checkpoint-1");
    crate::support::copy_dir(&good, &trunc);
    let f = trunc.join("model.safetensors");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    add("checkpoint", "file shorter than its manifest", resume("r1.yaml", &s(&trunc)), &["ck-trunc/checkpoint-1", "model.safetensors", "resume from an earlier one"]);
    let p = variant("checkpoint-badmanifest", &|d| std::fs::write(d.join("manifest.json"), "{").unwrap(), false);
    add("checkpoint", "manifest not JSON", resume("r2.yaml", &p), &["checkpoint-badmanifest/manifest.json", "unreadable"]);
    let p = variant("checkpoint-nomanifest", &|d| std::fs::remove_file(d.join("manifest.json")).unwrap(), false);
    add("checkpoint", "never committed", resume("r3.yaml", &p), &["checkpoint-nomanifest", "never committed"]);
    let p = variant("checkpoint-noopt", &|d| {
        let f = d.join("optimizer.safetensors");
        let mut ts = tch::Tensor::read_safetensors(&f).unwrap();
        ts.retain(|(n, _)| !n.starts_with("m."));
        tch::Tensor::write_safetensors(&ts, &f).unwrap();
    }, true);
    add("checkpoint", "optimizer state missing", resume("r4.yaml", &p), &["checkpoint-noopt", "has no optimizer state", "start a new output_dir"]);
    let p = variant("checkpoint-state", &|d| std::fs::write(d.join("trainer_state.json"), "{\"global_step\": \"one\"}").unwrap(), true);
    add("checkpoint", "trainer state unreadable", resume("r5.yaml", &p), &["checkpoint-state/trainer_state.json"]);
    let p = variant("checkpoint-otherplan", &|d| {
        let f = d.join("trainer_state.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        v["plan_fingerprint"] = "0000000000000000".into();
        std::fs::write(&f, v.to_string()).unwrap();
    }, true);
    add("checkpoint", "another batch plan", resume("r6.yaml", &p), &["checkpoint-otherplan", "different batch plan", "start a new output_dir"]);

    // --- CLI flags
    let flags = |extra: &[&str]| {
        let mut v = vec!["encode".to_string(), "--device".into(), "cpu".into(), "--model".into(), tiny.clone()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    add("flags", "--max-length past the positions", flags(&["--max-length", "4096", "x"]), &["--max-length 4096", "use --max-length 512 or less"]);
    add("flags", "--device unknown", vec!["encode".into(), "--device".into(), "tpu".into(), "--model".into(), tiny.clone(), "x".into()], &["tpu"]);
    add("flags", "--doc-window stride above size", flags(&["--doc-window", "8:16", "x"]), &["--doc-window", "16"]);
    add("flags", "--input missing", flags(&["--input", &s(&t.join("no-input.txt"))]), &["no-input.txt", "cannot open"]);
    add("flags", "--max-active-dims 0", flags(&["--max-active-dims", "0", "x"]), &["--max-active-dims", "0"]);
    add("flags", "no texts", flags(&[]), &["no texts given", "--input FILE"]);
    let f = write("bad-input.jsonl", b"{\"text\": \"a\"}\n{\"text\": 3}\n");
    add("flags", "--input line without text", flags(&["--input", &f]), &[&format!("{f}:2:"), "\"text\""]);
    add("flags", "unknown subcommand", vec!["frobnicate".into()], &["frobnicate"]);
    add("flags", "--hybrid unknown", vec!["eval".into(), "--model".into(), tiny.clone(), "--task".into(), s(&t.join("task")), "--hybrid".into(), "dense".into()], &["--hybrid", "dense", "bm25"]);

    // --- object-store URLs
    add("url", "hf:// dataset not in the cache offline", train(&with_data("u1.yaml", "hf://datasets/x/y")), &["`x/y`", "not in the Hugging Face cache", "HF_HUB_OFFLINE"]);
    add("url", "unknown scheme", train(&with_data("u2.yaml", "ftp://host/x.jsonl")), &["ftp://host/x.jsonl", "unsupported scheme `ftp`", "s3://"]);
    add("url", "`..` in a key", train(&with_data("u3.yaml", "s3://bucket/a/../x.jsonl")), &["s3://bucket/a/../x.jsonl"]);
    let c = yaml("u4.yaml", &|c| c.replace(&format!("output_dir: {}", s(&out)), "output_dir: gopher://host/run"));
    add("url", "output_dir with an unknown scheme", train(&c), &["gopher://host/run", "unsupported scheme"]);
    let c = yaml("u5.yaml", &|c| c.replace(&format!("output_dir: {}", s(&out)), "output_dir: file://relative/run"));
    add("url", "file:// that is not absolute", train(&c), &["file://relative/run", "file:///absolute/path"]);
    add("url", "model URL with an unknown scheme", enc("ftp://host/model"), &["ftp://host/model"]);

    let mut per_category = std::collections::BTreeMap::<&str, usize>::new();
    let mut failures = Vec::new();
    for case in &cases {
        *per_category.entry(case.category).or_default() += 1;
        let run = Command::new(env!("CARGO_BIN_EXE_splade")).args(&case.args).env("HF_HUB_OFFLINE", "1").env("HF_HUB_CACHE", "/nonexistent/splade-test-hub-cache").env_remove("RUST_LOG").output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).to_string();
        let mut problems = Vec::new();
        if run.status.code() != Some(1) {
            problems.push(format!("exit {:?}", run.status.code()));
        }
        for banned in ["panicked", "RUST_BACKTRACE", "C++", "frame #"] {
            if stderr.contains(banned) {
                problems.push(format!("shows {banned:?}"));
            }
        }
        for w in &case.want {
            if !stderr.contains(w.as_str()) {
                problems.push(format!("lacks {w:?}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("[{}] {}: {}\n    stderr: {}", case.category, case.what, problems.join(", "), stderr.trim()));
        }
    }
    // Nothing a resume would pick: no case committed a checkpoint where the configs write.
    if out.exists() {
        let loc = Location::parse(&s(&out)).unwrap();
        assert!(block_on(latest_checkpoint(&loc)).unwrap().is_none(), "a bad input left a resumable checkpoint in {}", out.display());
    }
    assert!(failures.is_empty(), "{} of {} bad inputs misbehaved:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (c, n) in &per_category {
        assert!(*n >= 5, "category {c} has {n} cases");
    }
}
