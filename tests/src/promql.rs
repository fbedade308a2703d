//! Which metric names a PromQL expression selects, and which sample names a text exposition
//! carries: the dashboard/alert-rule check compares the two against live `/metrics` scrapes (the
//! in-process registry in `common/tests/obs.rs`, the real coordinator and worker in the cross-crate
//! cluster test `tests/it/cluster.rs`).

use std::collections::BTreeSet;

/// Sample names in a text exposition (what a PromQL selector can match; histograms only as
/// `_bucket`, `_sum`, `_count`).
pub fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
        .collect()
}

/// Metric names in a PromQL expression, in order of appearance: identifiers outside label
/// matchers, strings and range selectors that are not functions, keywords or label names after
/// `by`/`on`/…. Covers the expressions a dashboard uses (selectors, functions, aggregations,
/// binary operators with matching clauses); not a full PromQL parser.
pub fn promql_metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "Inf",
        "NaN",
        "inf",
        "nan",
        // Aggregation operators may be followed by a `by`/`without` clause instead of `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let (mut i, mut depth_brace, mut depth_bracket) = (0, 0, 0);
    let mut after_grouping = false; // inside `by (...)` & co.
    let mut paren_grouping_depth: Option<usize> = None;
    let mut paren_depth = 0usize;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            '(' => {
                paren_depth += 1;
                if after_grouping {
                    paren_grouping_depth = Some(paren_depth);
                    after_grouping = false;
                }
            }
            ')' => {
                if paren_grouping_depth == Some(paren_depth) {
                    paren_grouping_depth = None;
                }
                paren_depth -= 1;
            }
            c if (c.is_ascii_alphabetic() || c == '_' || c == ':')
                && depth_brace == 0
                && depth_bracket == 0 =>
            {
                let start = i;
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric()
                        || chars[i + 1] == '_'
                        || chars[i + 1] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..=i].iter().collect();
                let next = chars[i + 1..].iter().find(|c| !c.is_whitespace()).copied();
                let prev_digit = start > 0 && chars[start - 1].is_ascii_digit();
                if matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    after_grouping = true;
                } else if paren_grouping_depth.is_none()
                    && next != Some('(')
                    && !KEYWORDS.contains(&word.as_str())
                    && !prev_digit
                {
                    names.push(word);
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_identifier_extraction() {
        assert_eq!(
            promql_metric_names(
                r#"histogram_quantile(0.95, sum by (le, pod) (rate(a_bucket{job=~"x"}[5m]))) / on (job) b > 15 * 60"#
            ),
            vec!["a_bucket", "b"]
        );
        assert_eq!(promql_metric_names("time() - c > 0 and on (job, instance) d"), vec!["c", "d"]);
    }

    #[test]
    fn exposition_sample_names() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\ny{a=\"b\"} 1\nh_bucket{le=\"+Inf\"} 2\n";
        let names: Vec<String> = exposed_names(text).into_iter().collect();
        assert_eq!(names, vec!["h_bucket", "x_total", "y"]);
    }
}
