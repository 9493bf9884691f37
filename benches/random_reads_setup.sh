# Sourced by random_reads.sh and random_reads_interleaved.sh: checks they run as root with
# gocryptfs installed, and sets SPACEFS and SPACECTL (from BIN_DIR, else a release build).
[ "$(id -u)" -eq 0 ] || { echo "run as root (drops caches, mounts)" >&2; exit 1; }
command -v gocryptfs >/dev/null || { echo "gocryptfs not installed" >&2; exit 1; }
if [ -n "${BIN_DIR:-}" ]; then
    SPACEFS="$BIN_DIR/spacefs" SPACECTL="$BIN_DIR/spacectl"
else
    cargo build --release --quiet --bin spacefs --bin spacectl
    SPACEFS="${CARGO_TARGET_DIR:-target}/release/spacefs"
    SPACECTL="${CARGO_TARGET_DIR:-target}/release/spacectl"
fi
