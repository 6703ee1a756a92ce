#!/usr/bin/env bash
# A real Spark standalone cluster on loopback for the tests: one master and two one-core
# workers, started from the pyspark installation of the venv (no separate Spark download).
#
#   eval "$(.ci/spark-standalone.sh)"    # start it; prints the exports the tests read
#   .ci/spark-standalone.sh stop         # kill master, workers and their executors
#
# Environment: SPARK_CLUSTER_DIR (/tmp/lookalike-spark), SPARK_CLUSTER_PORT (7077),
# SPARK_CLUSTER_UI_PORT (8080, the master's web UI and its /json/ status),
# SPARK_CLUSTER_WORKERS (2), SPARK_CLUSTER_WORKER_MEMORY (3g), VENV (.venv),
# SPARK_CLUSTER_TIMEOUT (seconds, 90). Only the export lines go to stdout; progress goes to
# stderr, daemon output to $SPARK_CLUSTER_DIR/log.
set -euo pipefail

DIR=${SPARK_CLUSTER_DIR:-/tmp/lookalike-spark}
PORT=${SPARK_CLUSTER_PORT:-7077}
UI_PORT=${SPARK_CLUSTER_UI_PORT:-8080}
WORKERS=${SPARK_CLUSTER_WORKERS:-2}
MEMORY=${SPARK_CLUSTER_WORKER_MEMORY:-3g}
VENV=${VENV:-.venv}
TIMEOUT=${SPARK_CLUSTER_TIMEOUT:-90}
MASTER="spark://127.0.0.1:${PORT}"

say() { echo "spark-standalone: $*" >&2; }

# SIGTERM the daemons (a worker then stops its executors), SIGKILL whatever is left after 5s,
# executors included (their command lines name the master's work folder).
stop_all() {
  local f pids=() i
  for f in "$DIR"/run/*.pid; do
    [ -f "$f" ] && pids+=("$(cat "$f")")
  done
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    for i in $(seq 50); do
      kill -0 "${pids[@]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "${pids[@]}" 2>/dev/null || true
  fi
  pkill -9 -f "CoarseGrainedExecutorBackend.*--worker-url spark://Worker@127.0.0.1" 2>/dev/null || true
  rm -rf "$DIR"
}

# shellcheck source=daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"

die() {
  say "ERROR: $*"
  log_tails
  stop_all
  exit 1
}

alive_workers() {
  curl -s --max-time 2 "http://127.0.0.1:${UI_PORT}/json/" 2>/dev/null \
    | "$VENV/bin/python" -c 'import json,sys; print(sum(w["state"] == "ALIVE" for w in json.load(sys.stdin)["workers"]))' \
      2>/dev/null || echo 0
}

print_exports() {
  cat <<EOF
export LOOKALIKE_TEST_SPARK_MASTER=$MASTER
export LOOKALIKE_TEST_SPARK_MASTER_UI=http://127.0.0.1:${UI_PORT}
EOF
}

case "${1:-start}" in
  stop) stop_all; say "stopped, $DIR removed"; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

[ -x "$VENV/bin/python" ] || die "no $VENV/bin/python: build the venv first (make venv)"
SPARK_HOME=$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME SPARK_LOCAL_IP=127.0.0.1
# The executors' Python workers run the venv's interpreter (it has torch, pandas, lookalike).
export PYSPARK_PYTHON="$PWD/$VENV/bin/python"

if [ -d "$DIR" ]; then
  say "$DIR exists: stopping what it started first"
  stop_all
fi
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null \
  && die "127.0.0.1:$PORT is already in use (set SPARK_CLUSTER_PORT)"
mkdir -p "$DIR"/{log,run}
started=$SECONDS

"$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
  --host 127.0.0.1 --port "$PORT" --webui-port "$UI_PORT" >"$DIR/log/master.log" 2>&1 &
echo $! >"$DIR/run/master.pid"
for i in $(seq "$WORKERS"); do
  mkdir -p "$DIR/work-$i"
  # Worker UIs on ports above the master's; a free one is taken if that one is busy.
  "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker "$MASTER" \
    --host 127.0.0.1 --cores 1 --memory "$MEMORY" --work-dir "$DIR/work-$i" \
    --webui-port $((UI_PORT + i)) >"$DIR/log/worker-$i.log" 2>&1 &
  echo $! >"$DIR/run/worker-$i.pid"
done

until [ "$(alive_workers)" -ge "$WORKERS" ]; do
  [ $((SECONDS - started)) -lt "$TIMEOUT" ] || die "$WORKERS workers not alive after ${TIMEOUT}s"
  for f in "$DIR"/run/*.pid; do
    kill -0 "$(cat "$f")" 2>/dev/null || die "$(basename "$f" .pid) exited"
  done
  sleep 1
done
say "master $MASTER with $WORKERS one-core workers up in $((SECONDS - started))s"
print_exports
