# Source me: the environment the build and the tests expect (set-up: scripts/setup.sh).
export SPLADE_CACHE=${SPLADE_CACHE:-$HOME/.cache/splade}
export LIBTORCH=${LIBTORCH:-$SPLADE_CACHE/libtorch-2.11.0/torch}
export SPLADE_TOOLS_PY=${SPLADE_TOOLS_PY:-$SPLADE_CACHE/tools-venv/bin/python}
export SPLADE_REF_PY=${SPLADE_REF_PY:-$SPLADE_CACHE/ref-venv/bin/python}
export SPLADE_TEST_MODELS=${SPLADE_TEST_MODELS:-$SPLADE_CACHE/models}
export SPLADE_ST52_PATH=${SPLADE_ST52_PATH:-$SPLADE_CACHE/st52}
