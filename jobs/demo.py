"""The offline demo (README's first command): the whole RLT pipeline on this machine in a few minutes.

    python jobs/demo.py [--config PRESET] [key=value ...]        (bash scripts/demo.sh)

On one local Ray, with the tiny offline models (rlt_ray.models) and reasoning-gym's gsm_symbolic questions:
  1. warm up the teacher (SFT in the teacher format)         jobs/sft_teacher.py
  2. warm up the student (SFT in the student format)         jobs/sft_student.py
  3. RL: GRPO with the RLT reward, the student as scorer     jobs/train_rlt.py
  4. distil the RL teacher's explanations (best of k)        jobs/distill.py
  5. evaluate the student, fine-tune it on the distilled explanations, evaluate it again
                                                             jobs/evaluate.py, jobs/sft_student.py
  6. serve the RL teacher on Ray Serve and ask it for one explanation   serve/app.py
Prints a summary table; writes <out>/reward_curve.png, TensorBoard logs under <out>/*/tensorboard and
<out>/summary.json. ``demo.out`` defaults to runs/demo; pass run.output_dir=... to move it.
The tiny models learn the format and the reward rises, but they are far too small to solve the questions, so
expect accuracies near zero. The same jobs run the paper's models on a GPU cluster (README).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

RL_STEPS = 40


def stage_args(out: Path) -> dict[str, list[str]]:
    """The overrides of each stage (added to the preset and the user's own overrides)."""
    gsm = ["data.source=reasoning_gym:gsm_symbolic", "data.size=256", "logging.tensorboard=true"]
    sft = ["sft.batch_size=16", "learner.lr=3e-3"]
    return {
        "sft_teacher": gsm + sft + ["sft.epochs=6", f"sft.output_dir={out / 'teacher_sft'}"],
        "sft_student": gsm + sft + ["sft.epochs=3", f"sft.output_dir={out / 'student_sft'}"],
        "train_rlt": gsm + [f"model.teacher={out / 'teacher_sft' / 'final'}",
                            f"model.student={out / 'student_sft' / 'final'}", f"run.steps={RL_STEPS}",
                            "run.questions_per_step=4", "rollout.n=8", "rollout.max_new_tokens=192",
                            "learner.lr=3e-4", "run.checkpoint_every=0", f"run.output_dir={out / 'rl'}"],
        "distill": ["data.source=reasoning_gym:gsm_symbolic", "data.size=64", "data.seed=7",
                    f"model.teacher={out / 'rl' / 'checkpoints' / f'step_{RL_STEPS:06d}' / 'hf'}",
                    f"model.student={out / 'student_sft' / 'final'}", "distill.k=4",
                    "rollout.max_new_tokens=192", f"distill.output_dir={out / 'distill'}"],
        "student_distilled": [f"data.source={out / 'distill' / 'data'}", "sft.epochs=2", "sft.batch_size=8",
                              "learner.lr=3e-4", f"sft.model={out / 'student_sft' / 'final'}",
                              f"sft.output_dir={out / 'student_distilled'}"],
        "evaluate": ["eval.source=reasoning_gym:gsm_symbolic", "eval.size=32", "eval.max_new_tokens=192"],
    }


def reward_curve(metrics_file: Path, png: Path) -> list[float]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    steps = [r["step"] + 1 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("reward_mean", "reward"), ("r_ss_mean", "r_SS (student log-lik. of solution)"),
                       ("r_kl_mean", "r_KL (explanation log-ratio)")):
        sign = -1.0 if key == "r_kl_mean" else 1.0
        ax.plot(steps, [sign * r[key] for r in rows], label=label if sign > 0 else f"-{label}")
    ax.set_xlabel("RL step")
    ax.set_ylabel("mean over the step's completions")
    ax.set_title("RLT on tiny models: reward per GRPO step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return [r["reward_mean"] for r in rows]


def ask_the_endpoint(preset: str, overrides: list[str], out: Path) -> dict:
    """Serve the RL teacher (with the student, for rewards) on Ray Serve and ask for the best of 4 explanations."""
    import socket
    import urllib.request

    from ray import serve

    from rlt_ray.data import reasoning_gym_rows
    from serve.app import app_builder

    print("\n=== demo: 6. serve the RL teacher and ask it for an explanation", flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app_builder({"config": preset, "overrides": list(overrides) + [
            f"serve.model={out / 'rl' / 'checkpoints' / f'step_{RL_STEPS:06d}' / 'hf'}",
            f"serve.student={out / 'student_sft' / 'final'}", "serve.max_tokens=192"]}),
            name="rlt-demo", route_prefix="/")
        row = reasoning_gym_rows("gsm_symbolic", 1, 99)[0]
        body = json.dumps({"question": row.question, "solution": row.solution, "n": 4, "best_of": True,
                           "seed": 0, "max_tokens": 192}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/explain", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as r:
            answer = json.loads(r.read())
    finally:
        serve.shutdown()
    best = answer["explanations"][0]
    print(f"POST /v1/explain -> weights version {answer['weights_version']}, best of 4 by RLT reward "
          f"{best['reward']['total']:.3f} (closed tag: {best['closed']}):")
    print(f"  question: {row.question[:120]}...")
    print(f"  explanation: {best['text'][:300]!r}")
    return answer


def main(argv: list[str]) -> int:
    from jobs import distill, evaluate, sft_student, sft_teacher, train_rlt
    from rlt_ray.cluster import connect_ray
    from rlt_ray.config import load_config, split_argv

    preset, overrides = split_argv(argv)
    out = Path(load_config(preset, overrides).run.output_dir)
    if out.name == "tiny_cpu":  # the preset's default: give the demo a folder of its own
        out = out.parent / "demo"
    base = ["--config", preset] + overrides
    args = stage_args(out)
    t0 = time.time()
    timings: dict[str, float] = {}
    connect_ray()

    def stage(name: str, job, extra: list[str]) -> None:
        print(f"\n=== demo: {name}", flush=True)
        t = time.time()
        if job.main(base + extra) != 0:
            raise RuntimeError(f"demo: stage {name} failed")
        timings[name] = time.time() - t

    stage("1. teacher warm-up (SFT, teacher format)", sft_teacher, args["sft_teacher"])
    stage("2. student warm-up (SFT, student format)", sft_student, args["sft_student"])
    stage("3. RL: GRPO with the RLT reward", train_rlt, args["train_rlt"])
    stage("4. distil the RL teacher's explanations", distill, args["distill"])
    stage("5a. evaluate the student before", evaluate,
          args["evaluate"] + [f"eval.model={out / 'student_sft' / 'final'}", f"eval.output_dir={out / 'eval_before'}"])
    stage("5b. fine-tune the student on the distilled explanations", sft_student, args["student_distilled"])
    stage("5c. evaluate the student after", evaluate,
          args["evaluate"] + [f"eval.model={out / 'student_distilled' / 'final'}",
                              f"eval.output_dir={out / 'eval_after'}"])
    t = time.time()
    served = ask_the_endpoint(preset, overrides, out)
    timings["6. serve the RL teacher and ask it"] = time.time() - t

    rewards = reward_curve(out / "rl" / "metrics.jsonl", out / "reward_curve.png")
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    before = json.loads((out / "eval_before" / "summary.json").read_text())
    after = json.loads((out / "eval_after" / "summary.json").read_text())
    distilled = sum(1 for _ in (out / "distill" / "data").glob("*.parquet"))
    summary = {"reward_first10": first, "reward_last10": last, "reward_rose": last > first,
               "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
               "solution_blocks_before": before["n"] - before["no_solution_block"],
               "solution_blocks_after": after["n"] - after["no_solution_block"], "eval_n": before["n"],
               "distilled_shards": distilled, "served_weights_version": served["weights_version"],
               "seconds": time.time() - t0, "stage_seconds": timings}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    print("\n=== demo: summary")
    print(f"{'':34} {'value':>12}")
    print(f"{'RL mean reward, first 10 steps':34} {first:12.3f}")
    print(f"{'RL mean reward, last 10 steps':34} {last:12.3f}   {'rose' if last > first else 'DID NOT RISE'}")
    print(f"{'student accuracy before':34} {before['accuracy']:12.3f}   "
          f"({summary['solution_blocks_before']}/{before['n']} answers with a solution block)")
    print(f"{'student accuracy after':34} {after['accuracy']:12.3f}   "
          f"({summary['solution_blocks_after']}/{after['n']} answers with a solution block)")
    print(f"{'total time':34} {summary['seconds']:11.0f}s")
    print(f"\nreward curve: {out / 'reward_curve.png'}; TensorBoard: tensorboard --logdir {out}; "
          f"summary: {out / 'summary.json'}")
    return 0 if last > first else 1


if __name__ == "__main__":
    from rlt_ray.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "demo"))
