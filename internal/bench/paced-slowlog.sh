#!/bin/bash
# One paced run (150 webhooks/s, 2,000) with PostgreSQL logging statements over 20 ms, lock waits and
# checkpoints into OUT, and the engine's request log:
#   paced-slowlog.sh BIN [OUT]
set -euo pipefail
here=${BENCH:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}/scripts; bin=${1:?bin}; out=${2:-/tmp/paced}
rm -rf $out; mkdir -p $out
pg=$(mktemp -d); chmod 755 "$pg"; trap '"$here/pgtmp.sh" stop "$pg/c" >/dev/null 2>&1; cp $pg/c/data/log/* $out/ 2>/dev/null; rm -rf "$pg"' EXIT
dsn=$("$here/pgtmp.sh" start "$pg/c")
cat >>"$pg/c/data/postgresql.conf" <<CONF
log_min_duration_statement = 20
logging_collector = on
log_directory = 'log'
log_line_prefix = '%m [%p] '
log_lock_waits = on
deadlock_timeout = 20ms
log_checkpoints = on
log_autovacuum_min_duration = 0
CONF
"$here/pgtmp.sh" stop "$pg/c" >/dev/null; dsn=$("$here/pgtmp.sh" start "$pg/c"); export PGPID=$(head -1 "$pg/c/data/postmaster.pid")
FIRE_ARGS="--rate 150" ENGINE_ENV="HOOKSTREAM_ALLOW_CIDRS=127.0.0.0/8 HOOKSTREAM_LOG_LEVEL=info" DEST_EXTRA=',"circuit_breaker_enabled":false' \
  "$here/bench-engine.sh" "$out/out.jsonl" 1 0 "$dsn" "$bin" 2000 32 >/dev/null 2>&1
