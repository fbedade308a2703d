"""Random-weight base models in the shapes of real checkpoints, for the benchmarks of issue 14
(scripts/bench/train.sh, scripts/bench/max-batch.sh). Never committed; cached outside the repository.

    make_bench_models.py NAME [--out DIR]      (DIR defaults to $SPLADE_CACHE/bench-models; prints DIR/NAME)

NAME:
- norbert3-xs: NorbertForMaskedLM (norbench's reference code) in the shape of ltg/norbert3-xs: hidden 192,
  12 layers, 3 heads, intermediate 512, vocabulary 50 000, max_position_embeddings 512, bucket 32.
- norbert4-6l: GptBertForMaskedLM (NorBERT @ 92800a5, the v1 layer variant of ltg/norbert4-base) with
  remote-code/gptbert-v1/config.json's sizes (hidden 640, intermediate 1664, 10 heads of 64, vocabulary
  51 200, max_sequence_length 16 384) cut to 6 layers, its `modeling_gptbert.py` with the MaskedLM head's
  `30·sigmoid(x/7.5)` removed as the seed's `patch_norbert4_for_splade.py` writes it (the seed trains the
  patched head; `splade train` detects the patch from the file and runs the same head).
- xlmr-base: XLMRobertaForMaskedLM (transformers 5.24) in the shape of xlm-roberta-base: hidden 768,
  12 layers, 12 heads, intermediate 3072, vocabulary 250 002, max_position_embeddings 514.

Tokenizers: none of these has its real tokenizer offline, and a 50k-piece tokenizer cannot be trained
on NorQuAD. So each folder carries the small tokenizer its tiny test model uses (imported, not copied):
make_tiny.py's 300-piece LTG WordPiece for NorBERT3/4 (special ids [UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3
[MASK]=4, written into the config), make_tiny_native.py's 700-piece Unigram for XLM-R, and config.json's
`vocab_size` is the real model's, larger than the tokenizer. Every layer, the embedding table and the
vocabulary projection have the real shapes, so the compute and the memory are the real model's; only
the ids that occur are < 300 (< 700), and texts tokenize into more pieces than with the real tokenizer
(passages fill max length 256; queries are about 3x longer than with a 50k vocabulary).

Weights: every parameter random with a fixed seed (make_tiny.rerandomize for the remote-code models,
make_tiny_native.randomise for XLM-R). Deterministic, one torch thread. Idempotent: a folder whose
`.stamp` holds the hash of this script and of the code it uses is left alone, otherwise it is rebuilt in a
temporary sibling and moved into place. Runs in the reference venv (torch 2.11, transformers 5.24).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RC = os.environ.get("SPLADE_REMOTE_CODE_DIR") or os.path.join(os.path.dirname(REPO), "shared", "reference", "remote-code")
sys.path.insert(0, RC)
sys.path.insert(0, HERE)
import make_tiny  # noqa: E402  (the transformers-5 shims and tokenizer helpers; sets offline mode, one thread)
import torch  # noqa: E402

DATA = os.path.join(REPO, "data", "norquad")
SEEDS = {"norbert3-xs": 31, "norbert4-6l": 41, "xlmr-base": 51}

NORBERT3_XS = dict(
    vocab_size=50000, hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=512,
    max_position_embeddings=512, position_bucket_size=32, layer_norm_eps=1e-7,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    pad_token_id=3, bos_token_id=1, eos_token_id=2,
)
NORBERT4_LAYERS = 6

# The seed's patch of GptBertForMaskedLM.forward (the same text `splade train` writes into saved folders).
GPTBERT_SIGMOID_BLOCK = (
    "        subword_prediction = self.classifier(sequence_output)\n"
    "        subword_prediction = 30 * torch.sigmoid(subword_prediction / 7.5)\n"
)
GPTBERT_PATCHED_BLOCK = (
    "        subword_prediction = self.classifier(sequence_output)\n"
    "        # PATCHED for SPLADE: removed `30 * sigmoid(x/7.5)` activation.\n"
    "        # Raw logits (unbounded, can be negative) are needed for SPLADE's\n"
    "        # ReLU(log(1+exp(logits))) to produce sparse vectors.\n"
)


def build_norbert3(folder: str) -> None:
    make_tiny.copy_code(os.path.join(RC, "norbert3"), folder, ["configuration_norbert.py", "modeling_norbert.py"])
    make_tiny.save_hf_tokenizer(make_tiny.build_tokenizer(DATA), folder, make_tiny.NORBERT3_SPECIAL_MAP,
                                model_max_length=NORBERT3_XS["max_position_embeddings"])
    model_cls = make_tiny.load_norbert3(folder)
    config = make_tiny.load_remote_class(folder, "configuration_norbert.NorbertConfig")(**NORBERT3_XS)
    config.architectures = ["NorbertForMaskedLM"]
    config.auto_map = dict(make_tiny.NORBERT3_AUTO_MAP)
    torch.manual_seed(SEEDS["norbert3-xs"])
    model = model_cls(config).eval()
    make_tiny.rerandomize(model, SEEDS["norbert3-xs"])
    model.save_pretrained(folder)


def build_norbert4(folder: str) -> None:
    code_dir = os.path.join(RC, "gptbert-v1")
    make_tiny.copy_code(code_dir, folder, ["configuration_gptbert.py"])
    with open(os.path.join(code_dir, "modeling_gptbert.py"), encoding="utf-8") as f:
        code = f.read()
    assert GPTBERT_SIGMOID_BLOCK in code, "gptbert-v1/modeling_gptbert.py: the MaskedLM sigmoid block moved"
    with open(os.path.join(folder, "modeling_gptbert.py"), "w", encoding="utf-8") as f:
        f.write(code.replace(GPTBERT_SIGMOID_BLOCK, GPTBERT_PATCHED_BLOCK, 1))
    with open(os.path.join(code_dir, "config.json"), encoding="utf-8") as f:
        upstream = json.load(f)
    kw = {k: v for k, v in upstream.items() if k not in ("architectures", "auto_map")}
    ids = {k: make_tiny.GPTBERT_CONFIG[k] for k in ("unk_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id")}
    kw.update(ids, num_layers=NORBERT4_LAYERS, is_decoder=False)  # is_decoder: make_tiny's config-level shim
    make_tiny.save_hf_tokenizer(make_tiny.build_tokenizer(DATA), folder, make_tiny.GPTBERT_SPECIAL_MAP, model_max_length=512)
    model_cls = make_tiny.load_gptbert(folder)
    config = make_tiny.load_remote_class(folder, "configuration_gptbert.GptBertConfig")(**kw)
    config.architectures = ["GptBertForMaskedLM"]
    config.auto_map = dict(upstream["auto_map"])
    torch.manual_seed(SEEDS["norbert4-6l"])
    model = model_cls(config).eval()
    make_tiny.rerandomize(model, SEEDS["norbert4-6l"])
    model.save_pretrained(folder)


def build_xlmr(folder: str) -> None:
    import make_tiny_native
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    tok = make_tiny_native.xlmr_tokenizer(make_tiny_native.training_texts(DATA))
    tok.model_max_length = 512
    cfg = XLMRobertaConfig(
        vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=514,
        type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, architectures=["XLMRobertaForMaskedLM"],
    )
    torch.manual_seed(SEEDS["xlmr-base"])
    model = XLMRobertaForMaskedLM(cfg).eval()
    make_tiny_native.randomise(model, SEEDS["xlmr-base"])
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


BUILDERS = {"norbert3-xs": build_norbert3, "norbert4-6l": build_norbert4, "xlmr-base": build_xlmr}


def stamp() -> str:
    h = hashlib.sha256()
    for path in [os.path.abspath(__file__), os.path.join(RC, "make_tiny.py"), os.path.join(HERE, "make_tiny_native.py")]:
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    import transformers

    h.update(f"{torch.__version__} {transformers.__version__}".encode())
    return h.hexdigest()


def main() -> None:
    cache = os.environ.get("SPLADE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "splade")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name", choices=sorted(BUILDERS))
    ap.add_argument("--out", default=os.path.join(cache, "bench-models"))
    args = ap.parse_args()
    dest = os.path.join(os.path.abspath(args.out), args.name)
    want = stamp()
    try:
        with open(os.path.join(dest, ".stamp")) as f:
            if f.read() == want:
                print(dest)
                return
    except OSError:
        pass
    tmp = dest + ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        BUILDERS[args.name](tmp)
        with open(os.path.join(tmp, ".stamp"), "w") as f:
            f.write(want)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(dest)


if __name__ == "__main__":
    main()
