#!/usr/bin/env bash
# The hybrid-search table of docs/results.md, on SciFact test: BM25 alone, dense,
# hybrid (rrf and weighted), each with the bare backbone and with the IAA-L adapter
# (recipe B), then hybrid + the IAA-L rerank adapter over the top 100.
#
#   bench/hybrid_scifact.sh [OUT]      (default experiments/hybrid)
#
# Trains the two adapters first unless OUT already holds them (16 + 81 minutes on
# two cores); every evaluation writes OUT/<row>.json. Re-ranking scores are cached
# per pair (.aside-cache), so rows that re-rank the same candidates reuse them.
#
# The weight of the fused retrieval score in re-ranking (`--fuse W`: head + W x
# fused) is chosen on the rerank run's dev split (the 80 training queries it held
# out, over the whole corpus), with the bare backbone's hybrid candidates: the
# retrieval adapter was trained on those queries too, so its candidates would
# flatter retrieval there. The test rows for every W of the grid are written as
# well; the weight chosen on dev is in OUT/fuse-chosen-on-dev.json.
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
# The rerank adapter: aside train's defaults (a dev split of 80 queries, the best
# dev checkpoint kept), 600 steps of 8 queries x (1 positive + 3 negatives).
if [ ! -e "$OUT/rerank-iaa-l.safetensors" ]; then
  "$ASIDE" train "${COMMON[@]}" --split train --task rerank --kind iaa-l --r 12 --ar 12 \
    --doc-max-length 160 --batch-size 8 --negatives 3 --lr 3e-3 --head-lr 3e-2 \
    --max-steps 600 --eval-every 100 --keep-worse --seed 42 \
    -o "$OUT/rerank-iaa-l.safetensors" > "$OUT/train-rerank.log" 2>&1
fi
# The dev folder: the held-out queries and their judgements over the whole corpus.
DEV="$OUT/dev"
if [ ! -e "$DEV/qrels/dev.tsv" ]; then
  if [ ! -e "$OUT/rerank-iaa-l.safetensors.train/dev/qrels/dev.tsv" ]; then
    echo "$OUT/rerank-iaa-l.safetensors was trained without a dev split: no dev folder to choose --fuse on" >&2
    exit 1
  fi
  mkdir -p "$DEV/qrels"
  cp "$OUT/rerank-iaa-l.safetensors.train/dev/qrels/dev.tsv" "$DEV/qrels/"
  cp "$OUT/rerank-iaa-l.safetensors.train/dev/queries.jsonl" "$DEV/"
  ln -sf "$(cd "$DATA" && pwd)/corpus.jsonl" "$DEV/corpus.jsonl"
fi

# row_on DATA SPLIT NAME ARGS...: one `aside eval`, written to OUT/NAME.json once.
row_on() {
  local data=$1 split=$2 name=$3; shift 3
  if [ ! -s "$OUT/$name.json" ]; then
    echo "== $name: aside eval --split $split $*" >&2
    "$ASIDE" eval --model "$MODEL" --data "$data" --split "$split" --json "$@" > "$OUT/$name.json.part"
    mv "$OUT/$name.json.part" "$OUT/$name.json"
  fi
  echo "$name $(cat "$OUT/$name.json")"
}
row() { row_on "$DATA" test "$@"; }
A=(--adapter "$OUT/iaa-l.safetensors")
row bm25 --mode lexical
row dense
row hybrid --mode hybrid
row hybrid-weighted --mode hybrid --fusion weighted
row dense-iaa-l "${A[@]}"
row hybrid-iaa-l "${A[@]}" --mode hybrid
row hybrid-weighted-iaa-l "${A[@]}" --mode hybrid --fusion weighted
R=(--rerank "$OUT/rerank-iaa-l.safetensors" --candidates 100)
FUSES=${FUSES:-0 5 10 20 40 80}
for fuse in $FUSES; do
  row_on "$DEV" dev "dev-hybrid-weighted-rerank-fuse$fuse" --mode hybrid --fusion weighted "${R[@]}" --fuse "$fuse"
done
# The best dev nDCG@10 (the first W of the grid on a tie).
python3 - "$OUT" $FUSES > "$OUT/fuse-chosen-on-dev.json" <<'PY'
import json, sys
out, fuses = sys.argv[1], sys.argv[2:]
dev = {w: json.load(open(f"{out}/dev-hybrid-weighted-rerank-fuse{w}.json"))["ndcg@10"] for w in fuses}
best = max(fuses, key=lambda w: dev[w])
print(json.dumps({"fuse": float(best), "dev_ndcg@10": dev[best], "grid": {w: dev[w] for w in fuses}}))
PY
echo "fuse chosen on dev: $(cat "$OUT/fuse-chosen-on-dev.json")"
for fuse in $FUSES; do
  row "hybrid-weighted-iaa-l-rerank-fuse$fuse" "${A[@]}" --mode hybrid --fusion weighted "${R[@]}" --fuse "$fuse"
done
