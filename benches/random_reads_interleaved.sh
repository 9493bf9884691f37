#!/usr/bin/env bash
# Cold random 4 KiB reads through spacefs over /dev/fuse, spacefs over io_uring (-o io_uring),
# gocryptfs and a plain directory, on the same disk, measured *interleaved* (not a timed test;
# run by hand as root):
#   benches/random_reads_interleaved.sh [WORKDIR]     (SIZE_MIB=1024 READS=10000 ROUNDS=6)
# This VM's speed drifts within seconds, so runs taken one after the other (random_reads.sh)
# compare different moments. Here one Python process reads from all four in batches of 250
# preads, in a new random order per batch, and sums each one's time: every file system sees
# the same moments. Each round drops the page cache first and reads READS random 4 KiB blocks
# per file system (different blocks, same distribution). Turns fuse.enable_uring on.
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

for r in $(seq "$ROUNDS"); do
    sync; echo 3 > /proc/sys/vm/drop_caches
    python3 - "$WORK" "$READS" "$r" $NAMES <<'PY'
import os, random, sys, time
work, n, seed, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
fds = [os.open(f"{work}/{x}.mnt/big.bin", os.O_RDONLY) for x in names]
blocks = os.fstat(fds[0]).st_size // 4096
rnd = random.Random(seed)
offs = [[rnd.randrange(blocks) * 4096 for _ in range(n)] for _ in names]
took = [0.0] * len(names)
for b in range(0, n, 250):
    order = list(range(len(names)))
    rnd.shuffle(order)
    for i in order:
        fd, t = fds[i], time.perf_counter()
        for o in offs[i][b:b + 250]:
            os.pread(fd, 4096, o)
        took[i] += time.perf_counter() - t
rate = {x: n / t for x, t in zip(names, took)}
print(f"{seed} " + " ".join(f"{rate[x]:.0f}" for x in names), flush=True)
PY
done | tee "$WORK/rounds" | while read -r r d u g p; do
    echo "round $r: spacefs /dev/fuse $d/s, spacefs io_uring $u/s, gocryptfs $g/s, plain $p/s" >&2
done

python3 - "$WORK/rounds" "$READS" "$SIZE_MIB" <<'PY'
import statistics, sys
rows = [list(map(float, l.split()[1:])) for l in open(sys.argv[1])]
d, u, g, p = zip(*rows)
med = statistics.median
print(f"\nMedians of {len(rows)} rounds, {sys.argv[2]} cold random 4 KiB reads per file system and round "
      f"of a {sys.argv[3]} MiB file, interleaved.\n")
print("| | spacefs /dev/fuse | spacefs io_uring | gocryptfs | plain dir |")
print("|---|---|---|---|---|")
print(f"| reads/s | {med(d):.0f} | {med(u):.0f} | {med(g):.0f} | {med(p):.0f} |")
r = lambda a, b: ", ".join(f"{x / y:.2f}" for x, y in zip(a, b))
print(f"| / gocryptfs (median of rounds) | {med([x / y for x, y in zip(d, g)]):.2f} | {med([x / y for x, y in zip(u, g)]):.2f} | | |")
print(f"| / gocryptfs, each round | {r(d, g)} | {r(u, g)} | | |")
print(f"| io_uring / /dev/fuse, each round | | {r(u, d)} | | |")
PY
