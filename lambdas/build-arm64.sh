#!/usr/bin/env bash
# Builds the three Lambda functions as static linux/arm64 binaries (aarch64-unknown-linux-musl,
# profile `release-lambda`) and copies each to <target dir>/lambda/<fn>/bootstrap.
# Needs: the rustup target aarch64-unknown-linux-musl (added here if missing) and Debian's
# gcc-aarch64-linux-gnu for the C parts of the TLS stack (linking uses the bundled rust-lld; see
# .cargo/config.toml).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target=aarch64-unknown-linux-musl
target_dir="${CARGO_TARGET_DIR:-$root/target}"
functions=(csv-validator data-transformer notification-sender)

if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  echo "build-arm64.sh: aarch64-linux-gnu-gcc not found: apt-get install gcc-aarch64-linux-gnu" >&2
  exit 1
fi

packages=()
for f in "${functions[@]}"; do packages+=(-p "$f"); done
cargo build --locked --profile release-lambda --target "$target" "${packages[@]}"

for f in "${functions[@]}"; do
  mkdir -p "$target_dir/lambda/$f"
  cp "$target_dir/$target/release-lambda/$f" "$target_dir/lambda/$f/bootstrap"
  printf '%-22s %s (%s bytes)\n' "$f" "$target_dir/lambda/$f/bootstrap" "$(stat -c %s "$target_dir/lambda/$f/bootstrap")"
done
