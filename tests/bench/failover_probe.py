#!/usr/bin/env python3
"""Client side of tests/bench/failover.sh: connect to HOST:PORT every INTERVAL seconds for
DURATION seconds (each attempt: connect with a CONNECT_TIMEOUT timeout, 0.1 s unless given, read
"ok"), then print `attempts failures longest_outage_ms`. The outage is the time from a failed
attempt to the next successful one; its resolution is about INTERVAL + CONNECT_TIMEOUT."""
import socket
import sys
import time

host, port, interval, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
connect_timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 0.1
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
start = time.monotonic()
samples = []
while time.monotonic() - start < duration:
    t = time.monotonic() - start
    ok = False
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(connect_timeout)
        s.connect((host, port))
        s.settimeout(1.0)
        ok = s.recv(16).startswith(b"ok")
        s.close()
    except OSError:
        ok = False
    samples.append((t, ok))
    nxt = t + interval
    now = time.monotonic() - start
    if nxt > now:
        time.sleep(nxt - now)
longest, first_fail = 0.0, None
for t, ok in samples:
    if not ok and first_fail is None:
        first_fail = t
    elif ok and first_fail is not None:
        longest = max(longest, t - first_fail)
        first_fail = None
if first_fail is not None:
    longest = max(longest, samples[-1][0] - first_fail)
print(len(samples), sum(1 for _, ok in samples if not ok), round(longest * 1000))
