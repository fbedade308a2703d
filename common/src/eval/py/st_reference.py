"""Runs sentence-transformers' own SparseInformationRetrievalEvaluator on precomputed sparse vectors.

Input (argv[1], JSON): {"vocab_size", "queries": [{"id","text","indices","values"}], "docs": [...],
"qrels": {qid: [doc ids]}, "ks": {...}}. The "model" below only hands the evaluator those vectors; search,
tie-breaking, metrics and sparsity statistics are all the evaluator's code. Prints its metrics as JSON.
"""
import json
import sys

import torch
from sentence_transformers import SparseEncoder
from sentence_transformers.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator
from sentence_transformers.util import dot_score

spec = json.load(open(sys.argv[1]))
V = spec["vocab_size"]


def to_sparse(rows):
    idx_r, idx_c, vals = [], [], []
    for r, row in enumerate(rows):
        idx_r += [r] * len(row["indices"])
        idx_c += row["indices"]
        vals += row["values"]
    return torch.sparse_coo_tensor(
        torch.tensor([idx_r, idx_c], dtype=torch.long), torch.tensor(vals, dtype=torch.float32), (len(rows), V)
    ).coalesce()


class _Card:
    def set_evaluation_metrics(self, *args, **kwargs):
        pass


class PrecomputedVectors:
    """Answers encode_query/encode_document with the given vectors, looked up by text."""

    similarity_fn_name = "dot"
    sparsity = staticmethod(SparseEncoder.sparsity)
    model_card_data = _Card()

    def __init__(self, queries, docs):
        self.rows = {r["text"]: r for r in queries + docs}

    def similarity(self, a, b):
        return dot_score(a, b)

    def _encode(self, sentences, **kwargs):
        return to_sparse([self.rows[s] for s in sentences])

    encode_query = _encode
    encode_document = _encode


queries = {q["id"]: q["text"] for q in spec["queries"]}
corpus = {d["id"]: d["text"] for d in spec["docs"]}
relevant = {q: set(ds) for q, ds in spec["qrels"].items()}
ks = spec["ks"]
evaluator = SparseInformationRetrievalEvaluator(
    queries=queries,
    corpus=corpus,
    relevant_docs=relevant,
    corpus_chunk_size=spec.get("corpus_chunk_size", 50000),
    mrr_at_k=ks["mrr"],
    ndcg_at_k=ks["ndcg"],
    accuracy_at_k=ks["accuracy"],
    precision_recall_at_k=ks["precision_recall"],
    map_at_k=ks["map"],
    write_csv=False,
)
metrics = evaluator(PrecomputedVectors(spec["queries"], spec["docs"]))
print(json.dumps({k: float(v) for k, v in metrics.items()}))
