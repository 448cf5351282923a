#!/usr/bin/env python3
"""Time per query of each retrieval pipeline of docs/results.md's hybrid table,
through a running server:

    aside serve --port 18080 --data-dir /tmp/hybrid-served &
    python3 bench/hybrid_served.py --retrieval iaa-l.safetensors --rerank rerank-iaa-l.safetensors \
        [--scifact DIR] [--url http://127.0.0.1:18080] [--queries 100] [--rerank-queries 20] \
        [--fusion weighted] [--fuse 0]

Uploads both adapters, puts the 5,183 SciFact documents into a collection on the
bare backbone and one on the retrieval adapter, then sends the test queries one at
a time (no other load) through each pipeline, two alternated rounds: BM25, dense,
hybrid, each on both collections, and hybrid on the adapter's collection re-ranked
over the top 100. Prints, per pipeline and round, the median and p90 wall time of a
request as the client sees it and the server's own embed / search / rerank medians
(`timings`). Standard library only."""
import argparse
import json
import statistics
import time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--scifact", default="../shared/data/scifact")
ap.add_argument("--url", default="http://127.0.0.1:18080")
ap.add_argument("--retrieval", required=True)
ap.add_argument("--rerank", required=True)
ap.add_argument("--queries", type=int, default=100)
ap.add_argument("--rerank-queries", type=int, default=20)
ap.add_argument("--fusion", default="rrf")
ap.add_argument("--fuse", type=float, default=0.0)
a = ap.parse_args()


def call(method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    ctype = "application/octet-stream" if raw is not None else "application/json"
    r = urllib.request.Request(a.url + path, method=method, data=data, headers={"content-type": ctype})
    return json.load(urllib.request.urlopen(r, timeout=600))


call("PUT", "/v1/adapters/iaa-l", raw=open(a.retrieval, "rb").read())
call("PUT", "/v1/adapters/judge", raw=open(a.rerank, "rb").read())
docs = []
for line in open(f"{a.scifact}/corpus.jsonl"):
    d = json.loads(line)
    docs.append({"id": d["_id"], "text": (d["title"] + " " + d["text"]).strip()})
for name, body in [("base", {}), ("tuned", {"adapter": "iaa-l"})]:
    call("PUT", f"/v1/collections/{name}", body)
    t0 = time.time()
    for i in range(0, len(docs), 100):
        call("POST", f"/v1/collections/{name}/documents", {"documents": docs[i:i + 100]})
    print(json.dumps({"indexed": name, "documents": len(docs), "seconds": round(time.time() - t0, 1)}),
          flush=True)

test = {l.split("\t")[0] for l in list(open(f"{a.scifact}/qrels/test.tsv"))[1:]}
queries = [json.loads(l)["text"] for l in open(f"{a.scifact}/queries.jsonl") if json.loads(l)["_id"] in test]
fusion = {"method": a.fusion}
pipelines = [
    ("bm25", "base", {"mode": "lexical"}),
    ("dense", "base", {}),
    ("hybrid", "base", {"mode": "hybrid", "fusion": fusion}),
    ("dense-iaa-l", "tuned", {}),
    ("hybrid-iaa-l", "tuned", {"mode": "hybrid", "fusion": fusion}),
    ("hybrid-iaa-l-rerank100", "tuned",
     {"mode": "hybrid", "fusion": fusion, "rerank": {"adapter": "judge", "candidates": 100, "fuse": a.fuse}}),
]
for rnd in (1, 2):
    for name, coll, extra in pipelines:
        n = a.rerank_queries if "rerank" in extra else a.queries
        wall, t = [], {"embed_ms": [], "search_ms": [], "rerank_ms": []}
        for q in queries[:n]:
            t0 = time.perf_counter()
            r = call("POST", f"/v1/collections/{coll}/search", {"query": q, "k": 10, **extra})
            wall.append(1000 * (time.perf_counter() - t0))
            for k in t:
                if r["timings"].get(k) is not None:
                    t[k].append(r["timings"][k])
        wall.sort()
        out = {"round": rnd, "pipeline": name, "queries": n,
               "wall_ms_median": round(statistics.median(wall), 2),
               "wall_ms_p90": round(wall[int(0.9 * (len(wall) - 1))], 2)}
        for k, v in t.items():
            if v:
                out[k + "_median"] = round(statistics.median(v), 2)
        print(json.dumps(out), flush=True)
