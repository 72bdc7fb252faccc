#!/usr/bin/env bash
# Networking through the PV network protocol for `make demo`: pvhost runs guests "alpha"
# and "beta" with a vif each on its switch. pvnet sends frames from one to the other; then,
# as root, Linux's own stack talks over the PV path: namespace A (alpha's `pvnet tap`) pings
# namespace B (a TAP pvhost moved there), and a short pvnet bench measures guest to guest.
# Usage: scripts/demo-pvnet.sh BINDIR
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
tag=$$
cat > "$dir/config.json" <<JSON
{"domains": [{"name": "alpha", "pages": 2048, "nics": [{"devid": 0, "mac": "00:16:3e:00:00:0a"}]},
             {"name": "beta", "pages": 2048, "nics": [{"devid": 0, "mac": "00:16:3e:00:00:0b"}]}]
JSON
root=no
if [ "$(id -u)" -eq 0 ] && [ -c /dev/net/tun ] && command -v ip >/dev/null && command -v ping >/dev/null; then
    root=yes
    ip netns add "pvdemo-a$tag"
    ip netns add "pvdemo-b$tag"
    # The TAP for namespace B is pvhost's: a port of its switch.
    sed -i "s/]$/], \"taps\": [{\"name\": \"pvdb$tag\", \"netns\": \"pvdemo-b$tag\"}]/" "$dir/config.json"
fi
echo "}" >> "$dir/config.json"
"$bin/pvhost" run "$dir/config.json" --control "$dir/control" --xenstore "$dir/xs" 2>"$dir/pvhost.log" &
host=$!
cleanup() {
    [ -n "${tap:-}" ] && kill "$tap" 2>/dev/null && wait "$tap" 2>/dev/null
    kill $host 2>/dev/null; wait $host 2>/dev/null
    if [ $root = yes ]; then ip netns delete "pvdemo-a$tag"; ip netns delete "pvdemo-b$tag"; fi
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$dir/control" ] && break; sleep 0.02; done
set -x
"$bin/pvnet" info --pvhost "$dir/control" --name alpha
"$bin/pvnet" recv --pvhost "$dir/control" --name beta --count 3 > "$dir/recv.txt" &
recv=$!
sleep 0.5
"$bin/pvnet" send --pvhost "$dir/control" --name alpha --to 00:16:3e:00:00:0b --count 3 --size 100
wait $recv
cat "$dir/recv.txt"
{ set +x; } 2>/dev/null
if [ $root = yes ]; then
    set -x
    ip -n "pvdemo-b$tag" addr add 10.197.0.2/24 dev "pvdb$tag"
    ip -n "pvdemo-b$tag" link set "pvdb$tag" up
    ip netns exec "pvdemo-a$tag" "$bin/pvnet" tap --pvhost "$dir/control" --name alpha --tap "pvda$tag" &
    { set +x; } 2>/dev/null
    tap=$!
    for _ in $(seq 100); do ip -n "pvdemo-a$tag" link show "pvda$tag" >/dev/null 2>&1 && break; sleep 0.05; done
    set -x
    ip -n "pvdemo-a$tag" addr add 10.197.0.1/24 dev "pvda$tag"
    ip netns exec "pvdemo-a$tag" ping -c 3 -i 0.2 10.197.0.2
    ip netns exec "pvdemo-a$tag" ping -c 2 -s 20000 10.197.0.2
    { set +x; } 2>/dev/null
    kill "$tap"; wait "$tap" 2>/dev/null || true
    tap=
else
    echo "(namespaces and ping over the PV path need root, /dev/net/tun, iproute2 and iputils-ping: skipped)"
fi
set -x
"$bin/pvnet" bench --pvhost "$dir/control" --name alpha --peer beta --size 64 --seconds 2
{ set +x; } 2>/dev/null
