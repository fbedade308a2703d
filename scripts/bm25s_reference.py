"""The external BM25 reference for `common/tests/bm25_reference.rs`: bm25s + PyStemmer (tools venv,
pinned in scripts/requirements-tools.txt).

    bm25s_reference.py stem LANGUAGE WORDS.txt OUT.txt
        PyStemmer's stem of every line of WORDS.txt, one a line, in order.

    bm25s_reference.py bm25 IN.json OUT.json
        IN.json: {"docs": [text], "queries": [text], "stemmer": null | "norwegian", "k": 100}.
        bm25s with its defaults (method "lucene", k1 1.5, b 0.75, token pattern (?u)\\b\\w\\w+\\b,
        lowercased), no stopword list (bm25s.tokenize's default is an English list, which would drop
        Norwegian words such as "for" and "at"). OUT.json: {"doc_tokens": [[token]], "query_tokens":
        [[token]], "scores": [[score of every doc] per query], "top_docs": [[doc index]],
        "top_scores": [[score]]}, the top k from `BM25.retrieve`.
"""

import json
import sys

import bm25s
import numpy as np
import Stemmer


def stem(language, words_path, out_path):
    stemmer = Stemmer.Stemmer(language)
    with open(words_path, encoding="utf-8") as f:
        words = f.read().split("\n")
    if words and words[-1] == "":
        words.pop()
    with open(out_path, "w", encoding="utf-8") as f:
        for w in words:
            f.write(stemmer.stemWord(w) + "\n")


def bm25(in_path, out_path):
    with open(in_path, encoding="utf-8") as f:
        spec = json.load(f)
    stemmer = Stemmer.Stemmer(spec["stemmer"]) if spec.get("stemmer") else None
    tok = dict(stopwords=None, stemmer=stemmer, return_ids=False, show_progress=False)
    doc_tokens = bm25s.tokenize(spec["docs"], **tok)
    query_tokens = bm25s.tokenize(spec["queries"], **tok)
    retriever = bm25s.BM25()  # the defaults under test: method="lucene", k1=1.5, b=0.75
    retriever.index(doc_tokens, show_progress=False)
    scores = [retriever.get_scores(q).astype(np.float64).tolist() for q in query_tokens]
    k = min(int(spec.get("k", 100)), len(spec["docs"]))
    top_docs, top_scores = retriever.retrieve(query_tokens, k=k, show_progress=False, n_threads=1)
    out = {
        "doc_tokens": doc_tokens,
        "query_tokens": query_tokens,
        "scores": scores,
        "top_docs": top_docs.tolist(),
        "top_scores": top_scores.astype(np.float64).tolist(),
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "stem":
        stem(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "bm25":
        bm25(*sys.argv[2:])
    else:
        sys.exit(__doc__)
