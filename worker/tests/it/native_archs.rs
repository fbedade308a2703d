//! XLM-RoBERTa and ModernBERT against transformers 5.24's own `XLMRobertaForMaskedLM` /
//! `ModernBertForMaskedLM` (eager attention): hidden states, raw MLM head output, SPLADE vectors by
//! the lean and the dense head, and every parameter gradient of `Σ splade ⊙ probe`, on a
//! right-padded batch of NorQuAD texts (several longer than ModernBERT's local window).
//!
//! The tiny random folders come from `scripts/reference/make_tiny_native.py` (run by the set-up);
//! the reference numbers from `scripts/reference/encoder_reference.py` on our token ids.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use splade_worker::model::{Architecture, Batch, LoadOptions, SparseEncoder, TextKind};
use tch::{Device, Kind, Tensor};

use crate::support::{model, parity_texts, ref_python, repo};

const TOL: f64 = 1e-4;

fn load(dir: &Path) -> SparseEncoder {
    SparseEncoder::load(dir, Device::Cpu, &LoadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Seven NorQuAD texts, queries and passages mixed so that padding varies, tokenized as documents
/// (truncated at the models' 128 tokens).
fn batch(enc: &SparseEncoder) -> Batch {
    let all = parity_texts();
    let picks = [10usize, 0, 11, 1, 12, 2, 13];
    let texts: Vec<&str> = picks.iter().map(|&i| all[i].0.as_str()).collect();
    enc.tokenize(&texts, TextKind::Document).unwrap()
}

/// Runs `encoder_reference.py` (transformers' own modeling code) on the batch's ids.
fn pytorch_reference(dir: &Path, b: &Batch, probe_seed: i64) -> BTreeMap<String, Tensor> {
    let tmp = tempfile::tempdir().unwrap();
    let rows = |t: &Tensor| Vec::<Vec<i64>>::try_from(t).unwrap();
    let input = serde_json::json!({
        "input_ids": rows(&b.input_ids),
        "attention_mask": rows(&b.attention_mask),
        "probe_seed": probe_seed,
    });
    let (inp, out) = (tmp.path().join("in.json"), tmp.path().join("out.safetensors"));
    std::fs::write(&inp, input.to_string()).unwrap();
    let res = Command::new(ref_python())
        .arg(repo().join("scripts/reference/encoder_reference.py"))
        .args(["--model".as_ref(), dir.as_os_str(), "--input".as_ref(), inp.as_os_str(), "--out".as_ref(), out.as_os_str()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("spawn reference python");
    assert!(res.status.success(), "encoder_reference.py failed:\n{}", String::from_utf8_lossy(&res.stderr));
    Tensor::read_safetensors(&out).unwrap().into_iter().collect()
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

/// The reference's gradient of our parameter `name`: PyTorch names a tied parameter once, by the
/// module it meets first (XLM-R registers `lm_head` before `roberta`).
fn reference_grad<'a>(reference: &'a BTreeMap<String, Tensor>, name: &str, aliases: &[(&str, &str)]) -> Option<&'a Tensor> {
    reference.get(&format!("grad.{name}")).or_else(|| {
        aliases.iter().find(|(ours, _)| *ours == name).and_then(|(_, theirs)| reference.get(&format!("grad.{theirs}")))
    })
}

/// Every check of the module doc on one folder; `aliases` maps our tied parameter names to
/// PyTorch's.
fn check_model(name: &str, arch: Architecture, aliases: &[(&str, &str)], min_len_over: usize) {
    let dir = model(name);
    let enc = load(&dir);
    assert_eq!(enc.mlm.architecture(), arch, "{name}: wrong architecture detected");
    let b = batch(&enc);
    let (rows, len) = b.input_ids.size2().unwrap();
    let long = b.lengths.iter().filter(|&&n| n > min_len_over).count();
    let padded = b.lengths.iter().filter(|&&n| (n as i64) < len).count();
    assert!(long >= 3 && padded >= 3, "{name}: want several long and several padded rows, got lengths {:?}", b.lengths);
    let reference = pytorch_reference(&dir, &b, 7);
    eprintln!("{name}: batch {rows} x {len}, lengths {:?}", b.lengths);

    // 1. Hidden states and raw head output on real positions.
    {
        let _guard = tch::no_grad_guard();
        let h = enc.mlm.encode(&b, false);
        let raw = enc.mlm.head_transform(&h, false).matmul(&enc.mlm.decoder_weight().tr()) + enc.mlm.decoder_bias();
        let dh = max_diff_real(&h, &reference["last_hidden_state"], &b.attention_mask);
        let dr = max_diff_real(&raw, &reference["mlm_raw"], &b.attention_mask);
        let finite = h.isfinite().all().int64_value(&[]) == 1;
        eprintln!("{name}: max |Δ| hidden {dh:.3e}, raw head {dr:.3e} (real positions)");
        assert!(finite, "{name}: non-finite hidden states (padding included)");
        assert!(dh <= TOL, "{name}: hidden states differ by {dh:e}");
        assert!(dr <= TOL, "{name}: raw head output differs by {dr:e}");
    }

    // 2. SPLADE vectors, both heads.
    let expected = &reference["splade"];
    let active = expected.gt(0.0).sum(Kind::Int64).int64_value(&[]);
    assert!(active > 100, "{name}: only {active} active SPLADE entries; the comparison would prove little");
    {
        let _guard = tch::no_grad_guard();
        for lean in [true, false] {
            let d = max_diff(&enc.forward_with_head(&b, false, lean), expected);
            eprintln!("{name} (lean {lean}): max |Δ| splade {d:.3e}");
            assert!(d <= TOL, "{name} (lean {lean}): SPLADE differs by {d:e}");
        }
    }

    // 3. Every parameter gradient, both heads.
    let vars = enc.vs.variables();
    for lean in [true, false] {
        for t in vars.values() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let s = enc.forward_with_head(&b, false, lean);
        (&s * &reference["probe"]).sum(Kind::Float).backward();
        // Key biases get no gradient in exact arithmetic (softmax ignores a score shift shared by
        // every key of a query); both sides then hold rounding noise, so a reference gradient below
        // 1e-5 of the largest one counts as zero and ours must be as small.
        let max_ref = vars
            .keys()
            .filter_map(|n| reference_grad(&reference, n, aliases))
            .map(|g| g.norm().double_value(&[]))
            .fold(0f64, f64::max);
        let zero_floor = 1e-5 * max_ref;
        let mut worst = (String::new(), 0f64);
        let mut zeros = 0;
        for (pname, t) in &vars {
            let g = t.grad();
            let want = reference_grad(&reference, pname, aliases)
                .unwrap_or_else(|| panic!("{name}: PyTorch has no gradient for our parameter {pname}"));
            assert!(g.defined(), "{name}: no gradient for {pname}");
            let want_norm = want.norm().double_value(&[]);
            if want_norm < zero_floor {
                let ours = g.norm().double_value(&[]);
                assert!(ours < zero_floor, "{name}: {pname} has gradient norm {ours:e}, PyTorch {want_norm:e} (zero up to rounding)");
                zeros += 1;
                continue;
            }
            let rel = (&g - want).norm().double_value(&[]) / want_norm;
            if rel > worst.1 {
                worst = (pname.clone(), rel);
            }
        }
        let ref_count = reference.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(vars.len(), ref_count, "{name}: parameter counts differ (ours {}, PyTorch {ref_count})", vars.len());
        eprintln!(
            "{name} (lean {lean}): {} parameter gradients ({zeros} zero up to rounding), worst relative L2 {:.3e} ({})",
            vars.len(),
            worst.1,
            worst.0
        );
        assert!(worst.1 <= TOL, "{name} (lean {lean}): gradient of {} differs by {:e} relative", worst.0, worst.1);
    }
}

#[test]
fn xlm_roberta_hidden_states_head_splade_and_gradients_match_transformers() {
    check_model(
        "tiny-xlmr",
        Architecture::XlmRoberta,
        &[("roberta.embeddings.word_embeddings.weight", "lm_head.decoder.weight")],
        64,
    );
}

#[test]
fn modernbert_hidden_states_head_splade_and_gradients_match_transformers() {
    // Local window 16 (|i − j| ≤ 8): rows longer than 9 tokens exercise the sliding layers.
    check_model(
        "tiny-modernbert",
        Architecture::ModernBert,
        &[("model.embeddings.tok_embeddings.weight", "decoder.weight")],
        64,
    );
}

#[test]
fn modernbert_base_switches_and_legacy_config_keys_match_transformers() {
    // No biases but the decoder's, `global_attn_every_n_layers` 3 and non-default
    // `global_rope_theta` / `local_rope_theta` without `layer_types` / `rope_parameters`.
    check_model(
        "tiny-modernbert-legacy",
        Architecture::ModernBert,
        &[("model.embeddings.tok_embeddings.weight", "decoder.weight")],
        64,
    );
}

/// The tied decoder copies are in the state dict under transformers' names and are the embeddings.
#[test]
fn native_state_dicts_carry_the_tied_decoder_keys() {
    for (name, word, tied) in [
        ("tiny-xlmr", "roberta.embeddings.word_embeddings.weight", &["lm_head.decoder.weight", "lm_head.decoder.bias"][..]),
        ("tiny-modernbert", "model.embeddings.tok_embeddings.weight", &["decoder.weight"][..]),
    ] {
        let enc = load(&model(name));
        let sd: BTreeMap<String, Tensor> = enc.mlm.state_dict().into_iter().collect();
        for key in tied {
            assert!(sd.contains_key(*key), "{name}: state dict lacks {key}");
        }
        assert_eq!(max_diff(&sd[tied[0]], &sd[word]), 0.0, "{name}: {} is not the word embeddings", tied[0]);
        let vars = enc.vs.variables();
        for v in vars.keys() {
            assert!(sd.contains_key(v), "{name}: parameter {v} missing from the state dict");
        }
    }
}

/// `LoadOptions::dropout` reaches every dropout site: the tiny configs set 0.1 everywhere
/// (XLM-R hidden and attention; ModernBERT embedding, attention and MLP), so a training forward
/// differs from the eval one, and with the override 0 it is the eval forward exactly.
#[test]
fn native_dropout_follows_the_config_and_the_override() {
    for name in ["tiny-xlmr", "tiny-modernbert"] {
        let dir = model(name);
        let _guard = tch::no_grad_guard();
        let enc = load(&dir);
        let b = batch(&enc);
        let eval = enc.mlm.encode(&b, false);
        tch::manual_seed(3);
        let dropped = max_diff_real(&enc.mlm.encode(&b, true), &eval, &b.attention_mask);
        assert!(dropped > 1e-2, "{name}: the config's dropout changed nothing in training mode ({dropped:e})");
        let off = SparseEncoder::load(&dir, Device::Cpu, &LoadOptions { dropout: Some(0.0), ..Default::default() }).unwrap();
        let d = max_diff(&off.mlm.encode(&b, true), &eval);
        assert_eq!(d, 0.0, "{name}: with dropout 0 a training forward differs from eval by {d:e}");
    }
}
