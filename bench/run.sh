#!/usr/bin/env bash
# The benchmark: Baton, restic and Borg on the same generated data, in the
# same run, one tool after the other, and Baton against the machine's limits.
#
#   bench/run.sh [--size 2G] [--seed 1] [--tools "baton restic borg"] [--ops "..."]
#   bench/run.sh --scale [--scale-sizes "1G 4G"] [--small-files "125000 500000"]
#
# Default mode, for each tool in turn, on a fresh copy of the dataset and a
# fresh encrypted repository (each op timed with /usr/bin/time, page cache
# dropped before each when the machine allows it):
#   full         first backup
#   nochange     the same backup again, nothing changed
#   incremental  backup after a seeded mutation of ~1% of the files (in-place
#                edits in large files, insertions in medium files, appended,
#                deleted and new small files), applied identically for every tool
#   restore      restore of the latest snapshot into an empty directory, then
#                compared with the source (diff -r; not timed)
#   check        check, reading all data
#   prune        forget all snapshots but the last one, and prune
# then prints one table (wall, CPU, peak RSS, repository size per tool and
# op; Baton's ratio to the best peer) and Baton's distance to the machine's
# limits (cold sequential read of the dataset with one reader and with 8,
# single-core speed of Baton's
# primitives via `baton debug primitives`, and the resulting floor for a full
# backup on all cores), and writes bench/out/results-<stamp>-run.{json,md}
# (scale mode: results-<stamp>-scale.{json,md}); logs in bench/out/run-<stamp>-*/.
#
# Scale mode (--scale): full and no-change backups at two dataset sizes and
# on many small files at two counts, and the exponent b in time ~ size^b;
# plus the memory per chunk of a synthetic index of 1M and 10M chunks.
#
# Options:
#   --size S           dataset size (default 2G)
#   --seed N           dataset seed (default 1); the mutation uses seed N+1
#   --tools "..."      tools, run in this order (default "baton restic borg")
#   --ops "..."        ops to run (default all: full nochange incremental restore
#                      check prune); backups an op depends on run as well
#   --mutate PCT       share of files the mutation touches (default 1)
#   --no-limits        skip the machine-limit measurements
#   --primitives-mib M data per primitive for `baton debug primitives` (default 256)
#   --index-chunks N   synthetic index size (default 10000000; 0 skips it)
#   --scale            scale mode
#   --scale-sizes "A B"    dataset sizes of scale mode (default "1G 4G")
#   --small-files "N M"    file counts of the small-files datasets (default
#                          "125000 500000"; one count: no exponent, "" skips)
#   --out DIR          where datasets, repositories, logs and results go (bench/out)
#   --warm             do not drop the page cache (default: drop when possible)
#   --prepare          only generate the datasets this run would use, then stop
#   --wait-idle SECS   first wait (at most SECS) until other processes use less
#                      than a quarter of a core for 30 s in a row
#                      (do it while the machine is busy; measure when it is quiet)
#
# Environment: BATON_BIN=path uses that binary instead of building one
# (cargo build --release -p baton-cli; CARGO_TARGET_DIR is honoured).
#
# Settings, encryption on for all (each tool gets fresh cache and config
# directories, so no run sees an earlier run's cache):
#   baton:  baton init (zstd 3, the default); backup --json
#   restic: restic init (repository v2: compression auto, the default)
#   borg:   borg init -e repokey-blake2; borg create --compression zstd,3
#           (Borg's default is lz4; zstd,3 compresses like the other two)
#
# Baton's `check`, `forget` and `prune` land on other branches: an op whose
# command is rejected as wrong usage (exit code 2) is reported as n/a.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE=2G SEED=1 TOOLS="baton restic borg" MUTATE_PCT=1
ALL_OPS="full nochange incremental restore check prune"
OPS="$ALL_OPS" LIMITS=1 PRIM_MIB=256 INDEX_CHUNKS=10000000
SCALE=0 SCALE_SIZES="1G 4G" SMALL_FILES="125000 500000"
OUT="${BENCH_OUT:-$ROOT/bench/out}" WARM=0 PREPARE=0 WAIT_IDLE=0

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
    case $1 in
        --size) SIZE=$2; shift ;;
        --seed) SEED=$2; shift ;;
        --tools) TOOLS=$2; shift ;;
        --ops) OPS=$2; shift ;;
        --mutate) MUTATE_PCT=$2; shift ;;
        --no-limits) LIMITS=0 ;;
        --primitives-mib) PRIM_MIB=$2; shift ;;
        --index-chunks) INDEX_CHUNKS=$2; shift ;;
        --scale) SCALE=1 ;;
        --scale-sizes) SCALE_SIZES=$2; shift ;;
        --small-files) SMALL_FILES=$2; shift ;;
        --out) OUT=$2; shift ;;
        --warm) WARM=1 ;;
        --prepare) PREPARE=1 ;;
        --wait-idle) WAIT_IDLE=$2; shift ;;
        -h | --help) usage 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
has_tool() { [[ " $TOOLS " == *" $1 "* ]]; }
has_op() { [[ " $OPS " == *" $1 "* ]]; }

for t in $TOOLS; do
    case $t in baton | restic | borg) ;; *) log "unknown tool '$t' (known: baton restic borg)"; exit 2 ;; esac
done
for o in $OPS; do
    [[ " $ALL_OPS " == *" $o "* ]] || { log "unknown op '$o' (known: $ALL_OPS)"; exit 2; }
done

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# --- 0. datasets ----------------------------------------------------------
# Pristine datasets are kept under $OUT/datasets and regenerated only when the
# seed, size, generator or Python version changed.
GEN="$ROOT/bench/gen_dataset.py"
GEN_ID="gen=$(sha256sum "$GEN" | cut -c1-16) $(python3 -V)"
dataset() {  # NAME GEN-ARGS...: makes sure $OUT/datasets/NAME exists; prints its path
    local name=$1 dir="$OUT/datasets/$1"; shift
    local want="$* $GEN_ID"
    if [[ -d "$dir" && "$(cat "$dir.stamp" 2>/dev/null)" == "$want" ]]; then
        log "dataset $name up to date"
    else
        log "generating dataset $name ($*)"
        rm -rf "$dir" "$dir.stamp"
        mkdir -p "$OUT/datasets"
        local t0=$SECONDS
        python3 "$GEN" "$@" "$dir" >&2
        log "generated $name in $((SECONDS - t0)) s"
        echo "$want" >"$dir.stamp"
    fi
    echo "$dir"
}
stats_json() { python3 "$GEN" --stats "$1"; }
# file names, sizes and mtimes: equal for every tool's copy, or the run is unfair
fingerprint() { (cd "$1" && find . -printf '%p %s %T@ %y\n' | LC_ALL=C sort | sha256sum | cut -c1-16); }

dataset_names() {  # the datasets this run uses: NAME<TAB>GEN-ARGS lines
    if [[ $SCALE == 0 ]]; then
        printf 'mixed-s%s-%s\t--seed %s --size %s\n' "$SEED" "$SIZE" "$SEED" "$SIZE"
        return
    fi
    local s n
    for s in $SCALE_SIZES; do printf 'mixed-s%s-%s\t--seed %s --size %s\n' "$SEED" "$s" "$SEED" "$s"; done
    for n in $SMALL_FILES; do printf 'small-s%s-%s\t--seed %s --small-only %s\n' "$SEED" "$n" "$SEED" "$n"; done
}
if [[ $PREPARE == 1 ]]; then
    while IFS=$'\t' read -r name args; do
        # shellcheck disable=SC2086 # args are words
        dataset "$name" $args >/dev/null
    done < <(dataset_names)
    exit 0
fi

STAMP=$(date +%Y%m%d-%H%M%S)
MODE=$([[ $SCALE == 1 ]] && echo scale || echo run)
RUN="$OUT/run-$STAMP-$MODE"      # logs and raw measurements of this run
LOGS="$RUN/logs"
RUNS="$RUN/runs.tsv"             # one line per timed op (read by quick_report.py)
META="$RUN/meta.tsv"             # key<TAB>value facts about this run
mkdir -p "$LOGS"
: >"$RUNS"
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }

# --- 1. tools -------------------------------------------------------------
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
ensure_peers
BATON=""
if has_tool baton || [[ $LIMITS == 1 ]]; then
    if [[ -n "${BATON_BIN:-}" ]]; then
        BATON="$BATON_BIN"
    else
        log "building baton (cargo build --release -p baton-cli)"
        (cd "$ROOT" && cargo build --release -q -p baton-cli)
        BATON="${CARGO_TARGET_DIR:-$ROOT/target}/release/baton"
    fi
fi
tool_version() {
    case $1 in
        baton) "$BATON" --version 2>/dev/null || echo "baton (unknown version)" ;;
        restic) restic version ;;
        borg) borg --version ;;
    esac
}

# --- 2. machine and load --------------------------------------------------
drop_caches() { [[ $WARM == 0 ]] && { sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; }
if drop_caches; then CACHE=cold; else CACHE=warm; [[ $WARM == 1 ]] || log "cannot drop the page cache: all timings on a warm cache"; fi
HZ=$(getconf CLK_TCK)
# cumulative busy (user+nice+system+irq+softirq) and steal jiffies of all CPUs
cpu_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat; }
load1() { cut -d' ' -f1 /proc/loadavg; }
{
    printf 'mode\t%s\ndate\t%s\nstamp\t%s\n' "$MODE" "$(date -Iseconds)" "$STAMP"
    printf 'size\t%s\nseed\t%s\nmutate_pct\t%s\ncache\t%s\ntools\t%s\nops\t%s\n' \
        "$SIZE" "$SEED" "$MUTATE_PCT" "$CACHE" "$TOOLS" "$OPS"
    printf 'host_cpus\t%s\nhost_mem_kib\t%s\nkernel\t%s\n' "$(nproc)" \
        "$(awk '/MemTotal/ {print $2}' /proc/meminfo)" "$(uname -r)"
    printf 'cpu_model\t%s\n' "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    printf 'cpu_flags\t%s\n' "$(grep -m1 -ow -E 'avx2|avx512f|sha_ni|aes|ssse3|sse4_1' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    printf 'os\t%s\n' "$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    printf 'virt\t%s\n' "$(systemd-detect-virt 2>/dev/null || echo unknown)"
    printf 'out_fs\t%s\n' "$(df -PT "$OUT" | awk 'NR == 2 {print $1 " " $2}')"
    printf 'load_at_start\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'baton_commit\t%s\n' "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo -dirty)"
} >"$META"
for t in $TOOLS; do meta "version_$t" "$(tool_version "$t" | head -n 1)"; done
wait_idle() {  # SECS: until the machine is idle for 30 s (3 samples of 10 s), or SECS passed
    local j0 j1 s quiet=0 t0=$SECONDS
    log "waiting (at most $1 s) for the machine to be idle"
    while ((SECONDS - t0 < $1)); do
        read -r j0 s < <(cpu_jiffies)
        sleep 10
        read -r j1 s < <(cpu_jiffies)
        if awk -v b="$((j1 - j0))" -v hz="$HZ" 'BEGIN {exit !(b / hz / 10 < 0.25)}'; then
            ((++quiet >= 3)) && { log "idle after $((SECONDS - t0)) s"; return 0; }
        else
            quiet=0
        fi
    done
    log "warning: the machine did not become idle in $1 s; measuring anyway"
}
((WAIT_IDLE > 0)) && wait_idle "$WAIT_IDLE"
meta load_at_measure "$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="$(load1)" -v n="$(nproc)" 'BEGIN {exit !(l > 0.5 * n)}'; then
    log "warning: load average $(load1) on $(nproc) CPUs: other work is running, timings will be noisy"
fi

# --- 3. per-tool commands -------------------------------------------------
# Each sets CMD (an array) for TOOL REPO [ARGS].
cmd_init() {
    case $1 in
        baton) CMD=("$BATON" -r "$2" init) ;;
        restic) CMD=(restic -r "$2" init) ;;
        borg) CMD=(borg init -e repokey-blake2 "$2") ;;
    esac
}
cmd_backup() {  # TOOL REPO DATA NAME
    case $1 in
        baton) CMD=("$BATON" -r "$2" backup --json "$3") ;;
        restic) CMD=(restic -r "$2" backup "$3") ;;
        borg) CMD=(borg create --compression zstd,3 "$2::$4" "$3") ;;
    esac
}
cmd_restore() {  # TOOL REPO TARGET LAST-ARCHIVE
    case $1 in
        baton) CMD=("$BATON" -r "$2" restore latest --target "$3") ;;
        restic) CMD=(restic -r "$2" restore latest --target "$3") ;;
        # Borg extracts into the current directory; --sparse as Baton does by default
        # (restic 0.14 has no --sparse).
        borg) CMD=(env -C "$3" borg extract --sparse "$2::$4") ;;
    esac
}
cmd_check() {
    case $1 in
        baton) CMD=("$BATON" -r "$2" check --read-data) ;;
        restic) CMD=(restic -r "$2" check --read-data) ;;
        borg) CMD=(borg check --verify-data "$2") ;;
    esac
}
cmd_prune() {
    case $1 in
        baton) CMD=("$BATON" -r "$2" forget --keep-last 1 --prune) ;;
        restic) CMD=(restic -r "$2" forget --keep-last 1 --prune) ;;
        borg) CMD=(bash -c 'borg prune --keep-last 1 "$1" && borg compact "$1"' prune "$2") ;;
    esac
}

# timed TOOL OP DATASET REPO: runs "${CMD[@]}" under /usr/bin/time (cache
# dropped first) and sets WALL USER SYS RSS RC STATUS OTHER STEAL; logs go to
# $LOGS/DATASET-TOOL-OP.{stdout,stderr,time}.
timed() {
    local tool=$1 op=$2 ds=$3 repo=$4 base="$LOGS/$3-$1-$2" j0 s0 j1 s1
    drop_caches || true
    log "$tool: $op ($ds)"
    read -r j0 s0 < <(cpu_jiffies)
    LOAD1=$(load1)
    RC=0
    /usr/bin/time -f '%e %U %S %M' -o "$base.time" "${CMD[@]}" >"$base.stdout" 2>"$base.stderr" || RC=$?
    read -r j1 s1 < <(cpu_jiffies)
    read -r WALL USER SYS RSS < <(tail -n 1 "$base.time")
    STDOUT="$base.stdout"
    if ((RC == 0)); then
        STATUS=ok
    elif [[ $tool == baton && $RC == 2 ]] && grep -q -i -E 'unrecognized subcommand|unexpected argument|usage' "$base.stderr"; then
        STATUS=n/a
        log "$tool: $op not available in this build (usage error): n/a"
    else
        STATUS=failed
        log "$tool $op FAILED (exit $RC); last lines of $base.stderr:"
        tail -n 5 "$base.stderr" >&2
    fi
    # CPU time used by everything else on the machine meanwhile, in cores
    OTHER=$(awk -v b="$((j1 - j0))" -v hz="$HZ" -v u="$USER" -v s="$SYS" -v w="$WALL" \
        'BEGIN {o = (b / hz - u - s) / (w > 0.01 ? w : 0.01); printf "%.2f", (o < 0 ? 0 : o)}')
    STEAL=$(awk -v b="$((s1 - s0))" -v hz="$HZ" -v w="$WALL" 'BEGIN {printf "%.2f", b / hz / (w > 0.01 ? w : 0.01)}')
    REPO_BYTES=$(du -sb "$repo" 2>/dev/null | cut -f1 || echo 0)
}
# record TOOL OP DATASET [EXTRA-JSON-FIELDS]: appends the last timed op to $RUNS
record() {
    local extra="\"rc\": $RC, \"other_cores\": $OTHER, \"steal_cores\": $STEAL, \"load1\": $LOAD1"
    extra+=", \"cache_bytes\": $(du -sb "$CACHES/$1" 2>/dev/null | cut -f1 || echo 0)"
    [[ -n "${4:-}" ]] && extra+=", $4"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$WALL" "$USER" "$SYS" "$RSS" \
        "$REPO_BYTES" "$STATUS" "$STDOUT" "$3" "{$extra}" >>"$RUNS"
}
# env for every tool command: passwords, and per-tool cache/config directories
CACHES="$OUT/cache"
tool_env() {  # TOOL
    export BATON_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
    export XDG_CACHE_HOME="$CACHES/$1/cache" XDG_CONFIG_HOME="$CACHES/$1/config"
    unset BATON_REPOSITORY RESTIC_REPOSITORY BORG_REPO
}
fresh_repo() {  # TOOL REPO DATASET: empty repository and caches; 1 when init failed
    local tool=$1 repo=$2
    rm -rf "$repo" "$CACHES/$tool"
    mkdir -p "$CACHES/$tool/cache" "$CACHES/$tool/config"
    cmd_init "$tool" "$repo"
    if ! "${CMD[@]}" >"$LOGS/$3-$tool-init.log" 2>&1; then
        log "$tool: init FAILED; last lines of $LOGS/$3-$tool-init.log:"
        tail -n 5 "$LOGS/$3-$tool-init.log" >&2
        printf '%s\tinit\t\t\t\t\t\tfailed\t%s\t%s\t{}\n' "$tool" "$LOGS/$3-$tool-init.log" "$3" >>"$RUNS"
        return 1
    fi
}

# --- 4. machine limits ----------------------------------------------------
measure_read() {  # DIR LABEL [READERS]: cold (if possible) read of every file, one reader or READERS at once
    drop_caches || true
    local w u s xargs_opts="${3:+-n 64 -P $3}"
    /usr/bin/time -f '%e %U %S' -o "$LOGS/read-$2.time" \
        bash -c 'find "$1" -type f -print0 | xargs -0 $2 cat >/dev/null' read "$1" "$xargs_opts"
    read -r w u s < <(tail -n 1 "$LOGS/read-$2.time")
    meta "read_s_$2" "$w"
    meta "read_cpu_s_$2" "$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.2f", u + s}')"
}
measure_limits() {  # DATASET-DIR: read speed, primitives, index memory
    log "limits: sequential read of the dataset ($CACHE cache)"
    measure_read "$1" dataset
    log "limits: parallel read of the dataset, 8 readers ($CACHE cache)"
    measure_read "$1" dataset_par 8
    if [[ -n "$BATON" ]]; then
        log "limits: baton debug primitives --mib $PRIM_MIB"
        "$BATON" debug primitives --json --mib "$PRIM_MIB" >"$RUN/primitives.json" 2>"$LOGS/primitives.stderr" ||
            { log "baton debug primitives failed: $(tail -n 2 "$LOGS/primitives.stderr")"; rm -f "$RUN/primitives.json"; }
    fi
}
measure_index() {  # N...: synthetic index memory for each size
    [[ -n "$BATON" ]] || return 0
    local n
    for n in "$@"; do
        ((n > 0)) || continue
        log "limits: baton debug index-memory --chunks $n"
        "$BATON" debug index-memory --json --chunks "$n" >"$RUN/index-$n.json" 2>"$LOGS/index-$n.stderr" ||
            { log "index-memory failed: $(tail -n 2 "$LOGS/index-$n.stderr")"; rm -f "$RUN/index-$n.json"; }
    done
}

# --- 5. the default run ---------------------------------------------------
# restored_root TARGET DATA: where the copy of DATA ended up inside TARGET
restored_root() {
    local d
    for d in "$1$2" "$1/$(basename "$2")" "$1"; do
        [[ -d "$d/src" || -d "$d/large" ]] && { echo "$d"; return; }
    done
    echo "$1"
}

bench_tool() {  # TOOL PRISTINE
    local tool=$1 pristine=$2 ds=main repo="$OUT/repo-$1" work="$OUT/work/data" target="$OUT/work/restore"
    local last_archive="" nb=1 i
    (tool_env "$tool"
    # A fresh copy of the pristine dataset at the same path for every tool
    # (not timed). The mutation is applied in place to this copy, so
    # unchanged files keep their inode and ctime, as in real life: swapping
    # in a mutated copy would change every inode and make restic and Borg
    # (and Baton) read every file again.
    log "$tool: copying the dataset to $work"
    rm -rf "$OUT/work"; mkdir -p "$OUT/work"
    cp -a "$pristine" "$work"
    meta "fingerprint_v1_$tool" "$(fingerprint "$work")"
    fresh_repo "$tool" "$repo" "$ds" || exit 0
    has_op nochange && nb=2
    { has_op incremental || has_op prune; } && nb=3
    local names=(full nochange incremental)
    for ((i = 0; i < nb; i++)); do
        if ((i == 2)); then
            log "$tool: mutating $MUTATE_PCT% of the files (seed $((SEED + 1)), not timed)"
            python3 "$GEN" --seed "$((SEED + 1))" --mutate "$MUTATE_PCT" "$work" >"$LOGS/$tool-mutate.log"
            meta "fingerprint_v2_$tool" "$(fingerprint "$work")"
            [[ -f "$RUN/dataset-v2.json" ]] || stats_json "$work" >"$RUN/dataset-v2.json"
        fi
        last_archive="${names[i]}-$STAMP"
        cmd_backup "$tool" "$repo" "$work" "$last_archive"
        timed "$tool" "${names[i]}" "$ds" "$repo"
        record "$tool" "${names[i]}" "$ds"
    done
    if has_op restore; then
        rm -rf "$target"; mkdir -p "$target"
        cmd_restore "$tool" "$repo" "$target" "$last_archive"
        timed "$tool" restore "$ds" "$repo"
        local verified=null root alloc_src alloc_dst
        if [[ $STATUS == ok ]]; then
            root=$(restored_root "$target" "$work")
            log "$tool: comparing the restored tree with the source (not timed)"
            if diff -r -q --no-dereference "$work" "$root" >"$LOGS/$ds-$tool-restore.diff" 2>&1; then
                verified=true
            else
                verified=false
                log "$tool: restored tree DIFFERS from the source: $(head -n 3 "$LOGS/$ds-$tool-restore.diff")"
            fi
            alloc_src=$(du -s -B1 "$work" | cut -f1)
            alloc_dst=$(du -s -B1 "$root" | cut -f1)
        fi
        record "$tool" restore "$ds" "\"verified\": $verified, \"source_allocated\": ${alloc_src:-null}, \"restored_allocated\": ${alloc_dst:-null}"
        rm -rf "$target"
    fi
    if has_op check; then
        cmd_check "$tool" "$repo"
        timed "$tool" check "$ds" "$repo"
        record "$tool" check "$ds"
    fi
    if has_op prune; then
        cmd_prune "$tool" "$repo"
        timed "$tool" prune "$ds" "$repo"
        record "$tool" prune "$ds"
    fi
    rm -rf "$repo"
    )
}

# --- 6. scale mode --------------------------------------------------------
scale_tool() {  # TOOL DATASET-NAME DIR
    local tool=$1 ds=$2 dir=$3 repo="$OUT/repo-scale-$1"
    (tool_env "$tool"
    fresh_repo "$tool" "$repo" "$ds" || exit 0
    local op
    for op in full nochange; do
        cmd_backup "$tool" "$repo" "$dir" "$op-$ds"
        timed "$tool" "$op" "$ds" "$repo"
        record "$tool" "$op" "$ds"
    done
    rm -rf "$repo")
}

if [[ $MODE == run ]]; then
    pristine=$(dataset "mixed-s$SEED-$SIZE" --seed "$SEED" --size "$SIZE")
    stats_json "$pristine" >"$RUN/dataset.json"
    meta dataset "mixed-s$SEED-$SIZE"
    if [[ $LIMITS == 1 ]]; then
        measure_limits "$pristine"
        measure_index "$INDEX_CHUNKS"
    fi
    for t in $TOOLS; do bench_tool "$t" "$pristine"; done
    rm -rf "$OUT/work"
else
    names=()
    for s in $SCALE_SIZES; do
        d=$(dataset "mixed-s$SEED-$s" --seed "$SEED" --size "$s")
        names+=("mixed-$s")
        printf 'scale_dataset\tmixed-%s\t%s\t%s\n' "$s" bytes "$(stats_json "$d")" >>"$RUN/datasets.tsv"
        for t in $TOOLS; do scale_tool "$t" "mixed-$s" "$d"; done
    done
    for n in $SMALL_FILES; do
        d=$(dataset "small-s$SEED-$n" --seed "$SEED" --small-only "$n")
        printf 'scale_dataset\tsmall-%s\t%s\t%s\n' "$n" files "$(stats_json "$d")" >>"$RUN/datasets.tsv"
        for t in $TOOLS; do scale_tool "$t" "small-$n" "$d"; done
    done
    if [[ $LIMITS == 1 && $INDEX_CHUNKS -gt 0 ]]; then
        measure_index "$((INDEX_CHUNKS / 10))" "$INDEX_CHUNKS"
    fi
fi
meta load_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# --- 7. report ------------------------------------------------------------
python3 "$ROOT/bench/quick_report.py" "$RUNS" "$META" "$OUT/results-$STAMP-$MODE.json" \
    --run-dir "$RUN" --markdown "$OUT/results-$STAMP-$MODE.md"
