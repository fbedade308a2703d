//! Every architecture behind one encoder: chosen from `config.json`, saved as folders that the seed's
//! sentence-transformers 5.2 / transformers 4.57 (and, for native architectures, 6.2 / 5.24) load with
//! the embeddings we compute, and usable through `splade encode`, `decode` and `eval`.

use std::path::{Path, PathBuf};
use std::process::Command;

use splade_worker::model::{LoadOptions, SparseEncoder};
use tch::Device;

use crate::parity::{assert_all_close, ours, theirs_on, weight_warnings};
use crate::support::*;

/// The tiny models of each architecture: (name, folder, remote code, load options).
fn tiny_models() -> Vec<(&'static str, PathBuf, bool, LoadOptions)> {
    let rc = repo().join("../shared/reference/remote-code");
    let patched = LoadOptions { patch_sigmoid: Some(true), ..Default::default() };
    vec![
        ("bert", model("splade-tiny"), false, LoadOptions::default()),
        ("norbert3", rc.join("tiny-norbert3"), true, LoadOptions::default()),
        ("gptbert-v1", rc.join("tiny-gptbert-v1"), true, patched.clone()),
        ("gptbert-v2", model("tiny-gptbert-v2"), true, patched),
        ("xlm-roberta", model("tiny-xlmr"), false, LoadOptions::default()),
        ("modernbert", model("tiny-modernbert"), false, LoadOptions::default()),
    ]
}

/// Short texts: queries and documents, some longer than the tiny models' local windows.
fn texts() -> Vec<(String, bool)> {
    let mut t: Vec<(String, bool)> = parity_texts().into_iter().filter(|(s, _)| s.len() < 400).take(8).collect();
    t.push(("Hva er navnet på flyplassen i Moss?".into(), true));
    t
}

#[test]
fn saved_folders_of_every_architecture_load_in_sentence_transformers_5_2_and_6_2_with_equal_embeddings() {
    let texts = texts();
    for (name, dir, remote, opts) in tiny_models() {
        let model = SparseEncoder::load(&dir, Device::Cpu, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tmp = tempfile::tempdir().unwrap();
        let saved = tmp.path().join("final");
        model.save(&saved).unwrap();
        let ours_saved = ours(&saved, &LoadOptions::default(), &texts);
        let ours_base = ours(&dir, &opts, &texts);
        assert_all_close(&ours_saved, &ours_base, &texts, &format!("{name}: reloaded folder vs the model it was saved from"));
        let nonzero: usize = ours_saved.iter().map(|e| e.0.len()).sum();
        assert!(nonzero > 0, "{name}: every embedding is empty; the comparison would prove nothing");
        // Remote code runs unmodified on the seed's stack; on transformers 5 it needs the shims of
        // shared/reference/remote-code, so the native architectures alone are checked on 6.2 too.
        let stacks: &[Stack] = if remote { &[Stack::St52] } else { &[Stack::St52, Stack::St62] };
        // NorBERT3's reference head sets ids < 107 to −inf and sentence-transformers multiplies the
        // logits by the mask before the activation: every padded row is NaN there. Unpadded
        // (one text a batch) its values are the intended ones, which ours are for any batch.
        let batch = if name == "norbert3" { 1 } else { 8 };
        for &stack in stacks {
            let (theirs, meta) = theirs_on(stack, &saved, &texts, remote, batch);
            let warnings = weight_warnings(&meta);
            assert!(warnings.is_empty(), "{name} on sentence-transformers {}: load warnings {warnings:?}", stack.version());
            assert_all_close(&ours_saved, &theirs, &texts, &format!("{name} on sentence-transformers {}", stack.version()));
        }
    }
}

#[test]
fn remote_code_folders_carry_their_code_and_gptbert_the_seed_sigmoid_patch() {
    let rc = repo().join("../shared/reference/remote-code");
    let tmp = tempfile::tempdir().unwrap();
    for (patch, sub) in [(true, "patched"), (false, "reference")] {
        let opts = LoadOptions { patch_sigmoid: Some(patch), ..Default::default() };
        let model = SparseEncoder::load(&rc.join("tiny-gptbert-v1"), Device::Cpu, &opts).unwrap();
        let out = tmp.path().join(sub);
        model.save(&out).unwrap();
        let code = std::fs::read_to_string(out.join("modeling_gptbert.py")).unwrap();
        let sigmoid = "subword_prediction = 30 * torch.sigmoid(subword_prediction / 7.5)";
        // The seed's patch removes the MaskedLM's line only; the CausalLM class keeps its own.
        assert_eq!(code.matches(sigmoid).count(), if patch { 1 } else { 2 }, "{sub}: sigmoid lines");
        assert_eq!(code.contains("PATCHED for SPLADE"), patch, "{sub}: patch marker");
        assert!(out.join("configuration_gptbert.py").exists(), "{sub}: configuration file not carried");
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert!(cfg["auto_map"].is_object(), "{sub}: auto_map lost");
        // Reloading the saved folder follows its own code: patched stays patched.
        let again = SparseEncoder::load(&out, Device::Cpu, &LoadOptions::default()).unwrap();
        assert_eq!(again.mlm.head_layout().squash.is_none(), patch, "{sub}: reload chose the wrong head");
    }
    let model = SparseEncoder::load(&rc.join("tiny-norbert3"), Device::Cpu, &LoadOptions::default()).unwrap();
    let out = tmp.path().join("norbert3");
    model.save(&out).unwrap();
    for f in ["modeling_norbert.py", "configuration_norbert.py"] {
        assert!(out.join(f).exists(), "norbert3: {f} not carried");
    }
}

#[test]
fn unknown_architecture_names_what_config_json_says_and_the_supported_list() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model("splade-tiny").join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["DebertaV2ForMaskedLM"], "auto_map": {"AutoModel": "modeling_x.FancyModel"}, "model_type": "deberta-v2", "vocab_size": 30522}"#,
    )
    .unwrap();
    let err = SparseEncoder::load(dir, Device::Cpu, &LoadOptions::default()).err().expect("must fail").to_string();
    for want in ["config.json", "DebertaV2ForMaskedLM", "FancyModel", "deberta-v2", "NorbertForMaskedLM", "GptBertForMaskedLM", "XLMRobertaForMaskedLM", "ModernBertForMaskedLM"] {
        assert!(err.contains(want), "error lacks {want:?}: {err}");
    }
}

/// A BEIR task of the first `n` NorQuAD passages and the dev queries that point at them.
fn mini_task(root: &Path, n: usize) -> PathBuf {
    let src = repo().join("data/norquad");
    let dir = root.join("norquad-mini");
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    let corpus: Vec<String> = std::fs::read_to_string(src.join("corpus.jsonl")).unwrap().lines().take(n).map(String::from).collect();
    let ids: std::collections::HashSet<String> =
        corpus.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["_id"].as_str().unwrap().to_string()).collect();
    let qrels: Vec<String> = std::fs::read_to_string(src.join("qrels/dev.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| l.split('\t').nth(1).is_some_and(|d| ids.contains(d)))
        .map(String::from)
        .collect();
    let qids: std::collections::HashSet<&str> = qrels.iter().map(|l| l.split('\t').next().unwrap()).collect();
    let queries: Vec<String> = std::fs::read_to_string(src.join("queries.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| qids.contains(serde_json::from_str::<serde_json::Value>(l).unwrap()["_id"].as_str().unwrap()))
        .map(String::from)
        .collect();
    assert!(queries.len() >= 5, "want several queries, got {}", queries.len());
    std::fs::write(dir.join("corpus.jsonl"), corpus.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("queries.jsonl"), queries.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("qrels/dev.tsv"), format!("query-id\tcorpus-id\tscore\n{}\n", qrels.join("\n"))).unwrap();
    dir
}

fn splade(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_splade")).args(args).output().unwrap();
    assert!(out.status.success(), "splade {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn encode_decode_and_eval_commands_work_on_every_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let task = mini_task(tmp.path(), 40);
    for (name, dir, _remote, opts) in tiny_models() {
        // Through a saved folder, so the GPT-BERT head is the patched one the folder's code says.
        let saved = tmp.path().join(name);
        SparseEncoder::load(&dir, Device::Cpu, &opts).unwrap().save(&saved).unwrap();
        let m = saved.to_str().unwrap();
        let q = "Hva er stoffet fentanyl?";
        let enc = splade(&["encode", "--model", m, "--query", "--json", q]);
        let v: serde_json::Value = serde_json::from_str(enc.lines().next().unwrap()).unwrap_or_else(|e| panic!("{name}: {e}: {enc}"));
        let idx = v["indices"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let val = v["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let want = ours(&saved, &LoadOptions::default(), &[(q.to_string(), true)]).remove(0);
        assert!(!want.0.is_empty(), "{name}: empty query embedding");
        assert_sparse_close(&(idx, val), &want, 1e-5, &format!("{name}: splade encode vs the library"));
        let dec = splade(&["decode", "--model", m, "--top-k", "5", "Moss lufthavn Rygge"]);
        assert!(!dec.trim().is_empty(), "{name}: decode printed nothing");
        let out = tmp.path().join(format!("eval-{name}"));
        splade(&["eval", "--model", m, "--task", task.to_str().unwrap(), "--output", out.to_str().unwrap()]);
        let result = std::fs::read_dir(&out).unwrap().flatten().find(|e| e.path().extension().is_some_and(|x| x == "json"));
        let result = result.unwrap_or_else(|| panic!("{name}: eval wrote no MTEB JSON"));
        let text = std::fs::read_to_string(result.path()).unwrap();
        assert!(text.contains("ndcg_at_10"), "{name}: {text}");
    }
}

/// 8 steps of `splade train` on the remote-code models, plain and inference-free (the seed's default
/// is inference-free NorBERT3), equal to sentence-transformers' trainer replaying the same batches
/// (dropout 0): ranking loss, weighted FLOPS terms, learning rate and regulariser weights at every
/// step within 1e-4 relative. GPT-BERT trains with the seed's patched head, from a folder whose code
/// is patched, so both sides run the same head.
#[test]
fn remote_code_models_train_like_sentence_transformers_plain_and_inference_free() {
    use splade_common::config::Config;
    use splade_worker::train::{run_training, TrainOptions};

    let tmp = tempfile::tempdir().unwrap();
    let rc = repo().join("../shared/reference/remote-code");
    let gptbert = tmp.path().join("gptbert-v1-patched");
    SparseEncoder::load(&rc.join("tiny-gptbert-v1"), Device::Cpu, &LoadOptions { patch_sigmoid: Some(true), ..Default::default() })
        .unwrap()
        .save(&gptbert)
        .unwrap();
    let data = crate::train::small_pairs(tmp.path(), 64);
    for (name, base) in [("norbert3", rc.join("tiny-norbert3")), ("gptbert-v1", gptbert)] {
        for inference_free in [false, true] {
            let what = format!("{name}{}", if inference_free { " inference-free" } else { "" });
            let out = tmp.path().join(format!("out-{name}-{inference_free}"));
            let q_lr = if inference_free { "\n  query_learning_rate: 1.0e-2" } else { "" };
            let training = format!("  max_steps: 8\n  save_strategy: \"no\"\n  per_device_train_batch_size: 8{q_lr}");
            let mut text = crate::train::tiny_config(&out, &data, &training, "")
                .replace(&model("splade-tiny").display().to_string(), &base.display().to_string());
            if inference_free {
                text = text.replace("  dropout: 0.0\n", "  dropout: 0.0\n  architecture: inference-free-splade\n");
            }
            let plan = tmp.path().join(format!("plan-{name}-{inference_free}.jsonl"));
            let cfg = Config::from_str(&text, "arch.yaml").unwrap();
            run_training(cfg, &TrainOptions { dump_batches: Some(plan.clone()), ..Default::default() }).unwrap_or_else(|e| panic!("{what}: {e}"));
            let ours = crate::train::train_steps(&out.join("metrics.jsonl"));
            assert_eq!(ours.len(), 8, "{what}");
            let steps = tmp.path().join(format!("st-{name}-{inference_free}.json"));
            let mut cmd = Stack::St62.python("st_train_replay.py");
            cmd.args(["--model", base.to_str().unwrap(), "--data", data.to_str().unwrap()])
                .args(["--plan", plan.to_str().unwrap(), "--out", steps.to_str().unwrap()])
                .args(["--max-steps", "8", "--batch-size", "8"]);
            if inference_free {
                cmd.args(["--inference-free", "--q-lr", "1e-2"]);
            }
            let res = cmd.output().unwrap();
            assert!(res.status.success(), "{what}: st_train_replay.py failed:\n{}", String::from_utf8_lossy(&res.stderr));
            let theirs: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&steps).unwrap()).unwrap();
            assert_eq!(theirs.len(), 8, "{what}: sentence-transformers ran {} steps", theirs.len());
            eprintln!("{what}: comparing 8 steps with sentence-transformers");
            crate::train::assert_steps_match_st(&ours, &theirs, 1e-4);
            let (first, last) = (ours[0]["train/loss_ranking"].as_f64().unwrap(), ours[7]["train/loss_ranking"].as_f64().unwrap());
            assert!((first - last).abs() > 1e-4, "{what}: training did not change the loss ({first} → {last})");
        }
    }
}

/// The checkpoint formats transformers writes load to the same model: one `model.safetensors`,
/// sharded safetensors with `model.safetensors.index.json` (`save_pretrained(max_shard_size=…)`), and
/// a `torch.save` archive of the state dict, `pytorch_model.bin` (what NorBERT4's converter and
/// transformers 4's `safe_serialization=False` write).
#[test]
fn sharded_safetensors_and_pytorch_model_bin_load_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let base = model("splade-tiny");
    let script = r#"
import sys
from transformers import AutoModelForMaskedLM, AutoTokenizer
base, out = sys.argv[1], sys.argv[2]
m = AutoModelForMaskedLM.from_pretrained(base)
tok = AutoTokenizer.from_pretrained(base)
m.save_pretrained(out + "/sharded", max_shard_size="5MB")
# transformers 5 always writes safetensors: the archive is written as NorBERT4's converter does it.
import os, torch
os.makedirs(out + "/bin")
m.config.save_pretrained(out + "/bin")
torch.save(dict(m.state_dict()), out + "/bin/pytorch_model.bin")
# What a plain `torch.save(model.state_dict())` writes: an OrderedDict with `_metadata`.
os.makedirs(out + "/ordered")
m.config.save_pretrained(out + "/ordered")
tok.save_pretrained(out + "/ordered")
torch.save(m.state_dict(), out + "/ordered/pytorch_model.bin")
for d in ("sharded", "bin"):
    tok.save_pretrained(out + "/" + d)
"#;
    let res = Command::new(ref_python()).args(["-c", script, base.to_str().unwrap(), tmp.path().to_str().unwrap()]).output().unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let sharded = tmp.path().join("sharded");
    let shards = std::fs::read_dir(&sharded).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors")).count();
    assert!(shards >= 2 && sharded.join("model.safetensors.index.json").exists(), "transformers wrote {shards} shards");
    assert!(tmp.path().join("bin/pytorch_model.bin").exists() && !tmp.path().join("bin/model.safetensors").exists());
    let texts = texts();
    let want = ours(&base, &LoadOptions::default(), &texts);
    for dir in [sharded, tmp.path().join("bin")] {
        let got = ours(&dir, &LoadOptions::default(), &texts);
        assert_all_close(&got, &want, &texts, &dir.display().to_string());
    }
    // The OrderedDict archive is refused with the way out, not a crash.
    let err = SparseEncoder::load(&tmp.path().join("ordered"), Device::Cpu, &LoadOptions::default()).err().expect("must fail").to_string();
    assert!(err.contains("pytorch_model.bin") && err.contains("torch.save(dict(state_dict), path)"), "{err}");
    // A shard the index names but that is gone is an error naming the file, not a half-loaded model.
    let index = tmp.path().join("sharded/model.safetensors.index.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let first = v["weight_map"].as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string();
    std::fs::remove_file(tmp.path().join("sharded").join(&first)).unwrap();
    let err = SparseEncoder::load(&tmp.path().join("sharded"), Device::Cpu, &LoadOptions::default()).err().expect("must fail").to_string();
    assert!(err.contains(&first), "{err}");
}

/// A checkpoint of another layout (here BERT weights renamed to RoBERTa's `roberta.` prefix under a
/// BERT config) names the first tensor it lacks and the nearest one it has.
#[test]
fn checkpoint_of_another_layout_names_the_missing_and_the_nearest_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let base = model("splade-tiny");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(base.join(f), tmp.path().join(f)).unwrap();
    }
    let renamed: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(base.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n.replacen("bert.", "roberta.", 1), t))
        .collect();
    tch::Tensor::write_safetensors(&renamed, tmp.path().join("model.safetensors")).unwrap();
    let err = SparseEncoder::load(tmp.path(), Device::Cpu, &LoadOptions::default()).err().expect("must fail").to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("missing tensor 'bert.embeddings.word_embeddings.weight'"), "{err}");
    assert!(err.contains("'roberta.embeddings.word_embeddings.weight'"), "{err}");
}
