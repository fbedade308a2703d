//! MTEB retrieval tasks by name: where their data lives on the Hugging Face Hub, which split MTEB evaluates and
//! which languages each subset holds, for the tasks the seed project's `scripts/evaluate_sparse_mteb.py` uses.
//!
//! A small table in our code rather than the `mteb` package at run time: the trainer has no Python. The values
//! are copied from `mteb==2.26.24` (`mteb.get_task(name).metadata`: `dataset["path"]`, `dataset["revision"]`,
//! `eval_splits`, `eval_langs`); `scripts/reference/mteb_task_table.py` prints them and the test
//! `mteb_table_equals_the_mteb_package` compares this table with it. Multilingual tasks keep only their
//! Norwegian subsets, as the seed's script filters them (subset keys among `nob nno nor no nb nn`, applied when a
//! task has more than five subsets).

/// One MTEB retrieval task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtebTask {
    /// MTEB's task name (`NorQuadRetrieval`).
    pub name: &'static str,
    /// Hub dataset id.
    pub dataset: &'static str,
    /// The dataset commit MTEB pins.
    pub revision: &'static str,
    /// The split MTEB evaluates.
    pub eval_split: &'static str,
    /// (hf_subset, languages as ISO 639-3 + script) evaluated, after the seed's Norwegian filter.
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

/// The tasks of the seed's evaluate script (`SCANDINAVIAN_TASKS`).
pub const MTEB_TASKS: &[MtebTask] = &[
    MtebTask {
        name: "NorQuadRetrieval",
        dataset: "mteb/norquad_retrieval",
        revision: "9dcfcdb2aa578dd178330d49bf564248935f7fbe",
        eval_split: "test",
        subsets: &[("default", &["nob-Latn"])],
    },
    MtebTask {
        name: "SNLRetrieval",
        dataset: "adrlau/navjordj-SNL_summarization_copy",
        revision: "22c474c88fb4678052f9099bb917ad8f9e155f9f",
        eval_split: "test",
        subsets: &[("default", &["nob-Latn"])],
    },
    MtebTask {
        name: "WebFAQRetrieval",
        dataset: "mteb/WebFAQRetrieval",
        revision: "f64f483ad0f31d2e78209d524c14a4a867965959",
        eval_split: "test",
        subsets: &[("nor", &["nor-Latn", "nob-Latn", "nno-Latn"])],
    },
    MtebTask {
        name: "WikipediaRetrievalMultilingual",
        dataset: "mteb/WikipediaRetrievalMultilingual",
        revision: "5f6c91d21f2f5b9afb663858d19848fbd223c775",
        eval_split: "test",
        subsets: &[("no", &["nor-Latn"])],
    },
    MtebTask {
        name: "DanFeverRetrieval",
        dataset: "strombergnlp/danfever",
        revision: "3b17b754ed5bf356582b93ec11d1c72469f7bb9c",
        eval_split: "train",
        subsets: &[("default", &["dan-Latn"])],
    },
    MtebTask {
        name: "TV2Nordretrieval",
        dataset: "alexandrainst/nordjylland-news-summarization",
        revision: "80cdb115ec2ef46d4e926b252f2b59af62d6c070",
        eval_split: "test",
        subsets: &[("default", &["dan-Latn"])],
    },
    MtebTask {
        name: "TwitterHjerneRetrieval",
        dataset: "mteb/TwitterHjerneRetrieval",
        revision: "97ad55673cf9746f8e4b3aaa92b1bb92d82e52db",
        eval_split: "train",
        subsets: &[("default", &["dan-Latn"])],
    },
    MtebTask {
        name: "SweFaqRetrieval",
        dataset: "mteb/SweFaqRetrieval",
        revision: "208cb812631068a4bd8b93c8b9291370b47f282c",
        eval_split: "test",
        subsets: &[("default", &["swe-Latn"])],
    },
    MtebTask {
        name: "SwednRetrieval",
        dataset: "mteb/SwednRetrieval",
        revision: "3920fa0e9ae78f6af3d8a20b33b39e1f9acdfdf9",
        eval_split: "test",
        subsets: &[("default", &["swe-Latn"])],
    },
    MtebTask {
        name: "MKQARetrieval",
        dataset: "mteb/MKQARetrieval",
        revision: "3e069e7a30079d214a859741f5a0de75cf878867",
        eval_split: "train",
        subsets: &[("no", &["nor-Latn", "nno-Latn", "nob-Latn"])],
    },
];

/// The task named `name` (MTEB's spelling, compared case-insensitively).
pub fn mteb_task(name: &str) -> Option<&'static MtebTask> {
    MTEB_TASKS.iter().find(|t| t.name.eq_ignore_ascii_case(name))
}

/// [`mteb_task`], or an error naming the closest known names.
pub fn resolve_mteb_task(name: &str) -> Result<&'static MtebTask, String> {
    mteb_task(name).ok_or_else(|| {
        let lower = name.to_ascii_lowercase();
        let mut scored: Vec<(usize, &str)> =
            MTEB_TASKS.iter().map(|t| (strsim::levenshtein(&lower, &t.name.to_ascii_lowercase()), t.name)).collect();
        scored.sort();
        let close: Vec<&str> = scored.iter().take(3).map(|(_, n)| *n).collect();
        format!(
            "`{name}` is not an MTEB retrieval task this build knows; closest: {}; known: {}",
            close.join(", "),
            MTEB_TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
        )
    })
}

/// The languages a result of task `name` carries: `explicit` when given, else the MTEB task's, else `und`
/// (undetermined; MTEB accepts it) — never a guess.
pub fn task_languages(name: &str, explicit: &[String]) -> Vec<String> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    match mteb_task(name) {
        Some(t) => t.languages(),
        None => vec!["und".to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_case_insensitively_and_unknown_names_list_close_ones() {
        assert_eq!(mteb_task("norquadretrieval").unwrap().dataset, "mteb/norquad_retrieval");
        let e = resolve_mteb_task("NorQuadRetrival").unwrap_err();
        assert!(e.starts_with("`NorQuadRetrival` is not an MTEB retrieval task") && e.contains("closest: NorQuadRetrieval"), "{e}");
        assert_eq!(task_languages("MKQARetrieval", &[]), vec!["nor-Latn", "nno-Latn", "nob-Latn"]);
        assert_eq!(task_languages("norquad", &[]), vec!["und"]);
        assert_eq!(task_languages("norquad", &["nob-Latn".into()]), vec!["nob-Latn"]);
    }
}
