#!/usr/bin/env python3
"""HNSW: aside's index (its own graph, and the hnsw_rs engine) against the Python
`hnswlib` package on the same vectors, with the same M / ef_construction / ef, in
one run.

    python3 bench/hnsw_compare.py [--n 100000] [--dim 384] [--queries 1000]
                                  [--vectors FILE.f32] [--aside target/release/aside]

Without --vectors: seeded random unit vectors. With --vectors (raw f32, n x dim,
e.g. SciFact corpus embeddings), queries are drawn from held-out rows.
Needs numpy and hnswlib (pip install hnswlib).
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import hnswlib
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=100_000)
ap.add_argument("--dim", type=int, default=384)
ap.add_argument("--queries", type=int, default=1000)
ap.add_argument("--m", type=int, default=16)
ap.add_argument("--ef-construction", type=int, default=200)
ap.add_argument("--ef", default="16,32,64,128,256")
ap.add_argument("--vectors")
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--aside", default="target/release/aside")
a = ap.parse_args()

rng = np.random.default_rng(a.seed)
if a.vectors:
    allv = np.fromfile(a.vectors, dtype="<f4").reshape(-1, a.dim)
    idx = rng.permutation(len(allv))
    qv, base = allv[idx[: a.queries]], allv[idx[a.queries:]]
else:
    base = rng.standard_normal((a.n, a.dim)).astype(np.float32)
    qv = rng.standard_normal((a.queries, a.dim)).astype(np.float32)
base /= np.linalg.norm(base, axis=1, keepdims=True)
qv /= np.linalg.norm(qv, axis=1, keepdims=True)
exact = np.argsort(-(qv @ base.T), axis=1)[:, :10]

rows = []
t0 = time.time()
p = hnswlib.Index(space="ip", dim=a.dim)
p.init_index(max_elements=len(base), ef_construction=a.ef_construction, M=a.m, random_seed=a.seed)
p.set_num_threads(os.cpu_count())
p.add_items(base, np.arange(len(base)))
rows.append({"engine": "hnswlib", "n": len(base), "build_s": round(time.time() - t0, 2)})
p.set_num_threads(1)
for ef in [int(x) for x in a.ef.split(",")]:
    p.set_ef(ef)
    t0 = time.time()
    labels = np.stack([p.knn_query(q, k=10)[0][0] for q in qv])
    secs = time.time() - t0
    recall = np.mean([len(set(l) & set(e)) / 10 for l, e in zip(labels, exact)])
    rows.append({"engine": "hnswlib", "ef": ef, "recall@10": round(float(recall), 4), "qps": round(len(qv) / secs)})

with tempfile.TemporaryDirectory() as d:
    bv, qf = os.path.join(d, "base.f32"), os.path.join(d, "q.f32")
    base.astype("<f4").tofile(bv)
    qv.astype("<f4").tofile(qf)
    out = subprocess.run(
        [a.aside, "bench", "index", "--vectors", bv, "--queries", qf, "--dim", str(a.dim), "--m", str(a.m),
         "--ef-construction", str(a.ef_construction), "--ef", a.ef, "--engines", "graph,hnsw_rs"],
        check=True, capture_output=True, text=True).stdout
    rows += [json.loads(l) for l in out.splitlines() if l.startswith("{")]

print("| engine | ef | recall@10 | QPS (1 thread) |")
print("|---|---|---|---|")
for r in rows:
    if "ef" in r:
        print(f"| {r['engine']} | {r['ef']} | {r['recall@10']:.4f} | {r['qps']} |")
for r in rows:
    if "build_s" in r:
        print(f"build ({r['engine']}, {r['n']} vectors, all cores): {r['build_s']} s")
    if "durable_upserts_per_s" in r:
        print(f"durable upserts ({r['engine']}, 4 writers, batches of 100, acknowledged after fsync), "
              f"{r['n']} vectors: {r['durable_upserts_per_s']}/s into an empty collection "
              f"(all in the graph after {r['indexed_s']} s), "
              f"{r['durable_upserts_per_s_loaded']}/s into the {r['base']}-vector one "
              f"(all in the graph after {r['loaded_indexed_s']} s)")
