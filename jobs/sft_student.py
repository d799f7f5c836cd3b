"""SFT of a student on distilled explanations (jobs/distill.py's output, or any Bespoke-Stratos style data):
the loss covers the assistant turn (thought and solution blocks) and the end of turn.

    python jobs/sft_student.py data.source=runs/distill model.student=tiny-student sft.output_dir=... [key=value ...]

Writes <sft.output_dir>/final (HF format).
"""

from __future__ import annotations

import sys

from rlt_ray.infra.cluster import use_project_root

use_project_root(__file__)  # actors/, serve/, jobs/: the repo's folders, not installed packages

from actors.sft_train import run_sft


def main(argv: list[str]) -> int:
    return run_sft(argv, "student")


if __name__ == "__main__":
    from rlt_ray.infra.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "sft_student"))
