#!/usr/bin/env bash
# Resume benchmark: a backup killed at 50% of a clean full run and resumed,
# against the clean full run, on the same data in the same run.
#
#   bench/resume.sh [SIZE]      # dataset size, default 1G (shared with quick.sh)
#
# Target (issue "a backup never starts over"): the resumed run takes at most
# 55% of the clean full run. Prints one table and appends to bench/out/resume.tsv.
# BATON_BIN=path uses an existing binary instead of building one.
set -euo pipefail
SIZE="${1:-1G}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${BENCH_OUT:-$ROOT/bench/out}"
DATA="$OUT/data"
mkdir -p "$OUT"
if [ -z "${BATON_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p baton-cli)
    BATON_BIN="$ROOT/target/release/baton"
fi
STAMP="seed=1 size=$SIZE"
if [ ! -f "$OUT/data.stamp" ] || ! grep -q "size=$SIZE" "$OUT/data.stamp" 2>/dev/null; then
    rm -rf "$DATA"
    python3 "$ROOT/bench/gen_dataset.py" --seed 1 --size "$SIZE" "$DATA"
    echo "$STAMP" > "$OUT/data.stamp.resume"
fi
command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc; }
export BATON_PASSWORD=bench
drop() { sync; if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then CACHE=cold; else CACHE=warm; fi; }
now() { date +%s.%N; }

rm -rf "$OUT/repo-resume-clean" "$OUT/repo-resume-killed"
"$BATON_BIN" -r "$OUT/repo-resume-clean" init -q
"$BATON_BIN" -r "$OUT/repo-resume-killed" init -q

drop; t0=$(now)
"$BATON_BIN" -r "$OUT/repo-resume-clean" backup -q "$DATA"
t1=$(now); full=$(echo "$t1 - $t0" | bc -l)

drop; half=$(echo "$full / 2" | bc -l)
"$BATON_BIN" -r "$OUT/repo-resume-killed" backup -q "$DATA" & pid=$!
sleep "$half"; kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
durable=$("$BATON_BIN" -r "$OUT/repo-resume-killed" jobs --json | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"]; print(j[0]["position"] if j else 0)')
drop; t2=$(now)
"$BATON_BIN" -r "$OUT/repo-resume-killed" backup --json "$DATA" > "$OUT/resume-run.json"
t3=$(now); resumed=$(echo "$t3 - $t2" | bc -l)
summary=$(tail -n 1 "$OUT/resume-run.json")
read_bytes=$(echo "$summary" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_read"])')
total=$(echo "$summary" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_total"])')
ratio=$(echo "$resumed / $full" | bc -l)
printf '\nresume benchmark (%s cache, dataset %s)\n' "$CACHE" "$SIZE"
printf '%-34s %8.2f s\n' "clean full backup" "$full"
printf '%-34s %8.2f s  (%.0f%% of the stream was durable at the kill)\n' "killed at 50% of that, then resumed" "$resumed" "$(echo "100 * $durable / $total" | bc -l)"
printf '%-34s %8.1f MiB of %.1f MiB\n' "read again by the resumed run" "$(echo "$read_bytes / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
printf '%-34s %8.2f  (target <= 0.55)\n' "resumed / clean" "$ratio"
printf '%s\t%s\t%s\t%.3f\t%.3f\t%s\t%s\t%.3f\n' "$(date -u +%FT%TZ)" "$SIZE" "$CACHE" "$full" "$resumed" "$durable" "$read_bytes" "$ratio" >> "$OUT/resume.tsv"
