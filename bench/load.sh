#!/usr/bin/env bash
# Load test on loopback with oha: `POST /v1/collections/scifact/search` (k=10, no
# rerank) on the full SciFact corpus at concurrency 32, saturated (every client sends
# its next request as soon as the last is answered) and at a fixed 200 requests/s;
# then `POST /v1/embed` of the same queries on one adapter against the same spread
# over 16 adapters, alternated ROUNDS times.
#
#   bench/load.sh BEIR_SCIFACT_DIR        (needs oha and python3; ~15 minutes)
#
# oha: `cargo install oha`. PRECISION=int8|int8-fast serves the int8 backbone (f16,
# bf16: a GPU's types); DEVICE=cuda serves on the GPU;
# DOCS=N indexes only the corpus's first N documents (the query's forward pass, not
# the HNSW search, is the cost measured); DURATION (default 30s) per run; RATE
# (default 200) for the fixed-rate run; ROUNDS (default 3). MODES (default dense)
# lists the search modes to load, each in turn ("dense lexical hybrid" measures what
# BM25 and fusion add), each also from one client at a time (no queueing: p50 is
# the time of one search); SEARCH_ROUNDS (default 1) repeats the search runs, the
# modes alternated within each round. KEEP=DIR serves from DIR and keeps it: a
# second run on the same DIR neither uploads the adapters nor indexes the corpus
# again (e.g. to compare two builds, ASIDE=… on one indexed collection).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data="${1:?usage: bench/load.sh BEIR_SCIFACT_DIR}"
aside="${ASIDE:-target/release/aside}"
oha="${OHA:-oha}"
command -v "$oha" > /dev/null || { echo "oha not found: cargo install oha" >&2; exit 1; }
port="${PORT:-18090}"
dur="${DURATION:-30s}"
rate="${RATE:-200}"
rounds="${ROUNDS:-3}"
search_rounds="${SEARCH_ROUNDS:-1}"
tmp="$(mktemp -d)"
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
datadir="${KEEP:-$tmp/data}"
"$aside" serve --port "$port" --grpc-port 0 --data-dir "$datadir" \
  --precision "${PRECISION:-f32}" --device "${DEVICE:-cpu}" 2> "$tmp/server.log" &
pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 300); do curl -sf "$base/health" > /dev/null && break; sleep 0.2; done

for i in $(seq 0 15); do
  # A kept data dir has them already (uploading a0 again would re-embed the corpus).
  curl -sf "$base/v1/adapters/a$i" > /dev/null && continue
  "$aside" adapter init --kind iaa-l --r 12 --ar 12 --seed "$i" -o "$tmp/a$i.safetensors" 2> /dev/null
  curl -sf -X PUT --data-binary "@$tmp/a$i.safetensors" "$base/v1/adapters/a$i" > /dev/null
done
index=1
if curl -sf "$base/v1/collections/scifact" > /dev/null; then
  index=0
else
  curl -sf -X PUT "$base/v1/collections/scifact" -H 'content-type: application/json' -d '{"adapter": "a0"}' > /dev/null
fi

# Index the corpus; write the request bodies, one JSON per line, cycling through the
# 300 test queries (the embed bodies for 16 adapters name a0 .. a15 in turn).
modes="${MODES:-dense}"
python3 - "$data" "$base" "$tmp" "${DOCS:-0}" "$modes" "$index" <<'PY'
import json, sys, time, urllib.request
data, base, tmp, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
docs = [json.loads(l) for l in open(f"{data}/corpus.jsonl")]
docs = docs[:limit] if limit > 0 else docs
docs = docs if sys.argv[6] == "1" else []
t0 = time.time()
for i in range(0, len(docs), 100):
    body = {"documents": [{"id": d["_id"], "text": (d["title"] + " " + d["text"]).strip()} for d in docs[i:i + 100]]}
    req = urllib.request.Request(f"{base}/v1/collections/scifact/documents", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=600).read()
if docs:
    print(f"indexed {len(docs)} documents over HTTP in {time.time() - t0:.0f} s", file=sys.stderr)
ids = {l.split("\t")[0] for l in list(open(f"{data}/qrels/test.tsv"))[1:]}
qs = [json.loads(l)["text"] for l in open(f"{data}/queries.jsonl") if json.loads(l)["_id"] in ids]
for mode in sys.argv[5].split():
    with open(f"{tmp}/search-{mode}.txt", "w") as f:
        f.writelines(json.dumps({"query": q, "k": 10, "mode": mode}) + "\n" for q in qs)
with open(f"{tmp}/embed1.txt", "w") as f:
    f.writelines(json.dumps({"inputs": [q], "adapter": "a0"}) + "\n" for q in qs)
with open(f"{tmp}/embed16.txt", "w") as f:
    f.writelines(json.dumps({"inputs": [q], "adapter": f"a{i % 16}"}) + "\n" for i, q in enumerate(qs))
PY

# The server's CPU time (utime + stime) and the machine's total and stolen time, in
# clock ticks: the server's CPU time per request does not depend on how much of the
# machine a busy host lets this VM have; the steal share says how much that was.
ticks() {
  local server
  server=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  awk -v s="$server" '/^cpu /{t = 0; for (i = 2; i <= NF; i++) t += $i; print s, t, $9}' /proc/stat
}
# One oha run: NAME PATH BODIES [oha options]; its JSON summary goes to $tmp/NAME.json,
# the ticks before and after to $tmp/NAME.ticks.
load() {
  local name=$1 path=$2 bodies=$3
  shift 3
  ticks > "$tmp/$name.ticks"
  "$oha" --no-tui --output-format json -o "$tmp/$name.json" -c "${conc:-32}" -z "$dur" -m POST \
    -T application/json -Z "$bodies" "$@" "$base$path"
  ticks >> "$tmp/$name.ticks"
}
# Warm-up (not reported).
first="${modes%% *}"
DUR="$dur"; dur=5s; load warmup /v1/collections/scifact/search "$tmp/search-$first.txt"; dur="$DUR"
for sr in $(seq 1 "$search_rounds"); do
  for m in $modes; do
    load "search-$m-$sr" /v1/collections/scifact/search "$tmp/search-$m.txt"
    load "search-rate-$m-$sr" /v1/collections/scifact/search "$tmp/search-$m.txt" -q "$rate" --latency-correction
    conc=1 load "search-one-$m-$sr" /v1/collections/scifact/search "$tmp/search-$m.txt"
  done
done
for r in $(seq 1 "$rounds"); do
  load "embed1-$r" /v1/embed "$tmp/embed1.txt"
  load "embed16-$r" /v1/embed "$tmp/embed16.txt"
done

python3 - "$tmp" "$rounds" "$rate" "${PRECISION:-f32}" "$modes" "$search_rounds" <<'PY'
import json, statistics, sys
tmp, rounds, rate, precision, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5].split()
search_rounds = int(sys.argv[6])
def run(name):
    j = json.load(open(f"{tmp}/{name}.json"))
    s, p = j["summary"], j["latencyPercentiles"]
    codes = j.get("statusCodeDistribution", {})
    bad = sum(v for k, v in codes.items() if not k.startswith("2"))
    n = sum(codes.values())
    (s0, t0, st0), (s1, t1, st1) = [map(int, l.split()) for l in open(f"{tmp}/{name}.ticks")]
    # Ticks are 1/100 s (USER_HZ); /proc/stat sums both cores.
    cpu_ms = 10 * (s1 - s0) / max(n, 1)
    steal = 100 * (st1 - st0) / max(t1 - t0, 1)
    return s["requestsPerSec"], 1000 * p["p50"], 1000 * p["p99"], bad, n, cpu_ms, steal
print(f"precision {precision}, concurrency 32")
for sr in range(1, search_rounds + 1):
    for m in modes:
        for name, what in [(f"search-{m}-{sr}", f"search {m}, saturated"),
                           (f"search-rate-{m}-{sr}", f"search {m}, fixed {rate} req/s"),
                           (f"search-one-{m}-{sr}", f"search {m}, one client")]:
            rps, p50, p99, bad, n, cpu, steal = run(name)
            at = f"round {sr}, " if search_rounds > 1 else ""
            print(f"{at}{what}: {rps:.1f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms ({n} requests, "
                  f"{bad} not 2xx); server CPU {cpu:.2f} ms/request; steal {steal:.0f}%")
if rounds == 0:
    sys.exit(0)
for k, what in [(1, "1 adapter:  "), (16, "16 adapters:")]:
    runs = [run(f"embed{k}-{r}") for r in range(1, rounds + 1)]
    print(f"embed, {what} " + ", ".join(f"{v[0]:.1f} req/s ({v[5]:.2f} ms CPU, steal {v[6]:.0f}%)" for v in runs))
one = [run(f"embed1-{r}") for r in range(1, rounds + 1)]
many = [run(f"embed16-{r}") for r in range(1, rounds + 1)]
med = lambda rs, i: statistics.median(r[i] for r in rs)
print(f"16 / 1 adapter: throughput per round " + ", ".join(f"{m[0] / o[0]:.2f}" for o, m in zip(one, many))
      + f", medians {med(many, 0) / med(one, 0):.2f}x; by server CPU per request "
      + f"{med(one, 5) / med(many, 5):.2f}x")
PY
