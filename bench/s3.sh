#!/usr/bin/env bash
# The S3 benchmark: Baton to a local Ceph RADOS Gateway and to a local
# directory, and restic to the same gateway, on the benchmark's dataset, in
# the same run, page cache dropped before each operation.
#
#   bench/s3.sh [DATASET_DIR]     (default: bench/out/datasets/mixed-s1-2G,
#                                  made by bench/run.sh)
#
# Per tool and operation: wall and CPU seconds, peak RSS (MiB); for Baton on
# S3 also the number of S3 requests (BATON_S3_STATS) of each operation, so
# "requests per no-change backup" is measured, not guessed. The gateway
# keeps its objects in memory (memstore): its disk is RAM, so the figures
# are the client's and the gateway's CPU, not a network's or a disk's.
# Writes bench/out/s3-<stamp>.md. Needs root (drop_caches, radosgw).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${1:-bench/out/datasets/mixed-s1-2G}
[[ -d $DATA ]] || { echo "no dataset $DATA (run bench/run.sh first)" >&2; exit 1; }
DATA=$(readlink -f "$DATA")
STAMP=$(date +%Y%m%d-%H%M%S)
WORK=$(readlink -f bench/out)/s3-work-$STAMP
OUT=bench/out/s3-$STAMP.md
mkdir -p "$WORK"
cargo build --release -q -p baton-cli
BATON=$(readlink -f target/release/baton)
command -v radosgw >/dev/null || scripts/rgw.sh install
RGW_MEMSTORE_BYTES=$((12 << 30)) RGW_WATCH_PID=$$ scripts/rgw.sh start "$WORK/rgw" >"$WORK/rgw.env"
# shellcheck disable=SC1091
source "$WORK/rgw.env"
export BATON_PASSWORD=bench RESTIC_PASSWORD=bench BATON_CACHE_DIR=$WORK/cache
export RESTIC_CACHE_DIR=$WORK/restic-cache
EP=$BATON_TEST_S3_ENDPOINT

drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
rows=()
# timed TOOL OP CMD...: one row of the table.
timed() {
    local tool=$1 op=$2
    shift 2
    drop
    local t=$WORK/$tool-$op
    BATON_S3_STATS=1 /usr/bin/time -f '%e %U %S %M' -o "$t.time" "$@" >"$t.out" 2>"$t.err" || {
        echo "$tool $op failed:" >&2
        tail -5 "$t.err" >&2
        exit 1
    }
    read -r wall user sys rss <"$t.time"
    local req
    req=$( (grep -o 's3: [0-9]* requests' "$t.err" || true) | awk '{s+=$2} END {print s+0}')
    [[ $tool == baton-s3 ]] || req=-
    rows+=("| $op | $tool | $wall | $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}') | $((rss / 1024)) | $req |")
    echo "$tool $op: ${wall}s, peak $((rss / 1024)) MiB, requests $req" >&2
}

B3="s3:$EP/baton/repo"
BL=$WORK/baton-local
RS="s3:$EP/restic"
"$BATON" -r "$B3" init --quiet >/dev/null
"$BATON" -r "$BL" init --quiet >/dev/null
restic -r "$RS" init >/dev/null 2>&1

for tool in baton-s3 baton-local restic; do
    case $tool in
    baton-s3) run=("$BATON" -r "$B3") ;;
    baton-local) run=("$BATON" -r "$BL") ;;
    restic) run=(restic -r "$RS") ;;
    esac
    timed "$tool" "full backup" "${run[@]}" backup "$DATA"
    timed "$tool" "no-change backup" "${run[@]}" backup "$DATA"
    rm -rf "$WORK/restore"
    if [[ $tool == restic ]]; then
        timed "$tool" "restore" "${run[@]}" restore latest --target "$WORK/restore"
    else
        timed "$tool" "restore" "${run[@]}" restore latest --target "$WORK/restore"
    fi
    diff -r "$DATA" "$WORK/restore/${DATA#/}" >/dev/null || { echo "$tool: restored tree differs" >&2; exit 1; }
    rm -rf "$WORK/restore"
done

{
    echo "$(date -u '+%Y-%m-%d %H:%M') on $(nproc) CPUs; dataset $DATA ($(du -sh "$DATA" | cut -f1)); radosgw 16 (memstore) on loopback; cold page cache"
    echo
    echo "| operation | tool | wall s | CPU s | peak RSS MiB | S3 requests |"
    echo "|---|---|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
} >"$OUT"
cat "$OUT"
scripts/rgw.sh stop "$WORK/rgw" >/dev/null 2>&1 || true
rm -rf "$WORK"
