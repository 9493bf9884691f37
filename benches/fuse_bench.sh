#!/usr/bin/env bash
# spacefs vs gocryptfs, side by side on the same disk (not a timed test; run by hand as root):
#   benches/fuse_bench.sh [WORKDIR]        (SIZE_MIB=1024 SMALL_FILES=10000 BIG_MIB=4096 ROUNDS=4)
# Measures: sequential write and read of SIZE_MIB of incompressible data, random 4 KiB reads
# (RANDOM_READS per mount, both mounts read in turns of short batches; see interleaved_reads.py),
# create + read of SMALL_FILES small files, identity on-read chain vs no chain (needs a WASM
# runtime in spacefs and IDENTITY_WASM=/abs/identity.wasm), and daemon RSS while streaming a
# BIG_MIB capsule through a transform. Page cache is dropped before every read phase.
# Prints a Markdown table (ratios are SPACE/gocryptfs throughput: >1 means spacefs is faster).
# SPACEFS_OPTS=io_uring mounts spacefs with FUSE over io_uring (turning fuse.enable_uring on).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
WORK="${1:-/var/tmp/spacefs-bench}"
SIZE_MIB="${SIZE_MIB:-1024}"
SMALL_FILES="${SMALL_FILES:-10000}"
BIG_MIB="${BIG_MIB:-4096}"
RANDOM_READS="${RANDOM_READS:-20000}"
ROUNDS="${ROUNDS:-4}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

[ "$(id -u)" -eq 0 ] || { echo "run as root (drops caches, mounts)" >&2; exit 1; }
command -v gocryptfs >/dev/null || { echo "gocryptfs not installed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 needed" >&2; exit 1; }
PROFILE="${PROFILE:-release}"   # PROFILE=debug reuses the test build (indicative numbers only)
if [ -n "${BIN_DIR:-}" ]; then  # BIN_DIR=/path: use the spacefs and spacectl found there as is
    SPACEFS="$BIN_DIR/spacefs"
    SPACECTL="$BIN_DIR/spacectl"
else
    if [ "$PROFILE" = release ]; then
        cargo build --release --quiet --bin spacefs --bin spacectl
    else
        cargo build --quiet --bin spacefs --bin spacectl
    fi
    SPACEFS="$TARGET/$PROFILE/spacefs"
    SPACECTL="$TARGET/$PROFILE/spacectl"
fi
ONLY="${ONLY:-space gocrypt}"   # ONLY=space skips gocryptfs (its columns then read 1)
RAND_FS=""; for fs in space gocrypt; do case " $ONLY " in *" $fs "*) RAND_FS="$RAND_FS $fs" ;; esac; done

# shellcheck source=side_by_side.sh
. "$ROOT/benches/side_by_side.sh"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
mibps() { python3 -c "print(f'{$1/($3-$2):.1f}')"; }

declare -A R
# Rounds alternate the two file systems, so a slow spell of this VM's disk or CPU hits both;
# the table shows medians and each round's ratio. Which one goes first alternates too (space
# first in odd rounds, gocryptfs in even ones): in interleaved cold-read experiments on this
# VM a read's speed depended by 20-30% on its place in the sequence (docs/BENCHMARKS.md), so
# a fixed order can favour one side. Use an even ROUNDS for a balanced order.
for r in $(seq "$ROUNDS"); do
order="space gocrypt"; [ $((r % 2)) -eq 0 ] && order="gocrypt space"
# New bytes every round: spacefs deduplicates, and until a gc the chunks of the previous
# round's (deleted) copy are still stored, so writing the same bytes again wrote nothing to
# disk (up to 2026-12-06 rounds after the first measured that, not writing).
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$WORK/src.bin"
for fs in $order; do
    case " $ONLY " in *" $fs "*) ;; *) for k in seqw seqr rand small smallc smallr; do R[$fs.$k.$r]=1; done; continue ;; esac
    M="$WORK/$fs.mnt"
    rm -rf "$M/big.bin" "$M/small"
    # The source is read into the page cache first (as store_bench.py does for put): a cold
    # source on the same disk made this row measure the disk's mixed read/write, not the
    # filesystem under test.
    drop; cat "$WORK/src.bin" > /dev/null; t0=$(now); cp "$WORK/src.bin" "$M/big.bin"; sync; t1=$(now)
    R[$fs.seqw.$r]=$(mibps "$SIZE_MIB" "$t0" "$t1")
    drop; t0=$(now); cat "$M/big.bin" > /dev/null; t1=$(now)
    R[$fs.seqr.$r]=$(mibps "$SIZE_MIB" "$t0" "$t1")
    mkdir "$M/small"
    t0=$(now)
    python3 - "$M/small" "$SMALL_FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(f"{d}/f{i}", "wb") as f: f.write(os.urandom(1024 + i % 3072))
PY
    t1=$(now); drop; t2=$(now)
    python3 - "$M/small" "$SMALL_FILES" <<'PY'
import sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n): open(f"{d}/f{i}", "rb").read()
PY
    t3=$(now)
    R[$fs.small.$r]=$(python3 -c "print(f'{$SMALL_FILES/(($t1-$t0)+($t3-$t2)):.0f}')")
    R[$fs.smallc.$r]=$(python3 -c "print(f'{$SMALL_FILES/($t1-$t0):.0f}')")
    R[$fs.smallr.$r]=$(python3 -c "print(f'{$SMALL_FILES/($t3-$t2):.0f}')")
    # Each round's own figures, on stderr as it goes (the table below has medians and ratios).
    echo "round $r $fs: write ${R[$fs.seqw.$r]} MiB/s, read ${R[$fs.seqr.$r]} MiB/s," \
        "create ${R[$fs.smallc.$r]}/s, open+read ${R[$fs.smallr.$r]}/s" >&2
done
# Random reads from both mounts at once, in turns of short batches (interleaved_reads.py): a
# single 0.1-0.4 s stall of this VM moved a whole sequential run's total by 10-30%.
drop
paths=(); for fs in $RAND_FS; do paths+=("$WORK/$fs.mnt/big.bin"); done
read -r -a rates < <(python3 benches/interleaved_reads.py read "$r" "$RANDOM_READS" "$WORK/batches" "${paths[@]}")
i=0; for fs in $RAND_FS; do R[$fs.rand.$r]=${rates[$i]}; i=$((i + 1)); done
echo "round $r random 4 KiB reads, interleaved: $(for fs in $RAND_FS; do echo -n "$fs ${R[$fs.rand.$r]}/s "; done)" >&2
done

# median of one figure over the rounds; "each" = every round's SPACE/gocryptfs ratio
med() { local v=(); for r in $(seq "$ROUNDS"); do v+=("${R[$1.$2.$r]}"); done; python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" "${v[@]}"; }
each() { local v=(); for r in $(seq "$ROUNDS"); do v+=("${R[space.$1.$r]}" "${R[gocrypt.$1.$r]}"); done; python3 -c "import sys; a=list(map(float, sys.argv[1:])); print(', '.join(f'{a[i]/a[i+1]:.2f}' for i in range(0, len(a), 2)))" "${v[@]}"; }
for k in seqw seqr rand small smallc smallr; do R[space.$k]=$(med space $k); R[gocrypt.$k]=$(med gocrypt $k); done
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo
echo "Medians of $ROUNDS alternating rounds."
echo
echo "| workload | spacefs | gocryptfs | SPACE/gocryptfs | each round |"
echo "|---|---|---|---|---|"
echo "| sequential write ${SIZE_MIB} MiB (MiB/s) | ${R[space.seqw]} | ${R[gocrypt.seqw]} | $(ratio "${R[space.seqw]}" "${R[gocrypt.seqw]}") | $(each seqw) |"
echo "| sequential read ${SIZE_MIB} MiB, cold (MiB/s) | ${R[space.seqr]} | ${R[gocrypt.seqr]} | $(ratio "${R[space.seqr]}" "${R[gocrypt.seqr]}") | $(each seqr) |"
# Random reads: the ratio is the median over all batches of gocryptfs's batch time / spacefs's
# (95% bootstrap interval in brackets); "each round" is each round's median of them.
if [ "$RAND_FS" = " space gocrypt" ]; then
    rand_ratio=$(python3 benches/interleaved_reads.py ratio "$WORK/batches" 0 1)
    rand_each=$(python3 benches/interleaved_reads.py each "$WORK/batches" 0 1)
else
    rand_ratio="" rand_each=""
fi
echo "| random 4 KiB reads, cold, interleaved (IOPS) | ${R[space.rand]} | ${R[gocrypt.rand]} | ${rand_ratio} | ${rand_each} |"
echo "| create+read ${SMALL_FILES} small files (files/s) | ${R[space.small]} | ${R[gocrypt.small]} | $(ratio "${R[space.small]}" "${R[gocrypt.small]}") | $(each small) |"
echo "| ... of which create (files/s) | ${R[space.smallc]} | ${R[gocrypt.smallc]} | $(ratio "${R[space.smallc]}" "${R[gocrypt.smallc]}") | $(each smallc) |"
echo "| ... of which open+read, cold (files/s) | ${R[space.smallr]} | ${R[gocrypt.smallr]} | $(ratio "${R[space.smallr]}" "${R[gocrypt.smallr]}") | $(each smallr) |"

if [ -n "${IDENTITY_WASM:-}" ]; then
    # Identity on-read chain vs no chain, and RSS while streaming a BIG_MIB capsule through it.
    mkdir "$WORK/space.mnt/id"
    # cache: false measures the chain itself (a cached view would be read back from the store).
    setfattr -n user.space.policy -v "cache: false
transform:
  - name: identity
    image: file://$IDENTITY_WASM
    trigger: on-read" "$WORK/space.mnt/id"
    cp "$WORK/src.bin" "$WORK/space.mnt/id/big.bin"
    # As many cold reads as rounds above, alternating with a read of the same bytes without
    # a chain (big.bin from the last round), so both medians come from the same spells.
    ids=(); plains=()
    for r in $(seq "$ROUNDS"); do
        drop; t0=$(now); cat "$WORK/space.mnt/id/big.bin" > /dev/null; t1=$(now)
        ids+=("$(mibps "$SIZE_MIB" "$t0" "$t1")")
        drop; t0=$(now); cat "$WORK/space.mnt/big.bin" > /dev/null; t1=$(now)
        plains+=("$(mibps "$SIZE_MIB" "$t0" "$t1")")
    done
    idm=$(python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" "${ids[@]}")
    plm=$(python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" "${plains[@]}")
    echo "| identity on-read chain, read ${SIZE_MIB} MiB, cold (MiB/s) | ${idm} | no chain: ${plm} | $(ratio "$idm" "$plm") | ${ids[*]} vs ${plains[*]} |"
    head -c "$((BIG_MIB << 20))" /dev/urandom > "$WORK/space.mnt/id/huge.bin"
    pid=$(pgrep -f "spacefs $WORK/space.store" | head -1)
    drop; peak=0
    cat "$WORK/space.mnt/id/huge.bin" > /dev/null & cpid=$!
    while kill -0 $cpid 2>/dev/null; do
        rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status); [ "$rss" -gt "$peak" ] && peak=$rss; sleep 0.2
    done
    echo "| daemon peak RSS streaming ${BIG_MIB} MiB through a transform (MiB) | $((peak / 1024)) | | |"
fi
