#!/usr/bin/env bash
# A real S3 endpoint on loopback for the tests: a one-node Ceph 16 cluster
# (one monitor, one memstore OSD, pool size 1, cephx off) and a radosgw
# (beast frontend) on 127.0.0.1, all under one data directory, no systemd.
#
#   eval "$(.ci/ceph-s3.sh)"    # start (or reuse) it; prints the AWS_* exports
#   .ci/ceph-s3.sh stop         # kill its daemons, remove its data directory
#
# Environment: CEPH_S3_DIR (/tmp/lookalike-ceph), CEPH_S3_PORT (7480),
# CEPH_S3_MON_PORT (3300), CEPH_S3_ACCESS_KEY (lookalike),
# CEPH_S3_SECRET_KEY (lookalike-secret), CEPH_S3_TIMEOUT (seconds, 120).
# Only the export lines go to stdout; progress goes to stderr, daemon
# output to $CEPH_S3_DIR/log. Objects live in the OSD's memory (memstore).
# AWS_REQUEST_CHECKSUM_CALCULATION=when_required is needed by clients on the
# newer AWS SDKs (pyarrow's, boto3 >= 1.36): their default aws-chunked uploads
# with trailing checksums are refused by radosgw 16 (411 MissingContentLength).
set -euo pipefail

DIR=${CEPH_S3_DIR:-/tmp/lookalike-ceph}
PORT=${CEPH_S3_PORT:-7480}
MON_PORT=${CEPH_S3_MON_PORT:-3300}
ACCESS_KEY=${CEPH_S3_ACCESS_KEY:-lookalike}
SECRET_KEY=${CEPH_S3_SECRET_KEY:-lookalike-secret}
TIMEOUT=${CEPH_S3_TIMEOUT:-120}
ENDPOINT="http://127.0.0.1:${PORT}"
CONF="$DIR/ceph.conf"

say() { echo "ceph-s3: $*" >&2; }

print_exports() {
  cat <<EOF
export AWS_ENDPOINT_URL=$ENDPOINT
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
EOF
}

# shellcheck source=daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"

die() {
  say "ERROR: $*"
  log_tails
  kill_daemons  # the logs stay in $DIR/log; the next start wipes $DIR
  exit 1
}

# SIGTERM (so their logs get flushed), SIGKILL whatever is left after 2s.
kill_daemons() {
  local f pids=() i
  for f in "$DIR"/run/*.pid; do
    [ -f "$f" ] && pids+=("$(cat "$f")")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for i in $(seq 20); do
    kill -0 "${pids[@]}" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
  rm -f "$DIR"/run/*.pid
}

stop_all() {
  kill_daemons
  rm -rf "$DIR"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# An anonymous GET / answers S3 XML: radosgw gives 200 and an empty
# ListAllMyBucketsResult, other S3 servers 403.
endpoint_up() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$ENDPOINT/" 2>/dev/null || true)
  [ "$code" = 200 ] || [ "$code" = 403 ]
}

# Up, and started by us with these settings: $DIR/ready is written once the
# user exists and radosgw answers.
ours_up() {
  [ -f "$DIR/ready" ] && [ "$(cat "$DIR/ready")" = "$PORT $ACCESS_KEY $SECRET_KEY" ] && endpoint_up
}

if [ "${1:-start}" = stop ]; then
  stop_all
  say "stopped, $DIR removed"
  exit 0
elif [ "${1:-start}" != start ]; then
  echo "usage: $0 [start|stop]" >&2
  exit 2
fi

if ours_up; then
  print_exports
  exit 0
fi

# --- 1. packages -------------------------------------------------------------
need=()
for p in ceph-mon ceph-osd ceph-common radosgw curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "need root to install ${need[*]}"
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >"${TMPDIR:-/tmp}/ceph-s3-apt.log" 2>&1 \
    || { tail -n 30 "${TMPDIR:-/tmp}/ceph-s3-apt.log" >&2; die "apt-get install failed"; }
  # The packages enable systemd units but start nothing: we start our own daemons.
fi

# --- 2. cluster ----------------------------------------------------------------
if [ -d "$DIR" ]; then
  say "$DIR exists but is not up with these settings: starting afresh"
  stop_all
fi
for p in "$PORT" "$MON_PORT"; do
  port_busy "$p" && die "127.0.0.1:$p is already in use by another program (set CEPH_S3_PORT / CEPH_S3_MON_PORT)"
done
started=$SECONDS
mkdir -p "$DIR"/{log,run,mon,osd,rgw,tmp}

FSID=$(cat /proc/sys/kernel/random/uuid)
cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
# radosgw defaults to a cephx, "secure"-mode monitor connection: use crc
ms mon client mode = crc
log file = $DIR/log/\$name.log
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
crash dir = $DIR/tmp
log to stderr = false
err to stderr = false
log to syslog = false
mon cluster log to file = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 1
mon data avail crit = 0
osd objectstore = memstore
memstore device bytes = 4294967296

[mon]
mon data = $DIR/mon/\$cluster-\$id
mon initial members = a

[osd]
osd data = $DIR/osd/\$cluster-\$id
osd max object name len = 460
osd max object namespace len = 64

[client]
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw thread pool size = 32
rgw dns name = 127.0.0.1
rgw enable usage log = false
EOF

C=(-c "$CONF")
start_daemon() { # name, binary, args...
  local name=$1; shift
  setsid "$@" "${C[@]}" -f </dev/null >>"$DIR/log/$name.out" 2>&1 &
  echo $! >"$DIR/run/$name.pid"
}

say "creating the monitor"
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$DIR/tmp/monmap" >>"$DIR/log/setup.log" 2>&1 \
  || die "monmaptool failed"
ceph-mon "${C[@]}" --mkfs -i a --monmap "$DIR/tmp/monmap" >>"$DIR/log/setup.log" 2>&1 || die "ceph-mon --mkfs failed"
start_daemon mon.a ceph-mon -i a

ceph_() { timeout 60 ceph "${C[@]}" --connect-timeout 30 "$@" 2>>"$DIR/log/setup.log"; }
ceph_ -s >>"$DIR/log/setup.log" || die "the monitor did not answer"

say "creating the OSD"
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_ID=$(ceph_ osd new "$OSD_UUID") || die "ceph osd new failed"
mkdir -p "$DIR/osd/ceph-$OSD_ID"
ceph-osd "${C[@]}" -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >>"$DIR/log/setup.log" 2>&1 || die "ceph-osd --mkfs failed"
start_daemon "osd.$OSD_ID" ceph-osd -i "$OSD_ID"

deadline=$((started + TIMEOUT))
until ceph_ osd stat -f json 2>/dev/null | grep -q '"num_up_osds":1'; do
  [ $SECONDS -lt $deadline ] || die "the OSD did not come up within ${TIMEOUT}s"
  sleep 0.5
done

say "creating the S3 user"
timeout 120 radosgw-admin "${C[@]}" user create --uid "$ACCESS_KEY" --display-name "lookalike tests" \
  --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" >>"$DIR/log/setup.log" 2>&1 \
  || die "radosgw-admin user create failed"

say "starting radosgw on $ENDPOINT"
start_daemon client.rgw radosgw -n client.rgw

until endpoint_up; do
  [ $SECONDS -lt $deadline ] || die "radosgw did not answer on $ENDPOINT within ${TIMEOUT}s"
  kill -0 "$(cat "$DIR/run/client.rgw.pid")" 2>/dev/null || die "radosgw exited"
  sleep 0.5
done
echo "$PORT $ACCESS_KEY $SECRET_KEY" >"$DIR/ready"
say "ready on $ENDPOINT in $((SECONDS - started))s"
print_exports
