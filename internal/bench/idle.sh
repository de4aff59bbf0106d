#!/bin/bash
# Idle CPU: engine (hookstream serve, or riverbench) + PostgreSQL tree over 20 s with no traffic.
#   idle.sh HOOKSTREAM_BIN
set -euo pipefail
here=${BENCH:-$(cd "$(dirname "$0")/../../../shared/bench" && pwd)}/scripts; source $here/lib.sh; bin=$1
pg=$(mktemp -d); chmod 755 "$pg"; trap '"$here/pgtmp.sh" stop "$pg/c" >/dev/null 2>&1; rm -rf "$pg"' EXIT
dsn=$("$here/pgtmp.sh" start "$pg/c"); pgpid=$(head -1 "$pg/c/data/postmaster.pid")
treecpu() { # CPU seconds of a process tree
  python3 - "$1" <<'PY'
import os,sys
root=int(sys.argv[1]); hz=os.sysconf('SC_CLK_TCK'); kids={}
for p in os.listdir('/proc'):
  if not p.isdigit(): continue
  try: st=open(f'/proc/{p}/stat').read().rsplit(')',1)[1].split()
  except: continue
  kids.setdefault(int(st[1]),[]).append(int(p))
def cpu(p):
  try: st=open(f'/proc/{p}/stat').read().rsplit(')',1)[1].split(); t=(int(st[11])+int(st[12]))/hz
  except: t=0
  return t+sum(cpu(c) for c in kids.get(p,[]))
print(cpu(root))
PY
}
measure() { # name pid
  sleep 5
  a=$(treecpu $2); b=$(treecpu $pgpid); sleep 20; c=$(treecpu $2); d=$(treecpu $pgpid)
  python3 -c "print('$1 idle 20 s: engine %.3f s, postgres %.3f s' % ($c-$a, $d-$b))"
}
psql -q "$dsn" -c 'CREATE DATABASE hsidle' >/dev/null
edsn="${dsn%/*}/hsidle?sslmode=disable"
DATABASE_URL=$edsn "$bin" migrate >/dev/null
port=$(free_port)
DATABASE_URL=$edsn HOOKSTREAM_LOG_LEVEL=warn "$bin" serve --addr 127.0.0.1:$port >/dev/null 2>&1 & eng=$!
wait_http "http://127.0.0.1:$port/v1/health" 300
measure hookstream $eng
stop_pid $eng
port=$(free_port); sport=$(free_port)
"$RIVERBENCH" --dsn "$dsn" --addr 127.0.0.1:$port --dest "http://127.0.0.1:$sport/hook" --workers 100 --fetch-cooldown 10ms --fetch-poll 100ms >/dev/null 2>&1 & rb=$!
wait_http "http://127.0.0.1:$port/healthz" 300
measure river-tuned $rb
stop_pid $rb
