#!/usr/bin/env bash
# Cold random 4 KiB reads through spacefs over /dev/fuse, spacefs over io_uring (-o io_uring),
# gocryptfs and a plain directory, on the same disk, measured *interleaved* (not a timed test;
# run by hand as root):
#   benches/random_reads_interleaved.sh [WORKDIR]     (SIZE_MIB=1024 READS=10000 ROUNDS=6)
# This VM's speed drifts within seconds, so runs taken one after the other (random_reads.sh)
# compare different moments. Here one Python process (interleaved_reads.py) reads from all four
# in batches of 250 preads, in a new random order per batch: every file system sees the same
# moments, and batches taken side by side are compared one by one, so a stall of the VM moves
# one batch's ratio, not the round's. Each round drops the page cache first and reads READS
# random 4 KiB blocks per file system (different blocks, same distribution). Turns
# fuse.enable_uring on.
# BIN_DIR=/path uses the spacefs and spacectl found there (default: cargo build --release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WORK="${1:-/var/tmp/spacefs-random-interleaved}"
SIZE_MIB="${SIZE_MIB:-1024}"
READS="${READS:-10000}"
ROUNDS="${ROUNDS:-6}"

[ -e /sys/module/fuse/parameters/enable_uring ] || { echo "no FUSE over io_uring in this kernel" >&2; exit 1; }
# shellcheck source=random_reads_setup.sh
. benches/random_reads_setup.sh

NAMES="devfuse uring gocrypt plain"
cleanup() {
    for n in $NAMES; do
        m="$WORK/$n.mnt"
        mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
cleanup
for n in $NAMES; do mkdir -p "$WORK/$n.mnt"; done
echo Y > /sys/module/fuse/parameters/enable_uring
"$SPACECTL" init "$WORK/devfuse.store" >/dev/null
"$SPACEFS" "$WORK/devfuse.store" "$WORK/devfuse.mnt"
"$SPACECTL" init "$WORK/uring.store" >/dev/null
"$SPACEFS" "$WORK/uring.store" "$WORK/uring.mnt" -o io_uring
grep -qx 'fuse_transport: io_uring' "$WORK/uring.mnt/.space/stats" \
    || { echo "spacefs -o io_uring is not served over io_uring" >&2; exit 1; }
mkdir "$WORK/gocrypt.cipher"
echo bench-passphrase > "$WORK/pass"
gocryptfs -q -init -passfile "$WORK/pass" "$WORK/gocrypt.cipher" >/dev/null
gocryptfs -q -passfile "$WORK/pass" "$WORK/gocrypt.cipher" "$WORK/gocrypt.mnt"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$WORK/src.bin"
for n in $NAMES; do cp "$WORK/src.bin" "$WORK/$n.mnt/big.bin"; done
rm "$WORK/src.bin"
sync

FILES=(); for n in $NAMES; do FILES+=("$WORK/$n.mnt/big.bin"); done
for r in $(seq "$ROUNDS"); do
    sync; echo 3 > /proc/sys/vm/drop_caches
    echo "$r $(python3 benches/interleaved_reads.py read "$r" "$READS" "$WORK/batches" "${FILES[@]}")"
done | tee "$WORK/rounds" | while read -r r d u g p; do
    echo "round $r: spacefs /dev/fuse $d/s, spacefs io_uring $u/s, gocryptfs $g/s, plain $p/s" >&2
done

# Batch by batch (columns: 0 /dev/fuse, 1 io_uring, 2 gocryptfs): over all rounds the median
# ratio with its 95% bootstrap interval, and each round's median.
ratio() { python3 benches/interleaved_reads.py ratio "$WORK/batches" "$@"; }
each() { python3 benches/interleaved_reads.py each "$WORK/batches" "$@"; }
python3 - "$WORK/rounds" "$READS" "$SIZE_MIB" "$(ratio 0 2)" "$(ratio 1 2)" "$(each 0 2)" "$(each 1 2)" "$(each 0 1)" <<'PY'
import statistics, sys
rows = [list(map(float, l.split()[1:])) for l in open(sys.argv[1])]
d, u, g, p = zip(*rows)
med = statistics.median
dev, uring, dev_each, uring_each, both_each = sys.argv[4:9]
print(f"\n{len(rows)} rounds, {sys.argv[2]} cold random 4 KiB reads per file system and round "
      f"of a {sys.argv[3]} MiB file, interleaved in batches of 250.\n")
print("| | spacefs /dev/fuse | spacefs io_uring | gocryptfs | plain dir |")
print("|---|---|---|---|---|")
print(f"| reads/s (median of rounds) | {med(d):.0f} | {med(u):.0f} | {med(g):.0f} | {med(p):.0f} |")
print(f"| / gocryptfs: median of batch ratios [95% interval] | {dev} | {uring} | | |")
print(f"| / gocryptfs: each round's median | {dev_each} | {uring_each} | | |")
print(f"| io_uring / /dev/fuse: each round's median | | {both_each} | | |")
PY
