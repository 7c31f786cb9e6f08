#!/bin/sh
# The whole system in VMs on one machine: two LB VMs (keel-lb, VRRP) in front of the API test server,
# two node VMs (keel-agent) that join through the VIP, and a Service of type LoadBalancer that
# keel-lb's services provider serves. Booted from the images of images/linux/build-image.sh, as the
# tests boot them (QEMU, TCG by default: nested KVM hangs on many CI machines).
#
#   images/linux/lab.sh [up]          build what is missing, boot everything, print where to look
#   images/linux/lab.sh down          power everything off and remove it (VMs, namespaces, files)
#   images/linux/lab.sh status        what runs
#   images/linux/lab.sh kubectl ARGS  kubectl with the lab's admin kubeconfig
#   images/linux/lab.sh sh CMD...     a command in the lab's network (curl the VIP, ...)
#   images/linux/lab.sh console VM    a root shell on VM's second serial port (ctrl-] leaves)
#   images/linux/lab.sh poweroff VM   pull VM's plug;  lab.sh start VM  boots it again
#
# Needs root, qemu-system-x86, qemu-utils, debootstrap, e2fsprogs, dpkg-dev, socat, curl, kubectl and
# the debug binaries (`cargo build --workspace --bins`; built here when absent). Addresses are from
# 198.18.0.0/24 (RFC 2544 benchmarking space), all inside the network namespaces keel-lab (the
# segment, and your seat on it: 198.18.0.1) and keel-lab-api (the API server, 198.18.0.3); the host's
# own network is not touched. Files: $KEEL_LAB_DIR (default target/lab). KEEL_LAB_ACCEL=kvm where
# KVM works.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
lab=${KEEL_LAB_DIR:-$target/lab}
ns=keel-lab
api_ns=keel-lab-api
vip=198.18.0.100
api=198.18.0.3
accel=${KEEL_LAB_ACCEL:-tcg}
vms="lb1 lb2 node1 node2"

say() { printf '%s\n' "lab: $*" >&2; }
die() { say "$*"; exit 1; }
in_ns() { ip netns exec "$ns" "$@"; }
addr_of() {
    case $1 in lb1) echo 198.18.0.11 ;; lb2) echo 198.18.0.12 ;; node1) echo 198.18.0.21 ;; node2) echo 198.18.0.22 ;; esac
}
kc() { in_ns kubectl --kubeconfig "$lab/api/admin.kubeconfig" --request-timeout 10s "$@"; }
# Polls "$@" every 2 s for at most $1 seconds.
wait_for() {
    limit=$1
    shift
    i=0
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 2))
        [ $i -le "$limit" ] || return 1
        sleep 2
    done
}

qemu_start() {
    vm=$1
    d=$lab/$vm
    disk=$lab/lb.raw
    case $vm in node*) disk=$lab/node.raw ;; esac
    rm -f "$d/tty.sock" "$d/monitor.sock"
    # MAC 52:54:00:4b:01:<last byte of the address>.
    mac=$(printf '52:54:00:4b:01:%02x' "$(addr_of "$vm" | cut -d. -f4)")
    in_ns qemu-system-x86_64 -accel "$accel" -m 512 -smp 1 -no-reboot -name "keel-lab-$vm" \
        -display none -vga none -daemonize -pidfile "$d/qemu.pid" \
        -kernel "$disk.vmlinuz" -initrd "$disk.initrd" \
        -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 no_timer_check" \
        -drive "file=$d/disk.qcow2,if=virtio,format=qcow2" \
        -drive "file=$d/seed.img,if=virtio,format=raw,readonly=on" \
        -netdev "tap,id=n0,ifname=tap-$vm,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=n0,mac=$mac" \
        -chardev "file,id=con,path=$d/console.log,append=on" -serial chardev:con \
        -chardev "socket,id=tty,path=$d/tty.sock,server=on,wait=off" -serial chardev:tty \
        -monitor "unix:$d/monitor.sock,server,nowait"
}

qemu_stop() {
    pidfile=$lab/$1/qemu.pid
    [ -f "$pidfile" ] || return 0
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
}

# The seed's run.sh for every lab VM: a root shell on ttyS1 (lab.sh console; the image has no
# login anyone could use), and on nodes a web server on the Service's nodePort standing in for
# kube-proxy and a pod (systemd socket activation: the image carries no other server).
guest_script() {
    cat <<'EOF'
#!/bin/sh
mkdir -p /etc/systemd/system/serial-getty@ttyS1.service.d
printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200 %%I $TERM\n' \
    > /etc/systemd/system/serial-getty@ttyS1.service.d/autologin.conf
if [ "$(cat /etc/keel/image-role)" = node ]; then
    cat > /usr/local/bin/lab-web <<'WEB'
#!/bin/sh
# Reads the request's head, answers with this node's name.
# One process per connection (socket activation) and TCG is slow: no forks here.
while IFS= read -r l; do [ ${#l} -gt 1 ] || break; done
read -r h </etc/hostname
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from %s\n' "$h"
WEB
    chmod 0755 /usr/local/bin/lab-web
    printf '[Socket]\nListenStream=30080\nAccept=yes\nMaxConnections=512\n\n[Install]\nWantedBy=sockets.target\n' \
        > /etc/systemd/system/lab-web.socket
    printf '[Service]\nExecStart=/usr/local/bin/lab-web\nStandardInput=socket\nStandardOutput=socket\n' \
        > /etc/systemd/system/lab-web@.service
    systemctl daemon-reload
    systemctl enable --now lab-web.socket
fi
systemctl daemon-reload
systemctl enable serial-getty@ttyS1.service
systemctl restart serial-getty@ttyS1.service
EOF
}

lb_yaml() {
    name=$1
    prio=$2
    cat <<EOF
# keel-lb of the Keel lab (images/linux/lab.sh): the API server behind the VIP, and the Services
# of type LoadBalancer of the lab's cluster on addresses of their own.
admin:
  listen: 127.0.0.1:9100
  token_credential: lb-admin-token
metrics:
  listen: $(addr_of "$name"):9101
frontends:
  - name: kube-apiserver
    listen: $vip:6443
    pool: apiservers
pools:
  apiservers:
    health: { type: tcp, interval: 1s, timeout: 500ms }
    backends:
      - address: $api:6443
vrrp:
  routers:
    - name: control-plane
      vrid: 51
      interface: eth0
      priority: $prio
      advert_interval: 1s
      vips: [$vip/24]
    - name: services
      vrid: 52
      interface: eth0
      priority: $prio
      advert_interval: 1s
      vips: [198.18.0.99/24]
services:
  kubeconfig: /run/credentials/keel-lb.service/lb-workload.kubeconfig
  default_class: true
  state_file: /var/lib/keel-lb/services.json
  instance: $name
  health:
    # No kube-proxy in the lab: a TCP connect to the nodePort.
    cluster: node_port
    # Each check is a process on the node (socket activation), under TCG: not too often.
    interval: 10s
    timeout: 3s
  address_pools:
    - name: default
      addresses: [198.18.0.200-198.18.0.209]
      vrrp_routers: [services]
EOF
}

up() {
    [ "$(id -u)" = 0 ] || die "needs root (namespaces, taps, debootstrap)"
    for t in qemu-system-x86_64 qemu-img debootstrap mkfs.ext4 dpkg-deb socat curl kubectl flock; do
        command -v "$t" >/dev/null || die "$t is not installed"
    done
    ! ip netns list | grep -qw "$ns" || die "a lab is up already (images/linux/lab.sh down first)"
    mkdir -p "$lab"
    bins=$target/debug
    if [ ! -x "$bins/keel-lb" ] || [ ! -x "$bins/keel-agent" ] || [ ! -x "$bins/keel-test-apiserver" ]; then
        say "building the binaries (cargo build)"
        (cd "$root" && cargo build -p keel-lb -p keel-agent -p keel-test-apiserver --bins >&2)
    fi
    say "packages and images (the debootstrap trees are kept in $target/images/base)"
    debs=$(KEEL_DEB_COMPRESSION=gzip KEEL_DEB_BINARIES=$bins "$root/images/deb/build.sh" "$lab/deb")
    for role in lb node; do
        deb=$(echo "$debs" | grep "/keel-$([ $role = lb ] && echo lb || echo agent)_")
        # Rebuilt when the package (reproducible: same binary, same bytes) or the image scripts change.
        key=$(cat "$deb" "$here/build-image.sh" "$here"/firstboot/* | sha256sum | cut -c1-16)
        if [ ! -e "$lab/$role.raw.initrd" ] || [ "$(cat "$lab/$role.key" 2>/dev/null)" != "$key" ]; then
            mkdir -p "$target/images"
            rm -f "$lab/$role.raw.initrd"
            KEEL_IMAGE_CACHE=$target/images/base flock "$target/images/.lock" \
                "$here/build-image.sh" "$role" "$lab/$role.raw" "$deb" 2>"$lab/$role-build.log" ||
                { tail -n 20 "$lab/$role-build.log" >&2; die "image $role: see $lab/$role-build.log"; }
            echo "$key" >"$lab/$role.key"
        fi
    done

    say "network: namespace $ns (bridge br0, you are 198.18.0.1), $api_ns (API server, $api)"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add br0 type bridge mcast_snooping 0 forward_delay 0
    ip -n "$ns" addr add 198.18.0.1/24 dev br0
    ip -n "$ns" link set br0 up
    ip netns add "$api_ns"
    ip -n "$api_ns" link set lo up
    ip -n "$ns" link add api type veth peer name eth0 netns "$api_ns"
    ip -n "$ns" link set api master br0 up
    ip -n "$api_ns" addr add "$api/24" dev eth0
    ip -n "$api_ns" link set eth0 up
    # Nodes reach the API server only through the VIP (isolated bridge ports do not talk to each
    # other), as in a cluster whose control plane sits behind its load balancers.
    in_ns bridge link set dev api isolated on

    mkdir -p "$lab/api"
    ip netns exec "$api_ns" setsid "$bins/keel-test-apiserver" --listen "$api:6443" --dir "$lab/api" \
        --san "$api" --san "$vip" >"$lab/api/apiserver.log" 2>&1 </dev/null &
    echo $! >"$lab/api/pid"
    wait_for 30 test -s "$lab/api/ca-pin" || die "the API test server did not start: $lab/api/apiserver.log"
    token=$(cat "$lab/api/bootstrap-token")
    pin=$(cat "$lab/api/ca-pin")

    for vm in $vms; do
        d=$lab/$vm
        rm -rf "$d"
        mkdir -p "$d/seed"
        guest_script >"$d/seed/run.sh"
        case $vm in
        lb*)
            prio=150
            [ "$vm" = lb1 ] || prio=100
            printf 'HOSTNAME=%s\nADDRESS=%s/24\n' "$vm" "$(addr_of "$vm")" >"$d/seed/keel.env"
            lb_yaml "$vm" "$prio" >"$d/seed/lb.yaml"
            # A lab shortcut: keel-lb uses the admin identity (configs/kubernetes/keel-lb-rbac.yaml
            # is the least-privilege one for a real cluster).
            cp "$lab/api/admin.kubeconfig" "$d/seed/lb-workload.kubeconfig"
            disk=$lab/lb.raw
            ;;
        node*)
            if [ "$vm" = node1 ]; then
                pool="POOL=general\nLABELS=topology.kubernetes.io/zone=rack-1"
            else
                pool="POOL=gpu\nLABELS=topology.kubernetes.io/zone=rack-2 example.com/gpu=true\nTAINTS=example.com/gpu=true:NoSchedule"
            fi
            printf "HOSTNAME=%s\nADDRESS=%s/24\nAPI_SERVER=https://%s:6443\nTOKEN=%s\nCA_PINS=%s\n$pool\nDRAIN=shutdown\n" \
                "$vm" "$(addr_of "$vm")" "$vip" "$token" "$pin" >"$d/seed/keel.env"
            disk=$lab/node.raw
            ;;
        esac
        qemu-img create -q -f qcow2 -F raw -b "$disk" "$d/disk.qcow2"
        "$root/images/linux/make-seed.sh" "$d/seed.img" "$d/seed"/* >/dev/null
        ip -n "$ns" tuntap add "tap-$vm" mode tap
        ip -n "$ns" link set "tap-$vm" master br0 up
        case $vm in node*) in_ns bridge link set dev "tap-$vm" isolated on ;; esac
        qemu_start "$vm"
        say "$vm booting ($(addr_of "$vm")); console: $d/console.log"
    done

    say "waiting for the VIP to answer on 6443 (under TCG the first boot takes minutes)"
    wait_for 900 in_ns curl -sk --max-time 2 "https://$vip:6443/version" ||
        die "no answer on $vip:6443; consoles: $lab/lb*/console.log"
    say "waiting for both nodes to join"
    wait_for 900 sh -c "[ \$(ip netns exec $ns kubectl --kubeconfig '$lab/api/admin.kubeconfig' get nodes -o name | wc -l) -ge 2 ]" ||
        die "the nodes did not join; consoles: $lab/node*/console.log"

    say "a Service of type LoadBalancer (keel-lb gives it an address and serves it)"
    cat >"$lab/web-service.yaml" <<EOF
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: LoadBalancer
  selector: { app: web }
  ports:
    - { name: http, port: 80, targetPort: 30080, nodePort: 30080, protocol: TCP }
EOF
    kc apply -f "$lab/web-service.yaml" >&2
    wait_for 300 sh -c "ip netns exec $ns kubectl --kubeconfig '$lab/api/admin.kubeconfig' get service web -o jsonpath='{.status.loadBalancer.ingress[0].ip}' | grep -q ." ||
        die "the Service got no address; keel-lb's status: lab.sh sh curl http://198.18.0.11:9101/services"
    svc=$(kc get service web -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
    wait_for 120 in_ns curl -sf --max-time 2 "http://$svc/" || say "the Service's address $svc does not answer yet"
    echo "$svc" >"$lab/service-ip"
    summary
}

summary() {
    svc=$(cat "$lab/service-ip" 2>/dev/null || echo '?')
    me=$0
    cat <<EOF

The Keel lab is up (files in $lab).
  VIP of the API server   https://$vip:6443   (keel-lb on lb1 198.18.0.11 prio 150, lb2 198.18.0.12 prio 100)
  Service web (LoadBalancer)  http://$svc/   -> node1/node2 nodePort 30080
  Run things on the lab's segment with:  $me sh CMD   e.g.
    $me sh curl http://$svc/
    $me sh curl http://198.18.0.11:9101/            keel-lb status page of lb1 (lb2: .12); /metrics, /services
  From a browser on this machine:
    socat TCP-LISTEN:9101,bind=127.0.0.1,fork,reuseaddr EXEC:"ip netns exec $ns socat STDIO TCP\\:198.18.0.11\\:9101"
    then http://127.0.0.1:9101/
  kubectl (admin):  $me kubectl get nodes -o wide   (or: ip netns exec $ns kubectl --kubeconfig $lab/api/admin.kubeconfig ...)
    $me kubectl get nodes -L keel.io/pool -o custom-columns=NAME:.metadata.name,POOL:.metadata.labels.keel\\.io/pool,TAINTS:.spec.taints
    $me kubectl get service web;  $me kubectl get events
  A shell in a VM:  $me console lb1|lb2|node1|node2     (root; ctrl-] leaves)
    keel-lb status;  keel-agent status;  journalctl -u keel-lb -u keel-agent

Fail things over:
  $me poweroff lb1      pull lb1's plug: lb2 takes the VIP and the Service address (about 3 s);
                        nodes keep renewing their Leases through lb2:
                        $me kubectl get lease -n kube-node-lease -w
  $me start lb1         boot it again: it preempts (priority 150) and takes the VIPs back
  $me console lb1, then  systemctl stop keel-lb   a planned handover instead
  $me console node1, then  systemctl reboot       the node comes back without joining again;
                        poweroff node1 and the web Service keeps answering from node2
  $me down              remove everything
EOF
}

down() {
    [ "$(id -u)" = 0 ] || die "needs root"
    for vm in $vms; do qemu_stop "$vm"; done
    if [ -f "$lab/api/pid" ]; then
        kill "$(cat "$lab/api/pid")" 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
    ip netns del "$api_ns" 2>/dev/null || true
    # The images stay for the next lab (and the tests' debootstrap trees in target/images/base).
    for vm in $vms; do rm -rf "${lab:?}/$vm"; done
    rm -rf "${lab:?}/api" "$lab/web-service.yaml" "$lab/service-ip"
    say "down (images kept in $lab: rm -rf $lab to remove them too)"
}

status() {
    ip netns list | grep -qw "$ns" || { say "not up"; return 0; }
    for vm in $vms; do
        if [ -f "$lab/$vm/qemu.pid" ] && kill -0 "$(cat "$lab/$vm/qemu.pid")" 2>/dev/null; then
            echo "$vm $(addr_of "$vm") running"
        else
            echo "$vm $(addr_of "$vm") off"
        fi
    done
    kc get nodes -L keel.io/pool 2>&1 || true
    kc get service web 2>&1 || true
}

case ${1:-up} in
up) up ;;
down) down ;;
status) status ;;
summary) summary ;;
kubectl) shift; kc "$@" ;;
sh) shift; in_ns "$@" ;;
console)
    [ -n "${2:-}" ] || die "console VM"
    echo "lab: $2's root shell (ctrl-] leaves)" >&2
    socat -,raw,echo=0,escape=0x1d "UNIX-CONNECT:$lab/$2/tty.sock"
    ;;
poweroff) [ -n "${2:-}" ] || die "poweroff VM"; qemu_stop "$2"; say "$2 powered off" ;;
start) [ -n "${2:-}" ] || die "start VM"; qemu_start "$2"; say "$2 booting" ;;
*) die "usage: lab.sh [up] | down | status | kubectl ARGS | sh CMD | console VM | poweroff VM | start VM" ;;
esac
