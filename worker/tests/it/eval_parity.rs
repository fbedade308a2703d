//! `splade eval`'s numbers are sentence-transformers 6.2's SparseInformationRetrievalEvaluator's,
//! end to end with a real model on NorQuAD dev.

use splade_common::eval::{LocalDir, Task};
use splade_worker::evaluate::evaluate_model;
use splade_worker::model::{LoadOptions, SparseEncoder};
use tch::Device;

use crate::support::*;

#[test]
fn norquad_metrics_equal_sentence_transformers_evaluator() {
    let max_len = 128;
    let dir = model("splade-tiny");
    let opts = LoadOptions { max_seq_length: Some(max_len), ..Default::default() };
    let model = SparseEncoder::load(&dir, Device::Cpu, &opts).unwrap();
    let task_dir = repo().join("data/norquad");
    let task = Task::load(&LocalDir::new(&task_dir), Some("dev"), Some("norquad")).unwrap();
    assert_eq!(task.corpus.len(), 755);
    let (scores, _) = evaluate_model(&model, &task, 32).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("st.json");
    let script = repo().join("scripts/reference/st_ir_eval.py");
    let status = std::process::Command::new(ref_python())
        .args([script.to_str().unwrap(), "--model", dir.to_str().unwrap(), "--task", task_dir.to_str().unwrap()])
        .args(["--split", "dev", "--max-length", &max_len.to_string(), "--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let st: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();

    let mut compared = 0;
    for k in [1, 3, 5, 10, 100] {
        for m in ["ndcg", "recall", "precision", "accuracy"] {
            let key = format!("{m}_at_{k}");
            let ours = scores.metrics[&key];
            let theirs = st[&key].as_f64().unwrap_or_else(|| panic!("ST reported no {key}: {st}"));
            assert!((ours - theirs).abs() <= 1e-4, "{key}: ours {ours} vs sentence-transformers {theirs}");
            compared += 1;
        }
    }
    for key in ["mrr_at_10", "map_at_100"] {
        let (ours, theirs) = (scores.metrics[key], st[key].as_f64().unwrap());
        assert!((ours - theirs).abs() <= 1e-4, "{key}: ours {ours} vs sentence-transformers {theirs}");
        compared += 1;
    }
    let sp = scores.sparsity.as_ref().unwrap();
    for (key, ours) in [("query_active_dims", sp.query.mean), ("corpus_active_dims", sp.corpus.mean), ("avg_flops", sp.avg_flops)] {
        let theirs = st[key].as_f64().unwrap_or_else(|| panic!("ST reported no {key}: {st}"));
        assert!((ours - theirs).abs() <= 1e-4 * theirs.abs().max(1.0), "{key}: ours {ours} vs sentence-transformers {theirs}");
    }
    assert_eq!(compared, 22);
    assert!(scores.metrics["ndcg_at_10"] > 0.3, "SPLADE-tiny should retrieve something on NorQuAD");
}
