//! The sparse vector every encoder, index and exporter in this module exchanges.

use serde::{Deserialize, Serialize};

use super::EvalError;

/// A sparse vector over a vocabulary: `indices` strictly ascending (so unique), `values` non-zero and finite,
/// both of the same length. Every constructor checks these invariants, so code holding a `SparseVec`
/// can rely on them (the index merges postings and the exporters emit sorted unique ids without re-checking).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSparseVec")]
pub struct SparseVec {
    indices: Vec<u32>,
    values: Vec<f32>,
}

/// The unchecked wire form; deserialisation goes through [`SparseVec::new`] so a file cannot smuggle in a
/// vector that breaks the invariants.
#[derive(Deserialize)]
struct RawSparseVec {
    indices: Vec<u32>,
    values: Vec<f32>,
}

impl TryFrom<RawSparseVec> for SparseVec {
    type Error = EvalError;
    fn try_from(raw: RawSparseVec) -> Result<Self, EvalError> {
        SparseVec::new(raw.indices, raw.values)
    }
}

impl SparseVec {
    /// Builds a vector from parallel index/value lists, checking that indices are strictly ascending,
    /// the lengths match and every value is finite and non-zero.
    pub fn new(indices: Vec<u32>, values: Vec<f32>) -> Result<Self, EvalError> {
        if indices.len() != values.len() {
            return Err(EvalError::InvalidVector(format!(
                "{} indices but {} values; they must be parallel lists",
                indices.len(),
                values.len()
            )));
        }
        for w in indices.windows(2) {
            if w[0] >= w[1] {
                return Err(EvalError::InvalidVector(format!(
                    "indices must be strictly ascending, found {} followed by {}",
                    w[0], w[1]
                )));
            }
        }
        if let Some((i, v)) = indices
            .iter()
            .zip(&values)
            .find(|(_, v)| **v == 0.0 || !v.is_finite())
        {
            return Err(EvalError::InvalidVector(format!(
                "value at index {i} is {v}; values must be finite and non-zero (drop zero entries)"
            )));
        }
        Ok(Self { indices, values })
    }

    /// Builds a vector from unsorted `(index, value)` pairs: sorts, sums duplicates and drops zeros.
    pub fn from_pairs(mut pairs: Vec<(u32, f32)>) -> Result<Self, EvalError> {
        pairs.sort_unstable_by_key(|p| p.0);
        let mut indices = Vec::with_capacity(pairs.len());
        let mut values: Vec<f32> = Vec::with_capacity(pairs.len());
        for (i, v) in pairs {
            if indices.last() == Some(&i) {
                *values.last_mut().expect("parallel") += v;
            } else {
                indices.push(i);
                values.push(v);
            }
        }
        let (indices, values) = indices
            .into_iter()
            .zip(values)
            .filter(|(_, v)| *v != 0.0)
            .unzip();
        Self::new(indices, values)
    }

    /// The non-zero entries of a dense slice (index = position). Errors on NaN or infinite values.
    pub fn from_dense(dense: &[f32]) -> Result<Self, EvalError> {
        let mut indices = Vec::new();
        let mut values = Vec::new();
        for (i, &v) in dense.iter().enumerate() {
            if !v.is_finite() {
                return Err(EvalError::InvalidVector(format!(
                    "dense value at position {i} is {v}"
                )));
            }
            if v != 0.0 {
                indices.push(u32::try_from(i).map_err(|_| {
                    EvalError::InvalidVector(format!(
                        "dense vector longer than u32::MAX ({})",
                        dense.len()
                    ))
                })?);
                values.push(v);
            }
        }
        Ok(Self { indices, values })
    }

    /// Like [`SparseVec::from_dense`] for an `f64` slice; values are rounded to `f32`, and entries that
    /// round to zero are dropped.
    pub fn from_dense_f64(dense: &[f64]) -> Result<Self, EvalError> {
        let as_f32: Vec<f32> = dense.iter().map(|&v| v as f32).collect();
        Self::from_dense(&as_f32)
    }

    /// Vocabulary ids of the active dimensions, strictly ascending.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Values parallel to [`SparseVec::indices`], all finite and non-zero.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Number of active (non-zero) dimensions.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// True when no dimension is active.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Iterates `(index, value)` in ascending index order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.indices
            .iter()
            .copied()
            .zip(self.values.iter().copied())
    }

    /// The largest index plus one (0 when empty): the smallest vocabulary this vector fits.
    pub fn dim_lower_bound(&self) -> usize {
        self.indices.last().map_or(0, |&i| i as usize + 1)
    }

    /// Dot product with another sparse vector, accumulated in `f32` in ascending index order.
    pub fn dot(&self, other: &SparseVec) -> f32 {
        let (mut i, mut j, mut acc) = (0, 0, 0.0f32);
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    acc += self.values[i] * other.values[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        acc
    }

    /// The `n` entries of largest value, ties by ascending index (for `--decode` style displays).
    pub fn top(&self, n: usize) -> Vec<(u32, f32)> {
        let mut pairs: Vec<(u32, f32)> = self.iter().collect();
        pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        pairs.truncate(n);
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_keep_invariants() {
        let v = SparseVec::from_dense(&[0.0, 1.5, 0.0, -2.0]).unwrap();
        assert_eq!(v.indices(), &[1, 3]);
        assert_eq!(v.values(), &[1.5, -2.0]);
        assert!(SparseVec::new(vec![2, 1], vec![1.0, 1.0]).is_err());
        assert!(SparseVec::new(vec![1, 1], vec![1.0, 1.0]).is_err());
        assert!(SparseVec::new(vec![1], vec![0.0]).is_err());
        assert!(SparseVec::from_dense(&[f32::NAN]).is_err());
        let p =
            SparseVec::from_pairs(vec![(5, 1.0), (2, 1.0), (5, 2.0), (7, 1.0), (7, -1.0)]).unwrap();
        assert_eq!(p.indices(), &[2, 5]);
        assert_eq!(p.values(), &[1.0, 3.0]);
        assert_eq!(
            p.dot(&SparseVec::from_dense(&[0.0, 0.0, 2.0, 0.0, 0.0, 1.0]).unwrap()),
            5.0
        );
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let v = SparseVec::new(vec![3, 9], vec![0.25, 4.0]).unwrap();
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(s, r#"{"indices":[3,9],"values":[0.25,4.0]}"#);
        assert_eq!(serde_json::from_str::<SparseVec>(&s).unwrap(), v);
        let bad = serde_json::from_str::<SparseVec>(r#"{"indices":[9,3],"values":[1,1]}"#);
        assert!(bad.unwrap_err().to_string().contains("strictly ascending"));
    }
}
