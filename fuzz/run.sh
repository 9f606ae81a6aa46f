#!/usr/bin/env bash
# Builds the fuzz targets and runs each one for SECONDS_PER_TARGET seconds
# (default 20), one after the other. Prints the executions of each target and
# the total; exits non-zero if any target crashed, hung or ran out of memory.
#
#   fuzz/run.sh            # 20 s per target
#   fuzz/run.sh 600        # 10 minutes per target
#   FUZZ_TARGETS="index object" fuzz/run.sh 60
#
# Runs on the stable toolchain: `--sanitizer none` is the only thing that
# needs no nightly (cargo-fuzz then passes only stable rustc flags for the
# coverage instrumentation). Debug assertions are on, so integer overflow
# panics. Needs cargo-fuzz (`cargo install cargo-fuzz --locked`).
#
# Corpora: fuzz/seeds/<target>/ (committed, read-only) seed each run;
# what the fuzzer finds goes to fuzz/corpus/<target>/ (not committed) and is
# reused by the next run; fuzz/regressions/<target>/ (committed) holds inputs
# that once crashed and are replayed first. A crash leaves its input in
# fuzz/artifacts/<target>/ and the log in fuzz/target/logs/<target>.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs=${1:-20}
case $secs in '' | *[!0-9]*)
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]" >&2
    exit 2
    ;;
esac
all=(config key_file index fixed pack_header tree snapshot journal_record object blob nbd_request nbd_session)
read -ra targets <<<"${FUZZ_TARGETS:-${all[*]}}"
flags=(--sanitizer none --debug-assertions)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

echo "== building fuzz targets ($(cargo fuzz --version))"
start=$SECONDS
cargo fuzz build "${flags[@]}"
echo "built in $((SECONDS - start)) s"

mkdir -p fuzz/target/logs
total=0
failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    dirs=("fuzz/corpus/$t" "fuzz/seeds/$t")
    [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    case $t in
    config | key_file | tree | snapshot | journal_record) args+=(-dict=fuzz/dicts/json.dict) ;;
    esac
    log=fuzz/target/logs/$t.log
    if cargo fuzz run "${flags[@]}" "$t" "${dirs[@]}" -- "${args[@]}" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
    fi
    # libFuzzer's final statistics (-print_final_stats=1), or its "Done N runs" line.
    runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    [ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
    runs=${runs:-0}
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    total=$((total + runs))
    printf '%-16s %-6s %12s executions  %6s edges  %s\n' "$t" "$status" "$runs" "${cov:-?}" "$(find "fuzz/corpus/$t" -type f | wc -l) corpus files"
    if [ "$status" = FAILED ]; then
        echo "---- last lines of $log"
        tail -n 60 "$log"
        echo "----"
    fi
done
printf '%-16s %-6s %12s executions in %s s per target\n' total "" "$total" "$secs"
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz targets that failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
