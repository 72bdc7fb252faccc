#!/usr/bin/env bash
# A short pvhost xenstored session for `make demo`: our daemon on a private socket, driven by
# pvstore and (when installed) Xen's own xenstore-utils. Usage: scripts/demo-xenstore.sh BINDIR
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
export XENSTORED_PATH="$dir/socket"
"$bin/pvhost" xenstored --socket "$XENSTORED_PATH" &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$XENSTORED_PATH" ] && break; sleep 0.02; done
set -x
"$bin/pvstore" write /local/domain/0/name Domain-0 /local/domain/1/name guest1 /local/domain/1/device/vbd/51712/state 1
"$bin/pvstore" chmod -r /local/domain/1 n1 r0
"$bin/pvstore" ls -p /local/domain
"$bin/pvstore" watch --count 2 /local/domain/1/device & watcher=$!
sleep 0.3
"$bin/pvstore" write /local/domain/1/device/vbd/51712/state 4
wait $watcher
"$bin/pvstore" list --json /local/domain/1
"$bin/pvstore" read /local/domain/1/missing || true
if command -v xenstore-ls >/dev/null; then xenstore-ls -f /local/domain/1; fi
