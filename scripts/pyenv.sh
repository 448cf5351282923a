#!/usr/bin/env bash
# The test suite's Python: a virtualenv at .venv/ (or $ASIDE_VENV) with the pinned
# packages of scripts/test-requirements.txt and aside's own client
# (clients/python, installed with pip as a user would). Idempotent: reinstalls only
# when the requirements or the client change. Prints the interpreter's path as its
# last line.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ASIDE_VENV:-$root/.venv}"
req="$root/scripts/test-requirements.txt"
stamp="$venv/.requirements.sha256"
want="$( (cat "$req"; find "$root/clients/python" -type f -not -path '*/build/*' -not -name '*.pyc' -not -path '*.egg-info*' | sort | xargs cat) | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setting up the test virtualenv at $venv ..." >&2
  if ! python3 -m venv "$venv" >&2; then
    # Debian's python3 needs its venv package for ensurepip.
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
      python3 -m venv "$venv" >&2
    else
      echo "error: python3 -m venv failed (install python3-venv)" >&2
      exit 1
    fi
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$root/clients/python" >&2
  echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
