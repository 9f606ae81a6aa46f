#!/usr/bin/env bash
# Memory of check and prune on a repository with about a million chunks.
#
#   bench/memory.sh [MIB]     # MiB of random data, default 256 (about 1M chunks of 256 B)
#
# The repository uses tiny chunks (64 B / 256 B / 1 KiB) so that a million chunks
# fit in a few hundred MiB of data. Two snapshots share half of the data; the
# second is forgotten, so prune has real work (delete and repack). Prints the
# peak RSS (max resident set, from /usr/bin/time) of each command.
set -euo pipefail
MIB="${1:-256}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${BENCH_OUT:-$ROOT/bench/out}/memory"
BATON="${BATON_BIN:-$ROOT/target/release/baton}"
[ -x "$BATON" ] || (cd "$ROOT" && cargo build --release -q -p baton-cli)
rm -rf "$OUT" && mkdir -p "$OUT/a" "$OUT/b"
export BATON_PASSWORD=bench BATON_REPOSITORY="$OUT/repo"
half=$((MIB / 2))
head -c "${half}M" /dev/urandom > "$OUT/a/shared"
head -c "${half}M" /dev/urandom > "$OUT/b/only-b"
cp "$OUT/a/shared" "$OUT/b/shared"
"$BATON" init -q --chunker 64,256,1024
measure() { # label, command...
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o "$OUT/time" "$@" > "$OUT/last.out" 2> "$OUT/last.err" || { cat "$OUT/last.err"; exit 1; }
    read -r wall rss < "$OUT/time"
    printf '%-28s %8.2f s %10.1f MiB\n' "$label" "$wall" "$(echo "$rss / 1024" | bc -l)"
}
measure "backup a" "$BATON" backup -q "$OUT/a"
measure "backup b" "$BATON" backup -q "$OUT/b"
measure "check" "$BATON" check
measure "check --read-data" "$BATON" check --read-data --json
echo "blobs in the repository: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["blobs_checked"])' "$OUT/last.out")"
"$BATON" forget -q "$("$BATON" snapshots --json | python3 -c 'import json,sys; print([s["id"] for s in json.load(sys.stdin)["snapshots"] if "/b" in s["paths"][0]][0])')"
measure "prune (after forget)" "$BATON" prune
measure "check after prune" "$BATON" check --read-data
