#!/usr/bin/env bash
# Random reads at scale (issue 14): N employees (default 1,000,000) in one
# private Redis, query-api's in-process cache bounded at 100,000 entries (the
# default `http.local_cache_entries`), and wrk requesting ids drawn uniformly
# from all N, through query-api (`GET /v1/employees/{id}`, open mode: the
# full view) and through webdis (`/HGETALL/fc:g1:employees:{id}`), same
# Redis, same ids. One run each, wrk -t1 -c50, same machine.
#
# The data is folded by ingest's own code without a broker
# (benches/http_scale.rs). Needs release binaries (cargo build --release
# --workspace --bins), wrk and webdis on PATH. BENCH_QUERY_API names another
# query-api binary to measure; BENCH_BASELINE_QUERY_API, one to measure
# beside it in the same run (an older build: before/after figures);
# BENCH_REDIS_PORT, the Redis of an http_scale already running (no fold);
# BENCH_WORKERS, the threads of each server (default 1).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
N=${1:-1000000}
DUR=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-5s}
CONNS=${BENCH_CONNECTIONS:-50}
CACHE_ENTRIES=${BENCH_CACHE_ENTRIES:-100000}
# Threads of each server (webdis's, query-api's `http.worker_threads`):
# the same for both, as in benches/http/run.sh.
WORKERS=${BENCH_WORKERS:-1}
QUERY_API=${BENCH_QUERY_API:-${CARGO_TARGET_DIR:-$ROOT/target}/release/query-api}
BASELINE=${BENCH_BASELINE_QUERY_API:-}
WORK=$(mktemp -d)
stop() {
  local f
  for f in "$WORK"/*.pid; do
    [ -e "$f" ] || continue
    # The data holder runs in its own process group (cargo and the bench).
    if [ "$(basename "$f")" = data.pid ]; then kill -- -"$(cat "$f")" 2>/dev/null || true
    else kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  sleep 0.5
  rm -rf "$WORK"
}
trap stop EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
log() { printf '==> %s\n' "$*" >&2; }

if [ -n "${BENCH_REDIS_PORT:-}" ]; then
  # A data holder already running (cargo bench --bench http_scale -- N).
  REDIS_PORT=$BENCH_REDIS_PORT
else
  log "folding $N employees into a private Redis (benches/http_scale.rs)"
  setsid sh -c "cd '$ROOT' && exec cargo bench --quiet --bench http_scale -- $N" >"$WORK/data.out" 2>"$WORK/data.err" &
  echo $! >"$WORK/data.pid"
  until grep -q '^redis-port ' "$WORK/data.out" 2>/dev/null; do
    kill -0 "$(cat "$WORK/data.pid")" 2>/dev/null || { cat "$WORK/data.err" >&2; exit 1; }
    sleep 1
  done
  REDIS_PORT=$(awk '/^redis-port/ {print $2}' "$WORK/data.out")
  grep -v '^\s*$' "$WORK/data.err" | tail -n 1 >&2
fi
REDIS_MB=$(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ {printf "%.0f", $2 / 1048576}')
log "Redis on $REDIS_PORT: $(redis-cli -p "$REDIS_PORT" dbsize) keys, $REDIS_MB MiB"

WEBDIS_PORT=$(free_port)
declare -A URL=([webdis]="http://127.0.0.1:$WEBDIS_PORT") METRICS
start_query_api() { # target name, binary
  local port metrics
  port=$(free_port); metrics=$(free_port)
  cat >"$WORK/$1.toml" <<TOML
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
key_prefix = "fc"

[http]
listen = "127.0.0.1:$port"
metrics_listen = "127.0.0.1:$metrics"
local_cache_entries = $CACHE_ENTRIES
worker_threads = $WORKERS

[log]
filter = "warn"
TOML
  FOLDCACHE_CONFIG=$WORK/$1.toml "$2" >"$WORK/$1.log" 2>&1 &
  echo $! >"$WORK/$1.pid"
  URL[$1]="http://127.0.0.1:$port"; METRICS[$1]="http://127.0.0.1:$metrics/metrics"
}
TARGETS=(webdis)
if [ -n "$BASELINE" ]; then start_query_api baseline "$BASELINE"; TARGETS+=(baseline); fi
start_query_api query "$QUERY_API"; TARGETS+=(query)

cat >"$WORK/webdis.json" <<JSON
{"redis_host": "127.0.0.1", "redis_port": $REDIS_PORT, "http_host": "127.0.0.1", "http_port": $WEBDIS_PORT,
 "threads": $WORKERS, "pool_size": 20, "daemonize": false, "websockets": false, "database": 0,
 "verbosity": 0, "logfile": "$WORK/webdis.log"}
JSON
webdis "$WORK/webdis.json" 2>>"$WORK/webdis.log" & echo $! >"$WORK/webdis.pid"

for target in "${TARGETS[@]:1}"; do
  for _ in $(seq 100); do
    curl -fsS "${URL[$target]}/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "${URL[$target]}/readyz" >/dev/null || { cat "$WORK/$target.log" >&2; exit 1; }
done
# Both serve the same employees, first and last.
last=$(printf 'E%06d' "$N")
curl -fsS "${URL[query]}/v1/employees/$last" >/dev/null
curl -fsS "${URL[webdis]}/HGETALL/fc:g1:employees:E000001" >/dev/null

lua() { # name, path format, seed
  cat >"$WORK/$1.lua" <<LUA
math.randomseed($3)
request = function()
  return wrk.format("GET", string.format("$2", math.random($N)))
end
LUA
}
# The warm-up draws other ids than the measured run (a repeated sequence
# would hit the cache by construction); every target gets the same ids.
for target in "${TARGETS[@]}"; do
  path="/v1/employees/E%06d"; [ "$target" = webdis ] && path="/HGETALL/fc:g1:employees:E%06d"
  lua "$target-warmup" "$path" 7
  lua "$target" "$path" 42
done

cache_counts() { # target: hit miss bypassed, from its metrics
  curl -fsS "${METRICS[$1]}" | awk '
    /^foldcache_local_cache_total/ { if ($0 ~ /"hit"/) h=$NF; else if ($0 ~ /"miss"/) m=$NF; else if ($0 ~ /"bypassed"/) b=$NF }
    END { printf "%d %d %d\n", h, m, b }'
}

declare -A RPS P50 P99 HIT_RATE
for target in "${TARGETS[@]}"; do
  # The warm-up fills query-api's cache to its steady state (and Redis's
  # and webdis's connections); only the second run is measured.
  wrk -t1 -c"$CONNS" -d"$WARMUP" -s "$WORK/$target-warmup.lua" "${URL[$target]}" >/dev/null
  [ "$target" != webdis ] && read -r h0 m0 b0 < <(cache_counts "$target")
  load=$(cut -d' ' -f1 /proc/loadavg)
  out=$(wrk -t1 -c"$CONNS" -d"$DUR" --latency -s "$WORK/$target.lua" "${URL[$target]}")
  non2xx=$(echo "$out" | awk '/Non-2xx or 3xx/ {print $NF}')
  RPS[$target]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  P50[$target]=$(echo "$out" | awk '$1=="50%" {print $2}')
  P99[$target]=$(echo "$out" | awk '$1=="99%" {print $2}')
  HIT_RATE[$target]=n/a
  if [ "$target" != webdis ]; then
    read -r h1 m1 b1 < <(cache_counts "$target")
    HIT_RATE[$target]=$(python3 -c "h,m,b=$((h1-h0)),$((m1-m0)),$((b1-b0)); print('%.1f %%' % (100*h/max(1,h+m+b)))")
  fi
  echo "$target: ${RPS[$target]} req/s p50 ${P50[$target]} p99 ${P99[$target]} (load average before: $load) ${non2xx:+(non-2xx/3xx: $non2xx)}" >&2
done
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
echo
echo "$N employees in Redis ($REDIS_MB MiB), query-api cache $CACHE_ENTRIES entries; $WORKERS thread(s) per server; wrk -t1 -c$CONNS -d$DUR, uniform random ids"
echo
echo "| target | req/s | p50 | p99 | / webdis | in-process cache hits |"
echo "|---|---:|---:|---:|---:|---:|"
for target in "${TARGETS[@]}"; do
  echo "| $target | ${RPS[$target]} | ${P50[$target]} | ${P99[$target]} | $(ratio "${RPS[$target]}" "${RPS[webdis]}") | ${HIT_RATE[$target]} |"
done
