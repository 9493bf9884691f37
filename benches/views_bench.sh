#!/usr/bin/env bash
# The derived-output cache through a real mount (not a timed test; run by hand as root):
#   benches/views_bench.sh [WORKDIR]        (SIZE_MIB=1024 RANDOM_READS=20000 MODULE=redact_pii)
# Prints, in one run, for a SIZE_MIB text capsule read through a compute-heavy on-read chain
# (the redact_pii example guest by default):
#   - the chain alone (policy `cache: false`), the first read (chain + storing the output in
#     the cache) and the second read (served from the cache); the cache overhead is
#     first / chain-alone, the speed-up second / first;
#   - random 4 KiB preads on the materialized view vs on the raw capsule (/.space/raw).
# The page cache is dropped before every phase. Needs examples/guests/dist (scripts/build-guests.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
WORK="${1:-/var/tmp/spacefs-views-bench}"
SIZE_MIB="${SIZE_MIB:-1024}"
RANDOM_READS="${RANDOM_READS:-20000}"
MODULE="${MODULE:-redact_pii}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
WASM="$ROOT/examples/guests/dist/$MODULE.wasm"

[ "$(id -u)" -eq 0 ] || { echo "run as root (drops caches, mounts)" >&2; exit 1; }
[ -f "$WASM" ] || { echo "$WASM missing: run scripts/build-guests.sh" >&2; exit 1; }
PROFILE="${PROFILE:-release}"
if [ -n "${BIN_DIR:-}" ]; then
    SPACEFS="$BIN_DIR/spacefs"; SPACECTL="$BIN_DIR/spacectl"
else
    if [ "$PROFILE" = release ]; then
        cargo build --release --quiet --bin spacefs --bin spacectl
    else
        cargo build --quiet --bin spacefs --bin spacectl
    fi
    SPACEFS="$TARGET/$PROFILE/spacefs"; SPACECTL="$TARGET/$PROFILE/spacectl"
fi

cleanup() {
    mountpoint -q "$WORK/mnt" 2>/dev/null && { fusermount3 -u "$WORK/mnt" 2>/dev/null || umount -l "$WORK/mnt"; }
    rm -rf "$WORK"
}
trap cleanup EXIT
cleanup
mkdir -p "$WORK/mnt"
export SPACE_STORE="$WORK/store"
"$SPACECTL" init >/dev/null

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
mibps() { python3 -c "print(f'{$1/($3-$2):.1f}')"; }

# Text with something to redact on every line; not repetitive enough for dedup to matter.
python3 - "$WORK/src.txt" "$SIZE_MIB" <<'PY'
import os, random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(5)
words = [b"capsule", b"space", b"chunk", b"the", b"of", b"transform", b"wasm", b"store"]
with open(path, "wb") as f:
    left = mib << 20
    while left > 0:
        lines = []
        for _ in range(4096):
            n = rnd.randrange(1 << 30)
            w = b" ".join(words[(n >> (3 * i)) & 7] for i in range(8))
            lines.append(b"%d %s mail user%d@example.com card 4111-1111-1111-%04d\n" % (n, w, n % 99991, n % 10000))
        block = b"".join(lines)[:left]
        f.write(block); left -= len(block)
PY
policy() { # $1 = cache: true|false
    printf 'cache: %s\ntransform:\n  - name: %s\n    image: file://%s\n' "$1" "$MODULE" "$WASM" > "$WORK/p-$1.yaml"
    echo "$WORK/p-$1.yaml"
}
"$SPACECTL" put "$WORK/src.txt" --as /nocache.txt --policy "$(policy false)" -q >/dev/null
"$SPACECTL" put "$WORK/src.txt" --as /cached.txt --policy "$(policy true)" -q >/dev/null
rm -f "$WORK/src.txt"
"$SPACEFS" "$SPACE_STORE" "$WORK/mnt"
M="$WORK/mnt"

drop; t0=$(now); cat "$M/nocache.txt" > /dev/null; t1=$(now); chain=$(mibps "$SIZE_MIB" "$t0" "$t1")
drop; t0=$(now); cat "$M/cached.txt" > /dev/null; t1=$(now); first=$(mibps "$SIZE_MIB" "$t0" "$t1")
drop; t0=$(now); cat "$M/cached.txt" > /dev/null; t1=$(now); second=$(mibps "$SIZE_MIB" "$t0" "$t1")
stored=$(awk '/^derived_stored:/ {print $2}' "$M/.space/stats")

randread() {
    python3 - "$1" "$RANDOM_READS" <<'PY'
import os, random, sys, time
p, n = sys.argv[1], int(sys.argv[2])
fd = os.open(p, os.O_RDONLY); size = os.fstat(fd).st_size
assert size > 0, f"{p}: size 0 (view not materialized?)"
rnd = random.Random(7); offs = [rnd.randrange(0, size // 4096) * 4096 for _ in range(n)]
t = time.time()
for o in offs: os.pread(fd, 4096, o)
print(f"{n / (time.time() - t):.0f}")
PY
}
drop; rand_view=$(randread "$M/cached.txt")
drop; rand_raw=$(randread "$M/.space/raw/cached.txt")

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo
echo "| $SIZE_MIB MiB text through \`$MODULE\` (on-read, FUSE, cold page cache) | value | ratio | target |"
echo "|---|---|---|---|"
echo "| chain alone, \`cache: false\` (MiB/s) | $chain | | |"
echo "| first read: chain + storing the output (MiB/s) | $first | overhead $(python3 -c "print(f'{($chain/$first - 1)*100:.1f}%')") | <= 15% |"
echo "| second read: from the cache (MiB/s) | $second | $(ratio "$second" "$first")x the first | >= 5x |"
echo "| random 4 KiB reads, materialized view (reads/s) | $rand_view | cost $(ratio "$rand_raw" "$rand_view")x raw | <= 1.5x |"
echo "| random 4 KiB reads, raw capsule (reads/s) | $rand_raw | | |"
echo
echo "derived entries stored during the run: $stored (expected 1: the cache: false capsule is never cached)"
