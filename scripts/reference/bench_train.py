"""Times sentence-transformers 6.2's SparseEncoderTrainer (SpladeLoss + sparse MNRL) on NorQuAD pairs.

Prints {"samples_per_s" (steady state: first step excluded), "peak_rss_mb", "steps"} as JSON.
"""
import argparse, gzip, json, os, resource, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from datasets import Dataset
from sentence_transformers import SparseEncoder
from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss
from transformers import TrainerCallback

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--data", required=True)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--max-length", type=int, default=256)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--batch-sampler", default="no_duplicates", choices=["no_duplicates", "batch_sampler"])
p.add_argument("--out-dir", default="/tmp/st-bench")
a = p.parse_args()
torch.set_num_threads(os.cpu_count() or 1)
rows = [json.loads(l) for l in gzip.open(a.data, "rt") if l.strip()]
ds = Dataset.from_dict({"anchor": [r["anchor"] for r in rows], "positive": [r["positive"] for r in rows]})
model = SparseEncoder(a.model, device="cpu")
model.max_seq_length = a.max_length
loss = SpladeLoss(model, SparseMultipleNegativesRankingLoss(model), query_regularizer_weight=5e-3, document_regularizer_weight=3e-3)
times = []


class Timer(TrainerCallback):
    def on_step_begin(self, *args, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, *args, **kw):
        times.append(time.perf_counter() - self.t)


args = SparseEncoderTrainingArguments(
    output_dir=a.out_dir, max_steps=a.steps, per_device_train_batch_size=a.batch_size, learning_rate=2e-5,
    logging_steps=1000, save_strategy="no", report_to="none", use_cpu=True, batch_sampler=a.batch_sampler,
)
SparseEncoderTrainer(model=model, args=args, train_dataset=ds, loss=loss, callbacks=[Timer()]).train()
steady = times[1:] or times
print(json.dumps({
    "samples_per_s": a.batch_size * len(steady) / sum(steady),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "steps": len(times),
}))
