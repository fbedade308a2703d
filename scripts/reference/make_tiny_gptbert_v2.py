"""Build `tiny-gptbert-v2`: a tiny random GPT-BERT with the later upstream layer variant
(`lambdas_v/qk/mlp/out`, no value residual), for the Rust GPT-BERT parity tests.

    make_tiny_gptbert_v2.py [--out DIR]     (default $SPLADE_CACHE/models/tiny-gptbert-v2)

It is built the way ../shared/reference/remote-code/make_tiny.py builds tiny-gptbert-v1 (whose functions
and constants it imports, not copies): the same tiny config (vocab 300, H 64, 4 layers, local window 4,
global 64), the same tokenizer (retrained from the repository's NorQuAD copy and checked byte-identical to
tiny-gptbert-v1's `tokenizer.json`), transformers-5 shims 3 and 4, then every parameter re-randomised with a
fixed seed, `save_pretrained`, and the upstream v2 `.py` files copied next to it. The reloaded model is
checked to give bit-identical logits to the in-memory one.

Deterministic (one CPU thread, fixed seeds) and idempotent: a folder whose `.made-by` stamp holds the
sha256 of this script, make_tiny.py and the v2 code is left as it is; anything else is rebuilt into a
temporary sibling and moved into place.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def remote_code_dir() -> str:
    env = os.environ.get("SPLADE_REMOTE_CODE_DIR")
    if env:
        return env
    return os.path.join(os.path.dirname(REPO), "shared", "reference", "remote-code")


RC = remote_code_dir()
sys.path.insert(0, RC)
import make_tiny  # noqa: E402  (sets offline mode, a private module cache, one thread)
import torch  # noqa: E402

SEED_V2 = 5  # make_tiny uses 4 for tiny-gptbert-v1
CODE_FILES = ["configuration_gptbert.py", "modeling_gptbert.py"]
STAMP = ".made-by"


def stamp() -> str:
    h = hashlib.sha256()
    for path in [os.path.abspath(__file__), os.path.join(RC, "make_tiny.py")] + [
        os.path.join(RC, "gptbert-v2", n) for n in CODE_FILES
    ]:
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def randomize_v2(model: torch.nn.Module, seed: int) -> list[str]:
    """make_tiny.rerandomize knows only v1's layer lambdas. The four v2 lambda vectors are taken out of the
    parameter list while it visits everything else, then drawn here from the same generator family: entries
    whose default is 1 from U(0.5, 1.5), entries whose default is 0 from U(-0.45, 0.45) (a sign, so the
    `mean(|λ|)` normalisation is exercised)."""
    names = ["lambdas_v", "lambdas_qk", "lambdas_mlp", "lambdas_out"]
    held = []
    for lname, layer in enumerate(model.encoder.layers):
        for n in names:
            held.append((lname, layer, n, layer._parameters.pop(n)))
    done = make_tiny.rerandomize(model, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for i, layer, n, p in held:
            default_one = p.detach() == 1.0
            u = torch.rand(p.shape, generator=g)
            p.copy_(torch.where(default_one, 0.5 + u, -0.45 + 0.9 * u))
            layer._parameters[n] = p
            done.append(f"encoder.layers.{i}.{n}")
    return done


def build(folder: str) -> None:
    os.makedirs(folder)
    make_tiny.copy_code(os.path.join(RC, "gptbert-v2"), folder, CODE_FILES)
    raw_tok = make_tiny.build_tokenizer(os.path.join(REPO, "data", "norquad"))
    make_tiny.save_hf_tokenizer(raw_tok, folder, make_tiny.GPTBERT_SPECIAL_MAP,
                                model_max_length=make_tiny.GPTBERT_CONFIG["max_sequence_length"])
    with open(os.path.join(folder, "tokenizer.json"), "rb") as a, \
            open(os.path.join(RC, "tiny-gptbert-v1", "tokenizer.json"), "rb") as b:
        assert a.read() == b.read(), "the retrained tokenizer differs from tiny-gptbert-v1's"

    model_cls = make_tiny.load_gptbert(folder)
    config_cls = make_tiny.load_remote_class(folder, "configuration_gptbert.GptBertConfig")
    config = config_cls(**make_tiny.GPTBERT_CONFIG)
    config.architectures = ["GptBertForMaskedLM"]
    config.auto_map = dict(make_tiny.GPTBERT_AUTO_MAP)
    torch.manual_seed(SEED_V2)
    model = model_cls(config).eval()
    assert hasattr(model.encoder.layers[0], "lambdas_v"), "not the v2 modeling code"
    assert model.classifier.emb2vocab.weight is not model.embedding.word_embedding.weight
    randomize_v2(model, SEED_V2)
    model.save_pretrained(folder)

    from transformers import AutoModelForMaskedLM

    ids, mask, _ = make_tiny.tokenize(folder, make_tiny.TEXTS, make_tiny.GPTBERT_CONFIG["max_sequence_length"])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        m = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
        after = m(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(after).all(), "non-finite logits after reload"
    assert torch.equal(before, after), f"reload changed the logits by {(before - after).abs().max().item()}"


def main() -> None:
    cache = os.environ.get("SPLADE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "splade")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(cache, "models", "tiny-gptbert-v2"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    want = stamp()
    try:
        with open(os.path.join(out, STAMP)) as f:
            if f.read().strip() == want:
                print(f"{out}: up to date")
                return
    except OSError:
        pass
    tmp = out + "-building"
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    with open(os.path.join(tmp, STAMP), "w") as f:
        f.write(want + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"{out}: built")


if __name__ == "__main__":
    main()
