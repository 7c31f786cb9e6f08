#!/bin/sh
# Builds the keel-lb and keel-agent Debian packages with dpkg-deb, from the binaries as images ship
# them (see images/linux/install.sh):
#   images/deb/build.sh [OUTDIR]          # default: $CARGO_TARGET_DIR or target/, then deb/
# KEEL_DEB_BINARIES=DIR packages DIR/keel-lb and DIR/keel-agent as they are, building nothing (the
# tests package the debug binaries `tests/run` already built: a release build would double CI's time).
# KEEL_DEB_COMPRESSION: dpkg-deb's -Z (default xz; the tests use gzip, minutes faster on debug binaries).
# Prints the paths of the two .debs. Needs dpkg-dev (dpkg-shlibdeps) and binutils (strip).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
out=${1:-$target/deb}
cd "$root"

if [ -n "${KEEL_DEB_BINARIES:-}" ]; then
    lb_bin=$KEEL_DEB_BINARIES/keel-lb
    agent_bin=$KEEL_DEB_BINARIES/keel-agent
else
    cargo build --locked --release -p keel-lb >&2
    cargo build --locked --profile agent -p keel-agent >&2
    lb_bin=$target/release/keel-lb
    agent_bin=$target/agent/keel-agent
fi
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
# Reproducible: every file's mtime and the archive's timestamps come from the last commit.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# package <name> <binary> <config file in /etc/keel> <config source> <doc> <token file or ""> <state dir>
package() {
    pkg=$1 bin=$2 conf=$3 confsrc=$4 doc=$5 token=$6 state=$7
    d=$work/$pkg
    install -d "$d/DEBIAN" "$d/usr/bin" "$d/lib/systemd/system" "$d/etc/keel" \
        "$d/usr/share/man/man1" "$d/usr/share/doc/$pkg/examples" "$d/usr/share/lintian/overrides"
    install -m 0755 "$bin" "$d/usr/bin/$pkg"
    # Debian ships stripped binaries (debug symbols would go to a -dbgsym package).
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$d/usr/bin/$pkg"
    install -m 0644 "$here/$pkg.service" "$d/lib/systemd/system/$pkg.service"
    install -m 0644 "$confsrc" "$d/etc/keel/$conf"
    gzip -9n < "$here/$pkg.1" > "$d/usr/share/man/man1/$pkg.1.gz"
    gzip -9n < "$root/docs/$doc" > "$d/usr/share/doc/$pkg/$doc.gz"
    install -m 0644 "$here/copyright" "$d/usr/share/doc/$pkg/copyright"
    printf '%s (%s) unstable; urgency=medium\n\n  * Built from the Keel repository; see its git history.\n\n -- Keel developers <keel@example.org>  %s\n' \
        "$pkg" "$version" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" | gzip -9n > "$d/usr/share/doc/$pkg/changelog.gz"
    install -m 0644 "$here/$pkg.lintian-overrides" "$d/usr/share/lintian/overrides/$pkg"
    # Read at boot by systemd-sysctl (not applied by postinst: an image build's chroot shares the
    # build host's network namespace).
    if [ -f "$here/$pkg.sysctl" ]; then
        install -D -m 0644 "$here/$pkg.sysctl" "$d/usr/lib/sysctl.d/60-$pkg.conf"
    fi
    for s in postinst prerm postrm; do
        sed -e "s|@PKG@|$pkg|g" -e "s|@CONF@|/etc/keel/$conf|g" -e "s|@TOKEN@|$token|g" \
            -e "s|@STATE@|$state|g" "$here/$s.in" > "$d/DEBIAN/$s"
        chmod 0755 "$d/DEBIAN/$s"
    done
    echo "/etc/keel/$conf" > "$d/DEBIAN/conffiles"
    # Shared-library dependencies as Debian computes them (libc6, libgcc-s1).
    mkdir -p "$work/shlib-$pkg/debian"
    printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$pkg" "$pkg" > "$work/shlib-$pkg/debian/control"
    shlibs=$(cd "$work/shlib-$pkg" && dpkg-shlibdeps -O "$d/usr/bin/$pkg" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
    size=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
    cat > "$d/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: Keel developers <keel@example.org>
Installed-Size: $size
Depends: $shlibs
Section: net
Priority: optional
Homepage: https://github.com/keel/keel
Description: $8
$(printf '%s\n' "$9" | sed 's/^/ /')
CONTROL
    # keel-lb runs nft for `mode: nat` frontends and `bgp.handoff`; without it those say why and
    # do nothing.
    if [ "$pkg" = keel-lb ]; then sed -i '/^Depends:/a Recommends: nftables' "$d/DEBIAN/control"; fi
    (cd "$d" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
        xargs -0 md5sum > DEBIAN/md5sums)
    find "$d" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    # Built aside, then renamed: whoever reads the previous .deb never sees half a file.
    dpkg-deb --root-owner-group -Z"${KEEL_DEB_COMPRESSION:-xz}" --build "$d" "$out/.$pkg.deb.tmp" >/dev/null
    mv "$out/.$pkg.deb.tmp" "$out/${pkg}_${version}_$arch.deb"
    echo "$out/${pkg}_${version}_$arch.deb"
}

# The agent's packaged file is the documented example: `keel-agent check` passes on it, and the
# unit stays idle until a bootstrap token is there (ConditionPathExists= in keel-agent.service).
{
    echo "# keel-agent's packaged example (dpkg keeps your version on upgrades: a conffile). Set the"
    echo "# cluster's VIP, CA pin and pool, put the bootstrap token in /etc/keel/bootstrap-token, then"
    echo "# systemctl start keel-agent. Every field: /usr/share/doc/keel-agent/agent-config.md.gz."
    grep -v 'keel-agent check --config configs/' configs/agent-example.yaml
} > "$work/agent.yaml"

# Examples go in first; package() adds the rest around them.
install -d "$work/keel-lb/usr/share/doc/keel-lb/examples" "$work/keel-agent/usr/share/doc/keel-agent/examples"
install -m 0644 configs/lb-*.yaml "$work/keel-lb/usr/share/doc/keel-lb/examples/"
install -m 0644 configs/agent-*.yaml "$work/keel-agent/usr/share/doc/keel-agent/examples/"

package keel-lb "$lb_bin" lb.yaml "$here/lb.yaml" lb-config.md /etc/keel/lb-admin-token \
    "/var/lib/keel-lb /var/lib/private/keel-lb" \
    "L4 TCP/UDP load balancer with VRRP virtual-IP failover" \
    "keel-lb forwards TCP and UDP from its frontends to healthy backends and moves
virtual IP addresses between load balancer machines with VRRP (RFC 9568). It
can serve a Kubernetes cluster's Services of type LoadBalancer."
package keel-agent "$agent_bin" agent.yaml "$work/agent.yaml" agent-config.md "" /var/lib/keel \
    "Kubernetes node agent: join, registration, heartbeat, node health" \
    "keel-agent joins a node to a Kubernetes cluster with a bootstrap token and a
pinned CA, registers the Node with its pool's labels and taints, renews its
Lease, reports health conditions and drains the node on shutdown."
