#!/usr/bin/env bash
# Builds the example WebAssembly guests (examples/guests) in release mode and
# copies the modules to examples/guests/dist/. Idempotent: safe to re-run;
# cargo rebuilds only what changed.
#
# Usage: scripts/build-guests.sh [extra cargo args...]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
guests="$root/examples/guests"
target=wasm32-unknown-unknown

# The guests need the wasm target; add it once if this toolchain lacks it.
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target"
    fi
fi

cd "$guests"
# The guests workspace has its own target dir (examples/guests/target) and
# its own .cargo/config.toml (simd128, 64 KiB stack); an inherited
# CARGO_TARGET_DIR would mix their artifacts with the host's.
unset CARGO_TARGET_DIR
cargo build --release --target "$target" --workspace "$@"

mkdir -p dist
for crate in identity uppercase append_bang v0_reverse_case redact_pii grep csv2jsonl gunzip; do
    src="target/$target/release/$crate.wasm"
    cp "$src" "dist/$crate.wasm"
    echo "$guests/dist/$crate.wasm"
done
