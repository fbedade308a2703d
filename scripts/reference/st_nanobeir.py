"""sentence-transformers' SparseNanoBEIREvaluator on Parquet files, fed through its dataset-loading hook.

  st_nanobeir.py make-fixture --norquad DIR --out DIR      writes a NanoBEIR-shaped repo (README configs + Parquet)
  st_nanobeir.py evaluate --model DIR --snapshot DIR --names msmarco nfcorpus [--batch-size 8]

`make-fixture`: two small datasets (NanoMSMARCO, NanoNFCorpus) cut from NorQuAD in the layout of
sentence-transformers/NanoBEIR-en (configs corpus/queries/qrels, one split per dataset). `evaluate`: the evaluator
with `_load_dataset_subset_split` reading `<snapshot>/<subset>/<split>-*.parquet` with
`datasets.load_dataset("parquet", ...)`; prints its metrics as JSON.
"""

import argparse
import glob
import json
import os

p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd", required=True)
m = sub.add_parser("make-fixture")
m.add_argument("--norquad", required=True)
m.add_argument("--out", required=True)
e = sub.add_parser("evaluate")
e.add_argument("--model", required=True)
e.add_argument("--snapshot", required=True)
e.add_argument("--names", nargs="+", required=True)
e.add_argument("--batch-size", type=int, default=8)
a = p.parse_args()

if a.cmd == "make-fixture":
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = {j["_id"]: j for j in map(json.loads, open(os.path.join(a.norquad, "corpus.jsonl")))}
    queries = {j["_id"]: j for j in map(json.loads, open(os.path.join(a.norquad, "queries.jsonl")))}
    qrels = [l.rstrip("\n").split("\t")[:2] for l in open(os.path.join(a.norquad, "qrels/dev.tsv")).readlines()[1:]]
    seen, pairs = set(), []
    for q, d in qrels:
        if d not in seen:
            seen.add(d)
            pairs.append((q, d))
    doc_ids = list(corpus)
    readme = ["---", "configs:"]
    for cfg in ["corpus", "queries", "qrels"]:
        readme += [f"- config_name: {cfg}", "  data_files:"]
        for split in ["NanoMSMARCO", "NanoNFCorpus"]:
            readme += [f"  - split: {split}", f"    path: {cfg}/{split}-00000-of-00001.parquet"]
    readme.append("---")
    os.makedirs(a.out, exist_ok=True)
    open(os.path.join(a.out, "README.md"), "w").write("\n".join(readme) + "\n")
    for split, chunk in [("NanoMSMARCO", pairs[:8]), ("NanoNFCorpus", pairs[8:16])]:
        docs = [d for _, d in chunk] + [d for d in doc_ids[40:52] if d not in {x for _, x in chunk}]
        tables = {
            "corpus": {"_id": docs, "text": [corpus[d]["text"][:300] for d in docs]},
            "queries": {"_id": [q for q, _ in chunk], "text": [queries[q]["text"] for q, _ in chunk]},
            "qrels": {"query-id": [q for q, _ in chunk], "corpus-id": [d for _, d in chunk]},
        }
        for cfg, cols in tables.items():
            os.makedirs(os.path.join(a.out, cfg), exist_ok=True)
            pq.write_table(pa.table(cols), os.path.join(a.out, cfg, f"{split}-00000-of-00001.parquet"))
    print(json.dumps({"ok": True}))
else:
    from datasets import load_dataset
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.evaluation import SparseNanoBEIREvaluator

    class FromFiles(SparseNanoBEIREvaluator):
        def _load_dataset_subset_split(self, subset, split, required_columns):
            files = sorted(glob.glob(os.path.join(a.snapshot, subset, f"{split}-*.parquet")))
            assert files, (subset, split)
            return load_dataset("parquet", data_files={"rows": files}, split="rows")

    model = SparseEncoder(a.model, device="cpu")
    ev = FromFiles(dataset_names=a.names, batch_size=a.batch_size, write_csv=False)
    print(json.dumps({k: float(v) for k, v in ev(model).items()}))
