#!/bin/bash
# 100,000 webhooks through one engine: throughput per tenth of the run and table sizes afterwards.
set -euo pipefail
here=${BENCH:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}/scripts; bin=${1:?bin}; n=${2:-100000}; out=${3:-/tmp/bench/100k}
mkdir -p $out
pg=$(mktemp -d); chmod 755 "$pg"; trap '"$here/pgtmp.sh" stop "$pg/c" >/dev/null 2>&1; rm -rf "$pg"' EXIT
dsn=$("$here/pgtmp.sh" start "$pg/c")
export PGPID=$(head -1 "$pg/c/data/postmaster.pid")
ENGINE_ENV="HOOKSTREAM_ALLOW_CIDRS=127.0.0.0/8 HOOKSTREAM_LOG_LEVEL=warn" DEST_EXTRA=',"circuit_breaker_enabled":false' \
  SYSTEM=hookstream "$here/bench-engine.sh" "$out/out.jsonl" 1 0 "$dsn" "$bin" "$n" 32 > "$out/fire.log" 2>&1
db="${dsn%/*}/hsbench?sslmode=disable"
# The read models follow the log asynchronously: how much of it they held when the last webhook arrived.
echo "projected when the engine stopped: $(psql -X -A -t -q "$db" -c "SELECT count(*) FROM delivery_attempts WHERE status = 'success'") of $n deliveries"
# Deliveries per tenth of the run, by when each successful attempt was recorded (the log's recorded_at):
# an attempt row's created_at is its pending row's, i.e. when the webhook was ingested, so it measured ingest.
# under_checkpoint: the seconds of the tenth during which PostgreSQL ran a checkpoint (server.log, log_checkpoints
# on by default): it writes the dirty buffers out (two thirds of shared_buffers here) while the run goes on.
psql -X -A -t -F '|' -q "$db" -c "WITH a AS (SELECT recorded_at, ntile(10) OVER (ORDER BY recorded_at) AS tenth FROM events
    WHERE event_type = 'DeliveryAttempted' AND payload->>'status' = 'success')
  SELECT tenth, count(*), extract(epoch FROM min(recorded_at)), extract(epoch FROM max(recorded_at)) FROM a GROUP BY tenth ORDER BY tenth" |
  python3 -c '
import sys, re, datetime as dt
ts = lambda s: dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc).timestamp()
spans, start = [], None
for l in open(sys.argv[1]):
    m = re.match(r"(\S+ \S+) UTC \[\d+\] LOG:  checkpoint (starting|complete)", l)
    if m and m.group(2) == "starting": start = ts(m.group(1))
    elif m and start is not None: spans.append((start, ts(m.group(1)))); start = None
if start is not None: spans.append((start, float("inf")))
rows = [l.strip().split("|") for l in sys.stdin if l.strip()]
print(" tenth | count | seconds | per_s | under_checkpoint_s")
inside, outside = [], []
for t, n, a, b in rows:
    a, b, n = float(a), float(b), int(n)
    under = sum(max(0.0, min(b, e) - max(a, s)) for s, e in spans)
    rate = n / (b - a) if b > a else 0
    (inside if under > (b - a) / 2 else outside).append(rate)
    print(f" {t:>5} | {n:>5} | {b - a:7.2f} | {rate:5.0f} | {under:7.2f}")
if rows:
    r = [int(x[1]) / (float(x[3]) - float(x[2])) for x in (rows[0], rows[-1])]
    print(f"last tenth against the first: {100 * (r[1] - r[0]) / r[0]:+.1f}%")
if inside and outside:
    print(f"tenths mostly under a checkpoint: {len(inside)}, {sum(inside) / len(inside):.0f}/s on average; the others {sum(outside) / len(outside):.0f}/s")
' "$pg/c/server.log"
psql -X -A -t -q "$dsn" -c "SELECT 'WAL written since the cluster started: '||pg_size_pretty(wal_bytes)||', '||round(wal_bytes / $n)||' bytes per webhook, '||round(wal_fpi::numeric / $n, 2)||' full-page images per webhook' FROM pg_stat_wal"
# The last tenth's stragglers: when its deliveries were recorded, from its first (seconds), at its 90th, 99th,
# 99.9th percentile and last; a few late deliveries stretch the tenth's time and lower its rate.
psql -X -q "$db" -c "WITH a AS (SELECT recorded_at, ntile(10) OVER (ORDER BY recorded_at) AS tenth FROM events
    WHERE event_type = 'DeliveryAttempted' AND payload->>'status' = 'success'), l AS (SELECT recorded_at FROM a WHERE tenth = 10)
  SELECT round(extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY recorded_at) - min(recorded_at))::numeric, 2) AS p90_s,
         round(extract(epoch FROM percentile_disc(0.99) WITHIN GROUP (ORDER BY recorded_at) - min(recorded_at))::numeric, 2) AS p99_s,
         round(extract(epoch FROM percentile_disc(0.999) WITHIN GROUP (ORDER BY recorded_at) - min(recorded_at))::numeric, 2) AS p999_s,
         round(extract(epoch FROM max(recorded_at) - min(recorded_at))::numeric, 2) AS last_s FROM l"
# The run's start, second by second (a run from an empty database starts slower than it goes on):
# successful deliveries and EventReceived (ingest) per second of the first ten.
psql -X -q "$db" -c "WITH t0 AS (SELECT min(recorded_at) AS t FROM events WHERE event_type = 'EventReceived')
  SELECT floor(extract(epoch FROM e.recorded_at - t0.t))::int AS second,
         count(*) FILTER (WHERE event_type = 'EventReceived') AS ingested,
         count(*) FILTER (WHERE event_type = 'DeliveryAttempted' AND payload->>'status' = 'success') AS delivered
  FROM events e, t0 WHERE e.recorded_at < t0.t + interval '10 seconds' AND event_type IN ('EventReceived', 'DeliveryAttempted')
  GROUP BY 1 ORDER BY 1"
psql -X -q "$db" -c "SELECT relname AS table, pg_size_pretty(pg_table_size(c.oid)) AS heap_and_toast, pg_size_pretty(pg_indexes_size(c.oid)) AS indexes,
  pg_size_pretty(pg_total_relation_size(c.oid)) AS total, (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS n_indexes
  FROM pg_class c WHERE relname IN ('events','delivery_jobs','delivery_attempts','events_view','projected_deliveries','event_delivery_outcomes','consumer_offsets')
  ORDER BY pg_total_relation_size(c.oid) DESC"
tail -1 "$out/out.jsonl" | python3 -c "import sys,json; d=json.loads(sys.stdin.read()); print('deliveries/s', d['e2e']['deliveries_per_sec'], 'complete', d['e2e']['complete'], 'dups', d['e2e']['duplicates'])"
# Checkpoints during the run (log_checkpoints is on by default): the pages first written after each one go to the WAL whole.
psql -X -A -t -q "$db" -c "SELECT 'run: '||min(recorded_at)||' .. '||max(recorded_at) FROM events WHERE event_type = 'DeliveryAttempted'"
grep -E "checkpoint (starting|complete)" "$pg/c/server.log" | sed -E 's/ UTC \[[0-9]+\]//' || true
# Who wrote the dirty buffers out: the checkpointer, the background writer, or the backends themselves (a
# backend that needs a buffer and finds only dirty ones writes one first, in the middle of its statement).
psql -X -q "$dsn" -c "SELECT checkpoints_timed, checkpoints_req, buffers_checkpoint, buffers_clean, maxwritten_clean, buffers_backend, buffers_backend_fsync, buffers_alloc FROM pg_stat_bgwriter"
