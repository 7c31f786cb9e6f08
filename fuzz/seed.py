#!/usr/bin/env python3
"""Writes the fuzzers' seed inputs into a folder (default fuzz/seeds/, not committed) from the real
inputs the repository already holds: the Keepalived frames captured in lb/vrrp/src/packet.rs, the
example configs and the YAML in docs/, the NPD config in the agent's tests, the kernel log fixture,
and a kubeconfig / cluster-info pair with a real certificate made by openssl. tests/bench/fuzz.sh
merges them into fuzz/corpus/<target>/ before fuzzing (`cargo fuzz cmin` then keeps what adds
coverage).

    fuzz/seed.py [out-dir]
"""

import base64
import hashlib
import hmac
import os
import re
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fuzz", "seeds")
# The token tests/fuzz_bodies/src/join.rs verifies with.
TOKEN_ID, TOKEN_SECRET = "abcdef", "0123456789abcdef"


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def v3(src, dst, vrid, prio, interval, addrs):
    six = len(src) == 16
    body = bytes([0x31, vrid, prio, len(addrs)]) + struct.pack("!H", interval & 0x0FFF) + b"\0\0"
    body += b"".join(addrs)
    if six:
        pseudo = src + dst + struct.pack("!I", len(body)) + b"\0\0\0\x70"
    else:
        pseudo = src + dst + b"\0\x70" + struct.pack("!H", len(body))
    s = csum(pseudo + body)
    return body[:6] + struct.pack("!H", s) + body[8:]


def v2(vrid, prio, interval, auth_type, auth, addrs):
    body = bytes([0x21, vrid, prio, len(addrs), auth_type, interval]) + b"\0\0" + b"".join(addrs)
    body += auth.ljust(8, b"\0")[:8]
    return body[:6] + struct.pack("!H", csum(body)) + body[8:]


def ipv4(src, dst, payload):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 1, 0, 255, 112, 0, src, dst)
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload


def vrrp():
    consts = dict(re.findall(r'const (KA\w*): &str = "([0-9a-f]+)"', read("lb/vrrp/src/packet.rs")))
    for name, hexs in consts.items():
        frame = bytes.fromhex(hexs)
        ethertype = frame[12:14]
        if ethertype == b"\x08\x00":
            for flag in (0, 1):
                put("vrrp_ipv4", f"{name.lower()}-{flag}", bytes([flag]) + frame[14:])
        elif ethertype == b"\x86\xdd" and frame[14 + 6] == 112:
            ip6 = frame[14:]
            put("vrrp_ipv6", name.lower(), b"\0" + ip6[8:24] + ip6[24:40] + ip6[40:])
    a4 = lambda *o: bytes(o)
    s4, d4 = a4(198, 18, 1, 11), a4(224, 0, 0, 18)
    made = {
        "v3-three-vips": v3(s4, d4, 51, 200, 100, [a4(198, 18, 1, 100 + i) for i in range(3)]),
        "v3-no-vips": v3(s4, d4, 1, 100, 4095, []),
        "v3-prio0": v3(s4, d4, 255, 0, 5, [a4(198, 18, 1, 100)]),
        "v2-pass-two-vips": v2(51, 150, 1, 1, b"42", [a4(198, 18, 1, 100), a4(198, 18, 1, 101)]),
        "v2-none": v2(7, 255, 3, 0, b"", []),
    }
    for name, payload in made.items():
        put("vrrp_ipv4", name, b"\0" + ipv4(s4, d4, payload))
    s6 = bytes.fromhex("fe800000000000000000000000000011")
    d6 = bytes.fromhex("ff020000000000000000000000000012")
    vip6 = lambda i: bytes.fromhex("20010db8000000000000000000000000")[:15] + bytes([i])
    for name, payload in {
        "v3-two-vips": v3(s6, d6, 52, 200, 100, [vip6(1), vip6(2)]),
        "v3-no-vips": v3(s6, d6, 52, 100, 1, []),
    }.items():
        put("vrrp_ipv6", name, b"\0" + s6 + d6 + payload)
    put("vrrp_ipv6", "v2-over-ipv6", b"\x01" + s6 + d6 + v2(1, 100, 1, 0, b"", []))


def proxy():
    import ipaddress

    def b(ip):
        return ipaddress.ip_address(ip).packed.ljust(16, b"\0")

    for name, fam, src, dst, sp, dp in [
        ("tcp4", 0, "192.0.2.1", "198.51.100.7", 51000, 443),
        ("tcp6", 3, "2001:db8::1", "2001:db8::2", 1000, 443),
        ("mixed", 2, "192.0.2.1", "2001:db8::2", 65535, 0),
    ]:
        put("proxy_v2", name, bytes([fam]) + b(src) + b(dst) + struct.pack("!HH", sp, dp))


def configs():
    docs = [read(p) for p in ("docs/lb-config.md", "docs/agent-config.md", "README.md")]
    for f in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if f.endswith(".yaml"):
            text = read(f"configs/{f}")
            put("lb_config" if f.startswith("lb-") else "agent_config", f, text)
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", "\n".join(docs), re.S)):
        target = "agent_config" if re.search(r"^(cluster|node|kubelet|health):", block, re.M) else "lb_config"
        put(target, f"doc-{i}.yaml", block)
    npd = re.search(r'const NPD_NTP: &str = r#"(.*?)"#;', read("agent/src/config/npd.rs"), re.S)
    put("npd_config", "ntp.json", npd.group(1))
    for d in ("30s", "1m30s", "1.5h", "500ms", "0", "2h45m3.5s"):
        put("npd_config", f"duration-{d}", d)


def certs():
    """A CA and a node certificate made by openssl (PEM text)."""
    with tempfile.TemporaryDirectory() as t:
        run = lambda *a: subprocess.run(a, cwd=t, check=True, capture_output=True)
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=kubernetes")
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "node.key", "-out", "node.csr", "-subj", "/O=system:nodes/CN=system:node:node-1")
        run("openssl", "x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.crt", "-days", "365")
        rd = lambda n: open(os.path.join(t, n)).read()
        return rd("ca.crt"), rd("node.crt"), rd("node.key")


def join():
    ca, crt, key = certs()
    b64 = lambda s: base64.b64encode(s.encode()).decode()
    # The shape credentials::render_kubeconfig writes (serde_yaml of its JSON).
    node = (
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: " + b64(ca)
        + "\n    server: https://198.18.0.10:6443\n  name: default\ncontexts:\n- context:\n"
        "    cluster: default\n    user: system:node:node-1\n  name: default\n"
        "current-context: default\nkind: Config\nusers:\n- name: system:node:node-1\n  user:\n"
        "    client-certificate-data: " + b64(crt) + "\n    client-key-data: " + b64(key) + "\n"
    )
    put("kubeconfig", "node.kubeconfig", node)
    # kubeadm's cluster-info kubeconfig (kube-public/cluster-info, key "kubeconfig").
    info = (
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: " + b64(ca)
        + "\n    server: https://198.18.0.10:6443\n  name: \"\"\ncontexts: null\n"
        "current-context: \"\"\nkind: Config\npreferences: {}\nusers: null\n"
    )
    u = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    header = u(('{"alg":"HS256","kid":"%s"}' % TOKEN_ID).encode())
    mac = hmac.new(TOKEN_SECRET.encode(), (header + "." + u(info.encode())).encode(), hashlib.sha256)
    jws = header + ".." + u(mac.digest())
    put("discovery", "signed", jws + "\n" + info)
    put("discovery", "wrong-signature", jws[:-4] + "AAAA\n" + info)
    put("discovery", "two-cas", jws + "\n" + info.replace(b64(ca), b64(crt + ca)))


def health():
    put("kernel_log", "kmsg-problems.txt", read("agent/src/health_loop/fixtures/kmsg-problems.txt"))
    for name, max_len, out in [
        ("ntp-down", 80, b"NTP service is not running\n"),
        ("multiline", 10, b"\n\n  first line is long enough to be cut  \nsecond\n"),
        ("binary", 255, bytes(range(256))),
        ("crlf", 80, "température élevée\r\nok\r\n".encode()),
    ]:
        put("plugin_output", name, bytes([max_len]) + out)


vrrp()
proxy()
configs()
join()
health()
for t in sorted(os.listdir(OUT)):
    print(f"{t}: {len(os.listdir(os.path.join(OUT, t)))} seeds")
