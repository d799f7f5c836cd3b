#!/usr/bin/env bash
# RLT on your own questions and solutions (docs/data-and-models.md): a .jsonl/.parquet file or a saved HF data
# set with "question" and "solution" columns (an "id" column is kept if present), on one 8xH100 node. The last
# 128 rows are held out for validation every 25 steps. Set DATA to your file.
# Extra key=value arguments are passed on; --dry-run checks the config and the memory plan and starts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:?set DATA to your questions (.jsonl, .parquet or a saved data set)}"
TEACHER="${TEACHER:-Qwen/Qwen2.5-7B-Instruct}"
OUT="${OUT:-/data/rlt_my_task}"
LAUNCH="${RLT_LAUNCH-ray job submit --address ${RAY_ADDRESS:-http://127.0.0.1:8265} --working-dir . --}"
$LAUNCH python jobs/train_rlt.py --config configs/paper_7b.yaml data.source="$DATA" model.teacher="$TEACHER" \
    run.output_dir="$OUT" run.eval_every=25 data.eval_size=128 "$@"
