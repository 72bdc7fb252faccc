#!/usr/bin/env bash
# A virtual disk through the PV block protocol for `make demo`: pvhost serves a file as
# vbd 51712 of the guest "alpha"; pvblk, running as that guest, writes a pattern, flushes,
# reads it back and checks it against the backing file (also through a BlockIOQueue), then
# measures it (pvblk bench, with tasks and with --io-queue).
# Usage: scripts/demo-pvblk.sh BINDIR
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
truncate -s 64M "$dir/alpha.img"
cat > "$dir/config.json" <<JSON
{"domains": [{"name": "alpha", "pages": 4096, "disks": [{"devid": 51712, "path": "$dir/alpha.img"}]}]}
JSON
"$bin/pvhost" run "$dir/config.json" --control "$dir/control" --xenstore "$dir/xs" 2>"$dir/pvhost.log" &
host=$!
trap 'kill $host 2>/dev/null; wait $host 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$dir/control" ] && break; sleep 0.02; done
set -x
"$bin/pvblk" info --pvhost "$dir/control" --name alpha
"$bin/pvblk" verify --pvhost "$dir/control" --name alpha --sector 4096 --count 8388608 --backing "$dir/alpha.img"
"$bin/pvblk" verify --pvhost "$dir/control" --name alpha --sector 32768 --count 8388608 --backing "$dir/alpha.img" --io-queue
printf 'written by a PV guest\n' | dd conv=sync bs=512 count=1 status=none | "$bin/pvblk" write --pvhost "$dir/control" --name alpha --sector 0
dd if="$dir/alpha.img" bs=512 count=1 status=none | head -c 22
echo
"$bin/pvblk" bench --pvhost "$dir/control" --name alpha --pattern random --block-size 4096 --queue-depth 32 --seconds 2
"$bin/pvblk" bench --pvhost "$dir/control" --name alpha --pattern random --block-size 4096 --queue-depth 32 --seconds 2 --io-queue
"$bin/pvblk" bench --pvhost "$dir/control" --name alpha --pattern sequential --block-size 1048576 --queue-depth 4 --seconds 2
"$bin/pvblk" bench --pvhost "$dir/control" --name alpha --pattern sequential --block-size 1048576 --queue-depth 4 --seconds 2 --zero-copy
