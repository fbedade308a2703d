//! BM25, the lexical baseline and the hybrid partner of SPLADE: one implementation for `--bm25`, hybrid
//! fusion and anything else that needs a term-matching run.
//!
//! Two flavours ([`Bm25Flavor`]) share the scoring code and differ in tokenizer and defaults:
//!
//! - **`bm25s`** (the default) is what `bm25s` 0.3.16 does with its defaults, and is tested against it
//!   (`common/tests/bm25_reference.rs`, NorQuAD dev, plain and Norwegian-stemmed: every score within
//!   1e-4, the same top 100). Text is lowercased (Unicode, as Python's `str.lower`), then split like
//!   bm25s's token pattern `(?u)\b\w\w+\b`: maximal runs of letters, numbers and `_` (Python's `\w`),
//!   keeping runs of at least two characters. `k1 = 1.5`, `b = 0.75`. No stopword list (bm25s's
//!   `tokenize` defaults to an English one, which would drop Norwegian words such as `for` and `at`;
//!   the reference runs with `stopwords=None`).
//! - **`anserini`** is the earlier tokenizer with Anserini's defaults `k1 = 0.9`, `b = 0.4`: Unicode word
//!   segmentation (UAX #29 word boundaries, keeping tokens with a letter or digit, so one-character
//!   words and tokens such as `2.5` or `østlandet's` stay), lowercased.
//!
//! Both score with Lucene's `BM25Similarity` as Anserini uses it and as bm25s's `method="lucene"` does:
//! `Σ_{t ∈ q} qtf(t) · idf(t) · tf / (tf + k1 · (1 − b + b · dl / avgdl))`, with
//! `idf(t) = ln(1 + (N − df + 0.5) / (df + 0.5))`, `qtf` the count of t in the query (a repeated query
//! term counts once per occurrence, in bm25s and in Anserini's bag-of-words query) and `dl` the
//! document's token count. Unlike Lucene, `dl` is exact rather than quantised to one byte, so scores
//! differ from Anserini's in the last digits. The documents are indexed as [`SparseVec`]s of per-term
//! BM25 weights in the same [`InvertedIndex`] the SPLADE evaluator uses, so ranking and ties follow the
//! same rules.
//!
//! Stemming (optional, either flavour) is Snowball's, through the `snowball_stemmers_rs` crate: the
//! official Snowball 3.0 compiler's Rust output for every Snowball algorithm, maintained by SeekStorm
//! for its search engine, with the same API as `rust-stemmers`. It stems every word type of NorQuAD
//! exactly as PyStemmer 3.1.0 does (tested on all of them). The alternatives do not: `rust-stemmers`
//! 1.2.0 was generated from an older Snowball and differs on 21 of NorQuAD's word types (`kontrovers`,
//! `flyers`, `bête`, ...), and Debian's `libstemmer` (2.2.0 in bookworm) has the same older Norwegian
//! algorithm (it too leaves `bête` and stems `kontrovers` to `kontrov`), besides needing C linkage.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use regex::Regex;
use snowball_stemmers_rs::{Algorithm, Stemmer};
use unicode_segmentation::UnicodeSegmentation;

use super::{EvalError, Hit, InvertedIndex, SparseVec, VocabInfo};

/// Which BM25 implementation's tokenizer and defaults to follow (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bm25Flavor {
    /// `bm25s` with its defaults: words of two or more characters, `k1 = 1.5`, `b = 0.75`.
    #[default]
    Bm25s,
    /// UAX #29 words (one-character words kept), Anserini's `k1 = 0.9`, `b = 0.4`.
    Anserini,
}

impl Bm25Flavor {
    /// The flavour's name as `--bm25-flavor` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bm25s => "bm25s",
            Self::Anserini => "anserini",
        }
    }

    /// The flavour's default `(k1, b)`.
    pub fn defaults(self) -> (f32, f32) {
        match self {
            Self::Bm25s => (1.5, 0.75),
            Self::Anserini => (0.9, 0.4),
        }
    }
}

impl fmt::Display for Bm25Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Bm25Flavor {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, EvalError> {
        match s.to_lowercase().as_str() {
            "bm25s" => Ok(Self::Bm25s),
            "anserini" => Ok(Self::Anserini),
            other => Err(EvalError::Bm25(format!(
                "unknown BM25 flavour '{other}'; use bm25s (the default: bm25s's tokenizer, k1 1.5, b 0.75) \
                 or anserini (UAX #29 words, k1 0.9, b 0.4)"
            ))),
        }
    }
}

/// Tokenizer and scoring parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bm25Params {
    /// Tokenizer and default `k1`/`b` (default [`Bm25Flavor::Bm25s`]).
    pub flavor: Bm25Flavor,
    /// Term-frequency saturation; `None`: the flavour's (bm25s 1.5, Anserini 0.9).
    pub k1: Option<f32>,
    /// Length normalisation; `None`: the flavour's (bm25s 0.75, Anserini 0.4).
    pub b: Option<f32>,
    /// Snowball language, e.g. `Some("norwegian")`; `None` disables stemming.
    pub stemmer: Option<String>,
}

impl Bm25Params {
    /// The `(k1, b)` in effect: the explicit values, else the flavour's defaults.
    pub fn k1_b(&self) -> (f32, f32) {
        let (k1, b) = self.flavor.defaults();
        (self.k1.unwrap_or(k1), self.b.unwrap_or(b))
    }
}

/// The Snowball algorithms by lowercase English name (`dutch_porter` is Dutch before Snowball 3.0).
const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("arabic", Algorithm::Arabic),
    ("armenian", Algorithm::Armenian),
    ("basque", Algorithm::Basque),
    ("catalan", Algorithm::Catalan),
    ("czech", Algorithm::Czech),
    ("danish", Algorithm::Danish),
    ("dutch", Algorithm::Dutch),
    ("dutch_porter", Algorithm::DutchPorter),
    ("english", Algorithm::English),
    ("esperanto", Algorithm::Esperanto),
    ("estonian", Algorithm::Estonian),
    ("finnish", Algorithm::Finnish),
    ("french", Algorithm::French),
    ("german", Algorithm::German),
    ("greek", Algorithm::Greek),
    ("hindi", Algorithm::Hindi),
    ("hungarian", Algorithm::Hungarian),
    ("indonesian", Algorithm::Indonesian),
    ("irish", Algorithm::Irish),
    ("italian", Algorithm::Italian),
    ("lithuanian", Algorithm::Lithuanian),
    ("lovins", Algorithm::Lovins),
    ("nepali", Algorithm::Nepali),
    ("norwegian", Algorithm::Norwegian),
    ("persian", Algorithm::Persian),
    ("polish", Algorithm::Polish),
    ("porter", Algorithm::Porter),
    ("portuguese", Algorithm::Portuguese),
    ("romanian", Algorithm::Romanian),
    ("russian", Algorithm::Russian),
    ("serbian", Algorithm::Serbian),
    ("sesotho", Algorithm::Sesotho),
    ("spanish", Algorithm::Spanish),
    ("swedish", Algorithm::Swedish),
    ("tamil", Algorithm::Tamil),
    ("turkish", Algorithm::Turkish),
    ("ukrainian", Algorithm::Ukrainian),
    ("yiddish", Algorithm::Yiddish),
];

/// The Snowball algorithm of that (case-insensitive) English name; the error lists the names.
pub fn stemmer_algorithm(name: &str) -> Result<Algorithm, EvalError> {
    let lower = name.to_lowercase();
    ALGORITHMS.iter().find(|(n, _)| *n == lower).map(|&(_, a)| a).ok_or_else(|| {
        let names: Vec<&str> = ALGORITHMS.iter().map(|(n, _)| *n).collect();
        EvalError::Bm25(format!("unknown stemmer '{name}'; use one of {}", names.join(", ")))
    })
}

/// Lowercasing word tokenizer of a [`Bm25Flavor`], with optional Snowball stemming.
pub struct Tokenizer {
    flavor: Bm25Flavor,
    /// Runs of Python `\w` characters (letters, numbers, `_`), for the bm25s flavour.
    word_runs: Regex,
    stemmer: Option<Stemmer>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("flavor", &self.flavor)
            .field("stemming", &self.stemmer.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// A tokenizer of `flavor`, stemming with the named Snowball algorithm, or not stemming for `None`.
    pub fn new(flavor: Bm25Flavor, stemmer: Option<&str>) -> Result<Self, EvalError> {
        Ok(Self {
            flavor,
            // Python's `\w` on str is `str.isalnum()` (letters L*, numbers N*) or `_`; unlike Rust's `\w`
            // it excludes combining marks, so a decomposed accent ends a word in bm25s too.
            word_runs: Regex::new(r"[\p{L}\p{N}_]+").expect("valid pattern"),
            stemmer: stemmer.map(stemmer_algorithm).transpose()?.map(Stemmer::create),
        })
    }

    /// The lowercased words of `text` in order, before stemming.
    pub fn words(&self, text: &str) -> Vec<String> {
        match self.flavor {
            Bm25Flavor::Bm25s => {
                let lower = text.to_lowercase();
                // `\b\w\w+\b` matches exactly the maximal `\w` runs of two or more characters.
                self.word_runs
                    .find_iter(&lower)
                    .map(|m| m.as_str())
                    .filter(|w| w.chars().nth(1).is_some())
                    .map(str::to_string)
                    .collect()
            }
            Bm25Flavor::Anserini => text.unicode_words().map(str::to_lowercase).collect(),
        }
    }

    /// The tokens of `text` in order: its [`words`](Self::words), stemmed when a stemmer is set.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let words = self.words(text);
        match &self.stemmer {
            Some(s) => words.iter().map(|w| s.stem(w).into_owned()).collect(),
            None => words,
        }
    }

    /// `word` stemmed (unchanged without a stemmer).
    pub fn stem<'a>(&self, word: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.stemmer {
            Some(s) => s.stem(word),
            None => std::borrow::Cow::Borrowed(word),
        }
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
        let (k1, b) = params.k1_b();
        if !(k1 >= 0.0 && (0.0..=1.0).contains(&b)) {
            return Err(EvalError::Bm25(format!("k1 = {k1} must be ≥ 0 and b = {b} within [0, 1]")));
        }
        let tokenizer = Tokenizer::new(params.flavor, params.stemmer.as_deref())?;
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
        let (k1, b) = (k1 as f64, b as f64);
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
    fn anserini_tokenizer_keeps_uax29_words_and_stems() {
        let t = Tokenizer::new(Bm25Flavor::Anserini, None).unwrap();
        assert_eq!(
            t.tokens("Hvor mange, Østlandet's 2020-tall i Å?"),
            ["hvor", "mange", "østlandet's", "2020", "tall", "i", "å"]
        );
        let s = Tokenizer::new(Bm25Flavor::Anserini, Some("norwegian")).unwrap();
        assert_eq!(s.tokens("Flyselskapene"), ["flyselskap"]);
    }

    #[test]
    fn bm25s_tokenizer_drops_one_character_words_and_splits_at_punctuation() {
        // What `re.findall(r"(?u)\b\w\w+\b", text.lower())` gives in Python for the same text.
        let t = Tokenizer::new(Bm25Flavor::Bm25s, None).unwrap();
        assert_eq!(
            t.tokens("Hvor mange, Østlandet's 2020-tall i Å? snake_case 2.5"),
            ["hvor", "mange", "østlandet", "2020", "tall", "snake_case"]
        );
    }

    #[test]
    fn unknown_stemmer_and_flavor_name_the_choices() {
        let e = Tokenizer::new(Bm25Flavor::Bm25s, Some("klingon")).unwrap_err().to_string();
        assert!(e.contains("'klingon'") && e.contains("norwegian"), "{e}");
        let e = "lucene".parse::<Bm25Flavor>().unwrap_err().to_string();
        assert!(e.contains("'lucene'") && e.contains("bm25s") && e.contains("anserini"), "{e}");
        assert_eq!("BM25S".parse::<Bm25Flavor>().unwrap(), Bm25Flavor::Bm25s);
    }

    #[test]
    fn flavors_default_k1_b_and_explicit_values_override() {
        assert_eq!(Bm25Params::default().k1_b(), (1.5, 0.75));
        let p = Bm25Params { flavor: Bm25Flavor::Anserini, ..Default::default() };
        assert_eq!(p.k1_b(), (0.9, 0.4));
        let p = Bm25Params { k1: Some(1.2), ..p };
        assert_eq!(p.k1_b(), (1.2, 0.4));
        let bad = Bm25Params { b: Some(1.5), ..Default::default() };
        assert!(Bm25::build([("d", "x")], &bad).is_err());
    }
}
