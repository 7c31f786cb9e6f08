#!/bin/sh
# Makes a seed disk for keel-firstboot: an ext4 filesystem labelled KEELSEED holding the files given
# (keel.env, and optionally lb.yaml, agent.yaml, run.sh), without mounting anything.
#   images/linux/make-seed.sh OUT.img FILE...
# Attach it as a second disk: -drive file=OUT.img,if=virtio,format=raw,readonly=on
set -eu
out=${1:?usage: make-seed.sh OUT.img FILE...}
shift
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for f in "$@"; do cp "$f" "$dir/"; done
mkfs.ext4 -q -F -L KEELSEED -d "$dir" "$out" 4M
