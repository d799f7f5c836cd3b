#!/usr/bin/env bash
# Outcome-reward GRPO of a 7B student on one 8xH100 node (configs/paper_verifier_7b.yaml; docs/grpo-with-a-checker.md):
# reward 1 for a right answer in the solution block, checked by math-verify, reasoning-gym's scorer, or your own
# function (reward.answer_check=module:function). Validates every 25 steps on held-out rows.
# Extra key=value arguments are passed on; --dry-run checks the config and the memory plan and starts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDENT="${STUDENT:-bespokelabs/Bespoke-Stratos-7B}"
DATA="${DATA:-reasoning_gym:gsm_symbolic}"
OUT="${OUT:-/data/grpo_student}"
LAUNCH="${RLT_LAUNCH-ray job submit --address ${RAY_ADDRESS:-http://127.0.0.1:8265} --working-dir . --}"
$LAUNCH python jobs/train_rlt.py --config configs/paper_verifier_7b.yaml model.student="$STUDENT" \
    data.source="$DATA" run.output_dir="$OUT" run.eval_every=25 data.eval_size=128 "$@"
