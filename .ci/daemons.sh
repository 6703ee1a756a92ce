# Sourced by the .ci/ scripts that start daemons on loopback (ceph-s3.sh, spark-standalone.sh):
# what they share. Each sets DIR (daemon logs in $DIR/log) and defines say and its own stop.

# The last lines of each daemon's log, to stderr: why a start failed.
log_tails() {
  local f
  for f in "$DIR"/log/*.log; do
    [ -f "$f" ] || continue
    echo "----- tail of $f -----" >&2
    tail -n 25 "$f" >&2
  done
}
