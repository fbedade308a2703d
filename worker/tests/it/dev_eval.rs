//! The dev rows during training (issue #15 item 5) and the model card (item 8), against the Python references:
//! `eval_loss` against sentence-transformers' `SparseEncoderTrainer.evaluate()` on the same dev rows and model,
//! early stopping against transformers' `EarlyStoppingCallback` driven as its `Trainer` drives it, and the
//! model card of the saved folders (ST loads the folder with the card in it).
//!
//! Tests that run the trainer binary are named `train_*` so nextest runs them one at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use splade_common::config::Config;
use splade_common::data::load_training_data;
use splade_common::store::{block_on, StoreOptions};
use splade_worker::train::schedule::EarlyStopping;

use crate::support::{model, reference_json, repo};

/// 40 NorQuAD (question, passage) pairs, cut short, as `train.jsonl` in a temp dir.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = repo().join("data/norquad");
        let index = |f: &str| -> BTreeMap<String, serde_json::Value> {
            std::fs::read_to_string(data.join(f))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    (v["_id"].as_str().unwrap().to_string(), v)
                })
                .collect()
        };
        let (corpus, queries) = (index("corpus.jsonl"), index("queries.jsonl"));
        let mut train = String::new();
        for l in std::fs::read_to_string(data.join("qrels/dev.tsv")).unwrap().lines().skip(1).take(40) {
            let mut p = l.split('\t');
            let (q, d) = (p.next().unwrap(), p.next().unwrap());
            let passage: String = corpus[d]["text"].as_str().unwrap().chars().take(200).collect();
            train.push_str(&serde_json::json!({"anchor": queries[q]["text"], "positive": passage}).to_string());
            train.push('\n');
        }
        std::fs::write(dir.path().join("train.jsonl"), train).unwrap();
        Self { dir }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// SPLADE-tiny, batch 4, max length 64, CPU; 15% of the pairs held out; `training` keys appended.
    fn config(&self, training: &str) -> PathBuf {
        let yaml = format!(
            "model:\n  base_model: {model}\ntraining:\n  output_dir: {out}\n  per_device_train_batch_size: 4\n  per_device_eval_batch_size: 8\n  learning_rate: 1.0e-4\n  max_seq_length: 64\n  seed: 7\n  logging_steps: 1\n  report_to: none\n{training}\nloss:\n  query_regularizer_weight: 5.0e-3\n  document_regularizer_weight: 3.0e-3\n  regularizer_warmup_ratio: 0.0\ndatasets:\n  pairs:\n    source: {train}\n    format: jsonl\n    split_ratio: 0.15\nevaluation:\n  log_decoded_samples: 2\nmodel_card:\n  language: [\"no\", da]\n  license: mit\n  model_name: SPLADE tiny dev-eval test\nhardware:\n  device: cpu\n  num_threads: 1\n",
            model = model("splade-tiny").display(),
            out = self.out().display(),
            train = self.dir.path().join("train.jsonl").display(),
        );
        let p = self.dir.path().join("cfg.yaml");
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// Scalars of `metrics.jsonl`: name → [(step, value)].
    fn jsonl(&self) -> BTreeMap<String, Vec<(u64, f64)>> {
        let text = std::fs::read_to_string(self.out().join("metrics.jsonl")).expect("metrics.jsonl");
        let mut out: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["type"] == "scalars" {
                let step = v["step"].as_u64().unwrap();
                for (k, x) in v["values"].as_object().unwrap() {
                    out.entry(k.clone()).or_default().push((step, x.as_f64().unwrap_or(f64::NAN)));
                }
            }
        }
        out
    }
}

fn splade() -> Command {
    let bin = std::env::var_os("SPLADE_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_splade")));
    let mut c = Command::new(bin);
    c.env("RUST_LOG", "info");
    c
}

fn train(cfg: &Path) -> Output {
    let out = splade().args(["train", "--config"]).arg(cfg).output().expect("run splade train");
    assert!(out.status.success(), "splade train failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// Our early-stopping rule over `values` (with the best-metric update the schedule does after it): the counter
/// after each evaluation and the evaluation that stops.
fn ours(es: EarlyStopping, greater: bool, values: &[Option<f64>]) -> (Vec<usize>, Option<usize>) {
    let (mut counter, mut best, mut counters) = (0usize, None::<f64>, Vec::new());
    for (i, v) in values.iter().enumerate() {
        let stop = es.on_evaluate(&mut counter, *v, best, greater);
        if let Some(v) = v {
            let better = match best {
                None => v.is_finite(),
                Some(b) => if greater { *v > b } else { *v < b },
            };
            if better {
                best = Some(*v);
            }
        }
        counters.push(counter);
        if stop {
            return (counters, Some(i));
        }
    }
    (counters, None)
}

/// One early-stopping case: metric name, greater_is_better, the rule, the values of each evaluation.
type Case<'a> = (&'a str, bool, EarlyStopping, &'a [Option<f64>]);

/// transformers' callback over each case (one Python process): the counters and the stopping evaluation.
fn reference(cases: &[Case]) -> Vec<(Vec<usize>, Option<usize>)> {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("es.json");
    let body: Vec<serde_json::Value> = cases
        .iter()
        .map(|(metric, greater, es, values)| {
            serde_json::json!({
                "metric": metric, "greater_is_better": greater, "patience": es.patience, "threshold": es.threshold, "values": values,
            })
        })
        .collect();
    std::fs::write(&spec, serde_json::Value::from(body).to_string()).unwrap();
    let r = reference_json("early_stopping_reference.py", &[spec.to_str().unwrap()]);
    r.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let counters = r["counters"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as usize).collect();
            (counters, r["stop_at"].as_u64().map(|s| s as usize))
        })
        .collect()
}

#[test]
fn early_stopping_counts_as_transformers_callback() {
    // Improvements below and above the threshold, ties, a missing metric, both directions.
    let losses = [Some(1.0), Some(0.995), Some(0.98), Some(0.98), None, Some(0.99), Some(0.5), Some(0.7)];
    let scores = [Some(0.30), Some(0.31), Some(0.35), Some(0.3501), Some(0.36), Some(0.20), Some(0.40), Some(0.39), Some(0.38)];
    let cases: Vec<Case> = vec![
        ("eval_loss", false, EarlyStopping { patience: 2, threshold: 0.01 }, &losses),
        ("eval_loss", false, EarlyStopping { patience: 3, threshold: 0.0 }, &losses),
        ("eval_NanoBEIR_mean_dot_ndcg@10", true, EarlyStopping { patience: 2, threshold: 0.001 }, &scores),
        ("eval_NanoBEIR_mean_dot_ndcg@10", true, EarlyStopping { patience: 1, threshold: 0.0 }, &scores),
        ("loss", false, EarlyStopping { patience: 1, threshold: 0.0 }, &losses),
    ];
    let want = reference(&cases);
    for ((metric, greater, es, values), want) in cases.iter().zip(want) {
        assert_eq!(ours(*es, *greater, values), want, "{metric} greater={greater} {es:?} over {values:?}");
    }
}

/// The dev rows of `cfg` as our loader splits them, written as JSONL for the reference.
fn dev_rows(cfg: &Path, to: &Path) -> usize {
    let cfg = Config::from_path(cfg).unwrap();
    let sets = block_on(load_training_data(cfg.datasets.enabled(), cfg.training.seed, &StoreOptions::default())).unwrap();
    let rows: String = sets[0]
        .eval
        .iter()
        .map(|e| format!("{}\n", serde_json::json!({"anchor": e.anchor, "positive": e.positive})))
        .collect();
    std::fs::write(to, rows).unwrap();
    sets[0].eval.len()
}

#[test]
fn train_eval_loss_equals_sentence_transformers_and_the_card_names_the_run() {
    let fx = Fixture::new();
    let cfg = fx.config("  max_steps: 2\n  eval_strategy: steps\n  eval_steps: 2\n  save_strategy: steps\n  save_steps: 2\n  metric_for_best_model: eval_loss\n");
    let out = train(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    let jsonl = fx.jsonl();
    let eval_loss = &jsonl["eval_loss"];
    assert_eq!(eval_loss.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2], "one evaluation at step 2: {eval_loss:?}");
    for k in ["eval_query_active_dims", "eval_document_active_dims"] {
        assert!(jsonl[k][0].1 > 0.0, "{k}: {:?}", jsonl[k]);
    }
    assert!(err.contains("decoded query \"") && err.contains("decoded document \""), "log_decoded_samples: 2:\n{err}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.out().join("checkpoint-2/trainer_state.json")).unwrap()).unwrap();
    assert!((state["best_metric"].as_f64().unwrap() - eval_loss[0].1).abs() < 1e-12, "metric_for_best_model: eval_loss: {state}");

    let dev = fx.dir.path().join("dev.jsonl");
    let n = dev_rows(&cfg, &dev);
    assert!((2..=8).contains(&n), "{n} dev rows: one eval batch of 8");
    // final/ is the model after step 2, the one evaluated; the card is in it while ST loads it.
    let final_dir = fx.out().join("final");
    assert!(final_dir.join("README.md").exists());
    let r = reference_json(
        "st_eval_loss.py",
        &["--model", final_dir.to_str().unwrap(), "--dev", dev.to_str().unwrap(), "--batch-size", "8", "--q-weight", "5e-3", "--d-weight", "3e-3", "--max-length", "64"],
    );
    let st = r["eval_loss"].as_f64().unwrap();
    assert_eq!(r["rows"].as_u64().unwrap() as usize, n);
    assert!((st - eval_loss[0].1).abs() < 1e-4, "eval_loss: ours {} vs ST {st}", eval_loss[0].1);

    // The card names what issue #15 lists, in checkpoints and final/.
    for folder in ["checkpoint-2", "final"] {
        let card = std::fs::read_to_string(fx.out().join(folder).join("README.md")).unwrap();
        let base = model("splade-tiny").display().to_string();
        for want in [
            "language:\n- \"no\"\n- \"da\"\n",
            "license: \"mit\"",
            "library_name: sentence-transformers",
            "# SPLADE tiny dev-eval test",
            &format!("- **Base model:** `{base}`"),
            "- **Languages:** no, da",
            "#### pairs",
            &format!("* Size: {} training samples", 40 - n),
            &format!("* Evaluation size: {n} samples held out"),
            "* Loss: `SpladeLoss`",
            "\"document_regularizer_weight\": \"0.003\"",
            "SparseMultipleNegativesRankingLoss",
            "- `max_steps`: 2",
            "- `learning_rate`: 0.0001",
            "### Training Logs",
            "| Epoch | Step | Training Loss | eval_loss |",
            "from sentence_transformers import SparseEncoder",
            "model.encode_query(queries)",
        ] {
            assert!(card.contains(want), "{folder}/README.md lacks {want:?}:\n{card}");
        }
        assert!(card.contains(&format!("| 2 | {:.4} |", jsonl["train/loss"].iter().find(|p| p.0 == 2).unwrap().1)), "{card}");
    }
}

#[test]
fn train_early_stopping_stops_where_transformers_callback_does() {
    let fx = Fixture::new();
    // Evaluation every step; an improvement must beat the best by 0.05, more than 1e-4 learning-rate steps on
    // these rows move the loss, so the counter runs out well before step 12.
    let cfg = fx.config(
        "  max_steps: 12\n  eval_strategy: steps\n  eval_steps: 1\n  save_strategy: steps\n  save_steps: 4\n  metric_for_best_model: eval_loss\n  early_stopping_patience: 2\n  early_stopping_threshold: 0.05\n",
    );
    let out = train(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    let losses: Vec<(u64, f64)> = fx.jsonl()["eval_loss"].clone();
    let values: Vec<Option<f64>> = losses.iter().map(|p| Some(p.1)).collect();
    let (_, want) = reference(&[("eval_loss", false, EarlyStopping { patience: 2, threshold: 0.05 }, &values)]).remove(0);
    let stop_index = want.expect("transformers stops within the evaluations we logged");
    let stop_step = losses[stop_index].0;
    assert_eq!(losses.last().unwrap().0, stop_step, "our last evaluation is where transformers stops: {losses:?}");
    assert!(stop_step < 12, "stopped early: {losses:?}");
    assert!(err.contains("early stopping: eval_loss did not improve"), "{err}");
    // The end of the run is written as usual: final/ with its card; no checkpoint at the stop step unless due.
    assert!(fx.out().join("final/model.safetensors").exists() && fx.out().join("final/README.md").exists());
    let last_train_step = fx.jsonl()["train/loss"].last().unwrap().0;
    assert_eq!(last_train_step, stop_step, "no step ran after the stop");
    let checkpoints: Vec<String> = std::fs::read_dir(fx.out())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    for c in &checkpoints {
        let s: u64 = c.trim_start_matches("checkpoint-").parse().unwrap();
        assert!(s % 4 == 0 && s <= stop_step, "{checkpoints:?} (stop at {stop_step})");
    }
}
