#!/usr/bin/env python3
"""Prints the markdown table of docs/results.md from the runs that
bench/scifact_experiment.sh wrote (default folder: experiments/scifact)."""
import csv
import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/scifact")
BASE_PARAMS = 22_565_376
BASE = {"ndcg@10": 0.6451, "mrr@10": 0.6047, "recall@100": 0.925}


def smoothed_steps_to(rows, target, window=10):
    for i in range(window - 1, len(rows)):
        w = rows[i - window + 1 : i + 1]
        if sum(float(r["loss"]) for r in w) / window <= target:
            return int(rows[i]["step"])
    return None


print("| run | trainable params | % of backbone | nDCG@10 | MRR@10 | R@100 | train time | steps | mean loss, first → last 10 steps | steps to 10-step mean loss ≤ 0.60 / ≤ 0.40 |")
print("|---|---|---|---|---|---|---|---|---|---|")
print(f"| base (no training) | 0 | 0 | {BASE['ndcg@10']:.4f} | {BASE['mrr@10']:.4f} | {BASE['recall@100']:.4f} | – | – | – | – |")
runs = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(("sweep-", "rerank-"))]
for d in sorted(runs):
    logs = d / "train" if (d / "train").is_dir() else d
    ev, summ = d / "eval.json", logs / "summary.json"
    if not ev.exists() or not summ.exists():
        continue
    e = json.loads(ev.read_text())
    s = json.loads(summ.read_text())
    rows = list(csv.DictReader(open(logs / "loss.csv")))
    losses = [float(r["loss"]) for r in rows]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    to = [smoothed_steps_to(rows, t) for t in (0.6, 0.4)]
    to = " / ".join(str(t) if t else "not reached" for t in to)
    p = s["trainable_params"]
    mins = s["seconds"] / 60
    print(
        f"| {d.name} | {p:,} | {100 * p / BASE_PARAMS:.2f}% | {e['ndcg@10']:.4f} | {e['mrr@10']:.4f} | "
        f"{e['recall@100']:.4f} | {mins:.1f} min | {s['steps']} | {first:.3f} → {last:.3f} | {to} |"
    )

# Re-ranking runs: eval.json holds the fused ranking (head + FUSE x cosine) and the
# stages alone ("retrieval", "head_only"); older runs hold the head's ranking only.
rr = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("rerank-")]
rows = []
for d in sorted(rr):
    logs = d / "train" if (d / "train").is_dir() else d
    summ = logs / "summary.json"
    evals = sorted(d.glob("eval*.json"))
    if not summ.exists() or not evals:
        continue
    s = json.loads(summ.read_text())
    losses = [float(r["loss"]) for r in csv.DictReader(open(logs / "loss.csv"))]
    cfg = s["config"]
    for ev in evals:
        e = json.loads(ev.read_text())
        head = e.get("head_only", e)
        fused = e if "head_only" in e else None
        ret = e.get("retrieval")
        rows.append(
            f"| {d.name} | {s['trainable_params']:,} | {cfg['lr']:g} / {cfg.get('head_lr') or cfg['lr']:g} | "
            f"{s['steps']} | {s['seconds'] / 60:.1f} min | {sum(losses[:10]) / 10:.3f} → {sum(losses[-10:]) / 10:.3f} | "
            f"{ev.name} | "
            + (f"{ret['ndcg@10']:.4f} / {ret['mrr@10']:.4f} | " if ret else "– | ")
            + f"{head['ndcg@10']:.4f} / {head['mrr@10']:.4f} | "
            + (f"{fused['ndcg@10']:.4f} / {fused['mrr@10']:.4f} |" if fused else "– |")
        )
if rows:
    print()
    print("| run | trainable params | lr adapter / head | steps | train time | mean loss, first → last 10 steps | eval file | retrieval alone nDCG@10 / MRR@10 | head alone nDCG@10 / MRR@10 | fused (head + 20·cos) nDCG@10 / MRR@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
