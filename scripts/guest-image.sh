#!/usr/bin/env bash
# Build (or reuse) the Debian 13 guest image that tests/slow_guest_boot.rs boots.
# Run `scripts/guest-image.sh --help` for details.
set -euo pipefail

log_prefix="guest-image"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/guest-image.sh [--force]

Builds a small Debian 13 (trixie) guest for hvroute's real-guest test
(tests/slow_guest_boot.rs) and caches it in

  ${HVROUTE_GUEST_CACHE:-<repo>/target/guest-image}/
      rootfs.raw    raw ext4 root file system (the guest's /dev/vda)
      vmlinuz       the guest's kernel   } for direct kernel boot:
      initrd.img    its initramfs        } root=/dev/vda rw console=ttyS0
      recipe        hash of this script: the recipe the cache was built from
      build.txt     build time (s), image size (bytes, apparent and allocated)

Recipe: `debootstrap --variant=minbase` of trixie with the kernel, systemd, cloud-init
(25.1), netplan.io, iproute2, iputils-ping, udev and kmod, from the Debian mirror in this
machine's apt sources; fstab with /dev/vda as /; cloud-init limited to the ConfigDrive and
NoCloud datasources; systemd-networkd-wait-online and the periodic maintenance timers
masked (a routed guest has no DHCP to wait for); documentation, locales and unneeded
kernel driver trees removed; then `mkfs.ext4 -d`.

A cache whose recipe hash matches this script is reused at once (the cached image is never
written to: the test boots a qcow2 overlay on top of it). --force rebuilds anyway.
Needs root (debootstrap). Prints progress lines; exits 0 with the image in place.
EOF
}

force=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --force) force=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'guest-image: unknown argument %q (usage: scripts/guest-image.sh [--force])\n' "$1" >&2
        exit 2
        ;;
    esac
    shift
done

cache="${HVROUTE_GUEST_CACHE:-$repo_root/target/guest-image}"
recipe="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

if [[ -z "$force" && -f "$cache/recipe" && "$(cat "$cache/recipe")" == "$recipe" &&
    -f "$cache/rootfs.raw" && -f "$cache/vmlinuz" && -f "$cache/initrd.img" ]]; then
    log "reusing the cached image in $cache (recipe ${recipe:0:12})"
    exit 0
fi

need_root
ensure_packages debootstrap e2fsprogs

# The first Debian mirror of this machine's apt sources (deb822 or one-line format).
mirror() {
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri="$(awk '/^deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

start_s="$(date +%s)"
mkdir -p "$cache"
work="$(mktemp -d "$cache/build.XXXXXX")"
root="$work/root"
cleanup() {
    # debootstrap mounts /proc and /sys in the root while it runs; never delete through a
    # mount that is still there.
    local m
    for m in "$root/proc" "$root/sys" "$root/dev/pts" "$root/dev"; do
        if mountpoint -q "$m" 2>/dev/null; then
            umount -l "$m" || true
        fi
    done
    if ! grep -q " $work/" /proc/mounts; then
        rm -rf -- "$work"
    else
        warn "$work still has mounts; left in place"
    fi
}
trap cleanup EXIT

readonly packages=linux-image-amd64,systemd-sysv,cloud-init,netplan.io,iproute2,iputils-ping,udev,kmod
src="$(mirror)"
log "debootstrap trixie (minbase + $packages) from $src (about 70 s on an idle machine)"
debootstrap --variant=minbase --include="$packages" trixie "$root" "$src" >"$work/debootstrap.log" 2>&1 ||
    {
        tail -n 20 "$work/debootstrap.log" >&2
        die "debootstrap of trixie failed (log above)."
    }

log "configuring the guest: fstab, cloud-init datasources, masked waits"
printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$root/etc/fstab"
printf 'debian\n' >"$root/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# systemd makes a fresh machine-id on the first boot.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
cat >"$root/etc/cloud/cloud.cfg.d/90-hvroute-guest.cfg" <<'EOF'
# hvroute's test guest (scripts/guest-image.sh): the drives hvroute builds, nothing else.
datasource_list: [ConfigDrive, NoCloud]
# The image has the size it needs, and no sshd (the drive's keys are still installed).
growpart: {mode: "off"}
resize_rootfs: false
ssh_genkeytypes: []
ssh_deletekeys: false
EOF
# A routed guest has no DHCP: nothing to wait for before network-online.target. Logins,
# binfmt and the maintenance timers only cost boot time in a throw-away guest (under TCG
# every unit counts).
for unit in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer dpkg-db-backup.timer \
    getty-static.service getty@tty1.service serial-getty@ttyS0.service systemd-binfmt.service \
    systemd-pstore.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

log "trimming documentation, locales, apt lists and unneeded kernel drivers"
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/debconf/*-old
kver=""
for d in "$root"/lib/modules/*; do
    kver="$(basename "$d")"
done
[[ -n "$kver" ]] || die "the guest root has no kernel modules (/lib/modules is empty)."
kmods="$root/lib/modules/$kver/kernel"
rm -rf "$kmods"/drivers/{gpu,media,infiniband,net/wireless,net/ethernet,staging,bluetooth,iio,hid,input/touchscreen} \
    "$kmods"/sound "$kmods"/net/{wireless,mac80211,bluetooth}
chroot "$root" depmod "$kver" || die "depmod $kver in the guest root failed."

# A small initramfs: what mounts a virtio root, and the IDE cdrom with its file system
# (Debian's default takes most of the kernel's drivers, 36 MB that TCG unpacks and probes
# at every boot). The cdrom must exist before the root is switched: cloud-init's
# ds-identify looks for the drive's label from a systemd generator, before udev runs, and
# disables cloud-init when it finds none.
log "making a small initramfs (virtio root, IDE cdrom)"
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic ata_piix sr_mod iso9660 vfat \
    >>"$root/etc/initramfs-tools/modules"
# Emulated legacy hardware whose drivers cost seconds each under TCG and serve nothing here.
printf 'blacklist %s\n' floppy parport parport_pc ppdev pcspkr i2c_piix4 kvm kvm_amd kvm_intel \
    powernow_k8 serio_raw >"$root/etc/modprobe.d/hvroute-guest.conf"
printf 'RESUME=none\n' >"$root/etc/initramfs-tools/conf.d/resume"
mount -t proc proc "$root/proc"
chroot "$root" update-initramfs -u -k "$kver" >"$work/initramfs.log" 2>&1 ||
    {
        umount "$root/proc"
        tail -n 20 "$work/initramfs.log" >&2
        die "update-initramfs in the guest root failed (log above)."
    }
umount "$root/proc"

vmlinuz="$root/boot/vmlinuz-$kver"
initrd="$root/boot/initrd.img-$kver"
[[ -f "$vmlinuz" && -f "$initrd" ]] || die "the guest root has no /boot/vmlinuz-$kver or /boot/initrd.img-$kver."
cp "$vmlinuz" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"

# The file system: what the root holds plus a third (and 64 MiB) of room for cloud-init,
# the journal and the tests' writes.
used_kib="$(du -s -k "$root" | cut -f1)"
size_mib=$((used_kib * 4 / 3 / 1024 + 64))
log "making a ${size_mib} MiB ext4 image of the $((used_kib / 1024)) MiB root"
truncate -s "${size_mib}M" "$work/rootfs.raw"
mkfs.ext4 -q -F -L hvroute-guest -d "$root" "$work/rootfs.raw" || die "mkfs.ext4 -d failed."

# Into place: the files first, the recipe last, so an interrupted build is never reused.
rm -f "$cache/recipe"
mv -f "$work/rootfs.raw" "$work/vmlinuz" "$work/initrd.img" "$cache/"
elapsed=$(($(date +%s) - start_s))
apparent="$(stat -c %s "$cache/rootfs.raw")"
allocated="$(du -B1 "$cache/rootfs.raw" | cut -f1)"
{
    echo "build_seconds=$elapsed"
    echo "kernel=$kver"
    echo "image_bytes=$apparent"
    echo "image_allocated_bytes=$allocated"
    echo "kernel_initrd_bytes=$(($(stat -c %s "$cache/vmlinuz") + $(stat -c %s "$cache/initrd.img")))"
} >"$cache/build.txt"
echo "$recipe" >"$cache/recipe"
log "built in ${elapsed} s: rootfs.raw $((apparent / 1048576)) MiB ($((allocated / 1048576)) MiB allocated), kernel $kver, in $cache"
