#!/usr/bin/env bash
# Downloads current Debian kernels for pvcheck's interop tests and benchmark, cached outside
# the repository: Debian 12 (Linux 6.1, xz payload) and Debian 13 (Linux 6.12, zstd payload).
# Each suite gets a private apt state, so the machine's own apt sources are left alone.
#
#   scripts/fetch-kernels.sh            # fills ${PVKIT_CACHE:-~/.cache/pvkit}/kernels/<suite>
#
# Writes <suite>/STATUS: "ok <extracted root>" or "unreachable <reason>" (tests read it).
set -uo pipefail

cache="${PVKIT_CACHE:-$HOME/.cache/pvkit}/kernels"
mkdir -p "$cache"

fetch() {
    local suite=$1 dir="$cache/$1"
    mkdir -p "$dir/apt/lists/partial" "$dir/apt/archives/partial"
    if [ -f "$dir/STATUS" ] && grep -q '^ok ' "$dir/STATUS" && [ -d "$dir/root/boot" ]; then
        echo "kernels: $suite cached in $dir"
        return 0
    fi
    {
        echo "deb http://deb.debian.org/debian $suite main"
        echo "deb http://deb.debian.org/debian-security $suite-security main"
    } > "$dir/apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$dir/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt" -o APT::Sandbox::User=root)
    local log="$dir/fetch.log"
    if ! timeout 300 apt-get "${opts[@]}" update >"$log" 2>&1; then
        echo "unreachable apt-get update for $suite failed: $(tail -1 "$log")" > "$dir/STATUS"
        echo "kernels: $suite: $(cat "$dir/STATUS")"
        return 0
    fi
    local pkg
    pkg=$(apt-cache "${opts[@]}" depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [ -z "$pkg" ]; then
        echo "unreachable no linux-image-amd64 in $suite" > "$dir/STATUS"
        return 0
    fi
    rm -f "$dir"/*.deb
    if ! (cd "$dir" && timeout 600 apt-get "${opts[@]}" download "${pkg}-unsigned" >>"$log" 2>&1); then
        echo "unreachable download of ${pkg}-unsigned failed: $(tail -1 "$log")" > "$dir/STATUS"
        echo "kernels: $suite: $(cat "$dir/STATUS")"
        return 0
    fi
    rm -rf "$dir/root"
    dpkg-deb -x "$dir"/*.deb "$dir/root"
    rm -f "$dir"/*.deb
    echo "ok $dir/root" > "$dir/STATUS"
    echo "kernels: $suite: $pkg in $dir/root"
}

fetch bookworm
fetch trixie
