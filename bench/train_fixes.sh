#!/usr/bin/env bash
# The dev effect of each training-data fix of `aside train` (docs/results.md,
# "Training that never makes a task worse"): IAA-L (r 12, ar 12, lr 3e-3, seed 42)
# for STEPS steps, the dev split evaluated before the first step and at the end,
# once with the defaults, once with each fix turned off (and once with the
# positive-aware margin, off by default, turned on), on SciFact and on a SciFact
# variant with near-identical documents (bench/near_duplicates.py).
#   bench/train_fixes.sh [OUT_DIR]      (STEPS=46, DATASETS="scifact near-dup",
#                                        VARIANTS="defaults no-near-duplicate ...")
# Runs already done are skipped. Adapters are written even when worse
# (--keep-worse) so that TEST=1 can evaluate each on the test split too.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-experiments/train-fixes}
ASIDE=${ASIDE:-target/release/aside}
SCIFACT=${DATA:-../shared/data/scifact}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
STEPS=${STEPS:-46}
DATASETS=${DATASETS:-scifact near-dup}
VARIANTS=${VARIANTS:-defaults no-near-duplicate margin no-same-text-mask pairs none}
TEST=${TEST:-0}
mkdir -p "$OUT"
[ -d "$OUT/near-dup-data" ] || python3 bench/near_duplicates.py "$SCIFACT" "$OUT/near-dup-data"

declare -A FLAGS=(
  [defaults]=""
  [no-near-duplicate]="--near-duplicate off"
  [margin]="--margin 0.95"
  [no-same-text-mask]="--mask-same-text false"
  [pairs]="--sample pairs"
  [none]="--near-duplicate off --mask-same-text false --sample pairs"
)
for ds in $DATASETS; do
  case $ds in
    scifact) data=$SCIFACT ;;
    near-dup) data=$OUT/near-dup-data ;;
    *) echo "unknown dataset $ds" >&2; exit 2 ;;
  esac
  for v in $VARIANTS; do
    run=$OUT/$ds-$v
    if [ ! -f "$run.safetensors.train/summary.json" ]; then
      # shellcheck disable=SC2086
      "$ASIDE" train --model "$MODEL" --data "$data" --split train --seed 42 \
        --kind iaa-l --r 12 --ar 12 --lr 3e-3 --max-steps "$STEPS" --eval-every "$STEPS" \
        --keep-worse ${FLAGS[$v]} -o "$run.safetensors" 2> "$run.log"
    fi
    if [ "$TEST" = 1 ] && [ ! -f "$run.test.json" ]; then
      "$ASIDE" eval --model "$MODEL" --data "$data" --split test \
        --adapter "$run.safetensors" --json > "$run.test.json" 2>> "$run.log"
    fi
  done
done
python3 - "$OUT" $DATASETS -- $VARIANTS <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); args = sys.argv[2:]
cut = args.index("--"); datasets, variants = args[:cut], args[cut + 1:]
print("| data | variant | dev base | dev after | Δ dev | test nDCG@10 |")
print("|---|---|---:|---:|---:|---:|")
for ds in datasets:
    for v in variants:
        p = out / f"{ds}-{v}.safetensors.train" / "summary.json"
        if not p.exists():
            continue
        d = json.loads(p.read_text())["dev"]
        last = d["evaluations"][-1]["ndcg10"]
        t = out / f"{ds}-{v}.test.json"
        test = f'{json.loads(t.read_text())["ndcg@10"]:.4f}' if t.exists() else ""
        print(f'| {ds} | {v} | {d["base_ndcg10"]:.4f} | {last:.4f} | {last - d["base_ndcg10"]:+.4f} | {test} |')
PY
