#!/usr/bin/env bash
# The whole test suite: sets up what it needs, builds the example WASM guests, then runs every
# Rust test (unit, integration, real FUSE mounts, hostile modules) and the POSIX suites.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh --posix-tools
scripts/build-guests.sh >/dev/null
cargo test --workspace --lib --bins --tests --no-fail-fast "$@"
# Benchmarks are run by hand (docs/BENCHMARKS.md); here they only have to build.
cargo build --benches --quiet
if [ -x scripts/posix-tests.sh ]; then
    scripts/posix-tests.sh
    # Again over FUSE over io_uring (-o io_uring), the other request transport.
    SPACEFS_OPTS=io_uring scripts/posix-tests.sh
fi
