#!/bin/sh
# Builds a Debian 12 disk image with Keel, from Debian packages only:
#   images/linux/build-image.sh lb|node OUT.qcow2|OUT.raw [DEB...]
#   images/linux/build-image.sh base lb|node     (with KEEL_IMAGE_CACHE: only the debootstrap step)
# lb:   debootstrap minbase + systemd + the cloud kernel + keel-lb (nothing else listens)
# node: the same + keel-agent + containerd (what Debian ships of a Kubernetes node)
# DEBs default to the packages images/deb/build.sh makes (built first if absent).
#
# The disk is one ext4 filesystem without a partition table or bootloader: boot it with QEMU's direct
# kernel boot, the kernel and initrd being written next to it (OUT.vmlinuz, OUT.initrd, both taken from
# the image's /boot), e.g.
#   qemu-system-x86_64 -m 512 -kernel OUT.vmlinuz -initrd OUT.initrd \
#     -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 no_timer_check" -drive file=OUT.qcow2,if=virtio ...
# First boot reads its parameters from a seed disk (an ext4 filesystem labelled KEELSEED, see
# images/linux/firstboot/keel-firstboot and make-seed.sh). The image holds no secrets and no identity:
# machine-id is empty (systemd makes one on first boot), there are no SSH host keys (no ssh at all),
# the admin token is made on first boot.
# Reproducible settings: a fixed suite, mirror, package set, filesystem UUID, hash seed and timestamps
# (SOURCE_DATE_EPOCH, default: the last commit). The mirror is $KEEL_DEBIAN_MIRROR (default
# deb.debian.org; point it at snapshot.debian.org/archive/debian/<date> for bit-for-bit inputs).
# KEEL_IMAGE_CACHE=DIR keeps the downloaded packages and each role's debootstrap tree there (keyed by
# debootstrap's arguments: suite, mirror, packages) for the next build on this machine: the tests build both images in one
# run, and .ci/run makes the trees (`base`, which needs no Keel binary) while Rust compiles. Without it
# every build starts from the mirror.
# Needs root, debootstrap, e2fsprogs, qemu-utils.
set -eu
usage="usage: build-image.sh lb|node OUT.qcow2|OUT.raw [DEB...] | build-image.sh base lb|node"
role=${1:?$usage}
out=${2:?$usage}
shift 2
base_only=
if [ "$role" = base ]; then
    base_only=1
    role=$out
    out=
    [ -n "${KEEL_IMAGE_CACHE:-}" ] || { echo "build-image.sh base: set KEEL_IMAGE_CACHE" >&2; exit 2; }
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mirror=${KEEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
[ "$(id -u)" = 0 ] || { echo "build-image.sh: needs root (debootstrap, chroot)" >&2; exit 1; }

case $role in
lb)   pkgs=keel-lb;    extra=nftables ;;   # mode: nat frontends and bgp.handoff run nft
node) pkgs=keel-agent; extra=containerd ;;
*)    echo "build-image.sh: role is lb or node, not $role" >&2; exit 2 ;;
esac

if [ $# -eq 0 ] && [ -z "$base_only" ]; then
    debdir=${CARGO_TARGET_DIR:-$root/target}/deb
    for p in $pkgs; do
        ls "$debdir/${p}"_*.deb >/dev/null 2>&1 || "$root/images/deb/build.sh" "$debdir" >/dev/null
        set -- "$@" "$(ls "$debdir/${p}"_*.deb | tail -n 1)"
    done
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/keel-image.XXXXXX")
cleanup() { umount -R "$work/root/proc" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
rootfs=$work/root

# systemd-sysv: systemd as init. udev: /dev/disk/by-label for the seed. The cloud kernel has the
# virtio drivers and little else; initramfs-tools comes with it. iproute2: `ip` for the operator.
include=systemd,systemd-sysv,udev,linux-image-cloud-amd64,iproute2${extra:+,$extra}
# Everything the tree depends on, the cache key below: change the command, change this.
bootstrap_args="--variant=minbase --merged-usr --include=$include bookworm $mirror"
bootstrap() {
    debootstrap --variant=minbase --merged-usr --include="$include" ${1:+--cache-dir="$1"} \
        bookworm "$rootfs" "$mirror" >&2
}
if [ -n "${KEEL_IMAGE_CACHE:-}" ]; then
    mkdir -p "$KEEL_IMAGE_CACHE/debs"
    KEEL_IMAGE_CACHE=$(cd "$KEEL_IMAGE_CACHE" && pwd)
    key=$(echo "$bootstrap_args" | sha256sum | cut -c1-16)
    tree=$KEEL_IMAGE_CACHE/base-$role-$key.tar
    if [ ! -e "$tree" ]; then
        bootstrap "$KEEL_IMAGE_CACHE/debs"
        rm -f "$KEEL_IMAGE_CACHE/base-$role-"*.tar
        tar --xattrs --acls --numeric-owner -C "$rootfs" -cf "$tree.tmp" . && mv "$tree.tmp" "$tree"
        echo "debootstrap tree of $role kept: $tree" >&2
    else
        mkdir -p "$rootfs"
        tar --xattrs --xattrs-include='*' --acls --numeric-owner -C "$rootfs" -xpf "$tree"
        echo "debootstrap tree of $role reused: $tree" >&2
    fi
    [ -z "$base_only" ] || exit 0
else
    bootstrap
fi

for deb in "$@"; do cp "$deb" "$rootfs/tmp/"; done
mount -t proc proc "$rootfs/proc"
# No service may start inside the chroot (policy-rc.d), and the packages' postinst must not see a
# running systemd (there is none here: they enable, never start).
printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
chroot "$rootfs" sh -c 'dpkg -i /tmp/*.deb' >&2
rm -f "$rootfs/usr/sbin/policy-rc.d" "$rootfs"/tmp/*.deb
umount "$rootfs/proc"

# First boot: the seed reader, and the network it configures (systemd-networkd, already in systemd).
install -m 0755 "$here/firstboot/keel-firstboot" "$rootfs/usr/sbin/keel-firstboot"
install -m 0644 "$here/firstboot/keel-firstboot.service" "$rootfs/etc/systemd/system/keel-firstboot.service"
systemctl --root="$rootfs" enable keel-firstboot.service systemd-networkd.service >&2
echo "$role" > "$rootfs/etc/keel/image-role"

echo "keel-$role" > "$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$rootfs/etc/hosts"
# The root account stays locked (minbase: no password): there is no login but the serial console's,
# and that asks for a password nobody has.

# No per-VM identity or secret in the image.
: > "$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id" "$rootfs/etc/keel/lb-admin-token" "$rootfs"/etc/ssh/ssh_host_* \
    "$rootfs/var/lib/systemd/random-seed"
rm -rf "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/var/lib/apt/lists"/* "$rootfs/var/log"/*.log \
    "$rootfs/var/cache/debconf"/*-old "$rootfs/var/lib/dpkg"/*-old

cp "$rootfs/boot/vmlinuz-"* "$work/vmlinuz"
cp "$rootfs/boot/initrd.img-"* "$work/initrd"
chmod 0644 "$work/vmlinuz" "$work/initrd"

# The filesystem straight from the directory (no loop device, no mount): fixed UUID and hash seed,
# every timestamp at SOURCE_DATE_EPOCH.
find "$rootfs" -xdev -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} + 2>/dev/null || true
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L keelroot -U 6b65656c-0000-4000-8000-000000000001 \
    -E hash_seed=6b65656c-0000-4000-8000-000000000002,root_owner=0:0 -d "$rootfs" "$work/disk.raw" 2G
case $out in
*.qcow2) qemu-img convert -c -f raw -O qcow2 "$work/disk.raw" "$out" ;;
*)       mv "$work/disk.raw" "$out" ;;
esac
cp "$work/vmlinuz" "$out.vmlinuz"
cp "$work/initrd" "$out.initrd"
echo "$out: $(du -k --apparent-size "$out" | cut -f1) KiB ($(du -k "$out" | cut -f1) KiB on disk); kernel $out.vmlinuz, initrd $out.initrd" >&2
