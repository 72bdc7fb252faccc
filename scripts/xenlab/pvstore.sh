# dom0 payload for scripts/xen-lab.sh: pvstore against Xen's C xenstored through
# /dev/xen/xenbus (the kernel's xenbus device, not the daemon's socket), checked against
# Xen's own xenstore-utils. Prints XENLAB-PASS, or XENLAB-FAIL and why.
export XENSTORED_PATH=/dev/xen/xenbus
fail() { echo "XENLAB-FAIL pvstore: $*"; exit 1; }
check() { echo "+ $*"; "$@" || fail "$*"; }
check pvstore write /pvkit/a one /pvkit/b two /pvkit/dir/c three          # one transaction
[ "$(pvstore read /pvkit/a)" = one ] || fail "read back /pvkit/a"
[ "$(env -u XENSTORED_PATH xenstore-read /pvkit/b)" = two ] || fail "xenstore-read sees what pvstore wrote"
env -u XENSTORED_PATH xenstore-write /pvkit/d four
[ "$(pvstore read /pvkit/d)" = four ] || fail "pvstore sees what xenstore-write wrote"
ours="$(pvstore ls /pvkit)"; theirs="$(env -u XENSTORED_PATH xenstore-ls /pvkit)"
echo "$ours"
[ "$ours" = "$theirs" ] || fail "pvstore ls and xenstore-ls differ: <$ours> <$theirs>"
[ "$(pvstore list /pvkit | tr '\n' ' ')" = "a b dir d " ] || fail "list /pvkit"
pvstore watch /pvkit/w --count 2 > /tmp/watch.out &
watcher=$!
sleep 1
env -u XENSTORED_PATH xenstore-write /pvkit/w/x 1
wait $watcher || fail "watch did not end after 2 events"
cat /tmp/watch.out
grep -q "/pvkit/w/x" /tmp/watch.out || fail "the watch event for /pvkit/w/x"
check pvstore read /local/domain/0/domid
pvstore read /pvkit/missing 2>/tmp/err.out && fail "reading a missing node succeeded"
grep -q ENOENT /tmp/err.out || fail "missing node: $(cat /tmp/err.out)"
check pvstore rm /pvkit
env -u XENSTORED_PATH xenstore-exists /pvkit 2>/dev/null && fail "/pvkit still exists"
echo XENLAB-PASS
