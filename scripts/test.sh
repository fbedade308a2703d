#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up (idempotent, cached under $SPLADE_CACHE), then
# every crate's tests. Real components only: the sentence-transformers reference venv, moto's S3
# server, Prometheus, MLflow, TensorBoard's reader, pytrec_eval, kubernetes-validate.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
scripts/setup.sh --reference
source scripts/env.sh
# Builds are cached outside the clone so repeated runs (and CI on a warm machine) reuse them.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SPLADE_CACHE/target}
export RUST_BACKTRACE=${RUST_BACKTRACE:-0}
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest not found; running cargo test with one test thread" >&2
  cargo test --workspace --no-fail-fast "$@" -- --test-threads=1
fi
