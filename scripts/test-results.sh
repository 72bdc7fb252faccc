#!/usr/bin/env bash
# Summarises Swift Testing's xUnit report: test cases, failures, skips (with their names).
# With PVKIT_NO_SKIPS=1 (set by .ci/run: CI runs as root with every package installed) a
# skipped test is a failure.
# Usage: scripts/test-results.sh REPORT.xml
set -euo pipefail
report="${1:?usage: scripts/test-results.sh REPORT.xml}"
[ -s "$report" ] || { echo "test-results: no report at $report" >&2; exit 1; }
python3 - "$report" <<'PY'
import os, sys, xml.etree.ElementTree as ET
cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
skipped = [c for c in cases if c.find("skipped") is not None]
print(f"test-results: {len(cases)} test cases, {len(failed)} failed, {len(skipped)} skipped")
for c in skipped:
    reason = c.find("skipped").get("message") or (c.find("skipped").text or "").strip()
    print(f"  skipped: {c.get('classname')}.{c.get('name')}: {reason}")
for c in failed:
    print(f"  failed: {c.get('classname')}.{c.get('name')}")
if failed:
    sys.exit(1)
if skipped and os.environ.get("PVKIT_NO_SKIPS") == "1":
    print("test-results: tests were skipped where every prerequisite should be present (PVKIT_NO_SKIPS=1)")
    sys.exit(1)
PY
