#!/usr/bin/env bash
# How long a large configuration takes to check and to reload live: SERVICES services (default
# 1,000, in 100 agencies) and AGREEMENTS agreements (default 10,000, spread over the services),
# with a call every 20 ms through the gateway during the reloads to show none fails.
#
#   cargo build --release && benches/reload_scale.sh [BIN]
#
# Prints the time of `gerbang validate`, of each `POST /admin/reload` (RELOADS, default 5), and
# the calls made during them with their statuses. Loopback only; nothing is built.
#
# Measured 2026-12-02 (a108a6a, 2-core machine): validate 0.23 s; five reloads 0.27-0.36 s
# each; 103 calls during them, all 200. Before d33b8e2, with the agreements in one file,
# validate did not finish in over a minute (each agreement's line was looked up by parsing
# the whole file again).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/gerbang}
SERVICES=${SERVICES:-1000}
AGREEMENTS=${AGREEMENTS:-10000}
RELOADS=${RELOADS:-5}
PORT=${PORT:-18300}
ADMIN_PORT=$((PORT + 1))
[[ -x $BIN ]] || { echo "reload_scale: no binary at $BIN (cargo build --release)" >&2; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/reload_scale.XXXXXX")
PID=""
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; kill "${UP:-}" 2>/dev/null; [[ ${KEEP:-0} == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT

ADMIN_TOKEN=reload-scale-admin-token-0123456789
API_KEY=gk_$(printf '7%.0s' $(seq 64))
ADMIN_DIGEST=$(printf '%s' "$ADMIN_TOKEN" | sha256sum | cut -c1-64)
KEY_DIGEST=$(printf '%s' "$API_KEY" | sha256sum | cut -c1-64)
mkdir -p "$WORK/registry" "$WORK/agreements" "$WORK/data"
python3 - "$WORK" "$SERVICES" "$AGREEMENTS" "$KEY_DIGEST" "$PORT" <<'PY'
import sys
work, services, agreements, key, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
agencies = 100
per_agency = max(1, services // agencies)
for a in range(agencies):
    lines = [f'[agency]\nid = "opd{a}"\nname = "OPD {a}"\n',
             f'[[application]]\nid = "app"\nname = "App {a}"\nauth_methods = ["api_key"]\n'
             + f'api_keys = [{{ digest = "sha256:{key if a == 0 else format(a, "064x")}" }}]\n']
    for s in range(per_agency):
        lines.append(f'[[service]]\nid = "svc{s}"\nname = "Layanan {s}"\n'
                     f'[[service.instance]]\nname = "i1"\nurl = "http://127.0.0.1:{int(port) + 2}"\n'
                     f'[[service.endpoint]]\nmethod = "GET"\npath = "/data/{{id}}"\nclassification = "terbatas"\n')
    open(f"{work}/registry/opd{a}.toml", "w").write("\n".join(lines))
out = []
for i in range(agreements):
    svc = i % (agencies * per_agency)
    out.append(f'[[agreement]]\nid = "pks-{i}"\ntitle = "PKS {i}"\nlegal_basis = "uji"\n'
               f'service = "opd{svc // per_agency}/svc{svc % per_agency}"\n'
               f'consumers = ["opd{(i // (agencies * per_agency) * 7 + i) % agencies}/app"]\nendpoints = ["GET /data/{{id}}"]\n'
               f'purposes = ["p{i % 7}"]\nmax_classification = "terbatas"\n')
open(f"{work}/agreements/all.toml", "w").write("\n".join(out))
PY
cat >"$WORK/gerbang.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
worker_threads = 1
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
watch_files = false
tokens = [{ name = "bench", digest = "sha256:$ADMIN_DIGEST", role = "admin" }]
[log]
level = "warn"
[paths]
data_dir = "$WORK/data"
[auth]
issuer = "http://gerbang.bench"
[audit]
enabled = false
EOF
"$BIN" rotate-key --config "$WORK/gerbang.toml" >/dev/null 2>&1
# A fixed upstream for the calls made during the reloads.
"$BIN" bench-upstream --listen "127.0.0.1:$((PORT + 2))" >/dev/null 2>&1 &
UP=$!
t0=$(date +%s.%N)
"$BIN" validate --config "$WORK/gerbang.toml" >"$WORK/validate.out" 2>&1 || { cat "$WORK/validate.out"; exit 1; }
t1=$(date +%s.%N)
echo "validate: $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s ($(cat "$WORK/validate.out"))"
"$BIN" serve --config "$WORK/gerbang.toml" >"$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 300); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN_PORT/health/ready" && break; sleep 0.1; done
# Calls during the reloads (opd0/app may call opd0/svc0 under pks-0 with purpose p0).
( while [[ ! -e $WORK/stop ]]; do
    curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 -H "X-API-Key: $API_KEY" -H 'X-Gerbang-Purpose: p0' \
      "http://127.0.0.1:$PORT/opd0/svc0/data/1" >>"$WORK/calls.txt"
    sleep 0.02
  done ) &
CALLER=$!
sleep 1
for r in $(seq "$RELOADS"); do
  curl -s -o "$WORK/reload.$r" -w "reload $r: %{time_total} s, HTTP %{http_code}\n" -X POST \
    -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$ADMIN_PORT/admin/reload"
done
sleep 1
# The caller finishes the call it is making (killing it could orphan a curl still in flight,
# which then met the upstream going away below and wrote a 502 after the count).
touch "$WORK/stop"; wait "$CALLER" 2>/dev/null || true
kill "$UP" 2>/dev/null || true
echo "calls during the reloads: $(wc -l <"$WORK/calls.txt"), by status: $(sort "$WORK/calls.txt" | uniq -c | tr '\n' ' ')"
