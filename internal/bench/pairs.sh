#!/bin/bash
# Binaries against each other, interleaved in rounds on one throwaway PostgreSQL (no River):
#   pairs.sh OUT.jsonl ROUNDS FAIL N BIN...   (FIRE_ARGS passes whbench flags, e.g. --rate 150)
# Prints each run's engine and PostgreSQL CPU per delivery, rate, p50/p99, and the medians per binary.
# A wrapper script works as a BIN (e.g. one that sets an environment variable, then execs the engine).
# Runs are labelled by position and path (two builds may both be called hookstream); OUT is overwritten.
set -euo pipefail
here=${BENCH:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}/scripts; out=${1:?out.jsonl}; rounds=${2:?rounds}; fail=${3:?fail}; n=${4:?n}; shift 4
pg=$(mktemp -d); chmod 755 "$pg"; trap '"$here/pgtmp.sh" stop "$pg/c" >/dev/null 2>&1; rm -rf "$pg"' EXIT
dsn=$("$here/pgtmp.sh" start "$pg/c"); export PGPID=$(head -1 "$pg/c/data/postmaster.pid")
rm -f "$out" "${out%.jsonl}.engine.log" # bench-engine.sh appends: start from nothing
for ((r = 1; r <= rounds; r++)); do i=0; for b in "$@"; do
  i=$((i + 1))
  SYSTEM="$i:$b" RUN=$r ENGINE_ENV="HOOKSTREAM_ALLOW_CIDRS=127.0.0.0/8 HOOKSTREAM_LOG_LEVEL=warn" DEST_EXTRA=',"circuit_breaker_enabled":false' \
    "$here/bench-engine.sh" "$out" 1 "$fail" "$dsn" "$b" "$n" 32 >/dev/null 2>&1
done; done
python3 - "$out" <<'PY'
import json, sys, collections, statistics as st
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    j = json.loads(line); label = dict(x.split('=', 1) for x in j['label'].split() if '=' in x)
    cpu, n, e = j['cpu']['proc_cpu_s'], j['n'], j['e2e']
    runs[label['system']].append((cpu.get('engine', 0) * 1000 / n, cpu.get('postgres', 0) * 1000 / n, e['deliveries_per_sec'], e['latency']['p50_ms'], e['latency']['p99_ms']))
for name, v in runs.items():
    print(name, ' | '.join(f'engine {a:.2f} pg {b:.2f} ms, {c:.0f}/s, p50/p99 {p:.1f}/{q:.1f} ms' for a, b, c, p, q in v))
    print(f'  median: engine {st.median(x[0] for x in v):.3f} + pg {st.median(x[1] for x in v):.3f} = {st.median(x[0] + x[1] for x in v):.3f} ms per delivery, {st.median(x[2] for x in v):.0f}/s')
PY
