#!/usr/bin/env bash
# Restore re-run benchmark: a restore killed at 50% of a clean restore's
# time, then run again into the same target, against the clean restore, on
# the same data in the same run, page cache dropped before each.
#
#   bench/restore_resume.sh [SIZE]   # dataset size, default 1G (shared with resume.sh)
#
# Target (issue "a restore re-run is cheap"): the re-run takes at most 0.5x
# the clean restore. Prints one table and appends to bench/out/restore-resume.tsv.
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
if [ ! -f "$OUT/data.stamp" ] || ! grep -q "size=$SIZE" "$OUT/data.stamp" 2>/dev/null; then
    rm -rf "$DATA"
    python3 "$ROOT/bench/gen_dataset.py" --seed 1 --size "$SIZE" "$DATA"
    echo "seed=1 size=$SIZE" > "$OUT/data.stamp"
fi
command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc; }
export BATON_PASSWORD=bench
# The restore marker lives in the cache directory: a private one per run.
export XDG_CACHE_HOME="$OUT/cache-restore-resume"
drop() { sync; if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then CACHE=cold; else CACHE=warm; fi; }
now() { date +%s.%N; }
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[\"$1\"])"; }

REPO="$OUT/repo-restore-resume"
rm -rf "$REPO" "$OUT/rr-clean" "$OUT/rr-killed" "$XDG_CACHE_HOME"
"$BATON_BIN" -r "$REPO" init -q
"$BATON_BIN" -r "$REPO" backup -q "$DATA"

drop; t0=$(now)
"$BATON_BIN" -r "$REPO" restore latest --target "$OUT/rr-clean" --json > "$OUT/rr-clean.json"
t1=$(now); full=$(echo "$t1 - $t0" | bc -l)
total=$(field bytes < "$OUT/rr-clean.json")
rm -rf "$OUT/rr-clean"

drop; half=$(echo "$full / 2" | bc -l)
"$BATON_BIN" -r "$REPO" restore latest --target "$OUT/rr-killed" -q & pid=$!
sleep "$half"; kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
there=$(du -sb "$OUT/rr-killed" | cut -f1)
drop; t2=$(now)
"$BATON_BIN" -r "$REPO" restore latest --target "$OUT/rr-killed" --json > "$OUT/rr-rerun.json"
t3=$(now); rerun=$(echo "$t3 - $t2" | bc -l)
fetched=$(field bytes_fetched < "$OUT/rr-rerun.json")
verified=$(field bytes_verified_in_place < "$OUT/rr-rerun.json")
# The re-run's result is checked, not assumed.
"$BATON_BIN" -r "$REPO" restore latest --target "$OUT/rr-killed" --verify -q
ratio=$(echo "$rerun / $full" | bc -l)
printf '\nrestore re-run benchmark (%s cache, dataset %s, %.1f MiB restored)\n' "$CACHE" "$SIZE" "$(echo "$total / 1048576" | bc -l)"
printf '%-38s %8.2f s\n' "clean restore" "$full"
printf '%-38s %8.2f s  (%.0f%% of the bytes were on disk at the kill)\n' "killed at 50% of that, then run again" "$rerun" "$(echo "100 * $there / $total" | bc -l)"
printf '%-38s %8.1f MiB fetched, %.1f MiB re-read and verified\n' "the re-run" "$(echo "$fetched / 1048576" | bc -l)" "$(echo "$verified / 1048576" | bc -l)"
printf '%-38s %8.2f  (target <= 0.5)\n' "re-run / clean" "$ratio"
printf '%s\t%s\t%s\t%.3f\t%.3f\t%s\t%s\t%.3f\n' "$(date -u +%FT%TZ)" "$SIZE" "$CACHE" "$full" "$rerun" "$there" "$fetched" "$ratio" >> "$OUT/restore-resume.tsv"
rm -rf "$OUT/rr-killed" "$REPO" "$XDG_CACHE_HOME"
