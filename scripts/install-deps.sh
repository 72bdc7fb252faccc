#!/usr/bin/env bash
# Installs the Debian packages PVKit builds and tests with, when they are missing.
# Usage: scripts/install-deps.sh [build|test]
set -euo pipefail

packages=(pkg-config gcc libxen-dev libelf-dev libkmod-dev zlib1g-dev liblzma-dev libzstd-dev liblz4-dev
          liblzo2-dev libbz2-dev libblkid-dev libext2fs-dev libqcow-dev libvmdk-dev libvhdi-dev libbfio-dev)
case "${1:-build}" in
    # readnotes (xen-utils-4.17) and readelf (binutils) are pvcheck's interop oracles; the
    # decompressor tools extract real kernels independently of pvcheck.
    # iproute2, iputils-ping and python3 drive the Linux-traffic tier (namespaces, TAP, ping, TCP).
    # qemu-system-x86, busybox-static, cpio and kmod run the real-Xen lab (scripts/xen-lab.sh).
    # libnbd's nbdinfo/nbdcopy/nbdsh and qemu-img are the NBD export's clients; nbdkit its baseline.
    test) packages+=(xz-utils zstd bzip2 binutils xen-utils-4.17 xenstore-utils python3-pip iproute2 iputils-ping tshark
                     qemu-system-x86 busybox-static cpio kmod
                     mmdebstrap qemu-utils xfsprogs fdisk e2fsprogs qemu-system-common btrfs-progs lvm2
                     lz4 lzop time
                     libnbd-bin python3-libnbd nbdkit) ;;
    # The demo's network part: namespaces and ping over the PV path; its migration check on
    # real Debian disk images (scripts/make-guests.sh).
    demo) packages+=(iproute2 iputils-ping mmdebstrap qemu-utils xfsprogs fdisk e2fsprogs qemu-system-common) ;;
    # C xenstored (xen-utils-4.17) is the xenstored benchmark's baseline.
    # iperf3 measures TCP over `pvnet tap` against a veth pair.
    bench) packages+=(xz-utils zstd time xen-utils-4.17 iproute2 iperf3 libnbd-bin nbdkit) ;;
esac

# The pyxs Python client (PyPI) is an interop peer of our xenstored; kept in the cache, not
# installed into the system.
install_pyxs() {
    local target="${PVKIT_CACHE:-$HOME/.cache/pvkit}/python"
    [ -d "$target/pyxs" ] && return 0
    python3 -m pip install -q --disable-pip-version-check --target "$target" pyxs==0.4.1
}

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    [ "${1:-build}" = test ] && install_pyxs
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "PVKit needs these Debian packages: ${missing[*]}" >&2
    echo "Run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "Installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# xen-utils' post-install warns that no hypervisor runs here, and still succeeds.
apt-get install -y -q --no-install-recommends "${missing[@]}"
[ "${1:-build}" = test ] && install_pyxs
exit 0
