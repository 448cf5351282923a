#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU (GPU 0) and its driver:
#
#   scripts/gpu-check.sh BEIR_SCIFACT_DIR
#
# 1. builds the `cuda` feature (scripts/build-cuda.sh; NVIDIA's wheels, no system
#    toolkit needed);
# 2. parity with the CPU's f32 kernels, on the GPU in f32 (cosine >= 0.9999), f16
#    and bf16 (>= 0.999), for the bare backbone and every adapter kind, rerank
#    scores and a mixed-adapter batch (adapters/tests/device_path.rs with
#    ASIDE_TEST_DEVICE=cuda);
# 3. `aside bench encode --device cuda` in f32, f16 and bf16 (docs/s, and cosine to
#    f32 on the GPU);
# 4. `aside eval --device cuda` on SciFact's test split in each precision: f32 must
#    be within 0.002 nDCG@10 of the CPU's 0.6451;
# 5. the load script's search and 16-adapter embed runs on the GPU (bench/load.sh,
#    DEVICE=cuda; skipped when `oha` is not installed).
#
# Prints one summary table at the end; exits non-zero when a check fails.
# DOCS (default 2048) documents for the encode benchmark; SKIP_LOAD=1 skips step 5.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data="${1:?usage: scripts/gpu-check.sh BEIR_SCIFACT_DIR}"
docs="${DOCS:-2048}"
log="$(mktemp -d)"
fail=0
rows=()
row() { rows+=("$(printf '%-34s %-28s %s' "$1" "$2" "$3")"); }

scripts/fetch-model.sh >/dev/null
bin="$(scripts/build-cuda.sh | tail -n1)" || { echo "gpu-check: the cuda build failed" >&2; exit 1; }
venv="${ASIDE_CUDA_VENV:-.cuda-venv}"
cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
# The wheels' runtime libraries (cudart, cuBLAS, cuRAND, NVRTC); the driver's own
# libcuda.so.1 comes from the system.
export LD_LIBRARY_PATH="$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'

# 2. Parity.
if ASIDE_TEST_DEVICE=cuda ASIDE_REQUIRE_MODEL=1 scripts/build-cuda.sh test -p aside-adapters \
     --test device_path -- --nocapture --test-threads 1 >"$log/parity.txt" 2>&1; then
  verdict=ok
else
  verdict=FAILED; fail=1
fi
for p in f32 f16 bf16; do
  worst="$(grep -E "^$p .*worst cosine" "$log/parity.txt" | awk '{print $NF}' | sort -g | head -n1)"
  row "parity $p (bare + 9 adapters)" "worst cosine ${worst:-none}" "$verdict"
done
[[ $verdict == ok ]] || tail -n 30 "$log/parity.txt" >&2

# 3. Encode throughput.
for p in f32 f16 bf16; do
  if "$bin" bench encode --device cuda --precision "$p" --data "$data" --docs "$docs" \
       --batch-size 64 --repeats 3 >"$log/encode-$p.txt" 2>&1; then
    rate="$(grep -E '^repeat' "$log/encode-$p.txt" | tail -n1 | sed 's/.*s, \([0-9.]*\) docs\/s.*/\1/')"
    cosine="$(grep -E 'vs f32' "$log/encode-$p.txt" | sed 's/.*cosine min \([0-9.]*\).*/min cos \1/')"
    row "bench encode $p ($docs docs)" "$rate docs/s" "${cosine:-reference}"
  else
    row "bench encode $p" "-" "FAILED"; fail=1; tail -n 20 "$log/encode-$p.txt" >&2
  fi
done

# 4. SciFact nDCG@10.
for p in f32 f16 bf16; do
  if "$bin" eval --device cuda --precision "$p" --data "$data" --split test --no-cache \
       >"$log/eval-$p.txt" 2>&1; then
    ndcg="$(grep -E '^nDCG@10' "$log/eval-$p.txt" | awk '{print $2}')"
    ok="$(python3 -c "print('ok' if abs($ndcg - 0.6451) <= 0.002 else 'OFF')")"
    [[ $p == f32 && $ok != ok ]] && fail=1
    row "eval scifact test $p" "nDCG@10 $ndcg" "$ok (CPU 0.6451 ± 0.002)"
  else
    row "eval scifact $p" "-" "FAILED"; fail=1; tail -n 20 "$log/eval-$p.txt" >&2
  fi
done

# 5. The load script on the GPU.
if [[ ${SKIP_LOAD:-0} == 1 ]] || ! command -v "${OHA:-oha}" >/dev/null; then
  row "load (search, 16-adapter embed)" "-" "SKIPPED (no oha or SKIP_LOAD=1)"
elif ASIDE="$bin" DEVICE=cuda ROUNDS=1 DURATION="${DURATION:-10s}" bench/load.sh "$data" \
       >"$log/load.txt" 2>&1; then
  while read -r line; do row "load" "$line" ""; done < <(grep -E 'req/s' "$log/load.txt" | head -n 6)
else
  row "load" "-" "FAILED"; fail=1; tail -n 20 "$log/load.txt" >&2
fi

echo
printf '%-34s %-28s %s\n' "check" "figure" "verdict"
printf '%s\n' "${rows[@]}"
echo "logs: $log"
exit "$fail"
