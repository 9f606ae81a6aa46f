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
rm -rf "$REPO" "$OUT"/rr-clean-* "$OUT"/rr-killed-* "$XDG_CACHE_HOME"
"$BATON_BIN" -r "$REPO" init -q
"$BATON_BIN" -r "$REPO" backup -q "$DATA"

ROUNDS="${ROUNDS:-3}"
# Each round's targets go on a new ext4 file system (a loop-mounted image
# file) when this runs as root: ext4 creates files slowly for a while after
# many were deleted (its inode allocator checks recently freed inodes),
# which would time the file system's recovery from the previous round, or
# from whatever ran before, instead of the restore. Elsewhere (or with
# TARGET_FS=plain) they go under $OUT, on whatever file system that is.
MNT="$OUT/rr-mnt" IMG="$OUT/rr-fs.img"
use_loop() {
    [ "${TARGET_FS:-loop}" = loop ] && [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null
}
fresh_fs() {
    if use_loop; then
        umount "$MNT" 2>/dev/null || true
        rm -f "$IMG"
        truncate -s "$(( $(du -sm "$DATA" | cut -f1) * 4 + 1024 ))M" "$IMG"
        mkfs.ext4 -q -F "$IMG"
        mkdir -p "$MNT"
        mount -o loop "$IMG" "$MNT"
        TDIR="$MNT"
    else
        TDIR="$OUT"
    fi
}
drop_fs() {
    if use_loop && mountpoint -q "$MNT"; then umount "$MNT" && rm -f "$IMG"; fi
}
trap drop_fs EXIT
# Each round: a clean restore, then one killed at half its time and run
# again. Times are to the end of the command ("done") and, separately, to
# the end of a sync after it ("on disk"): the page cache makes the first
# depend on how much dirty data the kernel lets a writer pile up. Targets
# are removed only at the end: ext4 creates files slowly for a while after
# many were deleted (its inode allocator skips recently freed inodes), which
# would time the file system's recovery instead of the restore.
: > "$OUT/rr-rounds.tsv"
for round in $(seq "$ROUNDS"); do
    rm -rf "$XDG_CACHE_HOME"
    fresh_fs
    CLEAN="$TDIR/rr-clean-$round" KILLED="$TDIR/rr-killed-$round"
    drop; t0=$(now)
    "$BATON_BIN" -r "$REPO" restore latest --target "$CLEAN" --json > "$OUT/rr-clean.json"
    t1=$(now); sync; t1s=$(now)
    full=$(echo "$t1 - $t0" | bc -l); full_sync=$(echo "$t1s - $t0" | bc -l)
    total=$(field bytes < "$OUT/rr-clean.json")

    drop; half=$(echo "$full / 2" | bc -l)
    "$BATON_BIN" -r "$REPO" restore latest --target "$KILLED" -q & pid=$!
    sleep "$half"; kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    files_there=$(find "$KILLED" -type f | wc -l)
    drop; t2=$(now)
    "$BATON_BIN" -r "$REPO" restore latest --target "$KILLED" --json > "$OUT/rr-rerun.json"
    t3=$(now); sync; t3s=$(now)
    rerun=$(echo "$t3 - $t2" | bc -l); rerun_sync=$(echo "$t3s - $t2" | bc -l)
    fetched=$(field bytes_fetched < "$OUT/rr-rerun.json")
    verified=$(field bytes_verified_in_place < "$OUT/rr-rerun.json")
    trusted=$(field files_already_restored < "$OUT/rr-rerun.json")
    files=$(field files < "$OUT/rr-rerun.json")
    # The floor: what any run pays before and besides writing (the key's
    # Argon2id, the index, the lock, reading and bounding every tree, the
    # walk), timed as a restore that selects nothing. A run killed at half
    # the clean time has done at most half minus this; so a re-run that
    # redoes nothing still takes half plus this.
    drop; t4=$(now)
    "$BATON_BIN" -r "$REPO" restore latest --target "$TDIR/rr-floor" --include /nothing-selected -q
    t5=$(now); fixed=$(echo "$t5 - $t4" | bc -l)
    # The re-run's result is checked, not assumed.
    "$BATON_BIN" -r "$REPO" restore latest --target "$KILLED" --verify -q
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$full" "$full_sync" "$rerun" "$rerun_sync" \
        "$fetched" "$verified" "$trusted" "$files" "$files_there" "$total" "$fixed" >> "$OUT/rr-rounds.tsv"
    drop_fs
done
python3 - "$OUT/rr-rounds.tsv" "$CACHE" "$SIZE" "$OUT/restore-resume.tsv" <<'PY'
import statistics, sys, datetime
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = lambda i: statistics.median(r[i] for r in rows)
ratio = statistics.median(r[2] / r[0] for r in rows)
ratio_sync = statistics.median(r[3] / r[1] for r in rows)
mib = 1048576
print(f"\nrestore re-run benchmark ({sys.argv[2]} cache, dataset {sys.argv[3]}, {rows[0][9]/mib:.1f} MiB in {rows[0][7]:.0f} files; median of {len(rows)} rounds)")
print(f"{'clean restore':40} {med(0):6.2f} s   {med(1):6.2f} s with sync")
print(f"{'killed at 50% of that, run again':40} {med(2):6.2f} s   {med(3):6.2f} s with sync")
print(f"{'left for the re-run':40} {med(4)/mib:6.1f} MiB to fetch ({100*med(4)/rows[0][9]:.0f}%), {rows[0][7]-med(6):.0f} files not finished ({100*(rows[0][7]-med(6))/rows[0][7]:.0f}%)")
print(f"{'re-read and verified in place':40} {med(5)/mib:6.1f} MiB")
floor = statistics.median(0.5 + r[10] / r[0] for r in rows)
print(f"{'fixed cost of any run (selects nothing)':40} {med(10):6.2f} s")
print(f"{'re-run / clean':40} {ratio:6.2f}     {ratio_sync:6.2f} with sync   (target <= 0.5)")
print(f"{'floor: 0.5 + fixed cost / clean':40} {floor:6.2f}     (a re-run that redid nothing)")
with open(sys.argv[4], "a") as f:
    f.write(f"{datetime.datetime.utcnow():%FT%TZ}\t{sys.argv[3]}\t{sys.argv[2]}\t{med(0):.3f}\t{med(2):.3f}\t{med(4):.0f}\t{ratio:.3f}\t{ratio_sync:.3f}\t{floor:.3f}\n")
PY
rm -rf "$OUT"/rr-clean-* "$OUT"/rr-killed-* "$REPO" "$XDG_CACHE_HOME"
