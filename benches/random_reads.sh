#!/usr/bin/env bash
# Cold random 4 KiB reads, spacefs vs gocryptfs vs a plain directory on the same disk, with
# what each read costs (not a timed test; run by hand as root):
#   benches/random_reads.sh [WORKDIR]        (SIZE_MIB=1024 READS=20000 ROUNDS=6)
# Each round drops the page cache before each file system's run and reads READS random
# 4 KiB-aligned blocks of a SIZE_MIB file of incompressible data, one at a time (Python
# pread, as fuse_bench.sh does). Rounds alternate the order of the three. Per run it prints
# reads/s, the disk's read requests and KiB per read (/proc/diskstats of the disk under
# WORKDIR) and, for the two FUSE daemons, their CPU time per read (/proc/PID/stat).
# BIN_DIR=/path uses the spacefs and spacectl found there (default: cargo build --release).
# SPACEFS_OPTS=io_uring mounts spacefs with FUSE over io_uring (turning fuse.enable_uring on).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WORK="${1:-/var/tmp/spacefs-random-reads}"
SIZE_MIB="${SIZE_MIB:-1024}"
READS="${READS:-20000}"
ROUNDS="${ROUNDS:-6}"

# shellcheck source=random_reads_setup.sh
. benches/random_reads_setup.sh

# shellcheck source=side_by_side.sh
. benches/side_by_side.sh
mkdir "$WORK/plain"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$WORK/src.bin"
declare -A FILE PID
FILE[space]="$WORK/space.mnt/big.bin" FILE[gocrypt]="$WORK/gocrypt.mnt/big.bin" FILE[plain]="$WORK/plain/big.bin"
for fs in space gocrypt plain; do cp "$WORK/src.bin" "${FILE[$fs]}"; done
rm "$WORK/src.bin"
sync
PID[space]=$(pgrep -f "spacefs $WORK/space.store" | head -1)
PID[gocrypt]=$(pgrep -f "gocryptfs.*$WORK/gocrypt.cipher" | tail -1)
# The disk holding WORK, as /proc/diskstats names it (its whole disk if WORK is on a partition).
DEV=$(lsblk -no PKNAME "$(df --output=source "$WORK" | tail -1)" 2>/dev/null || true)
[ -n "$DEV" ] || DEV=$(basename "$(df --output=source "$WORK" | tail -1)")
disk() { awk -v d="$DEV" '$3==d {print $4, $6}' /proc/diskstats; }
cpu_ticks() { [ -n "${PID[$1]:-}" ] && awk '{print $14+$15}' "/proc/${PID[$1]}/stat" || echo 0; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

declare -A R
for r in $(seq "$ROUNDS"); do
    case $((r % 3)) in 1) order="space gocrypt plain" ;; 2) order="gocrypt plain space" ;; 0) order="plain space gocrypt" ;; esac
    line="round $r:"
    for fs in $order; do
        sync; echo 3 > /proc/sys/vm/drop_caches
        read -r ios0 sect0 < <(disk); c0=$(cpu_ticks "$fs")
        v=$(python3 - "${FILE[$fs]}" "$READS" "$r" <<'PY'
import os, random, sys, time
p, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(p, os.O_RDONLY); size = os.fstat(fd).st_size
rnd = random.Random(seed); offs = [rnd.randrange(0, size // 4096) * 4096 for _ in range(n)]
t = time.time()
for o in offs: os.pread(fd, 4096, o)
print(f"{n / (time.time() - t):.0f}")
PY
)
        read -r ios1 sect1 < <(disk); c1=$(cpu_ticks "$fs")
        R[$fs.$r]=$v
        kib=$(python3 -c "print(f'{($sect1 - $sect0) / 2 / $READS:.1f}')")
        cpu=""
        [ "$fs" != plain ] && cpu=", daemon $(( (c1 - c0) * TICK_US / READS )) us CPU/read"
        line="$line $fs $v/s ($((ios1 - ios0)) disk reads, $kib KiB/read$cpu);"
    done
    echo "$line" >&2
done
med() { local v=(); for r in $(seq "$ROUNDS"); do v+=("${R[$1.$r]}"); done; python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.0f}')" "${v[@]}"; }
each() { local v=(); for r in $(seq "$ROUNDS"); do v+=("${R[space.$r]}" "${R[$1.$r]}"); done; python3 -c "import sys; a=list(map(float, sys.argv[1:])); print(', '.join(f'{a[i]/a[i+1]:.2f}' for i in range(0, len(a), 2)))" "${v[@]}"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
S=$(med space) G=$(med gocrypt) P=$(med plain)
echo
echo "Medians of $ROUNDS rounds, $READS cold random 4 KiB reads of a $SIZE_MIB MiB file."
echo
echo "| | spacefs | gocryptfs | plain dir |"
echo "|---|---|---|---|"
echo "| reads/s | $S | $G | $P |"
echo "| spacefs / other (median) | | $(ratio "$S" "$G") | $(ratio "$S" "$P") |"
echo "| spacefs / other, each round | | $(each gocrypt) | $(each plain) |"
