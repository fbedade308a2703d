//! The memory-lean max-pooled head gives the dense head's embeddings and gradients.

use std::collections::BTreeMap;

use splade_worker::model::{LoadOptions, SparseEncoder, TextKind};
use tch::{Device, Kind, Tensor};

use crate::support::model;

fn texts() -> Vec<&'static str> {
    vec![
        "Hva er navnet på flyplassen i Moss?",
        "Oslo er hovedstaden i Norge, og byen ligger innerst i Oslofjorden.",
        "short",
        "Learned sparse retrieval expands documents with related vocabulary terms and keeps an inverted index.",
    ]
}

/// Embeddings and per-parameter gradients of `Σ emb ⊙ R` for a fixed random `R`.
fn run(model: &SparseEncoder, lean: bool) -> (Tensor, BTreeMap<String, Tensor>) {
    for t in model.vs.variables().values_mut() {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let batch = model.tokenize(&texts(), TextKind::Document).unwrap();
    assert!(batch.lengths.iter().min() < batch.lengths.iter().max(), "the batch must contain padding");
    let emb = if lean { model.forward_with_head(&batch, false, true) } else { model.forward_with_head(&batch, false, false) };
    tch::manual_seed(7);
    let r = Tensor::rand(emb.size(), (Kind::Float, Device::Cpu));
    (&emb * r).sum(Kind::Float).backward();
    let grads = model
        .vs
        .variables()
        .into_iter()
        .map(|(n, t)| {
            let g = t.grad();
            (n, if g.defined() { g.copy() } else { t.zeros_like() })
        })
        .collect();
    (emb.detach(), grads)
}

fn compare(model: &SparseEncoder, what: &str) -> (f64, usize) {
    let (dense, gd) = run(model, false);
    let (lean, gl) = run(model, true);
    let diff = (&dense - &lean).abs().max().double_value(&[]);
    assert!(diff <= 1e-6, "{what}: embeddings differ by {diff}");
    // Some gradients are zero in exact arithmetic (e.g. attention key biases: softmax ignores a
    // per-row constant) and float noise in both paths; relative error is meaningless there, so
    // those are held to 1e-5 of the largest parameter gradient instead.
    let scale = gd.values().map(|g| g.norm().double_value(&[])).fold(0.0, f64::max);
    assert!(scale > 0.0, "{what}: no gradient at all");
    for (n, a) in &gd {
        let b = &gl[n];
        let norm = a.norm().double_value(&[]);
        let abs = (a - b).norm().double_value(&[]);
        if norm < 1e-5 * scale {
            assert!(abs <= 1e-5 * scale, "{what}: near-zero gradient of {n} differs by {abs} (scale {scale})");
        } else {
            let rel = abs / norm;
            assert!(rel <= 1e-5, "{what}: gradient of {n} differs: rel {rel}");
        }
    }
    let active = dense.gt(0.0).sum(Kind::Int64).int64_value(&[]) as usize;
    (diff, active)
}

#[test]
fn lean_head_equals_dense_head_values_and_gradients() {
    let model = SparseEncoder::load(&model("splade-tiny"), Device::Cpu, &LoadOptions { dropout: Some(0.0), ..Default::default() }).unwrap();
    let (_, active) = compare(&model, "SPLADE-tiny");
    assert!(active > 100, "the comparison must cover real activations, got {active}");
}

#[test]
fn lean_head_rows_with_all_maxima_non_positive() {
    let model = SparseEncoder::load(&model("splade-tiny"), Device::Cpu, &LoadOptions { dropout: Some(0.0), ..Default::default() }).unwrap();
    // Shift the output bias so that some rows have every logit ≤ 0 and others still activate.
    let batch = model.tokenize(&texts(), TextKind::Document).unwrap();
    let row_max: Vec<f64> = tch::no_grad(|| {
        let logits = model.dense_logits(&batch, false) * batch.attention_mask.unsqueeze(-1).to_kind(Kind::Float);
        let m = logits.amax([1i64, 2].as_slice(), false);
        Vec::<f64>::try_from(m.to_kind(Kind::Double)).unwrap()
    });
    let (lo, hi) = row_max.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(hi > lo, "rows need different maxima");
    let shift = (lo + hi) / 2.0;
    tch::no_grad(|| {
        let mut bias = model.vs.variables()["cls.predictions.bias"].shallow_clone();
        let _ = bias.g_sub_scalar_(shift);
    });
    let (_, active) = compare(&model, "shifted bias");
    assert!(active > 0, "some rows must still activate");
    let (dense, _) = run(&model, false);
    let zero_rows = (0..dense.size()[0]).filter(|&r| dense.get(r).gt(0.0).sum(Kind::Int64).int64_value(&[]) == 0).count();
    assert!(zero_rows >= 1, "at least one row must have all maxima ≤ 0");
}
