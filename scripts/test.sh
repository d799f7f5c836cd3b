#!/usr/bin/env bash
# The test command (README, .ci/run): set-up, the models cache, then pytest.
#   scripts/test.sh            the CI suite (everything but @slow)
#   scripts/test.sh --slow     the slow suite only
#   scripts/test.sh -- ARGS    extra pytest arguments
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/bootstrap.sh" || exit 1
cd "$RLT_ROOT"
# Nothing may come from a model hub at run time here; hub ids that are not cached fail with a clear error.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
marker=(-m "not slow")
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --slow) marker=(-m slow) ;;
    --) shift; args+=("$@"); break ;;
    *) args+=("$1") ;;
  esac
  shift
done
python -m rlt_ray.models.registry prepare || exit 1
python -m pytest --durations=25 "${marker[@]}" "${args[@]}"
