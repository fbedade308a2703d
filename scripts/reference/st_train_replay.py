"""Trains with sentence-transformers 6.2's SparseEncoderTrainer on a batch plan dumped by
`splade train --dump-batches`, recording the exact loss parts, learning rate and regulariser
weights of every step (SpladeLoss + SparseMultipleNegativesRankingLoss, fp32, CPU, dropout 0).

  st_train_replay.py --model DIR --data train.jsonl[.gz] --plan plan.jsonl --out steps.json
      --batch-size 16 --max-steps 30 --lr 1e-4 --warmup-ratio 0.1 --q-weight 5e-3 --d-weight 3e-3 --max-length 64
      [--inference-free --q-lr 1e-2] [--csr --beta 0.1 --gamma 1.0]

--inference-free builds the documented inference-free model from --model: a Router whose query route
is a fresh SparseStaticEmbedding (all ones) over the MLM's tokenizer and whose document route is the
MLM + SpladePooling; router_mapping sends `anchor` to the query route, and learning_rate_mapping
trains the static table (parameter `0.sub_modules.query.0.weight`) at --q-lr.

--csr trains --model, a CSR SparseEncoder folder (Transformer, Pooling, SparseAutoEncoder), with
CSRLoss(model, SparseMultipleNegativesRankingLoss(model), beta, gamma) and records its parts
(base_loss as `ranking`, reconstruction_loss_k / _4k / _aux) and the SparseAutoEncoder's dead-latent
counters after each step's loss (`dead_latents`: stats_last_nonzero > dead_threshold, `stats_sum`).

Remote-code models (NorBERT3, GPT-BERT: a config.json with `auto_map`) load with trust_remote_code
and the transformers-5 shims of shared/reference/remote-code/make_tiny.py (imported, not copied),
applied before sentence-transformers loads the class. NorBERT3's head sets ids < 107 to -inf and
SpladePooling multiplies the logits by the mask before its relu, so every padded row would be NaN;
the MLM's output is clamped to the most negative finite float first, which gives exactly the
intended values (padding and suppressed ids pool to 0) and leaves every other logit as it is.
"""
import argparse, gzip, json, os, sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from datasets import Dataset
from sentence_transformers import SparseEncoder
from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss
from transformers import TrainerCallback

p = argparse.ArgumentParser()
for k in ["model", "data", "plan", "out"]:
    p.add_argument(f"--{k}", required=True)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--max-steps", type=int, default=30)
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--warmup-ratio", type=float, default=0.1)
p.add_argument("--q-weight", type=float, default=5e-3)
p.add_argument("--d-weight", type=float, default=3e-3)
p.add_argument("--max-length", type=int, default=64)
p.add_argument("--inference-free", action="store_true")
p.add_argument("--q-lr", type=float, default=None)
p.add_argument("--csr", action="store_true")
p.add_argument("--beta", type=float, default=0.1)
p.add_argument("--gamma", type=float, default=1.0)
a = p.parse_args()

torch.manual_seed(0)
opener = gzip.open if a.data.endswith(".gz") else open
rows = [json.loads(l) for l in opener(a.data, "rt") if l.strip()]
ds = Dataset.from_dict({"anchor": [r["anchor"] for r in rows], "positive": [r["positive"] for r in rows]})
plan = [json.loads(l)["rows"] for l in open(a.plan) if l.strip()][: a.max_steps]

def transformer_dir(folder):
    modules = os.path.join(folder, "modules.json")
    if os.path.exists(modules):
        for m in json.load(open(modules)):
            if m["type"].endswith("MLMTransformer") or m["type"].endswith(".Transformer"):
                return os.path.join(folder, m["path"])
    return folder


tdir = transformer_dir(a.model)
remote = "auto_map" in json.load(open(os.path.join(tdir, "config.json")))
load_kwargs = {}
if remote:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.environ.get("SPLADE_REMOTE_CODE_DIR", os.path.join(os.path.dirname(repo), "shared", "reference", "remote-code")))
    import make_tiny  # the transformers-5 shims

    arch = json.load(open(os.path.join(tdir, "config.json")))["architectures"][0]
    (make_tiny.load_norbert3 if arch.startswith("Norbert") else make_tiny.load_gptbert)(tdir)
    load_kwargs = {"trust_remote_code": True}
config_kwargs = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
model = SparseEncoder(a.model, device="cpu", config_kwargs=config_kwargs, **load_kwargs)


def finite_logits(module, inputs, output):
    te = output["token_embeddings"]
    output["token_embeddings"] = te.clamp(min=torch.finfo(te.dtype).min)
    return output


model[0].register_forward_hook(finite_logits)
for m in model.modules():
    if isinstance(m, torch.nn.Dropout):
        m.p = 0.0
model.max_seq_length = a.max_length
extra_args = {}
if a.inference_free:
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding

    mlm, pooling = model[0], model[1]
    router = Router.for_query_document(
        query_modules=[SparseStaticEmbedding(tokenizer=mlm.tokenizer, frozen=False)], document_modules=[mlm, pooling]
    )
    model = SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")
    extra_args["router_mapping"] = {"anchor": "query", "positive": "document"}
    extra_args["learning_rate_mapping"] = {r"sub_modules\.query\.0\.weight": a.q_lr if a.q_lr is not None else a.lr}

records = []


class RecordingSpladeLoss(SpladeLoss):
    def forward(self, sentence_features, labels=None):
        out = super().forward(sentence_features, labels)
        records.append(
            {
                "ranking": float(out["base_loss"].detach()),
                "flops_document": float(out["document_regularizer_loss"].detach()),
                "flops_query": float(out["query_regularizer_loss"].detach()),
                "query_weight": float(self.query_regularizer_weight),
                "document_weight": float(self.document_regularizer_weight),
            }
        )
        return out


loss = RecordingSpladeLoss(
    model, SparseMultipleNegativesRankingLoss(model), query_regularizer_weight=a.q_weight, document_regularizer_weight=a.d_weight
)
if a.csr:
    from sentence_transformers.sparse_encoder.losses import CSRLoss

    class RecordingCSRLoss(CSRLoss):
        def forward(self, sentence_features, labels=None):
            out = super().forward(sentence_features, labels)
            sae = next(m for m in self.model.modules() if type(m).__name__ == "SparseAutoEncoder")
            stats = sae.stats_last_nonzero
            records.append(
                {
                    "ranking": float(out["base_loss"].detach()),
                    "reconstruction_k": float(out["reconstruction_loss_k"].detach()),
                    "reconstruction_4k": float(out["reconstruction_loss_4k"].detach()),
                    "reconstruction_aux": float(out["reconstruction_loss_aux"].detach()),
                    "dead_latents": int((stats > sae.dead_threshold).sum()),
                    "stats_sum": int(stats.sum()),
                    "flops_document": 0.0,
                    "flops_query": 0.0,
                    "query_weight": 0.0,
                    "document_weight": 0.0,
                }
            )
            return out

    loss = RecordingCSRLoss(model, SparseMultipleNegativesRankingLoss(model), beta=a.beta, gamma=a.gamma)
lrs = []


class LrRecorder(TrainerCallback):
    def on_step_begin(self, args, state, control, lr_scheduler=None, **kw):
        lrs.append(float(lr_scheduler.get_last_lr()[0]))


class ReplaySampler:
    def __iter__(self):
        return iter(plan)

    def __len__(self):
        return len(plan)


class ReplayTrainer(SparseEncoderTrainer):
    def get_batch_sampler(self, *args, **kwargs):
        return ReplaySampler()


args = SparseEncoderTrainingArguments(
    output_dir=os.path.join(os.path.dirname(a.out), "st-out"),
    max_steps=a.max_steps,
    per_device_train_batch_size=a.batch_size,
    learning_rate=a.lr,
    warmup_ratio=a.warmup_ratio,
    weight_decay=0.0,
    max_grad_norm=1.0,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    seed=42,
    dataloader_drop_last=False,
    use_cpu=True,
    **extra_args,
)
trainer = ReplayTrainer(model=model, args=args, train_dataset=ds, loss=loss, callbacks=[LrRecorder()])
trainer.train()
steps = [dict(r, step=i + 1, learning_rate=lrs[i]) for i, r in enumerate(records)]
json.dump(steps, open(a.out, "w"))
