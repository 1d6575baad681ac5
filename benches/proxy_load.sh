#!/usr/bin/env bash
# Load benchmark: Gerbang against nginx as a reference reverse proxy, side by side.
#
#   benches/proxy_load.sh                      # 5 rounds of 10 s each, 64 connections
#   ROUNDS=3 DURATION=5s CONNS=128 benches/proxy_load.sh
#
# It builds the release binary, starts a fixed upstream (`gerbang bench-upstream`: 1 KiB JSON),
# nginx as a reverse proxy with one worker (when nginx is installed) and Gerbang with one worker
# thread, both in front of that upstream. wrk drives each target in interleaved rounds (the order
# rotates every round, so drift on a shared machine hits everyone alike). On a machine with two
# or more cores wrk is pinned to one CPU and the upstream and proxies to another.
#
# Gerbang authenticates every call: wrk sends the same bearer token (from the gateway's own
# /oauth/token) on every request, so the verified-token cache is what is measured. To compare
# with the proxy without authentication, set BARE_BIN to a gerbang binary built from a commit
# before authentication existed (a861b4a): it runs as target `bare` on the same upstream.
#
# Printed per target: median RPS, spread, p50/p99 latency, CPU use, requests per CPU-second of the
# target process, and ratios to nginx. Needs: wrk (apt-get install wrk); nginx optional.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
BASE_PORT=${BASE_PORT:-18200}
UP_PORT=$BASE_PORT
NGX_PORT=$((BASE_PORT + 1))
GW_PORT=$((BASE_PORT + 2))
GW_ADMIN_PORT=$((BASE_PORT + 3))
BARE_PORT=$((BASE_PORT + 4))
BARE_ADMIN_PORT=$((BASE_PORT + 5))

die() { echo "proxy_load: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }

command -v wrk >/dev/null || die "wrk is needed: apt-get install wrk"
NGINX=$(command -v nginx || true)
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
for p in "$UP_PORT" "$NGX_PORT" "$GW_PORT" "$GW_ADMIN_PORT" "$BARE_PORT" "$BARE_ADMIN_PORT"; do
  [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] || die "port $p is in use (set BASE_PORT)"
done

if (( $(nproc) >= 2 )); then
  LOADGEN="taskset -c 1"; SERVER="taskset -c 0"
  note "pinning: wrk -> CPU 1; upstream and proxies -> CPU 0"
else
  LOADGEN=""; SERVER=""
  note "one CPU: no pinning"
fi

note "building the release binary"
(cd "$ROOT" && cargo build --release -q -p gerbang)
BIN="$ROOT/target/release/gerbang"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/proxy_load.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------- upstream
$SERVER "$BIN" bench-upstream --listen "127.0.0.1:$UP_PORT" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)

# ---------------------------------------------------------------- nginx (reference)
NAMES=(); URLS=(); TPIDS=()
if [[ -n $NGINX ]]; then
  mkdir -p "$WORK/nginx/tmp"
  user_line=""; [[ $EUID == 0 ]] && user_line="user nobody $(getent group nogroup >/dev/null && echo nogroup || echo nobody);"
  cat >"$WORK/nginx/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  keepalive_requests 100000;
  upstream bench_upstream { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 100000; }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  $SERVER "$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >"$WORK/nginx/out.log" 2>&1 &
  NGX_PID=$!; PIDS+=("$NGX_PID")
  NAMES+=(nginx); URLS+=("http://127.0.0.1:$NGX_PORT/"); TPIDS+=("$NGX_PID")
else
  note "nginx not installed: Gerbang is measured alone (apt-get install nginx-light for the reference)"
fi

# ---------------------------------------------------------------- gerbang
SECRET=bench-secret-0123456789
HASH=$(echo "$SECRET" | "$BIN" hash-secret)
mkdir -p "$WORK/gerbang/registry"
cat >"$WORK/gerbang/gerbang.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
worker_threads = 1
[admin]
listen = "127.0.0.1:$GW_ADMIN_PORT"
[log]
level = "warn"
EOF
cat >"$WORK/gerbang/registry/bench.toml" <<EOF
[agency]
id = "bench"
name = "Benchmark"
[[service]]
id = "up"
name = "Fixed upstream"
[[service.instance]]
name = "up-1"
url = "http://127.0.0.1:$UP_PORT"
EOF
cat >"$WORK/gerbang/registry/client.toml" <<EOF
[agency]
id = "loadgen"
name = "Load generator"
[[application]]
id = "client"
name = "wrk"
auth_methods = ["client_secret"]
client_secret_hashes = ["$HASH"]
EOF
"$BIN" rotate-key --config "$WORK/gerbang/gerbang.toml" >/dev/null 2>&1
$SERVER "$BIN" serve --config "$WORK/gerbang/gerbang.toml" >"$WORK/gerbang/out.log" 2>&1 &
GW_PID=$!; PIDS+=("$GW_PID")
NAMES+=(gerbang); URLS+=("http://127.0.0.1:$GW_PORT/bench/up/"); TPIDS+=("$GW_PID")
for _ in $(seq 100); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$GW_ADMIN_PORT/health/ready" && break; sleep 0.1; done
TOKEN=$(curl -s -u "loadgen%2Fclient:$SECRET" -d grant_type=client_credentials "http://127.0.0.1:$GW_PORT/oauth/token" \
  | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
[[ $TOKEN == ey* ]] || die "no token from the gateway (logs in $WORK)"
AUTH_HEADER="Authorization: Bearer $TOKEN"

if [[ -n ${BARE_BIN:-} ]]; then
  # The same service on a build without authentication (no [auth], no applications).
  mkdir -p "$WORK/bare/registry"
  sed -e "s/$GW_PORT/$BARE_PORT/" -e "s/$GW_ADMIN_PORT/$BARE_ADMIN_PORT/" "$WORK/gerbang/gerbang.toml" >"$WORK/bare/gerbang.toml"
  cp "$WORK/gerbang/registry/bench.toml" "$WORK/bare/registry/"
  $SERVER "$BARE_BIN" serve --config "$WORK/bare/gerbang.toml" >"$WORK/bare/out.log" 2>&1 &
  BARE_PID=$!; PIDS+=("$BARE_PID")
  NAMES+=(bare); URLS+=("http://127.0.0.1:$BARE_PORT/bench/up/"); TPIDS+=("$BARE_PID")
fi

NAMES=(upstream "${NAMES[@]}"); URLS=("http://127.0.0.1:$UP_PORT/" "${URLS[@]}"); TPIDS=("${PIDS[0]}" "${TPIDS[@]}")

for i in "${!NAMES[@]}"; do
  ok=""
  for _ in $(seq 100); do
    if out=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 1 -H "$AUTH_HEADER" "${URLS[$i]}"); then ok=$out; break; fi
    sleep 0.1
  done
  [[ $ok == "200 1024" ]] || die "${NAMES[$i]} at ${URLS[$i]} answered '${ok:-nothing}', want '200 1024' (logs in $WORK)"
done

# utime+stime (clock ticks) of a process and all its descendants (nginx's worker is a child).
cpu_ticks() {
  local total=0 p s f
  for p in $(ps -e -o pid=,ppid= | awk -v r="$1" '{par[$1]=$2} END { for (p in par) { q=p; n=0; while (q != r && (q in par) && q > 1 && n++ < 64) q=par[q]; if (q == r) print p } }'); do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }; read -r -a f <<<"$s"
    total=$(( total + f[11] + f[12] ))
  done
  echo "$total"
}
CLK=$(getconf CLK_TCK)
ms() { awk -v v="$1" 'BEGIN{ n=v+0; u=v; sub(/^[0-9.]+/,"",u); if(u=="us")n/=1000; else if(u=="s")n*=1000; printf "%.3f", n }'; }

RESULTS="$WORK/results.tsv"; : >"$RESULTS"
run() {  # round index
  local round=$1 i=$2 dur=$DURATION
  [[ $round == warmup ]] && dur=$WARMUP
  local c0 c1 t0 t1 out="$WORK/wrk.$round.${NAMES[$i]}"
  c0=$(cpu_ticks "${TPIDS[$i]}"); t0=$(date +%s.%N)
  # Every target gets the same header; only Gerbang reads it.
  $LOADGEN wrk -t"$WRK_THREADS" -c"$CONNS" -d"$dur" --latency -H "$AUTH_HEADER" "${URLS[$i]}" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
  t1=$(date +%s.%N); c1=$(cpu_ticks "${TPIDS[$i]}")
  [[ $round == warmup ]] && return
  local rps p50 p99 req errs
  rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
  p50=$(ms "$(awk '/^ +50%/{print $2}' "$out")"); p99=$(ms "$(awk '/^ +99%/{print $2}' "$out")")
  req=$(awk '/ requests in /{print $1}' "$out")
  errs=$(awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(",",""); n+=$4+$6+$8+$10} END{print n+0}' "$out")
  local cpu wall
  cpu=$(awk -v a="$c0" -v b="$c1" -v t="$CLK" 'BEGIN{printf "%.2f", (b-a)/t}')
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "${NAMES[$i]}" "$rps" "$p50" "$p99" "$req" "$cpu" "$wall" "$errs" >>"$RESULTS"
  note "round $round $(printf '%-9s' "${NAMES[$i]}") rps=$rps p50=${p50}ms p99=${p99}ms cpu_s=$cpu errors=$errs"
}

note "wrk -t$WRK_THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, warm-up $WARMUP"
# TARGETS="gerbang bare" measures only those (all started targets by default).
if [[ -n ${TARGETS:-} ]]; then
  KEEP_N=(); KEEP_U=(); KEEP_P=()
  for i in "${!NAMES[@]}"; do
    if [[ " $TARGETS " == *" ${NAMES[$i]} "* ]]; then
      KEEP_N+=("${NAMES[$i]}"); KEEP_U+=("${URLS[$i]}"); KEEP_P+=("${TPIDS[$i]}")
    fi
  done
  NAMES=("${KEEP_N[@]}"); URLS=("${KEEP_U[@]}"); TPIDS=("${KEEP_P[@]}")
fi
N=${#NAMES[@]}
for i in $(seq 0 $((N - 1))); do run warmup "$i"; done
for r in $(seq 1 "$ROUNDS"); do
  for k in $(seq 0 $((N - 1))); do run "$r" $(( (k + r - 1) % N )); sleep 1; done
done

echo
awk -F'\t' -v order="$(IFS=,; echo "${NAMES[*]}")" '
function median(s,  a,n,i,j,t){ n=split(s,a," "); for(i=2;i<=n;i++){t=a[i]; for(j=i-1;j>=1&&a[j]+0>t+0;j--)a[j+1]=a[j]; a[j+1]=t}
  return (n%2)?a[(n+1)/2]:(a[n/2]+a[n/2+1])/2 }
function mn(s,a,n,i,m){n=split(s,a," ");m=a[1];for(i=2;i<=n;i++)if(a[i]+0<m+0)m=a[i];return m}
function mx(s,a,n,i,m){n=split(s,a," ");m=a[1];for(i=2;i<=n;i++)if(a[i]+0>m+0)m=a[i];return m}
{ rps[$2]=rps[$2]" "$3; p50[$2]=p50[$2]" "$4; p99[$2]=p99[$2]" "$5
  eff[$2]=eff[$2]" "($7>0?$6/$7:0); cpu[$2]=cpu[$2]" "(100*$7/$8); err[$2]+=$9 }
END {
  n=split(order,names,","); hasref=("nginx" in rps)
  if (hasref) { R=median(rps["nginx"]); E=median(eff["nginx"]); P=median(p99["nginx"]) }
  printf "%-9s %11s %7s %9s %9s %6s %11s %9s %9s %9s %6s\n","target","RPS(median)","spread","p50(ms)","p99(ms)","CPU%","req/CPU-s","RPS/ngx","eff/ngx","p99/ngx","errors"
  for(k=1;k<=n;k++){ t=names[k]; m=median(rps[t]); sp=m>0?100*(mx(rps[t])-mn(rps[t]))/m:0
    r1=hasref?sprintf("%9.3f",m/R):sprintf("%9s","-"); r2=hasref?sprintf("%9.3f",median(eff[t])/E):sprintf("%9s","-")
    r3=hasref?sprintf("%9.3f",median(p99[t])/P):sprintf("%9s","-")
    printf "%-9s %11.0f %6.1f%% %9.3f %9.3f %6.0f %11.0f %s %s %s %6d\n",t,m,sp,median(p50[t]),median(p99[t]),median(cpu[t]),median(eff[t]),r1,r2,r3,err[t] }
}' "$RESULTS"
echo
# With a pre-authentication build alongside: the cost of authentication as the median of the
# per-round ratios (the two ran back to back in every round, so machine drift cancels).
if [[ " ${NAMES[*]} " == *" bare "* && " ${NAMES[*]} " == *" gerbang "* ]]; then
  awk -F'\t' '$2=="gerbang"{g[$1]=$3; ge[$1]=($7>0?$6/$7:0)} $2=="bare"{b[$1]=$3; be[$1]=($7>0?$6/$7:0)}
    function med(a,n,  i,j,t){ for(i=2;i<=n;i++){t=a[i]; for(j=i-1;j>=1&&a[j]>t;j--)a[j+1]=a[j]; a[j+1]=t} return (n%2)?a[(n+1)/2]:(a[n/2]+a[n/2+1])/2 }
    END { n=0; for (r in g) if (r in b && b[r]>0 && be[r]>0) { n++; x[n]=g[r]/b[r]; y[n]=ge[r]/be[r] }
      if (n) printf "authentication on / off (gerbang / bare), median of %d paired rounds: RPS %.3f, req per CPU-second %.3f\n", n, med(x,n), med(y,n) }' "$RESULTS"
fi
echo "req/CPU-s = requests served per CPU-second of the target process (upstream excluded);"
echo "ratios are to nginx; a target is better when RPS/ngx >= 1, eff/ngx >= 1 and p99/ngx <= 1."
