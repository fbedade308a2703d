use super::*;

#[test]
fn parse_dataset_source_takes_hub_ids_and_hf_urls_and_leaves_paths_alone() {
    let some = |r: &str, rev: Option<&str>| Some((r.to_string(), rev.map(str::to_string)));
    assert_eq!(parse_dataset_source("Fremtind/all-nli-norwegian"), some("Fremtind/all-nli-norwegian", None));
    assert_eq!(parse_dataset_source("ltg/norquad@v1.0"), some("ltg/norquad", Some("v1.0")));
    assert_eq!(parse_dataset_source("hf://datasets/ltg/norquad"), some("ltg/norquad", None));
    assert_eq!(parse_dataset_source("hf://datasets/ltg/norquad@refs/convert/parquet"), some("ltg/norquad", Some("refs/convert/parquet")));
    assert_eq!(parse_dataset_source("hf://datasets/ltg/norquad@refs%2Fpr%2F3/x"), some("ltg/norquad", Some("refs/pr/3")));
    assert_eq!(
        parse_dataset_source_path("hf://datasets/ltg/norquad@main/data/train-*.parquet"),
        Some(("ltg/norquad".into(), Some("main".into()), Some("data/train-*.parquet".into())))
    );
    assert_eq!(parse_dataset_source_path("hf://datasets/a.b/c_d-e"), Some(("a.b/c_d-e".into(), None, None)));
    // Local paths, globs, URLs and invalid ids are not Hub sources.
    for s in [
        "data/train.jsonl",
        "data/train.parquet",
        "pairs/x.jsonl.gz",
        "./owner/name",
        "/abs/owner",
        "data/*.jsonl",
        "a/b/c",
        "s3://bucket/key",
        "hf://models/owner/name",
        "owner--x/name",
        "owner/name@",
        "-owner/name",
        "plainname",
    ] {
        assert_eq!(parse_dataset_source(s), None, "{s}");
    }
}
