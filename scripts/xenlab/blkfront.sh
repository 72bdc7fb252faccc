# dom0 payload for scripts/xen-lab.sh: our BlockFront (pvblk --xen) against Linux's real
# blkback, on a dom0→dom0 disk made by xl block-attach over a loop device. Prints
# XENLAB-PASS, or XENLAB-FAIL and why.
fail() { echo "XENLAB-FAIL blkfront: $*"; xenstore-ls /local/domain/0/backend/vbd 2>&1 | head -40; exit 1; }
dd if=/dev/urandom of=/tmp/disk.img bs=1M count=16 2>/dev/null
losetup /dev/loop0 /tmp/disk.img || fail "losetup"
xl block-attach 0 phy:/dev/loop0,xvdb,w || fail "xl block-attach"
for _ in 1 2 3 4 5 6 7 8 9 10; do [ "$(xenstore-read /local/domain/0/backend/vbd/0/51728/state 2>/dev/null)" = 2 ] && break; sleep 1; done
echo "backend offers: $(xenstore-ls /local/domain/0/backend/vbd/0/51728 | grep -E 'feature|max|queues' | tr -s ' ' | tr '\n' ' ')"
pvblk info --xen --device 51728 || fail "pvblk info"
ours="$(timeout 30 pvblk read --xen --device 51728 --sector 8 --count 4096 | md5sum)"
theirs="$(dd if=/tmp/disk.img bs=512 skip=8 count=8 2>/dev/null | md5sum)"
[ "$ours" = "$theirs" ] || { dmesg | tail -20; xenstore-ls /local/domain/0/device/vbd; fail "pvblk read: $ours, the file: $theirs"; }
timeout 60 pvblk verify --xen --device 51728 --sector 2048 --count 1048576 --backing /tmp/disk.img || fail "pvblk verify"
xl block-detach 0 xvdb || fail "xl block-detach"
echo XENLAB-PASS
