#!/usr/bin/env bash
# Quick comparison of Baton, restic and Borg on the same generated data, in
# the same run.
#
#   bench/quick.sh [SIZE]          # SIZE of the dataset, default 1G
#
# For each tool in turn: init a fresh encrypted repository under bench/out/,
# back up the dataset (full), back it up again unchanged (nochange), timing
# both with /usr/bin/time; then print one table and write
# bench/out/results-<date>.json.
#
# Environment:
#   BENCH_TOOLS="baton restic borg"   tools to run, in this order
#   BENCH_SEED=1                      dataset seed
#   BENCH_OUT=bench/out               where data, repositories, logs and results go
#   BATON_BIN=path                    use this baton binary; skip the cargo build
#
# Settings (encryption on for all):
#   restic: repository v2, default compression (auto); RESTIC_PASSWORD=bench
#   borg:   borg init -e repokey-blake2; borg create --compression zstd,3; BORG_PASSPHRASE=bench
#   baton:  baton -r REPO init; baton -r REPO backup --json DATA; BATON_PASSWORD=bench
# Each tool gets its own fresh cache/config directories (XDG_CACHE_HOME,
# XDG_CONFIG_HOME under bench/out/cache/TOOL), so runs don't see old caches.
set -euo pipefail

SIZE="${1:-1G}"
SEED="${BENCH_SEED:-1}"
TOOLS="${BENCH_TOOLS:-baton restic borg}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${BENCH_OUT:-$ROOT/bench/out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DATA="$OUT/data"
LOGS="$OUT/logs"
RUNS="$OUT/runs.tsv"   # one line per timed run, read by quick_report.py
META="$OUT/meta.tsv"   # key<TAB>value facts about this run
STAMP=$(date +%Y%m%d-%H%M%S)

log() { printf '[quick] %s\n' "$*" >&2; }
has_tool() { [[ " $TOOLS " == *" $1 "* ]]; }

for tool in $TOOLS; do
    case $tool in
        baton | restic | borg) ;;
        *) log "unknown tool '$tool' in BENCH_TOOLS (known: baton restic borg)"; exit 2 ;;
    esac
done

# --- 1. tools -------------------------------------------------------------
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
ensure_peers

if has_tool baton; then
    if [[ -n "${BATON_BIN:-}" ]]; then
        BATON="$BATON_BIN"
    else
        log "building baton (cargo build --release -p baton-cli)"
        (cd "$ROOT" && cargo build --release -p baton-cli)
        BATON="$ROOT/target/release/baton"
    fi
fi

# --- 2. dataset -----------------------------------------------------------
# Regenerate only when seed, size, generator or Python version changed.
GEN="$ROOT/bench/gen_dataset.py"
want="seed=$SEED size=$SIZE gen=$(sha256sum "$GEN" | cut -c1-16) $(python3 -V)"
if [[ -d "$DATA" && -f "$OUT/data.stamp" && "$(cat "$OUT/data.stamp")" == "$want" ]]; then
    log "dataset up to date ($want)"
else
    log "generating dataset ($want)"
    rm -rf "$DATA" "$OUT/data.stamp"
    python3 "$GEN" --seed "$SEED" --size "$SIZE" "$DATA" >&2
    echo "$want" >"$OUT/data.stamp"
fi

# --- 3. page cache --------------------------------------------------------
# Drop caches before every timed run when we may (root, not in a locked-down
# container); otherwise all runs are on a warm cache, and the report says so.
drop_caches() { { sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; }
if drop_caches; then CACHE="cold"; else CACHE="warm"; log "cannot drop page caches: warm cache"; fi

# --- 4. per-tool commands -------------------------------------------------
tool_init() {  # TOOL REPO
    case $1 in
        baton)  BATON_PASSWORD=bench "$BATON" -r "$2" init ;;
        restic) RESTIC_PASSWORD=bench restic -r "$2" init ;;
        borg)   BORG_PASSPHRASE=bench borg init -e repokey-blake2 "$2" ;;
    esac
}
backup_cmd() {  # TOOL REPO NAME: sets CMD to the backup command (NAME: unique per backup)
    case $1 in
        baton)  CMD=(env BATON_PASSWORD=bench "$BATON" -r "$2" backup --json "$DATA") ;;
        restic) CMD=(env RESTIC_PASSWORD=bench restic -r "$2" backup "$DATA") ;;
        borg)   CMD=(env BORG_PASSPHRASE=bench borg create --compression zstd,3 "$2::$3" "$DATA") ;;
    esac
}
tool_version() {  # TOOL
    case $1 in
        baton)  "$BATON" --version 2>/dev/null || echo "baton (unknown version)" ;;
        restic) restic version ;;
        borg)   borg --version ;;
    esac
}

# run_timed TOOL OP REPO: one timed backup; appends a line to $RUNS.
# Logs: $LOGS/TOOL-OP.{stdout,stderr,time}.
run_timed() {
    local tool=$1 op=$2 repo=$3 base="$LOGS/$1-$2" status=ok wall user sys rss
    backup_cmd "$tool" "$repo" "$op-$STAMP"
    drop_caches || true
    log "$tool: $op backup"
    if ! /usr/bin/time -f '%e %U %S %M' -o "$base.time" "${CMD[@]}" >"$base.stdout" 2>"$base.stderr"; then
        status=failed
        log "$tool $op FAILED; last lines of $base.stderr:"
        tail -n 5 "$base.stderr" >&2
    fi
    # The time file's last line is "wall user sys maxrss" (a "Command exited
    # with non-zero status N" line precedes it on failure).
    read -r wall user sys rss < <(tail -n 1 "$base.time")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$op" "$wall" "$user" "$sys" "$rss" \
        "$(du -sb "$repo" | cut -f1)" "$status" "$base.stdout" >>"$RUNS"
}

# bench_tool TOOL: fresh repository and caches, then the two timed backups.
bench_tool() {
    local tool=$1 repo="$OUT/repo-$1"
    # Each tool gets its own empty cache and config directories.
    local -x XDG_CACHE_HOME="$OUT/cache/$tool/cache" XDG_CONFIG_HOME="$OUT/cache/$tool/config"
    rm -rf "$repo" "$OUT/cache/$tool"
    mkdir -p "$XDG_CACHE_HOME" "$XDG_CONFIG_HOME"
    printf 'version_%s\t%s\n' "$tool" "$(tool_version "$tool" | head -n 1)" >>"$META"
    log "$tool: init $repo"
    if ! tool_init "$tool" "$repo" >"$LOGS/$tool-init.log" 2>&1; then
        log "$tool: init FAILED; last lines of $LOGS/$tool-init.log:"
        tail -n 5 "$LOGS/$tool-init.log" >&2
        printf '%s\tinit\t\t\t\t\t\tfailed\t%s\n' "$tool" "$LOGS/$tool-init.log" >>"$RUNS"
        return 0
    fi
    run_timed "$tool" full "$repo"
    run_timed "$tool" nochange "$repo"
}

# --- 5. run ---------------------------------------------------------------
rm -rf "$LOGS"; mkdir -p "$LOGS"
: >"$RUNS"
{
    printf 'date\t%s\n' "$(date -Iseconds)"
    printf 'size\t%s\nseed\t%s\ncache\t%s\ntools\t%s\n' "$SIZE" "$SEED" "$CACHE" "$TOOLS"
    printf 'data_files\t%s\n' "$(find "$DATA" -type f | wc -l)"
    printf 'data_bytes_apparent\t%s\n' "$(find "$DATA" -type f -printf '%s\n' | awk '{s += $1} END {print s}')"
    printf 'data_bytes_allocated\t%s\n' "$(($(du -sk "$DATA" | cut -f1) * 1024))"
    printf 'host_cpus\t%s\nhost_mem_kib\t%s\nkernel\t%s\n' "$(nproc)" \
        "$(awk '/MemTotal/ {print $2}' /proc/meminfo)" "$(uname -r)"
} >"$META"

for tool in $TOOLS; do bench_tool "$tool"; done

# --- 6. report ------------------------------------------------------------
python3 "$ROOT/bench/quick_report.py" "$RUNS" "$META" "$OUT/results-$STAMP.json"
