#!/usr/bin/env python3
"""A SciFact variant with near-identical documents and graded judgements, for
`bench/train_fixes.sh`: every document judged relevant (train or test) gets a copy
under another id (`ID-copy`: the same text, lower-cased, its last sentence dropped).

- test: the copy is judged like its original, grade 1 (the original keeps its grade
  2): an evaluation that counts both.
- train: the original is grade 2; half the copies (seeded) are judged grade 1, the
  other half are left unjudged, as an incomplete judging of a real corpus leaves
  them: the base model ranks them near the top, so mining takes them as negatives.

    bench/near_duplicates.py SCIFACT_DIR OUT_DIR
"""
import json
import random
import sys
from pathlib import Path


def read_qrels(path):
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            cols = line.rstrip("\n").split("\t")
            if i == 0 and cols[0] == "query-id":
                continue
            if len(cols) == 3:
                rows.append((cols[0], cols[1], int(cols[2])))
    return rows


def copy_text(text):
    sentences = text.split(". ")
    if len(sentences) > 2:
        sentences = sentences[:-1]
    return ". ".join(sentences).lower()


def main():
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    rng = random.Random(7)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    splits = {s: read_qrels(src / "qrels" / f"{s}.tsv") for s in ("train", "test")}
    judged = {d for rows in splits.values() for _, d, g in rows if g > 0}
    with open(src / "corpus.jsonl") as f, open(out / "corpus.jsonl", "w") as w:
        for line in f:
            doc = json.loads(line)
            w.write(json.dumps(doc) + "\n")
            if doc["_id"] in judged:
                copy = {
                    "_id": doc["_id"] + "-copy",
                    "title": doc.get("title", "").lower(),
                    "text": copy_text(doc.get("text", "")),
                }
                w.write(json.dumps(copy) + "\n")
    (out / "queries.jsonl").write_text((src / "queries.jsonl").read_text())
    for split, rows in splits.items():
        with open(out / "qrels" / f"{split}.tsv", "w") as w:
            w.write("query-id\tcorpus-id\tscore\n")
            for q, d, g in rows:
                if g <= 0:
                    continue
                w.write(f"{q}\t{d}\t2\n")
                if split == "test" or rng.random() < 0.5:
                    w.write(f"{q}\t{d}-copy\t1\n")
    print(f"wrote {out}: {len(judged)} copies")


if __name__ == "__main__":
    main()
