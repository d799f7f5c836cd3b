#!/usr/bin/env bash
# A one-node Ray cluster on this machine, on loopback, with Ray's token auth kept on.
#   bash scripts/cluster.sh start     start the head (prints the address to submit jobs to)
#   bash scripts/cluster.sh stop      stop THIS cluster's processes only (never `ray stop`, which kills every
#                                     Ray process on the host)
# Settings (environment): RLT_RAY_TMP (/tmp/rlt-ray), RLT_RAY_PORT (6390), RLT_DASHBOARD_PORT (8265),
# RLT_METRICS_PORT (8090), RLT_RAY_CPUS (all cores). Jobs:
#   RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train_rlt.py
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/bootstrap.sh" || exit 1
tmp="${RLT_RAY_TMP:-/tmp/rlt-ray}"
port="${RLT_RAY_PORT:-6390}"
dash="${RLT_DASHBOARD_PORT:-8265}"
metrics="${RLT_METRICS_PORT:-8090}"
export RAY_AUTH_MODE=token                   # the CLI and the dashboard API need ~/.ray/auth_token
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # keep every port on 127.0.0.1
export RAY_JOB_STOP_WAIT_TIME_S="${RAY_JOB_STOP_WAIT_TIME_S:-120}"  # `ray job stop`: time to checkpoint before SIGKILL
case "${1:-}" in
  start)
    cpus=()
    [ -n "${RLT_RAY_CPUS:-}" ] && cpus=(--num-cpus "$RLT_RAY_CPUS")
    # its own process group, so that `stop` can end exactly this cluster's processes (workers included)
    setsid ray start --head --node-ip-address 127.0.0.1 --port "$port" --dashboard-host 127.0.0.1 \
      --dashboard-port "$dash" --metrics-export-port "$metrics" --temp-dir "$tmp" \
      "${cpus[@]}" --disable-usage-stats || exit 1
    pgid="$(ps -o pgid= -p "$(pgrep -f -- "gcs_server.*$tmp" | head -1)" | tr -d ' ')"
    echo "$pgid" > "$tmp/cluster.pgid"
    # Jobs are refused ("No available agent") until the head's dashboard agent, which also serves the metrics
    # port, is up.
    for _ in $(seq 120); do
      python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$metrics/metrics', timeout=2)" \
        2>/dev/null && break
      sleep 0.5
    done
    echo "cluster: dashboard and jobs at http://127.0.0.1:$dash ; Prometheus metrics at http://127.0.0.1:$metrics/metrics"
    ;;
  stop)
    [ -s "$tmp/cluster.pgid" ] || { echo "no cluster started from $tmp" >&2; exit 1; }
    pgid="$(cat "$tmp/cluster.pgid")"
    kill -TERM -- "-$pgid" 2>/dev/null
    for _ in $(seq 20); do pgrep -g "$pgid" >/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pgid" 2>/dev/null
    rm -f "$tmp/cluster.pgid"
    exit 0
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
