#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the default model (idempotent, verified),
# then every test of the workspace in release mode (debug code is ~150x slower).
# Tests that need the real model fail here rather than skip (ASIDE_REQUIRE_MODEL=1).
# The Python clients some tests drive (a generic gRPC reflection client, the OpenAPI
# validators) come from a pinned virtualenv at .venv/ (scripts/pyenv.sh).
# Then the fuzzer (aside-fuzz) over the parsers of outside bytes, 40 s a target.
# Then the cuda build (scripts/build-cuda.sh). Then the container image: built from docker/Dockerfile, run, and asked for /health
# and one embedding (docker/smoke.sh; as root with no image registry, the base images
# are made locally). ASIDE_SKIP_IMAGE=1, or a test filter, skips it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh
ASIDE_PYTHON="$(scripts/pyenv.sh | tail -n1)"
export ASIDE_PYTHON ASIDE_REQUIRE_MODEL=1
cargo test --release --workspace --no-fail-fast "$@"

# Mutation fuzzing of the parsers that read outside bytes (adapter files, PEFT
# folders, log and snapshot replay), bounded in time: a panic, a hang or an
# allocation over 1 GiB fails the run. ASIDE_FUZZ_SECONDS per target (0: skip).
if [[ ${ASIDE_FUZZ_SECONDS:-40} != 0 && $# == 0 ]]; then
  cargo run --release -q -p aside-fuzz -- --seconds "${ASIDE_FUZZ_SECONDS:-40}" all
fi

# The GPU build: NVIDIA's CUDA wheels into .cuda-venv/, `cargo build --features cuda`
# into target/cuda/ (scripts/build-cuda.sh; 39.5 min of CPU measured here, the kernels' nvcc
# most of it). No GPU here: the binary must stop naming the missing driver or device,
# never a missing feature. ASIDE_SKIP_CUDA=1, or a test filter, skips it.
if [[ ${ASIDE_SKIP_CUDA:-0} == 1 || $# -gt 0 ]]; then
  echo "SKIPPED: the cuda build (ASIDE_SKIP_CUDA=1 or a test filter)"
else
  cuda_bin="$(scripts/build-cuda.sh | tail -n1)"
  set +e
  cuda_out="$("$cuda_bin" serve --model models/all-MiniLM-L6-v2 --device cuda --port 0 2>&1)"
  cuda_rc=$?
  set -e
  if [[ $cuda_rc == 0 ]] || ! grep -qiE 'libcuda|driver|no cuda|cuda device|CUDA_ERROR' <<<"$cuda_out" \
     || grep -qi 'feature' <<<"$cuda_out"; then
    echo "FAILED: the cuda build asked for --device cuda without a GPU said: $cuda_out" >&2
    exit 1
  fi
  echo "ok: the cuda build without a GPU stops with: $(head -c 300 <<<"$cuda_out")"
fi

if [[ ${ASIDE_SKIP_IMAGE:-0} == 1 || $# -gt 0 ]]; then
  echo "SKIPPED: image smoke test (ASIDE_SKIP_IMAGE=1 or a test filter)"
elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  docker/smoke.sh --local-bases
elif command -v docker >/dev/null || command -v podman >/dev/null; then
  docker/smoke.sh
else
  echo "SKIPPED: image smoke test (no docker or podman, and not root to install podman)"
fi
