# Sourced by fuse_bench.sh and random_reads.sh (needs SPACEFS, SPACECTL and WORK): a new
# store mounted by spacefs at $WORK/space.mnt and a new gocryptfs at $WORK/gocrypt.mnt, side
# by side on the same disk; both unmounted and $WORK removed on exit.
cleanup() {
    for m in "$WORK/space.mnt" "$WORK/gocrypt.mnt"; do
        mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
cleanup
mkdir -p "$WORK"/{space.mnt,gocrypt.mnt,gocrypt.cipher}
"$SPACECTL" init "$WORK/space.store" >/dev/null
"$SPACEFS" "$WORK/space.store" "$WORK/space.mnt"
echo bench-passphrase > "$WORK/pass"
gocryptfs -q -init -passfile "$WORK/pass" "$WORK/gocrypt.cipher" >/dev/null
gocryptfs -q -passfile "$WORK/pass" "$WORK/gocrypt.cipher" "$WORK/gocrypt.mnt"
