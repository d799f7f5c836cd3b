"""Students (b), (c), (d) retrained at other seeds on a finished demo's rows: is the table the teachers or the
students' training? (docs/lab-notes/demo-runs.md, run 22)

    python scripts/student_seeds.py RUN_DIR --seeds 43,44 [--rl SUBDIR] [--arms bcd] [--name NAME] [key=value ...]

RUN_DIR is a finished demo's run.output_dir; key=value are that demo's own overrides (data.seed=... for another
task draw), so every stage reads the same rows as the demo did; only run.seed (the student's init and batch order)
changes. --rl names the RL arm's folder under RUN_DIR for a replicate run (seeds/42); the demo's own is RUN_DIR;
--arms the arms to retrain (default bcd, the three the paper's shape compares); --name the experiment's name
(default student_seeds), so that one with other student settings (sft.epochs=10) keeps apart from the first.
Each arm trains on the rows its demo student had (summary.json / replicates.json). Writes
RUN_DIR/NAME/<seed>/{student_<arm>,eval/<arm>} and RUN_DIR/NAME.json, and prints one line per arm: its accuracy
at the demo's seed and at each new one, and their mean. A seed that is the demo's own is trained again (with
student overrides, the demo's student is not the same student).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlt_ray.infra.cluster import use_project_root

use_project_root(__file__)


def main(argv: list[str]) -> int:
    from jobs import evaluate, sft_student
    from jobs.demo import StageLog, split_seeds, stage_args
    from rlt_ray.errors import RunStopped
    from rlt_ray.infra.cluster import connect_ray, verbose
    from rlt_ray.errors import ConfigError
    from rlt_ray.config import load_config, split_argv

    seeds, argv = split_seeds(argv)
    rl_sub, arms, name = "", "bcd", "student_seeds"
    for flag in ("--rl", "--arms", "--name"):
        if flag in argv:
            k = argv.index(flag)
            if k + 1 >= len(argv):
                raise ConfigError(f"{flag} needs a value")
            if flag == "--rl":
                rl_sub = argv[k + 1]
            elif flag == "--arms":
                arms = argv[k + 1]
            else:
                name = argv[k + 1]
            argv = argv[:k] + argv[k + 2:]
    if not arms or set(arms) - set("abcd"):
        raise ConfigError(f"--arms: letters of abcd, got {arms!r}")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--name: a folder name, got {name!r}")
    if not argv or argv[0].startswith("-") or "=" in argv[0] or not seeds:
        raise ConfigError("usage: python scripts/student_seeds.py RUN_DIR --seeds 43,44 [--rl SUBDIR] [--arms bcd] "
                          "[--name NAME] [key=value ...]")
    out, argv = Path(argv[0]), argv[1:]
    rl_folder = out / rl_sub
    if (out / "summary.json").is_file():
        students = json.loads((out / "summary.json").read_text())["students"]
    elif (out / "replicates.json").is_file() and rl_sub:
        rep = json.loads((out / "replicates.json").read_text())
        students = rep["seeds"][Path(rl_sub).name]["students"]
    else:
        raise ConfigError(f"{out}: no summary.json (or replicates.json with --rl seeds/N): not a finished demo run")
    preset, overrides = split_argv(argv, default="demo")
    cfg = load_config(preset, overrides + [f"run.output_dir={out}"])
    args = stage_args(out, int(cfg.run.steps), int(cfg.demo.student_rows), float(cfg.demo.rl_lr), rl_folder,
                      student_epochs=cfg.demo.student_epochs)
    base = ["--config", preset, *overrides, f"run.output_dir={out}"]
    logs = StageLog(out / "logs", verbose())
    connect_ray()
    result = {"demo_seed": int(cfg.run.seed), "seeds": seeds, "arms": {}}
    for arm in arms:
        result["arms"][arm] = {str(cfg.run.seed): students[arm]["correct"]}
    for seed in seeds:
        for arm in arms:
            folder = out / name / str(seed)
            stage = f"{name}_{seed}_{arm}"
            extra = [f"data.max_rows={students[arm]['train_rows']}", f"run.seed={seed}",
                     f"sft.output_dir={folder / f'student_{arm}'}"]
            with logs.stage(stage):
                if sft_student.main(base + args[f"student_{arm}"] + extra) != 0:
                    raise RunStopped(f"{stage} failed; see {out / 'logs' / (stage + '.log')}")
                if evaluate.main(base + args["evaluate"] + [f"eval.model={folder / f'student_{arm}' / 'final'}",
                                                           f"eval.output_dir={folder / 'eval' / arm}"]) != 0:
                    raise RunStopped(f"{stage} evaluation failed; see {out / 'logs' / (stage + '.log')}")
            s = json.loads((folder / "eval" / arm / "summary.json").read_text())
            result["arms"][arm][str(seed)] = s["correct"]
            print(f"seed {seed} ({arm}): {s['correct']}/{s['n']}", flush=True)
    n = students[arms[0]]["n"]
    keys = list(result["arms"][arms[0]])
    print(f"\n{'arm':4} " + " ".join(f"{'seed ' + k:>9}" for k in keys) + f" {'mean':>7}  (of {n})")
    for arm, counts in result["arms"].items():
        mean = sum(counts.values()) / len(counts)
        result["arms"][arm] = {"correct": counts, "mean": mean, "n": n}
        print(f"({arm})  " + " ".join(f"{c:>9}" for c in counts.values()) + f" {mean:>7.1f}")
    if set("bcd") <= set(arms):
        top = [k for k in keys if all(result["arms"]["d"]["correct"][k] > result["arms"][a]["correct"][k]
                                      for a in "bc")]
        result["d_top_at"] = top
        print(f"(d) above (b) and (c) at {len(top)} of {len(keys)} student seeds")
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    from rlt_ray.infra.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "student_seeds"))
