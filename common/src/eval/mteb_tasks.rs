//! The languages an evaluation result carries, from the MTEB task table (`crate::config::mteb`).

use crate::config::mteb::resolve_task;

/// The languages a result of task `name` carries: `explicit` when given, else the MTEB task's (by MTEB name or the
/// seed's short name), else `und` (ISO 639 "undetermined"; MTEB's `TaskResult` accepts it): never a guess.
pub fn task_languages(name: &str, explicit: &[String]) -> Vec<String> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    match resolve_task(name) {
        Ok(r) => r.task.languages(),
        Err(_) => vec!["und".to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_come_from_the_flag_the_mteb_table_or_und() {
        assert_eq!(task_languages("MKQARetrieval", &[]), vec!["nor-Latn", "nno-Latn", "nob-Latn"]);
        assert_eq!(task_languages("NorQuAD", &[]), vec!["nob-Latn"]);
        assert_eq!(task_languages("SweFaqRetrieval", &[]), vec!["swe-Latn"]);
        assert_eq!(task_languages("tiny", &[]), vec!["und"]);
        assert_eq!(task_languages("tiny", &["nob-Latn".into()]), vec!["nob-Latn"]);
    }
}
