#!/usr/bin/env bash
# Runs the whole test suite RUNS times in a row (in parallel, as make test does) with both
# cores kept busy by `stress-ng --cpu 2`, and reports each run's result and time. A hang is a
# test's time limit failing (every suite has one), so every run ends.
# Usage: scripts/stress-loop.sh [RUNS] [extra swift test arguments, e.g. --skip XenLabTests]
# Needs a built test bundle (swift build --build-tests) and stress-ng (apt-get install stress-ng).
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-30}"
shift || true
command -v stress-ng > /dev/null || { echo "stress-loop: needs stress-ng (apt-get install stress-ng)" >&2; exit 1; }
stress-ng --cpu 2 --quiet &
hog=$!
trap 'kill $hog 2> /dev/null; wait $hog 2> /dev/null' EXIT
mkdir -p .build/stress
passed=0
for run in $(seq 1 "$runs"); do
    start=$(date +%s)
    if swift test --skip-build --disable-xctest "$@" > ".build/stress/run-$run.log" 2>&1; then
        result=passed
        passed=$((passed + 1))
    else
        result=FAILED
    fi
    summary=$(grep -E "Test run with" ".build/stress/run-$run.log" | tail -1)
    echo "run $run: $result in $(( $(date +%s) - start )) s — $summary"
done
echo "stress-loop: $passed of $runs runs passed under stress-ng --cpu 2"
[ "$passed" -eq "$runs" ]
