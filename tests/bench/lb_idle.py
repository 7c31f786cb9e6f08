#!/usr/bin/env python3
"""Opens N idle TCP connections to HOST:PORT, prints "ready <n>" once they are all established,
then holds them until stdin closes or it is killed. Used by tests/bench/lb.sh for the RSS figure."""
import selectors
import socket
import sys
import time

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sel = selectors.DefaultSelector()
socks = []
pending = 0
batch = 500
deadline = time.time() + 60
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect_ex((host, port))
    sel.register(s, selectors.EVENT_WRITE)
    socks.append(s)
    pending += 1
    # Do not overrun the listen backlog: wait for each batch to connect.
    if pending >= batch or i == n - 1:
        while pending and time.time() < deadline:
            for key, _ in sel.select(timeout=1):
                sel.unregister(key.fileobj)
                pending -= 1
ok = sum(1 for s in socks if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
print(f"ready {ok}", flush=True)
try:
    sys.stdin.read()
except KeyboardInterrupt:
    pass
