#!/usr/bin/env python3
"""Served search on each store, through a running server:

    aside serve --port 18080 --milvus-url http://127.0.0.1:19531 &
    python3 bench/milvus_served.py [--scifact DIR] [--url http://127.0.0.1:18080]

300 SciFact documents in a local and in a Milvus collection, 60 queries on each,
two alternated rounds; prints the median query-embedding and search time from the
responses' `timings`. Standard library only."""
import argparse
import json
import statistics
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--scifact", default="../shared/data/scifact")
ap.add_argument("--url", default="http://127.0.0.1:18080")
a = ap.parse_args()


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(a.url + path, method=method, data=data,
                               headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(r))


docs = []
for line in open(f"{a.scifact}/corpus.jsonl"):
    d = json.loads(line)
    docs.append({"id": d["_id"], "text": (d["title"] + " " + d["text"]).strip()})
    if len(docs) == 300:
        break
queries = [json.loads(l)["text"] for l in open(f"{a.scifact}/queries.jsonl")][:60]
for store in ["local", "milvus"]:
    call("PUT", f"/v1/collections/served-{store}", {"store": store})
    for i in range(0, len(docs), 100):
        call("POST", f"/v1/collections/served-{store}/documents", {"documents": docs[i:i + 100]})
for store in ["local", "milvus", "local", "milvus"]:
    embed, search = [], []
    for q in queries:
        r = call("POST", f"/v1/collections/served-{store}/search", {"query": q, "k": 10})
        embed.append(r["timings"]["embed_ms"])
        search.append(r["timings"]["search_ms"])
    print(json.dumps({"store": store, "embed_ms_median": round(statistics.median(embed), 2),
                      "search_ms_median": round(statistics.median(search), 2)}))
for store in ["local", "milvus"]:
    call("DELETE", f"/v1/collections/served-{store}")
