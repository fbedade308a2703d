//! CSV and TSV records (`.csv`, `.tsv`): a header row naming the columns, then one record per row, read as
//! `datasets.load_dataset("csv", data_files=...)` reads them (its `csv` builder is pandas' `read_csv`; `.tsv`
//! files get `sep="\t"`, as `datasets` gives them).
//!
//! Guarantees, matching the rows `datasets` yields:
//! - Quoting as RFC 4180 (`"a, ""b"""`, fields spanning lines), blank lines skipped, a UTF-8 byte-order mark
//!   ignored, no whitespace trimmed.
//! - An empty field, and pandas' default missing-value markers (`NA`, `N/A`, `NaN`, `null`, `None`, ...), are
//!   missing values (`None` in `datasets`): a text role reading one is a bad record, as a JSON `null` is.
//! - A row with fewer fields than the header has missing values in the rest; one with more is a bad record.
//! - A `label` column holds a number or a JSON list of numbers.
//!
//! One difference, by design: pandas infers a type per column, so a column whose every value is a number comes
//! out of `datasets` as numbers; a text role reads the field's text here either way.
//!
//! Each record's location is its byte range in the file, so a ranged read can parse it again with the header
//! ([`parse_at`]). Why the `csv` crate: quoting and multi-line fields are what a hand-written splitter gets wrong.

use serde_json::{Map, Value};

use super::jsonl::{example_of, snippet};
use super::{bad_record_fix, Collector, ColumnMap, DataError, Example, Role};

/// pandas' default `na_values` (`pandas._libs.parsers.STR_NA_VALUES`), which `read_csv` reads as missing.
const NA_VALUES: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
];

fn reader(bytes: &[u8], delimiter: u8, headers: bool) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new().delimiter(delimiter).has_headers(headers).flexible(true).from_reader(bytes)
}

fn read_err(file: &str, e: csv::Error) -> DataError {
    let at = e.position().map(|p| format!("line {}: ", p.line())).unwrap_or_default();
    DataError::Read { file: file.into(), message: format!("{at}not readable as CSV ({e}); fix the file or re-export it as UTF-8 CSV") }
}

/// The header of a CSV file's bytes (without a byte-order mark); the offset where records start is not needed
/// since each record carries its own.
pub(crate) fn header(file: &str, bytes: &[u8], delimiter: u8) -> Result<Vec<String>, DataError> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let mut r = reader(bytes, delimiter, true);
    Ok(r.headers().map_err(|e| read_err(file, e))?.iter().map(String::from).collect())
}

/// Reads every record of `bytes` into `sink`, recording each record's byte range as its location.
pub(crate) fn read(file: &str, bytes: &[u8], delimiter: u8, columns: &ColumnMap, sink: &mut Collector) -> Result<(), DataError> {
    let bom = if bytes.starts_with("\u{feff}".as_bytes()) { 3 } else { 0 };
    let mut r = reader(&bytes[bom..], delimiter, true);
    let header: Vec<String> = r.headers().map_err(|e| read_err(file, e))?.iter().map(String::from).collect();
    let mut record = csv::StringRecord::new();
    loop {
        if sink.full() {
            break;
        }
        let more = match r.read_record(&mut record) {
            Ok(more) => more,
            // Not UTF-8: a bad record (it may be skipped), not a broken file.
            Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                let bad = DataError::BadRecord {
                    file: file.into(),
                    location: format!("line {line}"),
                    problem: format!("not UTF-8 ({e})"),
                    fix: bad_record_fix(sink.dataset),
                };
                sink.take(Err(bad), 0, 0)?;
                continue;
            }
            Err(e) => return Err(read_err(file, e)),
        };
        if !more {
            break;
        }
        let pos = record.position().expect("a read record has a position");
        let start = pos.byte() + bom as u64;
        let end = r.position().byte() + bom as u64;
        let location = format!("line {}", pos.line());
        let ex = example(file, &location, &header, &record, columns, sink.dataset);
        sink.take(ex, start, end - start)?;
    }
    Ok(())
}

/// Parses the record at `offset` (its bytes fetched again by its location) with the file's `header`.
pub(crate) fn parse_at(
    file: &str,
    header: &[String],
    offset: u64,
    bytes: &[u8],
    delimiter: u8,
    columns: &ColumnMap,
    dataset: &str,
) -> Result<Example, DataError> {
    let mut r = reader(bytes, delimiter, false);
    let mut record = csv::StringRecord::new();
    let changed = || DataError::Read {
        file: file.into(),
        message: format!("byte {offset}: no CSV record there; the file changed since the data plan was built, restart the job"),
    };
    if !r.read_record(&mut record).map_err(|_| changed())? {
        return Err(changed());
    }
    example(file, &format!("byte {offset}"), header, &record, columns, dataset)
}

/// One record as the JSON object `datasets` would yield (missing values `null`, a label column parsed), mapped
/// onto the roles.
fn example(
    file: &str,
    location: &str,
    header: &[String],
    record: &csv::StringRecord,
    columns: &ColumnMap,
    dataset: &str,
) -> Result<Example, DataError> {
    if record.len() > header.len() {
        return Err(DataError::BadRecord {
            file: file.into(),
            location: location.into(),
            problem: format!("{} fields but the header names {} columns", record.len(), header.len()),
            fix: bad_record_fix(dataset),
        });
    }
    let labels: Vec<String> =
        columns.resolve(header.iter().map(String::as_str)).into_iter().filter(|(r, _)| *r == Role::Label).map(|(_, c)| c).collect();
    let mut obj = Map::new();
    for (i, name) in header.iter().enumerate() {
        let value = match record.get(i) {
            None => Value::Null,
            Some(v) if NA_VALUES.contains(&v) => Value::Null,
            Some(v) if labels.contains(name) => label_value(v),
            Some(v) => Value::String(v.to_string()),
        };
        obj.insert(name.clone(), value);
    }
    example_of(file, &location, &obj, columns, dataset)
}

/// A label field: a number, or a JSON list of numbers; anything else stays text (and is refused as a label).
fn label_value(v: &str) -> Value {
    if let Ok(x) = v.trim().parse::<f64>() {
        if let Some(n) = serde_json::Number::from_f64(x) {
            return Value::Number(n);
        }
    }
    serde_json::from_str::<Value>(v).ok().filter(Value::is_array).unwrap_or_else(|| Value::String(snippet(v)))
}
