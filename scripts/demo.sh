#!/usr/bin/env bash
# The demo command (README): set-up, the models cache, then the offline end-to-end demo.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/bootstrap.sh" || exit 1
cd "$RLT_ROOT"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
python -m rlt_ray.models.registry prepare || exit 1
python jobs/demo.py "$@"
