#!/usr/bin/env bash
# End-to-end load benchmark, all on loopback: the same chat request sent by wrk
#   1. directly to the mock upstream,
#   2. through nginx proxy_pass (Debian's nginx, keep-alive to the upstream),
#   3. through llm-sidecar (release build, JSON request logging on, to /dev/null),
#   4. llm-sidecar answering from its cache (every request an exact hit),
#   5. llm-sidecar tracing every request (OTLP/HTTP to nginx standing in for a collector),
#   6. with BASE_BIN=path, that binary in the role of 3 (an A/B against an earlier build),
#   7. a bare hyper proxy (examples/bare_proxy.rs: hyper's server and pooled client, nothing
#      else, one thread): the floor under the sidecar's hop,
# at concurrency 1, 16 and 64. Reports requests/s, latency p50/p99, the latency each proxy
# adds over direct at p50, and CPU time per request of each proxy process.
# Everything started here is stopped by PID on exit.
#
#   benches/load.sh [seconds-per-run]        (default 10; results also go to bench-results/)
#   ROUNDS=3 benches/load.sh 5               (each figure the median of 3 interleaved rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
command -v wrk >/dev/null && command -v nginx >/dev/null || {
  echo "needs wrk and nginx: apt-get install -y wrk nginx-light" >&2; exit 2; }

source benches/common.sh
cargo build --release --locked --example bare_proxy >&2
BARE=target/release/examples/bare_proxy
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

UP=$(free_port); NGX=$(free_port); SC=$(free_port); ADM=$(free_port); SC2=$(free_port); ADM2=$(free_port)
SC3=$(free_port); ADM3=$(free_port); SC4=$(free_port); ADM4=$(free_port); BP=$(free_port)

"$BIN" mock-upstream --listen "127.0.0.1:$UP" >/dev/null 2>&1 & PIDS+=($!); MOCK_PID=$!

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<NGINX
# One worker against the sidecar's one event-loop thread: equal terms, CPU per request compared.
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log /dev/null;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream mock { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX;
    # The traced sidecar's collector: accepts every export.
    location = /v1/traces { return 200; }
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!); NGINX_PID=$!
"$BARE" "127.0.0.1:$BP" "http://127.0.0.1:$UP" & PIDS+=($!); BARE_PID=$!

cat > "$WORK/sidecar.yaml" <<YAML
listen: 127.0.0.1:$SC
admin_listen: 127.0.0.1:$ADM
logging: { format: json, level: ${LOG_LEVEL:-info} }
providers:
  mock: { base_url: "http://127.0.0.1:$UP/v1" }
models:
  gpt-4o-mini: { provider: mock, pricing: { input: 0.15, output: 0.6 } }
YAML
"$BIN" serve --config "$WORK/sidecar.yaml" >/dev/null 2>&1 & PIDS+=($!); SC_PID=$!

mkdir -p "$WORK/cached"
sed -e "s/127.0.0.1:$SC/127.0.0.1:$SC2/; s/127.0.0.1:$ADM/127.0.0.1:$ADM2/" "$WORK/sidecar.yaml" > "$WORK/cached/sidecar.yaml"
printf 'cache:\n  semantic:\n    assets_dir: %s\n' "$PWD/assets" >> "$WORK/cached/sidecar.yaml"
"$BIN" serve --config "$WORK/cached/sidecar.yaml" >/dev/null 2>&1 & PIDS+=($!); SC2_PID=$!

sed -e "s/127.0.0.1:$SC/127.0.0.1:$SC3/; s/127.0.0.1:$ADM/127.0.0.1:$ADM3/" "$WORK/sidecar.yaml" > "$WORK/traced.yaml"
printf 'tracing: { endpoint: "http://127.0.0.1:%s", sample_ratio: 1 }\n' "$NGX" >> "$WORK/traced.yaml"
"$BIN" serve --config "$WORK/traced.yaml" >/dev/null 2>&1 & PIDS+=($!); SC3_PID=$!
if [ -n "${BASE_BIN:-}" ]; then
  sed -e "s/127.0.0.1:$SC/127.0.0.1:$SC4/; s/127.0.0.1:$ADM/127.0.0.1:$ADM4/" "$WORK/sidecar.yaml" > "$WORK/base.yaml"
  "$BASE_BIN" serve --config "$WORK/base.yaml" >/dev/null 2>&1 & PIDS+=($!); SC4_PID=$!
fi

BODY='{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the load test"}],"temperature":0}'
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
LUA
wait_http "http://127.0.0.1:$UP/v1/models"; wait_http "http://127.0.0.1:$NGX/v1/models"; wait_http "http://127.0.0.1:$ADM/readyz"
wait_http "http://127.0.0.1:$ADM2/readyz"; wait_http "http://127.0.0.1:$ADM3/readyz"; wait_http "http://127.0.0.1:$BP/v1/models"
[ -n "${BASE_BIN:-}" ] && wait_http "http://127.0.0.1:$ADM4/readyz"

# nginx's CPU: its worker processes (children of the master).
nginx_ticks() { local t=0; for p in $(pgrep -P "$NGINX_PID") "$NGINX_PID"; do t=$((t + $(cpu_ticks "$p"))); done; echo $t; }
HZ=$(getconf CLK_TCK)

run() { # name url conc cpu_fn
  local name=$1 url=$2 conc=$3 cpufn=$4 threads=$(( $3 < 2 ? 1 : 2 ))
  wrk -t1 -c"$conc" -d1s -s "$WORK/post.lua" "$url" >/dev/null 2>&1 || true   # warm pools
  local before; before=$($cpufn)
  local out; out=$(wrk -t"$threads" -c"$conc" -d"${DURATION}s" --latency -s "$WORK/post.lua" "$url")
  local after; after=$($cpufn)
  local rps p50 p99 reqs errs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  local cpu_us
  cpu_us=$(python3 -c "print(f'{($after-$before)/$HZ*1e6/max($reqs,1):.1f}')")
  echo "$name $conc $rps $p50 $p99 $cpu_us ${errs:-}"
}

to_us() { python3 - "$1" <<'PY'
import sys, re
v = sys.argv[1]
m = re.match(r"([\d.]+)(us|ms|s)$", v)
n, u = float(m.group(1)), m.group(2)
print(n * {"us": 1, "ms": 1e3, "s": 1e6}[u])
PY
}

none() { echo 0; }
# field NAME CONC COLUMN: one column of the result row for (target, concurrency).
field() { for d in "${RESULTS[@]}"; do read -r -a f <<<"$d"; if [ "${f[0]}" = "$1" ] && [ "${f[1]}" = "$2" ]; then echo "${f[$3]}"; fi; done; }
RAW=()
for c in ${CONCURRENCY:-1 16 64}; do
  # ROUNDS > 1 repeats the whole set of targets, interleaved, so that the machine's drift
  # (2-3x from day to day, ~10 % within minutes here) hits every target alike; the table
  # gives each figure's median over the rounds.
  for _ in $(seq "${ROUNDS:-1}"); do
    RAW+=("$(run direct "http://127.0.0.1:$UP/v1/chat/completions" $c none)")
    RAW+=("$(run nginx "http://127.0.0.1:$NGX/v1/chat/completions" $c nginx_ticks)")
    RAW+=("$(run bare-hyper "http://127.0.0.1:$BP/v1/chat/completions" $c "cpu_ticks $BARE_PID")")
    RAW+=("$(run llm-sidecar "http://127.0.0.1:$SC/v1/chat/completions" $c "cpu_ticks $SC_PID")")
    RAW+=("$(run sidecar-cache-hit "http://127.0.0.1:$SC2/v1/chat/completions" $c "cpu_ticks $SC2_PID")")
    RAW+=("$(run sidecar-traced "http://127.0.0.1:$SC3/v1/chat/completions" $c "cpu_ticks $SC3_PID")")
    if [ -n "${BASE_BIN:-}" ]; then
      RAW+=("$(run sidecar-base "http://127.0.0.1:$SC4/v1/chat/completions" $c "cpu_ticks $SC4_PID")")
    fi
  done
done
# One row per (target, concurrency): the median of each figure over the rounds.
mapfile -t RESULTS < <(printf '%s\n' "${RAW[@]}" | python3 -c '
import re, statistics, sys
rows, order = {}, []
for line in sys.stdin:
    f = line.split(None, 6)
    if len(f) < 6:
        continue
    key = (f[0], f[1])
    if key not in rows:
        rows[key] = []
        order.append(key)
    rows[key].append(f)
def us(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
for name, conc in order:
    fs = rows[(name, conc)]
    med = lambda i, conv=float: statistics.median(conv(f[i]) for f in fs)
    errs = " ".join(sorted({f[6].strip() for f in fs if len(f) > 6 and f[6].strip()}))
    print(f"{name} {conc} {med(2):.2f} {med(3, us):.2f}us {med(4, us):.2f}us {med(5):.1f} {errs}".rstrip())
')

SC_RSS=$(awk '/VmRSS/ {print $2/1024 " MiB"}' "/proc/$SC_PID/status")
NGX_RSS=$(for p in $(pgrep -P "$NGINX_PID") "$NGINX_PID"; do awk '/VmRSS/ {print $2}' "/proc/$p/status"; done | awk '{s+=$1} END {print s/1024 " MiB"}')
mkdir -p bench-results
OUT=bench-results/load-$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "# load: ${DURATION}s per run, ${ROUNDS:-1} interleaved round(s) (medians), $(nproc) cores, $(date -u)"
  echo
  echo "| target | conc | req/s | p50 | p99 | added p50 vs direct | proxy CPU µs/req | errors |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  for r in "${RESULTS[@]}"; do
    read -r name conc rps p50 p99 cpu errs <<<"$r"
    direct_p50=$(field direct "$conc" 3)
    added=$(python3 -c "print(f'{$(to_us "$p50") - $(to_us "$direct_p50"):.0f} µs')")
    if [ "$name" = direct ]; then added="-"; cpu="-"; fi
    echo "| $name | $conc | $rps | $p50 | $p99 | $added | $cpu | ${errs:-0} |"
  done
  echo
  for c in ${CONCURRENCY:-1 16 64}; do
    n=$(field nginx "$c" 2)
    s=$(field llm-sidecar "$c" 2)
    nc=$(field nginx "$c" 5); bc=$(field bare-hyper "$c" 5); sc=$(field llm-sidecar "$c" 5)
    echo "- c=$c: llm-sidecar/nginx throughput = $(python3 -c "print(f'{$s/$n:.2f}')")x; CPU per request: llm-sidecar $sc µs = $(python3 -c "print(f'{$sc/$nc:.2f}x nginx, {$sc/$bc:.2f}x bare hyper')") (nginx $nc, bare hyper $bc)"
  done
  echo "- RSS after the runs: llm-sidecar $SC_RSS, nginx (master + workers) $NGX_RSS"
} | tee "$OUT"
echo "(saved to $OUT)" >&2
