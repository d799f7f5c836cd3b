#!/usr/bin/env bash
# A 7B RLT run on one 8xH100 node (configs/paper_7b.yaml: 4 learner GPUs, 3 vLLM workers, 1 student scorer).
# Start the node first (ray up cluster.yaml, or ray start --head). Copy this file and edit the paths.
#   TEACHER  the warm-up teacher (jobs/sft_teacher.py --config configs/paper_teacher_sft.yaml), an HF folder
#   OUT      where metrics, checkpoints and trackers go
# Extra key=value arguments are passed on (e.g. run.steps=10 'logging.trackers=[wandb]'); --dry-run checks the
# config and the memory plan and starts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER="${TEACHER:-Qwen/Qwen2.5-7B-Instruct}"
OUT="${OUT:-/data/rlt_7b}"
LAUNCH="${RLT_LAUNCH-ray job submit --address ${RAY_ADDRESS:-http://127.0.0.1:8265} --working-dir . --}"
$LAUNCH python jobs/train_rlt.py --config configs/paper_7b.yaml model.teacher="$TEACHER" run.output_dir="$OUT" \
    'logging.trackers=[tensorboard,wandb]' "$@"
