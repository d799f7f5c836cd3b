"""The teacher's supervised warm-up in the teacher format: the model sees the question and the
solution and learns to write the explanation (the row's reasoning trace), its close tag and the end of turn.
The loss covers only those tokens, masked by character spans.

    python jobs/sft_teacher.py [--config PRESET] sft.epochs=... sft.output_dir=... [key=value ...]
    ray job submit --working-dir . -- python jobs/sft_teacher.py --config configs/paper_teacher_sft.yaml

Writes <sft.output_dir>/final (HF format): the RL job's model.teacher.
"""

from __future__ import annotations

import sys

from rlt_ray.infra.cluster import use_project_root

use_project_root(__file__)  # actors/, serve/, jobs/: the repo's folders, not installed packages

from actors.sft_train import run_sft


def main(argv: list[str]) -> int:
    return run_sft(argv, "teacher")


if __name__ == "__main__":
    from rlt_ray.infra.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "sft_teacher"))
