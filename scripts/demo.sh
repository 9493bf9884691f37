#!/usr/bin/env bash
# The main job, end to end: installs what it needs, builds SPACE and the example WASM guests,
# creates a store in a temporary directory, adds capsules with policies, mounts the store with
# spacefs, and shows transformed reads through ordinary programs (cat, grep, head).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
echo "== building spacectl, spacefs and the example WASM guests"
cargo build --release --bins -q
scripts/build-guests.sh >/dev/null
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"
export PATH="$bin:$PATH"
guests="$PWD/examples/guests/dist"

work="$(mktemp -d /tmp/space-demo.XXXXXX)"
mnt="$work/mnt"
export SPACE_STORE="$work/store"
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then spacectl umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt"; fi
    rm -rf "$work"
}
trap cleanup EXIT
run() { printf '\n$ %s\n' "$*"; "$@"; }

echo "== a store in $SPACE_STORE"
run spacectl init
run spacectl module add "$guests/redact_pii.wasm"
run spacectl module add "$guests/grep.wasm"
run spacectl module add "$guests/csv2jsonl.wasm"

cat > "$work/customers.txt" <<'EOF'
2026-11-01 order 1001 by alice@example.com paid with 4111 1111 1111 1111
2026-11-02 order 1002 by bob@example.org paid with 5500-0000-0000-0004
2026-11-03 refund 1001 to alice@example.com
EOF
cat > "$work/app.log" <<'EOF'
12:00:01 INFO  service started
12:00:02 ERROR cannot reach database (retrying)
12:00:05 INFO  database reachable
12:00:09 error disk almost full on /var
EOF
printf 'id,name,city\n1,"Ada, Countess",London\n2,Grace,"New York"\n' > "$work/people.csv"
cat > "$work/payments.log" <<'EOF'
09:00:01 INFO  charged alice@example.com 4111 1111 1111 1111
09:00:02 ERROR card declined for bob@example.org 5500-0000-0000-0004
09:00:03 INFO  refund sent to alice@example.com
EOF

echo
echo "== capsules with policies (examples/policies/)"
run spacectl put "$work/customers.txt" --as /crm/customers.txt -p --policy examples/policies/redact-on-read.yaml
run spacectl put "$work/app.log" --as /logs/app.log -p --policy examples/policies/grep-errors-on-read.yaml
run spacectl mkdir /ingest --policy examples/policies/csv-to-jsonl-on-write.yaml
run spacectl put "$work/people.csv" --as /ingest/people.csv
run spacectl put "$work/payments.log" --as /logs/payments.log --policy examples/policies/views.yaml
run spacectl ls -l /crm

echo
echo "== mounting with spacefs (a real FUSE mount)"
mkdir -p "$mnt"
run spacefs "$SPACE_STORE" "$mnt"
run ls -la "$mnt" "$mnt/crm"
echo
echo "# on-read redaction: readers never see the addresses or card numbers"
run cat "$mnt/crm/customers.txt"
echo "# the stored bytes, for whoever may see them"
run cat "$mnt/.space/raw/crm/customers.txt"
echo "# on-read filter: the log shows only error lines"
run cat "$mnt/logs/app.log"
echo "# on-write conversion: CSV stored as JSON lines"
run cat "$mnt/ingest/people.csv"
echo "# one capsule, many views: the default view (redacted) and a named one (errors only)"
run cat "$mnt/logs/payments.log"
run ls "$mnt/.space/views" "$mnt/.space/views/errors/logs"
run cat "$mnt/.space/views/errors/logs/payments.log"
echo "# computed once, then served from the derived-output cache: exact size, and provenance"
run ls -l "$mnt/logs/payments.log" "$mnt/.space/views/errors/logs/payments.log"
run getfattr --only-values -n user.space.provenance "$mnt/.space/views/errors/logs/payments.log"
echo "# ordinary writes through the mount go through the pipeline too"
run cp "$work/customers.txt" "$mnt/crm/copy.txt"
run getfattr -n user.space.id "$mnt/crm/copy.txt"
run grep -c example "$mnt/crm/copy.txt"
run head -c 300 "$mnt/.space/stats"
echo
run spacectl umount "$mnt"
run spacectl fsck
run spacectl stats
run spacectl cache stats
run spacectl get /logs/payments.log --view errors
echo
echo "demo finished: store, mount and temporary files are removed on exit"
