#!/usr/bin/env bash
# The block benchmark (issue 12): block backup and image restore against
# restic and Borg on the same image, the NBD export's sequential read
# throughput, the instant restore's background copy, and time to first
# byte at 1 GiB and 16 GiB, with the machine's disk limits measured in the
# same run and the page cache dropped before each operation.
#
#   bench/block.sh [IMAGE_GIB] [DATA_PERCENT]   (default 2 GiB, 50% data)
#
# Writes bench/out/block-<stamp>.md. Needs root (drop_caches), nbdcopy and
# qemu-io (libnbd-bin, qemu-utils); restic and borg if present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GIB=${1:-2}
PCT=${2:-50}
STAMP=$(date +%Y%m%d-%H%M%S)
WORK=$(readlink -f bench/out)/block-work-$STAMP
OUT=bench/out/block-$STAMP.md
mkdir -p "$WORK"
trap 'pkill -f "baton.*$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cargo build --release -q -p baton-cli
BATON=$(readlink -f target/release/baton)
export BATON_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BATON_CACHE_DIR=$WORK/cache RESTIC_CACHE_DIR=$WORK/restic-cache BORG_BASE_DIR=$WORK/borg-base

drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
rows=()
# timed TOOL OP CMD...: wall seconds of one operation, one row of the table.
timed() {
    local tool=$1 op=$2
    shift 2
    drop
    local t=$WORK/$tool-${op// /-}
    /usr/bin/time -f '%e %U %S %M' -o "$t.time" "$@" >"$t.out" 2>"$t.err" || {
        echo "$tool $op failed:" >&2
        tail -5 "$t.err" >&2
        exit 1
    }
    read -r wall user sys rss <"$t.time"
    rows+=("| $op | $tool | $wall | $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}') | $((rss / 1024)) |")
    echo "$tool $op: ${wall}s, peak $((rss / 1024)) MiB" >&2
    LAST=$wall
}

# The image: GIB GiB, PCT% of it random data in 64 MiB runs spread over
# it, the rest holes (a VM disk that is partly used).
IMG=$WORK/disk.img
truncate -s "${GIB}G" "$IMG"
runs=$((GIB * 1024 * PCT / 100 / 64))
stride=$((GIB * 1024 / 64 / (runs > 0 ? runs : 1)))
for ((i = 0; i < runs; i++)); do
    dd if=/dev/urandom of="$IMG" bs=1M count=64 seek=$((i * stride * 64)) conv=notrunc status=none
done
DATA_MIB=$((runs * 64))
SIZE=$(stat -c %s "$IMG")
echo "image: $GIB GiB, $DATA_MIB MiB of data" >&2

# The machine's limits: cold sequential read of the image's data, and a
# sequential write with fsync, of the same amount.
drop
t0=$(date +%s.%N)
cat "$IMG" >/dev/null
t1=$(date +%s.%N)
READ_MBS=$(awk -v m="$DATA_MIB" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", m / (b - a)}')
t0=$(date +%s.%N)
dd if=/dev/zero of="$WORK/w.raw" bs=4M count=$((DATA_MIB / 4)) conv=fsync status=none
t1=$(date +%s.%N)
WRITE_MBS=$(awk -v m="$DATA_MIB" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", m / (b - a)}')
rm -f "$WORK/w.raw"
echo "disk: read ${READ_MBS} MB/s (cold cat of a sparse image), write ${WRITE_MBS} MB/s" >&2

R=$WORK/baton
"$BATON" -r "$R" init --quiet >/dev/null
timed baton "backup" "$BATON" -r "$R" backup --block "$IMG"
BB=$LAST
timed baton "no-change backup" "$BATON" -r "$R" backup --block "$IMG"
timed baton "restore to a file" "$BATON" -r "$R" restore latest --target "$WORK/r.img"
BR=$LAST
cmp "$IMG" "$WORK/r.img" || { echo "baton restore differs" >&2; exit 1; }
rm -f "$WORK/r.img"
timed baton "dump to a file" sh -c "'$BATON' -r '$R' dump latest disk.img > '$WORK/d.img'"
cmp "$IMG" "$WORK/d.img" || { echo "baton dump differs" >&2; exit 1; }
rm -f "$WORK/d.img"

# The export: sequential read of the whole image by nbdcopy (4 connections).
S=$WORK/s.sock
"$BATON" -r "$R" serve-nbd latest --listen "unix:$S" --quiet &
for _ in $(seq 100); do [[ -S $S ]] && break; sleep 0.05; done
timed nbd "nbdcopy of the export" nbdcopy "nbd+unix:///?socket=$S" "$WORK/n.img"
NB=$LAST
cmp "$IMG" "$WORK/n.img" || { echo "export differs" >&2; exit 1; }
rm -f "$WORK/n.img"
kill %1 && wait || true

# Instant restore with no client: the background copy alone.
timed baton "instant restore, no client" "$BATON" -r "$R" restore --instant latest --target "$WORK/i.img" --listen "unix:$WORK/i.sock" --json
IB=$LAST
cmp "$IMG" "$WORK/i.img" || { echo "instant restore differs" >&2; exit 1; }
rm -f "$WORK/i.img"

if command -v restic >/dev/null; then
    restic -r "$WORK/restic" init >/dev/null 2>&1
    timed restic "backup" restic -r "$WORK/restic" backup "$IMG"
    timed restic "no-change backup" restic -r "$WORK/restic" backup "$IMG"
    timed restic "restore to a file" restic -r "$WORK/restic" restore latest --target "$WORK/rr"
    timed restic "dump to a file" sh -c "restic -r '$WORK/restic' dump latest '$IMG' > '$WORK/rd.img'"
    cmp "$IMG" "$WORK/rd.img" || { echo "restic dump differs" >&2; exit 1; }
    rm -rf "$WORK/rr" "$WORK/rd.img"
fi
if command -v borg >/dev/null; then
    borg init -e repokey "$WORK/borg" >/dev/null 2>&1
    timed borg "backup" borg create "$WORK/borg::a" "$IMG"
    timed borg "no-change backup" borg create "$WORK/borg::b" "$IMG"
    timed borg "dump to a file" sh -c "borg extract --stdout '$WORK/borg::a' '${IMG#/}' > '$WORK/bd.img'"
    cmp "$IMG" "$WORK/bd.img" || { echo "borg extract differs" >&2; exit 1; }
    rm -f "$WORK/bd.img"
fi

# Time to first byte: the command starts, a client retries a 4 KiB read
# every 10 ms until it succeeds; measured from outside (wall) and by the
# server (from its process start to the first read served).
ttfb() {
    local gib=$1 img=$WORK/tt-$1.img r=$WORK/tt-$1
    truncate -s "${gib}G" "$img"
    dd if=/dev/urandom of="$img" bs=1M count=64 conv=notrunc status=none
    dd if=/dev/urandom of="$img" bs=1M count=16 seek=$((gib * 1024 - 16)) conv=notrunc status=none
    "$BATON" -r "$r" init --quiet >/dev/null
    "$BATON" -r "$r" backup --block "$img" --quiet
    drop
    local sock=$WORK/tt-$gib.sock t0 t1
    t0=$(date +%s.%N)
    "$BATON" -r "$r" restore --instant latest --target "$WORK/tt-out-$gib.img" \
        --listen "unix:$sock" --copy-limit 64MiB --json >"$WORK/tt-$gib.json" 2>/dev/null &
    until qemu-io -f raw -c 'read 0 4k' "nbd+unix:///?socket=$sock" >/dev/null 2>&1; do sleep 0.01; done
    t1=$(date +%s.%N)
    wait
    local server
    server=$(grep '"summary"' "$WORK/tt-$gib.json" | python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["time_to_first_byte_ms"])')
    echo "| $gib GiB (sparse, 80 MiB data) | $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", (b - a) * 1000}') | $server |"
    rm -rf "$img" "$r" "$WORK/tt-out-$gib.img"
}
TT1=$(ttfb 1)
TT16=$(ttfb 16)

mbs() { awk -v m="$1" -v s="$2" 'BEGIN {printf "%.0f", m / s}'; }
{
    echo "# Block benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "Image: $GIB GiB, $DATA_MIB MiB of random data, the rest holes. Machine: $(nproc) CPUs;"
    echo "disk limits in this run: cold read ${READ_MBS} MB/s, write with fsync ${WRITE_MBS} MB/s."
    echo
    echo "| operation | tool | wall s | CPU s | peak MiB |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "Throughput over the image's data (MiB/s) and as a share of the disk limit:"
    echo
    echo "| | MiB/s | of the limit |"
    echo "|---|---|---|"
    echo "| baton backup --block (read) | $(mbs "$DATA_MIB" "$BB") | $(awk -v a="$(mbs "$DATA_MIB" "$BB")" -v l="$READ_MBS" 'BEGIN {printf "%.2f", a / l}') of read |"
    echo "| baton restore (write) | $(mbs "$DATA_MIB" "$BR") | $(awk -v a="$(mbs "$DATA_MIB" "$BR")" -v l="$WRITE_MBS" 'BEGIN {printf "%.2f", a / l}') of write |"
    echo "| export, nbdcopy sequential read | $(mbs "$DATA_MIB" "$NB") | $(awk -v a="$(mbs "$DATA_MIB" "$NB")" -v l="$READ_MBS" 'BEGIN {printf "%.2f", a / l}') of read |"
    echo "| instant restore background copy | $(mbs "$DATA_MIB" "$IB") | $(awk -v a="$(mbs "$DATA_MIB" "$IB")" -v l="$WRITE_MBS" 'BEGIN {printf "%.2f", a / l}') of write |"
    echo
    echo "Time to first byte of \`restore --instant\` (ms):"
    echo
    echo "| image | client, from the command's start | server, process start to first read |"
    echo "|---|---|---|"
    echo "$TT1"
    echo "$TT16"
} | tee "$OUT"
