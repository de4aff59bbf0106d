#!/bin/bash
# One saturated run of N webhooks (fail-first FAIL) with pg_stat_statements and a 6 s CPU profile of the engine:
#   profile.sh BIN [N] [FAIL] [OUT]   (FIRE_ARGS passes whbench flags, e.g. --rate 150)
# Needs the shared harness (BENCH, default ../shared/bench beside the repository).
set -euo pipefail
here=${BENCH:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}/scripts; bin=${1:?bin}; n=${2:-5000}; fail=${3:-0}; out=${4:-/tmp/prof}
mkdir -p $out
pg=$(mktemp -d); chmod 755 "$pg"; trap '"$here/pgtmp.sh" stop "$pg/c" >/dev/null 2>&1; rm -rf "$pg"' EXIT
dsn=$("$here/pgtmp.sh" start "$pg/c")
echo "shared_preload_libraries = 'pg_stat_statements'" >>"$pg/c/data/postgresql.conf"
echo "pg_stat_statements.track = all" >>"$pg/c/data/postgresql.conf"; echo "pg_stat_statements.track_planning = on" >>"$pg/c/data/postgresql.conf"
"$here/pgtmp.sh" stop "$pg/c" >/dev/null; dsn=$("$here/pgtmp.sh" start "$pg/c"); export PGPID=$(head -1 "$pg/c/data/postmaster.pid")
ENGINE_ENV="HOOKSTREAM_ALLOW_CIDRS=127.0.0.0/8 HOOKSTREAM_LOG_LEVEL=warn HOOKSTREAM_PPROF_ADDR=127.0.0.1:6061" DEST_EXTRA=',"circuit_breaker_enabled":false' \
  SYSTEM=hookstream PRE_FIRE="psql -q '$dsn' -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' -c 'SELECT pg_stat_statements_reset()'; (sleep 1; curl -s -o $out/cpu.pprof 'http://127.0.0.1:6061/debug/pprof/profile?seconds=${PROFILE_SECONDS:-5}') &" \
  "$here/bench-engine.sh" "$out/out.jsonl" 1 $fail "$dsn" "$bin" "$n" 32 >/dev/null 2>&1
psql -q "$dsn" -X -A -F ' | ' -c "SELECT round(total_exec_time::numeric,0) AS ms, round(total_plan_time::numeric,0) AS plan_ms, round(plans::numeric/$n,2) AS plans_per_webhook, round(calls::numeric/$n,2) AS calls_per_webhook,
  round(rows::numeric/$n,2) AS rows_per_webhook, round(wal_bytes::numeric/$n) AS wal_b_per_webhook,
  round(wal_fpi::numeric/$n,2) AS fpi_per_webhook, round(shared_blks_dirtied::numeric/$n,2) AS dirtied_per_webhook,
  left(regexp_replace(query,'\s+',' ','g'),110) AS query
  FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname='hsbench')
  ORDER BY total_exec_time DESC LIMIT 25"
psql -q "$dsn" -X -A -t -c "SELECT 'total: '||round(sum(total_exec_time)::numeric,0)||' ms, '||round(sum(calls)::numeric/$n,1)||' statements per webhook' FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname='hsbench')"
psql -q "${dsn%/*}/hsbench" -X -A -F ' | ' -c "SELECT event_type, count(*) AS events, round(avg(pg_column_size(payload))) AS payload_bytes, round(avg(pg_column_size(e.*))) AS row_bytes FROM events e GROUP BY 1 ORDER BY 2 DESC"
psql -q "${dsn%/*}/hsbench" -X -A -c "SELECT payload FROM events WHERE event_type = 'DeliveryAttempted' ORDER BY global_position DESC LIMIT 1"
# Row writes per webhook and how many updates stayed HOT (no new index entries).
psql -q "${dsn%/*}/hsbench" -X -A -F ' | ' -c "SELECT relname, round(n_tup_ins::numeric/$n,2) AS ins_per_webhook, round(n_tup_upd::numeric/$n,2) AS upd_per_webhook,
  round(n_tup_hot_upd::numeric/$n,2) AS hot_upd_per_webhook, round(n_tup_del::numeric/$n,2) AS del_per_webhook
  FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > $n / 10 ORDER BY n_tup_ins + n_tup_upd DESC"
