#!/usr/bin/env bash
# Regenerates the adapter parity fixtures: the seeded test adapters of every kind
# (written by the adapters crate's `write_test_adapters` example), run through the
# independent NumPy implementation of method.md (tools/reference.py). The tests
# regenerate the same adapters in-process and compare against these outputs.
# Needs: python3 with numpy, safetensors, tokenizers; the default model fetched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fx=adapters/tests/fixtures
mkdir -p "$fx/tiny" "$fx/minilm"
cargo run --release --quiet -p aside-adapters --example write_test_adapters -- "$tmp/tiny" "$tmp/tiny-ad" --tiny
cargo run --release --quiet -p aside-adapters --example write_test_adapters -- models/all-MiniLM-L6-v2 "$tmp/minilm-ad"
for set in tiny minilm; do
  model="$tmp/tiny"; inputs="$fx/tiny_inputs.jsonl"; pairs="$fx/tiny_pairs.jsonl"
  if [[ $set == minilm ]]; then
    model=models/all-MiniLM-L6-v2; inputs=backbone/tests/fixtures/minilm_inputs.jsonl; pairs="$fx/minilm_pairs.jsonl"
  fi
  for f in "$tmp/$set-ad"/*.safetensors; do
    label="$(basename "$f" .safetensors)"
    src="$inputs"; [[ $label == rerank-* ]] && src="$pairs"
    python3 tools/reference.py --model "$model" --adapter "$f" --max-length 256 < "$src" > "$fx/$set/$label.jsonl"
    echo "$set/$label"
  done
done
