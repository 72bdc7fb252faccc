# The block workload run both through Linux's real blkback (blkfront.sh, in a dom0 under
# QEMU) and through pvhost's blkback (XenLabTests): every line it prints between
# WORKLOAD-BEGIN and WORKLOAD-END must be the same on both. Sourced; needs a function `blk`
# (pvblk with its connection options) and IMAGE (the disk's 16 MiB backing file).
# Returns non-zero, having printed why, when a step fails.
blk_workload() {
    set -o pipefail
    echo WORKLOAD-BEGIN
    blk info | tail -1
    [ "$(blk read --sector 8 --count 4096 | md5sum)" = "$(dd if="$IMAGE" bs=512 skip=8 count=8 2>/dev/null | md5sum)" ] \
        || { echo "read: not what the file holds"; return 1; }
    echo "read: 4096 bytes at sector 8, as in the file"
    blk verify --sector 2048 --count 1048576 --backing "$IMAGE" | sed "s|$IMAGE|the file|" || return 1
    blk verify --sector 8192 --count 65536 --barrier --backing "$IMAGE" | sed "s|$IMAGE|the file|" || return 1
    # 1 MiB written, flushed and read back through a BlockIOQueue (8 operations of 32 KiB in flight).
    blk verify --io-queue --sector 28672 --count 1048576 --backing "$IMAGE" | sed "s|$IMAGE|the file|" || return 1
    # 1 MiB, 4 KiB-aligned (blkback's discard granularity): zeros through the backend and in the file.
    blk discard --sector 16384 --count 1048576 || return 1
    zeros="$(head -c 1048576 /dev/zero | md5sum)"
    [ "$(blk read --sector 16384 --count 1048576 | md5sum)" = "$zeros" ] || { echo "discarded range does not read back as zeros"; return 1; }
    [ "$(dd if="$IMAGE" bs=512 skip=16384 count=2048 2>/dev/null | md5sum)" = "$zeros" ] || { echo "discarded range is not zeros in the file"; return 1; }
    echo "discard: 1048576 bytes read back as zeros, through the backend and in the file"
    # Each feature off in turn (the backend still offers it): the same write, flush, read, compare.
    sector=24576
    for off in --no-persistent "--indirect-segments 0" "--queues 1" "--ring-page-order 0"; do
        blk info $off | tail -1
        blk verify $off --sector $sector --count 262144 --backing "$IMAGE" | sed "s|$IMAGE|the file|" || return 1
        sector=$((sector + 512))
    done
    echo WORKLOAD-END
}
