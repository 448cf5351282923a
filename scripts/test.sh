#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the default model (idempotent, verified),
# then every test of the workspace in release mode (debug code is ~150x slower).
# Tests that need the real model fail here rather than skip (ASIDE_REQUIRE_MODEL=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh
export ASIDE_REQUIRE_MODEL=1
cargo test --release --workspace "$@"
