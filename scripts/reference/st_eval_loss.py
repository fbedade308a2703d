"""eval_loss of sentence-transformers' SparseEncoderTrainer.evaluate() on dev rows, and the model card check.

  st_eval_loss.py --model DIR --dev dev.jsonl --batch-size 8 --q-weight 5e-3 --d-weight 3e-3 --max-length 64

Loads the saved folder DIR (which holds our README.md model card: loading it with the card present is part of the
check), builds SpladeLoss(SparseMultipleNegativesRankingLoss) with the given regulariser weights (the
weights our run used at its evaluation step) and evaluates the dev rows (JSONL with `anchor`, `positive`) with
`per_device_eval_batch_size` = --batch-size. Prints {"eval_loss": ...} as JSON.
"""

import argparse
import json
import tempfile

import torch
from datasets import Dataset
from sentence_transformers import SparseEncoder
from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--dev", required=True)
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--q-weight", type=float, required=True)
p.add_argument("--d-weight", type=float, required=True)
p.add_argument("--max-length", type=int, default=64)
a = p.parse_args()

rows = [json.loads(l) for l in open(a.dev) if l.strip()]
ds = Dataset.from_dict({"anchor": [r["anchor"] for r in rows], "positive": [r["positive"] for r in rows]})
model = SparseEncoder(a.model, device="cpu")
model.max_seq_length = a.max_length
loss = SpladeLoss(
    model,
    SparseMultipleNegativesRankingLoss(model),
    query_regularizer_weight=a.q_weight,
    document_regularizer_weight=a.d_weight,
)
with tempfile.TemporaryDirectory() as out:
    args = SparseEncoderTrainingArguments(output_dir=out, per_device_eval_batch_size=a.batch_size, report_to=[], use_cpu=True)
    trainer = SparseEncoderTrainer(model=model, args=args, eval_dataset=ds, loss=loss)
    metrics = trainer.evaluate()
print(json.dumps({"eval_loss": metrics["eval_loss"], "rows": len(rows), "torch": torch.__version__}))
