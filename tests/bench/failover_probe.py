#!/usr/bin/env python3
"""Client side of tests/bench/failover.sh: start an attempt on HOST:PORT every INTERVAL seconds for
DURATION seconds (each attempt: connect with a CONNECT_TIMEOUT timeout, 0.1 s unless given, then
read "ok"), then print `attempts failures longest_outage_ms`. The outage is the time from a failed
attempt to the next successful one.

With a 6th argument `http`, an attempt sends an HTTP/1.0 GET and expects a 200, and attempts run
concurrently (one thread each, at most DURATION / INTERVAL of them), so that an attempt hanging
on a connection the failover broke does not delay the next one: the outage then resolves to about
INTERVAL + CONNECT_TIMEOUT. Without it attempts run one after another, as in the earlier runs."""
import socket
import sys
import threading
import time

host, port, interval, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
connect_timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 0.1
http = len(sys.argv) > 6 and sys.argv[6] == "http"
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
start = time.monotonic()
samples = []
lock = threading.Lock()


def attempt(t):
    ok = False
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(connect_timeout)
        s.connect((host, port))
        s.settimeout(1.0)
        if http:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            ok = b" 200 " in s.recv(64)
        else:
            ok = s.recv(16).startswith(b"ok")
        s.close()
    except OSError:
        ok = False
    with lock:
        samples.append((t, ok))


threads = []
while time.monotonic() - start < duration:
    t = time.monotonic() - start
    if http:
        th = threading.Thread(target=attempt, args=(t,))
        th.start()
        threads.append(th)
    else:
        attempt(t)
    nxt = t + interval
    now = time.monotonic() - start
    if nxt > now:
        time.sleep(nxt - now)
for th in threads:
    th.join()
samples.sort()
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
