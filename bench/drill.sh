#!/usr/bin/env bash
# A fire drill of a PostgreSQL database of about 1 GiB (pgbench scale 70):
# the cluster on a loop-mounted btrfs, a quiesced volume-snapshot backup
# under pgbench load, replication to a second site, then `baton drill`
# there with the page cache dropped. Needs root, btrfs-progs, PostgreSQL.
#
#   bench/drill.sh [SCALE]      # default 70 (~1.1 GiB of data directory)
#
# Prints and appends to bench/out/drill.tsv: the data directory's size, the
# backup's and the replication's times, how long PostgreSQL was held, and
# the drill's RTO (restore, start and recovery, check) and RPO.
# BATON_BIN=path uses an existing binary.
set -euo pipefail
SCALE="${1:-70}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${BENCH_OUT:-$ROOT/bench/out}"
if [ -z "${BATON_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p baton-cli)
    BATON_BIN="$ROOT/target/release/baton"
fi
B="$BATON_BIN"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
W="$(mktemp -d /tmp/baton-drill-bench.XXXXXX)"
chmod 755 "$W"
PORT=$((20000 + RANDOM % 20000))
cleanup() {
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/mnt/vol/pgdata" -m immediate stop >/dev/null 2>&1 || true
    umount -l "$W/mnt" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
trap 'echo "bench/drill.sh: failed at line $LINENO" >&2' ERR
now() { date +%s.%N; }
mkdir -p "$W/mnt" "$W/sock" "$OUTDIR"
chown postgres: "$W/sock"
truncate -s 8G "$W/vol.img"
mkfs.btrfs -q "$W/vol.img" >/dev/null 2>&1
mount -o loop "$W/vol.img" "$W/mnt"
btrfs subvolume create "$W/mnt/vol" >/dev/null
chown postgres: "$W/mnt/vol"
runuser -u postgres -- "$PGBIN/initdb" -D "$W/mnt/vol/pgdata" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/mnt/vol/pgdata" -l "$W/sock/pg.log" -w \
    -o "-p $PORT -k $W/sock -c listen_addresses= -c max_wal_size=4GB" start >/dev/null
echo "pgbench -i -s $SCALE ..."
runuser -u postgres -- "$PGBIN/pgbench" -i -q -s "$SCALE" -h "$W/sock" -p "$PORT" -U postgres postgres >/dev/null 2>&1
SIZE=$(du -sb "$W/mnt/vol/pgdata" | cut -f1)
echo "data directory: $((SIZE / 1048576)) MiB"
export HOME="$W" BATON_PASSWORD=bench BATON_REPOSITORY="$W/site1"
export BATON_REPLICA_PASSWORD=bench2 BATON_REPLICA_REPOSITORY="$W/site2"
"$B" init -q
BATON_PASSWORD=bench2 "$B" -r "$W/site2" init -q
runuser -u postgres -- "$PGBIN/pgbench" -n -c 2 -T 3600 -h "$W/sock" -p "$PORT" -U postgres postgres >/dev/null 2>&1 &
LOAD=$!
sleep 2
t0=$(now)
"$B" backup --json --volume-snapshot --quiesce-postgres "postgres://postgres@localhost/postgres?host=$W/sock&port=$PORT" \
    --keep-volume-snapshot --tag drill "$W/mnt/vol/pgdata" > "$W/backup.json"
t1=$(now)
kill "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
HELD=$(grep '"volume_snapshot"' "$W/backup.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["held_ms"])')
"$B" replicate --json > "$W/replicate.json"
t2=$(now)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
BATON_PASSWORD=bench2 "$B" -r "$W/site2" drill --json --tag drill --postgres "$W/mnt/vol/pgdata" \
    --check-sql 'SELECT count(*) FROM pgbench_accounts' --expect "$((SCALE * 100000))" \
    --work-dir "$W/drills" > "$W/drill.json" || true
python3 - "$W" "$SIZE" "$t0" "$t1" "$t2" "$HELD" "$OUTDIR/drill.tsv" <<'PY'
import json, sys, os, time
w, size, t0, t1, t2, held, tsv = sys.argv[1:]
d = json.load(open(os.path.join(w, "drill.json")))
backup_s, repl_s = float(t1) - float(t0), float(t2) - float(t1)
print(f"data directory {int(size)/2**20:.0f} MiB; backup {backup_s:.1f} s (PostgreSQL held {held} ms); replication {repl_s:.1f} s")
print(f"drill {'passed' if d['passed'] else 'FAILED: ' + d['reason']}: RTO {d['rto_s']:.1f} s "
      f"(restore {d['restore_s']:.1f} s, start+recovery+check {d['recovery_s']:.1f} s), RPO {d['rpo_s']:.0f} s")
new = not os.path.exists(tsv)
with open(tsv, "a") as f:
    if new:
        f.write("date\tdata_mib\tbackup_s\theld_ms\treplication_s\trto_s\trestore_s\trecovery_s\trpo_s\tpassed\n")
    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\t{int(size)//2**20}\t{backup_s:.1f}\t{held}\t{repl_s:.1f}\t"
            f"{d['rto_s']:.1f}\t{d['restore_s']:.1f}\t{d['recovery_s']:.1f}\t{d['rpo_s']:.0f}\t{d['passed']}\n")
PY
