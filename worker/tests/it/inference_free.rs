//! Inference-free SPLADE (sentence-transformers' Router: a static per-token table for queries, the
//! MLM for documents): folders sentence-transformers 6.2 writes load here with the same
//! embeddings; what we save and train is the layout the seed's 5.2 writes, and loads in 5.2 and 6.2
//! with the same embeddings; training matches its trainer step by step and resumes exactly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use splade_common::config::Config;
use splade_worker::model::{LoadOptions, SparseEncoder, TextKind, WindowSpec, STATIC_VAR};
use splade_worker::train::{run_training, TrainOptions, Trainer};
use tch::{Device, Tensor};

use crate::parity::{assert_all_close, ours, theirs, theirs_on, weight_warnings};
use crate::support::*;
use crate::train::{small_pairs, tiny_config, train_steps};

/// An inference-free SparseEncoder built and saved by sentence-transformers 6.2 from SPLADE-tiny,
/// with a random (not all-ones) static table so that a loader ignoring it cannot pass.
pub fn st_folder(tmp: &Path) -> PathBuf {
    st_folder_on(Stack::St62, tmp)
}

/// [`st_folder`] built and saved by the sentence-transformers of `stack`.
fn st_folder_on(stack: Stack, tmp: &Path) -> PathBuf {
    let dir = tmp.join(format!("st-inference-free-{}", stack.version()));
    st_reference_on(stack, &[
        "make-inference-free",
        "--base",
        model("splade-tiny").to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--max-length",
        "128",
        "--random-weights",
    ]);
    dir
}

/// Relative paths of the files under `dir`, without the model card, our side file and the tokenizer
/// files that only some transformers versions write (4.57 adds `special_tokens_map.json` and
/// `vocab.txt`, 5.x does not; we copy whichever the source folder has, and both stacks load either).
fn layout(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                let optional_tokenizer_file = rel.ends_with("special_tokens_map.json") || rel.ends_with("vocab.txt");
                if rel != "README.md" && rel != "splade_encoder.json" && !rel.ends_with("manifest.json") && !optional_tokenizer_file {
                    out.insert(rel);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn static_weight(dir: &Path) -> Tensor {
    let t = Tensor::read_safetensors(dir.join("query_0_SparseStaticEmbedding/model.safetensors")).unwrap();
    assert_eq!(t.len(), 1, "the static module holds one tensor");
    assert_eq!(t[0].0, "weight");
    t[0].1.shallow_clone()
}

#[test]
fn inference_free_sentence_transformers_folder_loads_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = st_folder(tmp.path());
    let model = SparseEncoder::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    assert!(model.is_inference_free(), "a Router folder loads as inference-free");
    let texts = parity_texts();
    let (st, meta) = theirs(&dir, &texts);
    assert!(weight_warnings(&meta).is_empty(), "sentence-transformers warned: {:?}", weight_warnings(&meta));
    let mine = ours(&dir, &LoadOptions::default(), &texts);
    assert_all_close(&mine, &st, &texts, "sentence-transformers' inference-free folder");

    // Queries really go through the random table (values other than 1, no [CLS]/[SEP] entries),
    // and a query differs from the same text encoded as a document.
    let q = model.encode(&["what is the capital of norway"], TextKind::Query, 1).unwrap().remove(0);
    let d = model.encode(&["what is the capital of norway"], TextKind::Document, 1).unwrap().remove(0);
    assert!(q.1.iter().any(|&v| (v - 1.0).abs() > 1e-3), "query weights look like the all-ones default: {:?}", q.1);
    assert!(!q.0.contains(&101) && !q.0.contains(&102), "static queries carry no special tokens: {:?}", q.0);
    assert!(q.0.len() <= 6 && d.0.len() > 6, "query {} dims vs document {} dims", q.0.len(), d.0.len());
    // Windows are for documents; a static query has nothing to window.
    let spec = WindowSpec { size: 16, stride: 8, max_windows: None };
    assert!(model.check_windows(&spec, TextKind::Document).is_ok());
    let e = model.encode_windowed(&["a query"], TextKind::Query, &spec, 4).unwrap_err().to_string();
    assert!(e.contains("static token table"), "{e}");

    // Saving writes the layout the seed's sentence-transformers 5.2 writes (6.2 loads it too), and it
    // loads in both with the same embeddings.
    let saved = tmp.path().join("ours");
    model.save(&saved).unwrap();
    let st52 = st_folder_on(Stack::St52, tmp.path());
    assert_eq!(layout(&saved), layout(&st52), "file layout differs from sentence-transformers 5.2's save");
    for f in ["modules.json", "router_config.json", "query_0_SparseStaticEmbedding/config.json", "document_1_SpladePooling/config.json",
        "document_0_MLMTransformer/sentence_bert_config.json"]
    {
        assert_eq!(json(&saved.join(f)), json(&st52.join(f)), "{f} differs from sentence-transformers 5.2's");
    }
    let ours_again = ours(&saved, &LoadOptions::default(), &texts);
    assert_all_close(&ours_again, &mine, &texts, "reloaded from our save");
    for stack in [Stack::St52, Stack::St62] {
        let (st_again, meta) = theirs_on(stack, &saved, &texts, false, 8);
        assert!(weight_warnings(&meta).is_empty(), "sentence-transformers {} warned on our folder: {:?}", stack.version(), weight_warnings(&meta));
        assert_all_close(&ours_again, &st_again, &texts, &format!("our saved inference-free folder in sentence-transformers {}", stack.version()));
    }
}

/// A config for inference-free SPLADE from SPLADE-tiny: `training` and `model` lines added.
fn inference_free_config(out: &Path, data: &Path, training: &str, model_extra: &str) -> String {
    tiny_config(out, data, training, "")
        .replace("  dropout: 0.0\n", &format!("  dropout: 0.0\n  architecture: inference-free-splade\n{model_extra}"))
}

#[test]
fn train_inference_free_final_loads_in_sentence_transformers_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_pairs(tmp.path(), 40);
    let training = "  max_steps: 4\n  per_device_train_batch_size: 4\n  save_strategy: steps\n  save_steps: 2\n  \
                    query_learning_rate: 1.0e-2\n  weight_decay: 0.01\n  max_seq_length: 32";
    let mk = |out: &Path, resume: bool| {
        let mut text = inference_free_config(out, &data, training, "");
        if resume {
            text = text.replace("  report_to: none\n", "  report_to: none\n  resume_from_checkpoint: true\n");
        }
        Config::from_str(&text, "inference-free.yaml").unwrap()
    };
    let out = tmp.path().join("run");
    run_training(mk(&out, false), &TrainOptions::default()).unwrap();
    let steps = train_steps(&out.join("metrics.jsonl"));
    assert_eq!(steps.len(), 4);
    assert!(steps[1..].iter().all(|s| s["train/loss_flops_query"].as_f64().unwrap() > 0.0), "query FLOPS on the static embeddings");

    let fin = out.join("final");
    let reference = st_folder(tmp.path());
    assert_eq!(layout(&fin), layout(&reference), "final/ is not sentence-transformers' Router layout");
    // The static table trained away from its all-ones start (query_learning_rate 1e-2).
    let w = static_weight(&fin);
    let moved = (&w - 1.0).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "static query weights did not train (max |w - 1| = {moved})");

    let texts: Vec<(String, bool)> = parity_texts().into_iter().filter(|(t, _)| t.len() < 400).collect();
    let mine = ours(&fin, &LoadOptions::default(), &texts);
    let (st, meta) = theirs(&fin, &texts);
    assert!(weight_warnings(&meta).is_empty(), "sentence-transformers warned on final/: {:?}", weight_warnings(&meta));
    assert_all_close(&mine, &st, &texts, "trained inference-free final/ in sentence-transformers");

    // Resume from checkpoint-2 of the same run: bitwise the same final weights, static table and
    // its optimizer group included.
    let out2 = tmp.path().join("resumed");
    std::fs::create_dir_all(&out2).unwrap();
    let status = Command::new("cp").arg("-r").arg(out.join("checkpoint-2")).arg(out2.join("checkpoint-2")).status().unwrap();
    assert!(status.success());
    let opt = Tensor::read_safetensors(out.join("checkpoint-2/optimizer.safetensors")).unwrap();
    for name in ["m.query_0_SparseStaticEmbedding.weight", "v.query_0_SparseStaticEmbedding.weight"] {
        assert!(opt.iter().any(|(n, _)| n == name), "optimizer state lacks `{name}`");
    }
    run_training(mk(&out2, true), &TrainOptions::default()).unwrap();
    assert_eq!(train_steps(&out2.join("metrics.jsonl")).len(), 2, "resumed run continues at step 3");
    for f in ["query_0_SparseStaticEmbedding/model.safetensors", "document_0_MLMTransformer/model.safetensors"] {
        assert!(std::fs::read(fin.join(f)).unwrap() == std::fs::read(out2.join("final").join(f)).unwrap(), "{f}: resumed run differs");
    }
}

#[test]
fn train_inference_free_loss_parity_with_sentence_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_pairs(tmp.path(), 80);
    let out = tmp.path().join("out");
    let text = inference_free_config(&out, &data, "  max_steps: 8\n  save_strategy: \"no\"\n  query_learning_rate: 1.0e-2\n  per_device_train_batch_size: 8", "");
    let cfg = Config::from_str(&text, "parity.yaml").unwrap();
    let plan = tmp.path().join("plan.jsonl");
    run_training(cfg, &TrainOptions { dump_batches: Some(plan.clone()), ..Default::default() }).unwrap();
    let mine = train_steps(&out.join("metrics.jsonl"));
    assert_eq!(mine.len(), 8);

    let steps = tmp.path().join("st.json");
    let status = Command::new(ref_python())
        .arg(repo().join("scripts/reference/st_train_replay.py"))
        .args(["--model", model("splade-tiny").to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args(["--plan", plan.to_str().unwrap(), "--out", steps.to_str().unwrap()])
        .args(["--max-steps", "8", "--batch-size", "8", "--inference-free", "--q-lr", "1e-2"])
        .status()
        .unwrap();
    assert!(status.success(), "st_train_replay.py failed");
    let st: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&steps).unwrap()).unwrap();
    assert_eq!(st.len(), 8, "sentence-transformers ran {} steps", st.len());
    crate::train::assert_steps_match_st(&mine, &st, 1e-4);
}

#[test]
fn train_inference_free_frozen_table_and_config_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_pairs(tmp.path(), 16);
    let training = "  max_steps: 1\n  per_device_train_batch_size: 4\n  max_seq_length: 32\n  query_learning_rate: 1.0e-2";
    let text = inference_free_config(&tmp.path().join("o"), &data, training, "  freeze_static_embedding: true\n");
    let mut t = Trainer::new(Config::from_str(&text, "frozen.yaml").unwrap(), Device::Cpu, 4, 1).unwrap();
    assert!(t.opt.groups.iter().all(|g| !g.names.iter().any(|n| n == STATIC_VAR)), "a frozen table is not optimised");
    t.train_step().unwrap();
    let st = t.model.query_static.as_ref().unwrap();
    // Regression (issue #17): `vs.unfreeze()` ran every step and gave the frozen table its gradients back.
    assert!(!st.weight.requires_grad(), "the frozen table requires grad again after a step");
    assert!(!st.weight.grad().defined(), "the frozen table got a gradient");
    assert_eq!(st.weight.min().double_value(&[]), 1.0, "frozen table moved");
    assert_eq!(st.weight.max().double_value(&[]), 1.0, "frozen table moved");
    let saved = tmp.path().join("saved");
    t.model.save(&saved).unwrap();
    assert_eq!(json(&saved.join("query_0_SparseStaticEmbedding/config.json")), serde_json::json!({"frozen": true}));

    // Unfrozen: its own group at query_learning_rate / learning_rate.
    let unfrozen = text.replace("  freeze_static_embedding: true\n", "");
    let t = Trainer::new(Config::from_str(&unfrozen, "if.yaml").unwrap(), Device::Cpu, 4, 1).unwrap();
    let g = t.opt.groups.iter().find(|g| g.names.iter().any(|n| n == STATIC_VAR)).expect("a group for the table");
    assert_eq!(g.names.len(), 1);
    assert!((g.lr_scale - 100.0).abs() < 1e-9, "lr scale {}", g.lr_scale);

    // Keys that only mean something for inference-free SPLADE are refused with plain SPLADE.
    let plain = unfrozen.replace("  architecture: inference-free-splade\n", "");
    let e = Trainer::new(Config::from_str(&plain, "plain.yaml").unwrap(), Device::Cpu, 4, 1).err().unwrap().to_string();
    assert!(e.contains("training.query_learning_rate") && e.contains("inference-free-splade"), "{e}");
    let routed = plain.replace("  query_learning_rate: 1.0e-2\n", "").replace("  dropout: 0.0\n", "  dropout: 0.0\n  use_router: true\n");
    let e = Trainer::new(Config::from_str(&routed, "router.yaml").unwrap(), Device::Cpu, 4, 1).err().unwrap().to_string();
    assert!(e.contains("router.yaml:") && e.contains("model.use_router"), "{e}");
}

#[test]
fn train_inference_free_config_file_trains_a_step() {
    // configs/inference-free.yaml as shipped, shrunk to one small step in a temp dir.
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("configs/inference-free.yaml")).unwrap();
    for key in ["source: data/", "output_dir: runs/inference-free", "max_steps: 300", "per_device_train_batch_size: 16", "document_max_length: 256"] {
        assert!(text.contains(key), "configs/inference-free.yaml no longer has `{key}`");
    }
    let text = text
        .replace("source: data/", &format!("source: {}/data/", repo().display()))
        .replace("output_dir: runs/inference-free", &format!("output_dir: {}", tmp.path().join("o").display()))
        .replace("max_steps: 300", "max_steps: 1")
        .replace("per_device_train_batch_size: 16", "per_device_train_batch_size: 4")
        .replace("document_max_length: 256", "document_max_length: 64");
    let cfg = Config::from_str(&text, "configs/inference-free.yaml").unwrap();
    assert!(cfg.inactive_keys().is_empty(), "inactive keys: {:?}", cfg.inactive_keys());
    let mut t = Trainer::new(cfg, Device::Cpu, 4, 1).unwrap();
    assert!(t.model.is_inference_free());
    let stats = t.train_step().unwrap();
    assert!(stats.loss.is_finite());
    assert_eq!(stats.flops_query, 0.0, "query_regularizer_weight: 0 in the config");
    // The table trains at query_learning_rate 1e-3 = 20 × learning_rate 5e-5.
    assert!(t.opt.groups.iter().any(|g| g.names.iter().any(|n| n == STATIC_VAR) && (g.lr_scale - 20.0).abs() < 1e-9));
    let saved = tmp.path().join("saved");
    t.model.save(&saved).unwrap();
    let qtc = json(&saved.join("query_0_SparseStaticEmbedding/tokenizer_config.json"));
    assert_eq!(qtc["model_max_length"], 64, "query_max_length is where sentence-transformers will truncate queries");
    assert!(saved.join("router_config.json").exists());
}
