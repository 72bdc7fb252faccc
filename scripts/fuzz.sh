#!/usr/bin/env bash
# Runs every libFuzzer target of pvkit-fuzz (built by `make fuzz` with -sanitize=fuzzer,address)
# for SECONDS each, from seed corpora made here (fixtures, patches, small disk images, xs_wire
# messages), kept in ${PVKIT_CACHE:-~/.cache/pvkit}/fuzz/<target> so runs build on each other.
# A crash stops the run; its input is in fuzz/<target>/crashes/ — make it a regression test
# with the input in fixtures/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# FUZZ_REPORT_ONLY=1 (CI): a new crash is reported — its input printed in base64, so it can be
# turned into a test from the log alone — without failing the run; a target built without
# instrumentation, or a run that cannot start, still fails. Regression inputs are replayed by
# `make test` (FuzzRegressionTests) and fail there.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
binary=${PVKIT_FUZZ_BINARY:-.build-fuzz/release/pvkit-fuzz}
cache="${PVKIT_CACHE:-$HOME/.cache/pvkit}/fuzz"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(kernel initramfs catalogue target xs-wire xenstored disk-image guest-facts control xenbus nbd)

seed() { # target directory
    local target=$1 dir=$2
    mkdir -p "$dir"
    [ -n "$(ls -A "$dir" 2>/dev/null)" ] && return 0
    case $target in
        kernel) for f in fixtures/images/*; do [ "$(stat -c %s "$f")" -le 131072 ] && cp "$f" "$dir/"; done ;;
        initramfs) cp fixtures/images/initrd-* "$dir/" ;;
        catalogue) cp patches/*.json "$dir/" ;;
        target) cp patches/targets/*.json "$dir/" ;;
        xs-wire | xenstored)
            # A few requests (type, req id, tx id, length, payload): READ, WRITE, MKDIR, WATCH,
            # TRANSACTION_START, DIRECTORY, SET_PERMS; for xenstored each prefixed by the
            # connection byte and a 2-byte length.
            python3 - "$target" "$dir" <<'EOF'
import struct, sys
target, out = sys.argv[1], sys.argv[2]
def msg(t, payload, rid=1, tx=0):
    return struct.pack("<IIII", t, rid, tx, len(payload)) + payload
seeds = [
    msg(2, b"/local/domain/0/name\0"), msg(11, b"/a/b\0value"), msg(12, b"/a/c\0"),
    msg(4, b"/a\0token\0"), msg(6, b"\0"), msg(1, b"/local\0"), msg(19, b"/a\0r0\0b1\0"),
    msg(2, b"/a/b\0", tx=1) + msg(7, b"T\0", tx=1), msg(8, b"1\0" + b"0\0" + b"0\0"),
]
for i, s in enumerate(seeds):
    data = s if target == "xs-wire" else b"".join(bytes([c]) + struct.pack("<H", len(s)) + s for c in (0, 1, 2))
    open(f"{out}/seed-{i}", "wb").write(data)
EOF
            ;;
        disk-image)
            # A 1 MiB ext4 on a 2 MiB MBR disk holding a tiny root, as raw and qcow2.
            local scratch
            scratch=$(mktemp -d)
            mkdir -p "$scratch/root/etc" "$scratch/root/boot" "$scratch/root/usr"
            printf 'UUID=x / ext4 defaults 0 1\n' > "$scratch/root/etc/fstab"
            cp fixtures/images/vmlinux-pv-pvh.elf "$scratch/root/boot/vmlinuz-6.6.0-pvkit-fixture"
            truncate -s 2M "$scratch/disk.raw"
            printf 'label: dos\nstart=2048\n' | sfdisk -q "$scratch/disk.raw"
            mkfs.ext4 -q -F -b 1024 -E offset=1048576 -d "$scratch/root" "$scratch/disk.raw" 1000
            cp "$scratch/disk.raw" "$dir/disk.raw"
            qemu-img convert -q -f raw -O qcow2 "$scratch/disk.raw" "$dir/disk.qcow2"
            rm -rf "$scratch"
            ;;
        control)
            printf '%s' '{"attach":{"name":"alpha","pages":64}}' > "$dir/attach"
            printf '%s' '{"status":{}}' > "$dir/status"
            printf '%s' '{"domains":[{"id":1,"name":"a","pages":64,"pid":7}],"grantsMapped":0,"grantMapsTotal":0,"grantCopiesTotal":0,"notificationsSent":0}' > "$dir/host-status"
            ;;
        nbd)
            # Export pick, client flags, STRUCTURED_REPLY, GO "xvda" asking for block sizes,
            # then READ, WRITE (512 bytes), FLUSH, TRIM, DISC; and EXPORT_NAME, LIST, ABORT.
            python3 - "$dir" <<'PY'
import struct, sys
opt = lambda o, d=b"": b"IHAVEOPT" + struct.pack(">II", o, len(d)) + d
req = lambda c, off=0, n=0, f=0: struct.pack(">IHHQQI", 0x25609513, f, c, 1, off, n)
go = opt(8) + opt(7, struct.pack(">I", 4) + b"xvda" + struct.pack(">HH", 1, 3))
seeds = {
    "go": b"\x20" + struct.pack(">I", 3) + go + req(0, 0, 4096) + req(1, 512, 512) + b"\xab" * 512 + req(3) + req(4, 0, 4096, 1) + req(2),
    "export-name": b"\x21" + struct.pack(">I", 1) + opt(3) + opt(1, b"xvda") + req(0, 0, 512),
    "abort": b"\x00" + struct.pack(">I", 3) + opt(42, b"x") + opt(5) + opt(2),
}
for name, data in seeds.items():
    open(f"{sys.argv[1]}/{name}", "wb").write(data)
PY
            ;;
        xenbus)
            printf '\000\001\002\002\002\003\004\004\004\377\004\006\006\005\006' > "$dir/handshake"
            printf '\001\001\004\004\004\004\005' > "$dir/direct"
            ;;
        guest-facts)
            printf 'etc/fstab\001/dev/xvda1 / ext4 defaults 0 1\000boot/grub/grub.cfg\001set default="0"\nmenuentry '"'"'D'"'"' {\n\tlinux /boot/vmlinuz-1 root=/dev/xvda1 console=hvc0\n}\n\000etc/network/interfaces\001auto eth0\niface eth0 inet dhcp\n\000vmlinuz\001->boot/vmlinuz-1\000' > "$dir/seed-debian"
            printf 'etc/netplan/1.yaml\001network:\n  ethernets:\n    ens5:\n      match:\n        macaddress: 02:00:00:00:00:01\n\000boot/loader/entries/a.conf\001title A\nlinux /vmlinuz-6\noptions root=UUID=1 console=ttyS0\n\000' > "$dir/seed-netplan"
            ;;
    esac
}

status=0
for target in "${targets[@]}"; do
    corpus="$cache/$target/corpus"
    crashes="$cache/$target/crashes"
    mkdir -p "$crashes"
    seed "$target" "$corpus"
    maxlen=65536
    [ "$target" = disk-image ] && maxlen=$((3 << 20))
    dict=()
    case $target in xs-wire | xenstored) dict=(-dict=Tests/Fuzz/xs-wire.dict) ;; esac
    log="$cache/$target/last.log"
    echo "fuzz: $target for ${seconds}s (corpus $corpus)"
    if ! PVKIT_FUZZ_TARGET=$target SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0 \
        timeout $((seconds + 120)) "$binary" -max_total_time="$seconds" -max_len="$maxlen" -rss_limit_mb=4096 \
        -timeout=30 -artifact_prefix="$crashes/" -print_final_stats=1 "${dict[@]}" "$corpus" >"$log" 2>&1; then
        echo "fuzz: $target FAILED: $(grep -m1 -E 'ERROR|deadly|Fatal|timeout' "$log" || tail -1 "$log")"
        echo "fuzz: inputs in $crashes; log $log"
        if [ "${FUZZ_REPORT_ONLY:-0}" = 1 ] && ls "$crashes"/* >/dev/null 2>&1; then
            grep -m1 -A12 -E 'ERROR|deadly' "$log" || true
            for input in "$crashes"/*; do
                echo "fuzz: $target crash input $(basename "$input") ($(stat -c %s "$input") bytes, base64, gzip):"
                gzip -c "$input" | base64 -w 120
            done
        else
            status=1
        fi
    fi
    runs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    grep -m1 -q 'Loaded .* modules' "$log" || { echo "fuzz: $target: libFuzzer saw no instrumentation"; status=1; }
    echo "fuzz: $target: $runs executions, $(ls "$crashes" | wc -l) crash inputs, corpus $(ls "$corpus" | wc -l)"
done
exit $status
