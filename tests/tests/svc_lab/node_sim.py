#!/usr/bin/env python3
"""A stand-in for kubelet + kube-proxy on one node host of the Services tests.

node_sim.py NAME STATE_DIR --tcp PORT... --udp PORT... --hc PORT...
  TCP nodePorts answer "NAME\n" and close; UDP nodePorts answer each datagram with "NAME";
  kube-proxy's healthz on 10256 answers 200; each --hc port is a Service's healthCheckNodePort and
  answers like kube-proxy: 200 with {"localEndpoints": N} while STATE_DIR/hc-PORT holds N > 0, else 503.
"""
import argparse
import http.server
import json
import os
import socket
import socketserver
import threading

p = argparse.ArgumentParser()
p.add_argument("name")
p.add_argument("state")
p.add_argument("--tcp", type=int, nargs="*", default=[])
p.add_argument("--udp", type=int, nargs="*", default=[])
p.add_argument("--hc", type=int, nargs="*", default=[])
a = p.parse_args()


class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall((a.name + "\n").encode())


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(a.name.encode(), self.client_address)


class Srv(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    address_family = socket.AF_INET6


class USrv(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True
    address_family = socket.AF_INET6


def health_handler(port):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if port == 10256:
                code, body = 200, {"lastUpdated": "", "currentTime": ""}
            else:
                try:
                    n = int(open(os.path.join(a.state, "hc-%d" % port)).read().strip() or "0")
                except (OSError, ValueError):
                    n = 0
                code = 200 if n > 0 else 503
                body = {"service": {"namespace": "", "name": ""}, "localEndpoints": n}
            out = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    return H


servers = []
for port in a.tcp:
    servers.append(Srv(("::", port), Tcp))
for port in a.udp:
    servers.append(USrv(("::", port), Udp))
class HSrv(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


for port in [10256] + a.hc:
    servers.append(HSrv(("::", port), health_handler(port)))
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
