# dom0 payload for scripts/xen-lab.sh (make demo XEN=1, not the make test tier): throughput of
# BlockFront through Linux's real blkback under QEMU's software emulation, for the record.
fail() { echo "XENLAB-FAIL blkfront-throughput: $*"; exit 1; }
mkdir -p /mnt/disk && mount -t tmpfs tmpfs /mnt/disk || fail "mount tmpfs"
dd if=/dev/urandom of=/mnt/disk/disk.img bs=1M count=16 2>/dev/null
losetup /dev/loop0 /mnt/disk/disk.img || fail "losetup"
xl block-attach 0 phy:/dev/loop0,xvdb,w || fail "xl block-attach"
for _ in 1 2 3 4 5 6 7 8 9 10; do [ "$(xenstore-read /local/domain/0/backend/vbd/0/51728/state 2>/dev/null)" = 2 ] && break; sleep 1; done
timeout 60 pvblk bench --xen --device 51728 --pattern sequential --block-size 1048576 --queue-depth 4 --seconds 3 || fail "pvblk bench"
timeout 60 pvblk bench --xen --device 51728 --pattern random --block-size 4096 --queue-depth 32 --seconds 3 || fail "pvblk bench"
xl block-detach 0 xvdb || fail "xl block-detach"
echo XENLAB-PASS
