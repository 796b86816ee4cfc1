#!/usr/bin/env bash
# The test suite: unit, integration (moto, then ministack), chart, Lambda handlers, end-to-end (skips
# without a cluster). Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TAP_MINISTACK_BIN="$HOME/.cache/tap-controller/ministack/bin/ministack"

echo "== cargo test (moto)"
cargo test --workspace "$@"

echo "== integration tests against ministack"
# --workspace: the same feature set as the run above, so nothing is rebuilt.
TAP_TEST_EMULATOR=ministack cargo test --workspace --test stack --test drivers "$@"
