#!/usr/bin/env bash
# A one-node Ceph cluster on loopback, for udax's RBD tests and benchmarks.
#
#   scripts/ceph-one-node.sh start DIR   # mon, mgr, one memstore OSD, pool "rbd"; ~1 minute
#   scripts/ceph-one-node.sh wait DIR    # waits (bounded) for the OSD up and every PG clean
#   scripts/ceph-one-node.sh stop DIR    # stops the daemons by their PID files
#
# Everything lives in DIR (config, monitor store, logs, sockets, PID files); nothing is
# installed or started outside it. The client config is DIR/ceph.conf: point udax at it
# with `rbd:rbd/IMAGE?conf=DIR/ceph.conf` or UDAX_CEPH_CONF=DIR/ceph.conf for the tests.
# The OSD keeps its objects in memory (memstore; UDAX_CEPH_MEMSTORE_BYTES, default 6 GiB,
# caps them), or with UDAX_CEPH_OBJECTSTORE=bluestore in a sparse file in DIR. Authentication is off; the daemons listen on 127.0.0.1 only, the monitor on
# UDAX_CEPH_PORT (default 10930), the others on 10931-10999.
#
# Needs (Debian): ceph-mon ceph-osd ceph-mgr ceph-common uuid-runtime.
set -euo pipefail

usage() {
    echo "usage: $0 start|wait|stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
action=$1
dir=$2
port=${UDAX_CEPH_PORT:-10930}
memstore_bytes=${UDAX_CEPH_MEMSTORE_BYTES:-$((6 << 30))}
# memstore (default) keeps objects in the OSD's memory: fast, but an OSD killed with
# SIGKILL comes back without them. bluestore keeps them in a sparse file DIR/osd.0/block
# (8 GiB apparent), so the OSD can be killed and restarted.
objectstore=${UDAX_CEPH_OBJECTSTORE:-memstore}

# Stops every daemon whose PID file is in DIR/run, then waits (bounded) for them to go.
stop() {
    local pids=() pid file
    for file in "$dir"/run/*.pid; do
        [ -e "$file" ] || continue
        pid=$(cat "$file")
        # Only a process that is still a Ceph daemon: a stale file may name a reused PID.
        if [ -n "$pid" ] && grep -qs ceph "/proc/$pid/cmdline"; then
            kill -CONT "$pid" 2>/dev/null || true # a test may have left the OSD stopped
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$file"
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        [ $alive -eq 0 ] && return 0
        sleep 0.2
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

# `ceph` against this cluster, never waiting for ever.
ceph_cmd() {
    timeout 60 ceph -c "$dir/ceph.conf" --connect-timeout 30 "$@"
}

# Waits up to $1 seconds for `$2...` to succeed.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "ceph-one-node: timed out waiting for: $*; logs in $dir/log" >&2
            return 1
        fi
        sleep 1
    done
}

osd_up() { ceph_cmd osd dump | grep -q '^osd.0 up'; }
pgs_clean() {
    local stat
    stat=$(ceph_cmd pg stat)
    # "8 pgs: 8 active+clean; ..." and nothing else.
    [[ $stat =~ ^([0-9]+)\ pgs:\ ([0-9]+)\ active\+clean\; ]] &&
        [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] && [ "${BASH_REMATCH[1]}" != 0 ]
}

start() {
    if [ -e "$dir/run/mon.a.pid" ]; then
        echo "ceph-one-node: $dir already has a cluster; stop it first" >&2
        exit 1
    fi
    mkdir -p "$dir"/{run,log,mon.a,mgr.x,osd.0}
    dir=$(cd "$dir" && pwd)
    local fsid
    fsid=$(uuidgen)
    cat >"$dir/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind port min = $((port + 1))
ms bind port max = 10999
auth cluster required = none
auth service required = none
auth client required = none
keyring = $dir/keyring
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
mon data = $dir/\$name
mgr data = $dir/\$name
osd data = $dir/\$name
osd objectstore = $objectstore
memstore device bytes = $memstore_bytes
bluestore block create = true
bluestore block size = $((8 << 30))
bluestore cache size = $((256 << 20))
bluestore fsck on mount = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
mgr initial modules =
EOF
    monmaptool --create --add a "v2:127.0.0.1:$port" --fsid "$fsid" "$dir/monmap" >/dev/null
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-mon -c "$dir/ceph.conf" -i a --mkfs --monmap "$dir/monmap" --keyring "$dir/keyring"
    ceph-mon -c "$dir/ceph.conf" -i a
    wait_for 60 ceph_cmd mon stat
    ceph-mgr -c "$dir/ceph.conf" -i x
    local uuid id
    uuid=$(uuidgen)
    id=$(ceph_cmd osd new "$uuid")
    [ "$id" = 0 ] || {
        echo "ceph-one-node: expected osd.0, got osd.$id" >&2
        exit 1
    }
    ceph-osd -c "$dir/ceph.conf" -i 0 --mkfs --osd-uuid "$uuid" 2>>"$dir/log/mkfs.log"
    ceph-osd -c "$dir/ceph.conf" -i 0
    ceph_cmd osd crush add osd.0 1.0 host=localhost root=default >/dev/null 2>&1
    wait_for 90 osd_up
    ceph_cmd osd pool create rbd 8 8 >/dev/null 2>&1
    timeout 60 rbd -c "$dir/ceph.conf" pool init rbd
    wait_for 90 pgs_clean
    echo "ceph-one-node: up in $dir (conf $dir/ceph.conf, monitor 127.0.0.1:$port)"
}

case $action in
start)
    # A start that fails halfway leaves nothing running.
    trap 'stop' ERR
    start
    ;;
# After tests that kill, stop or restart the OSD: the cluster serves again only once it
# has peered, and a client started before may fail (or worse: see .ci/run).
wait) wait_for 120 osd_up && wait_for 120 pgs_clean ;;
stop) stop ;;
*) usage ;;
esac
