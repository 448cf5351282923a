#!/usr/bin/env bash
# The hybrid-search table of docs/results.md, on SciFact test: BM25 alone, dense,
# hybrid (rrf and weighted), each with the bare backbone and with the IAA-L adapter
# (recipe B), then hybrid + the IAA-L rerank adapter over the top 100.
#
#   bench/hybrid_scifact.sh [OUT]      (default experiments/hybrid)
#
# Trains the two adapters first unless OUT already holds them (16 + 29 minutes on
# two cores); every evaluation writes OUT/<row>.json. Re-ranking scores are cached
# per pair (.aside-cache), so rows that re-rank the same candidates reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-experiments/hybrid}
ASIDE=${ASIDE:-target/release/aside}
DATA=${DATA:-../shared/data/scifact}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
mkdir -p "$OUT"
COMMON=(--model "$MODEL" --data "$DATA")
# The adapters of this table were trained before the dev split and the data fixes
# became `aside train`'s defaults; LEGACY=1 (the default here) trains as then.
TRAIN_LEGACY=()
if [ "${LEGACY:-1}" = 1 ]; then
  TRAIN_LEGACY=(--dev-queries 0 --sample pairs --near-duplicate off --margin off --mask-same-text false)
fi

if [ ! -e "$OUT/iaa-l.safetensors" ]; then
  "$ASIDE" train "${COMMON[@]}" "${TRAIN_LEGACY[@]}" --split train --kind iaa-l --r 12 --ar 12 --lr 3e-3 \
    --epochs 2 --batch-size 16 --doc-max-length 128 --seed 42 \
    -o "$OUT/iaa-l.safetensors.part" > "$OUT/train-iaa-l.log" 2>&1
  mv "$OUT/iaa-l.safetensors.part" "$OUT/iaa-l.safetensors"
fi
if [ ! -e "$OUT/rerank-iaa-l.safetensors" ]; then
  "$ASIDE" train "${COMMON[@]}" "${TRAIN_LEGACY[@]}" --split train --kind iaa-l --r 12 --ar 12 --task rerank \
    --doc-max-length 192 --batch-size 4 --lr 3e-3 --head-lr 3e-2 --max-steps 120 --seed 42 \
    -o "$OUT/rerank-iaa-l.safetensors.part" > "$OUT/train-rerank-iaa-l.log" 2>&1
  mv "$OUT/rerank-iaa-l.safetensors.part" "$OUT/rerank-iaa-l.safetensors"
fi

row() {
  local name=$1; shift
  if [ ! -s "$OUT/$name.json" ]; then
    echo "== $name: aside eval $*" >&2
    "$ASIDE" eval "${COMMON[@]}" --split test --json "$@" > "$OUT/$name.json.part"
    mv "$OUT/$name.json.part" "$OUT/$name.json"
  fi
  echo "$name $(cat "$OUT/$name.json")"
}
A=(--adapter "$OUT/iaa-l.safetensors")
row bm25 --mode lexical
row dense
row hybrid --mode hybrid
row hybrid-weighted --mode hybrid --fusion weighted
row dense-iaa-l "${A[@]}"
row hybrid-iaa-l "${A[@]}" --mode hybrid
row hybrid-weighted-iaa-l "${A[@]}" --mode hybrid --fusion weighted
R=(--rerank "$OUT/rerank-iaa-l.safetensors" --candidates 100)
for fuse in ${FUSES:-0 10 20 40 80}; do
  row "hybrid-weighted-iaa-l-rerank-fuse$fuse" "${A[@]}" --mode hybrid --fusion weighted "${R[@]}" --fuse "$fuse"
done
