#!/usr/bin/env bash
# POSIX conformance and data integrity of a spacefs mount: pjdfstest (compared against
# tests/pjdfstest_expected_failures.txt: any new failure fails the run) and fsx (FSX_OPS
# operations, default 100000, must not find a mismatch). Needs root and /dev/fuse; under CI=true
# a missing prerequisite fails, otherwise it skips. Tools: `cargo install pjdfstest fsx`.
# SPACEFS_OPTS adds mount options (`SPACEFS_OPTS=io_uring` runs both suites over FUSE over
# io_uring, turning the fuse module parameter enable_uring on; it must then be served that way).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
FSX_OPS="${FSX_OPS:-100000}"
EXPECTED="$ROOT/tests/pjdfstest_expected_failures.txt"

skip() {
    if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
        echo "posix-tests: FAIL: $*" >&2
        exit 1
    fi
    echo "posix-tests: SKIPPED: $*" >&2
    exit 0
}

[ "$(id -u)" -eq 0 ] || skip "needs root (pjdfstest switches users)"
[ -e /dev/fuse ] || skip "/dev/fuse is missing"
case ",${SPACEFS_OPTS:-}," in
*,io_uring[,=]*)
    p=/sys/module/fuse/parameters/enable_uring
    [ -e $p ] || skip "this kernel has no FUSE over io_uring"
    echo Y > $p || skip "cannot set $p"
    ;;
esac
command -v pjdfstest >/dev/null || skip "pjdfstest not installed (cargo install pjdfstest)"
command -v fsx >/dev/null || skip "fsx not installed (cargo install fsx)"

# Build the binaries the way the test suite does (same feature set as `cargo test`, so this
# reuses its build instead of compiling wasmtime a second time).
cargo test --quiet --no-run --test fuse_mount
SPACEFS="$TARGET/debug/spacefs"
SPACECTL="$TARGET/debug/spacectl"

# pjdfstest needs a second unprivileged user with its own group.
if ! id spacetest >/dev/null 2>&1; then
    groupadd -r spacetest 2>/dev/null || true
    useradd -r -M -g spacetest -s /usr/sbin/nologin spacetest
fi
nogroup=$(getent group nogroup >/dev/null && echo nogroup || echo nobody)

WORK=$(mktemp -d /var/tmp/spacefs-posix.XXXXXX)
MNT="$WORK/mnt"
cleanup() {
    cd /
    if mountpoint -q "$MNT" 2>/dev/null; then
        fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$WORK"   # other users (pjdfstest) must reach the mount point
mkdir -p "$MNT"
"$SPACECTL" init "$WORK/store" >/dev/null
"$SPACEFS" "$WORK/store" "$MNT" -o "allow_other,log_file=$WORK/spacefs.log${SPACEFS_OPTS:+,$SPACEFS_OPTS}" \
    || skip "spacefs could not mount (see above)"
case ",${SPACEFS_OPTS:-}," in
*,io_uring[,=]*)
    grep -qx 'fuse_transport: io_uring' "$MNT/.space/stats" \
        || skip "-o io_uring is not served over io_uring here (see $WORK/spacefs.log)"
    echo "== transport: io_uring"
    ;;
esac

cat > "$WORK/pjdfstest.toml" <<TOML
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}
[settings]
naptime = 0.001
allow_remount = false
[dummy_auth]
entries = [["nobody", "$nogroup"], ["spacetest", "spacetest"]]
TOML

status=0
echo "== pjdfstest on $MNT"
mkdir "$MNT/pjd"
chmod 777 "$MNT/pjd"
(cd "$MNT/pjd" && pjdfstest -c "$WORK/pjdfstest.toml" -p "$MNT/pjd") > "$WORK/pjdfstest.out" 2>&1 || true
grep -E '^[a-z_0-9]+::[^ ]+ +(ok|FAILED|skipped)' "$WORK/pjdfstest.out" | awk '{print $1, $NF}' > "$WORK/results"
passed=$(grep -c ' ok$' "$WORK/results" || true)
failed=$(grep -c ' FAILED$' "$WORK/results" || true)
skipped=$(grep -c ' skipped$' "$WORK/results" || true)
echo "pjdfstest: $passed passed, $failed failed, $skipped skipped (not applicable on Linux/without features)"
[ "$((passed + failed))" -gt 100 ] || { echo "pjdfstest did not run properly:"; tail -30 "$WORK/pjdfstest.out"; exit 1; }
# (`|| true`: grep exits 1 when nothing fails or nothing is expected to, which pipefail would
# turn into a failed run.)
{ grep ' FAILED$' "$WORK/results" || true; } | awk '{print $1}' | sort > "$WORK/failed"
{ grep -vE '^\s*(#|$)' "$EXPECTED" || true; } | awk '{print $1}' | sort > "$WORK/expected"
new=$(comm -23 "$WORK/failed" "$WORK/expected")
fixed=$(comm -13 "$WORK/failed" "$WORK/expected")
if [ -n "$new" ]; then
    echo "pjdfstest: NEW failures (not in tests/pjdfstest_expected_failures.txt):"
    for t in $new; do
        echo "  $t"
        awk -v t="$t" '$1==t {p=1; next} p && /^[a-z_0-9]+::/ {p=0} p' "$WORK/pjdfstest.out" | head -3 | sed 's/^/      /'
    done
    status=1
fi
if [ -n "$fixed" ]; then
    echo "pjdfstest: expected failures that now pass (remove them from the list):"
    echo "$fixed" | sed 's/^/  /'
fi

echo "== fsx: $FSX_OPS operations"
mkdir "$MNT/fsx"
if (cd "$WORK" && fsx -N "$FSX_OPS" -S 1 -P "$WORK" "$MNT/fsx/testfile") > "$WORK/fsx.out" 2>&1; then
    echo "fsx: $FSX_OPS operations, no mismatch"
else
    echo "fsx: FAILED"
    tail -40 "$WORK/fsx.out"
    status=1
fi

fusermount3 -u "$MNT"
for _ in $(seq 100); do pgrep -f "spacefs $WORK/store" >/dev/null || break; sleep 0.1; done
if ! "$SPACECTL" --store "$WORK/store" fsck >/dev/null; then
    echo "fsck after the POSIX suites: FAILED"
    "$SPACECTL" --store "$WORK/store" fsck || true
    status=1
fi
if grep -q ' ERROR ' "$WORK/spacefs.log" 2>/dev/null; then
    echo "spacefs logged errors:"; grep ' ERROR ' "$WORK/spacefs.log" | head -20
fi
if [ -n "${SPACEFS_OPTS:-}" ] && [ "$status" -eq 0 ]; then
    echo "posix-tests with -o ${SPACEFS_OPTS}: passed"
fi
exit $status
