# Sourced by fuse_bench.sh and random_reads.sh (needs SPACEFS, SPACECTL and WORK): a new
# store mounted by spacefs at $WORK/space.mnt and a new gocryptfs at $WORK/gocrypt.mnt, side
# by side on the same disk; both unmounted and $WORK removed on exit. SPACEFS_OPTS adds
# spacefs mount options: `SPACEFS_OPTS=io_uring` turns the fuse module parameter enable_uring
# on and checks that the mount is served over io_uring.
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
case ",${SPACEFS_OPTS:-}," in
*,io_uring[,=]*) echo Y > /sys/module/fuse/parameters/enable_uring ;;
esac
"$SPACEFS" "$WORK/space.store" "$WORK/space.mnt" ${SPACEFS_OPTS:+-o "$SPACEFS_OPTS"}
case ",${SPACEFS_OPTS:-}," in
*,io_uring[,=]*)
    grep -qx 'fuse_transport: io_uring' "$WORK/space.mnt/.space/stats" \
        || { echo "spacefs -o $SPACEFS_OPTS is not served over io_uring" >&2; exit 1; }
    ;;
esac
echo bench-passphrase > "$WORK/pass"
gocryptfs -q -init -passfile "$WORK/pass" "$WORK/gocrypt.cipher" >/dev/null
gocryptfs -q -passfile "$WORK/pass" "$WORK/gocrypt.cipher" "$WORK/gocrypt.mnt"
