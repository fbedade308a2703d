//! NorBERT4 / GPT-BERT against the upstream remote code: hidden states, raw MLM head output,
//! SPLADE vectors and every parameter gradient, for both layer variants.
//!
//! v1: the fixture `../shared/reference/remote-code/tiny-gptbert-v1/reference/outputs.safetensors`
//! (6 right-padded texts, up to 72 tokens, longer than the local window 4) and, for gradients,
//! `scripts/reference/encoder_reference.py` on the same folder. v2: `tiny-gptbert-v2` (built by
//! `scripts/reference/make_tiny_gptbert_v2.py` in the set-up) through `encoder_reference.py`, on the
//! fixture's token ids (same tokenizer).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use splade_worker::model::{Batch, LoadOptions, SparseEncoder};
use tch::{Device, Kind, Tensor};

use crate::support::{model, ref_python, repo};

const TOL: f64 = 1e-4;

fn remote_code() -> PathBuf {
    repo().join("../shared/reference/remote-code")
}

fn tiny_v1() -> PathBuf {
    remote_code().join("tiny-gptbert-v1")
}

fn read(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

fn fixture() -> BTreeMap<String, Tensor> {
    read(&tiny_v1().join("reference/outputs.safetensors"))
}

/// The fixture's padded batch as the encoder takes it.
fn batch(fx: &BTreeMap<String, Tensor>) -> Batch {
    let mask = fx["attention_mask"].shallow_clone();
    let lengths = Vec::<i64>::try_from(mask.sum_dim_intlist(1, false, Kind::Int64)).unwrap().into_iter().map(|n| n as usize).collect();
    Batch { input_ids: fx["input_ids"].shallow_clone(), token_type_ids: mask.zeros_like(), attention_mask: mask, lengths }
}

fn load(dir: &Path, patch_sigmoid: bool) -> SparseEncoder {
    let opts = LoadOptions { patch_sigmoid: Some(patch_sigmoid), ..Default::default() };
    SparseEncoder::load(dir, Device::Cpu, &opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Runs `encoder_reference.py` (PyTorch, upstream modeling code) on the fixture's ids.
fn pytorch_reference(dir: &Path, fx: &BTreeMap<String, Tensor>, patch_sigmoid: bool, probe_seed: i64) -> BTreeMap<String, Tensor> {
    let tmp = tempfile::tempdir().unwrap();
    let rows = |t: &Tensor| Vec::<Vec<i64>>::try_from(t).unwrap();
    let input = serde_json::json!({
        "input_ids": rows(&fx["input_ids"]),
        "attention_mask": rows(&fx["attention_mask"]),
        "probe_seed": probe_seed,
    });
    let (inp, out) = (tmp.path().join("in.json"), tmp.path().join("out.safetensors"));
    std::fs::write(&inp, input.to_string()).unwrap();
    let mut cmd = Command::new(ref_python());
    cmd.arg(repo().join("scripts/reference/encoder_reference.py"))
        .args(["--model".as_ref(), dir.as_os_str(), "--input".as_ref(), inp.as_os_str(), "--out".as_ref(), out.as_os_str()])
        .env("HF_HUB_OFFLINE", "1")
        .env("SPLADE_REMOTE_CODE_DIR", remote_code());
    if patch_sigmoid {
        cmd.arg("--patch-sigmoid");
    }
    let res = cmd.output().expect("spawn reference python");
    assert!(res.status.success(), "encoder_reference.py failed:\n{}", String::from_utf8_lossy(&res.stderr));
    read(&out)
}

/// Max |a − b| over real token positions ([B, L, …] tensors, mask [B, L]).
fn max_diff_real(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let m = mask.to_kind(Kind::Bool);
    let m = (0..a.dim() - 2).fold(m, |m, _| m.unsqueeze(-1));
    (a - b).abs().masked_fill(&m.logical_not(), 0.0).max().double_value(&[])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Hidden states and raw head output `decoder_weight · head_transform(h) + bias`.
fn hidden_and_raw(enc: &SparseEncoder, b: &Batch) -> (Tensor, Tensor) {
    let _guard = tch::no_grad_guard();
    let h = enc.mlm.encode(b, false);
    let raw = enc.mlm.head_transform(&h, false).matmul(&enc.mlm.decoder_weight().tr()) + enc.mlm.decoder_bias();
    (h, raw)
}

fn check_hidden_and_raw(enc: &SparseEncoder, b: &Batch, hidden_ref: &Tensor, raw_ref: &Tensor, what: &str) {
    let (h, raw) = hidden_and_raw(enc, b);
    let dh = max_diff_real(&h, hidden_ref, &b.attention_mask);
    let dr = max_diff_real(&raw, raw_ref, &b.attention_mask);
    eprintln!("{what}: max |Δ| hidden {dh:.3e}, raw head {dr:.3e} (real positions)");
    assert!(dh <= TOL, "{what}: hidden states differ by {dh:e}");
    assert!(dr <= TOL, "{what}: raw head output differs by {dr:e}");
}

/// SPLADE vectors by the lean and the dense head equal `expected` [B, V].
fn check_splade(enc: &SparseEncoder, b: &Batch, expected: &Tensor, what: &str) {
    let _guard = tch::no_grad_guard();
    for lean in [true, false] {
        let s = enc.forward_with_head(b, false, lean);
        let d = max_diff(&s, expected);
        eprintln!("{what} (lean {lean}): max |Δ| splade {d:.3e}");
        assert!(d <= TOL, "{what} (lean {lean}): SPLADE differs by {d:e}");
    }
}

/// Every parameter's gradient of `Σ splade ⊙ probe` equals PyTorch's within 1e-4 relative L2
/// (parameters PyTorch leaves without a gradient, like v1's unused layer-0 `attention.lambdas`,
/// must get none or zero here). Gradients that are zero in exact arithmetic are float noise on both
/// sides, so relative error means nothing there: v2's layer-0 `lambdas_v` and `lambdas_qk` mix
/// `h` and `e` where `h = e`, and the LayerNorm that follows is scale-invariant (PyTorch's norms are
/// ~1e-5 against a largest gradient norm of ~1e2). Those, below 1e-6 of the largest norm, are held to
/// an absolute L2 difference of 1e-6 of the largest norm instead.
fn check_gradients(enc: &SparseEncoder, b: &Batch, reference: &BTreeMap<String, Tensor>, lean: bool, what: &str) {
    let vars = enc.vs.variables();
    for t in vars.values() {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let s = enc.forward_with_head(b, false, lean);
    let sd = max_diff(&s, &reference["splade"]);
    assert!(sd <= TOL, "{what}: SPLADE differs by {sd:e} before the backward");
    (&s * &reference["probe"]).sum(Kind::Float).backward();
    let scale = reference
        .iter()
        .filter(|(k, _)| k.starts_with("grad."))
        .map(|(_, g)| g.norm().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(scale > 0.0, "{what}: PyTorch has no gradient at all");
    let mut worst = (String::new(), 0f64);
    let mut compared = 0;
    for (name, t) in &vars {
        let g = t.grad();
        match reference.get(&format!("grad.{name}")) {
            Some(want) => {
                assert!(g.defined(), "{what}: no gradient for {name}");
                let (abs, norm) = ((&g - want).norm().double_value(&[]), want.norm().double_value(&[]));
                if norm < 1e-6 * scale {
                    eprintln!("{what}: {name}: gradient zero in exact arithmetic (norm {norm:.2e}), |Δ| {abs:.2e}");
                    assert!(abs <= 1e-6 * scale, "{what}: near-zero gradient of {name} differs by {abs:e} (scale {scale:e})");
                } else if abs / norm > worst.1 {
                    worst = (name.clone(), abs / norm);
                }
                compared += 1;
            }
            None => {
                let zero = !g.defined() || g.abs().max().double_value(&[]) == 0.0;
                assert!(zero, "{what}: {name} has a gradient here but none in PyTorch");
            }
        }
    }
    let ref_count = reference.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(compared, ref_count, "{what}: PyTorch has gradients for parameters we do not have");
    eprintln!("{what}: {compared} parameter gradients, worst relative L2 {:.3e} ({})", worst.1, worst.0);
    assert!(worst.1 <= TOL, "{what}: gradient of {} differs by {:e} relative", worst.0, worst.1);
}

#[test]
fn gptbert_v1_hidden_states_and_raw_head_match_fixture() {
    let fx = fixture();
    let b = batch(&fx);
    let enc = load(&tiny_v1(), false);
    check_hidden_and_raw(&enc, &b, &fx["last_hidden_state"], &fx["mlm_raw"], "v1");
}

/// One unpadded 193-token text: longer than the global window (64), within max_sequence_length (256).
#[test]
fn gptbert_v1_long_text_hidden_states_match_fixture() {
    let fx = fixture();
    let ids = fx["long_input_ids"].shallow_clone();
    let n = ids.size()[1];
    let mask = ids.ones_like();
    let b = Batch { input_ids: ids, token_type_ids: mask.zeros_like(), attention_mask: mask, lengths: vec![n as usize] };
    let enc = load(&tiny_v1(), false);
    assert_eq!(enc.mlm.max_positions(), Some(256), "max_positions is the config's max_sequence_length");
    let (h, _) = hidden_and_raw(&enc, &b);
    let d = max_diff(&h, &fx["long_last_hidden_state"]);
    eprintln!("v1 long text ({n} tokens): max |Δ| hidden {d:.3e}");
    assert!(d <= TOL, "long text: hidden states differ by {d:e}");
}

#[test]
fn gptbert_v1_unpatched_splade_matches_fixture() {
    let fx = fixture();
    let b = batch(&fx);
    let enc = load(&tiny_v1(), false);
    check_splade(&enc, &b, &fx["splade_masked"], "v1 unpatched");
}

#[test]
fn gptbert_v1_patched_splade_and_gradients_match_pytorch() {
    let fx = fixture();
    let b = batch(&fx);
    let reference = pytorch_reference(&tiny_v1(), &fx, true, 11);
    let enc = load(&tiny_v1(), true);
    check_splade(&enc, &b, &reference["splade"], "v1 patched");
    check_gradients(&enc, &b, &reference, true, "v1 patched, lean head");
    check_gradients(&enc, &b, &reference, false, "v1 patched, dense head");
}

#[test]
fn gptbert_v2_hidden_states_raw_head_splade_and_gradients_match_pytorch() {
    let fx = fixture();
    let b = batch(&fx);
    let dir = model("tiny-gptbert-v2");
    let reference = pytorch_reference(&dir, &fx, true, 12);
    let enc = load(&dir, true);
    check_hidden_and_raw(&enc, &b, &reference["last_hidden_state"], &reference["mlm_raw"], "v2");
    check_splade(&enc, &b, &reference["splade"], "v2 patched");
    check_gradients(&enc, &b, &reference, true, "v2 patched, lean head");
    check_gradients(&enc, &b, &reference, false, "v2 patched, dense head");
}

/// A checkpoint whose layer parameters fit neither variant is refused, naming the first unexpected
/// and the first missing tensor.
#[test]
fn gptbert_checkpoint_of_neither_variant_names_unexpected_and_missing_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tiny_v1();
    for f in ["config.json", "configuration_gptbert.py", "modeling_gptbert.py", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let tensors: Vec<(String, Tensor)> = read(&src.join("model.safetensors"))
        .into_iter()
        .map(|(k, v)| (k.replace("encoder.layers.0.lambdas", "encoder.layers.0.lambdas_mix"), v))
        .collect();
    Tensor::write_safetensors(&tensors, tmp.path().join("model.safetensors")).unwrap();
    let err = SparseEncoder::load(tmp.path(), Device::Cpu, &LoadOptions::default()).err().expect("must be refused").to_string();
    assert!(err.contains("model.safetensors"), "error does not name the file: {err}");
    assert!(err.contains("fit neither GPT-BERT layer variant"), "{err}");
    assert!(err.contains("first unexpected tensor 'encoder.layers.0.lambdas_mix'"), "{err}");
    assert!(err.contains("first missing tensor 'encoder.layers.0.lambdas'"), "{err}");
}

/// A checkpoint without `classifier.emb2vocab.weight` (a converter that dropped the tied copy)
/// decodes with the word embedding, as training tied them: equal to PyTorch on the same checkpoint
/// with the key holding the word embedding; the saved state dict has the key again.
#[test]
fn gptbert_checkpoint_without_decoder_weight_decodes_with_the_word_embedding() {
    let src = tiny_v1();
    let tensors = read(&src.join("model.safetensors"));
    let word = tensors["embedding.word_embedding.weight"].shallow_clone();
    let tmp = tempfile::tempdir().unwrap();
    let (tied, dropped) = (tmp.path().join("tied"), tmp.path().join("dropped"));
    for (dir, keep) in [(&tied, true), (&dropped, false)] {
        std::fs::create_dir(dir).unwrap();
        for f in ["config.json", "configuration_gptbert.py", "modeling_gptbert.py", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let out: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(k, _)| keep || k.as_str() != "classifier.emb2vocab.weight")
            .map(|(k, v)| (k.clone(), if k == "classifier.emb2vocab.weight" { word.copy() } else { v.shallow_clone() }))
            .collect();
        Tensor::write_safetensors(&out, dir.join("model.safetensors")).unwrap();
    }
    let fx = fixture();
    let b = batch(&fx);
    let reference = pytorch_reference(&tied, &fx, false, 13);
    let enc = load(&dropped, false);
    check_hidden_and_raw(&enc, &b, &reference["last_hidden_state"], &reference["mlm_raw"], "v1 without emb2vocab.weight");
    check_splade(&enc, &b, &reference["splade"], "v1 without emb2vocab.weight");
    assert!(!enc.vs.variables().contains_key("classifier.emb2vocab.weight"), "the decoder must be tied, not a copy");
    let sd: BTreeMap<String, Tensor> = enc.mlm.state_dict().into_iter().collect();
    let saved = sd.get("classifier.emb2vocab.weight").expect("state_dict lacks classifier.emb2vocab.weight");
    assert_eq!(max_diff(saved, &word), 0.0, "saved decoder weight is not the word embedding");
    let mut want: Vec<&String> = tensors.keys().collect();
    want.sort();
    assert_eq!(sd.keys().collect::<Vec<_>>(), want, "state_dict names differ from the checkpoint's");
}
