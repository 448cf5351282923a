"""aside's own Python client (clients/python, installed with pip) against a running
server: adapters (a native file and a PEFT folder), collections, batched upserts
with progress, search with a filter and re-ranking, embed, rerank, and errors
raised with the server's message.

Usage: aside_client_check.py BASE_URL RETRIEVAL.safetensors RERANK.safetensors PEFT_DIR
"""

import sys

from aside_client import AsideError, Client

url, retrieval, rerank, peft = sys.argv[1:5]
c = Client(url)

a = c.put_adapter("ret", retrieval)
assert a.created and a.task == "retrieval" and a.params > 0, a
assert not c.put_adapter("ret", retrieval).created, "identical bytes are no new version"
assert c.put_adapter("judge", rerank).task == "rerank"
p = c.put_adapter("peft", peft)
assert p.kind == "lora", p
assert sorted(x.name for x in c.list_adapters()) == ["judge", "peft", "ret"]
assert c.get_adapter("ret").versions == [a.version]
print("ok adapters: file, PEFT folder, list, get")

col = c.create_collection("docs", adapter="ret", hnsw={"m": 8})
assert col.adapter == "ret" and col.adapter_version == a.version and col.count == 0
assert col.details["store"] == "local" and col.details["engine"] == "graph", col.details
h = c.create_collection("other-graph", engine="hnsw_rs", store="local", metric="l2")
assert h.details["engine"] == "hnsw_rs" and h.metric == "l2", h.details
c.delete_collection("other-graph")
seen = []
docs = [{"id": f"d{i}", "text": f"document {i} about {'cells' if i % 2 else 'stocks'}",
         "metadata": {"even": i % 2 == 0}} for i in range(25)]
assert c.upsert("docs", docs, batch_size=10, progress=lambda d, t: seen.append((d, t))) == 25
assert seen == [(10, 25), (20, 25), (25, 25)], seen
assert c.get_collection("docs").count == 25
assert c.get_document("docs", "d3").metadata == {"even": False}
print("ok collections and batched upserts with progress")

r = c.search("docs", "cells", k=5, filter={"even": False})
assert len(r.hits) == 5 and all(not h.metadata["even"] for h in r.hits), r
assert r.adapter_version == a.version
rr = c.search("docs", "cells", k=3, rerank={"adapter": "judge", "candidates": 10})
assert len(rr.hits) == 3 and rr.hits[0].score >= rr.hits[-1].score
assert c.search("docs", "cells", k=3, rerank="judge").timings["rerank_ms"] is not None
print("ok search with filter and re-ranking")

lx = c.search("docs", "cells", k=5, mode="lexical", filter={"even": False})
assert len(lx.hits) == 5 and all("cells" in h.text for h in lx.hits), lx
assert all(h.found_by["lexical"]["rank"] == i + 1 for i, h in enumerate(lx.hits)), lx
hy = c.search("docs", "cells", k=5, mode="hybrid", fusion={"method": "weighted", "dense_weight": 0.3},
              candidates=20)
assert len(hy.hits) == 5 and all(0 <= h.score <= 1 for h in hy.hits), hy
assert c.search("docs", "cells", k=3, mode="hybrid", fusion="rrf").hits[0].found_by is not None
none = c.create_collection("no-lexical", lexical="none")
assert none.details["lexical"] is None, none.details
c.delete_collection("no-lexical")
print("ok lexical and hybrid search")

v = c.embed(["hello", "world"], adapter="ret")
assert len(v) == 2 and len(v[0]) == col.dim
ranked = c.rerank("cells", ["a cell", "stocks"], adapter="judge")
assert sorted(x.index for x in ranked) == [0, 1]
print("ok embed and rerank")

for call, status, kind, text in [
    (lambda: c.get_collection("none"), 404, "not_found", "none"),
    (lambda: c.embed(["x"], adapter="judge"), 422, "unprocessable", "judge"),
    (lambda: c.search("docs", "x", k=0), 400, "invalid_request", "k"),
    (lambda: c.delete_adapter("ret"), 409, "conflict", "docs"),
]:
    try:
        call()
    except AsideError as e:
        assert (e.status, e.type) == (status, kind) and text in e.message, e
    else:
        raise AssertionError("accepted")
c.delete_document("docs", "d0")
c.delete_collection("docs")
c.delete_adapter("ret")
assert [x.name for x in c.list_collections()] == []
print("ok errors raised with the server's message; deletes")
print("aside-client checks passed")
