#!/usr/bin/env bash
# The serving load figures of docs/benchmarks.md, on the app started as the README says: a loopback cluster
# (scripts/cluster.sh), `serve deploy` of serve/config.yaml, bench/serve_load.py against it. Three loads of
# REQUESTS requests at CONCURRENCY, half streamed: the OpenAI chat route and /v1/explain with the reward (the
# config's student), then /v1/explain without it (serve.student=null). One JSON line per load on stdout.
#   bash bench/serve_figures.sh [REQUESTS=2000] [CONCURRENCY=32] [MAX_TOKENS=32]
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here" && source scripts/bootstrap.sh >/dev/null || exit 1
requests="${1:-2000}"; concurrency="${2:-32}"; max_tokens="${3:-32}"
free_port() { python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
export RLT_RAY_TMP="/tmp/rlt-bench-$$" RLT_RAY_PORT="$(free_port)" RLT_DASHBOARD_PORT="$(free_port)"
export RLT_METRICS_PORT="$(free_port)" RLT_AGENT_PORT="$(free_port)" RAY_AUTH_MODE=token
export RLT_SERVE_TOKEN="${RLT_SERVE_TOKEN:-$(python -c 'import secrets; print(secrets.token_urlsafe(24))')}"
port="$(free_port)"
address="http://127.0.0.1:$RLT_DASHBOARD_PORT"
logs="runs/bench_serve"; mkdir -p "$logs"
bash scripts/cluster.sh start >"$logs/cluster.log" 2>&1 || { cat "$logs/cluster.log" >&2; exit 1; }
trap 'serve shutdown -a "$address" -y >/dev/null 2>&1; bash scripts/cluster.sh stop >/dev/null 2>&1' EXIT

deploy() {  # extra overrides as arguments; waits until the app answers
  python - "$port" "$max_tokens" "$@" >"$logs/config.yaml" <<'EOF'
import sys, yaml
raw = yaml.safe_load(open("serve/config.yaml"))
raw["http_options"]["port"] = int(sys.argv[1])
raw["applications"][0]["args"]["overrides"] += [f"serve.max_tokens={sys.argv[2]}", "serve.max_n=1",
                                                "serve.max_ongoing_requests=128", *sys.argv[3:]]
print(yaml.safe_dump(raw))
EOF
  serve deploy "$logs/config.yaml" -a "$address" >>"$logs/deploy.log" 2>&1 || return 1
  # ready = the application RUNNING, i.e. every deployment of the new version healthy: /v1/models answers as soon
  # as the ingress is up while the engine (which a redeploy replaces too) may still be starting
  sleep 5
  for _ in $(seq 300); do
    serve status -a "$address" 2>/dev/null | python -c "import sys, yaml
sys.exit(0 if yaml.safe_load(sys.stdin)['applications']['rlt-teacher']['status'] == 'RUNNING' else 1)" && return 0
    sleep 2
  done
  return 1
}

load() {  # route, label
  python bench/serve_load.py --url "http://127.0.0.1:$port" --route "$1" --requests "$requests" \
    --concurrency "$concurrency" --max-tokens "$max_tokens" --stream-share 0.5 --token-env RLT_SERVE_TOKEN \
    ${2:+--reward} 2>>"$logs/load.log" | tail -1
}

deploy || exit 1
load chat
load explain reward
deploy serve.student=null || exit 1
load explain
