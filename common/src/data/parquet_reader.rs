//! Parquet records through the `parquet` crate's row API (no Arrow), reading only the mapped columns.

use bytes::Bytes;
use parquet::basic::Type as PhysicalType;
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;

use super::jsonl::snippet;
use super::{bad_record_fix, Collector, ColumnMap, DataError, Example, Role};

pub(crate) fn read(file: &str, bytes: Bytes, columns: &ColumnMap, sink: &mut Collector) -> Result<(), DataError> {
    let reader = SerializedFileReader::new(bytes).map_err(|e| read_err(file, e))?;
    read_groups(file, &reader, columns, None, sink)
}

pub(crate) fn read_err(file: &str, e: parquet::errors::ParquetError) -> DataError {
    DataError::Read {
        file: file.into(),
        message: format!("not a readable Parquet file ({e}); re-export it (snappy, gzip, lz4 or zstd compression)"),
    }
}

/// The (role, column) pairs and the projection (only the mapped columns) of a file with `schema`.
pub(crate) fn projection(
    file: &str,
    schema: &Type,
    columns: &ColumnMap,
    dataset: &str,
) -> Result<(Vec<(Role, String)>, Type), DataError> {
    let fields = schema.get_fields();
    let available: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    let pairs = columns.resolve(available.iter().copied());
    let schema_err = |problem: String, fix: String| DataError::Schema { file: file.into(), problem, fix };
    let cols_fix = |role: &str| {
        format!(
            "map the file's columns with `datasets.{}.columns` (e.g. `{}: {role}`)",
            dataset,
            available.first().copied().unwrap_or("column")
        )
    };
    for need in [Role::Anchor, Role::Positive] {
        if !pairs.iter().any(|(r, _)| *r == need) {
            return Err(schema_err(
                format!("no column for `{need}` (columns: {})", available.join(", ")),
                cols_fix(&need.to_string()),
            ));
        }
    }
    let mut projected = Vec::new();
    for (role, column) in &pairs {
        let Some(field) = fields.iter().find(|f| f.name() == column) else {
            return Err(schema_err(
                format!("column `{column}` (for `{role}`) not found (columns: {})", available.join(", ")),
                cols_fix(&role.to_string()),
            ));
        };
        if *role != Role::Label && !(field.is_primitive() && field.get_physical_type() == PhysicalType::BYTE_ARRAY) {
            return Err(schema_err(
                format!("column `{column}` (for `{role}`) is not a string column"),
                "store texts as Parquet strings (UTF8 BYTE_ARRAY)".into(),
            ));
        }
        projected.push(field.clone());
    }
    let projection =
        Type::group_type_builder(schema.name()).with_fields(projected).build().map_err(|e| read_err(file, e))?;
    Ok((pairs, projection))
}

/// Reads the row groups in `groups` (all when `None`) of an open file into `sink`; each record's location is
/// (row group, row in group).
pub(crate) fn read_groups<R: ChunkReader + 'static>(
    file: &str,
    reader: &SerializedFileReader<R>,
    columns: &ColumnMap,
    groups: Option<&std::collections::BTreeSet<usize>>,
    sink: &mut Collector,
) -> Result<(), DataError> {
    let read_err = |e: parquet::errors::ParquetError| read_err(file, e);
    let schema = reader.metadata().file_metadata().schema_descr().root_schema().clone();
    let (pairs, projection) = projection(file, &schema, columns, sink.dataset)?;

    for g in 0..reader.num_row_groups() {
        if sink.full() {
            break;
        }
        if groups.is_some_and(|set| !set.contains(&g)) {
            continue;
        }
        let group = reader.get_row_group(g).map_err(read_err)?;
        let rows = group.get_row_iter(Some(projection.clone())).map_err(read_err)?;
        for (r, row) in rows.enumerate() {
            if sink.full() {
                break;
            }
            let row = row.map_err(read_err)?;
            let mut anchor = None;
            let mut positive = None;
            let mut negatives = Vec::new();
            let mut label = None;
            let mut problem = None;
            for (name, value) in row.get_column_iter() {
                let role = pairs.iter().find(|(_, c)| c == name).map(|(r, _)| *r).expect("projected column");
                let bad = |what: String| DataError::BadRecord {
                    file: file.into(),
                    location: format!("row group {g}, row {r}, column `{name}`"),
                    problem: what,
                    fix: bad_record_fix(sink.dataset),
                };
                match (role, value) {
                    (Role::Label, v) => match label_of(v) {
                        Some(l) => label = Some(l),
                        None => {
                            problem = Some(bad(format!("`{}` is not a number or a list of numbers", snippet(&v.to_string()))));
                            break;
                        }
                    },
                    (_, Field::Str(s)) => match role {
                        Role::Anchor => anchor = Some(s.clone()),
                        Role::Positive => positive = Some(s.clone()),
                        _ => negatives.push(s.clone()),
                    },
                    (_, Field::Null) => {
                        problem = Some(bad(format!("is null but `{role}` must be a string")));
                        break;
                    }
                    (_, v) => {
                        problem = Some(bad(format!("`{}` is not a string", snippet(&v.to_string()))));
                        break;
                    }
                }
            }
            let result = match (problem, anchor, positive) {
                (Some(p), _, _) => Err(p),
                (None, Some(anchor), Some(positive)) => Ok(Example { anchor, positive, negatives, label }),
                _ => unreachable!("anchor and positive columns are projected"),
            };
            sink.take(result, g as u64, r as u64)?;
        }
    }
    Ok(())
}

fn label_of(v: &Field) -> Option<Vec<f32>> {
    fn num(v: &Field) -> Option<f32> {
        match v {
            Field::Float(x) => Some(*x),
            Field::Double(x) => Some(*x as f32),
            Field::Int(x) => Some(*x as f32),
            Field::Long(x) => Some(*x as f32),
            Field::Short(x) => Some(*x as f32),
            Field::Byte(x) => Some(*x as f32),
            _ => None,
        }
    }
    match v {
        Field::ListInternal(list) if !list.elements().is_empty() => list.elements().iter().map(num).collect(),
        v => num(v).map(|x| vec![x]),
    }
}
