"""Times sentence-transformers 6.2's SparseEncoderTrainer (SpladeLoss + sparse MNRL) on NorQuAD pairs.

Prints {"samples_per_s" (steady state: first step excluded), "peak_rss_mb", "steps"} as JSON.

Remote-code models (NorBERT3, GPT-BERT: a config.json with `auto_map`) load with trust_remote_code and
the transformers-5 shims of shared/reference/remote-code/make_tiny.py (imported, not copied), as
st_train_replay.py loads them. NorBERT3's head sets ids < 107 to -inf, which SpladePooling turns into NaN
on padded rows; as in st_train_replay.py the MLM output is clamped to the most negative finite float
(one more [B, T, V] tensor on ST's side, the least ST needs to train this model at all).
"""
import argparse, gzip, json, os, resource, sys, time

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


def transformer_dir(folder):
    modules = os.path.join(folder, "modules.json")
    if os.path.exists(modules):
        for m in json.load(open(modules)):
            if m["type"].endswith("MLMTransformer") or m["type"].endswith(".Transformer"):
                return os.path.join(folder, m["path"])
    return folder


cfg = json.load(open(os.path.join(transformer_dir(a.model), "config.json")))
arch = (cfg.get("architectures") or [""])[0]
load_kwargs = {}
if "auto_map" in cfg:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.environ.get("SPLADE_REMOTE_CODE_DIR", os.path.join(os.path.dirname(repo), "shared", "reference", "remote-code")))
    import make_tiny  # the transformers-5 shims (importing it also pins torch to one thread: undone below)

    (make_tiny.load_norbert3 if arch.startswith("Norbert") else make_tiny.load_gptbert)(transformer_dir(a.model))
    load_kwargs = {"trust_remote_code": True}
    torch.set_num_threads(os.cpu_count() or 1)
model = SparseEncoder(a.model, device="cpu", **load_kwargs)
if arch.startswith("Norbert"):
    def finite_logits(module, inputs, output):
        te = output["token_embeddings"]
        output["token_embeddings"] = te.clamp(min=torch.finfo(te.dtype).min)
        return output

    model[0].register_forward_hook(finite_logits)
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
    "threads": torch.get_num_threads(),
    "samples_per_s": a.batch_size * len(steady) / sum(steady),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "steps": len(times),
}))
