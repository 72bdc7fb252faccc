#!/usr/bin/env bash
# pvhost with two guests for `make demo`: guest processes attach to pvhost's control socket,
# become domains with their own xenstore rings, and cannot read each other's nodes.
# Usage: scripts/demo-pvhost.sh BINDIR
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
"$bin/pvhost" run --control "$dir/control" --xenstore "$dir/xs" &
host=$!
trap 'kill $host 2>/dev/null; wait $host 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$dir/control" ] && break; sleep 0.02; done
# Two long-lived guests: each watches its own data/ directory.
"$bin/pvstore" watch data --pvhost "$dir/control" --name alpha > "$dir/alpha.log" & alpha=$!
"$bin/pvstore" watch data --pvhost "$dir/control" --name beta > "$dir/beta.log" & beta=$!
sleep 0.5
set -x
"$bin/pvhost" status --control "$dir/control"
XENSTORED_PATH="$dir/xs" "$bin/pvstore" ls -p /local/domain
XENSTORED_PATH="$dir/xs" "$bin/pvstore" write /local/domain/1/data/greeting hello
# A third guest tries to read alpha's home (refused: EACCES), then reads its own name.
"$bin/pvstore" read /local/domain/1/name --pvhost "$dir/control" --name gamma || true
"$bin/pvstore" read name --pvhost "$dir/control" --name gamma
kill -9 $alpha; wait $alpha 2>/dev/null || true
sleep 0.3
# alpha was killed: its domain, nodes and watches are gone.
"$bin/pvhost" status --control "$dir/control"
cat "$dir/alpha.log"
kill $beta; wait $beta 2>/dev/null || true
