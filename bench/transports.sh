#!/usr/bin/env bash
# HTTP and gRPC under load, for one or more `aside` binaries alternated (e.g. before
# and after a change): each binary serves DOCS SciFact documents in a collection
# with an IAA-L adapter, and `examples/transport_load.rs` runs saturated search and
# embed (one query a request) over HTTP/1.1 keep-alive and over gRPC at
# concurrency CONC for SECS seconds each. One JSON line per run, labelled.
#
#   bench/transports.sh BEIR_SCIFACT_DIR LABEL=BINARY [LABEL=BINARY ...]
#
# PRECISION (default int8-fast), DOCS (300), CONC (32), SECS (15), ROUNDS (2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data="${1:?usage: bench/transports.sh BEIR_SCIFACT_DIR LABEL=BINARY ...}"
shift
cargo build --release -q -p aside-server --example transport_load
load=target/release/examples/transport_load
port="${PORT:-18190}"
tmp="$(mktemp -d)"
pid=
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
python3 - "$data" "$tmp" "${DOCS:-300}" <<'PY'
import json, sys
data, tmp, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
docs = [json.loads(l) for l in open(f"{data}/corpus.jsonl")][:n]
with open(f"{tmp}/docs.json", "w") as f:
    json.dump({"documents": [{"id": d["_id"], "text": (d["title"] + " " + d["text"]).strip()} for d in docs]}, f)
ids = {l.split("\t")[0] for l in list(open(f"{data}/qrels/test.tsv"))[1:]}
with open(f"{tmp}/queries.txt", "w") as f:
    for l in open(f"{data}/queries.jsonl"):
        q = json.loads(l)
        if q["_id"] in ids:
            f.write(q["text"].replace("\n", " ") + "\n")
PY
for round in $(seq "${ROUNDS:-2}"); do
  for spec in "$@"; do
    label="${spec%%=*}"; bin="${spec#*=}"
    rm -rf "$tmp/data"
    "$bin" serve --port "$port" --grpc-port $((port + 1)) --data-dir "$tmp/data" \
      --precision "${PRECISION:-int8-fast}" 2> "$tmp/server.log" &
    pid=$!
    base="http://127.0.0.1:$port"
    for _ in $(seq 300); do curl -sf "$base/health" > /dev/null && break; sleep 0.2; done
    "$bin" adapter init --kind iaa-l --r 12 --ar 12 --seed 1 -o "$tmp/a.safetensors" 2> /dev/null
    curl -sf -X PUT --data-binary "@$tmp/a.safetensors" "$base/v1/adapters/a" > /dev/null
    curl -sf -X PUT "$base/v1/collections/c" -H 'content-type: application/json' -d '{"adapter": "a"}' > /dev/null
    # Upsert in chunks the default --max-inputs takes.
    python3 - "$tmp/docs.json" "$base" <<'PY'
import json, sys, urllib.request
docs = json.load(open(sys.argv[1]))["documents"]
for i in range(0, len(docs), 100):
    req = urllib.request.Request(f"{sys.argv[2]}/v1/collections/c/documents",
        json.dumps({"documents": docs[i:i + 100]}).encode(), {"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=600).read()
PY
    "$load" "127.0.0.1:$port" "127.0.0.1:$((port + 1))" "$tmp/queries.txt" c a \
      "${CONC:-32}" "${SECS:-15}" | sed "s/^{/{\"binary\":\"$label\",\"round\":$round,/"
    kill $pid; wait $pid 2>/dev/null || true; pid=
  done
done
