# dom0 payload for scripts/xen-lab.sh: our NetFront against Linux's real netback on a
# dom0→dom0 vif made by xl network-attach. First raw frames: Linux sends ARP out of the vif,
# NetFront (pvnet recv --xen) receives it. Then Linux's stack on both ends: `pvnet tap --xen`
# in a network namespace (10.99.0.1 on its TAP) pings 10.99.0.2 on the vif in dom0's own
# namespace — ICMP over NetFront ↔ netback both ways — and TCP streams both ways (Linux's
# segmentation offload and partial checksums cross the rings as GSO extras and csum flags),
# on 2 queues with split event channels. Prints XENLAB-PASS, or XENLAB-FAIL.
fail() { echo "XENLAB-FAIL netfront: $*"; xenstore-ls /local/domain/0/backend/vif 2>&1 | head -30; dmesg | tail -10; exit 1; }
xl network-attach 0 script=/etc/xen/scripts/vif-null || fail "xl network-attach"
for _ in 1 2 3 4 5 6 7 8 9 10; do [ "$(xenstore-read /local/domain/0/backend/vif/0/0/state 2>/dev/null)" = 2 ] && break; sleep 1; done
echo "backend offers: $(xenstore-ls /local/domain/0/backend/vif/0/0 | grep -E 'feature|queues' | tr -s ' ' | tr '\n' ' ')"
timeout 60 pvnet info --xen --device 0 --queues 2 || fail "pvnet info"
vif="$(ls /sys/class/net | grep '^vif' | head -1)"
[ -n "$vif" ] || fail "no vif interface in dom0"
echo 1 > /proc/sys/net/ipv6/conf/$vif/disable_ipv6   # no IPv6 chatter: only the ARP below
ip link set "$vif" up
ip addr add 10.99.0.2/24 dev "$vif"
timeout 60 pvnet recv --xen --device 0 --count 3 > /tmp/recv.out 2>&1 &
receiver=$!
for _ in $(seq 50); do grep -q listening /tmp/recv.out && break; sleep 0.2; done
arping -c 5 -w 5 -I "$vif" 10.99.0.1 >/dev/null 2>&1
wait $receiver || { cat /tmp/recv.out; fail "pvnet recv"; }
cat /tmp/recv.out
[ "$(grep -c 'type 0x806' /tmp/recv.out)" -ge 3 ] || fail "ARP from Linux through netback to NetFront"
# Linux's stack on the frontend side too.
ip2 netns add guest || fail "ip netns add"
ip2 netns exec guest pvnet tap --xen --device 0 --queues 2 --tap pv0 > /tmp/tap.out 2>&1 &
bridge=$!
for _ in $(seq 100); do ip2 -n guest link show pv0 >/dev/null 2>&1 && break; sleep 0.2; done
ip2 -n guest addr add 10.99.0.1/24 dev pv0
ip2 -n guest link set lo up
ip2 netns exec guest ping -c 3 -W 5 10.99.0.2 || { cat /tmp/tap.out; fail "ping over pvnet tap ↔ netback"; }
ip2 netns exec guest ping -c 2 -W 5 -s 3000 10.99.0.2 || { cat /tmp/tap.out; fail "ping with 3000-byte payloads"; }
grep -q "queues 2" /tmp/tap.out || { cat /tmp/tap.out; fail "pvnet tap did not get 2 queues"; }
# TCP, 8 MiB each way, compared end to end (bash's /dev/tcp sends; busybox nc receives).
dd if=/dev/urandom of=/tmp/stream bs=1M count=8 2>/dev/null
want="$(md5sum < /tmp/stream)"
sleep 60 | nc -l -p 5001 > /tmp/got-dom0 &
sleep 1
timeout 60 ip2 netns exec guest bash -c 'cat /tmp/stream > /dev/tcp/10.99.0.2/5001' || { cat /tmp/tap.out; fail "TCP guest → dom0"; }
for _ in $(seq 50); do [ "$(stat -c %s /tmp/got-dom0)" = 8388608 ] && break; sleep 0.2; done
[ "$(md5sum < /tmp/got-dom0)" = "$want" ] || fail "TCP guest → dom0: $(stat -c %s /tmp/got-dom0) bytes, not the stream sent"
sleep 60 | ip2 netns exec guest nc -l -p 5002 > /tmp/got-guest &
sleep 1
timeout 60 bash -c 'cat /tmp/stream > /dev/tcp/10.99.0.1/5002' || { cat /tmp/tap.out; fail "TCP dom0 → guest"; }
for _ in $(seq 50); do [ "$(stat -c %s /tmp/got-guest)" = 8388608 ] && break; sleep 0.2; done
[ "$(md5sum < /tmp/got-guest)" = "$want" ] || fail "TCP dom0 → guest: $(stat -c %s /tmp/got-guest) bytes, not the stream sent"
echo "TCP: 8 MiB each way, identical end to end"
kill $bridge; wait $bridge
cat /tmp/tap.out
grep -q " lost 0" /tmp/tap.out || fail "pvnet tap lost frames"
# 16 MiB of TCP payload plus ACKs in under 6000 frames each way: segments larger than the MTU
# crossed the rings (GSO extras), not 1448-byte frames.
rings="$(sed -n 's/^to the rings \([0-9]*\), to Linux \([0-9]*\),.*/\1 \2/p' /tmp/tap.out)"
set -- $rings
[ "${1:-99999}" -lt 6000 ] && [ "${2:-99999}" -lt 6000 ] || fail "TCP went as MTU-sized frames ($rings): GSO not used"
echo "GSO both ways: $1 frames to the rings, $2 to Linux"
xl network-detach 0 0 || fail "xl network-detach"
echo XENLAB-PASS
