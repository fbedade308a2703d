"""A stand-in for an MTEB retrieval dataset repo, and the same data as a BEIR folder.

  mteb_fixture.py --norquad DIR --repo OUT_REPO --beir OUT_BEIR

OUT_REPO: MTEB's retrieval layout (README `configs:` corpus, queries, default (qrels), split `test`, Parquet with
the columns MTEB's v2 datasets have: corpus `_id title text`, queries `_id text`, qrels `query-id corpus-id
score`), cut from NorQuAD. OUT_BEIR: the same rows as corpus.jsonl, queries.jsonl, qrels/test.tsv.
mteb itself cannot read the repo offline: `mteb` loads tasks with `datasets.load_dataset(path, revision=...)`,
which under HF_HUB_OFFLINE reads only datasets' own Arrow cache, never the hub cache.
"""

import argparse
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

p = argparse.ArgumentParser()
p.add_argument("--norquad", required=True)
p.add_argument("--repo", required=True)
p.add_argument("--beir", required=True)
a = p.parse_args()

corpus = [json.loads(l) for l in open(os.path.join(a.norquad, "corpus.jsonl"))][:40]
ids = {d["_id"] for d in corpus}
queries = {j["_id"]: j for j in map(json.loads, open(os.path.join(a.norquad, "queries.jsonl")))}
qrels = [l.rstrip("\n").split("\t")[:2] for l in open(os.path.join(a.norquad, "qrels/dev.tsv")).readlines()[1:]]
qrels = [(q, d) for q, d in qrels if d in ids][:15]
qids = sorted({q for q, _ in qrels})
tables = {
    "corpus": {"_id": [d["_id"] for d in corpus], "title": [d.get("title", "") for d in corpus], "text": [d["text"][:400] for d in corpus]},
    "queries": {"_id": qids, "text": [queries[q]["text"] for q in qids]},
    "default": {"query-id": [q for q, _ in qrels], "corpus-id": [d for _, d in qrels], "score": [1] * len(qrels)},
}
readme = ["---", "configs:"]
for cfg, cols in tables.items():
    os.makedirs(os.path.join(a.repo, cfg), exist_ok=True)
    pq.write_table(pa.table(cols), os.path.join(a.repo, cfg, "test-00000-of-00001.parquet"))
    readme += [f"- config_name: {cfg}", "  data_files:", "  - split: test", f"    path: {cfg}/test-*.parquet"]
open(os.path.join(a.repo, "README.md"), "w").write("\n".join(readme + ["---", ""]))
os.makedirs(os.path.join(a.beir, "qrels"), exist_ok=True)
with open(os.path.join(a.beir, "corpus.jsonl"), "w") as f:
    for i, t, x in zip(*tables["corpus"].values()):
        f.write(json.dumps({"_id": i, "title": t, "text": x}) + "\n")
with open(os.path.join(a.beir, "queries.jsonl"), "w") as f:
    for i, x in zip(*tables["queries"].values()):
        f.write(json.dumps({"_id": i, "text": x}) + "\n")
with open(os.path.join(a.beir, "qrels/test.tsv"), "w") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    for q, d in qrels:
        f.write(f"{q}\t{d}\t1\n")
print(json.dumps({"queries": len(qids), "docs": len(corpus)}))
