#!/bin/sh
# Installs Keel on a Linux VM image. Agent part: the binary, its unit, and the config directory.
# Usage: install.sh <dir with keel-agent binary> [agent.yaml]
set -eu
src=${1:?usage: install.sh <dir with binaries> [agent.yaml]}
here=$(cd "$(dirname "$0")" && pwd)

install -m 0755 "$src/keel-agent" /usr/local/bin/keel-agent
install -d -m 0755 /etc/keel
install -d -m 0700 /var/lib/keel
if [ $# -ge 2 ]; then
    # The bootstrap token lives in its own file (token_file), readable by root only.
    install -m 0600 "$2" /etc/keel/agent.yaml
    /usr/local/bin/keel-agent check --config /etc/keel/agent.yaml
fi
install -m 0644 "$here/keel-agent.service" /etc/systemd/system/keel-agent.service
systemctl daemon-reload
systemctl enable keel-agent.service
echo "keel-agent installed; put the bootstrap token in /etc/keel/bootstrap-token and start keel-agent"
