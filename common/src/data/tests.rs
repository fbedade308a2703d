use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::*;
use crate::config::{BatchSamplerKind, SamplingStrategy};

pub(crate) fn spec(source: &str) -> DatasetSpec {
    DatasetSpec {
        enabled: true,
        source: source.into(),
        config: None,
        split: None,
        format: None,
        columns: IndexMap::new(),
        split_ratio: 0.0,
        max_samples: None,
        on_bad_record: OnBadRecord::Error,
        loader: None,
        hub_commits: Default::default(),
    }
}

fn load(spec: &DatasetSpec) -> Result<LoadedDataset, DataError> {
    load_dataset_blocking("d", spec, &StoreOptions::default())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A Parquet column of optional strings or doubles.
pub(crate) enum Col<'a> {
    Str(&'a str, Vec<Option<&'a str>>),
    F64(&'a str, Vec<Option<f64>>),
}

/// Writes a Parquet file with the given columns, `rows_per_group` rows per row group.
pub(crate) fn write_parquet(path: &Path, cols: &[Col], rows_per_group: usize) {
    let fields: Vec<String> = cols
        .iter()
        .map(|c| match c {
            Col::Str(n, _) => format!("OPTIONAL BYTE_ARRAY {n} (UTF8);"),
            Col::F64(n, _) => format!("OPTIONAL DOUBLE {n};"),
        })
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {} }}", fields.join(" "))).unwrap());
    let props = Arc::new(WriterProperties::builder().build());
    let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let n = match &cols[0] {
        Col::Str(_, v) => v.len(),
        Col::F64(_, v) => v.len(),
    };
    let mut start = 0;
    while start < n {
        let end = (start + rows_per_group).min(n);
        let mut rg = w.next_row_group().unwrap();
        let mut i = 0;
        while let Some(mut col) = rg.next_column().unwrap() {
            match &cols[i] {
                Col::Str(_, v) => {
                    let part = &v[start..end];
                    let defs: Vec<i16> = part.iter().map(|x| x.is_some() as i16).collect();
                    let vals: Vec<ByteArray> = part.iter().flatten().map(|s| ByteArray::from(*s)).collect();
                    col.typed::<ByteArrayType>().write_batch(&vals, Some(&defs), None).unwrap();
                }
                Col::F64(_, v) => {
                    let part = &v[start..end];
                    let defs: Vec<i16> = part.iter().map(|x| x.is_some() as i16).collect();
                    let vals: Vec<f64> = part.iter().flatten().copied().collect();
                    col.typed::<DoubleType>().write_batch(&vals, Some(&defs), None).unwrap();
                }
            }
            col.close().unwrap();
            i += 1;
        }
        rg.close().unwrap();
        start = end;
    }
    w.close().unwrap();
}

#[test]
fn jsonl_roles_negatives_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.jsonl",
        concat!(
            r#"{"anchor": "q1", "positive": "p1", "negative_2": "n2", "negative": "n0", "negative_1": "n1", "label": [1, 0.5], "id": 7}"#,
            "\n\n",
            r#"{"anchor": "q2", "positive": "p2", "label": 2.5}"#,
            "\n"
        ),
    );
    let d = load(&spec(&f)).unwrap();
    assert_eq!(d.examples.len(), 2);
    assert_eq!(d.examples[0].negatives, ["n0", "n1", "n2"]);
    assert_eq!(d.examples[0].label, Some(vec![1.0, 0.5]));
    assert_eq!(d.examples[1].label, Some(vec![2.5]));
    assert!(d.examples[1].negatives.is_empty());
    assert_eq!(d.files, [f]);
}

#[test]
fn column_mapping_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "a.jsonl", "\u{feff}{\"question\": \"q\", \"context\": \"c\", \"hard\": \"h\"}\r\n");
    let mut s = spec(&f);
    s.columns = [("question", "anchor"), ("context", "positive"), ("hard", "negative")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let a = load(&s).unwrap();
    s.columns = [("anchor", "question"), ("positive", "context"), ("negative_1", "hard")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let b = load(&s).unwrap();
    assert_eq!(a.examples, b.examples);
    assert_eq!(a.examples[0], Example { anchor: "q".into(), positive: "c".into(), negatives: vec!["h".into()], label: None });
    let bad: IndexMap<String, String> = [("q".to_string(), "anchor".to_string())].into_iter().collect();
    assert_eq!(ColumnMap::from_config(&bad).unwrap_err(), "no column is mapped to `positive`; add `your_column: positive`");
    let twice: IndexMap<String, String> =
        [("a", "anchor"), ("b", "anchor"), ("c", "positive")].iter().map(|(x, y)| (x.to_string(), y.to_string())).collect();
    assert!(ColumnMap::from_config(&twice).unwrap_err().contains("role `anchor` is mapped twice"));
}

#[test]
fn bad_jsonl_lines_name_file_line_value_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "bad.jsonl", "{\"anchor\": \"q\", \"positive\": \"p\"}\n{not json\n");
    let e = load(&spec(&f)).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{f}:2: not valid JSON (")), "{e}");
    assert!(e.contains("`{not json`") && e.ends_with("or set `datasets.d.on_bad_record: skip`"), "{e}");

    let f = write(dir.path(), "missing.jsonl", "{\"anchor\": \"q\", \"positive\": \"p\"}\n{\"anchor\": \"q\", \"pos\": \"p\"}\n");
    let e = load(&spec(&f)).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{f}:2: missing column `positive`; the line has: anchor, pos; fix the record, map columns with `datasets.d.columns`, or set `datasets.d.on_bad_record: skip`")
    );

    let f = write(dir.path(), "type.jsonl", "{\"anchor\": 5, \"positive\": \"p\"}\n");
    let e = load(&spec(&f)).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{f}:1: column `anchor` is `5` but must be a string;")), "{e}");

    let f = write(dir.path(), "label.jsonl", "{\"anchor\": \"a\", \"positive\": \"p\", \"label\": \"high\"}\n");
    let e = load(&spec(&f)).unwrap_err().to_string();
    assert!(e.contains(":1: column `label` is `\"high\"` but a label must be a number or a list of numbers"), "{e}");
}

#[test]
fn skip_counts_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "mixed.jsonl",
        "{\"anchor\": \"q\", \"positive\": \"p\"}\nnope\n[1]\n{\"anchor\": \"q2\"}\n{\"anchor\": \"q3\", \"positive\": \"p3\"}\n",
    );
    let mut s = spec(&f);
    s.on_bad_record = OnBadRecord::Skip;
    let d = load(&s).unwrap();
    assert_eq!(d.examples.len(), 2);
    assert_eq!(d.bad_records, 3);
    // All bad: empty, and the error says records were skipped.
    let f = write(dir.path(), "allbad.jsonl", "x\ny\n");
    s.source = f.clone();
    let e = load(&s).unwrap_err().to_string();
    assert_eq!(e, format!("dataset `d`: `{f}` holds no records (2 bad records were skipped); point `datasets.d.source` at a non-empty file or set `enabled: false`"));
}

#[test]
fn missing_empty_unknown_format_and_hf() {
    let dir = tempfile::tempdir().unwrap();
    let e = load(&spec("/nonexistent/x.jsonl")).unwrap_err().to_string();
    assert_eq!(e, "dataset `d`: source `/nonexistent/x.jsonl` matches no file; check `datasets.d.source` (a path, glob or URL)");
    let f = write(dir.path(), "empty.jsonl", "\n");
    let e = load(&spec(&f)).unwrap_err().to_string();
    assert!(e.starts_with(&format!("dataset `d`: `{f}` holds no records;")), "{e}");
    let f = write(dir.path(), "data.txt", "x");
    let e = load(&spec(&f)).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{f}: cannot tell the format")) && e.contains("datasets.d.format"), "{e}");
    // A Hub source resolves through the Hub; offline with an empty cache that is an error naming the id, the
    // cache and HF_HUB_OFFLINE (nextest runs each test in its own process, so the environment is this test's).
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("HF_HUB_CACHE", dir.path());
    let e = load(&spec("hf://datasets/ltg/norquad")).unwrap_err().to_string();
    assert!(e.starts_with("dataset `d`: dataset `ltg/norquad` (revision `main`) is not in the Hugging Face cache"), "{e}");
    assert!(e.contains(&dir.path().join("datasets--ltg--norquad").display().to_string()) && e.contains("HF_HUB_OFFLINE"), "{e}");
}

#[test]
fn globs_directories_gzip_and_max_samples() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.jsonl", "{\"anchor\": \"b\", \"positive\": \"p\"}\n");
    write(dir.path(), "a.jsonl", "{\"anchor\": \"a\", \"positive\": \"p\"}\n");
    let gz = dir.path().join("c.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all(b"{\"anchor\": \"c\", \"positive\": \"p\"}\n{\"anchor\": \"d\", \"positive\": \"p\"}\n").unwrap();
    enc.finish().unwrap();
    let glob = format!("{}/*.jsonl*", dir.path().display());
    let d = load(&spec(&glob)).unwrap();
    let anchors: Vec<_> = d.examples.iter().map(|e| e.anchor.as_str()).collect();
    assert_eq!(anchors, ["a", "b", "c", "d"]);
    let d = load(&spec(dir.path().to_str().unwrap())).unwrap();
    assert_eq!(d.examples.len(), 4);
    let mut s = spec(&glob);
    s.max_samples = Some(3);
    assert_eq!(load(&s).unwrap().examples.len(), 3);
}

/// Regression (issue #17): a path a glob or directory matched but could not read was dropped without a word.
#[test]
fn unreadable_paths_in_a_glob_or_directory_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.jsonl", "{\"anchor\": \"a\", \"positive\": \"p\"}\n");
    let dangling = dir.path().join("b.jsonl");
    std::os::unix::fs::symlink(dir.path().join("gone.jsonl"), &dangling).unwrap();
    for source in [format!("{}/*.jsonl", dir.path().display()), dir.path().display().to_string()] {
        let e = load(&spec(&source)).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: cannot be read (No such file or directory", dangling.display())), "{e}");
        assert!(e.ends_with("narrow `datasets.d.source` so it does not match"), "{e}");
    }
    // Without the broken link the same sources load.
    std::fs::remove_file(&dangling).unwrap();
    assert_eq!(load(&spec(&format!("{}/*.jsonl", dir.path().display()))).unwrap().examples.len(), 1);
}

#[test]
fn bundled_norquad_train_loads() {
    let path = splade_tests::tools::repo_root().join("data/norquad/train.jsonl.gz");
    let d = load(&spec(path.to_str().unwrap())).unwrap();
    assert_eq!(d.examples.len(), 3679);
    assert!(d.examples.iter().all(|e| !e.anchor.is_empty() && !e.positive.is_empty()));
}

#[test]
fn split_is_deterministic_disjoint_and_sized() {
    let examples: Vec<Example> = (0..100)
        .map(|i| Example { anchor: format!("q{i}"), positive: format!("p{i}"), negatives: vec![], label: None })
        .collect();
    let d = LoadedDataset { name: "d".into(), files: vec![], examples, bad_records: 0, locations: vec![], file_info: vec![], hub: None };
    let (train, eval) = d.split(0.1, 42);
    assert_eq!((train.len(), eval.len()), (90, 10));
    let (train2, eval2) = d.split(0.1, 42);
    assert_eq!((train.clone(), eval.clone()), (train2, eval2));
    let (_, eval3) = d.split(0.1, 43);
    assert_ne!(eval, eval3);
    let all: std::collections::HashSet<_> = train.iter().chain(&eval).map(|e| e.anchor.clone()).collect();
    assert_eq!(all.len(), 100);
    // Pinned: the split must not change across versions (ChaCha8 + own shuffle).
    let eval_ids: Vec<_> = eval.iter().map(|e| e.anchor.as_str()).collect();
    assert_eq!(eval_ids, PINNED_SPLIT);
    assert_eq!(d.split(0.0, 1).1.len(), 0);
}

const PINNED_SPLIT: [&str; 10] = ["q3", "q10", "q24", "q31", "q37", "q39", "q44", "q57", "q65", "q80"];

#[test]
fn parquet_reads_projected_columns_across_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.parquet");
    write_parquet(
        &p,
        &[
            Col::Str("question", vec![Some("q0"), Some("q1"), Some("q2")]),
            Col::Str("context", vec![Some("c0"), Some("c1"), Some("c2")]),
            Col::F64("score", vec![Some(1.0), Some(2.0), Some(3.0)]),
            Col::Str("other", vec![None, None, None]),
        ],
        2,
    );
    let mut s = spec(p.to_str().unwrap());
    s.columns = [("question", "anchor"), ("context", "positive"), ("score", "label")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let d = load(&s).unwrap();
    assert_eq!(d.examples.len(), 3);
    assert_eq!(d.examples[2], Example { anchor: "q2".into(), positive: "c2".into(), negatives: vec![], label: Some(vec![3.0]) });
}

#[test]
fn parquet_schema_and_record_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wrong.parquet");
    write_parquet(&p, &[Col::Str("question", vec![Some("q")]), Col::Str("context", vec![Some("c")])], 10);
    let f = p.display().to_string();
    let e = load(&spec(&f)).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{f}: no column for `anchor` (columns: question, context); map the file's columns with `datasets.d.columns` (e.g. `question: anchor`)")
    );

    let p = dir.path().join("numeric.parquet");
    write_parquet(&p, &[Col::F64("anchor", vec![Some(1.0)]), Col::Str("positive", vec![Some("c")])], 10);
    let e = load(&spec(p.to_str().unwrap())).unwrap_err().to_string();
    assert!(e.contains("column `anchor` (for `anchor`) is not a string column"), "{e}");

    let p = dir.path().join("nulls.parquet");
    write_parquet(
        &p,
        &[Col::Str("anchor", vec![Some("a"), Some("b"), Some("c")]), Col::Str("positive", vec![Some("p"), Some("p"), None])],
        2,
    );
    let f = p.display().to_string();
    let e = load(&spec(&f)).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{f}:row group 1, row 0, column `positive`: is null but `positive` must be a string;")), "{e}");
    let mut s = spec(&f);
    s.on_bad_record = OnBadRecord::Skip;
    let d = load(&s).unwrap();
    assert_eq!((d.examples.len(), d.bad_records), (2, 1));

    let p = write(dir.path(), "junk.parquet", "not parquet at all");
    let e = load(&spec(&p)).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{p}: not a readable Parquet file")), "{e}");
}

// ---- batch plan ----

fn examples(prefix: &str, n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| Example { anchor: format!("{prefix}q{i}"), positive: format!("{prefix}p{i}"), negatives: vec![], label: None })
        .collect()
}

fn plan_spec(bs: usize, sampling: SamplingStrategy, sampler: BatchSamplerKind, stop: PlanStop) -> PlanSpec {
    PlanSpec { batch_size: bs, sampling, batch_sampler: sampler, seed: 42, group_by_length: false, stop }
}

#[test]
fn plan_is_deterministic_and_seed_dependent() {
    let ds = [PlanDataset::from_examples("a", &examples("a", 50)), PlanDataset::from_examples("b", &examples("b", 30))];
    let s = plan_spec(4, SamplingStrategy::Proportional, BatchSamplerKind::NoDuplicates, PlanStop::Epochs(2.0));
    let p1 = BatchPlan::build(&ds, &s).unwrap();
    let p2 = BatchPlan::build(&ds, &s).unwrap();
    assert_eq!(p1, p2);
    let mut s2 = s.clone();
    s2.seed = 7;
    assert_ne!(p1, BatchPlan::build(&ds, &s2).unwrap());
    // Steps are 1-based and consecutive; epochs differ in order.
    assert!(p1.batches.iter().enumerate().all(|(i, b)| b.step == i as u64 + 1));
    assert_eq!(p1.step(1).unwrap().step, 1);
    let e0: Vec<_> = p1.batches.iter().filter(|b| b.epoch == 0).map(|b| &b.rows).collect();
    let e1: Vec<_> = p1.batches.iter().filter(|b| b.epoch == 1).map(|b| &b.rows).collect();
    assert_eq!(e0.len(), e1.len());
    assert_ne!(e0, e1);
    // Pinned first batch: the plan must not change across versions.
    assert_eq!(p1.batches[0].dataset, PINNED_PLAN.0);
    assert_eq!(p1.batches[0].rows, PINNED_PLAN.1);
}

const PINNED_PLAN: (&str, [usize; 4]) = ("b", [29, 6, 15, 1]);

#[test]
fn proportional_uses_every_full_batch_once_per_epoch() {
    let ds = [PlanDataset::sized("a", 50), PlanDataset::sized("b", 30)];
    let s = plan_spec(4, SamplingStrategy::Proportional, BatchSamplerKind::BatchSampler, PlanStop::Epochs(1.0));
    let p = BatchPlan::build(&ds, &s).unwrap();
    assert_eq!(p.len(), 12 + 7);
    for (name, n) in [("a", 50), ("b", 30)] {
        let mut rows: Vec<usize> = p.batches.iter().filter(|b| b.dataset == name).flat_map(|b| b.rows.clone()).collect();
        let before = rows.len();
        rows.sort();
        rows.dedup();
        assert_eq!(rows.len(), before, "no row twice in an epoch");
        assert_eq!(before, n / 4 * 4, "every full batch used (drop_last)");
    }
    // Datasets interleave (not all of `a` first).
    let first_b = p.batches.iter().position(|b| b.dataset == "b").unwrap();
    assert!(first_b < 12);
}

#[test]
fn round_robin_alternates_and_stops_at_the_smallest() {
    let ds = [PlanDataset::sized("a", 40), PlanDataset::sized("b", 9)];
    let s = plan_spec(4, SamplingStrategy::RoundRobin, BatchSamplerKind::BatchSampler, PlanStop::Epochs(1.0));
    let p = BatchPlan::build(&ds, &s).unwrap();
    // b has 2 full batches: a b a b a, then b runs out (as sentence-transformers' RoundRobinBatchSampler).
    let order: Vec<_> = p.batches.iter().map(|b| b.dataset.as_str()).collect();
    assert_eq!(order, ["a", "b", "a", "b", "a"]);
}

#[test]
fn no_duplicates_keeps_repeated_texts_apart() {
    // Ten anchors share one positive pairwise; many rows repeat texts.
    let mut ex = examples("x", 40);
    for (i, e) in ex.iter_mut().take(20).enumerate() {
        e.positive = format!("shared{}", i % 5);
    }
    ex[30].anchor = "xq0".into();
    let ds = [PlanDataset::from_examples("d", &ex)];
    let s = plan_spec(8, SamplingStrategy::RoundRobin, BatchSamplerKind::NoDuplicates, PlanStop::Epochs(3.0));
    let p = BatchPlan::build(&ds, &s).unwrap();
    assert!(!p.is_empty());
    for b in &p.batches {
        assert_eq!(b.rows.len(), 8);
        let mut texts = std::collections::HashSet::new();
        for &r in &b.rows {
            for t in ex[r].texts() {
                assert!(texts.insert(t.to_string()), "step {}: `{t}` twice", b.step);
            }
        }
    }
    // The same data with the plain sampler does put duplicates together somewhere.
    let s2 = plan_spec(8, SamplingStrategy::RoundRobin, BatchSamplerKind::BatchSampler, PlanStop::Epochs(3.0));
    let p2 = BatchPlan::build(&ds, &s2).unwrap();
    let dup = p2.batches.iter().any(|b| {
        let mut seen = std::collections::HashSet::new();
        b.rows.iter().flat_map(|&r| ex[r].texts()).any(|t| !seen.insert(t))
    });
    assert!(dup, "test data should produce duplicates without no_duplicates");
}

#[test]
fn max_steps_runs_across_epochs_and_fractional_epochs_truncate() {
    let ds = [PlanDataset::sized("a", 20)];
    let s = plan_spec(4, SamplingStrategy::RoundRobin, BatchSamplerKind::BatchSampler, PlanStop::MaxSteps(12));
    let p = BatchPlan::build(&ds, &s).unwrap();
    assert_eq!(p.len(), 12);
    assert_eq!(p.batches.iter().map(|b| b.epoch).max(), Some(2));
    let s = plan_spec(4, SamplingStrategy::RoundRobin, BatchSamplerKind::BatchSampler, PlanStop::Epochs(1.5));
    assert_eq!(BatchPlan::build(&ds, &s).unwrap().len(), 5 + 3);
    // A max_steps plan is a prefix of a longer one.
    let long = BatchPlan::build(&ds, &plan_spec(4, SamplingStrategy::RoundRobin, BatchSamplerKind::BatchSampler, PlanStop::MaxSteps(30))).unwrap();
    assert_eq!(&long.batches[..12], &p_prefix(&ds)[..]);
}

fn p_prefix(ds: &[PlanDataset]) -> Vec<PlannedBatch> {
    BatchPlan::build(ds, &plan_spec(4, SamplingStrategy::RoundRobin, BatchSamplerKind::BatchSampler, PlanStop::MaxSteps(12)))
        .unwrap()
        .batches
}

#[test]
fn plan_errors_are_clear() {
    let ds = [PlanDataset::sized("tiny", 3)];
    let s = plan_spec(4, SamplingStrategy::RoundRobin, BatchSamplerKind::BatchSampler, PlanStop::MaxSteps(5));
    let e = BatchPlan::build(&ds, &s).unwrap_err().to_string();
    assert_eq!(e, "cannot plan batches: epoch 0 has no full batch of 4 (`tiny` 3 rows); lower per_device_train_batch_size or add data");
    let s = plan_spec(4, SamplingStrategy::RoundRobin, BatchSamplerKind::NoDuplicates, PlanStop::MaxSteps(5));
    let e = BatchPlan::build(&[PlanDataset::sized("x", 10)], &s).unwrap_err().to_string();
    assert!(e.contains("no_duplicates needs PlanDataset::from_examples"), "{e}");
    assert!(BatchPlan::build(&[], &s).is_err());
}

/// `group_by_length` as transformers' `LengthGroupedSampler`: the epoch's longest row opens the first batch,
/// batches inside each 50-batch chunk go from long to short, every row is used once per epoch, the padding
/// a batch would need (its longest row times its size, minus its rows) drops sharply, and the order is still
/// the seed's; with `no_duplicates` too. Without a dataset's texts it is a clear error.
#[test]
fn group_by_length_batches_rows_of_similar_length() {
    // Lengths 1..=40 characters in a scrambled order, 2000 rows: 4 chunks of 50 batches of 10.
    let ex: Vec<Example> = (0..2000)
        .map(|i| Example { anchor: format!("q{i}"), positive: format!("{i}:{}", "x".repeat(1 + (i * 7919) % 40)), negatives: vec![], label: None })
        .collect();
    let len = |r: usize| ex[r].anchor.chars().count() + ex[r].positive.chars().count();
    let ds = [PlanDataset::from_examples("d", &ex)];
    let padding = |p: &BatchPlan| -> usize {
        p.batches.iter().map(|b| b.rows.iter().map(|&r| len(r)).max().unwrap() * b.rows.len() - b.rows.iter().map(|&r| len(r)).sum::<usize>()).sum()
    };
    for sampler in [BatchSamplerKind::BatchSampler, BatchSamplerKind::NoDuplicates] {
        let plain = plan_spec(10, SamplingStrategy::Proportional, sampler, PlanStop::Epochs(1.0));
        let grouped = PlanSpec { group_by_length: true, ..plain.clone() };
        let (p0, p1) = (BatchPlan::build(&ds, &plain).unwrap(), BatchPlan::build(&ds, &grouped).unwrap());
        assert_eq!(p1.len(), 200, "{sampler:?}");
        let mut used: Vec<usize> = p1.batches.iter().flat_map(|b| b.rows.clone()).collect();
        used.sort_unstable();
        assert_eq!(used, (0..2000).collect::<Vec<_>>(), "{sampler:?}: every row once");
        let longest = (0..2000).map(len).max().unwrap();
        assert_eq!(len(p1.batches[0].rows[0]), longest, "{sampler:?}: the longest row comes first");
        for chunk in p1.batches.chunks(50) {
            let maxima: Vec<usize> = chunk.iter().map(|b| b.rows.iter().map(|&r| len(r)).max().unwrap()).collect();
            assert!(maxima.windows(2).skip(1).all(|w| w[0] >= w[1]), "{sampler:?}: batches not long to short: {maxima:?}");
        }
        let (pad0, pad1) = (padding(&p0), padding(&p1));
        assert!(pad1 * 5 < pad0, "{sampler:?}: padding {pad1} grouped vs {pad0} plain");
        assert_eq!(BatchPlan::build(&ds, &grouped).unwrap(), p1, "{sampler:?}: same seed, same plan");
        let reseeded = PlanSpec { seed: 7, ..grouped.clone() };
        assert_ne!(BatchPlan::build(&ds, &reseeded).unwrap(), p1, "{sampler:?}: the seed still decides the order");
    }
    let spec = PlanSpec { group_by_length: true, ..plan_spec(10, SamplingStrategy::Proportional, BatchSamplerKind::BatchSampler, PlanStop::MaxSteps(1)) };
    let e = BatchPlan::build(&[PlanDataset::sized("s", 100)], &spec).unwrap_err().to_string();
    assert!(e.contains("`s`") && e.contains("group_by_length"), "{e}");
}

#[test]
fn jsonl_dump_round_trips_and_rank_slices_cover_the_batch() {
    let ds = [PlanDataset::sized("a", 64)];
    let s = plan_spec(10, SamplingStrategy::Proportional, BatchSamplerKind::BatchSampler, PlanStop::MaxSteps(9));
    let p = BatchPlan::build(&ds, &s).unwrap();
    let text = p.to_jsonl();
    assert_eq!(text.lines().count(), 9);
    assert!(text.starts_with("{\"step\":1,\"epoch\":0,\"dataset\":\"a\",\"rows\":["), "{text}");
    assert_eq!(BatchPlan::from_jsonl(&text).unwrap(), p);
    for world in 1..=4 {
        for b in &p.batches {
            let joined: Vec<usize> = (0..world).flat_map(|r| slice_for_rank(b, r, world).to_vec()).collect();
            assert_eq!(joined, b.rows);
            let sizes: Vec<usize> = (0..world).map(|r| slice_for_rank(b, r, world).len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }
}

#[tokio::test]
async fn reads_jsonl_gz_and_parquet_from_s3_with_globs() {
    use object_store::PutPayload;
    let moto = splade_tests::MotoServer::start();
    moto.create_bucket("data");
    let opts = crate::store::StoreOptions { overrides: moto.store_overrides() };
    let loc = crate::store::Location::parse_with("s3://data", &opts).unwrap();
    let put = |key: &str, bytes: Vec<u8>| {
        let store = loc.store().clone();
        let path = loc.child(key);
        async move { store.put(&path, PutPayload::from(bytes)).await.unwrap() }
    };
    put("train/part-0.jsonl", b"{\"anchor\": \"a0\", \"positive\": \"p0\"}\n".to_vec()).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"{\"anchor\": \"a1\", \"positive\": \"p1\"}\n").unwrap();
    put("train/part-1.jsonl.gz", gz.finish().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("p.parquet");
    write_parquet(&pq, &[Col::Str("anchor", vec![Some("a2")]), Col::Str("positive", vec![Some("p2")])], 10);
    put("train/part-2.parquet", std::fs::read(&pq).unwrap()).await;
    put("train/notes.txt", b"ignored".to_vec()).await;
    put("other/part-9.jsonl", b"{\"anchor\": \"x\", \"positive\": \"y\"}\n".to_vec()).await;

    let s = spec("s3://data/train/part-*");
    let d = load_dataset("d", &s, &opts).await.unwrap();
    let anchors: Vec<_> = d.examples.iter().map(|e| e.anchor.as_str()).collect();
    assert_eq!(anchors, ["a0", "a1", "a2"]);
    assert_eq!(d.files[0], "s3://data/train/part-0.jsonl");
    // A prefix means its data files.
    let d = load_dataset("d", &spec("s3://data/train"), &opts).await.unwrap();
    assert_eq!(d.examples.len(), 3);
    // A single object.
    let d = load_dataset("d", &spec("s3://data/other/part-9.jsonl"), &opts).await.unwrap();
    assert_eq!(d.examples[0].anchor, "x");
    // Missing in the bucket.
    let e = load_dataset("d", &spec("s3://data/nope/*.jsonl"), &opts).await.unwrap_err().to_string();
    assert_eq!(e, "dataset `d`: source `s3://data/nope/*.jsonl` matches no file; check `datasets.d.source` (a path, glob or URL)");
}

#[test]
fn config_to_plan_end_to_end_on_bundled_norquad() {
    let root = splade_tests::tools::repo_root();
    let root = root.display();
    let text = format!(
        "model:\n  base_model: x\ntraining:\n  max_steps: 25\n  per_device_train_batch_size: 16\n  batch_sampler: no_duplicates\ndatasets:\n  norquad:\n    source: {root}/data/norquad/train.jsonl.gz\n    split_ratio: 0.05\n"
    );
    let config = crate::config::Config::from_str(&text, "inline").unwrap();
    config.validate_for_training().unwrap();
    let data = crate::store::block_on(load_training_data(config.datasets.enabled(), config.training.seed, &StoreOptions::default())).unwrap();
    assert_eq!(data[0].train.len() + data[0].eval.len(), 3679);
    assert_eq!(data[0].eval.len(), 184);
    assert_eq!(data[0].train_ids.len(), data[0].train.len());
    assert!(data[0].train_ids.windows(2).all(|w| w[0] < w[1]));
    let plan = BatchPlan::build(&plan_inputs(&data), &config.plan_spec(16)).unwrap();
    assert_eq!(plan.len(), 25);
    for b in &plan.batches {
        let mut seen = std::collections::HashSet::new();
        for &r in &b.rows {
            for t in data[0].train[r].texts() {
                assert!(seen.insert(t), "duplicate text in step {}", b.step);
            }
        }
    }
}

/// Issue #17's property test: random JSONL lines (random text, and JSON objects with random values under
/// the role keys) load to examples or a `DataError`, never a panic, with either `on_bad_record` setting.
mod random_jsonl {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,8}".prop_map(serde_json::Value::from),
            proptest::collection::vec(any::<f32>(), 0..4).prop_map(|v| serde_json::json!(v)),
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        let keys = prop_oneof![Just("anchor"), Just("positive"), Just("negative"), Just("negative_1"), Just("label"), Just("x")];
        prop_oneof![
            ".{0,40}",
            proptest::collection::vec((keys, value()), 0..6).prop_map(|kv| {
                serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()).to_string()
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_lines_never_panic(lines in proptest::collection::vec(line(), 1..8), skip in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let path = write(dir.path(), "r.jsonl", &(lines.join("\n") + "\n"));
            let mut s = spec(&path);
            if skip {
                s.on_bad_record = crate::data::OnBadRecord::Skip;
            }
            let _ = load(&s);
        }
    }
}
