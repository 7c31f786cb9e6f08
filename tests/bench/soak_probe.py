#!/usr/bin/env python3
"""Load for tests/bench/soak.sh: THREADS clients, each connecting to HOST:PORT in a loop for DURATION
seconds (connect with a 200 ms timeout, read "ok" within 1 s, close, sleep PAUSE). Writes one line per
failed attempt to FAILS (`<unix time> <error>`) and prints `attempts failures` at the end."""
import socket
import sys
import threading
import time

host, port, threads, duration, pause, fails_path = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
lock = threading.Lock()
attempts = [0]
fails = open(fails_path, "w")
end = time.monotonic() + duration


def client():
    while time.monotonic() < end:
        err = None
        try:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(0.2)
            s.connect((host, port))
            s.settimeout(1.0)
            if not s.recv(16).startswith(b"ok"):
                err = "short-read"
            s.close()
        except OSError as e:
            err = type(e).__name__
        with lock:
            attempts[0] += 1
            if err:
                fails.write(f"{time.time():.3f} {err}\n")
        time.sleep(pause)


ts = [threading.Thread(target=client) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
fails.close()
print(attempts[0], sum(1 for _ in open(fails_path)))
