//! MTEB retrieval task names as configs write them (`evaluation.mteb_tasks`, `splade eval --task NAME`).
//!
//! The seed project's configs name tasks by short names (`mteb_tasks: ["NorQuAD", "SNL"]`) while its evaluation
//! script (`scripts/evaluate_sparse_mteb.py`, `SCANDINAVIAN_TASKS`) passes MTEB's own names to `mteb.get_task`.
//! [`resolve_task`] maps either spelling to MTEB's name: an MTEB name matches itself (any letter case), a short
//! name matches the task whose name is the short name followed by `Retrieval` (`NorQuAD` → `NorQuadRetrieval`,
//! `SNL` → `SNLRetrieval`, `TV2Nord` → `TV2Nordretrieval`). Anything else is an error listing the close names.

/// An MTEB retrieval task the seed's evaluation script knows, with the language group it lists it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtebTask {
    /// MTEB's task name (`mteb.get_task(name)`).
    pub name: &'static str,
    /// The seed's group: `norwegian`, `danish`, `swedish` or `multilingual`.
    pub group: &'static str,
}

/// The seed's `SCANDINAVIAN_TASKS`, in its order.
pub const MTEB_TASKS: &[MtebTask] = &[
    MtebTask { name: "NorQuadRetrieval", group: "norwegian" },
    MtebTask { name: "SNLRetrieval", group: "norwegian" },
    MtebTask { name: "WebFAQRetrieval", group: "norwegian" },
    MtebTask { name: "WikipediaRetrievalMultilingual", group: "norwegian" },
    MtebTask { name: "DanFeverRetrieval", group: "danish" },
    MtebTask { name: "TV2Nordretrieval", group: "danish" },
    MtebTask { name: "TwitterHjerneRetrieval", group: "danish" },
    MtebTask { name: "SweFaqRetrieval", group: "swedish" },
    MtebTask { name: "SwednRetrieval", group: "swedish" },
    MtebTask { name: "MKQARetrieval", group: "multilingual" },
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
