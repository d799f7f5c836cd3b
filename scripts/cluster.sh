#!/usr/bin/env bash
# A one-node Ray cluster on this machine, on loopback, with Ray's token auth kept on.
#   bash scripts/cluster.sh start     start the head (prints the address to submit jobs to)
#   bash scripts/cluster.sh stop      stop THIS cluster's processes only (never `ray stop`, which kills every
#                                     Ray process on the host)
# Settings (environment): RLT_RAY_TMP (/tmp/rlt-ray), RLT_RAY_PORT (6390), RLT_DASHBOARD_PORT (8265),
# RLT_METRICS_PORT (8090), RLT_AGENT_PORT (52365: the dashboard agent, which runs submitted jobs),
# RLT_RAY_CPUS (all cores). `start` returns only once a job can be submitted, or fails naming the port. Jobs:
#   RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train_rlt.py
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/bootstrap.sh" || exit 1
tmp="${RLT_RAY_TMP:-/tmp/rlt-ray}"
port="${RLT_RAY_PORT:-6390}"
dash="${RLT_DASHBOARD_PORT:-8265}"
metrics="${RLT_METRICS_PORT:-8090}"
agent="${RLT_AGENT_PORT:-52365}"
export RAY_AUTH_MODE=token                   # the CLI and the dashboard API need ~/.ray/auth_token
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # keep every port on 127.0.0.1
export RAY_JOB_STOP_WAIT_TIME_S="${RAY_JOB_STOP_WAIT_TIME_S:-120}"  # `ray job stop`: time to checkpoint before SIGKILL
case "${1:-}" in
  start)
    # A port another process holds makes Ray start half a cluster (the agent's HTTP server off, every job
    # refused with "No available agent"): refuse up front, naming the port and the variable that moves it.
    for pv in "$port:RLT_RAY_PORT" "$dash:RLT_DASHBOARD_PORT" "$metrics:RLT_METRICS_PORT" "$agent:RLT_AGENT_PORT"; do
      if ! python -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "${pv%%:*}" \
          2>/dev/null; then
        echo "cluster: port ${pv%%:*} on 127.0.0.1 is in use; set ${pv##*:} to a free port" >&2
        exit 2
      fi
    done
    cpus=()
    [ -n "${RLT_RAY_CPUS:-}" ] && cpus=(--num-cpus "$RLT_RAY_CPUS")
    # its own process group, so that `stop` can end exactly this cluster's processes (workers included)
    setsid ray start --head --node-ip-address 127.0.0.1 --port "$port" --dashboard-host 127.0.0.1 \
      --dashboard-port "$dash" --metrics-export-port "$metrics" --dashboard-agent-listen-port "$agent" \
      --temp-dir "$tmp" "${cpus[@]}" --disable-usage-stats || exit 1
    pgid="$(ps -o pgid= -p "$(pgrep -f -- "gcs_server.*$tmp" | head -1)" | tr -d ' ')"
    echo "$pgid" > "$tmp/cluster.pgid"
    # Ready means a job can be submitted: the dashboard agent's HTTP server (which runs jobs) answers on its
    # port, and so does the metrics export.
    ready=""
    for _ in $(seq 120); do
      if python -c "import urllib.request as u, sys; [u.urlopen(x, timeout=2) for x in sys.argv[1:]]" \
          "http://127.0.0.1:$metrics/metrics" "http://127.0.0.1:$agent/api/local_raylet_healthz" 2>/dev/null; then
        ready=1; break
      fi
      sleep 0.5
    done
    if [ -z "$ready" ]; then
      echo "cluster: the job agent did not answer on 127.0.0.1:$agent within 60 s (set RLT_AGENT_PORT to a free port); stopping" >&2
      bash "$0" stop
      exit 1
    fi
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
