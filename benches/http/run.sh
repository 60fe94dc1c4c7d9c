#!/usr/bin/env bash
# HTTP read-path benchmark (issue 6): the same random employee lookups
# (10,000 demo employees) through webdis, nginx serving the same JSON as
# static files, and query-api; each plain (200) and conditional (304).
# One run, wrk -t1 -c50, same machine. Needs the demo running
# (scripts/dev demo): reads its Redis. Starts webdis, nginx and a query-api
# of its own (the demo's config, the release binary) on free ports, each
# with BENCH_WORKERS threads or worker processes (default 1: on a 2-core
# machine wrk keeps a core to itself, and no server's threads fight it for
# theirs). BENCH_QUERY_API names another query-api binary.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DUR=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNECTIONS:-50}
WORKERS=${BENCH_WORKERS:-1}
REDIS_PORT=${DEMO_REDIS_PORT:-16379}
QUERY_API=${BENCH_QUERY_API:-${CARGO_TARGET_DIR:-$ROOT/target}/release/query-api}
CONFIG=${FOLDCACHE_CONFIG:-$ROOT/.demo/foldcache.toml}
WORK=$(mktemp -d)
trap 'kill $(cat "$WORK"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WEBDIS_PORT=$(free_port); NGINX_PORT=$(free_port); QUERY_PORT=$(free_port)

FOLDCACHE_CONFIG=$CONFIG FOLDCACHE__HTTP__LISTEN=127.0.0.1:$QUERY_PORT \
  FOLDCACHE__HTTP__METRICS_LISTEN=127.0.0.1:$(free_port) FOLDCACHE__HTTP__WORKER_THREADS=$WORKERS \
  "$QUERY_API" >"$WORK/query-api.log" 2>&1 & echo $! >"$WORK/query-api.pid"

cat >"$WORK/webdis.json" <<JSON
{"redis_host": "127.0.0.1", "redis_port": $REDIS_PORT, "http_host": "127.0.0.1", "http_port": $WEBDIS_PORT,
 "threads": $WORKERS, "pool_size": 20, "daemonize": false, "websockets": false, "database": 0,
 "verbosity": 0, "logfile": "$WORK/webdis.log"}
JSON
webdis "$WORK/webdis.json" & echo $! >"$WORK/webdis.pid"

mkdir -p "$WORK/static" "$WORK/nginx"
cat >"$WORK/nginx.conf" <<CONF
user root;
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  default_type application/json;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$NGINX_PORT; root $WORK/static; etag on; }
}
CONF
/usr/sbin/nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon off;' & echo $! >"$WORK/nginx-master.pid"
sleep 1
for i in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$QUERY_PORT/readyz" >/dev/null 2>&1 && break
  [ "$i" -lt 50 ] || { cat "$WORK/query-api.log" >&2; echo "query-api is not ready (is the demo running?)" >&2; exit 1; }
  sleep 0.2
done
echo "servers: $WORKERS worker thread(s) or process(es) each; wrk -t1 -c$CONNS -d$DUR" >&2
python3 "$HERE/prepare.py" "$QUERY_PORT" "$WEBDIS_PORT" "$NGINX_PORT" "$WORK/static" "$WORK" 10000

declare -A URL=([webdis]="http://127.0.0.1:$WEBDIS_PORT" [nginx]="http://127.0.0.1:$NGINX_PORT" [query]="http://127.0.0.1:$QUERY_PORT")
declare -A RPS P50 P99
for target in webdis nginx query; do
  for kind in 200 304; do
    out=$(wrk -t1 -c"$CONNS" -d"$DUR" --latency -s "$WORK/${target}_${kind}.lua" "${URL[$target]}")
    non2xx=$(echo "$out" | awk '/Non-2xx or 3xx/ {print $NF}')
    RPS[$target$kind]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    P50[$target$kind]=$(echo "$out" | awk '$1=="50%" {print $2}')
    P99[$target$kind]=$(echo "$out" | awk '$1=="99%" {print $2}')
    echo "$target $kind: ${RPS[$target$kind]} req/s p50 ${P50[$target$kind]} p99 ${P99[$target$kind]} ${non2xx:+(non-2xx/3xx: $non2xx)}" >&2
  done
done
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
echo
echo "| target | kind | req/s | p50 | p99 | / webdis | / nginx |"
echo "|---|---|---:|---:|---:|---:|---:|"
for target in webdis nginx query; do
  for kind in 200 304; do
    r=${RPS[$target$kind]}
    echo "| $target | $kind | $r | ${P50[$target$kind]} | ${P99[$target$kind]} | $(ratio "$r" "${RPS[webdis$kind]}") | $(ratio "$r" "${RPS[nginx$kind]}") |"
  done
done
