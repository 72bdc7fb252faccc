#!/usr/bin/env bash
# A real Xen 4.17 with a Debian 12 dom0, booted under QEMU (software emulation), running a
# payload script as part of dom0's /init and reporting through the serial console.
#
# Usage: scripts/xen-lab.sh PAYLOAD [BINARY ...]
#   PAYLOAD  a shell script run in dom0 once xenstored and xen-init-dom0 are up; what it
#            prints reaches our stdout; the lab ends when it returns (or after $XENLAB_TIMEOUT
#            seconds, default 240).
#   BINARY   files copied into dom0's /usr/local/bin (statically linked programs).
# Prints the serial console; exits 0 when the payload printed "XENLAB-PASS", 1 when it printed
# "XENLAB-FAIL" or nothing, 3 when QEMU or the packages are not available (with the reason).
#
# Downloads (~72 MB of Debian packages, cached in $PVKIT_CACHE/xenlab, default
# ~/.cache/pvkit/xenlab) are extracted into a private tree; nothing is installed on the host
# but QEMU, busybox-static, cpio and kmod. Facts: ../shared/spec/xenlab.md.
set -euo pipefail
payload="$1"; shift
cache="${PVKIT_CACHE:-$HOME/.cache/pvkit}/xenlab"
timeout_s="${XENLAB_TIMEOUT:-240}"
for tool in qemu-system-x86_64 cpio depmod apt-get dpkg-deb ip; do
    command -v "$tool" >/dev/null || { echo "xen-lab: $tool is missing (scripts/install-deps.sh test installs it)"; exit 3; }
done
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || { echo "xen-lab: busybox-static is missing"; exit 3; }
busybox_bin="$(command -v busybox)"
if ldd "$busybox_bin" >/dev/null 2>&1; then echo "xen-lab: $busybox_bin is not static (install busybox-static)"; exit 3; fi

# 1. The packages, downloaded once.
xen_version="4.17.7+13-g2445b30a44-0+deb12u1"
packages=(xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils xen-hypervisor-common
          libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenmisc4.17 libxenstore4
          libxentoollog1 libxenhypfs1 libxendevicemodel1 libxentoolcore1 libyajl2)
kernel_package="$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)"
[ -n "$kernel_package" ] || { echo "xen-lab: cannot resolve linux-image-amd64 (apt-get update?)"; exit 3; }
kernel_version="${kernel_package#linux-image-}"
mkdir -p "$cache/debs"
if [ ! -f "$cache/debs/.complete-$kernel_version" ]; then
    ( cd "$cache/debs"
      apt-get download -q "${packages[@]}" "$kernel_package-unsigned" >/dev/null 2>&1 \
          || apt-get download -q "${packages[@]}" "$kernel_package-unsigned" )
    touch "$cache/debs/.complete-$kernel_version"
fi
tree="$cache/tree-$kernel_version"
if [ ! -f "$tree/.complete" ]; then
    rm -rf "$tree"; mkdir -p "$tree"
    for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$tree"; done
    depmod -b "$tree" "$kernel_version"
    gunzip -c "$tree"/boot/xen-4.17-amd64.gz > "$tree/xen.elf"
    touch "$tree/.complete"
fi

# 2. dom0's initramfs: busybox, bash and flock for the hotplug scripts, Xen's tools and the
#    libraries they load, the modules, our binaries, /init and the payload.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,var/lib/xen,var/lib/xenstored,var/log/xen,usr/local/bin,lib64,usr/lib/xen-4.17/bin}
cp "$busybox_bin" "$root/bin/busybox"
copy_with_libraries() {  # FILE DEST: the file and every shared library ldd names (the
    # tree's libraries go where they live in the image)
    cp -L "$1" "$2"
    { ldd "$1" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
        [ -f "$lib" ] || continue
        target="$root${lib#"$tree"}"
        mkdir -p "$(dirname "$target")"
        cp -Ln "$lib" "$target"
    done
}
export LD_LIBRARY_PATH="$tree/usr/lib/x86_64-linux-gnu:$tree/usr/lib/xen-4.17/lib:${LD_LIBRARY_PATH:-}"
for tool in bash flock; do copy_with_libraries "$(command -v $tool)" "$root/bin/"; done
# iproute2's ip (network namespaces; busybox's ip has none) as /sbin/ip2.
if [ -x /usr/sbin/ip ] || [ -x /sbin/ip ]; then
    copy_with_libraries "$(command -v ip || echo /usr/sbin/ip)" "$root/sbin/"
    mv "$root/sbin/ip" "$root/sbin/ip2"
fi
for lib in /lib/x86_64-linux-gnu/libgcc_s.so.1; do mkdir -p "$root$(dirname $lib)"; cp -L "$lib" "$root$lib"; done
for tool in xl xenstored xenconsoled xen-init-dom0 libxl-save-helper xenstore-control; do
    copy_with_libraries "$tree/usr/lib/xen-4.17/bin/$tool" "$root/usr/lib/xen-4.17/bin/"
done
for tool in "$tree"/usr/bin/xenstore*; do [ -L "$tool" ] || copy_with_libraries "$tool" "$root/bin/"; done
mkdir -p "$root/usr/lib/x86_64-linux-gnu"
cp -Ln "$tree"/usr/lib/x86_64-linux-gnu/lib{xen,yajl}*.so* "$root/usr/lib/x86_64-linux-gnu/" 2>/dev/null || true
cp -r "$tree/etc/xen" "$root/etc/" 2>/dev/null || mkdir -p "$root/etc/xen"
mkdir -p "$root/etc/xen/scripts"
cat > "$root/etc/xen/scripts/vif-null" <<'EOF'
#!/bin/bash
# The lab's vif hotplug script: bring the vif up, report success.
dev="$vif"
[ -n "$dev" ] && ip link set "$dev" up 2>/dev/null
xenstore-write "$XENBUS_PATH/hotplug-status" connected
EOF
chmod +x "$root/etc/xen/scripts/vif-null"
moddir="$root/lib/modules/$kernel_version"
mkdir -p "$moddir"
for module in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop xen-blkback xen-netback tun; do
    path="$(modprobe -d "$tree" -S "$kernel_version" --show-depends "$module" 2>/dev/null | awk '/^insmod/ {print $2}')"
    for dependency in $path; do mkdir -p "$root$(dirname "${dependency#$tree}")"; cp -n "$dependency" "$root${dependency#$tree}"; done
    echo "$path" | sed "s|$tree||g" >> "$root/etc/modules-to-load"
done
for binary in "$@"; do cp "$binary" "$root/usr/local/bin/"; done
cp "$payload" "$root/payload.sh"
cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
mkdir -p /run && mount -t tmpfs run /run
ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr
ln -s /run /var/run
mkdir -p /run/xen /var/lib/xen /var/lib/xenstored /var/log/xen
export PATH=/usr/local/bin:/bin:/sbin:/usr/lib/xen-4.17/bin
for m in $(cat /etc/modules-to-load); do insmod "$m" 2>/dev/null; done
mount -t xenfs xenfs /proc/xen
xenstored --pid-file /run/xenstored.pid
xen-init-dom0 >/dev/null 2>&1
xenconsoled
echo "XENLAB-DOM0-UP"
sh /payload.sh 2>&1
echo "XENLAB-PAYLOAD-DONE"
poweroff -f
EOF
chmod +x "$root/init"
( cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 ) > "$work/initrd.gz"

# 3. Boot, bounded; the serial console is the result. SIGKILL 10 s after the SIGTERM: a parent
#    that blocks SIGTERM (a test runner) passes that mask on, and QEMU would never stop.
log="$work/console.log"
set +e
timeout -k 10 "$timeout_s" qemu-system-x86_64 -accel tcg,thread=multi -cpu qemu64 -m 2048 -smp 2 -nographic -nic none -no-reboot \
    -kernel "$tree/xen.elf" \
    -append 'dom0_mem=1024M,max:1024M dom0_max_vcpus=2 console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all noreboot' \
    -initrd "$tree/boot/vmlinuz-$kernel_version console=hvc0 earlyprintk=xen rdinit=/init,$work/initrd.gz" \
    </dev/null > "$log" 2>&1
status=$?
set -e
tr -d '\r' < "$log"
if [ $status -eq 124 ]; then echo "xen-lab: timed out after $timeout_s s"; fi
if ! grep -q "XENLAB-DOM0-UP" "$log"; then
    grep -q "Xen version" "$log" || { echo "xen-lab: QEMU did not start Xen (status $status)"; exit 3; }
    echo "xen-lab: dom0 did not come up"; exit 1
fi
grep -q "XENLAB-FAIL" "$log" && exit 1
grep -q "XENLAB-PASS" "$log" && exit 0
exit 1
