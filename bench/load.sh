#!/usr/bin/env bash
# Load test on loopback with wrk: `POST /v1/collections/scifact/search` (k=10, no
# rerank) on the full SciFact corpus at concurrency 32; then `POST /v1/embed` of the
# same queries on one adapter vs spread over 16 adapters.
#
#   bench/load.sh BEIR_SCIFACT_DIR        (needs wrk and python3; ~10 minutes)
#
# PRECISION=int8 serves the int8 backbone; DOCS=N indexes only the corpus's first N
# documents (the query's forward pass, not the HNSW search, is the cost measured).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data="${1:?usage: bench/load.sh BEIR_SCIFACT_DIR}"
aside="${ASIDE:-target/release/aside}"
port="${PORT:-18090}"
dur="${DURATION:-30s}"
tmp="$(mktemp -d)"
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
"$aside" serve --port "$port" --data-dir "$tmp/data" --precision "${PRECISION:-f32}" \
  2> "$tmp/server.log" &
pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/health" > /dev/null && break; sleep 0.2; done

for i in $(seq 0 15); do
  "$aside" adapter init --kind iaa-l --r 12 --ar 12 --seed "$i" -o "$tmp/a$i.safetensors" 2> /dev/null
  curl -sf -X PUT --data-binary "@$tmp/a$i.safetensors" "$base/v1/adapters/a$i" > /dev/null
done
curl -sf -X PUT "$base/v1/collections/scifact" -H 'content-type: application/json' -d '{"adapter": "a0"}' > /dev/null

python3 - "$data" "$base" "$tmp" "${DOCS:-0}" <<'PY'
import json, sys, time, urllib.request
data, base, tmp, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
docs = [json.loads(l) for l in open(f"{data}/corpus.jsonl")]
docs = docs[:limit] if limit > 0 else docs
t0 = time.time()
for i in range(0, len(docs), 100):
    body = {"documents": [{"id": d["_id"], "text": (d["title"] + " " + d["text"]).strip()} for d in docs[i:i + 100]]}
    req = urllib.request.Request(f"{base}/v1/collections/scifact/documents", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=600).read()
print(f"indexed {len(docs)} documents over HTTP in {time.time() - t0:.0f} s", file=sys.stderr)
ids = {l.split("\t")[0] for l in list(open(f"{data}/qrels/test.tsv"))[1:]}
qs = [json.loads(l)["text"] for l in open(f"{data}/queries.jsonl") if json.loads(l)["_id"] in ids]
# JSON-encoded query strings inside Lua long brackets: no Lua escaping involved.
with open(f"{tmp}/queries.lua", "w") as f:
    f.write("queries = {" + ",".join("[==[" + json.dumps(q) + "]==]" for q in qs) + "}\n")
PY

cat > "$tmp/search.lua" <<LUA
dofile("$tmp/queries.lua")
local n = 0
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
request = function()
  n = n + 1
  local q = queries[(n % #queries) + 1]
  local body = '{"query": ' .. q .. ', "k": 10}'
  return wrk.format(nil, "/v1/collections/scifact/search", nil, body)
end
LUA
embed_lua() { # $1 = number of adapters
cat > "$tmp/embed$1.lua" <<LUA
dofile("$tmp/queries.lua")
local n = 0
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
request = function()
  n = n + 1
  local q = queries[(n % #queries) + 1]
  local body = '{"inputs": [' .. q .. '], "adapter": "a' .. (n % $1) .. '"}'
  return wrk.format(nil, "/v1/embed", nil, body)
end
LUA
}
embed_lua 1
embed_lua 16
echo "== search, 1 adapter, concurrency 32"
wrk -t2 -c32 -d"$dur" --latency -s "$tmp/search.lua" "$base" | grep -E "Requests/sec|Latency|99%|50%|Non-2xx"
echo "== embed, 1 adapter, concurrency 32"
wrk -t2 -c32 -d"$dur" --latency -s "$tmp/embed1.lua" "$base" | grep -E "Requests/sec|99%|50%|Non-2xx"
echo "== embed, spread over 16 adapters, concurrency 32"
wrk -t2 -c32 -d"$dur" --latency -s "$tmp/embed16.lua" "$base" | grep -E "Requests/sec|99%|50%|Non-2xx"
