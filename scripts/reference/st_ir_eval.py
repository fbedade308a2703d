"""sentence-transformers 6.2's SparseInformationRetrievalEvaluator on a BEIR task with a real model.

  st_ir_eval.py --model DIR --task DIR --split dev --max-length N [--out FILE]

Corpus text is title + " " + text (as `splade eval` feeds its encoder). Prints the evaluator's
metrics as JSON with MTEB names (ndcg_at_10, …) plus its sparsity keys and wall times.
"""
import argparse, csv, json, os, re, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from sentence_transformers import SparseEncoder
from sentence_transformers.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--task", required=True)
p.add_argument("--split", default="dev")
p.add_argument("--max-length", type=int, default=256)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--out")
a = p.parse_args()

corpus = {}
for line in open(os.path.join(a.task, "corpus.jsonl")):
    d = json.loads(line)
    corpus[d["_id"]] = (d.get("title", "") + " " + d["text"]).strip() if d.get("title") else d["text"]
queries_all = {}
for line in open(os.path.join(a.task, "queries.jsonl")):
    q = json.loads(line)
    queries_all[q["_id"]] = q["text"]
relevant = {}
with open(os.path.join(a.task, "qrels", f"{a.split}.tsv")) as f:
    r = csv.reader(f, delimiter="\t")
    next(r)
    for qid, did, score in r:
        if int(score) > 0:
            relevant.setdefault(qid, set()).add(did)
queries = {q: t for q, t in queries_all.items() if q in relevant}

torch.set_num_threads(max(1, os.cpu_count() or 1))
model = SparseEncoder(a.model, device="cpu")
model.max_seq_length = a.max_length
ev = SparseInformationRetrievalEvaluator(
    queries=queries, corpus=corpus, relevant_docs=relevant, batch_size=a.batch_size,
    mrr_at_k=[10], ndcg_at_k=[1, 3, 5, 10, 100], accuracy_at_k=[1, 3, 5, 10, 100],
    precision_recall_at_k=[1, 3, 5, 10, 100], map_at_k=[100], write_csv=False, show_progress_bar=False,
)
t = time.perf_counter()
metrics = ev(model)
elapsed = time.perf_counter() - t
out = {"evaluation_seconds": elapsed}
for k, v in metrics.items():
    m = re.match(r"^(?:.*_)?dot_(ndcg|mrr|map|recall|precision|accuracy)@(\d+)$", k)
    if m:
        out[f"{m.group(1)}_at_{m.group(2)}"] = float(v)
    else:
        out[re.sub(r"^.*?_?(query_|corpus_|avg_flops)", r"\1", k)] = float(v)
s = json.dumps(out)
if a.out:
    open(a.out, "w").write(s)
print(s)
