//! Writers that put corpus vectors into search engines: Anserini JsonVectorCollection (integer impacts),
//! OpenSearch/Elasticsearch bulk NDJSON with a `rank_features` field, and Qdrant sparse-vector points.
//! Each takes parallel slices of document ids and [`SparseVec`]s plus the vocabulary tokens (id → token)
//! and writes one JSON object per line.

use std::io::Write;

use serde_json::{json, Map, Value};

use super::{EvalError, SparseVec};

fn check_inputs(ids: &[String], vecs: &[SparseVec], vocab: &[String]) -> Result<(), EvalError> {
    if ids.len() != vecs.len() {
        return Err(EvalError::Export(format!(
            "{} ids but {} vectors",
            ids.len(),
            vecs.len()
        )));
    }
    for (id, v) in ids.iter().zip(vecs) {
        if v.dim_lower_bound() > vocab.len() {
            return Err(EvalError::Export(format!(
                "document '{id}' uses dimension {} but the vocabulary has {} tokens",
                v.dim_lower_bound() - 1,
                vocab.len()
            )));
        }
    }
    Ok(())
}

fn io(e: std::io::Error) -> EvalError {
    EvalError::Export(format!("write failed: {e}"))
}

/// `round_half_up(value × factor)`: the nearest integer, halves rounded towards +∞ (computed in f64).
pub fn quantize(value: f32, factor: f64) -> i64 {
    (value as f64 * factor + 0.5).floor() as i64
}

/// Anserini JsonVectorCollection: `{"id", "contents", "vector": {token: impact}}` per line, impact =
/// [`quantize`]`(value, factor)` (Anserini's examples use factor 100), tokens whose impact is 0 dropped.
/// `contents[i]` is document i's text, or `""` when `contents` is `None`. Returns the number of documents.
pub fn write_anserini(
    w: &mut dyn Write,
    ids: &[String],
    vecs: &[SparseVec],
    vocab: &[String],
    factor: f64,
    contents: Option<&[String]>,
) -> Result<usize, EvalError> {
    check_inputs(ids, vecs, vocab)?;
    if !(factor.is_finite() && factor > 0.0) {
        return Err(EvalError::Export(format!(
            "quantisation factor {factor} must be a positive number"
        )));
    }
    if contents.is_some_and(|c| c.len() != ids.len()) {
        return Err(EvalError::Export(
            "contents must have one entry per document".into(),
        ));
    }
    for (i, (id, v)) in ids.iter().zip(vecs).enumerate() {
        let mut vector = Map::new();
        for (t, x) in v.iter() {
            let q = quantize(x, factor);
            if q != 0 {
                vector.insert(vocab[t as usize].clone(), Value::from(q));
            }
        }
        let text = contents.map_or("", |c| c[i].as_str());
        serde_json::to_writer(
            &mut *w,
            &json!({"id": id, "contents": text, "vector": vector}),
        )
        .map_err(|e| EvalError::Export(e.to_string()))?;
        w.write_all(b"\n").map_err(io)?;
    }
    Ok(ids.len())
}

/// OpenSearch/Elasticsearch `_bulk` NDJSON: per document an action line `{"index": {"_index", "_id"}}`
/// and a source line `{field: {token: weight}}`. `rank_features` only accepts positive weights, so a
/// non-positive value is an error. Pair with [`opensearch_mapping`].
pub fn write_opensearch_bulk(
    w: &mut dyn Write,
    index_name: &str,
    field: &str,
    ids: &[String],
    vecs: &[SparseVec],
    vocab: &[String],
) -> Result<usize, EvalError> {
    check_inputs(ids, vecs, vocab)?;
    for (id, v) in ids.iter().zip(vecs) {
        let mut features = Map::new();
        for (t, x) in v.iter() {
            if x <= 0.0 {
                return Err(EvalError::Export(format!(
                    "document '{id}': token '{}' has weight {x}; rank_features needs positive weights",
                    vocab[t as usize]
                )));
            }
            features.insert(vocab[t as usize].clone(), Value::from(x));
        }
        let action = json!({"index": {"_index": index_name, "_id": id}});
        let mut source = Map::new();
        source.insert(field.to_string(), Value::Object(features));
        for line in [action, Value::Object(source)] {
            serde_json::to_writer(&mut *w, &line).map_err(|e| EvalError::Export(e.to_string()))?;
            w.write_all(b"\n").map_err(io)?;
        }
    }
    Ok(ids.len())
}

/// The index mapping that declares `field` as `rank_features` (body of `PUT /<index>`).
pub fn opensearch_mapping(field: &str) -> Value {
    json!({"mappings": {"properties": {field: {"type": "rank_features"}}}})
}

/// Qdrant points, one per line: `{"id": i, "vector": {name: {"indices", "values"}}, "payload": {"doc_id"}}`.
/// Point ids are the document's position (Qdrant ids must be integers or UUIDs); indices are sorted and
/// unique by construction of [`SparseVec`]. Wrap lines as `{"points": [...]}` for the upsert API.
pub fn write_qdrant_points(
    w: &mut dyn Write,
    vector_name: &str,
    ids: &[String],
    vecs: &[SparseVec],
    vocab_size: usize,
) -> Result<usize, EvalError> {
    if ids.len() != vecs.len() {
        return Err(EvalError::Export(format!(
            "{} ids but {} vectors",
            ids.len(),
            vecs.len()
        )));
    }
    for (i, (id, v)) in ids.iter().zip(vecs).enumerate() {
        if v.dim_lower_bound() > vocab_size {
            return Err(EvalError::Export(format!(
                "document '{id}' exceeds the vocabulary of {vocab_size}"
            )));
        }
        let point = json!({
            "id": i,
            "vector": {vector_name: {"indices": v.indices(), "values": v.values()}},
            "payload": {"doc_id": id},
        });
        serde_json::to_writer(&mut *w, &point).map_err(|e| EvalError::Export(e.to_string()))?;
        w.write_all(b"\n").map_err(io)?;
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (Vec<String>, Vec<SparseVec>, Vec<String>) {
        let vocab: Vec<String> = ["[PAD]", "fly", "##plass", "moss", "."]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vecs = vec![
            SparseVec::new(vec![1, 2, 3], vec![1.234, 0.375, 0.0049]).unwrap(),
            SparseVec::new(vec![0, 4], vec![2.5, 0.015]).unwrap(),
        ];
        (vec!["d0".into(), "d1".into()], vecs, vocab)
    }

    #[test]
    fn anserini_impacts_round_half_up_and_drop_zeros() {
        assert_eq!(quantize(0.375, 100.0), 38);
        assert_eq!(quantize(0.015, 100.0), 1); // f32 0.015 is 0.01499999966…
        assert_eq!(quantize(0.0049, 100.0), 0);
        assert_eq!(quantize(0.125, 100.0), 13); // exact half → up
        assert_eq!(quantize(-0.125, 100.0), -12); // half-up is towards +∞
        let (ids, vecs, vocab) = fixture();
        let mut out = Vec::new();
        write_anserini(&mut out, &ids, &vecs, &vocab, 100.0, None).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            json!({"id": "d0", "contents": "", "vector": {"fly": 123, "##plass": 38}})
        );
        assert_eq!(
            lines[1],
            json!({"id": "d1", "contents": "", "vector": {"[PAD]": 250, ".": 1}})
        );
        for (line, v) in lines.iter().zip(&vecs) {
            for (t, x) in v.iter() {
                let expect = ((x as f64) * 100.0 + 0.5).floor() as i64;
                assert_eq!(
                    line["vector"]
                        .get(&vocab[t as usize])
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
                    expect
                );
            }
        }
    }

    #[test]
    fn opensearch_bulk_is_ndjson_with_vocab_tokens() {
        let (ids, vecs, vocab) = fixture();
        let mut out = Vec::new();
        write_opensearch_bulk(&mut out, "norquad", "splade", &ids, &vecs, &vocab).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            json!({"index": {"_index": "norquad", "_id": "d0"}})
        );
        let feats = lines[1]["splade"].as_object().unwrap();
        assert!(feats.keys().all(|k| vocab.contains(k)));
        assert_eq!(feats["fly"].as_f64().unwrap() as f32, 1.234);
        let neg = vec![SparseVec::new(vec![1], vec![-1.0]).unwrap()];
        assert!(write_opensearch_bulk(&mut Vec::new(), "i", "f", &ids[..1], &neg, &vocab).is_err());
        assert_eq!(
            opensearch_mapping("splade")["mappings"]["properties"]["splade"]["type"],
            "rank_features"
        );
    }

    #[test]
    fn qdrant_indices_sorted_unique() {
        let (ids, vecs, _) = fixture();
        let mut out = Vec::new();
        write_qdrant_points(&mut out, "splade", &ids, &vecs, 5).unwrap();
        for (line, v) in String::from_utf8(out).unwrap().lines().zip(&vecs) {
            let p: Value = serde_json::from_str(line).unwrap();
            let idx: Vec<u64> = p["vector"]["splade"]["indices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert!(idx.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(idx.len(), v.nnz());
            assert_eq!(
                p["vector"]["splade"]["values"].as_array().unwrap().len(),
                v.nnz()
            );
        }
        assert!(write_qdrant_points(&mut Vec::new(), "s", &ids, &vecs, 3).is_err());
    }
}
