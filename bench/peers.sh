#!/usr/bin/env bash
# Peers in the same run: corpus encoding and single-query serving of the default
# model (all-MiniLM-L6-v2, max length 256) by
#   - sentence-transformers on PyTorch (CPU),
#   - ONNX Runtime (the model exported once from PyTorch, mean pooling in NumPy),
#   - the infinity-emb server (0.0.78, serving the local model folder offline),
#   - aside in each precision (`aside bench encode`; `aside serve` for serving),
# alternated ROUNDS times, so drift on a shared machine hits them alike.
#
#   bench/peers.sh BEIR_SCIFACT_DIR      (needs python3 and oha; first run installs
#                                         the peers into .peers-venv/ and
#                                         .infinity-venv/, a few GB)
#
# Encoding: the corpus's first DOCS (512) documents, batch 32, every core, REPEATS
# (2) timed passes a round. Serving: POST of one query at a time from CONC (32)
# connections for DURATION (20s) with oha, the 300 SciFact test queries in turn.
# PRECISIONS (default "f32 int8 int8-fast"; int8 needs AVX-512 VNNI); DEVICE (cpu)
# for aside. Each run's output lands in OUT (default docs/results/peers/);
# the last lines are the table the README's peer table is built from.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data="${1:?usage: bench/peers.sh BEIR_SCIFACT_DIR}"
docs="${DOCS:-512}" repeats="${REPEATS:-2}" rounds="${ROUNDS:-2}"
conc="${CONC:-32}" dur="${DURATION:-20s}" device="${DEVICE:-cpu}"
precisions="${PRECISIONS:-f32 int8 int8-fast}"
aside="${ASIDE:-target/release/aside}"
oha="${OHA:-oha}"
model="${MODEL:-models/all-MiniLM-L6-v2}"
out="${OUT:-docs/results/peers}"
mkdir -p "$out"
command -v "$oha" >/dev/null || { echo "oha not found: cargo install oha" >&2; exit 1; }
scripts/fetch-model.sh >/dev/null
[[ -x $aside ]] || cargo build --release -p aside-server --bin aside

# Two virtualenvs: infinity-emb 0.0.78 needs transformers < 5, today's
# sentence-transformers needs 5 (pip's wheel cache makes the second torch cheap).
venv_for() { # DIR PINS...
  local dir="$1"; shift
  if [[ "$(cat "$dir/.pins" 2>/dev/null)" != "$*" ]]; then
    python3 -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
    echo "$*" >"$dir/.pins"
  fi
}
venv="${PEERS_VENV:-.peers-venv}" ivenv="${INFINITY_VENV:-.infinity-venv}"
venv_for "$venv" torch sentence-transformers onnx onnxscript onnxruntime
venv_for "$ivenv" "infinity-emb[server,torch]==0.0.78" "transformers<5"
py="$venv/bin/python"
{ "$py" -m pip freeze; "$ivenv/bin/python" -m pip freeze | grep -i '^infinity-emb=='; } 2>/dev/null |
  grep -iE '^(torch|transformers|sentence-transformers|onnxruntime|infinity[-_]emb)==' >"$out/versions.txt" || true
tmp="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$tmp"' EXIT

# Serving bodies: the test queries, one per request.
"$py" - "$data" "$tmp" <<'PY'
import json, sys
data, tmp = sys.argv[1:3]
ids = {l.split("\t")[0] for l in list(open(f"{data}/qrels/test.tsv"))[1:]}
qs = [json.loads(l)["text"] for l in open(f"{data}/queries.jsonl") if json.loads(l)["_id"] in ids]
with open(f"{tmp}/aside.txt", "w") as f:
    f.writelines(json.dumps({"inputs": [q]}) + "\n" for q in qs)
with open(f"{tmp}/infinity.txt", "w") as f:
    f.writelines(json.dumps({"model": "minilm", "input": [q]}) + "\n" for q in qs)
PY

serve_load() { # NAME URL BODIES
  "$oha" --no-tui --output-format json -o "$out/$1.json" -c "$conc" -z "$dur" -m POST \
    -T application/json -Z "$3" "$2" >/dev/null
}
wait_up() { for _ in $(seq 600); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }

for r in $(seq "$rounds"); do
  echo "== round $r: corpus encoding ($docs docs)"
  "$py" bench/peers.py st "$model" "$data/corpus.jsonl" "$docs" "$repeats" | tee "$out/encode-st-$r.txt"
  "$py" bench/peers.py ort "$model" "$data/corpus.jsonl" "$docs" "$repeats" "$tmp" | tee "$out/encode-ort-$r.txt"
  for p in $precisions; do
    "$aside" bench encode --device "$device" --precision "$p" --data "$data" --docs "$docs" \
      --repeats "$repeats" 2>&1 | tee "$out/encode-aside-$p-$r.txt" || true
  done

  echo "== round $r: single-query serving ($conc connections, $dur)"
  HF_HUB_OFFLINE=1 "$ivenv/bin/infinity_emb" v2 --model-id "$model" --served-model-name minilm \
    --port 18111 --engine torch --device cpu --batch-size 32 >"$out/infinity-$r.log" 2>&1 &
  pids+=($!)
  wait_up http://127.0.0.1:18111/health
  serve_load "serve-infinity-$r" http://127.0.0.1:18111/embeddings "$tmp/infinity.txt"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  for p in $precisions; do
    "$aside" serve --port 18112 --grpc-port 0 --data-dir "$tmp/data-$p" --device "$device" \
      --precision "$p" >"$out/aside-$p-$r.log" 2>&1 &
    pids+=($!)
    wait_up http://127.0.0.1:18112/health || { echo "aside $p did not start" >&2; continue; }
    serve_load "serve-aside-$p-$r" http://127.0.0.1:18112/v1/embed "$tmp/aside.txt"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  done
done

"$py" - "$out" "$rounds" "$precisions" <<'PY' | tee "$out/table.md"
import glob, json, re, statistics, sys
out, rounds, precisions = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
def docs_per_s(name):
    v = []
    for f in sorted(glob.glob(f"{out}/encode-{name}-*.txt")):
        v += [float(m) for m in re.findall(r"([0-9.]+) docs/s", open(f).read())]
    return f"{min(v):.1f}–{max(v):.1f}" if v else "–"
def serving(name):
    v, p50 = [], []
    for f in sorted(glob.glob(f"{out}/serve-{name}-*.json")):
        j = json.load(open(f))
        v.append(j["summary"]["requestsPerSec"])
        p50.append(1000 * j["latencyPercentiles"]["p50"])
    return (f"{min(v):.0f}–{max(v):.0f}", f"{statistics.median(p50):.1f}") if v else ("–", "–")
print("| encoder | corpus docs/s | single-query req/s (c=32) | p50 ms |")
print("|---|---|---|---|")
rows = [("sentence-transformers (PyTorch)", "st", None), ("ONNX Runtime", "ort", None),
        ("infinity-emb 0.0.78", None, "infinity")]
rows += [(f"aside {p}", f"aside-{p}", f"aside-{p}") for p in precisions]
for label, enc, srv in rows:
    rps, p50 = serving(srv) if srv else ("–", "–")
    print(f"| {label} | {docs_per_s(enc) if enc else '–'} | {rps} | {p50} |")
PY
echo "results in $out"
