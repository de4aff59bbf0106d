#!/bin/bash
# What PostgreSQL is asked to write per webhook, River against hookstream, at a steady rate:
#   writes.sh BIN [N] [FAIL]   (FIRE_ARGS, default --rate 150)
# One run of each on one throwaway PostgreSQL; pg_stat_database and pg_stat_wal (the whole cluster) are
# read when the first webhook is sent and WINDOW seconds later (default 13.5: N=2000 at 150/s takes
# 13.3 s; set it to N / rate + 0.2 for other loads): commits, rows inserted and updated, rows read,
# WAL records and bytes, each per webhook. River runs first and its tables are vacuumed before the
# engine's window, so their autovacuum is not counted against the engine.
set -euo pipefail
here=${BENCH:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}/scripts; bin=${1:?bin}; n=${2:-2000}; fail=${3:-0}
export FIRE_ARGS=${FIRE_ARGS:---rate 150}
pg=$(mktemp -d); chmod 755 "$pg"; wout=$(mktemp -d)
trap '"$here/pgtmp.sh" stop "$pg/c" >/dev/null 2>&1; rm -rf "$pg" "$wout"' EXIT
dsn=$("$here/pgtmp.sh" start "$pg/c"); export PGPID=$(head -1 "$pg/c/data/postmaster.pid")
window=${WINDOW:-13.5}
export dsn wout window
snap() { psql -X -A -t "$dsn" -c "SELECT sum(xact_commit), sum(tup_inserted), sum(tup_updated), sum(tup_fetched),
  (SELECT wal_records FROM pg_stat_wal), (SELECT wal_bytes FROM pg_stat_wal) FROM pg_stat_database" >"$wout/$1"; }
export -f snap
# riverbench has no hook before the load starts: its first webhook goes out about 2 s after it starts.
(sleep 2; snap r0; sleep "$window"; snap r1) &
SYSTEM=river-tuned "$here/bench-river.sh" "$wout/out.jsonl" 1 "$fail" "$dsn" "$n" 32 --workers 100 --fetch-cooldown 10ms --fetch-poll 100ms >/dev/null 2>&1
wait
psql -X -q "$dsn" -c 'VACUUM' >/dev/null
PRE_FIRE="(snap h0; sleep \$window; snap h1) &" SYSTEM=hookstream ENGINE_ENV="HOOKSTREAM_ALLOW_CIDRS=127.0.0.0/8 HOOKSTREAM_LOG_LEVEL=warn" \
  DEST_EXTRA=',"circuit_breaker_enabled":false' "$here/bench-engine.sh" "$wout/out.jsonl" 1 "$fail" "$dsn" "$bin" "$n" 32 >/dev/null 2>&1
for _ in $(seq 120); do [ -s "$wout/h1" ] && break; sleep 0.5; done # the window may outlast the run
python3 - "$wout" "$n" <<'PY'
import sys
out, n = sys.argv[1], float(sys.argv[2])
names = ['commits', 'rows_inserted', 'rows_updated', 'rows_read', 'wal_records', 'wal_bytes']
print('per webhook | ' + ' | '.join(names))
for s, name in (('r', 'river-tuned'), ('h', 'hookstream')):
    a = [float(x) for x in open(f'{out}/{s}0').read().strip().split('|')]
    b = [float(x) for x in open(f'{out}/{s}1').read().strip().split('|')]
    print(name + ' | ' + ' | '.join(f'{(y - x) / n:.2f}' for x, y in zip(a, b)))
PY
