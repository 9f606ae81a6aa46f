#!/usr/bin/env bash
# Many agents at once through a pool of two media agents, against the same
# data backed up directly by one process, in the same run (page cache
# dropped before each).
#
#   bench/fleet.sh [AGENTS] [MIB_PER_AGENT]    # default 20 agents x 64 MiB
#
# Reports: wall time and throughput of the fleet and of the direct backup,
# how the director spread agents and bytes over the two media agents, and
# the peak memory (VmHWM) of the director and each media agent. Appends to
# bench/out/fleet.tsv. BATON_BIN=path uses an existing binary.
set -euo pipefail
N="${1:-20}"
MIB="${2:-64}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${BENCH_OUT:-$ROOT/bench/out}/fleet"
if [ -z "${BATON_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p baton-cli)
    BATON_BIN="$ROOT/target/release/baton"
fi
B="$BATON_BIN"
export BATON_PASSWORD=bench
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
rm -rf "$OUT"
mkdir -p "$OUT"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }
hwm() { awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$1/status"; }

for i in $(seq -w 1 "$N"); do
    mkdir -p "$OUT/data/a$i"
    head -c "$((MIB / 2))M" /dev/urandom > "$OUT/data/a$i/one.bin"
    head -c "$((MIB / 2))M" /dev/urandom > "$OUT/data/a$i/two.bin"
done

# The direct backup: one process, the same bytes, a local repository.
"$B" -r "$OUT/direct" init -q --kdf-memory 8192 --kdf-iterations 1
drop
t0=$(now)
"$B" -r "$OUT/direct" backup -q "$OUT/data"
direct=$(echo "$(now) - $t0" | bc)

# The fleet: a director, two media agents, N agents, one shared repository.
"$B" -r "$OUT/repo" init -q --kdf-memory 8192 --kdf-iterations 1
"$B" director --json --state "$OUT/director" --listen 127.0.0.1:0 > "$OUT/director.out" 2>"$OUT/director.log" &
pids+=($!); dpid=$!
until [ -s "$OUT/director.out" ]; do sleep 0.1; done
URL=$(python3 -c "import json;print(json.load(open('$OUT/director.out'))['url'])")
ctl() { "$B" ctl "$@" --director "$URL" --ca "$OUT/director/ca.pem" --token-file "$OUT/director/admin.token"; }
ctl pool-add --name fleet --repository "$OUT/repo" -q
mpids=()
for m in ma-1 ma-2; do
    "$B" agent enrol -q --director "$URL" --token "$(ctl token --role media-agent --name $m -q)" --state "$OUT/$m"
    "$B" media-agent --json --director "$URL" --state "$OUT/$m" --pool fleet --listen 127.0.0.1:0 > "$OUT/$m.out" 2>"$OUT/$m.log" &
    pids+=($!); mpids+=($!)
    until [ -s "$OUT/$m.out" ]; do sleep 0.1; done
done
for i in $(seq -w 1 "$N"); do
    "$B" agent enrol -q --director "$URL" --token "$(ctl token --role agent --name a$i -q)" --state "$OUT/a$i"
    ctl job-add -q --name "a$i" --agent "a$i" --pool fleet --schedule "every 1d" --path "$OUT/data/a$i"
done
drop
t0=$(now)
apids=()
for i in $(seq -w 1 "$N"); do
    "$B" agent backup --json --director "$URL" --state "$OUT/a$i" "a$i" > "$OUT/a$i.out" 2>"$OUT/a$i.log" &
    apids+=($!)
done
failed=0
for p in "${apids[@]}"; do wait "$p" || failed=$((failed + 1)); done
fleet=$(echo "$(now) - $t0" | bc)

total=$((N * MIB))
share=$(for i in $(seq -w 1 "$N"); do
    python3 -c "
import json,sys
for l in open('$OUT/a$i.out'):
    try: v=json.loads(l)
    except Exception: continue
    if v.get('message_type')=='agent_backup': print(v['media_agents'][0])"
done | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')
bytes=$(ctl media-agents --json | python3 -c "
import json,sys
v=json.load(sys.stdin)
print(' '.join('%s=%dMiB' % (m['name'], m['load']['bytes_total']>>20) for m in v['media_agents']))")
mem="director=$(hwm "$dpid")MiB ma-1=$(hwm "${mpids[0]}")MiB ma-2=$(hwm "${mpids[1]}")MiB"

printf '\n%-28s %10s %12s\n' "" "time (s)" "MiB/s"
printf '%-28s %10.2f %12.1f\n' "direct backup (1 process)" "$direct" "$(echo "$total / $direct" | bc -l)"
printf '%-28s %10.2f %12.1f\n' "fleet ($N agents, 2 MAs)" "$fleet" "$(echo "$total / $fleet" | bc -l)"
echo "failed agents: $failed of $N"
echo "agents first served by: $share"
echo "bytes received: $bytes"
echo "peak memory: $mem"
printf '%s\t%s\t%s\t%.2f\t%.2f\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$N" "$MIB" "$direct" "$fleet" "$failed" "$share" "$bytes" "$mem" >> "$(dirname "$OUT")/fleet.tsv"
