#!/usr/bin/env python3
"""Summarise soak-monitor samples: per 5 minutes, delivery rate, database
growth, engine memory and API latency (median of the samples), and the last
5 minutes against the first 5."""
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rate = float(sys.argv[2]) if len(sys.argv) > 2 else 0
# The monitor's last sample may come after the engine stopped (no RSS, no
# metrics): it counts the deliveries, not a window.
final = rows[-1]["delivered"]
rows = [r for r in rows if r.get("rss_kb", 0)] or rows
windows = {}
for r in rows:
    windows.setdefault(int(r["t"] // 300), []).append(r)
print(f"{len(rows)} samples over {rows[-1]['t'] / 60:.1f} min (offered {rate:.0f} webhooks/s); {final} delivered at the end")
print("| minutes | deliveries/s | database MB (end) | DB growth MB/min | events table MB | engine RSS MB | Go heap in use MB | Go live heap MB | GET /v1/events ms (median) | GET /v1/delivery-attempts ms (median) | expiry batches | history batches |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
summ = []
prev = None
for w in sorted(windows):
    rs = windows[w]
    first, last = (prev or rs[0]), rs[-1]
    dt = last["t"] - first["t"]
    d_rate = (last["delivered"] - first["delivered"]) / dt if dt else 0
    growth = (last["db_bytes"] - first["db_bytes"]) / 1e6 / (dt / 60) if dt else 0
    ev = statistics.median(r["events_s"] for r in rs) * 1000
    at = statistics.median(r["attempts_s"] for r in rs) * 1000
    rss = statistics.median(r["rss_kb"] for r in rs) / 1024
    heap = statistics.median(r.get("heap_bytes", 0) for r in rs) / 1e6
    live = statistics.median(r.get("live_heap_bytes", 0) for r in rs) / 1e6
    summ.append((d_rate, ev, at, rss, growth, heap, live))
    print(f"| {w*5}–{w*5+5} | {d_rate:.0f} | {last['db_bytes']/1e6:.0f} | {growth:.1f} | {last['events_bytes']/1e6:.0f} | {rss:.0f} | {heap:.0f} | {live:.0f} | {ev:.1f} | {at:.1f} | {last['expiry_batches']} | {last.get('history_batches', '-')} |")
    prev = last
# Windows the samples cover for at least 4 of their 5 minutes (the last
# one may be cut short; a busy machine samples less often than every 10 s).
full = [s for w, s in zip(sorted(windows), summ) if windows[w][-1]["t"] - windows[w][0]["t"] >= 240]
if len(full) >= 2:
    a, b = full[0], full[-1]
    names = ["deliveries/s", "GET /v1/events", "GET /v1/delivery-attempts", "engine RSS", "database growth/min", "Go heap in use", "Go live heap"]
    print()
    for i, n in enumerate(names):
        print(f"last 5 min vs first 5 min, {n}: {b[i]:.1f} vs {a[i]:.1f} ({(b[i] / a[i] - 1) * 100 if a[i] else 0:+.0f}%)")
