#!/usr/bin/env bash
# Builds real Debian 12 guest roots and whole disk images of them for pvcheck's migration
# tests, cached outside the repository (needs root: mmdebstrap, chroot, loop mounts for XFS).
#
#   scripts/make-guests.sh        # fills ${PVKIT_CACHE:-~/.cache/pvkit}/guests
#
# Variants (each a root made by mmdebstrap from Debian packages):
#   most     linux-image-cloud-amd64, initramfs-tools MODULES=most, fstab by UUID, ttyS0
#   dep      the same with MODULES=dep: the initramfs keeps only the drivers of the disk this
#            machine builds on (bind mounts make the chroot's / a mount point for mkinitramfs)
#   dracut   linux-image-cloud-amd64 with a dracut-built (no-hostonly) initramfs, console hvc0
#   xvda     MODULES=most, but fstab and root= name /dev/xvda1, hvc0 console, MAC-pinned network
#   no-nvme  linux-image-amd64 (nvme is a module there), MODULES=list without nvme
# Images of each: ext4-gpt.raw, ext4-mbr.qcow2, xfs-mbr.raw, xfs-gpt.qcow2 (2 GiB virtual).
# Writes guests/STATUS: "ok" or "unreachable <reason>" (tests read it).
set -uo pipefail

cache="${PVKIT_CACHE:-$HOME/.cache/pvkit}/guests"
version=5        # of the images
roots_version=1  # of the roots (rebuilt only when this changes)
mkdir -p "$cache"
if [ -f "$cache/STATUS" ] && [ "$(cat "$cache/STATUS")" = "ok $version" ]; then
    echo "guests: cached in $cache"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "unreachable building guest roots needs root (mmdebstrap, chroot, loop mounts)" > "$cache/STATUS"
    exit 0
fi
rm -f "$cache/STATUS" "$cache"/*/*.raw "$cache"/*/*.qcow2
uuid=0f3c2a4e-7d1b-4c55-9a66-5e2f4b1c8d01
mirror=http://deb.debian.org/debian

grub_cfg() { # kernel-release cmdline
    cat <<EOF
# generated the way update-grub writes it (test fixture)
set default="0"
set timeout=5
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os \$menuentry_id_option 'gnulinux-simple-$uuid' {
	insmod part_gpt
	insmod ext2
	search --no-floppy --fs-uuid --set=root $uuid
	echo	'Loading Linux $1 ...'
	linux	/boot/vmlinuz-$1 $2
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-$1
}
EOF
}

# One root: name, kernel package, extra packages, customize script (runs with $1 = the root).
build_root() {
    local name=$1 kernel=$2 extra=$3 hook=$4
    if [ "$(cat "$cache/$name/roots.ok" 2>/dev/null)" = "$roots_version" ]; then return 0; fi
    rm -rf "${cache:?}/$name"
    local log="$cache/$name.log"
    mkdir -p "$cache/$name"
    if ! timeout 900 mmdebstrap --variant=apt --include="$kernel,zstd$extra" \
        --customize-hook="$hook" bookworm "$cache/$name/root" "$mirror" >"$log" 2>&1; then
        echo "unreachable mmdebstrap for $name failed: $(tail -1 "$log")" > "$cache/STATUS"
        echo "guests: $(cat "$cache/STATUS")"
        exit 0
    fi
}

common='set -e; rel=$(ls "$1"/lib/modules); echo "$rel" > "$1/../release";'
build_root most linux-image-cloud-amd64 ",initramfs-tools" "$common"'
    printf "UUID='$uuid' / auto errors=remount-ro 0 1\n" > "$1/etc/fstab"
    mkdir -p "$1/boot/grub" "$1/etc/network"
    printf "auto lo\niface lo inet loopback\nallow-hotplug eth0\niface eth0 inet dhcp\n" > "$1/etc/network/interfaces"
    mkdir -p "$1/etc/systemd/system/getty.target.wants"
    ln -sf /lib/systemd/system/serial-getty@.service "$1/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
    echo GRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200 net.ifnames=0\" > "$1/etc/default/grub"'"
    $(declare -f grub_cfg); uuid=$uuid; grub_cfg \$rel \"root=UUID=$uuid ro console=tty0 console=ttyS0,115200 net.ifnames=0\" > \"\$1/boot/grub/grub.cfg\""
build_root dep linux-image-cloud-amd64 ",initramfs-tools" "$common"'
    printf "UUID='$uuid' / auto errors=remount-ro 0 1\n" > "$1/etc/fstab"
    sed -i "s/^MODULES=.*/MODULES=dep/" "$1/etc/initramfs-tools/initramfs.conf"
    mount --bind "$1" "$1" && mount -t proc proc "$1/proc" && mount -t sysfs sys "$1/sys" && mount --bind /dev "$1/dev"
    status=0; chroot "$1" update-initramfs -u -k all || status=$?
    umount "$1/dev" "$1/sys" "$1/proc"; umount "$1"
    [ "$status" = 0 ]
    mkdir -p "$1/boot/grub"'"
    $(declare -f grub_cfg); uuid=$uuid; grub_cfg \$rel \"root=UUID=$uuid ro console=ttyS0\" > \"\$1/boot/grub/grub.cfg\""
build_root dracut linux-image-cloud-amd64 ",dracut,systemd" "$common"'
    printf "UUID='$uuid' / auto defaults 0 1\n" > "$1/etc/fstab"
    chroot "$1" dracut -f --no-hostonly --kver "$rel" "/boot/initrd.img-$rel"
    mkdir -p "$1/boot/grub" "$1/etc/systemd/network"
    printf "[Match]\nName=eth0\n\n[Network]\nDHCP=yes\n" > "$1/etc/systemd/network/10-eth0.network"'"
    $(declare -f grub_cfg); uuid=$uuid; grub_cfg \$rel \"root=UUID=$uuid ro console=hvc0\" > \"\$1/boot/grub/grub.cfg\""
build_root xvda linux-image-cloud-amd64 ",initramfs-tools" "$common"'
    printf "/dev/xvda1 / auto errors=remount-ro 0 1\n/dev/xvdb none swap sw 0 0\n" > "$1/etc/fstab"
    printf "data /dev/xvdc1 none luks\n" > "$1/etc/crypttab"
    mkdir -p "$1/boot/grub" "$1/etc/udev/rules.d" "$1/etc/netplan"
    printf "SUBSYSTEM==\"net\", ACTION==\"add\", ATTR{address}==\"00:16:3e:12:34:56\", NAME=\"eth0\"\n" > "$1/etc/udev/rules.d/70-persistent-net.rules"
    printf "network:\n  version: 2\n  ethernets:\n    eth0:\n      match:\n        macaddress: 00:16:3e:12:34:56\n      dhcp4: true\n" > "$1/etc/netplan/50-cloud-init.yaml"'"
    $(declare -f grub_cfg); uuid=$uuid; grub_cfg \$rel \"root=/dev/xvda1 ro console=hvc0 xen_emul_unplug=never\" > \"\$1/boot/grub/grub.cfg\""
build_root no-nvme linux-image-amd64 ",initramfs-tools" "$common"'
    printf "UUID='$uuid' / auto errors=remount-ro 0 1\n" > "$1/etc/fstab"
    sed -i "s/^MODULES=.*/MODULES=list/" "$1/etc/initramfs-tools/initramfs.conf"
    printf "xen-blkfront\nvirtio_blk\nvirtio_pci\next4\nxfs\n" >> "$1/etc/initramfs-tools/modules"
    chroot "$1" update-initramfs -u -k all
    mkdir -p "$1/boot/grub"'"
    $(declare -f grub_cfg); uuid=$uuid; grub_cfg \$rel \"root=UUID=$uuid ro console=ttyS0\" > \"\$1/boot/grub/grub.cfg\""

# Ground truth for the tests, from Debian's own tools.
for name in most dep dracut xvda no-nvme; do
    echo "$roots_version" > "$cache/$name/roots.ok"
    root="$cache/$name/root"
    rel=$(cat "$cache/$name/release")
    if [ "$name" = dracut ]; then
        chroot "$root" lsinitrd "/boot/initrd.img-$rel" > "$cache/$name/initrd.list" 2>/dev/null
    else
        chroot "$root" lsinitramfs "/boot/initrd.img-$rel" > "$cache/$name/initrd.list"
    fi
done

# Whole disk images: one partition from 1 MiB, GPT or MBR, ext4 (mkfs.ext4 -d, no mount) or
# XFS (loop mount), raw or qcow2.
image() { # variant fs table format
    local name=$1 fs=$2 table=$3 format=$4
    local raw="$cache/$name/$fs-$table.raw" out="$cache/$name/$fs-$table.$format"
    rm -f "$raw"
    truncate -s 2G "$raw"
    local label=dos; [ "$table" = gpt ] && label=gpt
    # 2 GiB less 2 MiB: aligned, and clear of GPT's backup table at the end.
    local sectors=4190208 size=$((4190208 * 512 / 4096))
    printf 'label: %s\nstart=2048, size=%s, type=%s\n' "$label" "$sectors" "$([ "$table" = gpt ] && echo 0FC63DAF-8483-4772-8E79-3D69D8477DE4 || echo 83)" \
        | sfdisk -q "$raw"
    if [ "$fs" = ext4 ]; then
        mkfs.ext4 -q -F -b 4096 -U "$uuid" -E offset=1048576 -d "$cache/$name/root" "$raw" "${size}" || return 1
    else
        local loop mnt
        # No udev here for partition nodes: the loop device covers the partition itself.
        loop=$(losetup --find --show --offset 1048576 --sizelimit $((size * 4096)) "$raw") || return 1
        mkfs.xfs -q -f -m uuid="$uuid" "$loop" || { losetup -d "$loop"; return 1; }
        mnt=$(mktemp -d)
        mount "$loop" "$mnt" && cp -a "$cache/$name/root/." "$mnt/" && umount "$mnt"
        rmdir "$mnt"
        losetup -d "$loop"
    fi
    if [ "$format" = qcow2 ]; then
        qemu-img convert -q -f raw -O qcow2 "$raw" "$out" && rm -f "$raw"
    fi
}
for name in most dep dracut xvda no-nvme; do
    for spec in "ext4 gpt raw" "ext4 mbr qcow2" "xfs mbr raw" "xfs gpt qcow2"; do
        # shellcheck disable=SC2086
        if ! image $name $spec; then
            echo "unreachable building the $spec image of $name failed" > "$cache/STATUS"
            exit 0
        fi
    done
done
echo "ok $version" > "$cache/STATUS"
echo "guests: built in $cache"
