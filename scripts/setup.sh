#!/usr/bin/env bash
# Installs what SPACE's demo and tests need on a fresh Debian machine with only Rust:
# FUSE 3 tools (fusermount3), attr (setfattr/getfattr), the wasm32 target for the example
# guests, and the POSIX test tools (pjdfstest, fsx) when asked for with --posix-tools.
# Idempotent: installs only what is missing.
set -euo pipefail

need_pkgs=()
command -v fusermount3 >/dev/null 2>&1 || need_pkgs+=(fuse3)
command -v setfattr >/dev/null 2>&1 || need_pkgs+=(attr)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
if [ "${1:-}" = "--bench" ]; then
    command -v gocryptfs >/dev/null 2>&1 || need_pkgs+=(gocryptfs)
    command -v fio >/dev/null 2>&1 || need_pkgs+=(fio)
    [ -x /usr/bin/time ] || need_pkgs+=(time)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing ${need_pkgs[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
    rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
fi

if [ "${1:-}" = "--posix-tools" ]; then
    command -v pjdfstest >/dev/null 2>&1 || cargo install --locked pjdfstest
    command -v fsx >/dev/null 2>&1 || cargo install --locked fsx
fi
