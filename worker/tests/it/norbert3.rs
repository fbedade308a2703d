//! NorBERT3 / LTG-BERT (`NorbertForMaskedLM`) against its reference: the stored fixtures of the
//! tiny random model in `shared/reference/remote-code/tiny-norbert3` (made by the upstream remote
//! code under transformers 5.24) and, for gradients, the same code run now in the reference venv
//! by `scripts/reference/encoder_reference.py`. Every parameter of the tiny model is random, so
//! identity norms or zero biases cannot hide a mistake.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use splade_worker::model::{Batch, LoadOptions, SparseEncoder};
use tch::{Device, Kind, Tensor};

use crate::support::{ref_python, repo};

const TOL: f64 = 1e-4;

fn tiny_dir() -> PathBuf {
    repo().join("../shared/reference/remote-code/tiny-norbert3")
}

fn fixtures() -> BTreeMap<String, Tensor> {
    let file = tiny_dir().join("reference/outputs.safetensors");
    Tensor::read_safetensors(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).into_iter().collect()
}

fn load(dir: &Path) -> SparseEncoder {
    SparseEncoder::load(dir, Device::Cpu, &LoadOptions::default()).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn batch(input_ids: &Tensor, attention_mask: &Tensor) -> Batch {
    let lengths = Vec::<i64>::try_from(attention_mask.sum_dim_intlist(1, false, Kind::Int64)).unwrap();
    Batch {
        input_ids: input_ids.shallow_clone(),
        token_type_ids: input_ids.zeros_like(),
        attention_mask: attention_mask.shallow_clone(),
        lengths: lengths.into_iter().map(|n| n as usize).collect(),
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    f64::try_from((a - b).abs().max()).unwrap()
}

/// The head's raw per-token output `decoder(transform(hidden))` [B, L, V].
fn raw_head(enc: &SparseEncoder, hidden: &Tensor, train: bool) -> Tensor {
    enc.mlm.head_transform(hidden, train).matmul(&enc.mlm.decoder_weight().tr()) + enc.mlm.decoder_bias()
}

#[test]
fn norbert3_hidden_states_and_head_output_match_reference_on_padded_batch() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    let enc = load(&tiny_dir());
    let b = batch(&fx["input_ids"], &fx["attention_mask"]);
    assert!(b.lengths.iter().min() < b.lengths.iter().max(), "the fixture batch must be padded");
    let hidden = enc.mlm.encode(&b, false);
    let real = fx["attention_mask"].to_kind(Kind::Float).unsqueeze(-1);
    let d_hidden = max_abs(&(&hidden * &real), &(&fx["last_hidden_state"] * &real));
    let raw = raw_head(&enc, &hidden, false);
    let d_raw_real = max_abs(&(&raw * &real), &(&fx["mlm_raw"] * &real));
    let d_raw_all = max_abs(&raw, &fx["mlm_raw"]);
    eprintln!("norbert3 padded batch: hidden (real tokens) {d_hidden:e}, mlm_raw real tokens {d_raw_real:e}, all positions {d_raw_all:e}");
    assert!(d_hidden < TOL, "last_hidden_state differs by {d_hidden:e}");
    assert!(d_raw_real < TOL, "mlm_raw differs by {d_raw_real:e} on real tokens");
    assert!(d_raw_all < TOL, "mlm_raw differs by {d_raw_all:e} on padded positions");
}

/// 193 tokens with `max_position_embeddings` 128: the reference rebuilds the bucket table (with its
/// hard-coded 512); a fresh model's output is the fixture, and our model stays fresh afterwards
/// (the reference's stored-table statefulness would move the padded batch's logits by up to 2.75).
#[test]
fn norbert3_long_input_past_the_bucket_table_matches_reference_and_leaves_no_state() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    let enc = load(&tiny_dir());
    assert_eq!(enc.mlm.max_positions(), None);
    let ids = &fx["long_input_ids"];
    assert!(ids.size()[1] > 128, "the long fixture must exceed max_position_embeddings");
    let long = batch(ids, &ids.ones_like());
    let d_long = max_abs(&enc.mlm.encode(&long, false), &fx["long_last_hidden_state"]);
    let b = batch(&fx["input_ids"], &fx["attention_mask"]);
    let d_after = max_abs(&raw_head(&enc, &enc.mlm.encode(&b, false), false), &fx["mlm_raw"]);
    eprintln!("norbert3 long input (193 tokens): hidden {d_long:e}; padded batch afterwards: mlm_raw {d_after:e}");
    assert!(d_long < TOL, "long_last_hidden_state differs by {d_long:e}");
    assert!(d_after < TOL, "after a long input the padded batch's mlm_raw differs by {d_after:e}");
}

#[test]
fn norbert3_splade_vectors_lean_and_dense_equal_reference_without_nan() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    let enc = load(&tiny_dir());
    let b = batch(&fx["input_ids"], &fx["attention_mask"]);
    for (name, emb) in [("lean (forward)", enc.forward(&b, false)), ("dense", enc.forward_with_head(&b, false, false))] {
        let nan = i64::try_from(emb.isnan().sum(Kind::Int64)).unwrap();
        assert_eq!(nan, 0, "{name}: {nan} NaN entries");
        let d = max_abs(&emb, &fx["splade_masked"]);
        eprintln!("norbert3 SPLADE {name}: max abs diff {d:e}");
        assert!(d < TOL, "{name} SPLADE differs from splade_masked by {d:e}");
        let low = f64::try_from(emb.narrow(1, 0, 107).abs().max()).unwrap();
        assert_eq!(low, 0.0, "{name}: ids below 107 must never activate");
    }
}

/// Runs the reference forward/backward of `dir` on the fixture's ids; returns its tensors.
fn reference_gradients(dir: &Path, ids: &Tensor, mask: &Tensor, work: &Path) -> BTreeMap<String, Tensor> {
    let rows = |t: &Tensor| Vec::<Vec<i64>>::try_from(t).unwrap();
    let input = work.join("in.json");
    let spec = serde_json::json!({"input_ids": rows(ids), "attention_mask": rows(mask), "probe_seed": 11});
    std::fs::write(&input, spec.to_string()).unwrap();
    let out = work.join("ref.safetensors");
    let run = Command::new(ref_python())
        .arg(repo().join("scripts/reference/encoder_reference.py"))
        .args(["--model".as_ref(), dir.as_os_str(), "--input".as_ref(), input.as_os_str(), "--out".as_ref(), out.as_os_str()])
        .env("HF_HUB_OFFLINE", "1")
        .env("SPLADE_REMOTE_CODE_DIR", repo().join("../shared/reference/remote-code"))
        .output()
        .expect("spawn reference python");
    assert!(run.status.success(), "encoder_reference.py failed:\n{}", String::from_utf8_lossy(&run.stderr));
    Tensor::read_safetensors(&out).unwrap().into_iter().collect()
}

/// Every parameter's gradient of `Σ splade ⊙ probe` (lean and dense head) equals PyTorch's within
/// 1e-4 relative L2, the tied word embedding / decoder included.
#[test]
fn norbert3_parameter_gradients_match_pytorch() {
    let fx = fixtures();
    let work = tempfile::tempdir().unwrap();
    let reference = reference_gradients(&tiny_dir(), &fx["input_ids"], &fx["attention_mask"], work.path());
    let d_raw = max_abs(&reference["mlm_raw"], &fx["mlm_raw"]);
    assert!(d_raw < TOL, "the reference run's mlm_raw differs from the fixture by {d_raw:e}");
    let ref_grads: BTreeMap<&str, &Tensor> =
        reference.iter().filter_map(|(n, t)| n.strip_prefix("grad.").map(|p| (p, t))).collect();
    let enc = load(&tiny_dir());
    let b = batch(&fx["input_ids"], &fx["attention_mask"]);
    for lean in [true, false] {
        for t in enc.vs.variables().values_mut() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let splade = enc.forward_with_head(&b, false, lean);
        let d_splade = max_abs(&splade.detach(), &reference["splade"]);
        assert!(d_splade < TOL, "lean={lean}: SPLADE differs from the reference run by {d_splade:e}");
        (&splade * &reference["probe"]).sum(Kind::Float).backward();
        let ours = enc.vs.variables();
        let ours_names: BTreeSet<&str> = ours.keys().map(String::as_str).collect();
        let ref_names: BTreeSet<&str> = ref_grads.keys().copied().collect();
        assert_eq!(ours_names, ref_names, "parameter names differ from the reference's");
        let mut worst = (0.0f64, String::new());
        for (name, want) in &ref_grads {
            let got = ours[*name].grad();
            assert!(got.defined(), "lean={lean}: no gradient for {name}");
            let norm = f64::try_from(want.norm()).unwrap();
            assert!(norm > 0.0, "the reference gradient of {name} is zero: the test would prove nothing");
            let rel = f64::try_from((&got - *want).norm()).unwrap() / norm;
            if rel > worst.0 {
                worst = (rel, name.to_string());
            }
            assert!(rel < TOL, "lean={lean}: gradient of {name} differs by {rel:e} relative");
        }
        eprintln!("norbert3 gradients lean={lean}: {} parameters, worst relative L2 {:e} ({})", ref_grads.len(), worst.0, worst.1);
    }
}

/// What the model would save holds every key the reference code expects, the tied decoder and the
/// bucket buffers included (transformers 5 fails on missing `position_indices`).
#[test]
fn norbert3_state_dict_has_every_reference_key() {
    let enc = load(&tiny_dir());
    let checkpoint: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(tiny_dir().join("model.safetensors")).unwrap().into_iter().collect();
    let sd: BTreeMap<String, Tensor> = enc.mlm.state_dict().into_iter().collect();
    let mut want: BTreeSet<String> = checkpoint.keys().cloned().collect();
    want.insert("classifier.nonlinearity.5.weight".into());
    assert_eq!(sd.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(sd["classifier.nonlinearity.5.weight"].equal(&checkpoint["embedding.word_embedding.weight"]));
    for (name, t) in &checkpoint {
        assert!(sd[name].to_kind(t.kind()).equal(t), "{name} is not the checkpoint's tensor");
    }
    assert_eq!(enc.mlm.config_json(), serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(tiny_dir().join("config.json")).unwrap()).unwrap());
}

#[test]
fn norbert3_checkpoint_missing_a_key_names_it() {
    let work = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, work.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let missing = "transformer.layers.1.attention.in_proj_v.bias";
    let file = work.path().join("model.safetensors");
    let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(&file).unwrap().into_iter().filter(|(n, _)| n != missing).collect();
    Tensor::write_safetensors(&kept, &file).unwrap();
    let err = match SparseEncoder::load(work.path(), Device::Cpu, &LoadOptions::default()) {
        Ok(_) => panic!("a checkpoint without {missing} loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(missing), "the error does not name the missing key: {err}");
    assert!(err.contains("model.safetensors"), "the error does not name the file: {err}");
}

/// Dropout follows the config (0.1) in training, head included, and `model.dropout` overrides it:
/// at 0 a training forward is the eval forward.
#[test]
fn norbert3_dropout_override_zero_makes_training_forward_equal_eval() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    let b = batch(&fx["input_ids"], &fx["attention_mask"]);
    let plain = load(&tiny_dir());
    tch::manual_seed(5);
    let d_train = max_abs(&plain.forward(&b, true), &fx["splade_masked"]);
    assert!(d_train > 1e-2, "config dropout 0.1 changed the training SPLADE vectors by only {d_train:e}");
    let opts = LoadOptions { dropout: Some(0.0), ..LoadOptions::default() };
    let off = SparseEncoder::load(&tiny_dir(), Device::Cpu, &opts).unwrap();
    let d_off = max_abs(&off.forward(&b, true), &fx["splade_masked"]);
    assert!(d_off < TOL, "with dropout 0 the training forward differs from the reference by {d_off:e}");
    // Only the head's dropout is left on: the encoder is exact, the head output is not.
    let hidden = plain.mlm.encode(&b, false);
    let d_head = max_abs(&raw_head(&plain, &hidden, true), &fx["mlm_raw"]);
    assert!(d_head > 1e-2, "the head's dropout did not act in training ({d_head:e})");
}

/// A saved folder loads in the reference code (transformers 5.24, remote code) with the same head
/// output: the tied decoder and the bucket buffers are written, and our own reload agrees too.
#[test]
fn norbert3_saved_folder_loads_in_the_reference_with_equal_outputs() {
    let fx = fixtures();
    let enc = load(&tiny_dir());
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("saved");
    enc.save(&out).unwrap();
    let reference = reference_gradients(&out, &fx["input_ids"], &fx["attention_mask"], work.path());
    let d_ref = max_abs(&reference["mlm_raw"], &fx["mlm_raw"]);
    let _g = tch::no_grad_guard();
    let again = load(&out);
    let b = batch(&fx["input_ids"], &fx["attention_mask"]);
    let d_ours = max_abs(&raw_head(&again, &again.mlm.encode(&b, false), false), &fx["mlm_raw"]);
    eprintln!("norbert3 saved folder: reference mlm_raw {d_ref:e}, our reload {d_ours:e}");
    assert!(d_ref < TOL, "the reference run on the saved folder differs by {d_ref:e}");
    assert!(d_ours < TOL, "our reload of the saved folder differs by {d_ours:e}");
}
