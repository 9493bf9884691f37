#!/usr/bin/env bash
# The whole test suite: sets up what it needs, builds the example WASM guests, then runs every
# Rust test (unit, integration, real FUSE mounts, hostile modules) and the POSIX suites.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh --posix-tools
scripts/build-guests.sh >/dev/null
cargo test --workspace --all-targets --no-fail-fast "$@"
if [ -x scripts/posix-tests.sh ]; then
    scripts/posix-tests.sh
fi
