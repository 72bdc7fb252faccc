# dom0 payload for scripts/xen-lab.sh: our BlockFront (pvblk --xen) against Linux's real
# blkback, on a dom0→dom0 disk made by xl block-attach over a loop device (its file on tmpfs,
# so discard punches holes): blk-workload.sh (every feature blkback offers; read, a random
# pattern written, flushed, read back and found in the backing file; a barrier write; a discard
# that reads back as zeros; each feature off in turn). After xl block-detach, Xen's own grant
# dump ('g' debug key) shows no active grant of dom0. Prints XENLAB-PASS, or XENLAB-FAIL.
stuck() {  # what is stuck in the kernel, for a failure report
    for p in /proc/[0-9]*; do
        [ "$(cut -d' ' -f3 "$p/stat" 2>/dev/null)" = D ] || continue
        echo "state D: $(cat "$p/comm") (pid ${p#/proc/})"; cat "$p/stack" 2>/dev/null
    done
}
fail() { echo "XENLAB-FAIL blkfront: $*"; stuck; xenstore-ls /local/domain/0/backend/vbd 2>&1 | head -40; dmesg | tail -15; exit 1; }
active_grants() {  # dom0's active grant entries, from Xen's 'g' dump
    xl dmesg -c >/dev/null
    xl debug-keys g
    xl dmesg -c | grep -c '^(XEN) \[0x' || true
}
# A watchdog for reports: tasks blocked in the kernel (state D) for 20 s, with their stacks.
( while sleep 10; do
    for p in /proc/[0-9]*; do [ "$(cut -d' ' -f3 "$p/stat" 2>/dev/null)" = D ] && echo "${p#/proc/}"; done > /tmp/d.now
    for pid in $(cat /tmp/d.now); do grep -qx "$pid" /tmp/d.before 2>/dev/null && { echo "blocked: $(cat /proc/$pid/comm) ($pid)"; cat /proc/$pid/stack; }; done
    mv /tmp/d.now /tmp/d.before
  done ) &
mkdir -p /mnt/disk && mount -t tmpfs tmpfs /mnt/disk || fail "mount tmpfs"
image=/mnt/disk/disk.img
dd if=/dev/urandom of=$image bs=1M count=16 2>/dev/null
losetup /dev/loop0 $image || fail "losetup"
xl block-attach 0 phy:/dev/loop0,xvdb,w || fail "xl block-attach"
for _ in 1 2 3 4 5 6 7 8 9 10; do [ "$(xenstore-read /local/domain/0/backend/vbd/0/51728/state 2>/dev/null)" = 2 ] && break; sleep 1; done
echo "backend offers: $(xenstore-ls /local/domain/0/backend/vbd/0/51728 | grep -E 'feature|max|queues' | tr -s ' ' | tr '\n' ' ')"
blk() { timeout 60 /usr/local/bin/pvblk "$@" --xen --device 51728; }
IMAGE=$image
. /usr/local/bin/blk-workload.sh
blk_workload > /tmp/workload.out; status=$?
cat /tmp/workload.out
[ $status = 0 ] || fail "the block workload"
grep -q "2 queue(s) of 16 ring page(s), persistent grants yes, indirect segments 128, barrier yes, discard yes" /tmp/workload.out \
    || fail "not every feature negotiated"

xl block-detach 0 xvdb || fail "xl block-detach"
for _ in 1 2 3 4 5; do [ "$(active_grants)" = 0 ] && break; sleep 1; done
left="$(active_grants)"
[ "$left" = 0 ] || { xl debug-keys g; xl dmesg | tail -30; fail "$left grant entries of dom0 still active after detach"; }
echo "after detach: no active grant entries (Xen's 'g' dump)"
echo XENLAB-PASS
