#!/usr/bin/env python3
"""Hostile traffic for tests/bench/soak.sh.

adverts SRC_ADDR VRID RATE DURATION: VRRPv3 packets to 224.0.0.18 from a host on the segment that is
no peer: a rotating mix of bad checksum, TTL 64, wrong version, truncated, unknown VRID, and
lower-priority adverts for the real VRID (each of those asks the master to heal: rate-limited). Prints
the number sent.

admin HOST PORT CONNS DURATION: holds up to CONNS idle connections to the admin port and, beside
them, requests GET /metrics in a loop. Prints `idle_opened requests ok`.

scrape HOST PORT DURATION: what Prometheus does, from another host: GET /metrics once a second.
Prints `scrapes answered`."""
import socket
import struct
import sys
import time


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def advert(src, vrid, prio, version=3, good_sum=True, vip="198.18.1.100"):
    hdr = struct.pack("!BBBBH", (version << 4) | 1, vrid, prio, 1, 100)  # 1 address, 1 s interval
    body = socket.inet_aton(vip)
    pkt = hdr + b"\0\0" + body
    pseudo = socket.inet_aton(src) + socket.inet_aton("224.0.0.18") + struct.pack("!BBH", 0, 112, len(pkt))
    c = checksum(pseudo + pkt)
    if not good_sum:
        c ^= 0x5A5A
    return hdr + struct.pack("!H", c) + body


def adverts(src, vrid, rate, duration):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    kinds = [
        ("bad_checksum", advert(src, vrid, 250, good_sum=False), 255),
        ("ttl", advert(src, vrid, 250), 64),
        ("version", advert(src, vrid, 250, version=4), 255),
        ("truncated", advert(src, vrid, 250)[:6], 255),
        ("other_vrid", advert(src, (vrid % 254) + 1, 250), 255),
        ("lower_priority", advert(src, vrid, 1), 255),
    ]
    sent, i = 0, 0
    end = time.monotonic() + duration
    gap = 1.0 / rate
    nxt = time.monotonic()
    while time.monotonic() < end:
        _, pkt, ttl = kinds[i % len(kinds)]
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        try:
            s.sendto(pkt, ("224.0.0.18", 0))
            sent += 1
        except OSError:
            pass
        i += 1
        nxt += gap
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
    print(sent)


def get_metrics(host, port):
    """1 when GET /metrics answers 200 within 2 s, else 0."""
    try:
        r = socket.create_connection((host, port), timeout=2)
        r.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r.settimeout(2)
        answered = r.recv(12).startswith(b"HTTP/1.1 200")
        r.close()
        return int(answered)
    except OSError:
        return 0


def admin(host, port, conns, duration):
    idle, opened, requests, ok = [], 0, 0, 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        # Top up the idle connections (the server cuts them after its header timeout).
        idle = [c for c in idle if c.fileno() >= 0]
        while len(idle) < conns and time.monotonic() < end:
            try:
                c = socket.create_connection((host, port), timeout=0.2)
                c.send(b"GET /metrics HTTP/1.1\r\n")  # never finished
                idle.append(c)
                opened += 1
            except OSError:
                break
        for c in list(idle):
            try:
                c.settimeout(0)
                if c.recv(1, socket.MSG_PEEK) == b"":
                    c.close()
            except BlockingIOError:
                pass
            except OSError:
                c.close()
        for _ in range(20):
            requests += 1
            ok += get_metrics(host, port)
        time.sleep(0.05)
    print(opened, requests, ok)


def scrape(host, port, duration):
    tries, ok = 0, 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        tries += 1
        ok += get_metrics(host, port)
        time.sleep(1)
    print(tries, ok)


if sys.argv[1] == "scrape":
    scrape(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
elif sys.argv[1] == "adverts":
    adverts(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
else:
    admin(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
