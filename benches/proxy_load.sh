#!/usr/bin/env bash
# Gerbang's load benchmark: nginx, HAProxy and three Gerbang pipelines side by side, in one run.
#
#   cargo build --release && benches/proxy_load.sh            # 5 rounds of 10 s, 64 connections
#   ROUNDS=3 DURATION=5s CONNS=512 benches/proxy_load.sh [BIN [BIN2 ...]]
#
# Nothing is built here: BIN (default target/release/gerbang) is measured as it is. With more
# binaries (a before and an after build), each one's pipelines run in the same rounds, named
# gerbang-full, gerbang-full@2, ...: their ratios come from one run on one machine state.
#
# Targets (each one worker: nginx `worker_processes 1`, HAProxy `nbthread 1`, Gerbang
# `worker_threads = 1`), all in front of one upstream (nginx answering 1 KiB of JSON, as the
# shared ../shared/bench/proxy_bench.sh does):
#   nginx           reverse proxy, keep-alive pool to the upstream (the reference: ratio 1.00)
#   haproxy         the same, when haproxy is installed (HAPROXY=0 skips it)
#   hyper-floor     hyper's HTTP/1 server on one Tokio thread doing the least a proxy does
#                   (benches/src/bin/hyper_floor.rs; FLOOR=0 skips both floors): the cost of the
#                   parts the gateway is built on, without any of its work
#   raw-floor       the same behind a hand-written HTTP/1.1 loop instead of hyper's server
#                   (benches/src/bin/raw_floor.rs): hyper's server machinery is the difference
#   gerbang-bare    bearer token + an agreement that needs nothing more than the caller's
#                   identity; metrics and audit off
#   gerbang-full    bearer token + an agreement with an endpoint template (GET /data/{id}),
#                   metrics on, audit with fsync = "interval"
#   gerbang-masked  full + the demo's field rules (NIK masked, status_perkawinan removed) on a
#                   1 KiB JSON citizen record, the NIK hashed into the audit record
# and, when VARIANTS names them (default VARIANTS="bare full masked"):
#   gerbang-limited full + the agreement has a rate limit and a daily quota (local limiter)
#   gerbang-redis   limited, the limits shared through Redis (a redis-server of this script on
#                   SERVER_CPU; needs Debian's redis-server)
#   gerbang-noaudit full with the audit log off, and gerbang-nometrics full with metrics off:
#                   what each of the two costs, as the difference to full
# wrk (1 thread, --latency) drives every target in interleaved rounds whose order rotates, so
# drift on a shared machine hits everyone alike; wrk runs on LOADGEN_CPU, every server on
# SERVER_CPU. Every target gets the same Authorization header (only Gerbang reads it).
#
# Printed per target: median RPS, spread ((max-min)/median), median p50/p99, CPU%, requests per
# CPU-second of its process tree (upstream excluded), ratios to nginx, errors. Only ratios within
# one run count: the machine is shared and noisy.
#
# Environment: ROUNDS=5 DURATION=10s WARMUP=3s CONNS=64 WRK_THREADS=1 BASE_PORT=18200
#   LOADGEN_CPU=1 SERVER_CPU=0 UPSTREAM_CPU=$SERVER_CPU HAPROXY=1 VARIANTS="bare full masked limited redis"
#   TARGETS="nginx gerbang-full" (measure a subset of what started) CSV_OUT=file
#   NGINX_LOG=1: also nginx-logged, nginx writing an audit-sized access line per request.
#   KEEP=1 (keep the work directory: configs, logs, raw wrk output).
#   PERF=1: instead of the rounds, context switches per request of every target (voluntary and
#   involuntary) and each thread's CPU per request (schedstat: precise where perf's samples
#   of a small thread are not), then a perf profile of every target under load (hyper-floor
#   included) (PERF_SECONDS, default 10; PERF_TOP symbols, default 40).
#   IDLE=N: instead of the rounds, N idle keep-alive connections to each target in turn (one
#   request on each, then held open): the RSS they add (benches/idle_conns.py).
#   TLS=1: Gerbang's targets terminate TLS (a self-signed certificate made here; nginx and
#   HAProxy stay plain): what a production listener does, for IDLE and the rounds alike.
#   CALLGRIND=1: instead of the rounds, each Gerbang target runs under valgrind's callgrind and
#   the script prints instructions per request (deterministic, unlike the wall clock on a shared
#   machine): instrumentation on after a warm-up, then CG_DURATION (20s) of requests from
#   CG_CONNS (4) connections; the instructions of every thread of the process divided by the
#   requests wrk completed.
# Needs wrk and nginx (apt-get install wrk nginx-light); haproxy optional.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Idle connections need descriptors in the servers, which inherit this limit.
if [[ -n ${IDLE:-} ]]; then
  ulimit -n $(( IDLE + 1024 )) 2>/dev/null || { echo "IDLE=$IDLE needs ulimit -n above $((IDLE + 1024))" >&2; exit 1; }
fi
BINS=("$@")
[[ ${#BINS[@]} -gt 0 ]] || BINS=("$ROOT/target/release/gerbang")
BIN=${BINS[0]}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
BASE_PORT=${BASE_PORT:-18200}
HAPROXY=${HAPROXY:-1}
# CALLGRIND=1 CG_CACHE=1: valgrind simulates the caches too (slower; per request L1 and last-level
# data misses beside the instructions).
CG_SIM=""; [[ ${CG_CACHE:-0} == 1 ]] && CG_SIM="--cache-sim=yes"
# CG_INSTR=1: callgrind also counts each instruction address (--dump-instr=yes; with KEEP=1, for
# per-instruction analysis of the kept callgrind.out files, e.g. counting locked instructions).
CG_EXTRA=""; [[ ${CG_INSTR:-0} == 1 ]] && CG_EXTRA="--dump-instr=yes"
# CG_THREADS=1: one callgrind file per thread (the totals printed are still the whole process).
[[ ${CG_THREADS:-0} == 1 ]] && CG_EXTRA="$CG_EXTRA --separate-threads=yes"
LOADGEN_CPU=${LOADGEN_CPU:-1}
SERVER_CPU=${SERVER_CPU:-0}
UP_PORT=$BASE_PORT
NGX_PORT=$((BASE_PORT + 1))
HAP_PORT=$((BASE_PORT + 2))

die() { echo "proxy_load: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }

for b in "${BINS[@]}"; do
  [[ -x $b ]] || die "no gerbang binary at $b: run 'cargo build --release' first, or give its path"
done
command -v wrk >/dev/null || die "wrk is needed: apt-get install wrk"
NGINX=$(command -v nginx || true)
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
[[ -n $NGINX ]] || die "nginx is needed (the upstream and the reference): apt-get install nginx-light"
HAPROXY_BIN=$(command -v haproxy || true)
[[ $HAPROXY == 1 && -z $HAPROXY_BIN ]] && { note "haproxy not installed: skipped"; HAPROXY=0; }
for p in $(seq "$BASE_PORT" $((BASE_PORT + 40))); do
  [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] || die "port $p is in use (set BASE_PORT)"
done
if (( $(nproc) >= 2 )); then
  LOADGEN="taskset -c $LOADGEN_CPU"; SERVER="taskset -c $SERVER_CPU"
  UPSTREAM="taskset -c ${UPSTREAM_CPU:-$SERVER_CPU}"
  # Diagnostic only (changes the reference's conditions too): UPSTREAM_BATCH=1 runs the
  # upstream under SCHED_BATCH, so its wake-ups do not preempt the proxy on the shared CPU.
  [[ ${UPSTREAM_BATCH:-0} == 1 ]] && UPSTREAM="chrt -b 0 $UPSTREAM"
  note "pinning: wrk -> CPU $LOADGEN_CPU; proxies -> CPU $SERVER_CPU; upstream -> CPU ${UPSTREAM_CPU:-$SERVER_CPU}"
else
  LOADGEN=""; SERVER=""; UPSTREAM=""; note "one CPU: no pinning"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/proxy_load.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [[ ${KEEP:-0} == 1 ]]; then note "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- upstream and nginx
pad_json() {  # $1 = JSON up to an open string value; padded with x to 1024 bytes and closed
  local head=$1 pad
  pad=$(( 1024 - ${#head} - 2 ))
  printf '%s%s"}' "$head" "$(printf 'x%.0s' $(seq "$pad"))"
}
BODY=$(pad_json '{"status":"ok","service":"upstream","data":"')
RECORD=$(pad_json '{"nik":"3603015505900001","nama":"SITI AMINAH (FIKTIF)","tempat_lahir":"TANGERANG","tanggal_lahir":"1990-05-15","jenis_kelamin":"P","alamat":{"jalan":"JL. MERDEKA NO. 17","rt":"003","rw":"005","kelurahan":"SUKAMAJU","kecamatan":"CIKUPA","kabupaten":"TANGERANG"},"agama":"ISLAM","status_perkawinan":"KAWIN","pekerjaan":"WIRASWASTA","kewarganegaraan":"WNI","keterangan":"')
[[ ${#BODY} == 1024 && ${#RECORD} == 1024 ]] || die "bodies are not 1 KiB"
NGINX_USER=""
[[ $EUID == 0 ]] && NGINX_USER="user nobody $(getent group nogroup >/dev/null && echo nogroup || echo nobody);"
nginx_start() {  # $1 = name, $2 = server block, $3 = http-level lines; echoes the PID
  local d="$WORK/$1"
  mkdir -p "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
$NGINX_USER
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  keepalive_requests 100000;
  keepalive_timeout 65s;
$3
  server {
$2
  }
}
EOF
  local pin=$SERVER
  [[ $1 == upstream ]] && pin=$UPSTREAM
  $pin "$NGINX" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' >"$d/out.log" 2>&1 &
  echo $!
}
UP_PID=$(nginx_start upstream "    listen 127.0.0.1:$UP_PORT;
    default_type application/json;
    location / { return 200 '$BODY'; }
    location /penduduk/ { return 200 '$RECORD'; }" "")
PIDS+=("$UP_PID")
# The reference's proxying, shared by nginx and nginx-logged.
NGX_PROXY="    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }"
NGX_UPSTREAM="  upstream bench_upstream { server 127.0.0.1:$UP_PORT; keepalive $((CONNS > 64 ? CONNS : 64)); keepalive_requests 100000; }"
NGX_PID=$(nginx_start nginx "    listen 127.0.0.1:$NGX_PORT;
$NGX_PROXY" "$NGX_UPSTREAM")
PIDS+=("$NGX_PID")
NAMES=(nginx); URLS=("http://127.0.0.1:$NGX_PORT/data/1"); TPIDS=("$NGX_PID")
# NGINX_LOG=1: also nginx-logged, the reference proxy writing an access line per request of
# about the size of Gerbang's audit record (~545 bytes of JSON against the record's 525;
# buffered 256 KiB, written when full and at least every second, as the audit writer writes
# batches and, with fsync = "interval", syncs every second): what logging every call costs the
# reference, to set beside gerbang-full's audit log (which also hashes each record into its
# chain).
if [[ ${NGINX_LOG:-0} == 1 ]]; then
  NGL_PORT=$((BASE_PORT + 34))
  NGL_PID=$(nginx_start nginx-logged "    listen 127.0.0.1:$NGL_PORT;
    access_log $WORK/nginx-logged/access.log audit buffer=256k flush=1s;
$NGX_PROXY" "$NGX_UPSTREAM
  log_format audit escape=json '{\"seq\":\$connection_requests,\"ts\":\"\$time_iso8601\",\"kind\":\"call\",\"request_id\":\"\$request_id\",\"remote\":\"\$remote_addr:\$remote_port\",\"method\":\"\$request_method\",\"path\":\"\$uri\",\"query\":\"\$args\",\"consumer\":\"loadgen/client\",\"service\":\"bench/up\",\"endpoint\":\"GET /data/{id}\",\"agreement\":\"bench-agreement\",\"purpose\":null,\"decision\":\"allow\",\"status\":\$status,\"bytes_sent\":\$body_bytes_sent,\"upstream\":\"\$upstream_addr\",\"upstream_status\":\"\$upstream_status\",\"upstream_ms\":\"\$upstream_response_time\",\"duration_ms\":\$request_time,\"traceparent\":\"\$http_traceparent\",\"user_agent\":\"\$http_user_agent\",\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\"}';")
  PIDS+=("$NGL_PID")
  NAMES+=(nginx-logged); URLS+=("http://127.0.0.1:$NGL_PORT/data/1"); TPIDS+=("$NGL_PID")
fi

if [[ $HAPROXY == 1 ]]; then
  mkdir -p "$WORK/haproxy"
  cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:$HAP_PORT
  default_backend be
backend be
  http-reuse safe
  server up1 127.0.0.1:$UP_PORT
EOF
  $SERVER "$HAPROXY_BIN" -db -f "$WORK/haproxy/haproxy.cfg" >"$WORK/haproxy/out.log" 2>&1 &
  HAP_PID=$!; PIDS+=("$HAP_PID")
  NAMES+=(haproxy); URLS+=("http://127.0.0.1:$HAP_PORT/data/1"); TPIDS+=("$HAP_PID")
fi

# The floors, built by `cargo build --release` (FLOOR=0 skips both):
# hyper-floor: hyper's HTTP/1 server and the least a proxy does per request (benches/src/bin/
#   hyper_floor.rs): what the gateway's own work is measured from;
# raw-floor: the same upstream side behind a hand-written HTTP/1.1 loop (benches/src/bin/
#   raw_floor.rs): the difference is what hyper's server machinery costs per request.
start_floor() { # name binary port
  local name=$1 bin=$2 port=$3 pid
  if [[ ! -x $bin ]]; then note "no $bin (cargo build --release builds it): $name skipped"; return; fi
  mkdir -p "$WORK/$name"
  if [[ ${CALLGRIND:-0} == 1 ]]; then
    $SERVER valgrind --tool=callgrind --instr-atstart=no $CG_SIM $CG_EXTRA \
      --callgrind-out-file="$WORK/$name/callgrind.out" \
      "$bin" "127.0.0.1:$port" "127.0.0.1:$UP_PORT" >"$WORK/$name/out.log" 2>&1 &
  else
    $SERVER "$bin" "127.0.0.1:$port" "127.0.0.1:$UP_PORT" >"$WORK/$name/out.log" 2>&1 &
  fi
  pid=$!; PIDS+=("$pid")
  NAMES+=("$name"); URLS+=("http://127.0.0.1:$port/data/1"); TPIDS+=("$pid")
}
if [[ ${FLOOR:-1} == 1 ]]; then
  start_floor hyper-floor "${FLOOR_BIN:-$ROOT/target/release/hyper-floor}" $((BASE_PORT + 32))
  start_floor raw-floor "${RAW_FLOOR_BIN:-$ROOT/target/release/raw-floor}" $((BASE_PORT + 33))
fi

# ---------------------------------------------------------------- gerbang, three pipelines
SECRET=bench-secret-0123456789
HASH=$(printf '%s' "$SECRET" | "$BIN" hash-secret)
# One shared signing key: every instance accepts the token any of them issues.
mkdir -p "$WORK/keys"
gerbang_start() {  # $1 = variant, $2 = port offset, $3 = binary, $4 = name suffix
  local v=$1 port=$((BASE_PORT + $2)) admin=$((BASE_PORT + $2 + 1)) bin=$3 name="gerbang-$1$4"
  local d="$WORK/$name"
  local metrics=true audit=true endpoint="" endpoints="" fields="" path="/data/1" limits="" cluster=""
  case $v in
    limited|redis)
          endpoint='[[service.endpoint]]
method = "GET"
path = "/data/{id}"
classification = "terbatas"'
          endpoints='endpoints = ["GET /data/{id}"]'
          limits='rate_limit = { limit = 1000000, per = "second", burst = 1000000 }
quota = { limit = 1000000000, per = "day" }'
          if [[ $v == redis ]]; then
            command -v redis-server >/dev/null || die "redis-server is needed for VARIANTS=redis"
            local nth=${4#@}
            local rport=$((BASE_PORT + 40 - ${nth:-1}))
            $SERVER redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
            PIDS+=($!)
            for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
            cluster="[cluster]
replica_id = \"bench\"
redis_url = \"redis://127.0.0.1:$rport/0\"
expected_replicas = 1"
          fi ;;
    bare) metrics=false; audit=false ;;
    full|noaudit|nometrics) endpoint='[[service.endpoint]]
method = "GET"
path = "/data/{id}"
classification = "terbatas"'
          endpoints='endpoints = ["GET /data/{id}"]'
          if [[ $v == noaudit ]]; then audit=false; fi
          if [[ $v == nometrics ]]; then metrics=false; fi ;;
    masked) endpoint='[[service.endpoint]]
method = "GET"
path = "/penduduk/{nik}"
classification = "rahasia"
subject = "nik"'
            endpoints='endpoints = ["GET /penduduk/{nik}"]'
            fields='[agreement.fields]
mask = [{ path = "nik", keep_first = 6, keep_last = 4 }]
deny = ["status_perkawinan"]'
            path="/penduduk/3603015505900001" ;;
  esac
  mkdir -p "$d/registry" "$d/agreements" "$d/data"
  local tls="" scheme=http
  if [[ ${TLS:-0} == 1 ]]; then
    if [[ ! -f $WORK/tls/cert.pem ]]; then
      mkdir -p "$WORK/tls"
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
        -addext subjectAltName=IP:127.0.0.1 -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" \
        >/dev/null 2>&1 || die "openssl could not make a certificate"
    fi
    tls="[server.tls]
cert_file = \"$WORK/tls/cert.pem\"
key_file = \"$WORK/tls/key.pem\""
    scheme=https
  fi
  cat >"$d/gerbang.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
worker_threads = 1
max_connections = 30000
$tls
[admin]
listen = "127.0.0.1:$admin"
watch_files = false
[log]
level = "warn"
[paths]
data_dir = "$d/data"
[auth]
issuer = "http://gerbang.bench"
# Long enough for every round: an expired token would turn the rest into cheap 401s.
token_ttl = "2h"
keys_dir = "$WORK/keys"
[metrics]
enabled = $metrics
[audit]
enabled = $audit
fsync = "interval"
# As nginx's upstream keep-alive pool: room for every connection the load generator keeps
# busy. At CONNS=512 the default (256 idle per host) closed the connections returned beyond
# it and opened new ones on later calls.
[upstream]
pool_max_idle_per_host = $(( CONNS > 256 ? CONNS : 256 ))
$cluster
EOF
  cat >"$d/registry/bench.toml" <<EOF
[agency]
id = "bench"
name = "Benchmark"
[[service]]
id = "up"
name = "Fixed upstream"
# Above the load generator's connections: at CONNS=512 the default max_pending (256
# connections being opened at once) answered some calls 503 upstream_overloaded, by design.
[service.circuit_breaker]
max_requests = 8192
max_pending = 8192
[[service.instance]]
name = "up-1"
url = "http://127.0.0.1:$UP_PORT"
$endpoint
EOF
  cat >"$d/registry/client.toml" <<EOF
[agency]
id = "loadgen"
name = "Load generator"
[[application]]
id = "client"
name = "wrk"
auth_methods = ["client_secret"]
client_secret_hashes = ["$HASH"]
EOF
  cat >"$d/agreements/bench.toml" <<EOF
[[agreement]]
id = "bench-up"
title = "Benchmark"
legal_basis = "benchmark"
service = "bench/up"
consumers = ["loadgen/client"]
methods = ["GET"]
$endpoints
max_classification = "rahasia"
$limits
$fields
EOF
  [[ -n $(ls "$WORK/keys" 2>/dev/null) ]] || "$BIN" rotate-key --config "$d/gerbang.toml" >/dev/null 2>&1 \
    || die "rotate-key failed"
  if [[ ${CALLGRIND:-0} == 1 ]]; then
    $SERVER valgrind --tool=callgrind --instr-atstart=no $CG_SIM $CG_EXTRA \
      --callgrind-out-file="$d/callgrind.out" "$bin" serve --config "$d/gerbang.toml" >"$d/out.log" 2>&1 &
  else
    $SERVER "$bin" serve --config "$d/gerbang.toml" >"$d/out.log" 2>&1 &
  fi
  local pid=$!; PIDS+=("$pid")
  for _ in $(seq 600); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$admin/health/ready" && break; sleep 0.1; done
  NAMES+=("$name"); URLS+=("$scheme://127.0.0.1:$port/bench/up$path"); TPIDS+=("$pid")
  GW_SCHEME=$scheme
  GW_PORT_OF_LAST=$port
}
offset=3
for k in "${!BINS[@]}"; do
  suffix=""; (( k > 0 )) && suffix="@$((k + 1))"
  for v in ${VARIANTS:-bare full masked}; do
    case $v in bare|full|masked|limited|redis|noaudit|nometrics) ;; *) die "unknown variant $v (bare full masked limited redis noaudit nometrics)";; esac
    gerbang_start "$v" "$offset" "${BINS[$k]}" "$suffix"; offset=$((offset + 2))
  done
done
TOKEN=$(curl -sk -u "loadgen%2Fclient:$SECRET" -d grant_type=client_credentials "$GW_SCHEME://127.0.0.1:$GW_PORT_OF_LAST/oauth/token" \
  | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
[[ $TOKEN == ey* ]] || die "no token from the gateway (KEEP=1 keeps the logs)"
AUTH_HEADER="Authorization: Bearer $TOKEN"
for k in "${!BINS[@]}"; do note "binary $((k + 1)): ${BINS[$k]}"; done

if [[ -n ${TARGETS:-} ]]; then
  KN=(); KU=(); KP=()
  for i in "${!NAMES[@]}"; do
    [[ " $TARGETS " == *" ${NAMES[$i]} "* ]] && { KN+=("${NAMES[$i]}"); KU+=("${URLS[$i]}"); KP+=("${TPIDS[$i]}"); }
  done
  NAMES=("${KN[@]}"); URLS=("${KU[@]}"); TPIDS=("${KP[@]}")
fi
for i in "${!NAMES[@]}"; do
  out=""
  for _ in $(seq 100); do
    out=$(curl -sk -o "$WORK/check.${NAMES[$i]}" -w '%{http_code}' --max-time 1 -H "$AUTH_HEADER" "${URLS[$i]}" || true)
    [[ $out == 200 ]] && break; sleep 0.1
  done
  [[ $out == 200 ]] || die "${NAMES[$i]} at ${URLS[$i]} answered '${out:-nothing}' (KEEP=1 keeps the logs)"
done
for n in "${NAMES[@]}"; do
  [[ $n == gerbang-masked* ]] || continue
  grep -q '"nik":"360301\*\*\*\*\*\*0001"' "$WORK/check.$n" && ! grep -q status_perkawinan "$WORK/check.$n" \
    || die "$n does not mask: $(cat "$WORK/check.$n")"
done

# ---------------------------------------------------------------- measuring
cpu_ticks() {  # "utime stime" (clock ticks) of a process and its descendants (nginx's worker)
  local user=0 sys=0 p s f
  for p in $(ps -e -o pid=,ppid= | awk -v r="$1" '{par[$1]=$2} END { for (p in par) { q=p; n=0; while (q != r && (q in par) && q > 1 && n++ < 64) q=par[q]; if (q == r) print p } }'); do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }; read -r -a f <<<"$s"
    user=$(( user + f[11] )); sys=$(( sys + f[12] ))
  done
  echo "$user $sys"
}
CLK=$(getconf CLK_TCK)
ms() { awk -v v="$1" 'BEGIN{ n=v+0; u=v; sub(/^[0-9.]+/,"",u); if(u=="us")n/=1000; else if(u=="s")n*=1000; printf "%.3f", n }'; }
RESULTS=${CSV_OUT:-$WORK/results.tsv}; : >"$RESULTS"
run() {  # $1 = round (or warmup), $2 = target index
  local round=$1 i=$2 dur=$DURATION c0 c1 u0 s0 u1 s1 t0 t1 out="$WORK/wrk.$1.${NAMES[$2]}"
  [[ $round == warmup ]] && dur=$WARMUP
  read -r u0 s0 <<<"$(cpu_ticks "${TPIDS[$i]}")"; t0=$(date +%s.%N)
  $LOADGEN wrk -t"$WRK_THREADS" -c"$CONNS" -d"$dur" --latency -H "$AUTH_HEADER" "${URLS[$i]}" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
  t1=$(date +%s.%N); read -r u1 s1 <<<"$(cpu_ticks "${TPIDS[$i]}")"
  c0=$(( u0 + s0 )); c1=$(( u1 + s1 ))
  [[ $round == warmup ]] && return
  local rps p50 p99 req errs cpu wall
  rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
  p50=$(ms "$(awk '/^ +50%/{print $2}' "$out")"); p99=$(ms "$(awk '/^ +99%/{print $2}' "$out")")
  req=$(awk '/ requests in /{print $1}' "$out")
  errs=$(awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(",",""); n+=$4+$6+$8+$10} END{print n+0}' "$out")
  cpu=$(awk -v a="$c0" -v b="$c1" -v t="$CLK" 'BEGIN{printf "%.2f", (b-a)/t}')
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
  local usr sys
  usr=$(awk -v a="$u0" -v b="$u1" -v t="$CLK" 'BEGIN{printf "%.2f", (b-a)/t}')
  sys=$(awk -v a="$s0" -v b="$s1" -v t="$CLK" 'BEGIN{printf "%.2f", (b-a)/t}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "${NAMES[$i]}" "$rps" "$p50" "$p99" "$req" "$cpu" "$wall" "$errs" "$usr" "$sys" >>"$RESULTS"
  note "round $round $(printf '%-15s' "${NAMES[$i]}") rps=$rps p50=${p50}ms p99=${p99}ms cpu_s=$cpu errors=$errs"
  (( errs == 0 )) || note "round $round ${NAMES[$i]}: $errs errors (non-2xx or socket): its figures are not comparable"
}
if [[ -n ${IDLE:-} ]]; then
  # Idle keep-alive connections: IDLE connections to each target, one request on each, then
  # held idle; the RSS they add (benches/idle_conns.py). Targets one after the other.
  echo
  echo "| target | connections | RSS added, MiB | KiB each | open time, s | RSS after they closed, MiB |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  for i in "${!NAMES[@]}"; do
    out="$WORK/idle.${NAMES[$i]}"
    python3 "$ROOT/benches/idle_conns.py" --url "${URLS[$i]}" --pid "${TPIDS[$i]}" --count "$IDLE" \
      --header "$AUTH_HEADER" >"$out" 2>&1 || die "idle_conns failed: $(cat "$out")"
    awk -v t="${NAMES[$i]}" '
      /^connections open/ { n=$5; fails=$8; gsub(/\(/,"",fails) }
      /^opening them took/ { open=$4 }
      /^RSS before/ { added=$10; gsub(/[+(]/,"",added); each=$12; after=$(NF-1) }
      END { printf "| %s | %s | %s | %s | %s | %s |\n", t, n, added, each, open, after }' "$out"
    grep -q "(0 failed" "$out" || note "${NAMES[$i]}: some connections failed: $(head -1 "$out")"
  done
  exit 0
fi
# The process that serves target $1 (an index): nginx's master forks the worker that does;
# HAProxy (-db), the floors and Gerbang serve in the process started.
serving_pid() {
  local pid=${TPIDS[$1]}
  [[ ${NAMES[$1]} == nginx* ]] && pid=$(pgrep -P "$pid" | head -1)
  echo "$pid"
}
if [[ ${SCHED:-0} == 1 ]]; then
  # Who takes the server CPU from whom: sched_switch events on SERVER_CPU while wrk drives
  # each target, as switches per request from one command to the next (the upstream and the
  # proxy share that CPU, so every hand-over between them is a context switch).
  command -v perf >/dev/null || die "SCHED=1 needs perf: apt-get install linux-perf"
  for i in "${!NAMES[@]}"; do
    data="$WORK/sched.${NAMES[$i]}.data"
    $LOADGEN wrk -t1 -c"$CONNS" -d2s -H "$AUTH_HEADER" "${URLS[$i]}" >/dev/null 2>&1
    perf record -q -e sched:sched_switch -C "$SERVER_CPU" -o "$data" -- sleep 3 >/dev/null 2>&1 &
    rec=$!
    $LOADGEN wrk -t1 -c"$CONNS" -d3s -H "$AUTH_HEADER" "${URLS[$i]}" >"$data.wrk" 2>&1 || true
    wait "$rec" || true
    n=$(awk '/ requests in /{print $1}' "$data.wrk")
    echo
    echo "## ${NAMES[$i]}: switches on CPU $SERVER_CPU per request ($n requests), prev (state) -> next"
    perf script -i "$data" -F trace 2>/dev/null |
      sed -E 's/prev_comm=([^ ]+) .*prev_state=([^ ]+) ==> next_comm=([^ ]+) .*/\1 (\2) -> \3/' |
      sort | uniq -c | sort -rn | head -"${SCHED_TOP:-8}" |
      awk -v n="$n" '{c=$1; $1=""; printf "%8.3f %s\n", (n>0?c/n:0), $0}'
    # And the system calls the target's process makes per request.
    pid=$(serving_pid "$i"); out="$WORK/syscalls.${NAMES[$i]}"
    perf stat -e 'syscalls:sys_enter_*' -p "$pid" -o "$out" -- sleep 3 >/dev/null 2>&1 &
    rec=$!
    $LOADGEN wrk -t1 -c"$CONNS" -d3s -H "$AUTH_HEADER" "${URLS[$i]}" >"$out.wrk" 2>&1 || true
    wait "$rec" || true
    n=$(awk '/ requests in /{print $1}' "$out.wrk")
    echo "## ${NAMES[$i]}: system calls per request ($n requests)"
    awk -v n="$n" '/syscalls:sys_enter_/{gsub(",","",$1); if ($1>0 && n>0) printf "%8.3f %s\n", $1/n, $2}' "$out" | sort -rn | head -"${SCHED_TOP:-8}"
  done
  exit 0
fi
if [[ ${PERF:-0} == 1 ]]; then
  # Where the time goes under load: perf samples (software clock, which works where the
  # machine has no hardware counters) of each Gerbang target while wrk drives it; the top of
  # a flat profile by shared object and symbol, kernel included.
  command -v perf >/dev/null || die "PERF=1 needs perf: apt-get install linux-perf"
  # Voluntary (the thread blocked: nothing to do) and involuntary (preempted) switches, summed
  # over the process's threads, from /proc.
  switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/{v+=$2} /^nonvoluntary_ctxt/{n+=$2} END{print v+0, n+0}'
  }
  # Each thread's time on the CPU (ns, from schedstat) and its user and system ticks, by name.
  thread_times() {
    for t in /proc/"$1"/task/*; do
      printf '%s %s %s\n' "$(tr ' ' _ <"$t/comm")" "$(awk '{print $1}' "$t/schedstat")" \
        "$(sed 's/.*) //' "$t/stat" | awk '{print $12, $13}')"
    done 2>/dev/null
  }
  tick_us=$((1000000 / $(getconf CLK_TCK)))
  echo "| target | requests | context switches per request (every thread of the process) | voluntary / involuntary per request |"
  echo "| --- | ---: | ---: | ---: |"
  for i in "${!NAMES[@]}"; do
    pid=$(serving_pid "$i"); out="$WORK/perfstat.${NAMES[$i]}"
    $LOADGEN wrk -t1 -c"$CONNS" -d3s -H "$AUTH_HEADER" "${URLS[$i]}" >/dev/null 2>&1
    thread_times "$pid" >"$out.threads0"
    v0=$(switches "$pid")
    perf stat --per-thread -e context-switches -p "$pid" -o "$out" -- sleep 5 >/dev/null 2>&1 &
    rec=$!
    $LOADGEN wrk -t1 -c"$CONNS" -d5s -H "$AUTH_HEADER" "${URLS[$i]}" >"$out.wrk" 2>&1 || true
    wait "$rec" || true
    v1=$(switches "$pid")
    thread_times "$pid" >"$out.threads1"
    n=$(awk '/ requests in /{print $1}' "$out.wrk")
    cs=$(awk '/context-switches/{gsub(",","",$2); s+=$2} END{print s+0}' "$out")
    printf '| %s | %s | %.2f | %s |\n' "${NAMES[$i]}" "$n" "$(awk -v a="$cs" -v b="$n" 'BEGIN{print (b>0?a/b:0)}')" \
      "$(awk -v a="$v0" -v b="$v1" -v n="$n" 'BEGIN{split(a,x," "); split(b,y," "); if (n>0) printf "%.2f / %.2f", (y[1]-x[1])/n, (y[2]-x[2])/n}')"
  done
  # CPU per request by thread over the same 5 s (threads of one name summed): on the CPU
  # (schedstat, ns), and its user / system split (clock ticks, coarse for a small thread).
  echo
  echo "| target | thread | CPU µs per request | user / system µs per request (ticks) |"
  echo "| --- | --- | ---: | ---: |"
  for i in "${!NAMES[@]}"; do
    out="$WORK/perfstat.${NAMES[$i]}"
    n=$(awk '/ requests in /{print $1}' "$out.wrk")
    awk -v n="$n" -v tick="$tick_us" -v name="${NAMES[$i]}" '
      FNR == NR { r0[$1] += $2; u0[$1] += $3; s0[$1] += $4; next }
      { r1[$1] += $2; u1[$1] += $3; s1[$1] += $4 }
      END { if (n <= 0) exit
        for (t in r1) { d = (r1[t] - r0[t]) / 1000 / n; if (d < 0.005) continue
          printf "| %s | %s | %.2f | %.2f / %.2f |\n", name, t, d, (u1[t]-u0[t])*tick/n, (s1[t]-s0[t])*tick/n } }' \
      "$out.threads0" "$out.threads1"
  done
  for i in "${!NAMES[@]}"; do
    pid=$(serving_pid "$i"); data="$WORK/perf.${NAMES[$i]}.data"
    perf record -q -e cpu-clock -F 4999 ${PERF_CALLGRAPH:+--call-graph "$PERF_CALLGRAPH"} -p "$pid" -o "$data" -- sleep "${PERF_SECONDS:-10}" >/dev/null 2>&1 &
    rec=$!
    $LOADGEN wrk -t1 -c"$CONNS" -d"${PERF_SECONDS:-10}s" -H "$AUTH_HEADER" "${URLS[$i]}" >"$data.wrk" 2>&1 || true
    wait "$rec" || true
    n=$(awk '/ requests in /{print $1}' "$data.wrk")
    echo
    echo "## ${NAMES[$i]}: by object ($n requests; samples at 4999 Hz, so 1 sample = 200 µs of CPU)"
    perf report -i "$data" -n --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8 || true
    echo "## ${NAMES[$i]}: top symbols"
    perf report -i "$data" -n --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -${PERF_TOP:-40} || true
  done
  exit 0
fi
if [[ ${CALLGRIND:-0} == 1 ]]; then
  command -v callgrind_control >/dev/null || die "callgrind needs valgrind: apt-get install valgrind"
  echo
  if [[ -n $CG_SIM ]]; then
    echo "| target | requests | instructions per request | L1 data misses per request | last-level data misses per request |"
    echo "| --- | ---: | ---: | ---: | ---: |"
  else
    echo "| target | requests | instructions per request |"
    echo "| --- | ---: | ---: |"
  fi
  for i in "${!NAMES[@]}"; do
    [[ ${NAMES[$i]} == gerbang-* || ${NAMES[$i]} == *-floor ]] || continue
    pid=${TPIDS[$i]}; d="$WORK/${NAMES[$i]}"; out="$WORK/cg.${NAMES[$i]}"
    # Warm-up (caches filled, pools connected), then the measured requests.
    $LOADGEN wrk -t1 -c"${CG_CONNS:-4}" -d3s -H "$AUTH_HEADER" "${URLS[$i]}" >/dev/null 2>&1
    callgrind_control -i on "$pid" >/dev/null
    $LOADGEN wrk -t1 -c"${CG_CONNS:-4}" -d"${CG_DURATION:-20s}" -H "$AUTH_HEADER" "${URLS[$i]}" >"$out" 2>&1 || true
    callgrind_control -i off "$pid" >/dev/null
    n=$(awk '/ requests in /{print $1}' "$out")
    callgrind_control -d "$pid" >/dev/null; sleep 1
    # Events by name (with CG_CACHE=1: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw), summed over
    # the dumps, per request.
    cat "$d"/callgrind.out* 2>/dev/null | awk -v n="$n" -v name="${NAMES[$i]}" -v sim="$CG_SIM" '
      /^events:/{for(k=2;k<=NF;k++)ev[k]=$k}
      # Each dump has a summary line (zero in some) before its totals line.
      /^summary:/{split("",cur); any=0; for(k=2;k<=NF;k++){cur[ev[k]]=$k; if($k>0)any=1}}
      /^totals:/{for(k=2;k<=NF;k++)sum[ev[k]]+=(any?cur[ev[k]]:$k)}
      END{ if(n<=0)n=1
        if(sim!="") printf "| %s | %s | %.0f | %.1f | %.2f |\n", name, n, sum["Ir"]/n, (sum["D1mr"]+sum["D1mw"])/n, (sum["DLmr"]+sum["DLmw"])/n
        else printf "| %s | %s | %.0f |\n", name, n, sum["Ir"]/n }'
  done
  exit 0
fi
N=${#NAMES[@]}
note "wrk -t$WRK_THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, warm-up $WARMUP, targets: ${NAMES[*]}"
if [[ $WARMUP != 0 ]]; then for i in $(seq 0 $((N - 1))); do run warmup "$i"; done; fi
for r in $(seq 1 "$ROUNDS"); do
  for k in $(seq 0 $((N - 1))); do run "$r" $(( (k + r - 1) % N )); sleep 1; done
done

echo
echo "$(date -u +%Y-%m-%d) $(nproc) CPUs, $(awk -F: '/model name/{print $2; exit}' /proc/cpuinfo | sed 's/^ //'); wrk -t$WRK_THREADS -c$CONNS -d$DURATION, $ROUNDS rounds"
awk -F'\t' -v order="$(IFS=,; echo "${NAMES[*]}")" '
function median(s,  a,n,i,j,t){ n=split(s,a," "); for(i=2;i<=n;i++){t=a[i]; for(j=i-1;j>=1&&a[j]+0>t+0;j--)a[j+1]=a[j]; a[j+1]=t}
  return (n%2)?a[(n+1)/2]:(a[n/2]+a[n/2+1])/2 }
function mn(s,a,n,i,m){n=split(s,a," ");m=a[1];for(i=2;i<=n;i++)if(a[i]+0<m+0)m=a[i];return m}
function mx(s,a,n,i,m){n=split(s,a," ");m=a[1];for(i=2;i<=n;i++)if(a[i]+0>m+0)m=a[i];return m}
{ rps[$2]=rps[$2]" "$3; p50[$2]=p50[$2]" "$4; p99[$2]=p99[$2]" "$5
  eff[$2]=eff[$2]" "($7>0?$6/$7:0); cpu[$2]=cpu[$2]" "(100*$7/$8); err[$2]+=$9
  us[$2]=us[$2]" "($6>0?1e6*$10/$6:0); ks[$2]=ks[$2]" "($6>0?1e6*$11/$6:0) }
END {
  n=split(order,names,","); hasref=("nginx" in rps)
  if (hasref) { R=median(rps["nginx"]); E=median(eff["nginx"]); P=median(p99["nginx"]) }
  print "| target | RPS | spread | p50 ms | p99 ms | CPU% | req/CPU-s | RPS / nginx | req/CPU-s / nginx | p99 / nginx | user µs/req | kernel µs/req | errors |"
  print "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for(k=1;k<=n;k++){ t=names[k]; if(!(t in rps)) continue; m=median(rps[t]); sp=m>0?100*(mx(rps[t])-mn(rps[t]))/m:0
    r1=hasref?sprintf("%.3f",m/R):"-"; r2=hasref?sprintf("%.3f",median(eff[t])/E):"-"; r3=hasref?sprintf("%.3f",median(p99[t])/P):"-"
    printf "| %s | %.0f | %.0f%% | %.2f | %.2f | %.0f | %.0f | %s | %s | %s | %.1f | %.1f | %d |\n",t,m,sp,median(p50[t]),median(p99[t]),median(cpu[t]),median(eff[t]),r1,r2,r3,median(us[t]),median(ks[t]),err[t] }
}' "$RESULTS"
echo
echo "req/CPU-s = requests per CPU-second of the target's own processes (upstream excluded); ratios are to nginx in this run;"
echo "user / kernel µs per request: the same CPU time split into user and system time (clock ticks, so +-1 tick per round)."
