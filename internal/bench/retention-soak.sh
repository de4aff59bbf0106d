#!/bin/bash
# Retention soak (issue 15): webhooks at a steady RATE for MINUTES with a
# 5-minute payload retention and a HISTORY_MINUTES history retention
# (default 10; 0 keeps the history), sampling every 10 s: deliveries, database and
# table sizes, the engine's memory, and the latency of GET /v1/events and
# GET /v1/delivery-attempts. Then soak-summary.py compares the first and the
# last 5 minutes. STATEMENTS=1 also prints the soak's top statements
# (pg_stat_statements). PPROF_ADDR=127.0.0.1:PORT serves the engine's pprof
# there (heap profiles during the soak).
#   retention-soak.sh BIN [RATE] [MINUTES] [OUT]
set -euo pipefail
here=${BENCH:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}/scripts
bin=${1:?bin}; rate=${2:-450}; minutes=${3:-30}; out=${4:-/tmp/bench/retention-soak}
history=$(python3 -c "print(${HISTORY_MINUTES:-10} * 60 / 86400)")
mkdir -p "$out"; rm -f "$out"/*.jsonl
pg=$(mktemp -d); chmod 755 "$pg"; trap '"$here/pgtmp.sh" stop "$pg/c" >/dev/null 2>&1; rm -rf "$pg"' EXIT
dsn=$("$here/pgtmp.sh" start "$pg/c")
if [ -n "${STATEMENTS:-}" ]; then # pg_stat_statements over the whole soak, its top statements printed at the end
  printf "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n" >>"$pg/c/data/postgresql.conf"
  "$here/pgtmp.sh" stop "$pg/c" >/dev/null; dsn=$("$here/pgtmp.sh" start "$pg/c")
  psql -q -X "$dsn" -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements'
fi
export PGPID=$(head -1 "$pg/c/data/postmaster.pid")
n=$((rate * minutes * 60))
# A ~1 KB body, as a production webhook's.
pad=$(printf 'x%.0s' $(seq 1 900))
body='{"id":"{{id}}","sent_at_ns":{{ts}},"type":"order.created","data":"'$pad'"}'
monitor=$(cd "$(dirname "$0")" && pwd)/soak-monitor.sh
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
# Before firing: the environment keeps payloads 5 minutes and its history
# HISTORY_MINUTES; the monitor starts.
export SOAK_OUT=$out SOAK_MONITOR=$monitor
PRE_FIRE='env_id=$(api "$u/auth/session" | python3 -c "import sys,json; print(json.load(sys.stdin)[\"env_id\"])");
  api -X PATCH "$u/environments/$env_id" -d "{\"payload_retention_days\": $(python3 -c "print(300/86400)"), \"history_retention_days\": '$history'}" >/dev/null;
  KEY=$key API=$u DB=$edsn ENGINE=$eng SINK=http://127.0.0.1:$sport/_stats METRICS=http://127.0.0.1:'$mport'/metrics "$SOAK_MONITOR" "$SOAK_OUT/monitor.jsonl" & mon=$!'
export PRE_FIRE
ENGINE_ENV="HOOKSTREAM_ALLOW_CIDRS=127.0.0.0/8 HOOKSTREAM_LOG_LEVEL=warn HOOKSTREAM_METRICS_ADDR=127.0.0.1:$mport${PPROF_ADDR:+ HOOKSTREAM_PPROF_ADDR=$PPROF_ADDR}" DEST_EXTRA=',"circuit_breaker_enabled":false' \
  FIRE_ARGS="--rate $rate --body-template $body" SYSTEM=hookstream \
  "$here/bench-engine.sh" "$out/out.jsonl" 1 0 "$dsn" "$bin" "$n" 32 > "$out/fire.log" 2>&1
pkill -f "soak-monitor.sh $out/monitor.jsonl" 2>/dev/null || true
python3 "$(dirname "$0")/soak-summary.py" "$out/monitor.jsonl" "$rate"
if [ -n "${STATEMENTS:-}" ]; then
  psql -q -X -A -F ' | ' "$dsn" -c "SELECT round(total_exec_time::numeric) AS ms, calls, rows, round(wal_bytes::numeric/1048576) AS wal_mb,
    left(regexp_replace(query, '\s+', ' ', 'g'), 120) AS query
    FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'hsbench') ORDER BY total_exec_time DESC LIMIT 30" | tee "$out/statements.txt"
fi
