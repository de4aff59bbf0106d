#!/bin/bash
# Samples a running engine every 10 s into OUT (JSON lines): seconds since
# start, deliveries so far (the sink's), database and events-table bytes,
# the engine's RSS, Go heap in use and live heap after the last GC (METRICS, its /metrics), retention's payload and history batches so far, and the time of GET /v1/events and
# GET /v1/delivery-attempts (first page, 50 rows; the median of three requests). Env: KEY API DB ENGINE SINK METRICS.
out=${1:?out}
median() {
  for _ in 1 2 3; do curl -s -o /dev/null -w '%{time_total}\n' -H "X-API-Key: $KEY" "$1"; done | sort -n | sed -n 2p
}
start=$(date +%s.%N)
while kill -0 "$ENGINE" 2>/dev/null; do
  t=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
  # The median of three requests each: one request's time on a busy 2-core
  # machine is mostly when the scheduler let it run.
  ev=$(median "$API/events?limit=50")
  at=$(median "$API/delivery-attempts?limit=50")
  delivered=$(curl -s "$SINK" | python3 -c 'import sys,json; print(json.load(sys.stdin)["unique_ids"])' 2>/dev/null || echo 0)
  sizes=$(psql -X -A -t -q "$DB" -c "SELECT pg_database_size(current_database()) || ',' || pg_total_relation_size('events')
    || ',' || (SELECT count(*) FROM events WHERE event_type = 'PayloadsExpired')
    || ',' || (SELECT count(*) FROM events WHERE event_type = 'HistoryExpired')" 2>/dev/null || echo "0,0,0,0")
  rss=$(ps -o rss= -p "$ENGINE" 2>/dev/null | tr -d ' ')
  metrics=$(curl -s "${METRICS:-}" 2>/dev/null)
  heap=$(echo "$metrics" | awk '/^go_memstats_heap_inuse_bytes /{printf "%d", $2}')
  live=$(echo "$metrics" | awk '/^go_gc_heap_live_bytes /{printf "%d", $2}')
  echo "{\"t\":$t,\"delivered\":$delivered,\"db_bytes\":${sizes%%,*},\"events_bytes\":$(echo "$sizes" | cut -d, -f2),\"expiry_batches\":$(echo "$sizes" | cut -d, -f3),\"history_batches\":${sizes##*,},\"rss_kb\":${rss:-0},\"heap_bytes\":${heap:-0},\"live_heap_bytes\":${live:-0},\"events_s\":$ev,\"attempts_s\":$at}" >> "$out"
  sleep 10
done
