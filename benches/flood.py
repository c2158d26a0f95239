#!/usr/bin/env python3
"""Flood fairness: does a flood from one address at 10x its limit cost a
legitimate client on another address its throughput?

  python3 benches/flood.py            # LIMIT=100 (req/s per address) DURATION=20

Starts `portcullis sim` and `portcullis run` (release build) on 127.0.0.1.
The legitimate client (Python, one keep-alive TLS connection bound to
127.0.0.2, its own caller key) sends LEGIT req/s (default LIMIT/2) for
DURATION seconds, once alone and once while oha floods from 127.0.0.1 at
10 x LIMIT req/s with another caller's key. Prints the legitimate client's
completed requests per second, its failures and latency, and what the
flood got (200 vs 429). Every phase is bounded; everything is stopped on exit.
Needs oha (cargo install oha --locked).
"""
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time

LIMIT = int(os.environ.get("LIMIT", "100"))
LEGIT = int(os.environ.get("LEGIT", str(LIMIT // 2)))
DURATION = int(os.environ.get("DURATION", "20"))
P_PROXY, P_SIM, P_ADMIN = 18543, 18544, 19564
QUOTES = "/marketdata/v1/quotes?symbols=AAPL"
BIN = "target/release/portcullis"


def key_pair():
    out = subprocess.run([BIN, "key", "generate"], capture_output=True, text=True, check=True).stdout
    fields = dict(l.split(":", 1) for l in out.splitlines() if ":" in l)
    return fields["key"].strip(), fields["hash"].strip()


def wait_for(pred, what, seconds=20):
    end = time.time() + seconds
    while time.time() < end:
        if pred():
            return
        time.sleep(0.1)
    sys.exit(f"{what} did not start")


def legit_client(ca, key, rate, seconds):
    """Open-loop at `rate` req/s on one connection from 127.0.0.2."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", P_PROXY, context=ctx,
                                       source_address=("127.0.0.2", 0), timeout=10)
    lat, statuses = [], {}
    start = time.time()
    n = 0
    while True:
        due = start + n / rate
        now = time.time()
        if due - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        t0 = time.time()
        try:
            conn.request("GET", QUOTES, headers={"Authorization": f"Bearer {key}"})
            r = conn.getresponse()
            r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
        except Exception as e:  # a reset counts as a failure; reconnect
            statuses[type(e).__name__] = statuses.get(type(e).__name__, 0) + 1
            conn.close()
        lat.append(time.time() - t0)
        n += 1
    elapsed = time.time() - start
    lat.sort()
    ok = statuses.get(200, 0)
    return {
        "sent": n, "ok": ok, "ok_per_s": ok / elapsed, "statuses": statuses,
        "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1],
    }


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if not shutil.which("oha"):
        sys.exit("missing oha: cargo install oha --locked")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "portcullis"], check=True)
    work = tempfile.mkdtemp()
    procs = []
    try:
        sim = subprocess.Popen([BIN, "sim", "--dir", f"{work}/sim", "--listen", f"127.0.0.1:{P_SIM}"],
                               stdout=subprocess.DEVNULL, stderr=open(f"{work}/sim.log", "w"))
        procs.append(sim)
        wait_for(lambda: os.path.exists(f"{work}/sim/access-token")
                 and os.path.getsize(f"{work}/sim/access-token") > 0, "the simulator")
        legit_key, legit_hash = key_pair()
        flood_key, flood_hash = key_pair()
        with open(f"{work}/proxy.yaml", "w") as f:
            f.write(f"""listen:
  - address: 127.0.0.1:{P_PROXY}
    tls: {{ cert_file: {work}/sim/sim-cert.pem, key_file: {work}/sim/sim-key.pem }}
admin: {{ address: 127.0.0.1:{P_ADMIN} }}
upstream:
  base_url: https://127.0.0.1:{P_SIM}
  extra_ca_file: {work}/sim/ca.pem
  access_token: file:{work}/sim/access-token
callers:
  - {{ id: legit, role: Viewer, key_hashes: ["{legit_hash}"] }}
  - {{ id: flood, role: Viewer, key_hashes: ["{flood_hash}"] }}
rate_limits:
  per_ip: {{ rate: {LIMIT}/s, burst: {LIMIT} }}
  per_caller: null
  groups: {{}}
  upstream: null
logging: {{ format: json, level: warn }}
""")
        proxy = subprocess.Popen([BIN, "run", "--config", f"{work}/proxy.yaml"],
                                 stdout=subprocess.DEVNULL, stderr=open(f"{work}/proxy.log", "w"))
        procs.append(proxy)

        def ready():
            try:
                c = http.client.HTTPConnection("127.0.0.1", P_ADMIN, timeout=1)
                c.request("GET", "/readyz")
                return c.getresponse().status == 200
            except OSError:
                return False
        wait_for(ready, "the proxy")
        ca = f"{work}/sim/ca.pem"
        print(f"per-address limit {LIMIT}/s; legitimate client {LEGIT}/s from 127.0.0.2 for {DURATION}s")
        alone = legit_client(ca, legit_key, LEGIT, DURATION)
        print(f"alone:       {alone['ok_per_s']:.1f} ok/s  statuses {alone['statuses']}  "
              f"p50 {alone['p50_ms']:.2f} ms  p99 {alone['p99_ms']:.2f} ms")
        flood_rate = 10 * LIMIT
        oha = subprocess.Popen(
            ["oha", "--no-tui", "--output-format", "json", "-z", f"{DURATION + 2}s", "-q", str(flood_rate),
             "-c", "16", "--insecure", "-H", f"Authorization: Bearer {flood_key}",
             f"https://127.0.0.1:{P_PROXY}{QUOTES}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(oha)
        time.sleep(1)
        during = legit_client(ca, legit_key, LEGIT, DURATION)
        out, _ = oha.communicate(timeout=DURATION + 30)
        flood = json.loads(out) if out.strip().startswith("{") else {}
        codes = flood.get("statusCodeDistribution", {})
        print(f"under flood: {during['ok_per_s']:.1f} ok/s  statuses {during['statuses']}  "
              f"p50 {during['p50_ms']:.2f} ms  p99 {during['p99_ms']:.2f} ms")
        print(f"flood ({flood_rate}/s from 127.0.0.1): status codes {codes}, "
              f"{flood.get('summary', {}).get('requestsPerSec', 0):.0f} req/s answered")
        ratio = during["ok_per_s"] / alone["ok_per_s"] if alone["ok_per_s"] else 0
        print(f"legitimate throughput kept: {100 * ratio:.1f}% (target >= 95%)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
