# syntax=docker/dockerfile:1
# SPLADE training image for NVIDIA GPUs: `splade`, `splade-coordinator`, `splade-worker`.
#
#   docker build -t registry.example.com/splade:0.1.0 .
#
# Stage 1 builds the workspace against libtorch 2.11.0 taken from the PyPI torch wheel (as
# scripts/setup.sh does, but with its CUDA dependencies) with `--features cuda`; stage 2 runs on
# the matching CUDA runtime image. The binaries carry libtorch's directory as an rpath
# (worker/build.rs), so the wheel stays at the same path in both stages.
ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04
ARG TORCH_VERSION=2.11.0

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS build
ARG TORCH_VERSION
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      build-essential ca-certificates curl git pkg-config python3 python3-pip \
      libgloo-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
# libtorch with CUDA from PyPI: the torch wheel plus its nvidia-* dependency wheels (cuDNN, NCCL, …).
RUN python3 -m pip install --no-cache-dir --break-system-packages --target /opt/pytorch "torch==${TORCH_VERSION}"
ENV LIBTORCH=/opt/pytorch/torch \
    RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo PATH=/opt/cargo/bin:$PATH
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/opt/cargo/registry --mount=type=cache,target=/src/target \
    cargo build --release --locked -p splade-worker --features cuda \
 && cargo build --release --locked -p splade-coordinator \
 && mkdir -p /out \
 && cp target/release/splade target/release/splade-worker target/release/splade-coordinator /out/

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU} AS runtime
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates libgomp1 libgloo-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 splade
# Same path as in the build stage: the binaries' rpath points here.
COPY --from=build /opt/pytorch /opt/pytorch
COPY --from=build /out/splade /usr/local/bin/splade
COPY --from=build /out/splade-worker /usr/local/bin/splade-worker
COPY --from=build /out/splade-coordinator /usr/local/bin/splade-coordinator
ENV LD_LIBRARY_PATH=/opt/pytorch/torch/lib \
    SPLADE_CACHE=/home/splade/.cache/splade
USER splade
WORKDIR /home/splade
# gRPC (coordinator), metrics (coordinator 9100, worker 9101).
EXPOSE 50051 9100 9101
ENTRYPOINT []
CMD ["splade", "--help"]
