#!/bin/sh
# Installs Keel on a Linux VM image: whichever of keel-agent and keel-lb is in <dir>, with its unit and
# config directory. Build them first as the images ship them:
#   cargo build --profile agent -p keel-agent     # -> target/agent/keel-agent (built for size)
#   cargo build --release -p keel-lb              # -> target/release/keel-lb
# Usage: install.sh <dir with binaries> [agent.yaml | lb.yaml]
set -eu
src=${1:?usage: install.sh <dir with binaries> [agent.yaml | lb.yaml]}
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$src/keel-agent" ] || [ -x "$src/keel-lb" ] || { echo "no keel-agent or keel-lb in $src" >&2; exit 1; }
install -d -m 0755 /etc/keel
# The packages' hardened units (images/deb), pointed at /usr/local/bin: one unit file per program.
unit() {
    sed 's#/usr/bin/keel-#/usr/local/bin/keel-#g' "$here/../deb/$1.service" >"/etc/systemd/system/$1.service"
    chmod 0644 "/etc/systemd/system/$1.service"
}

if [ -x "$src/keel-agent" ]; then
    install -m 0755 "$src/keel-agent" /usr/local/bin/keel-agent
    install -d -m 0700 /var/lib/keel
    case "${2:-}" in
    *agent*.yaml)
        # Checked before it replaces anything: a bad file never overwrites a good one.
        /usr/local/bin/keel-agent check --config "$2" || { echo "$2 refused; /etc/keel/agent.yaml unchanged" >&2; exit 1; }
        # The bootstrap token lives in its own file (token_file), readable by root only.
        install -m 0600 "$2" /etc/keel/agent.yaml
        ;;
    esac
    unit keel-agent
fi

if [ -x "$src/keel-lb" ]; then
    install -m 0755 "$src/keel-lb" /usr/local/bin/keel-lb
    case "${2:-}" in
    *lb*.yaml)
        /usr/local/bin/keel-lb check --config "$2" || { echo "$2 refused; /etc/keel/lb.yaml unchanged" >&2; exit 1; }
        install -m 0644 "$2" /etc/keel/lb.yaml
        ;;
    esac
    # The admin token the unit hands over as a credential (LoadCredential=): random, created once,
    # root-only, as the package's postinst does.
    [ -e /etc/keel/lb-admin-token ] || (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >/etc/keel/lb-admin-token)
    unit keel-lb
    # bgp.handoff needs it and the unit cannot set it (ProtectKernelTunables=yes); read at boot.
    install -D -m 0644 "$here/../deb/keel-lb.sysctl" /usr/lib/sysctl.d/60-keel-lb.conf
fi

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    [ -x "$src/keel-agent" ] && systemctl enable keel-agent.service
    [ -x "$src/keel-lb" ] && systemctl enable keel-lb.service
fi
echo "installed; agent: put the bootstrap token in /etc/keel/bootstrap-token; lb: write /etc/keel/lb.yaml; then start the units"
