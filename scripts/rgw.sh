#!/usr/bin/env bash
# Throwaway one-node Ceph RADOS Gateway (S3) on loopback, for tests.
#
# One monitor, one memstore OSD (data lives in RAM), no mgr, no cephx auth,
# and radosgw (beast frontend) on 127.0.0.1. All state, logs and pid files live
# under DIR. Built for Debian 12 (ceph 16.2, "pacific").
#
# Usage:
#   scripts/rgw.sh install                  apt-get the packages if missing (root or sudo)
#   scripts/rgw.sh start DIR                start everything; prints `export` lines on stdout
#   scripts/rgw.sh env DIR                  print the `export` lines again
#   scripts/rgw.sh status DIR               exit 0 if every daemon is alive and S3 answers
#   scripts/rgw.sh restart-rgw DIR          restart only radosgw (same port), wait until it answers
#   scripts/rgw.sh quota DIR BUCKET MAXBYTES [MAXOBJECTS]
#                                           set and enable a bucket quota ("off" disables it)
#   scripts/rgw.sh stop DIR                 kill every daemon started under DIR (idempotent)
#
# Typical use:   eval "$(scripts/rgw.sh start /tmp/rgw)"; ...; scripts/rgw.sh stop /tmp/rgw
#
# Environment:
#   RGW_PORT            S3 port (default: a free port in 20000-32767)
#   RGW_ACCESS_KEY      access key of the S3 user (default: batontestaccesskey)
#   RGW_SECRET_KEY      secret key of the S3 user (default: batontestsecretkey)
#   RGW_TIMEOUT         seconds to wait for each daemon (default: 120)
#   RGW_MEMSTORE_BYTES  size of the in-memory OSD (default: 6 GiB; RAM is used lazily)
#   RGW_RESTART_SIGNAL  signal restart-rgw sends first: TERM (default) or KILL (a crash)
#   RGW_KEEP_ON_FAILURE if set, start leaves daemons running when it fails (debugging)
#   RGW_QUIET           if set, no progress lines on stderr
#   RGW_WATCH_PID       start: stop everything and remove DIR once this pid has ended
#
# Progress and errors go to stderr; only the export lines go to stdout, and the
# daemons never hold this script's stdout/stderr (they log under DIR/log), so a
# harness may read stdout to EOF. Any failure exits non-zero with a message and
# the tail of the relevant log.
#
# Timing (2 vCPU): start ~1.5 s, restart-rgw ~0.5 s (0.25 s with KILL), stop
# ~0.4 s. After a KILL restart, bucket creation and quota changes stall up to
# 5 s while the OSD drops the dead gateway's watches; object I/O does not.
#
# S3 notes (radosgw 16.2): use path-style addressing
# (http://127.0.0.1:PORT/BUCKET/KEY); bucket.localhost also works but does not
# resolve everywhere. Any signing region works; a CreateBucket
# LocationConstraint must be absent or "default". Multipart parts must be
# >= 5 MiB except the last (EntityTooSmall), as on AWS. Header-signed requests
# need x-amz-content-sha256. PUT needs Content-Length (chunked: 411).
# If-None-Match: * on PUT gives 412 PreconditionFailed, but is ignored on
# CompleteMultipartUpload, whose response also has an empty <ETag></ETag>.
# A full bucket quota gives 403 QuotaExceeded, before the body is read.

set -euo pipefail
export LC_ALL=C
PATH=$PATH:/usr/sbin:/sbin

PROG=rgw.sh
SELF=$(readlink -f "${BASH_SOURCE[0]}")
RGW_NAME=client.rgw.a
S3_USER=baton
PACKAGES=(ceph-mon ceph-osd radosgw ceph-common curl)
COMMANDS=(ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool curl)

ACCESS_KEY=${RGW_ACCESS_KEY:-batontestaccesskey}
SECRET_KEY=${RGW_SECRET_KEY:-batontestsecretkey}
REGION=us-east-1
TIMEOUT=${RGW_TIMEOUT:-120}

now_ms() { local t=$EPOCHREALTIME; t=${t/./}; echo $((10#$t / 1000)); }
T0=$(now_ms)
log() {
    [[ -n ${RGW_QUIET:-} ]] && return 0
    local ms=$(($(now_ms) - T0))
    printf '%s: [%3d.%02ds] %s\n' "$PROG" $((ms / 1000)) $((ms % 1000 / 10)) "$*" >&2
}
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
usage() {
    sed -n '/^# Usage:/,/^# Typical/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# --- install -----------------------------------------------------------------

missing_commands() {
    local c
    for c in "${COMMANDS[@]}"; do
        command -v "$c" >/dev/null 2>&1 || echo "$c"
    done
}

cmd_install() {
    local missing
    missing=$(missing_commands)
    if [[ -z $missing ]]; then
        log "already installed: $(ceph --version 2>/dev/null || echo ceph)"
        return 0
    fi
    log "missing: $(echo "$missing" | tr '\n' ' ')"
    local -a SUDO=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot apt-get install ${PACKAGES[*]}"
        SUDO=(sudo -n)
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${PACKAGES[*]} (ceph 16+) by hand"
    local -a APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get
        -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
        -o DPkg::Lock::Timeout=300)
    # A fresh image often has no package lists; stale lists give 404s.
    if ! apt-cache show radosgw >/dev/null 2>&1; then
        log "apt-get update"
        "${APT[@]}" update >&2 || die "apt-get update failed"
    fi
    log "apt-get install ${PACKAGES[*]}"
    if ! "${APT[@]}" install --no-install-recommends "${PACKAGES[@]}" >&2; then
        log "install failed; apt-get update and retry"
        "${APT[@]}" update >&2 || die "apt-get update failed"
        "${APT[@]}" install --no-install-recommends "${PACKAGES[@]}" >&2 ||
            die "apt-get install ${PACKAGES[*]} failed"
    fi
    missing=$(missing_commands)
    [[ -z $missing ]] || die "still missing after install: $(echo "$missing" | tr '\n' ' ')"
    log "installed: $(ceph --version)"
}

# --- helpers on a state directory -------------------------------------------

# set_dir DIR [create]: D = absolute path, C = ceph.conf
set_dir() {
    [[ -n ${1:-} ]] || usage
    if [[ ${2:-} == create ]]; then
        mkdir -p -- "$1" || die "cannot create $1"
    fi
    [[ -d $1 ]] || die "no such directory: $1"
    D=$(cd -- "$1" && pwd -P)
    C=$D/ceph.conf
}

need_started() {
    [[ -f $D/.baton-rgw && -f $C && -f $D/port ]] || die "$D holds no gateway started by $PROG"
    PORT=$(<"$D/port")
}

# pid of daemon $1 if it is alive and really ours (guards against pid reuse)
live_pid() {
    local f=$D/pids/$1.pid pid
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$C" || return 1
    echo "$pid"
}

# kill_daemon NAME SIGNAL GRACE_SECONDS: signal, wait, then SIGKILL
kill_daemon() {
    local name=$1 sig=$2 grace=$3 pid
    if pid=$(live_pid "$name"); then
        kill -s "$sig" "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" "$grace" && [[ $sig != KILL ]]; then
            log "$name ($pid) still alive ${grace}s after SIG$sig: SIGKILL"
            kill -s KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 5 || true
        fi
    fi
    rm -f -- "$D/pids/$name.pid"
}

# wait_gone PID SECONDS: wait until PID is gone. A zombie whose threads have
# all exited counts as gone (its files are closed; nobody may reap it soon).
wait_gone() {
    local pid=$1 i tasks
    for ((i = 0; i < $2 * 20; i++)); do
        [[ -e /proc/$pid ]] || return 0
        if [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then
            tasks=(/proc/"$pid"/task/*)
            ((${#tasks[@]} <= 1)) && return 0
        fi
        sleep 0.05
    done
    return 1
}

# spawn NAME CMD...: run a ceph daemon in the foreground (-f) as a background
# job; its stdio goes to DIR/log/NAME.out, its pid to DIR/pids/NAME.pid.
# No setsid: a Ctrl-C on the test's process group reaches the daemons too.
spawn() {
    local name=$1
    shift
    "$@" -f </dev/null >>"$D/log/$name.out" 2>&1 &
    echo $! >"$D/pids/$name.pid"
}

log_tail() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf -- '--- last lines of %s\n' "$f" >&2
        tail -n 15 -- "$f" >&2
    done
}

# fail_with NAME MESSAGE: die, showing NAME's logs
fail_with() {
    local name=$1
    shift
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    log_tail "$D/log/$name.out" "$D/log/$name.log"
    exit 1
}

# ceph CLI with bounded waiting (the CLI retries forever without a monitor)
cephq() { timeout 20 ceph -c "$C" --connect-timeout 10 "$@"; }

s3_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$PORT/" 2>/dev/null || true; }

# owns_port PID PORT: PID has a socket listening on 127.0.0.1:PORT (so a
# reply on PORT comes from our daemon, not from another one on the same port)
owns_port() {
    local pid=$1 hex inode fds
    printf -v hex '0100007F:%04X' "$2"
    fds=$(ls -l "/proc/$pid/fd" 2>/dev/null) || return 1
    while read -r inode; do
        [[ $fds == *"socket:[$inode]"* ]] && return 0
    done < <(awk -v a="$hex" '$2 == a && $4 == "0A" { print $10 }' /proc/net/tcp)
    return 1
}

# wait_rgw: 0 when our radosgw answers; 2 when it died because the port was
# taken; any other failure ends the script
wait_rgw() {
    local deadline=$(($(now_ms) + TIMEOUT * 1000)) code pid
    while :; do
        code=$(s3_code)
        if ! pid=$(live_pid rgw); then
            tail -c +"$((RGW_LOG_OFFSET + 1))" "$D/log/$RGW_NAME.log" 2>/dev/null |
                grep -q 'failed to bind address' && return 2
            fail_with rgw "radosgw exited before answering on 127.0.0.1:$PORT"
        fi
        [[ $code == 200 ]] && owns_port "$pid" "$PORT" && return 0
        (($(now_ms) < deadline)) ||
            fail_with rgw "radosgw did not answer on 127.0.0.1:$PORT within ${TIMEOUT}s (last HTTP code '${code:-none}')"
        sleep 0.1
    done
}

# start_rgw: 0 when radosgw answers, 2 when its port was taken
start_rgw() {
    RGW_LOG_OFFSET=$(stat -c %s "$D/log/$RGW_NAME.log" 2>/dev/null || echo 0) # wait_rgw reads this run's lines
    spawn rgw radosgw -c "$C" -n "$RGW_NAME"
    wait_rgw
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12768)) # below Linux's ephemeral range
        port_free "$p" && { echo "$p"; return 0; }
    done
    die "found no free loopback port"
}

print_env() {
    cat <<EOF
export BATON_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_DEFAULT_REGION=$REGION
export AWS_REGION=$REGION
EOF
}

# --- start -------------------------------------------------------------------

STARTED=0
on_start_exit() {
    local rc=$?
    if [[ $rc != 0 && $STARTED == 0 && -z ${RGW_KEEP_ON_FAILURE:-} && -n ${D:-} ]]; then
        printf '%s: start failed; stopping what was started (set RGW_KEEP_ON_FAILURE=1 to keep it)\n' "$PROG" >&2
        stop_all >/dev/null 2>&1 || true
    fi
    exit "$rc"
}

cmd_start() {
    local missing
    missing=$(missing_commands)
    [[ -z $missing ]] || die "missing commands: $(echo "$missing" | tr '\n' ' ')- run '$0 install' first"
    set_dir "${1:-}" create
    if [[ -e $D/.baton-rgw ]]; then
        local n
        for n in rgw osd mon; do
            ! live_pid "$n" >/dev/null || die "a gateway is already running under $D (run '$0 stop $D' first)"
        done
        rm -rf -- "${D:?}"/{ceph.conf,keyring,monmap,port,env,run,log,pids,mon.a,osd.0,rgw}
    elif [[ -n $(ls -A -- "$D") ]]; then
        die "$D is not empty and was not made by $PROG; give an empty or new directory"
    fi
    if [[ -n ${RGW_PORT:-} ]]; then
        [[ $RGW_PORT =~ ^[0-9]+$ ]] || die "RGW_PORT is not a number: $RGW_PORT"
        PORT=$RGW_PORT
        port_free "$PORT" || die "RGW_PORT $PORT is already in use on 127.0.0.1"
    else
        PORT=$(pick_port)
    fi

    trap on_start_exit EXIT
    touch "$D/.baton-rgw"
    mkdir -p "$D"/{run,log,pids,mon.a,osd.0,rgw}

    local mon_port
    mon_port=$PORT
    while [[ $mon_port == "$PORT" ]]; do mon_port=$(pick_port); done

    # Unix sockets paths are limited to 107 bytes; drop the admin sockets if too long.
    local asok="$D/run/\$name.asok"
    ((${#D} + 30 < 107)) || asok=""

    local fsid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    cat >"$C" <<EOF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
public_network = 127.0.0.0/8
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_bind_ipv6 = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
run_dir = $D/run
admin_socket = $asok
pid_file =
crash_dir = $D/run/crash
log_file = $D/log/\$name.log
mon_cluster_log_file = $D/log/cluster.log
keyring = $D/keyring
# A killed radosgw keeps its watches until they time out (default 30 s), and
# every metadata change (bucket create, quota set) waits for them. Ping
# watches each second and drop a silent watcher after 5 s.
objecter_tick_interval = 1
osd_client_watch_timeout = 5
[mon]
mon_data = $D/mon.\$id
mon_data_avail_crit = 0
mon_data_avail_warn = 0
# Commit map changes at once instead of batching them for 1 s (pool creation)
paxos_propose_interval = 0.01
paxos_min_wait = 0.001
[osd]
osd_data = $D/osd.\$id
osd_objectstore = memstore
memstore_device_bytes = ${RGW_MEMSTORE_BYTES:-6442450944}
osd_max_object_name_len = 460
osd_max_object_namespace_len = 64
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
[$RGW_NAME]
rgw_frontends = beast endpoint=127.0.0.1:$PORT
rgw_data = $D/rgw
rgw_dns_name = localhost
ms_mon_client_mode = crc secure
auth_client_required = none
rgw_bucket_quota_ttl = 0
rgw_user_quota_bucket_sync_interval = 0
rgw_user_quota_sync_interval = 0
EOF
    echo "$PORT" >"$D/port"
    log "state in $D; S3 port $PORT, mon port $mon_port"

    # monitor
    ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
        --cap mgr 'allow *' >/dev/null
    monmaptool --create --addv a "[v2:127.0.0.1:$mon_port]" --fsid "$fsid" --clobber "$D/monmap" >/dev/null
    ceph-mon -c "$C" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring" >>"$D/log/mon.out" 2>&1 ||
        fail_with mon "ceph-mon --mkfs failed"
    spawn mon ceph-mon -c "$C" -i a
    local deadline=$(($(now_ms) + TIMEOUT * 1000))
    until cephq mon stat >/dev/null 2>&1 && owns_port "$(live_pid mon)" "$mon_port"; do
        live_pid mon >/dev/null || fail_with mon "ceph-mon exited (mon port $mon_port taken?)"
        (($(now_ms) < deadline)) || fail_with mon "ceph-mon did not answer within ${TIMEOUT}s"
        sleep 0.2
    done
    log "mon up"

    # OSD
    local uuid id
    uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$(cephq osd new "$uuid" 2>>"$D/log/osd.out") || fail_with osd "'ceph osd new' failed"
    [[ $id == 0 ]] || fail_with osd "unexpected OSD id '$id'"
    ceph-osd -c "$C" -i 0 --mkfs --osd-uuid "$uuid" >>"$D/log/osd.out" 2>&1 ||
        fail_with osd "ceph-osd --mkfs failed"
    spawn osd ceph-osd -c "$C" -i 0
    deadline=$(($(now_ms) + TIMEOUT * 1000))
    until cephq osd stat -f json 2>/dev/null | grep -q '"num_up_osds":1'; do
        live_pid osd >/dev/null || fail_with osd "ceph-osd exited"
        (($(now_ms) < deadline)) || fail_with osd "OSD not up within ${TIMEOUT}s"
        sleep 0.2
    done
    log "osd up"

    # radosgw; its first start creates its pools
    local tries=0 rc
    while :; do
        rc=0
        start_rgw || rc=$?
        [[ $rc == 0 ]] && break
        tries=$((tries + 1))
        [[ -z ${RGW_PORT:-} && $tries -lt 5 ]] ||
            fail_with rgw "radosgw could not bind 127.0.0.1:$PORT: the port is taken"
        local old=$PORT
        PORT=$(pick_port)
        sed -i "s/^rgw_frontends = .*/rgw_frontends = beast endpoint=127.0.0.1:$PORT/" "$C"
        echo "$PORT" >"$D/port"
        log "port $old was taken; radosgw retries on port $PORT"
    done
    log "radosgw answers on 127.0.0.1:$PORT"
    rgw_admin user create --uid="$S3_USER" --display-name="$S3_USER" \
        --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY"
    log "user $S3_USER created"

    print_env >"$D/env"
    STARTED=1
    if [[ -n ${RGW_WATCH_PID:-} ]]; then
        # Stops everything (and removes DIR) once that process has ended: a
        # test run that starts a gateway for itself never leaves one behind,
        # even when it is killed.
        (
            while kill -0 "$RGW_WATCH_PID" 2>/dev/null; do sleep 1; done
            RGW_QUIET=1 "$SELF" stop "$D" >/dev/null 2>&1
            rm -rf -- "${D:?}"
        ) </dev/null >/dev/null 2>&1 &
        disown
        log "watching pid $RGW_WATCH_PID: stops when it ends"
    fi
    print_env
}

# --- other commands ----------------------------------------------------------

stop_all() {
    # radosgw stops quickly on TERM. The memstore OSD would dump all objects to
    # disk on a clean shutdown, so it gets SIGKILL: its data is throwaway.
    kill_daemon rgw TERM 10
    kill_daemon osd KILL 5
    kill_daemon mon TERM 10
}

cmd_stop() {
    [[ -n ${1:-} ]] || usage
    if [[ ! -d $1 ]]; then
        log "no directory $1: nothing to stop"
        return 0
    fi
    set_dir "$1"
    [[ -e $D/.baton-rgw ]] || die "$D holds no gateway started by $PROG"
    stop_all
    local n
    for n in rgw osd mon; do
        ! live_pid "$n" >/dev/null || die "could not stop $n (pid $(live_pid "$n"))"
    done
    log "stopped"
}

cmd_restart_rgw() {
    set_dir "${1:-}"
    need_started
    live_pid mon >/dev/null || die "the monitor under $D is not running"
    live_pid osd >/dev/null || die "the OSD under $D is not running"
    local sig=${RGW_RESTART_SIGNAL:-TERM}
    kill_daemon rgw "$sig" 10
    log "radosgw stopped (SIG$sig)"
    local i
    for ((i = 0; i < 100; i++)); do
        port_free "$PORT" && break
        sleep 0.05
    done
    port_free "$PORT" || die "port $PORT still taken 5 s after radosgw stopped"
    start_rgw || fail_with rgw "radosgw could not bind 127.0.0.1:$PORT again: the port is taken"
    log "radosgw answers again on 127.0.0.1:$PORT"
}

# rgw_admin ARGS...: radosgw-admin on DIR's cluster; its chatter goes to log/admin.out
rgw_admin() {
    timeout 60 radosgw-admin -c "$C" "$@" >/dev/null 2>>"$D/log/admin.out" ||
        fail_with admin "radosgw-admin $* failed"
}

cmd_quota() {
    set_dir "${1:-}"
    need_started
    local bucket=${2:-} max=${3:-} objs=${4:--1}
    [[ -n $bucket && -n $max ]] || usage
    if [[ $max == off ]]; then
        rgw_admin quota disable --quota-scope=bucket --bucket="$bucket"
        log "quota of bucket $bucket disabled"
        return 0
    fi
    [[ $max =~ ^-?[0-9]+$ && $objs =~ ^-?[0-9]+$ ]] || die "MAXBYTES and MAXOBJECTS must be integers"
    # quota set succeeds silently on a bucket that does not exist
    timeout 60 radosgw-admin -c "$C" bucket stats --bucket="$bucket" >/dev/null 2>>"$D/log/admin.out" ||
        die "no bucket '$bucket' (create it before setting its quota)"
    rgw_admin quota set --quota-scope=bucket --bucket="$bucket" --max-size="$max" --max-objects="$objs"
    rgw_admin quota enable --quota-scope=bucket --bucket="$bucket"
    log "quota of bucket $bucket: max $max bytes, max $objs objects"
}

cmd_status() {
    set_dir "${1:-}"
    need_started
    local n rc=0
    for n in mon osd rgw; do
        if live_pid "$n" >/dev/null; then echo "$n: running (pid $(live_pid "$n"))"; else echo "$n: not running"; rc=1; fi
    done
    local code
    code=$(s3_code)
    echo "s3: http://127.0.0.1:$PORT/ -> HTTP ${code:-none}"
    [[ $code == 200 ]] || rc=1
    return "$rc"
}

cmd_env() {
    set_dir "${1:-}"
    need_started
    print_env
}

case ${1:-} in
install) cmd_install ;;
start) cmd_start "${2:-}" ;;
stop) cmd_stop "${2:-}" ;;
restart-rgw) cmd_restart_rgw "${2:-}" ;;
quota) cmd_quota "${2:-}" "${3:-}" "${4:-}" "${5:--1}" ;;
status) cmd_status "${2:-}" ;;
env) cmd_env "${2:-}" ;;
*) usage ;;
esac
