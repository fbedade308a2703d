//! MTEB retrieval task names as configs write them (`evaluation.mteb_tasks`, `splade eval --task NAME`).
//!
//! The seed project's configs name tasks by short names (`mteb_tasks: ["NorQuAD", "SNL"]`) while its evaluation
//! script (`scripts/evaluate_sparse_mteb.py`, `SCANDINAVIAN_TASKS`) passes MTEB's own names to `mteb.get_task`.
//! [`resolve_task`] maps either spelling to MTEB's name: an MTEB name matches itself (any letter case), a short
//! name matches the task whose name is the short name followed by `Retrieval` (`NorQuAD` → `NorQuadRetrieval`,
//! `SNL` → `SNLRetrieval`, `TV2Nord` → `TV2Nordretrieval`). Anything else is an error listing the close names.
//!
//! Each task also carries the metadata evaluation needs (Hub dataset id, revision, eval split, subsets and their
//! languages), copied from `mteb==2.26.24`: a table in our code because the trainer has no Python;
//! `scripts/reference/mteb_task_table.py` prints the same from the `mteb` package and the test
//! `mteb_table_equals_the_mteb_package` (worker, `eval_by_name.rs`) compares them.

/// An MTEB retrieval task the seed's evaluation script knows, with the language group it lists it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtebTask {
    /// MTEB's task name (`mteb.get_task(name)`).
    pub name: &'static str,
    /// The seed's group: `norwegian`, `danish`, `swedish` or `multilingual`.
    pub group: &'static str,
    /// Hub dataset id (`metadata.dataset["path"]`).
    pub dataset: &'static str,
    /// The dataset commit MTEB pins (`metadata.dataset["revision"]`).
    pub revision: &'static str,
    /// The split MTEB evaluates (`metadata.eval_splits[0]`).
    pub eval_split: &'static str,
    /// (hf_subset, languages as ISO 639-3 + script) evaluated: `metadata.eval_langs`, for a task with more than
    /// five subsets only its Norwegian ones (keys among `nob nno nor no nb nn`), as the seed's script filters.
    pub subsets: &'static [(&'static str, &'static [&'static str])],
}

impl MtebTask {
    /// Every language of the evaluated subsets, in order, without repeats.
    pub fn languages(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, langs) in self.subsets {
            for l in *langs {
                if !out.iter().any(|o| o == l) {
                    out.push(l.to_string());
                }
            }
        }
        out
    }
}

/// The seed's `SCANDINAVIAN_TASKS`, in its order.
pub const MTEB_TASKS: &[MtebTask] = &[
    MtebTask {
        name: "NorQuadRetrieval",
        group: "norwegian",
        dataset: "mteb/norquad_retrieval",
        revision: "9dcfcdb2aa578dd178330d49bf564248935f7fbe",
        eval_split: "test",
        subsets: &[("default", &["nob-Latn"])],
    },
    MtebTask {
        name: "SNLRetrieval",
        group: "norwegian",
        dataset: "adrlau/navjordj-SNL_summarization_copy",
        revision: "22c474c88fb4678052f9099bb917ad8f9e155f9f",
        eval_split: "test",
        subsets: &[("default", &["nob-Latn"])],
    },
    MtebTask {
        name: "WebFAQRetrieval",
        group: "norwegian",
        dataset: "mteb/WebFAQRetrieval",
        revision: "f64f483ad0f31d2e78209d524c14a4a867965959",
        eval_split: "test",
        subsets: &[("nor", &["nor-Latn", "nob-Latn", "nno-Latn"])],
    },
    MtebTask {
        name: "WikipediaRetrievalMultilingual",
        group: "norwegian",
        dataset: "mteb/WikipediaRetrievalMultilingual",
        revision: "5f6c91d21f2f5b9afb663858d19848fbd223c775",
        eval_split: "test",
        subsets: &[("no", &["nor-Latn"])],
    },
    MtebTask {
        name: "DanFeverRetrieval",
        group: "danish",
        dataset: "strombergnlp/danfever",
        revision: "3b17b754ed5bf356582b93ec11d1c72469f7bb9c",
        eval_split: "train",
        subsets: &[("default", &["dan-Latn"])],
    },
    MtebTask {
        name: "TV2Nordretrieval",
        group: "danish",
        dataset: "alexandrainst/nordjylland-news-summarization",
        revision: "80cdb115ec2ef46d4e926b252f2b59af62d6c070",
        eval_split: "test",
        subsets: &[("default", &["dan-Latn"])],
    },
    MtebTask {
        name: "TwitterHjerneRetrieval",
        group: "danish",
        dataset: "mteb/TwitterHjerneRetrieval",
        revision: "97ad55673cf9746f8e4b3aaa92b1bb92d82e52db",
        eval_split: "train",
        subsets: &[("default", &["dan-Latn"])],
    },
    MtebTask {
        name: "SweFaqRetrieval",
        group: "swedish",
        dataset: "mteb/SweFaqRetrieval",
        revision: "208cb812631068a4bd8b93c8b9291370b47f282c",
        eval_split: "test",
        subsets: &[("default", &["swe-Latn"])],
    },
    MtebTask {
        name: "SwednRetrieval",
        group: "swedish",
        dataset: "mteb/SwednRetrieval",
        revision: "3920fa0e9ae78f6af3d8a20b33b39e1f9acdfdf9",
        eval_split: "test",
        subsets: &[("default", &["swe-Latn"])],
    },
    MtebTask {
        name: "MKQARetrieval",
        group: "multilingual",
        dataset: "mteb/MKQARetrieval",
        revision: "3e069e7a30079d214a859741f5a0de75cf878867",
        eval_split: "train",
        subsets: &[("no", &["nor-Latn", "nno-Latn", "nob-Latn"])],
    },
];

/// How a configured name was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The task.
    pub task: MtebTask,
    /// True when the name was a short name (worth a notice: `NorQuAD` means `NorQuadRetrieval`).
    pub from_short_name: bool,
}

/// Resolves an MTEB name or a seed short name (see the module doc). The error names the value, the close
/// names (or all of them when none is close) and the fix.
pub fn resolve_task(name: &str) -> Result<Resolved, String> {
    let wanted = name.trim().to_lowercase();
    if let Some(task) = MTEB_TASKS.iter().find(|t| t.name.to_lowercase() == wanted) {
        return Ok(Resolved { task: *task, from_short_name: false });
    }
    let long = format!("{wanted}retrieval");
    if let Some(task) = MTEB_TASKS.iter().find(|t| t.name.to_lowercase() == long) {
        return Ok(Resolved { task: *task, from_short_name: true });
    }
    let mut scored: Vec<(f64, &str)> = MTEB_TASKS
        .iter()
        .map(|t| {
            let full = strsim::jaro_winkler(&wanted, &t.name.to_lowercase());
            let short = strsim::jaro_winkler(&wanted, &t.name.to_lowercase().replace("retrieval", ""));
            (full.max(short), t.name)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let close: Vec<&str> = scored.iter().filter(|(s, _)| *s >= 0.75).map(|(_, n)| *n).collect();
    let list = if close.is_empty() {
        format!("the known tasks are {}", MTEB_TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", "))
    } else {
        format!("did you mean {}?", close.join(" or "))
    };
    Err(format!(
        "`{name}` is no MTEB retrieval task this project knows; {list} (a short name such as `NorQuAD` stands for `NorQuadRetrieval`)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_short_names_map_to_mteb_names_and_unknown_names_list_close_ones() {
        let r = resolve_task("NorQuAD").unwrap();
        assert_eq!((r.task.name, r.from_short_name), ("NorQuadRetrieval", true));
        let r = resolve_task("SNL").unwrap();
        assert_eq!((r.task.name, r.from_short_name), ("SNLRetrieval", true));
        let r = resolve_task("TV2Nord").unwrap();
        assert_eq!(r.task.name, "TV2Nordretrieval");
        // MTEB names resolve to themselves, in any letter case.
        let r = resolve_task("norquadretrieval").unwrap();
        assert_eq!((r.task.name, r.from_short_name), ("NorQuadRetrieval", false));
        // A typo names the close task.
        let e = resolve_task("NorQuAd2").unwrap_err();
        assert!(e.starts_with("`NorQuAd2` is no MTEB retrieval task") && e.contains("did you mean NorQuadRetrieval"), "{e}");
        // Nothing close: every known name is listed.
        let e = resolve_task("zzz").unwrap_err();
        assert!(e.contains("the known tasks are NorQuadRetrieval, SNLRetrieval"), "{e}");
    }
}
