#!/bin/bash
# Where PostgreSQL's CPU goes during one run of the engine, by executor stage, from a system-wide perf profile:
#   pgperf.sh BIN [N] [FAIL] [OUT]   (FIRE_ARGS passes whbench flags, e.g. --rate 150; PERF_SECONDS, default 8)
# BIN river profiles the tuned River of side-by-side.sh instead, for comparison.
# pg_stat_statements (make profile) gives each statement's time, which includes its waits; this gives the CPU
# of PostgreSQL's processes, split by what the executor was doing (index and heap insertion, scans, executor
# start-up, planning, commit and WAL flush, decoding parameters), whatever statement it was running.
# Needs perf (Debian: linux-perf) and the shared harness (BENCH, default ../shared/bench beside the repository).
set -euo pipefail
command -v perf >/dev/null || { echo "pgperf: needs perf (apt-get install linux-perf)" >&2; exit 2; }
here=${BENCH:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}/scripts; bin=${1:?bin}; n=${2:-5000}; fail=${3:-0}; out=${4:-/tmp/pgperf}
mkdir -p "$out"; rm -f "$out/perf.data" "$out/out.jsonl"
pg=$(mktemp -d); chmod 755 "$pg"; trap '"$here/pgtmp.sh" stop "$pg/c" >/dev/null 2>&1; rm -rf "$pg"' EXIT
dsn=$("$here/pgtmp.sh" start "$pg/c"); export PGPID=$(head -1 "$pg/c/data/postmaster.pid")
record="perf record -a -g -o $out/perf.data -- sleep ${PERF_SECONDS:-8}"
if [ "$bin" = river ]; then
  # The tuned River of side-by-side.sh, for comparison. Its script has no hook before the fire: the
  # recording starts RIVER_DELAY seconds (default 3) after River's start, which its health check takes.
  (sleep "${RIVER_DELAY:-3}"; $record >/dev/null 2>&1) &
  SYSTEM=river-tuned "$here/bench-river.sh" "$out/out.jsonl" 1 "$fail" "$dsn" "$n" 32 --workers 100 --fetch-cooldown 10ms --fetch-poll 100ms >/dev/null 2>&1
else
  ENGINE_ENV="HOOKSTREAM_ALLOW_CIDRS=127.0.0.0/8 HOOKSTREAM_LOG_LEVEL=warn" DEST_EXTRA=',"circuit_breaker_enabled":false' SYSTEM=hookstream \
    PRE_FIRE="(sleep 1; $record >/dev/null 2>&1) &" \
    "$here/bench-engine.sh" "$out/out.jsonl" 1 "$fail" "$dsn" "$bin" "$n" 32 >/dev/null 2>&1
fi
while pgrep -f "perf record -a -g -o $out/perf.data" >/dev/null; do sleep 0.5; done
python3 -c 'import json,sys; j=json.loads(open(sys.argv[1]).read().splitlines()[-1]); e=j["e2e"]; c=j["cpu"]["proc_cpu_s"]
print("run: %d webhooks, %.0f/s, CPU s: engine %s, postgres %s" % (j["n"], e["deliveries_per_sec"], c.get("engine", 0), c.get("postgres", 0)))' "$out/out.jsonl"
perf script -i "$out/perf.data" --comm postgres -F ip,sym 2>/dev/null | python3 -c '
import sys
samples, cur = [], []
for line in sys.stdin:
    line = line.strip()
    if not line:
        if cur: samples.append(cur); cur = []
        continue
    parts = line.split(None, 1)
    cur.append(parts[1] if len(parts) > 1 else parts[0])
if cur: samples.append(cur)
n = len(samples) or 1
print(f"{len(samples)} samples of PostgreSQL processes; share of them whose stack holds the function (stages overlap)")
stages = [
    ("executing statements", "standard_ExecutorRun"),
    ("  index insertion (every index of every row written)", "ExecInsertIndexTuples"),
    ("  heap insertion", "heap_insert"),
    ("  heap update", "heap_update"),
    ("  scans (index look-ups, joins, subqueries)", "ExecScan"),
    ("  hashed subplans and hash joins: building", "MultiExecHash"),
    ("executor start-up (per statement)", "standard_ExecutorStart"),
    ("finding the cached plan (locks, revalidation)", "GetCachedPlan"),
    ("  planning", "standard_planner"),
    ("decoding array parameters", "array_recv"),
    ("decoding jsonb parameters", "jsonb_recv"),
    ("commit", "CommitTransaction"),
    ("  WAL flush (fsync wait excluded)", "XLogFlush"),
    ("WAL insertion", "XLogInsert"),
    ("reading from the client", "pq_getbyte"),
    ("buffer look-ups", "ReadBuffer"),
    ("vacuum", "heap_vacuum_rel"),
    ("analyze", "do_analyze_rel"),
    ("triggers (plpgsql)", "plpgsql_exec_trigger"),
]
for label, fn in stages:
    c = sum(1 for s in samples if any(f.startswith(fn) for f in s))
    print(f"{100 * c / n:6.1f}%  {label} [{fn}]")
'
