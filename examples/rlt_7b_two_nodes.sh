#!/usr/bin/env bash
# A 7B RLT run on two 8xH100 nodes, placed by role with Ray node labels (configs/paper_multinode.yaml,
# cluster_multinode.yaml; docs/multinode.md): 8 learner ranks on one node, the engines and scorers on the other.
# A lost node is survived: run.max_restarts restarts the learner group from its newest checkpoint.
# Extra key=value arguments are passed on; --dry-run checks the config and the memory plan and starts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER="${TEACHER:-Qwen/Qwen2.5-7B-Instruct}"
OUT="${OUT:-/data/rlt_7b_2x8}"
LAUNCH="${RLT_LAUNCH-ray job submit --address ${RAY_ADDRESS:-http://127.0.0.1:8265} --working-dir . --}"
$LAUNCH python jobs/train_rlt.py --config configs/paper_multinode.yaml model.teacher="$TEACHER" \
    run.output_dir="$OUT" run.max_restarts=2 run.checkpoint_every=10 "$@"
