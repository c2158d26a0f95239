#!/usr/bin/env python3
"""Opens N keep-alive TLS connections to the proxy, sends one request on each
and leaves them idle, then reports the process' resident memory (VmRSS)
before and with them open. Bounded: closes everything and exits."""
import argparse, socket, ssl, time

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--ca", required=True)
ap.add_argument("--count", type=int, default=1000)
ap.add_argument("--pid", type=int, required=True)
ap.add_argument("--key", required=True)
a = ap.parse_args()

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.count + 256)), hard))
ctx = ssl.create_default_context(cafile=a.ca)
ctx.set_alpn_protocols(["http/1.1"])
before = rss_kib(a.pid)
conns, ok = [], 0
start = time.time()
req = (b"GET /marketdata/v1/quotes?symbols=AAPL HTTP/1.1\r\nHost: localhost\r\n"
       b"Authorization: Bearer " + a.key.encode() + b"\r\n\r\n")
for _ in range(a.count):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", a.port), timeout=5), server_hostname="localhost")
    s.sendall(req)
    data = s.recv(65536)
    ok += data.startswith(b"HTTP/1.1 200")
    conns.append(s)
opened = time.time() - start
time.sleep(0.5)
with_conns = rss_kib(a.pid)
print(f"{len(conns)} connections open ({ok} answered 200) in {opened:.1f}s; "
      f"RSS before {before/1024:.1f} MiB, with them idle {with_conns/1024:.1f} MiB "
      f"(+{(with_conns-before)/len(conns):.1f} KiB per connection)")
for s in conns:
    s.close()
