//! BM25, the lexical baseline and the hybrid partner of SPLADE: one implementation for `--bm25`, hybrid
//! fusion and anything else that needs a term-matching run.
//!
//! Tokenizer: Unicode word segmentation (UAX #29 word boundaries, keeping tokens with a letter or digit),
//! lowercased, optionally Snowball-stemmed (`rust-stemmers`; Norwegian for NorQuAD). No stopword list.
//!
//! Scoring is Lucene's `BM25Similarity` as Anserini uses it, defaults `k1 = 0.9`, `b = 0.4`:
//! `Σ_{t ∈ q} qtf(t) · idf(t) · tf / (tf + k1 · (1 − b + b · dl / avgdl))`, with
//! `idf(t) = ln(1 + (N − df + 0.5) / (df + 0.5))`, `qtf` the count of t in the query (Anserini's
//! bag-of-words query boosts a repeated term by its count) and `dl` the document's token count. Unlike
//! Lucene, `dl` is exact rather than quantised to one byte, so scores differ from Anserini's in the last
//! digits. The documents are indexed as [`SparseVec`]s of per-term BM25 weights in the same
//! [`InvertedIndex`] the SPLADE evaluator uses, so ranking and ties follow the same rules.

use std::collections::HashMap;

use rust_stemmers::{Algorithm, Stemmer};
use unicode_segmentation::UnicodeSegmentation;

use super::{EvalError, Hit, InvertedIndex, SparseVec, VocabInfo};

/// Tokenizer and scoring parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation (Anserini default 0.9).
    pub k1: f32,
    /// Length normalisation (Anserini default 0.4).
    pub b: f32,
    /// Snowball language, e.g. `Some("norwegian")`; `None` disables stemming.
    pub stemmer: Option<String>,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Self {
            k1: 0.9,
            b: 0.4,
            stemmer: None,
        }
    }
}

/// The Snowball algorithms `rust-stemmers` offers, by lowercase English name.
pub fn stemmer_algorithm(name: &str) -> Result<Algorithm, EvalError> {
    Ok(match name.to_lowercase().as_str() {
        "arabic" => Algorithm::Arabic,
        "danish" => Algorithm::Danish,
        "dutch" => Algorithm::Dutch,
        "english" => Algorithm::English,
        "finnish" => Algorithm::Finnish,
        "french" => Algorithm::French,
        "german" => Algorithm::German,
        "greek" => Algorithm::Greek,
        "hungarian" => Algorithm::Hungarian,
        "italian" => Algorithm::Italian,
        "norwegian" => Algorithm::Norwegian,
        "portuguese" => Algorithm::Portuguese,
        "romanian" => Algorithm::Romanian,
        "russian" => Algorithm::Russian,
        "spanish" => Algorithm::Spanish,
        "swedish" => Algorithm::Swedish,
        "tamil" => Algorithm::Tamil,
        "turkish" => Algorithm::Turkish,
        other => {
            return Err(EvalError::Bm25(format!(
                "unknown stemmer '{other}'; use one of arabic, danish, dutch, english, finnish, french, german, \
                 greek, hungarian, italian, norwegian, portuguese, romanian, russian, spanish, swedish, tamil, turkish"
            )))
        }
    })
}

/// Unicode word tokenizer with lowercasing and optional stemming.
pub struct Tokenizer {
    stemmer: Option<Stemmer>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("stemming", &self.stemmer.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// A tokenizer stemming with the named Snowball algorithm, or not stemming for `None`.
    pub fn new(stemmer: Option<&str>) -> Result<Self, EvalError> {
        Ok(Self {
            stemmer: stemmer
                .map(stemmer_algorithm)
                .transpose()?
                .map(Stemmer::create),
        })
    }

    /// The tokens of `text` in order.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        text.unicode_words()
            .map(|w| {
                let lower = w.to_lowercase();
                match &self.stemmer {
                    Some(s) => s.stem(&lower).into_owned(),
                    None => lower,
                }
            })
            .collect()
    }
}

/// A BM25 index over a corpus.
pub struct Bm25 {
    tokenizer: Tokenizer,
    terms: HashMap<String, u32>,
    index: InvertedIndex,
}

impl Bm25 {
    /// Indexes `docs` as `(id, text)` pairs.
    pub fn build<'a>(
        docs: impl IntoIterator<Item = (&'a str, &'a str)>,
        params: &Bm25Params,
    ) -> Result<Self, EvalError> {
        if !(params.k1 >= 0.0 && (0.0..=1.0).contains(&params.b)) {
            return Err(EvalError::Bm25(format!(
                "k1 = {} must be ≥ 0 and b = {} within [0, 1]",
                params.k1, params.b
            )));
        }
        let tokenizer = Tokenizer::new(params.stemmer.as_deref())?;
        let mut terms: HashMap<String, u32> = HashMap::new();
        let mut ids = Vec::new();
        let mut tfs: Vec<(Vec<(u32, u32)>, usize)> = Vec::new();
        for (id, text) in docs {
            let toks = tokenizer.tokens(text);
            let mut tf: HashMap<u32, u32> = HashMap::new();
            for t in &toks {
                let n = terms.len() as u32;
                *tf.entry(*terms.entry(t.clone()).or_insert(n)).or_default() += 1;
            }
            ids.push(id.to_string());
            tfs.push((tf.into_iter().collect(), toks.len()));
        }
        let n = tfs.len() as f64;
        let avgdl = if tfs.is_empty() {
            1.0
        } else {
            tfs.iter().map(|t| t.1).sum::<usize>() as f64 / n
        };
        let mut df = vec![0u32; terms.len()];
        for (tf, _) in &tfs {
            for &(t, _) in tf {
                df[t as usize] += 1;
            }
        }
        let idf: Vec<f64> = df
            .iter()
            .map(|&d| (1.0 + (n - d as f64 + 0.5) / (d as f64 + 0.5)).ln())
            .collect();
        let (k1, b) = (params.k1 as f64, params.b as f64);
        let vecs = tfs
            .into_iter()
            .map(|(tf, dl)| {
                let norm = k1 * (1.0 - b + b * dl as f64 / avgdl);
                let pairs = tf
                    .into_iter()
                    .map(|(t, f)| (t, (idf[t as usize] * f as f64 / (f as f64 + norm)) as f32))
                    .filter(|p| p.1 != 0.0)
                    .collect();
                SparseVec::from_pairs(pairs)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vocab = VocabInfo {
            size: terms.len(),
            fingerprint: "bm25".into(),
        };
        Ok(Self {
            tokenizer,
            terms,
            index: InvertedIndex::build(ids, &vecs, vocab)?,
        })
    }

    /// The query as a vector of term counts over the index's terms (unknown terms dropped).
    pub fn query_vec(&self, text: &str) -> SparseVec {
        let pairs = self
            .tokenizer
            .tokens(text)
            .iter()
            .filter_map(|t| self.terms.get(t).map(|&id| (id, 1.0)))
            .collect();
        SparseVec::from_pairs(pairs).expect("counts are positive and finite")
    }

    /// Top-`k` hits of every query, in parallel (see [`InvertedIndex::search`] for order and zero fill).
    pub fn search(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, EvalError> {
        let vecs: Vec<SparseVec> = queries.iter().map(|q| self.query_vec(q)).collect();
        self.index.search(&vecs, k)
    }

    /// The underlying index (document ids, sizes).
    pub fn index(&self) -> &InvertedIndex {
        &self.index
    }

    /// Number of distinct terms.
    pub fn n_terms(&self) -> usize {
        self.terms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_lowercases_splits_and_stems() {
        let t = Tokenizer::new(None).unwrap();
        assert_eq!(
            t.tokens("Hvor mange, Østlandet's 2020-tall?"),
            ["hvor", "mange", "østlandet's", "2020", "tall"]
        );
        let s = Tokenizer::new(Some("norwegian")).unwrap();
        assert_eq!(s.tokens("Flyselskapene"), ["flyselskap"]);
        assert!(Tokenizer::new(Some("klingon"))
            .unwrap_err()
            .to_string()
            .contains("norwegian"));
    }

    #[test]
    fn scores_follow_the_formula() {
        let docs = [("d1", "a a b"), ("d2", "b c"), ("d3", "c c c c")];
        let bm = Bm25::build(docs, &Bm25Params::default()).unwrap();
        let hits = bm.search(&["a b b"], 3).unwrap().remove(0);
        let (n, avgdl, k1, b) = (3.0f64, 3.0f64, 0.9f64, 0.4f64);
        let idf = |df: f64| (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        let w = |tf: f64, dl: f64| tf / (tf + k1 * (1.0 - b + b * dl / avgdl));
        let d1 = idf(1.0) * w(2.0, 3.0) + 2.0 * idf(2.0) * w(1.0, 3.0);
        let d2 = 2.0 * idf(2.0) * w(1.0, 2.0);
        assert_eq!(bm.index().doc_ids()[hits[0].doc as usize], "d1");
        assert!(
            (hits[0].score as f64 - d1).abs() < 1e-5,
            "{} vs {d1}",
            hits[0].score
        );
        assert_eq!(bm.index().doc_ids()[hits[1].doc as usize], "d2");
        assert!((hits[1].score as f64 - d2).abs() < 1e-5);
        assert_eq!(hits[2].score, 0.0);
    }
}
