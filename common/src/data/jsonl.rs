//! JSONL records (one JSON object per line; blank lines are allowed and ignored).

use std::io::{BufRead, BufReader, Read};


use serde_json::Value;

use super::{bad_record_fix, Collector, ColumnMap, DataError, Example, Role};

/// Shortens a value for an error message.
pub(crate) fn snippet(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Reads every line of `input` into `sink`, recording each record's byte offset and length in the
/// (decompressed) stream as its location, so a ranged read can fetch exactly that line again.
pub(crate) fn read<R: Read>(file: &str, input: R, columns: &ColumnMap, sink: &mut Collector) -> Result<(), DataError> {
    let mut reader = BufReader::new(input);
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut line_no = 0usize;
    loop {
        if sink.full() {
            break;
        }
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| DataError::Read {
            file: file.into(),
            message: format!("line {}: {e} (a truncated or corrupt file? re-create it)", line_no + 1),
        })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let start = offset;
        offset += n as u64;
        let content = trim_newline(&buf);
        let line = std::str::from_utf8(content).map_err(|e| DataError::Read {
            file: file.into(),
            message: format!("line {line_no}: not UTF-8 ({e}); re-encode the file as UTF-8"),
        })?;
        // A UTF-8 byte-order mark (some Windows tools write one) is not part of the first record.
        let text = if start == 0 { line.trim_start_matches('\u{feff}') } else { line };
        if text.trim().is_empty() {
            continue;
        }
        let r = parse_line(file, &line_no, text, columns, sink.dataset);
        sink.take(r, start, content.len() as u64)?;
    }
    Ok(())
}

/// A line without its `\n` or `\r\n` (what `BufRead::lines` strips).
pub(crate) fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses one line fetched again by its location (`offset` in the file or decompressed stream).
pub(crate) fn parse_at(file: &str, offset: u64, bytes: &[u8], columns: &ColumnMap, dataset: &str) -> Result<Example, DataError> {
    let at = format!("byte {offset}");
    let line = std::str::from_utf8(bytes).map_err(|e| DataError::Read {
        file: file.into(),
        message: format!("{at}: not UTF-8 ({e}); the file changed since the data plan was built, restart the job"),
    })?;
    let text = if offset == 0 { line.trim_start_matches('\u{feff}') } else { line };
    parse_line(file, &at, text, columns, dataset)
}

fn parse_line(file: &str, line_no: &dyn std::fmt::Display, line: &str, columns: &ColumnMap, dataset: &str) -> Result<Example, DataError> {
    let bad = |problem: String| DataError::BadRecord {
        file: file.into(),
        location: format!("{line_no}"),
        problem,
        fix: bad_record_fix(dataset),
    };
    let value: Value = serde_json::from_str(line)
        .map_err(|e| bad(format!("not valid JSON ({e}): `{}`", snippet(line))))?;
    let Value::Object(obj) = value else {
        return Err(bad(format!("expected a JSON object, found `{}`", snippet(line))));
    };
    example_of(file, line_no, &obj, columns, dataset)
}

/// The example of one record (a JSON object, or a CSV row as one): its columns mapped onto the roles.
/// Errors name `file`, `location`, the column and the fix.
pub(crate) fn example_of(
    file: &str,
    location: &dyn std::fmt::Display,
    obj: &serde_json::Map<String, Value>,
    columns: &ColumnMap,
    dataset: &str,
) -> Result<Example, DataError> {
    let bad = |problem: String| DataError::BadRecord {
        file: file.into(),
        location: format!("{location}"),
        problem,
        fix: bad_record_fix(dataset),
    };
    let pairs = columns.resolve(obj.keys().map(String::as_str));
    let found = || obj.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
    let mut anchor = None;
    let mut positive = None;
    let mut negatives = Vec::new();
    let mut label = None;
    for (role, column) in &pairs {
        let Some(v) = obj.get(column) else {
            return Err(bad(format!("missing column `{column}` (for `{role}`); the line has: {}", found())));
        };
        match role {
            Role::Label => label = Some(label_of(v).map_err(|got| bad(format!("column `{column}` is `{got}` but a label must be a number or a list of numbers")))?),
            _ => {
                let Value::String(s) = v else {
                    return Err(bad(format!("column `{column}` is `{}` but must be a string", snippet(&v.to_string()))));
                };
                match role {
                    Role::Anchor => anchor = Some(s.clone()),
                    Role::Positive => positive = Some(s.clone()),
                    _ => negatives.push(s.clone()),
                }
            }
        }
    }
    let (Some(anchor), Some(positive)) = (anchor, positive) else {
        let missing = if pairs.iter().any(|(r, _)| *r == Role::Anchor) { "positive" } else { "anchor" };
        return Err(bad(format!("missing column `{missing}`; the line has: {}", found())));
    };
    Ok(Example { anchor, positive, negatives, label })
}

/// A label as a vector: a number, or a list of numbers. On failure returns the value as text.
pub(crate) fn label_of(v: &Value) -> Result<Vec<f32>, String> {
    match v {
        Value::Number(n) => n.as_f64().map(|x| vec![x as f32]).ok_or_else(|| n.to_string()),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| snippet(&v.to_string())))
            .collect(),
        other => Err(snippet(&other.to_string())),
    }
}
