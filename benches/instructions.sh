#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a
# measure of the proxy's own CPU work that, unlike time on a shared 2-core
# machine, does not move from one run to the next (to ±0.1%). Use it to
# A/B a change; use benches/load.sh for throughput and latency.
#
#   benches/instructions.sh                         # the current release build
#   benches/instructions.sh old=/tmp/portcullis.old new=target/release/portcullis
#
# Each argument is LABEL=BINARY; they are measured one after another against
# one simulator (run from the first binary). For each: the proxy starts under
# callgrind with counting off, W requests warm it up (connections, pools,
# caches), then N quote requests over C keep-alive connections are counted.
# The count covers user-space instructions of every proxy thread (not the
# kernel), including the C TLS handshakes of the counted connections (about
# 10,000 instructions per request at the defaults; raise N to dilute them). `rep movs`/`rep stos` count once per iteration, so large copies
# and zeroing weigh more than their time. Set KEEP=DIR to keep the callgrind
# files (callgrind_annotate --inclusive=yes DIR/FILE).
#
# Needs valgrind (apt-get install valgrind), oha, curl. Everything runs on
# 127.0.0.1; each phase is bounded by its request count.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
W=${W:-500}
C=${C:-16}
for tool in valgrind callgrind_control oha curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (see the header of this script)" >&2; exit 1; }
done
if [ $# -eq 0 ]; then
  cargo build --release --quiet --bin portcullis
  set -- "current=target/release/portcullis"
fi
first=${1#*=}
work=$(mktemp -d)
cleanup() {
  [ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null || true
  [ -n "${sim_pid:-}" ] && kill "$sim_pid" 2>/dev/null || true
  sleep 0.3; rm -rf "$work"
}
trap cleanup EXIT

"$first" sim --dir "$work/sim" --listen 127.0.0.1:28444 >"$work/sim.out" 2>"$work/sim.log" &
sim_pid=$!
for _ in $(seq 100); do [ -s "$work/sim/access-token" ] && break; sleep 0.1; done
[ -s "$work/sim/access-token" ] || { echo "simulator did not start" >&2; cat "$work/sim.log" >&2; exit 1; }
KEY=$("$first" key generate 2>/dev/null)
CALLER_KEY=$(echo "$KEY" | sed -n 's/^key:  //p')
CALLER_HASH=$(echo "$KEY" | sed -n 's/^hash: //p')
URL="https://localhost:28500/marketdata/v1/quotes?symbols=AAPL&fields=quote"
load() { oha --no-tui --output-format quiet --cacert "$work/sim/ca.pem" -H "Authorization: Bearer $CALLER_KEY" -n "$1" -c "$C" "$URL" >/dev/null; }

echo "label                 instructions/request  (N=$N requests over C=$C connections, after W=$W)"
for arg in "$@"; do
  label=${arg%%=*} bin=${arg#*=}
  cat >"$work/p.yaml" <<YAML
listen:
  - address: 127.0.0.1:28500
    tls: { cert_file: $work/sim/sim-cert.pem, key_file: $work/sim/sim-key.pem }
admin: { address: 127.0.0.1:29500 }
upstream: { base_url: "https://127.0.0.1:28444", extra_ca_file: $work/sim/ca.pem, access_token: "file:$work/sim/access-token", http2: ${HTTP2:-true} }
callers: [ { id: load, role: Viewer, key_hashes: ["$CALLER_HASH"] } ]
runtime: { worker_threads: ${WORKERS:-0} }
logging: { format: json, level: ${LOG_LEVEL:-info} }
rate_limits: { per_ip: null, auth_failures: null, per_caller: null, groups: {}, per_account_orders: null, upstream: null }
limits: { max_connections_per_ip: 100000 }
YAML
  rm -f "$work"/cg.out*
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out" \
    "$bin" run --config "$work/p.yaml" >"$work/p.out" 2>"$work/p.log" &
  proxy_pid=$!
  for _ in $(seq 300); do curl -sf http://127.0.0.1:29500/readyz >/dev/null 2>&1 && break; sleep 0.2; done
  curl -sf http://127.0.0.1:29500/readyz >/dev/null || { echo "proxy $label did not start" >&2; tail "$work/p.log" >&2; exit 1; }
  load "$W"
  callgrind_control -i on "$proxy_pid" >/dev/null 2>&1
  load "$N"
  callgrind_control -i off "$proxy_pid" >/dev/null 2>&1
  callgrind_control -d "$proxy_pid" >/dev/null 2>&1
  sleep 0.5
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=
  total=$(cat "$work"/cg.out* | awk '/^totals:/ { s += $2 } END { print s + 0 }')
  printf '%-21s %12d\n' "$label" $((total / N))
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; for f in "$work"/cg.out*; do cp "$f" "$KEEP/$label.$(basename "$f")"; done; fi
done
