use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(text, "cfg.yaml")
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

const FULL: &str = r#"
model:
  base_model: naver/splade-v3
  architecture: splade
  pooling_strategy: max
  dropout: 0
training:
  output_dir: runs/x
  max_steps: 30
  per_device_train_batch_size: 16
  learning_rate: 1e-4
  warmup_ratio: 0.1
  batch_sampler: no_duplicates
  report_to: mlflow
  resume_from_checkpoint: true
  push_to_hub: true
  hub_model_id: me/model
  torch_compile: false
loss:
  type: splade_loss
  inner_loss: sparse_multiple_negatives_ranking_loss
  query_regularizer_weight: 5e-3
  document_regularizer_weight: 3e-3
datasets:
  sampling_strategy: round_robin
  zeta:
    source: data/z.jsonl
  alpha:
    source: s3://bucket/a/*.parquet
    columns: {question: anchor, context: positive}
    split_ratio: 0.1
    max_samples: 100
    on_bad_record: skip
evaluation:
  tasks:
    - {name: norquad, source: data/norquad}
  mteb_tasks: [NorQuadRetrieval]
mlflow:
  tracking_uri: http://127.0.0.1:5000
  tags: {team: nlp, b: "2"}
model_card:
  language: no
  license: apache-2.0
hardware:
  device: cpu
cluster:
  min_workers: 2
  max_workers: 4
  c10d_backend: gloo
document_windows:
  size: 256
  stride: 128
  training_mode: all
"#;

#[test]
fn full_config_parses_with_values_and_defaults() {
    let c = parse(FULL).unwrap();
    c.validate().unwrap();
    assert_eq!(c.model.base_model, "naver/splade-v3");
    assert_eq!(c.model.dropout, Some(0.0));
    assert_eq!(c.training.max_steps(), Some(30));
    assert_eq!(c.training.learning_rate, 1e-4);
    assert_eq!(c.training.batch_sampler, BatchSamplerKind::NoDuplicates);
    assert_eq!(c.training.report_to, vec!["mlflow".to_string()]);
    assert_eq!(c.training.resume_from_checkpoint, Some(ResumeFrom::Latest));
    // Defaults match Hugging Face TrainingArguments.
    assert_eq!(c.training.weight_decay, 0.0);
    assert_eq!(c.training.max_grad_norm, 1.0);
    assert_eq!(c.training.seed, 42);
    assert_eq!(c.training.gradient_accumulation_steps, 1);
    assert_eq!(c.training.logging_steps, 500.0);
    assert_eq!(c.loss.regularizer_warmup_ratio, 1.0 / 3.0);
    assert_eq!(c.loss.scale, 1.0);
    assert_eq!(c.loss.query_regularizer_weight, 5e-3);
    // Dataset order as written, not alphabetical.
    let names: Vec<_> = c.datasets.datasets.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha"]);
    assert_eq!(c.datasets.sampling_strategy, SamplingStrategy::RoundRobin);
    let alpha = &c.datasets.datasets[1].1;
    assert_eq!(alpha.on_bad_record, OnBadRecord::Skip);
    assert_eq!(alpha.max_samples, Some(100));
    assert!(c.datasets.datasets[0].1.enabled);
    assert_eq!(c.evaluation.tasks[0].split, "dev");
    assert_eq!(c.mlflow.tags.keys().collect::<Vec<_>>(), ["team", "b"]);
    // `no` stays a string (no YAML 1.1 boolean surprise) because a string is expected.
    assert_eq!(c.model_card.language, vec!["no".to_string()]);
    assert_eq!(c.cluster.max_workers(), 4);
    assert_eq!(c.cluster.token_env, "SPLADE_CLUSTER_TOKEN");
    assert_eq!(c.cluster.c10d_backend, C10dBackend::Gloo);
    assert_eq!(c.document_windows.as_ref().unwrap().training_mode, WindowTrainingMode::All);
    assert_eq!(c.line_of("training.learning_rate"), Some(11));
}

#[test]
fn empty_and_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.training.learning_rate, 5e-5);
    assert_eq!(c.training.warmup_ratio, 0.0);
    assert_eq!(c.training.max_steps, -1);
    assert_eq!(c.training.num_train_epochs, 3.0);
    assert_eq!(c.datasets.sampling_strategy, SamplingStrategy::Proportional);
    assert!(c.document_windows.is_none());
    // Empty sections mean defaults.
    let c = parse("mlflow:\nmodel:\n  base_model: x\n").unwrap();
    assert!(c.mlflow.tracking_uri.is_none());
    // validate() wants a base model.
    let e = c.validate();
    assert!(e.is_ok());
    let e = parse("").unwrap().validate().unwrap_err().to_string();
    assert!(e.contains("`model.base_model`") && e.contains("Hugging Face model id"), "{e}");
}

#[test]
fn inactive_keys_lists_only_those_set_and_on() {
    let c = parse(FULL).unwrap();
    let keys: Vec<String> = c.inactive_keys().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["training.push_to_hub", "training.hub_model_id"]);
    // Each comes with its reason.
    assert!(c.inactive_keys()[0].1.contains("huggingface-cli upload"), "{:?}", c.inactive_keys());
    // torch_compile: false is set but off.
    assert!(!keys.contains(&"training.torch_compile".to_string()));
    assert!(parse("model:\n  base_model: x\n").unwrap().inactive_keys().is_empty());
    // Every listed key is a real key of the schema.
    for (key, _) in INACTIVE_KEYS {
        let (section, name) = key.split_once('.').unwrap();
        let text = format!("{section}:\n  {name}: null\n");
        if let Err(e @ ConfigError::UnknownKey { .. }) = parse(&text) {
            panic!("{key} is not in the schema: {e}");
        }
    }
}

#[test]
fn unknown_key_names_file_line_key_and_nearest() {
    let e = err("model:\n  base_model: x\ntraining:\n  max_steps: 3\n  learnign_rate: 1e-4\n");
    assert_eq!(e, "cfg.yaml:5: unknown key `training.learnign_rate`; did you mean `training.learning_rate`?");
    let e = err("trainng:\n  seed: 1\n");
    assert_eq!(e, "cfg.yaml:1: unknown key `trainng`; did you mean `training`?");
    let e = err("datasets:\n  d:\n    source: x\n    colums: {a: anchor}\n");
    assert_eq!(e, "cfg.yaml:4: unknown key `datasets.d.colums`; did you mean `datasets.d.columns`?");
    let e = err("datasets:\n  sampling_stratgy: round_robin\n");
    assert_eq!(e, "cfg.yaml:2: unknown key `datasets.sampling_stratgy`; did you mean `datasets.sampling_strategy`?");
    let e = err("evaluation:\n  tasks:\n    - nmae: a\n      source: b\n");
    assert_eq!(e, "cfg.yaml:3: unknown key `evaluation.tasks[0].nmae`; did you mean `evaluation.tasks[0].name`?");
    let e = err("training:\n  zzzzqqq: 1\n");
    assert!(e.starts_with("cfg.yaml:2: unknown key `training.zzzzqqq`; remove it"), "{e}");
}

#[test]
fn wrong_type_names_file_line_key_value_and_expected() {
    let e = err("training:\n  learning_rate: fast\n");
    assert_eq!(e, "cfg.yaml:2: `training.learning_rate` is `fast` but must be a number (e.g. 0.5 or 5e-5); fix the value");
    let e = err("training:\n  per_device_train_batch_size: -4\n");
    assert_eq!(e, "cfg.yaml:2: `training.per_device_train_batch_size` is `-4` but must be a non-negative integer; fix the value");
    let e = err("training:\n  max_steps: 1.5\n");
    assert_eq!(e, "cfg.yaml:2: `training.max_steps` is `1.5` but must be an integer; fix the value");
    let e = err("training:\n  fp16: maybe\n");
    assert_eq!(e, "cfg.yaml:2: `training.fp16` is `maybe` but must be true or false; fix the value");
    let e = err("training:\n  output_dir: [a, b]\n");
    assert_eq!(e, "cfg.yaml:2: `training.output_dir` is `a list` but must be a string; fix the value");
    let e = err("training: 5\n");
    assert!(e.starts_with("cfg.yaml:1: `training` is `5` but must be a mapping"), "{e}");
    let e = err("evaluation:\n  tasks:\n    - name: a\n      source: b\n    - name: c\n      source: [x]\n");
    assert_eq!(e, "cfg.yaml:6: `evaluation.tasks[1].source` is `a list` but must be a string; fix the value");
}

#[test]
fn unknown_choice_suggests_nearest() {
    let e = err("model:\n  architecture: inference_free_splade\n");
    assert_eq!(
        e,
        "cfg.yaml:2: `model.architecture` is `inference_free_splade`, which is not one of: splade, inference-free-splade, csr (did you mean `inference-free-splade`?)"
    );
    let e = err("datasets:\n  sampling_strategy: roundrobin\n");
    assert!(e.contains("did you mean `round_robin`?"), "{e}");
}

#[test]
fn missing_required_key_and_syntax_errors() {
    let e = err("datasets:\n  d:\n    enabled: true\n");
    assert_eq!(e, "cfg.yaml:3: missing key `datasets.d.source`; add it");
    let e = err("training:\n  seed: [1, 2\n");
    assert!(e.starts_with("cfg.yaml:") && e.contains("not valid YAML"), "{e}");
    let e = err("- a\n- b\n");
    assert_eq!(e, "cfg.yaml:1: `(top level)`: the config is `a list` but must be a mapping of sections (model:, training:, ...)");
    let e = err("training:\n  seed: 1\n  seed: 2\n");
    assert!(e.starts_with("cfg.yaml:3:") && e.contains("`seed` appears twice"), "{e}");
}

#[test]
fn env_expansion() {
    // SAFETY of the test: unique variable names, set before use, never read elsewhere.
    std::env::set_var("SPLADE_TEST_CFG_DIR", "/tmp/models");
    std::env::set_var("SPLADE_TEST_CFG_STEPS", "77");
    let c = parse(
        "model:\n  base_model: ${SPLADE_TEST_CFG_DIR}/tiny\ntraining:\n  max_steps: ${SPLADE_TEST_CFG_STEPS}\n  output_dir: ${SPLADE_TEST_CFG_UNSET:-out}/$${literal}\n",
    )
    .unwrap();
    assert_eq!(c.model.base_model, "/tmp/models/tiny");
    assert_eq!(c.training.max_steps, 77);
    assert_eq!(c.training.output_dir, "out/${literal}");
    let e = err("model:\n  base_model: ${SPLADE_TEST_CFG_NOPE}/x\n");
    assert_eq!(
        e,
        "cfg.yaml:2: `model.base_model` uses ${SPLADE_TEST_CFG_NOPE} but SPLADE_TEST_CFG_NOPE is not set; export it or write ${SPLADE_TEST_CFG_NOPE:-default}"
    );
}

#[test]
fn validation_rules_name_key_value_and_fix() {
    let base = "model:\n  base_model: x\n";
    let e = parse(&format!("{base}document_windows:\n  size: 128\n  stride: 256\n")).unwrap().validate().unwrap_err();
    assert_eq!(e.to_string(), "cfg.yaml:5: `document_windows.stride` is `256`: must be between 1 and document_windows.size");
    let e = parse(&format!("{base}training:\n  per_device_train_batch_size: 0\n")).unwrap().validate().unwrap_err();
    assert_eq!(e.to_string(), "cfg.yaml:4: `training.per_device_train_batch_size` is `0`: must be at least 1");
    let e = parse(&format!("{base}loss:\n  query_regularizer_weight: -1e-3\n")).unwrap().validate().unwrap_err();
    assert_eq!(e.to_string(), "cfg.yaml:4: `loss.query_regularizer_weight` is `-0.001`: must be ≥ 0");
    let e = parse(&format!("{base}training:\n  fp16: true\n  bf16: true\n")).unwrap().validate().unwrap_err();
    assert_eq!(
        e.to_string(),
        "cfg.yaml:5: `training.bf16` is `true`: `training.fp16` is true as well; fp16 and bf16 autocast exclude each other, set one of them to false"
    );
    // fp16 alone is acted on now: valid, and not reported as inactive.
    let c = parse(&format!("{base}training:\n  fp16: true\n")).unwrap();
    c.validate().unwrap();
    assert!(c.inactive_keys().is_empty(), "{:?}", c.inactive_keys());
    let e = parse(&format!("{base}datasets:\n  d:\n    source: x\n    split_ratio: 1.5\n")).unwrap().validate().unwrap_err();
    assert!(e.to_string().starts_with("cfg.yaml:6: `datasets.d.split_ratio` is `1.5`"), "{e}");
    let e = parse(&format!("{base}datasets:\n  d:\n    source: x\n    columns: {{q: query}}\n")).unwrap().validate().unwrap_err();
    assert!(e.to_string().contains("`datasets.d.columns`") && e.to_string().contains("not a role"), "{e}");
    let e = parse(&format!("{base}cluster:\n  min_workers: 3\n  max_workers: 2\n")).unwrap().validate().unwrap_err();
    assert!(e.to_string().contains("must be ≥ min_workers"), "{e}");
    let e = parse(&format!("{base}cluster:\n  heartbeat_interval: 10\n  heartbeat_timeout: 5\n")).unwrap().validate().unwrap_err();
    assert!(e.to_string().contains("longer than heartbeat_interval"), "{e}");
    let e = parse(&format!("{base}cluster:\n  data_plan_chunk_steps: 0\n")).unwrap().validate().unwrap_err();
    assert_eq!(
        e.to_string(),
        "cfg.yaml:4: `cluster.data_plan_chunk_steps` is `0`: must be at least 1 (steps per data-plan chunk; default 1000)"
    );
    assert_eq!(parse(&format!("{base}cluster:\n  data_plan_chunk_steps: 4\n")).unwrap().cluster.data_plan_chunk_steps, 4);
    let e = parse(base).unwrap().validate_for_training().unwrap_err();
    assert!(e.to_string().contains("no enabled dataset"), "{e}");
    let e = parse(&format!("{base}training:\n  max_steps: 0\n")).unwrap().validate().unwrap_err();
    assert!(e.to_string().starts_with("cfg.yaml:4: `training.max_steps` is `0`"), "{e}");
    // A rule broken by a default (not written in the file) has no line.
    let e = parse(&format!("{base}document_windows:\n  size: 64\n")).unwrap().validate().unwrap_err();
    assert_eq!(e.to_string(), "cfg.yaml: `document_windows.stride` is `128`: must be between 1 and document_windows.size");
    let e = parse(&format!("{base}training:\n  load_best_model_at_end: true\n")).unwrap().validate().unwrap_err();
    assert!(e.to_string().contains("set eval_strategy to steps or epoch"), "{e}");
}

#[test]
fn resume_and_report_to_shapes() {
    let c = parse("training:\n  resume_from_checkpoint: s3://b/run/checkpoint-20\n  report_to: [mlflow, tensorboard]\n").unwrap();
    assert_eq!(c.training.resume_from_checkpoint, Some(ResumeFrom::Path("s3://b/run/checkpoint-20".into())));
    assert_eq!(c.training.report_to.len(), 2);
    let c = parse("training:\n  resume_from_checkpoint: null\n").unwrap();
    assert_eq!(c.training.resume_from_checkpoint, None);
    let c = parse("training:\n  resume_from_checkpoint: false\n").unwrap();
    assert_eq!(c.training.resume_from_checkpoint, None);
    let e = err("training:\n  resume_from_checkpoint: 3\n");
    assert_eq!(e, "cfg.yaml:2: `training.resume_from_checkpoint` is `3` but must be true, false or a checkpoint path; fix the value");
    let c = parse("evaluation:\n  log_decoded_samples: true\n").unwrap();
    assert_eq!(c.evaluation.log_decoded_samples, 3);
}

/// Regression (issue #17): a cluster worker validating the coordinator's config said `<assignment>`;
/// the shipped JSON now carries the file and each key's line.
#[test]
fn config_shipped_as_json_names_the_original_file_and_line() {
    let c = parse("model:\n  base_model: x\ntraining:\n  per_device_train_batch_size: 0\n").unwrap();
    let back = Config::from_json(&c.to_json(), "<assignment>").unwrap();
    let e = back.validate().unwrap_err().to_string();
    assert_eq!(e, "cfg.yaml:4: `training.per_device_train_batch_size` is `0`: must be at least 1");
}

/// Regression (issue #17): `hardware.num_threads: 0` reached libtorch's "Expected positive number of threads".
#[test]
fn zero_threads_is_a_config_error() {
    let e = parse("model:\n  base_model: x\nhardware:\n  num_threads: 0\n").unwrap().validate().unwrap_err().to_string();
    assert!(e.starts_with("cfg.yaml:4: `hardware.num_threads` is `0`: must be at least 1"), "{e}");
}

#[test]
fn json_round_trip_keeps_everything() {
    let c = parse(FULL).unwrap();
    let back = Config::from_json(&c.to_json(), "coordinator").unwrap();
    assert_eq!(back.to_json(), c.to_json());
    assert_eq!(back.datasets, c.datasets);
}

#[test]
fn every_file_in_configs_parses_and_validates() {
    let dir = splade_tests::tools::repo_root().join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let c = Config::from_path(&path).unwrap_or_else(|e| panic!("{e}"));
            c.validate_for_training().unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 4, "expected at least 4 configs in {}", dir.display());
}

#[test]
fn missing_file_names_path() {
    let e = Config::from_path(std::path::Path::new("/nonexistent/cfg.yaml")).unwrap_err().to_string();
    assert!(e.starts_with("/nonexistent/cfg.yaml: cannot read the config"), "{e}");
}

#[test]
fn every_error_of_a_file_is_reported_in_one_run_with_its_line() {
    let text = "model:\n  base_model: x\n  architecure: splade\ntraining:\n  learning_rate: fast\n  max_steps: 10\n  \
                fp16: maybe\n  learnign_rate: 1e-4\nloss:\n  type: splade\nhardware:\n  device: tpu\n";
    let e = parse(text).unwrap_err();
    let problems: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        vec![
            "cfg.yaml:3: unknown key `model.architecure`; did you mean `model.architecture`?",
            "cfg.yaml:5: `training.learning_rate` is `fast` but must be a number (e.g. 0.5 or 5e-5); fix the value",
            "cfg.yaml:7: `training.fp16` is `maybe` but must be true or false; fix the value",
            "cfg.yaml:8: unknown key `training.learnign_rate`; did you mean `training.learning_rate`?",
            "cfg.yaml:10: `loss.type` is `splade`, which is not one of: splade_loss, csr_loss (did you mean `splade_loss`?)",
            "cfg.yaml:12: `hardware.device` is `tpu`, which is not one of: auto, cpu, cuda, mps (did you mean `cpu`?)",
        ]
    );
    // The whole error says how many and lists each on its own line.
    let whole = e.to_string();
    assert!(whole.starts_with("6 problems in cfg.yaml:\n  cfg.yaml:3: unknown key"), "{whole}");
    assert_eq!(whole.lines().count(), 7, "{whole}");
    // A block missing its required key is reported once, not again as a consequence of an earlier drop.
    let e = parse("datasets:\n  d:\n    source: [x]\n  e:\n    enabled: true\n").unwrap_err();
    let problems: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        vec![
            "cfg.yaml:3: `datasets.d.source` is `a list` but must be a string; fix the value",
            "cfg.yaml:5: missing key `datasets.e.source`; add it",
        ]
    );
    // Broken rules are all reported too, each at its line.
    let c = parse("model:\n  base_model: x\ntraining:\n  warmup_ratio: 2\n  weight_decay: -1\nloss:\n  scale: 0\n").unwrap();
    let e = c.validate().unwrap_err();
    let lines: Vec<Option<usize>> = e
        .problems()
        .iter()
        .map(|p| match p {
            ConfigError::Invalid { line, .. } => *line,
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(lines, vec![Some(4), Some(5), Some(7)], "{e}");
}

#[test]
fn set_overrides_are_typed_like_the_file_and_checked_like_it() {
    let sets = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let text = "model:\n  base_model: x\ntraining:\n  max_steps: 100\n  output_dir: out\n";
    let c = Config::from_str_with(
        text,
        "cfg.yaml",
        &sets(&[
            "training.max_steps=20",
            "training.output_dir=/tmp/x",
            "training.report_to=[mlflow, tensorboard]",
            "training.learning_rate=5e-5",
            "mlflow.tags.team=nlp",
            "router.learning_rate_patterns={'.*\\.query\\..*': 1e-3}",
            "training.run_name='007'",
        ]),
    )
    .unwrap();
    assert_eq!(c.training.max_steps, 20);
    assert_eq!(c.training.output_dir, "/tmp/x");
    assert_eq!(c.training.report_to, vec!["mlflow", "tensorboard"]);
    assert_eq!(c.training.learning_rate, 5e-5);
    // Nested keys create the mappings on the way.
    assert_eq!(c.mlflow.tags.get("team").map(String::as_str), Some("nlp"));
    assert_eq!(c.router.learning_rate_patterns.get(".*\\.query\\..*"), Some(&1e-3));
    // Quoted stays a string, as in the file.
    assert_eq!(c.training.run_name.as_deref(), Some("007"));
    assert_eq!(c.locate("training.max_steps"), "--set training.max_steps=20");
    assert_eq!(c.locate("training.seed"), "cfg.yaml");
    assert_eq!(c.line_of("training.max_steps"), None);

    // A bad value, an unknown key and a broken rule given by --set are named by their argument, with the
    // file's own errors in the same run.
    let e = Config::from_str_with(
        "model:\n  base_model: x\ntraining:\n  seed: many\n",
        "cfg.yaml",
        &sets(&["training.max_steps=twenty", "training.max_step=20", "trainin.seed=1"]),
    )
    .unwrap_err();
    let problems: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        vec![
            "cfg.yaml:4: `training.seed` is `many` but must be a non-negative integer; fix the value",
            "--set training.max_steps=twenty: `training.max_steps` is `twenty` but must be an integer; fix the value",
            "--set training.max_step=20: unknown key `training.max_step`; did you mean `training.max_steps`?",
            "--set trainin.seed=1: unknown key `trainin`; did you mean `training`?",
        ]
    );
    let c = Config::from_str_with("model:\n  base_model: x\n", "cfg.yaml", &sets(&["training.warmup_ratio=3"])).unwrap();
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "--set training.warmup_ratio=3: `training.warmup_ratio` is `3`: must be between 0 and 1"
    );
    // Malformed arguments say what a --set looks like.
    let e = Config::from_str_with("", "cfg.yaml", &sets(&["training.max_steps"])).unwrap_err().to_string();
    assert!(e.contains("expected key=value") && e.contains("--set training.max_steps=20"), "{e}");
    let e = Config::from_str_with("model:\n  base_model: x\n", "cfg.yaml", &sets(&["model.base_model.x=1"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`model.base_model` is x in the config, not a mapping"), "{e}");
}

#[test]
fn mteb_task_short_names_resolve_and_unknown_ones_are_errors() {
    let c = parse("model:\n  base_model: x\nevaluation:\n  mteb_tasks: [NorQuAD, SNL, SNLRetrieval]\n").unwrap();
    c.validate().unwrap();
    let notes = c.startup_notes();
    assert!(notes.iter().any(|n| n == "cfg.yaml:4: evaluation.mteb_tasks: `NorQuAD` is the MTEB task `NorQuadRetrieval`"), "{notes:?}");
    assert!(notes.iter().any(|n| n.ends_with("`SNL` is the MTEB task `SNLRetrieval`")), "{notes:?}");
    // The full name needs no notice.
    assert!(!notes.iter().any(|n| n.contains("`SNLRetrieval` is")), "{notes:?}");
    let e = parse("model:\n  base_model: x\nevaluation:\n  mteb_tasks: [NorQuADD]\n").unwrap().validate().unwrap_err().to_string();
    assert!(e.starts_with("cfg.yaml:4: `evaluation.mteb_tasks` is `NorQuADD`:") && e.contains("did you mean NorQuadRetrieval"), "{e}");
}

#[test]
fn router_section_rules_and_notes() {
    let base = "model:\n  base_model: x\n  architecture: inference-free-splade\n  use_router: true\n";
    let c = parse(&format!(
        "{base}router:\n  mapping:\n    anchor: query\n    positive: document\n    negative: document\n  \
         learning_rate_patterns:\n    \".*\\\\.query\\\\..*\": 0.001\n"
    ))
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.router.learning_rate_patterns.get(".*\\.query\\..*"), Some(&0.001));
    let names: Vec<String> = ["model.0.sub_modules.query.0.weight", "model.0.sub_modules.document.0.auto_model.bert.x.weight"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(c.learning_rate_pattern_of(&names).unwrap(), vec![Some((0, 0.001)), None]);
    // The last matching pattern wins, as sentence-transformers' create_optimizer moves parameters group to group.
    let c2 = parse(&format!("{base}router:\n  learning_rate_patterns:\n    query: 0.001\n    \"sub_modules\": 0.002\n")).unwrap();
    assert_eq!(c2.learning_rate_pattern_of(&names).unwrap(), vec![Some((1, 0.002)), Some((1, 0.002))]);
    // A pattern that matches nothing is refused, naming what names look like.
    let c3 = parse(&format!("{base}router:\n  learning_rate_patterns:\n    \"^query\": 0.001\n")).unwrap();
    let e = c3.learning_rate_pattern_of(&names).unwrap_err().to_string();
    assert!(e.starts_with("cfg.yaml:6: `router.learning_rate_patterns` is `^query`: matches no parameter") && e.contains("model.0.sub_modules.query.0.weight"), "{e}");
    // Without use_router the section is ignored, as in the seed's script, with a note.
    let plain = parse("model:\n  base_model: x\nrouter:\n  learning_rate_patterns:\n    query: 0.001\n").unwrap();
    assert_eq!(plain.learning_rate_pattern_of(&names).unwrap(), vec![None, None]);
    assert!(plain.startup_notes().iter().any(|n| n.starts_with("cfg.yaml:3: `router` is ignored")), "{:?}", plain.startup_notes());
    // A bad regex, a non-positive rate, a route the data path does not take: all named at once.
    let bad = parse(&format!(
        "{base}router:\n  mapping:\n    anchor: document\n  learning_rate_patterns:\n    \"(unclosed\": 0.001\n    ok: -1\n"
    ))
    .unwrap();
    let e = bad.validate().unwrap_err();
    let problems: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("`(unclosed`: not a valid regex"), "{problems:#?}");
    assert!(problems[1].contains("`ok: -1`: the learning rate must be a positive number"), "{problems:#?}");
    assert!(problems[2].starts_with("cfg.yaml:7: `router.mapping.anchor` is `document`"), "{problems:#?}");
}

#[test]
fn seed_only_keys_parse_and_say_what_they_do() {
    let c = parse(
        "model:\n  base_model: x\ntraining:\n  dataloader_num_workers: 8\n  dataloader_pin_memory: false\n  \
         dataloader_prefetch_factor: 4\n  early_stopping_patience: 5\n  early_stopping_threshold: 0.001\n  torch_compile: true\n\
         \x20 eval_strategy: steps\n  metric_for_best_model: eval_loss\n\
         hardware:\n  tf32: true\n  distributed: true\n  world_size: 4\n  gradient_checkpointing: true\n\
         model_card:\n  library_name: sentence-transformers\nevaluation:\n  evaluator: sparse_nanobeir\n  track_sparsity: true\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.training.dataloader_pin_memory, Some(false));
    assert_eq!(c.training.early_stopping_patience, Some(5));
    assert_eq!(c.training.early_stopping_threshold, 0.001);
    assert_eq!(c.hardware.world_size, Some(4));
    assert_eq!(c.evaluation.evaluator, Some(EvaluatorKind::SparseNanobeir));
    let notes = c.startup_notes();
    // pin_memory is acted on (no note); the others are listed with their reason.
    assert!(!notes.iter().any(|n| n.contains("dataloader_pin_memory")), "{notes:#?}");
    for key in ["dataloader_num_workers", "torch_compile", "gradient_checkpointing"] {
        assert!(notes.iter().any(|n| n.contains(&format!("{key}` is parsed but not acted on: "))), "{key}: {notes:#?}");
    }
    // tf32 is acted on (libtorch's TF32 flags on CUDA; the trainer notes on CPU that it has no effect).
    assert!(!notes.iter().any(|n| n.contains("tf32")), "{notes:#?}");
    let gc = notes.iter().find(|n| n.contains("gradient_checkpointing")).unwrap();
    assert!(gc.starts_with("cfg.yaml:16:") && gc.contains("lean max-pooled head") && gc.contains("document_windows"), "{gc}");
    let dist = notes.iter().find(|n| n.contains("hardware.distributed")).unwrap();
    assert!(dist.starts_with("cfg.yaml:14:") && dist.contains("splade-coordinator --config cfg.yaml") && dist.contains("splade-worker --join") && dist.contains("4 data-parallel"), "{dist}");
    // world_size 1 and distributed false say nothing.
    let quiet = parse("model:\n  base_model: x\nhardware:\n  distributed: false\n  world_size: 1\n").unwrap();
    assert!(quiet.startup_notes().is_empty(), "{:?}", quiet.startup_notes());
}

#[test]
fn seed_loader_blocks_parse_with_the_seeds_defaults_and_round_trip() {
    let base = "model:\n  base_model: x\n";
    // A disabled block needs nothing else; a missing `enabled` follows the seed's script (true, eti false).
    let c = parse(&format!("{base}datasets:\n  nli: {{enabled: false}}\n  ddsc: {{}}\n  eti:\n    source: me/eti\n")).unwrap();
    c.validate().unwrap();
    let names: Vec<_> = c.datasets.enabled().map(|(n, _)| n).collect();
    assert_eq!(names, ["ddsc"]);
    let Some(SeedLoader::Ddsc(d)) = &c.datasets.datasets[1].1.loader else { panic!("ddsc loader") };
    assert_eq!(d.languages, ["norwegian", "danish", "swedish"]);
    assert_eq!(d.split_ratio, SplitRatio([0.98, 0.01, 0.01]));
    assert_eq!(d.tasks, None);
    let Some(SeedLoader::Eti(e)) = &c.datasets.datasets[2].1.loader else { panic!("eti loader") };
    assert!(!e.enabled);
    assert_eq!(e.source, "me/eti");
    let c = parse(&format!("{base}datasets:\n  scandi_qa:\n    use_paws: false\n    scandiqa_languages: [da]\n")).unwrap();
    let Some(SeedLoader::ScandiQa(q)) = &c.datasets.datasets[0].1.loader else { panic!("scandi_qa loader") };
    assert!(q.use_norquad && q.use_openbookqa && q.use_scandiqa && q.use_supervised_da && !q.use_paws);
    assert_eq!(q.paws_data_dir, "data/paws-x/x-final");
    // The JSON a coordinator sends its workers reads back the same.
    let back = Config::from_json(&c.to_json(), "json").unwrap();
    assert_eq!(back.datasets, c.datasets);
}

#[test]
fn seed_loader_block_errors_name_file_line_key_and_fix() {
    let base = "model:\n  base_model: x\ndatasets:\n";
    let e = err(&format!("{base}  ddsc:\n    split_ratio: 0.98\n"));
    assert!(e.starts_with("cfg.yaml:5: `datasets.ddsc.split_ratio` is `0.98`"), "{e}");
    let e = parse(&format!("{base}  ddsc:\n    split_ratio: [0.9, 0.2, 0.0]\n")).unwrap().validate().unwrap_err().to_string();
    assert!(e.starts_with("cfg.yaml:5: `datasets.ddsc.split_ratio` is `[0.9, 0.2, 0.0]`") && e.contains("train + dev"), "{e}");
    let e = err(&format!("{base}  nli:\n    enabled: true\n    sorce: x/y\n"));
    assert!(e.starts_with("cfg.yaml:6: unknown key `datasets.nli.sorce`") && e.contains("datasets.nli.source"), "{e}");
    let e = parse(&format!("{base}  scandi_qa:\n    use_norquad: false\n    use_openbookqa: false\n    use_scandiqa: false\n    use_supervised_da: false\n    use_paws: false\n"))
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("`datasets.scandi_qa.use_norquad`") && e.contains("turn one on"), "{e}");
}

/// Issue #17's property test: a valid config mutated at random (a byte changed, a line dropped or
/// duplicated, a value replaced) parses and validates to a value or a `ConfigError`, never a panic.
mod mutated_configs {
    use super::*;
    use proptest::prelude::*;

    fn check(text: &str) {
        if let Ok(c) = Config::from_str(text, "cfg.yaml") {
            let _ = c.validate_for_training();
            let _ = c.to_json();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn byte_mutations_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = FULL.as_bytes().to_vec();
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            check(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn line_mutations_never_panic(line in any::<prop::sample::Index>(), op in 0..3u8, value in "[ -~]{0,12}") {
            let mut lines: Vec<String> = FULL.lines().map(str::to_string).collect();
            let i = line.index(lines.len());
            match op {
                0 => { lines.remove(i); }
                1 => { let l = lines[i].clone(); lines.insert(i, l); }
                _ => {
                    if let Some((key, _)) = lines[i].split_once(':') {
                        lines[i] = format!("{key}: {value}");
                    }
                }
            }
            check(&lines.join("\n"));
        }
    }
}

#[test]
fn hardware_tf32_is_acted_on_and_said_to_do_nothing_on_cpu() {
    let cpu = parse("model:\n  base_model: x\nhardware:\n  device: cpu\n  tf32: true\n").unwrap();
    assert!(cpu.inactive_keys().is_empty(), "{:?}", cpu.inactive_keys());
    let notes = cpu.startup_notes();
    assert!(notes.iter().any(|n| n == "cfg.yaml:5: `hardware.tf32` has no effect on CPU: TF32 is a CUDA matmul and cuDNN mode"), "{notes:?}");
    let cuda = parse("model:\n  base_model: x\nhardware:\n  device: cuda\n  tf32: true\n").unwrap();
    assert!(cuda.startup_notes().is_empty(), "{:?}", cuda.startup_notes());
}
