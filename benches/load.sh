#!/usr/bin/env bash
# Loopback load test: direct to the simulator vs through portcullis vs through
# nginx proxy_pass (the yardstick), at a fixed rate and at max throughput, plus
# portcullis' resident memory with 1,000 idle keep-alive connections.
#
#   benches/load.sh                      # RATE=1000 DURATION=20s CONNS=32 MAXCONNS=64
#
# Needs: oha (cargo install oha --locked), nginx (apt-get install nginx-light),
# curl, python3. Installs neither; says what is missing. Everything runs on
# 127.0.0.1 and every phase is bounded by DURATION. Prints a summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
DURATION=${DURATION:-20s}
CONNS=${CONNS:-32}
MAXCONNS=${MAXCONNS:-64}
MAXDURATION=${MAXDURATION:-10s}
ROUNDS=${ROUNDS:-3}
IDLE=${IDLE:-1000}
SIM_THREADS=${SIM_THREADS:-0}
P_PROXY=18443 P_SIM=18444 P_ADMIN=19464 P_NGINX=18445 P_PROXY_H1=18446 P_ADMIN_H1=19465
P_PROXY_1T=18447 P_ADMIN_1T=19466 P_NGINX_AUTO=18448

for tool in oha nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (see the header of this script)" >&2; exit 1; }
done
cargo build --release --quiet --bin portcullis
work=$(mktemp -d)
cleanup() {
  for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  [ -n "${sim_pid:-}" ] && kill "$sim_pid" 2>/dev/null || true
  for n in nginx nginx_auto; do [ -f "$work/$n.pid" ] && kill "$(cat "$work/$n.pid")" 2>/dev/null || true; done
  sleep 0.5; rm -rf "$work"
}
trap cleanup EXIT

# The simulator and the proxy run as separate processes (as nginx does), so
# each is measured on its own. Request logs go to files, as in production
# (nginx keeps its access log too).
target/release/portcullis sim --worker-threads "$SIM_THREADS" --dir "$work/sim" --listen 127.0.0.1:$P_SIM >"$work/sim.out" 2>"$work/sim.log" &
sim_pid=$!
for _ in $(seq 100); do [ -s "$work/sim/access-token" ] && break; sleep 0.1; done
[ -s "$work/sim/access-token" ] || { echo "simulator did not start" >&2; cat "$work/sim.log" >&2; exit 1; }
KEY=$(target/release/portcullis key generate 2>/dev/null)
CALLER_KEY=$(echo "$KEY" | sed -n 's/^key:  //p')
CALLER_HASH=$(echo "$KEY" | sed -n 's/^hash: //p')
start_proxy() { # name port admin-port http2 worker-threads
  cat >"$work/$1.yaml" <<YAML
listen:
  - address: 127.0.0.1:$2
    tls: { cert_file: $work/sim/sim-cert.pem, key_file: $work/sim/sim-key.pem }
admin: { address: 127.0.0.1:$3 }
upstream:
  base_url: https://127.0.0.1:$P_SIM
  extra_ca_file: $work/sim/ca.pem
  access_token: file:$work/sim/access-token
  http2: $4
runtime: { worker_threads: ${5:-0} }
callers:
  - { id: load, role: Viewer, key_hashes: ["$CALLER_HASH"] }
logging: { format: json, level: info }
# One caller from one address at tens of thousands of requests/s: the
# limits would measure 429s, not the proxy (benches/limits.rs measures them).
rate_limits: { per_ip: null, auth_failures: null, per_caller: null, groups: {}, per_account_orders: null, upstream: null }
# The idle-connection phase opens IDLE connections from one address.
limits: { max_connections_per_ip: 100000 }
YAML
  target/release/portcullis run --config "$work/$1.yaml" >"$work/$1.out" 2>"$work/$1.log" &
  echo $! >"$work/$1.pid"
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$3/readyz >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "proxy $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
}
# Default configuration (HTTP/2 to the upstream), and the same with an HTTP/1.1
# upstream pool — the mode the nginx yardstick uses (proxy_http_version 1.1).
start_proxy portcullis $P_PROXY $P_ADMIN true
start_proxy portcullis_h1 $P_PROXY_H1 $P_ADMIN_H1 false
# One thread serving everything (runtime.worker_threads: 1), the match for
# nginx with one worker process.
start_proxy portcullis_1t $P_PROXY_1T $P_ADMIN_1T true 1
proxy_pid=$(cat "$work/portcullis.pid")

# Two nginx yardsticks: one worker process (nginx's built-in default), and
# one per core (`auto`, the default of Debian's and the official image's
# nginx.conf). Each is compared with the portcullis runtime that matches it.
start_nginx() { # name workers port
  mkdir -p "$work/$1"
  cat >"$work/$1.conf" <<NGINX
worker_processes $2;
pid $work/$1.pid;
error_log $work/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log $work/$1/access.log;
  upstream sim { server 127.0.0.1:$P_SIM; keepalive 64; }
  server {
    listen 127.0.0.1:$3 ssl http2;
    ssl_certificate $work/sim/sim-cert.pem;
    ssl_certificate_key $work/sim/sim-key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass https://sim;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $work/sim/ca.pem;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
}
NGINX
  nginx -c "$work/$1.conf" -p "$work/$1" 2>/dev/null || nginx -c "$work/$1.conf" -p "$work/$1"
}
start_nginx nginx 1 $P_NGINX
start_nginx nginx_auto auto $P_NGINX_AUTO

TOKEN=$(cat "$work/sim/access-token")
PATHQ="/marketdata/v1/quotes?symbols=AAPL&fields=quote"
CA="$work/sim/ca.pem"

# CPU time (ns) consumed so far by processes: the sum of every thread's
# run time from /proc/PID/task/*/schedstat. Per request it is a steadier
# measure of efficiency than req/s on a shared machine.
cpu_ns() {
  local total=0 f
  for pid in "$@"; do
    for f in /proc/"$pid"/task/*/schedstat; do
      [ -r "$f" ] && total=$((total + $(cut -d' ' -f1 "$f")))
    done
  done
  echo "$total"
}
nginx_pids() { local m; m=$(cat "$work/${1:-nginx}.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')"; }
cpu_per_request() { # name pids... ; runs the fixed-rate phase and reports CPU µs/request
  local name=$1; shift
  local before after sim_before sim_after
  before=$(cpu_ns "$@")
  sim_before=$(cpu_ns "$sim_pid")
  run "$name" "${FIXED_ARGS[@]}"
  after=$(cpu_ns "$@")
  sim_after=$(cpu_ns "$sim_pid")
  python3 -c "import json,sys; d=json.load(open('$work/$name.json')); n=max(sum(d.get('statusCodeDistribution',{}).values()),1); c=($after-$before)/1000/n; s=($sim_after-$sim_before)/1000/n; print(f'    CPU per request: {c:.1f} µs (simulator: {s:.1f} µs)'); json.dump({'cpu_us': c, 'sim_us': s}, open('$work/$name.cpu','w'))"
}

run() { # name url key extra-args...
  local name=$1 url=$2 key=$3; shift 3
  oha --no-tui --output-format json --cacert "$CA" -H "Authorization: Bearer $key" "$@" "$url" >"$work/$name.json"
  python3 - "$work/$name.json" "$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = codes.get("200", 0); total = sum(codes.values())
print(f"{sys.argv[2]:<22} rps {s['requestsPerSec']:>9.0f}   p50 {p['p50']*1000:7.3f} ms   p99 {p['p99']*1000:7.3f} ms   200s {ok}/{total}")
json.dump({"rps": s["requestsPerSec"], "p50": p["p50"], "p99": p["p99"]}, open(sys.argv[1] + ".s", "w"))
PY
}

echo "== warm-up (2s each, discarded)"
for t in "127.0.0.1:$P_SIM $TOKEN" "localhost:$P_PROXY $CALLER_KEY" "localhost:$P_PROXY_H1 $CALLER_KEY" "localhost:$P_PROXY_1T $CALLER_KEY" "localhost:$P_NGINX $TOKEN" "localhost:$P_NGINX_AUTO $TOKEN"; do
  set -- $t
  oha --no-tui --output-format quiet --cacert "$CA" -H "Authorization: Bearer $2" -z 2s -c "$MAXCONNS" "https://$1$PATHQ" >/dev/null
done

echo "== fixed rate: $RATE req/s for $DURATION over $CONNS connections (latency corrected for coordinated omission)"
fixed() { # name url key pids...
  local name=$1 url=$2 key=$3; shift 3
  FIXED_ARGS=("$url" "$key" -z "$DURATION" -q "$RATE" -c "$CONNS" --latency-correction)
  cpu_per_request "$name" "$@"
}
fixed direct_fixed "https://127.0.0.1:$P_SIM$PATHQ" "$TOKEN" "$sim_pid"
fixed portcullis_fixed "https://localhost:$P_PROXY$PATHQ" "$CALLER_KEY" "$(cat "$work/portcullis.pid")"
fixed portcullis_h1_fixed "https://localhost:$P_PROXY_H1$PATHQ" "$CALLER_KEY" "$(cat "$work/portcullis_h1.pid")"
fixed portcullis_1t_fixed "https://localhost:$P_PROXY_1T$PATHQ" "$CALLER_KEY" "$(cat "$work/portcullis_1t.pid")"
fixed nginx_fixed "https://localhost:$P_NGINX$PATHQ" "$TOKEN" $(nginx_pids)
fixed nginx_auto_fixed "https://localhost:$P_NGINX_AUTO$PATHQ" "$TOKEN" $(nginx_pids nginx_auto)

echo "== max throughput: $MAXCONNS connections for $MAXDURATION, $ROUNDS interleaved rounds (this machine is noisy; medians are compared)"
maxrun() { # name url key pids...
  local name=$1 url=$2 key=$3; shift 3
  FIXED_ARGS=("$url" "$key" -z "$MAXDURATION" -c "$MAXCONNS")
  cpu_per_request "$name" "$@"
}
for r in $(seq "$ROUNDS"); do
  maxrun direct_max_$r "https://127.0.0.1:$P_SIM$PATHQ" "$TOKEN" "$sim_pid"
  maxrun portcullis_max_$r "https://localhost:$P_PROXY$PATHQ" "$CALLER_KEY" "$(cat "$work/portcullis.pid")"
  maxrun portcullis_h1_max_$r "https://localhost:$P_PROXY_H1$PATHQ" "$CALLER_KEY" "$(cat "$work/portcullis_h1.pid")"
  maxrun portcullis_1t_max_$r "https://localhost:$P_PROXY_1T$PATHQ" "$CALLER_KEY" "$(cat "$work/portcullis_1t.pid")"
  maxrun nginx_max_$r "https://localhost:$P_NGINX$PATHQ" "$TOKEN" $(nginx_pids)
  maxrun nginx_auto_max_$r "https://localhost:$P_NGINX_AUTO$PATHQ" "$TOKEN" $(nginx_pids nginx_auto)
done

echo "== resident memory of the proxy process with $IDLE idle keep-alive connections"
python3 benches/idle_conns.py --port $P_PROXY --ca "$CA" --count "$IDLE" --pid "$proxy_pid" --key "$CALLER_KEY"

python3 - "$work" "$ROUNDS" <<'PY'
import json, statistics, sys
w, rounds = sys.argv[1], int(sys.argv[2])
g = lambda n: json.load(open(f"{w}/{n}.json.s"))
d = g("direct_fixed")
print("== summary")
for name, label in (("portcullis", "portcullis (h2 upstream)"), ("portcullis_h1", "portcullis (h1 upstream)"),
                    ("portcullis_1t", "portcullis (one thread)"), ("nginx", "nginx (1 worker)"), ("nginx_auto", "nginx (auto workers)")):
    p = g(f"{name}_fixed")
    cpu = json.load(open(f"{w}/{name}_fixed.cpu"))["cpu_us"]
    print(f"added latency at {int(round(d['rps']))} req/s through {label:<25} p50 {(p['p50']-d['p50'])*1000:+.3f} ms, p99 {(p['p99']-d['p99'])*1000:+.3f} ms; CPU {cpu:.1f} µs/request")
med = lambda n: statistics.median(g(f"{n}_max_{r}")["rps"] for r in range(1, rounds + 1))
# Each portcullis runtime against the nginx with as many workers (the
# matched pairs), and the default runtime against one nginx worker too.
for n, label, y, ylabel in (("portcullis", "all cores, h2 upstream", "nginx_auto", "nginx auto"),
                            ("portcullis_1t", "one thread, h2 upstream", "nginx", "nginx 1 worker"),
                            ("portcullis", "all cores, h2 upstream", "nginx", "nginx 1 worker"),
                            ("portcullis_h1", "all cores, h1 upstream", "nginx", "nginx 1 worker")):
    ratios = [100 * g(f"{n}_max_{r}")["rps"] / g(f"{y}_max_{r}")["rps"] for r in range(1, rounds + 1)]
    print(f"throughput, portcullis {label} vs {ylabel}, round by round: " + ", ".join(f"{x:.0f}%" for x in ratios)
          + f" (min {min(ratios):.0f}%, median {statistics.median(ratios):.0f}%, max {max(ratios):.0f}%; "
          + f"ratio of medians {100 * med(n) / med(y):.0f}%)")
print(f"max throughput (median of {rounds}): direct {med('direct'):.0f}, nginx 1 worker {med('nginx'):.0f}, nginx auto {med('nginx_auto'):.0f}, "
      f"portcullis all cores {med('portcullis'):.0f}, one thread {med('portcullis_1t'):.0f}, h1 upstream {med('portcullis_h1'):.0f} req/s")
cpu = lambda n: statistics.median(json.load(open(f"{w}/{n}_max_{r}.cpu"))["cpu_us"] for r in range(1, rounds + 1))
print(f"CPU per request at saturation (median): simulator alone {cpu('direct'):.1f} µs, nginx 1 worker {cpu('nginx'):.1f} µs, "
      f"nginx auto {cpu('nginx_auto'):.1f} µs, portcullis all cores {cpu('portcullis'):.1f} µs, one thread {cpu('portcullis_1t'):.1f} µs, "
      f"h1 upstream {cpu('portcullis_h1'):.1f} µs")
sim = lambda n: statistics.median(json.load(open(f"{w}/{n}_max_{r}.cpu"))["sim_us"] for r in range(1, rounds + 1))
print(f"simulator CPU per request at saturation (median), called directly {sim('direct'):.1f} µs, behind nginx 1 worker {sim('nginx'):.1f} µs, "
      f"nginx auto {sim('nginx_auto'):.1f} µs, portcullis all cores {sim('portcullis'):.1f} µs, one thread {sim('portcullis_1t'):.1f} µs, "
      f"h1 upstream {sim('portcullis_h1'):.1f} µs")
PY
