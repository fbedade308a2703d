"""Times sentence-transformers' encode_document on a JSONL corpus (title + " " + text), like `splade encode`."""
import argparse, json, os, resource, sys, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from sentence_transformers import SparseEncoder

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--corpus", required=True)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--max-length", type=int, default=256)
a = p.parse_args()
docs = [json.loads(l) for l in open(a.corpus) if l.strip()]
texts = [(d.get("title", "") + " " + d["text"]).strip() for d in docs]
model = SparseEncoder(a.model, device="cpu")
model.max_seq_length = a.max_length
model.encode_document(texts[:8], batch_size=a.batch_size)  # warm-up
t = time.perf_counter()
with torch.no_grad():
    model.encode_document(texts, batch_size=a.batch_size)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"texts": len(texts), "seconds": dt, "texts_per_s": len(texts) / dt, "peak_rss_mb": rss}))
