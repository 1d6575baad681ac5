#!/usr/bin/env bash
# One Gerbang build, one pipeline variant, measured beside nginx (and HAProxy) by the shared
# side-by-side benchmark (`PROXY_BENCH`, default ../shared/bench/proxy_bench.sh): the ratios it
# prints are to nginx's bare proxy in the same run. Nothing is built here: give the binary.
#
#   benches/pipeline_bench.sh [BIN] [VARIANT]
#     BIN      a gerbang binary (default target/release/gerbang: `cargo build --release` first)
#     VARIANT  full      bearer token + agreement, metrics on, audit with fsync = "interval"
#              bare      bearer token + agreement, metrics and audit off
#              limited   full + the agreement has a rate limit and a daily quota (local limiter)
#              redis     limited, with the limits shared through Redis (a redis-server of this
#                        script on a free port; needs Debian's redis-server)
#
# Environment: everything proxy_bench.sh reads (ROUNDS, DURATION, CONNS, HAPROXY, ...);
# GW_PORT (18090) and GW_ADMIN_PORT (18091); the upstream is proxy_bench's (UPSTREAM_PORT, 18080).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/gerbang}
VARIANT=${2:-full}
PROXY_BENCH=${PROXY_BENCH:-$ROOT/../shared/bench/proxy_bench.sh}
GW_PORT=${GW_PORT:-18090}
GW_ADMIN_PORT=${GW_ADMIN_PORT:-18091}
UPSTREAM_PORT=${UPSTREAM_PORT:-18080}
SERVER_CPU=${SERVER_CPU:-1}

die() { echo "pipeline_bench: $*" >&2; exit 1; }
[[ -x $BIN ]] || die "no gerbang binary at $BIN (cargo build --release, or give its path)"
[[ -f $PROXY_BENCH ]] || die "no proxy_bench.sh at $PROXY_BENCH (set PROXY_BENCH)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pipeline_bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

metrics=true; audit=true; limits=""; cluster=""
case $VARIANT in
  full) ;;
  bare) metrics=false; audit=false ;;
  limited) limits='rate_limit = { limit = 1000000, per = "second", burst = 1000000 }
quota = { limit = 1000000000, per = "day" }' ;;
  redis)
    limits='rate_limit = { limit = 1000000, per = "second", burst = 1000000 }
quota = { limit = 1000000000, per = "day" }'
    command -v redis-server >/dev/null || die "redis-server is needed (apt-get install -y redis-server)"
    REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    # Redis on the server CPU beside the proxies: its cost is part of what is measured.
    taskset -c "$SERVER_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    cluster="[cluster]
replica_id = \"bench\"
redis_url = \"redis://127.0.0.1:$REDIS_PORT/0\"
expected_replicas = 1" ;;
  *) die "unknown variant $VARIANT (full, bare, limited, redis)" ;;
esac

SECRET=bench-secret-0123456789
HASH=$(printf '%s' "$SECRET" | "$BIN" hash-secret)
mkdir -p "$WORK/registry" "$WORK/agreements" "$WORK/data"
cat >"$WORK/gerbang.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
worker_threads = 1
[admin]
listen = "127.0.0.1:$GW_ADMIN_PORT"
watch_files = false
[log]
level = "warn"
[paths]
data_dir = "$WORK/data"
[auth]
issuer = "http://gerbang.bench"
[metrics]
enabled = $metrics
[audit]
enabled = $audit
fsync = "interval"
$cluster
EOF
cat >"$WORK/registry/bench.toml" <<EOF
[agency]
id = "bench"
name = "Benchmark"
[[service]]
id = "up"
name = "Fixed upstream"
[[service.instance]]
name = "up-1"
url = "http://127.0.0.1:$UPSTREAM_PORT"
EOF
cat >"$WORK/registry/client.toml" <<EOF
[agency]
id = "loadgen"
name = "Load generator"
[[application]]
id = "client"
name = "wrk"
auth_methods = ["client_secret"]
client_secret_hashes = ["$HASH"]
EOF
cat >"$WORK/agreements/bench.toml" <<EOF
[[agreement]]
id = "bench-up"
title = "Benchmark"
legal_basis = "benchmark"
service = "bench/up"
consumers = ["loadgen/client"]
methods = ["GET"]
max_classification = "terbatas"
$limits
EOF
"$BIN" rotate-key --config "$WORK/gerbang.toml" >/dev/null 2>&1 || die "rotate-key failed"
taskset -c "$SERVER_CPU" "$BIN" serve --config "$WORK/gerbang.toml" >"$WORK/gerbang.log" 2>&1 &
GW_PID=$!; PIDS+=("$GW_PID")
for _ in $(seq 100); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$GW_ADMIN_PORT/health/ready" && break; sleep 0.1; done
TOKEN=$(curl -s -u "loadgen%2Fclient:$SECRET" -d grant_type=client_credentials "http://127.0.0.1:$GW_PORT/oauth/token" \
  | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
[[ $TOKEN == ey* ]] || die "no token from the gateway: $(cat "$WORK/gerbang.log")"
echo "# gerbang $("$BIN" --version 2>/dev/null || echo '?') ($BIN), variant $VARIANT" >&2

TARGET_URL="http://127.0.0.1:$GW_PORT/bench/up/" TARGET_NAME="gerbang-$VARIANT" \
  TARGET_HEADER="Authorization: Bearer $TOKEN" HEADERS_TO_ALL=1 TARGET_PID=$GW_PID \
  UPSTREAM_PORT=$UPSTREAM_PORT SERVER_CPU=$SERVER_CPU \
  bash "$PROXY_BENCH"
