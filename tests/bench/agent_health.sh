#!/usr/bin/env bash
# keel-agent health benchmark (issue 5 targets): a joined agent (profile `agent`) with EVERY check on,
# against keel-test-apiserver running as a separate process:
#   memory, disk + inodes (a small tmpfs), PIDs, read-only, clock (SNTP to a local responder),
#   service (pidfile stand-in), kernel log (from a file), a plugin check, an NPD plugin config, an
#   NPD system log monitor (kmsg records from a file), taint policy with the privileged credential.
# Measures: VmRSS after 60 s, idle CPU over 60 s (% of one core, /proc/<pid>/stat), and, over
# TRIALS trials each, problem -> Node condition latency (tmpfs filled; a plugin's exit code
# flipped) minus the check interval, condition -> taint latency minus the policy delay, and kernel
# log line -> Node condition for the kernel_log check and an NPD log monitor (target: 1 s).
#
#   tests/bench/agent_health.sh            # builds the agent (profile agent) and the API server (release)
#   IDLE_SECS=60 TRIALS=3 tests/bench/agent_health.sh
#   AGENT_BIN=/path/to/other/keel-agent tests/bench/agent_health.sh   # e.g. an opt-level="s" build
# Needs root (tmpfs mount). Only loopback is used.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "skipped: needs root (tmpfs mount)"; exit 0; }
IDLE_SECS=${IDLE_SECS:-60}
TRIALS=${TRIALS:-3}
INTERVAL=${INTERVAL:-5}        # disk and plugin check interval (s)
TAINT_AFTER=${TAINT_AFTER:-5}  # taint policy delay (s)
target_dir=${CARGO_TARGET_DIR:-target}
# The agent as images ship it (profile `agent`: release, built for size); the API server in release.
cargo build -q --profile agent -p keel-agent --bin keel-agent
cargo build -q --release -p keel-test-apiserver --bin keel-test-apiserver
AGENT=${AGENT_BIN:-$target_dir/agent/keel-agent}  # AGENT_BIN: compare another build
API=$target_dir/release/keel-test-apiserver

W=$(mktemp -d /tmp/keel-bench-health.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    umount "$W/fill" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
free_udp_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- the API server (separate process) ---
APIPORT=$(free_port)
"$API" --listen "127.0.0.1:$APIPORT" --dir "$W/api" >"$W/api.out" 2>"$W/api.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$W/api/admin.kubeconfig" ] && break; sleep 0.1; done
[ -s "$W/api/admin.kubeconfig" ] || { cat "$W/api.log"; exit 1; }
PIN=$(cat "$W/api/ca-pin")
python3 - "$W" <<'EOF'
import re, sys
w = sys.argv[1]
admin = open(f"{w}/api/admin.kubeconfig").read()
priv = open(f"{w}/api/privileged-token").read().strip()
out = re.sub(r"(\btoken:\s*).*", lambda m: m.group(1) + priv, admin)
assert out != admin, "no token in admin.kubeconfig"
open(f"{w}/privileged.kubeconfig", "w").write(out)
EOF

# --- what the checks look at ---
mkdir -p "$W/fill"
mount -t tmpfs -o size=8m,nr_inodes=2000 keel-bench "$W/fill"
NTPPORT=$(free_udp_port)
python3 - "$NTPPORT" >"$W/ntp.log" 2>&1 <<'EOF' &
# A minimal SNTP server (RFC 4330): stratum 1, our own clock.
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
def ntp(t):
    t += 2208988800
    return struct.pack("!II", int(t), int((t % 1) * 2**32))
while True:
    req, addr = s.recvfrom(128)
    rx = time.time()
    if len(req) < 48:
        continue
    resp = bytes([0b00_100_100, 1, 0, 0xEC]) + b"\0" * 8 + b"LOCL" + ntp(rx) + req[40:48] + ntp(rx) + ntp(time.time())
    s.sendto(resp, addr)
EOF
pids+=($!)
sleep 1000000 &
pids+=($!)
echo $! >"$W/svc.pid"
: >"$W/kmsg"
: >"$W/kmsg-npd"
printf '#!/bin/sh\nif [ -e %s/plugin-fail ]; then echo "marker says no"; exit 1; fi\necho ok\nexit 0\n' "$W" >"$W/plugin.sh"
printf '#!/bin/sh\necho ntp is up\nexit 0\n' >"$W/npd-ok.sh"
chmod +x "$W/plugin.sh" "$W/npd-ok.sh"
cat >"$W/npd.json" <<EOF
{
  "plugin": "custom",
  "pluginConfig": {"invoke_interval": "30s", "timeout": "5s", "max_output_length": 80, "concurrency": 3},
  "source": "ntp-custom-plugin-monitor",
  "conditions": [{"type": "NTPProblem", "reason": "NTPIsUp", "message": "ntp service is up"}],
  "rules": [{"type": "permanent", "condition": "NTPProblem", "reason": "NTPIsDown", "path": "$W/npd-ok.sh", "timeout": "3s"}]
}
EOF

# An NPD system log monitor (NPD's kmsg plugin format) with one permanent rule per trial: its
# conditions stay True (as NPD's), so each trial uses its own.
python3 - "$W" "$TRIALS" <<'EOF'
import json, sys
w, n = sys.argv[1], int(sys.argv[2])
json.dump({"plugin": "kmsg", "logPath": f"{w}/kmsg-npd", "lookback": "0", "bufferSize": 10,
           "source": "bench-monitor",
           "conditions": [{"type": f"BenchLog{i}", "reason": "Quiet", "message": "quiet"} for i in range(n)],
           "rules": [{"type": "permanent", "condition": f"BenchLog{i}", "reason": "Seen",
                      "pattern": f"bench trial {i} .*"} for i in range(n)]},
          open(f"{w}/npd-log.json", "w"))
EOF

MPORT=$(free_port)
cat >"$W/agent.yaml" <<EOF
cluster:
  server: https://127.0.0.1:$APIPORT
  token_file: $W/api/bootstrap-token
  ca_pins: ["$PIN"]
node:
  name: bench-health
  pool: bench
state_dir: $W/state
metrics:
  listen: 127.0.0.1:$MPORT
health:
  refresh: 5m
  checks:
    - {name: memory, kind: memory, min_available: 1%}
    - {name: scratch, kind: disk, path: $W/fill, min_free: 50%, min_free_inodes: 5%, interval: ${INTERVAL}s, timeout: 2s}
    - {name: pids, kind: pids, max_used: 90%}
    - {name: readonly, kind: readonly, paths: [/]}
    - {name: clock, kind: clock, server: "127.0.0.1:$NTPPORT", max_offset: 500ms}
    - name: runtime
      kind: service
      services: [{name: stand-in, pidfile: $W/svc.pid}]
    - name: kernel
      kind: kernel_log
      source: $W/kmsg
      condition: KernelDeadlock
      window: 2s
      patterns: [{reason: OOMKilling, regex: 'Out of memory'}]
    - {name: marker, kind: plugin, command: $W/plugin.sh, interval: ${INTERVAL}s, timeout: 2s, condition: MarkerProblem}
  npd_plugin_configs: [$W/npd.json, $W/npd-log.json]
  taints:
    - {condition: DiskSpaceLow, after: ${TAINT_AFTER}s, clear_after: 5s, key: keel.io/disk-low, effect: NoSchedule}
  privileged_kubeconfig: $W/privileged.kubeconfig
EOF
"$AGENT" check --config "$W/agent.yaml" >/dev/null
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$AGENT" run --config "$W/agent.yaml" >"$W/agent.log" 2>&1 &
AGENT_PID=$!
pids+=($AGENT_PID)

python3 - "$W" "$APIPORT" "$AGENT_PID" "$IDLE_SECS" "$TRIALS" "$INTERVAL" "$TAINT_AFTER" <<'EOF'
import json, os, re, ssl, statistics, sys, time, urllib.request
w, apiport, pid, idle, trials, interval, after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
token = re.search(r"\btoken:\s*(\S+)", open(f"{w}/api/admin.kubeconfig").read()).group(1)
ctx = ssl.create_default_context(cafile=f"{w}/api/ca.crt")
def node():
    req = urllib.request.Request(f"https://127.0.0.1:{apiport}/api/v1/nodes/bench-health",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            return json.load(r)
    except Exception:
        return None
def cond(n, kind):
    for c in (n or {}).get("status", {}).get("conditions", []) or []:
        if c["type"] == kind:
            return c["status"]
    return None
def tainted(n):
    return any(t["key"] == "keel.io/disk-low" for t in (n or {}).get("spec", {}).get("taints", []) or [])
def wait(what, pred, limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        n = node()
        if pred(n):
            return time.monotonic()
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}; agent log:\n" + open(f"{w}/agent.log").read()[-3000:])
def cpu_ticks():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])   # utime + stime (fields 14, 15)
def status_kb(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

wait("the joined Node with every check reported",
     lambda n: all(cond(n, c) == "False" for c in ["DiskSpaceLow", "MarkerProblem", "NTPProblem", "MemoryAvailableLow", "KernelDeadlock", "ReadonlyFilesystem", "PIDsExhausted", "ServiceNotRunning"]),
     120)
hz = os.sysconf("SC_CLK_TCK")
t0, c0 = time.monotonic(), cpu_ticks()
time.sleep(idle)
t1, c1 = time.monotonic(), cpu_ticks()
rss, hwm = status_kb("VmRSS"), status_kb("VmHWM")
threads = len(os.listdir(f"/proc/{pid}/task"))
print("threads:", sorted(open(f"/proc/{pid}/task/{t}/comm").read().strip() for t in os.listdir(f"/proc/{pid}/task")), "smaps_rollup:", " ".join(l.split(":")[0] + "=" + l.split()[1] for l in open(f"/proc/{pid}/smaps_rollup") if l.split(":")[0] in ("Rss", "Pss_Anon", "Pss_File", "Anonymous")), flush=True)
cpu = 100.0 * (c1 - c0) / hz / (t1 - t0)

disk_cond, disk_taint, plug_cond, klog_cond, npd_cond = [], [], [], [], []
def uptime_us():
    return int(float(open("/proc/uptime").read().split()[0]) * 1e6)
def kmsg(path, line):
    with open(path, "a") as f:
        f.write(f"3,{uptime_us()},{uptime_us()},-;{line}\n")
for i in range(trials):
    start = time.monotonic()
    os.system(f"dd if=/dev/zero of={w}/fill/blob bs=1M count=6 status=none")
    tc = wait("DiskSpaceLow=True", lambda n: cond(n, "DiskSpaceLow") == "True", 60)
    tt = wait("the policy taint", tainted, 60)
    disk_cond.append(tc - start)
    disk_taint.append(tt - tc)
    os.remove(f"{w}/fill/blob")
    wait("DiskSpaceLow=False and the taint removed", lambda n: cond(n, "DiskSpaceLow") == "False" and not tainted(n), 60)
    start = time.monotonic()
    open(f"{w}/plugin-fail", "w").close()
    tc = wait("MarkerProblem=True", lambda n: cond(n, "MarkerProblem") == "True", 60)
    plug_cond.append(tc - start)
    os.remove(f"{w}/plugin-fail")
    wait("MarkerProblem=False", lambda n: cond(n, "MarkerProblem") == "False", 60)
    start = time.monotonic()
    kmsg(f"{w}/kmsg", f"Out of memory: Killed process {1000 + i} (bench)")
    tc = wait("KernelDeadlock=True", lambda n: cond(n, "KernelDeadlock") == "True", 60)
    klog_cond.append(tc - start)
    wait("KernelDeadlock=False (2 s window)", lambda n: cond(n, "KernelDeadlock") == "False", 60)
    start = time.monotonic()
    kmsg(f"{w}/kmsg-npd", f"bench trial {i} happened")
    tc = wait(f"BenchLog{i}=True", lambda n: cond(n, f"BenchLog{i}") == "True", 60)
    npd_cond.append(tc - start)

def row(name, vals, minus, target):
    if not vals:
        return
    worst = max(vals) - minus
    ok = "yes" if worst <= target else "NO"
    print(f"| {name} | {' / '.join(f'{v:.2f}' for v in vals)} s | {worst:+.2f} s | ≤ {target:+.0f} s | {ok} |")
print()
print(f"| resource | measured | target | met |")
print(f"|---|---|---|---|")
print(f"| VmRSS after {idle} s (all checks on) | {rss/1024:.1f} MiB (VmHWM {hwm/1024:.1f} MiB, {threads} threads) | ≤ 15 MiB | {'yes' if rss <= 15*1024 else 'NO'} |")
print(f"| idle CPU over {idle} s | {cpu:.3f} % of one core | < 0.5 % | {'yes' if cpu < 0.5 else 'NO'} |")
print()
print(f"| latency ({trials} trials) | each trial | worst minus budget base | target | met |")
print(f"|---|---|---|---|---|")
row(f"tmpfs filled → DiskSpaceLow=True on the Node (interval {interval:g} s)", disk_cond, interval, 2)
row(f"flipped plugin exit → MarkerProblem=True (interval {interval:g} s)", plug_cond, interval, 2)
row(f"condition True on the Node → taint (policy delay {after:g} s)", disk_taint, after, 1)
row("kernel log line → KernelDeadlock=True (kernel_log check)", klog_cond, 0, 1)
row("kernel log line → condition True (NPD kmsg log monitor)", npd_cond, 0, 1)
EOF
echo "agent log: $(grep -c . "$W/agent.log") lines, $(grep -ci warn "$W/agent.log") warnings"
grep -i warn "$W/agent.log" | head -5 || true
