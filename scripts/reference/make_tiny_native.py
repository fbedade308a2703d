"""Tiny random XLMRobertaForMaskedLM and ModernBertForMaskedLM folders for the native-architecture parity tests.

    make_tiny_native.py [--out DIR] [--data data/norquad]

Writes DIR/tiny-xlmr, DIR/tiny-modernbert and DIR/tiny-modernbert-legacy (DIR defaults to $SPLADE_CACHE/models), each a
`save_pretrained` folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) that
`AutoModelForMaskedLM` / `AutoTokenizer` load offline. Run it in the reference venv (transformers 5.24,
tokenizers 0.23, torch 2.11).

Deterministic: fixed seeds, one torch thread, one tokenizers thread, tokenizers trained on a fixed
slice of NorQuAD. Idempotent: a folder whose `.stamp` holds this script's hash and the library
versions is left alone; otherwise it is rebuilt in a temporary folder and moved into place.

What the models exercise:
- tiny-xlmr: a SentencePiece-style Unigram tokenizer (`<s> <pad> </s> <unk>` = ids 0..3, `<mask>`
  last, as XLM-R), pad id 1 so position ids start at 2, `max_position_embeddings` 130 (128 usable).
- tiny-modernbert: a byte-level BPE tokenizer with `[CLS] … [SEP]` and special tokens after the
  merges (non-zero pad id, as ModernBERT), a vocabulary padded past the tokenizer to a multiple of 64
  (as ModernBERT-base), a local window of 16 (|i - j| <= 8) far below the test texts' lengths and a
  global layer every 2, different local and global RoPE thetas, attention and head biases on but MLP
  and norm biases off (so both paths of the bias switches run).
- tiny-modernbert-legacy: ModernBERT-base's switches (no biases but the decoder's, no dropout) and
  the Hub's older config.json keys, with non-default RoPE thetas and a global layer every 3.
Every parameter, LayerNorm weights and biases included, is drawn at random (see `randomise`) so an
identity norm or a zero bias cannot hide a bug.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

torch.set_num_threads(1)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
N_PASSAGES = 150  # first passages of corpus.jsonl (+ every query) train the tokenizers
SEED_XLMR = 1234
SEED_MODERNBERT = 4321


def stamp_text() -> str:
    with open(os.path.abspath(__file__), "rb") as f:
        script = hashlib.sha256(f.read()).hexdigest()
    return json.dumps(
        {"script": script, "torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        sort_keys=True,
    )


def training_texts(data: str) -> list[str]:
    out = []
    with open(os.path.join(data, "queries.jsonl"), encoding="utf-8") as f:
        out += [json.loads(line)["text"] for line in f if line.strip()]
    with open(os.path.join(data, "corpus.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= N_PASSAGES:
                break
            row = json.loads(line)
            out.append(f"{row['title']} {row['text']}")
    return out


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter at random with O(1) activations: matrices (embeddings included) N(0, 1/fan_in),
    LayerNorm weights 1 + N(0, 0.3²), biases N(0, 0.1²), except the vocabulary bias, N(-2.5, 0.1²), which
    with the logits' unit scale leaves most SPLADE entries at zero, as in a trained model (so the lean
    head's screening has something to skip). Tied parameters are drawn once."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if name in ("lm_head.bias", "decoder.bias"):
            p.copy_(-2.5 + 0.1 * noise)
        elif "norm" in name.lower() and name.endswith("weight"):
            p.copy_(1.0 + 0.3 * noise)
        elif p.dim() == 1:
            p.copy_(0.1 * noise)
        else:
            p.copy_(noise / math.sqrt(p.shape[1]))


def xlmr_tokenizer(texts: list[str]):
    from transformers import XLMRobertaTokenizer

    # SentencePiece-style: NFKC, whitespace split, "▁" word prefix, Unigram pieces.
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=700, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]  # [[piece, score], ...], specials first
    assert [v[0] for v in vocab[:4]] == ["<s>", "<pad>", "</s>", "<unk>"], vocab[:4]
    # The trainer's scores vary from run to run in the last bits, and the rarest pieces get 1e-4
    # steps in hash-map order: rounded to 0.01 and sorted (score, then piece), the ids and scores
    # are the same on every run.
    pieces = sorted(((p, round(s, 2)) for p, s in vocab[4:]), key=lambda ps: (-ps[1], ps[0]))
    vocab = [(p, 0.0) for p, _ in vocab[:4]] + pieces + [("<mask>", 0.0)]  # XLM-R keeps <mask> last
    hf = XLMRobertaTokenizer(vocab=vocab)
    hf.model_max_length = 128
    return hf


def modernbert_tokenizer(texts: list[str]):
    from transformers import PreTrainedTokenizerFast

    # GPT-NeoX-style byte-level BPE; ModernBERT's special tokens come after the merges.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|padding|>"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok.add_special_tokens(specials)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    return hf


def build_xlmr(texts: list[str], out: str) -> None:
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    tok = xlmr_tokenizer(texts)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    cfg = XLMRobertaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=130,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        architectures=["XLMRobertaForMaskedLM"],
    )
    torch.manual_seed(SEED_XLMR)
    model = XLMRobertaForMaskedLM(cfg).eval()
    randomise(model, SEED_XLMR)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def build_modernbert(texts: list[str], out: str, legacy: bool = False) -> None:
    """`legacy`: ModernBERT-base's own switches (no attention, MLP, norm or head-dense bias; no
    dropout) and a config.json in the Hub's older layout (`global_attn_every_n_layers`,
    `global_rope_theta`, `local_rope_theta`; no `layer_types` / `rope_parameters`), with thetas away
    from the defaults so that a reader ignoring them fails."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    tok = modernbert_tokenizer(texts)
    vocab = (len(tok) + 63) // 64 * 64
    if legacy:
        variant = dict(
            num_hidden_layers=4,
            attention_bias=False,
            classifier_bias=False,
            global_attn_every_n_layers=3,
            global_rope_theta=80000.0,
            local_rope_theta=20000.0,
            local_attention=32,
        )
    else:
        variant = dict(
            num_hidden_layers=3,
            attention_bias=True,
            classifier_bias=True,
            global_attn_every_n_layers=2,
            global_rope_theta=160000.0,
            local_rope_theta=10000.0,
            local_attention=16,
            attention_dropout=0.1,
            embedding_dropout=0.1,
            mlp_dropout=0.1,
        )
    cfg = ModernBertConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        hidden_activation="gelu",
        max_position_embeddings=128,
        norm_eps=1e-5,
        norm_bias=False,
        mlp_bias=False,
        decoder_bias=True,
        classifier_activation="gelu",
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        cls_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        sep_token_id=tok.sep_token_id,
        architectures=["ModernBertForMaskedLM"],
        **variant,
    )
    want_types = (
        ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
        if legacy
        else ["full_attention", "sliding_attention", "full_attention"]
    )
    assert cfg.layer_types == want_types, cfg.layer_types
    seed = SEED_MODERNBERT + (1 if legacy else 0)
    torch.manual_seed(seed)
    model = ModernBertForMaskedLM(cfg).eval()
    randomise(model, seed)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # transformers 4.x does not know the 5.x name "TokenizersBackend"; both read this one.
    tc_path = os.path.join(out, "tokenizer_config.json")
    tc = json.load(open(tc_path))
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(tc_path, "w") as f:
        json.dump(tc, f, indent=2, sort_keys=True)
    if legacy:
        cfg_path = os.path.join(out, "config.json")
        c = json.load(open(cfg_path))
        del c["layer_types"], c["rope_parameters"]
        c.update(global_attn_every_n_layers=3, global_rope_theta=80000.0, local_rope_theta=20000.0)
        with open(cfg_path, "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
        back = ModernBertConfig.from_pretrained(out)
        assert back.layer_types == want_types, back.layer_types
        thetas = {k: v["rope_theta"] for k, v in back.rope_parameters.items()}
        assert thetas == {"full_attention": 80000.0, "sliding_attention": 20000.0}, thetas


def build(name: str, fn, texts: list[str], out_dir: str) -> None:
    dest = os.path.join(out_dir, name)
    stamp = stamp_text()
    stamp_path = os.path.join(dest, ".stamp")
    if os.path.exists(stamp_path) and open(stamp_path).read() == stamp:
        print(f"{dest}: up to date")
        return
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir)
    try:
        os.chmod(tmp, 0o755)
        fn(texts, tmp)
        with open(os.path.join(tmp, ".stamp"), "w") as f:
            f.write(stamp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{dest}: written")


def main() -> None:
    cache = os.environ.get("SPLADE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "splade"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(cache, "models"))
    ap.add_argument("--data", default=os.path.join(REPO, "data", "norquad"))
    args = ap.parse_args()
    texts = training_texts(args.data)
    build("tiny-xlmr", build_xlmr, texts, args.out)
    build("tiny-modernbert", build_modernbert, texts, args.out)
    build("tiny-modernbert-legacy", lambda t, o: build_modernbert(t, o, legacy=True), texts, args.out)


if __name__ == "__main__":
    main()
