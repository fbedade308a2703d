"""The optimizer parameter groups sentence-transformers' trainer builds for the seed's inference-free SPLADE
(`train_sparse_multidataset.py`: Router.for_query_document with a SparseStaticEmbedding query route and
MLMTransformer + SpladePooling documents; `args.router_mapping` and `args.learning_rate_mapping` from the
config's `router:` section), written as {parameter name: [lr, weight_decay]} with the names of the loss
module's `named_parameters()`, which is what `create_optimizer` matches the patterns against.

  st_param_groups.py --model DIR --patterns '{".*\\.query\\..*": 0.001}' --lr 2e-5 --weight-decay 0.01 --out groups.json
"""
import argparse, json, os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from datasets import Dataset
from sentence_transformers import SparseEncoder
from sentence_transformers.base.modules import Router
from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss
from sentence_transformers.sparse_encoder.modules import MLMTransformer, SparseStaticEmbedding, SpladePooling

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--patterns", required=True)
p.add_argument("--lr", type=float, required=True)
p.add_argument("--weight-decay", type=float, required=True)
p.add_argument("--out", required=True)
a = p.parse_args()

mlm = MLMTransformer(a.model)
pooling = SpladePooling(pooling_strategy="max", word_embedding_dimension=mlm.get_sentence_embedding_dimension())
router = Router.for_query_document(
    query_modules=[SparseStaticEmbedding(tokenizer=mlm.tokenizer, frozen=False)], document_modules=[mlm, pooling]
)
model = SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")
loss = SpladeLoss(model, SparseMultipleNegativesRankingLoss(model), query_regularizer_weight=0, document_regularizer_weight=3e-3)
args = SparseEncoderTrainingArguments(
    output_dir=os.path.join(os.path.dirname(os.path.abspath(a.out)), "st-out"),
    learning_rate=a.lr,
    weight_decay=a.weight_decay,
    router_mapping={"anchor": "query", "positive": "document", "negative": "document"},
    learning_rate_mapping=json.loads(a.patterns),
    report_to="none",
    use_cpu=True,
)
ds = Dataset.from_dict({"anchor": ["a"], "positive": ["b"]})
trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=ds, loss=loss)
trainer.create_optimizer()
names = {id(p): n for n, p in trainer.loss.named_parameters()}
out = {}
for g in trainer.optimizer.param_groups:
    for p_ in g["params"]:
        out[names[id(p_)]] = [g["lr"], g["weight_decay"]]
json.dump(out, open(a.out, "w"), indent=1)
