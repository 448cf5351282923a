#!/usr/bin/env python3
"""The learning-rate sweep of docs/results.md: mean training loss over steps 11-30
per kind and learning rate, from the runs of
bench/scifact_experiment.sh. The 1e-3 column comes from the full one-epoch runs
(same batches; their schedule decays over 58 steps instead of 30)."""
import csv
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/scifact")
kinds = ["iaa-l", "houlsby", "lora"]
lrs = ["3e-4", "1e-3", "3e-3"]


def loss(run):
    f = out / run / "train" / "loss.csv"
    if not f.exists():
        f = out / run / "loss.csv"
    if not f.exists():
        return None
    rows = [float(r["loss"]) for r in csv.DictReader(open(f))][:30]
    if len(rows) < 30:
        return None
    window = rows[10:30]
    return sum(window) / len(window)


print("| kind | " + " | ".join(f"lr {lr}" for lr in lrs) + " |")
print("|---|" + "---|" * len(lrs))
for k in kinds:
    cells = []
    for lr in lrs:
        r = loss(k if lr == "1e-3" else f"sweep-{k}-{lr}")
        cells.append("not run" if r is None else f"{r:.3f}")
    print(f"| {k} | " + " | ".join(cells) + " |")
