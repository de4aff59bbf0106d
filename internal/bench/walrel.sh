#!/bin/bash
# The WAL one engine run writes, by relation and record kind, per webhook (pg_walinspect):
#   walrel.sh BIN [N] [FAIL]   (FIRE_ARGS passes whbench flags, e.g. --rate 150)
# make writes gives WAL per webhook against River; this says which table or index writes it (heap
# inserts and updates, B-tree entries, full-page images), read from the WAL between the first send
# and the end of the run. Needs the shared harness (BENCH, default ../shared/bench beside the repository).
set -euo pipefail
here=${BENCH:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}/scripts; bin=${1:?bin}; n=${2:-5000}; fail=${3:-1}
pg=$(mktemp -d); chmod 755 "$pg"; wout=$(mktemp -d); chmod 777 "$wout"
trap '"$here/pgtmp.sh" stop "$pg/c" >/dev/null 2>&1; rm -rf "$pg" "$wout"' EXIT
dsn=$("$here/pgtmp.sh" start "$pg/c"); export PGPID=$(head -1 "$pg/c/data/postmaster.pid")
psql -X -q "$dsn" -c 'CREATE EXTENSION IF NOT EXISTS pg_walinspect' >/dev/null
PRE_FIRE="psql -X -A -t '$dsn' -c 'SELECT pg_current_wal_insert_lsn()' >$wout/l0" SYSTEM=hookstream \
  ENGINE_ENV="HOOKSTREAM_ALLOW_CIDRS=127.0.0.0/8 HOOKSTREAM_LOG_LEVEL=warn" DEST_EXTRA=',"circuit_breaker_enabled":false' \
  "$here/bench-engine.sh" "$wout/out.jsonl" 1 "$fail" "$dsn" "$bin" "$n" 32 >/dev/null 2>&1
# Up to the end of the WAL as it stands (a switch makes it all readable).
psql -X -q "$dsn" -c 'SELECT pg_switch_wal()' >/dev/null
psql -X -A -t "$dsn" -c 'SELECT pg_current_wal_flush_lsn()' >"$wout/l1"
psql -X -A -t "${dsn%/*}/hsbench?sslmode=disable" -c "COPY (SELECT pg_relation_filenode(oid), relname FROM pg_class
  WHERE pg_relation_filenode(oid) IS NOT NULL) TO STDOUT" >"$wout/rels"
psql -X -A -t "$dsn" -c "COPY (SELECT resource_manager, record_length, fpi_length,
  coalesce(substring(block_ref from 'rel \d+/\d+/(\d+)'), '-') FROM pg_get_wal_records_info('$(cat "$wout/l0")', '$(cat "$wout/l1")')) TO STDOUT" >"$wout/recs"
python3 - "$wout" "$n" <<'PY'
import sys, collections
w, n = sys.argv[1], float(sys.argv[2])
rel = dict(l.rstrip('\n').split('\t') for l in open(w + '/rels'))
agg, tot = collections.defaultdict(lambda: [0, 0, 0]), [0, 0, 0]
for l in open(w + '/recs'):
    rm, ln, fpi, fn = l.rstrip('\n').split('\t')
    k = (rel.get(fn, 'other') if fn != '-' else '-') + ' ' + rm
    for a in (agg[k], tot):
        a[0] += 1; a[1] += int(ln); a[2] += int(fpi)
print(f'per webhook: {tot[0]/n:.1f} WAL records, {tot[1]/n:.0f} bytes, of them full-page images {tot[2]/n:.0f} bytes')
print('relation and record kind | records | bytes | of them full-page images')
for k, a in sorted(agg.items(), key=lambda x: -x[1][1]):
    if a[1] / n >= 10:
        print(f'{k} | {a[0]/n:.2f} | {a[1]/n:.0f} | {a[2]/n:.0f}')
PY
