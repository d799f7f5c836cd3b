"""The offline demo (README's first command): the paper's Table 1 in miniature, on this machine, in minutes.

    python jobs/demo.py [--config PRESET] [key=value ...] [--verbose]         (bash scripts/demo.sh)
    python jobs/demo.py --seeds 42,43,44,45,46 [key=value ...]                 the replicates (docs/demo.md)

The task is chained sums of single digits (rlt_ray.data.demo_task): R1-like reference traces (correct but long-winded
and oddly ordered) play the paper's R1 traces; 3-layer models trained from scratch play the 7B models. On one local
Ray (docs/demo.md):
  1. write the task: train questions with reference traces, held-out test questions        rlt_ray.data.demo_task
  2. warm up the teacher on the reference traces (teacher format)                            jobs/sft_teacher.py
  3. student (b): SFT on the reference traces; it is also the RL reward's student           jobs/sft_student.py
  4. RL: GRPO with the RLT reward                                                            jobs/train_rlt.py
  5. distil the warm-up teacher's and the RL teacher's explanations (one per question)       jobs/distill.py
  6. students (a) question -> solution only, (c) warm-up teacher's, (d) RL teacher's explanations: the same
     student init, rows, epochs and batch as (b)                                             jobs/sft_student.py
  7. evaluate the four students on the held-out questions (95 % Wilson intervals)            jobs/evaluate.py
  8. serve the RL teacher on Ray Serve and ask it for one explanation                        serve/app.py
Writes <out>/summary.json (``students``: one entry per arm), <out>/demo.png (the table as bars with intervals, and
the RL curves), TensorBoard logs and, under <out>/logs/, every stage's output and the Ray/vLLM/DeepSpeed logs.
The output folder is runs/demo unless run.output_dir=... says otherwise. With --seeds, stages 4-7 of the RL
teacher's arm run once per seed (main's docstring). An experiment: the table is printed as it
comes out, and the exit code is 0 whenever every stage ran (the reward's rise, or not, is reported).

One idea in more than 400 lines: the demo experiment (its stages, in class Demo, and its report).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from rlt_ray.infra.cluster import use_project_root

use_project_root(__file__)  # actors/, serve/, jobs/: the repo's folders, not installed packages

ARMS = {"a": "question -> solution only", "b": "reference traces", "c": "warm-up teacher's explanations",
        "d": "RL teacher's explanations",
        "e": "(b) + outcome-reward RL", "f": "(d) + outcome-reward RL"}  # --extended: the cold start


def stage_args(out: Path, steps: int, student_rows: int, rl_lr: float, seed_out: Path | None = None,
               seed: int | None = None, student_epochs: int | None = None,
               rl_warmup_ratio: float = 0.1, rl_eval_every: int = 10) -> dict[str, list[str]]:
    """The overrides of each stage (added to the preset and the user's own overrides). The RL teacher's arm (the
    RL stage, its distillation, student (d)) goes under ``seed_out`` (default ``out``); ``seed`` is the RL stage's
    seed (run.seed: sampling, the learners' init; data.seed: the order of the questions) for a replicate
    (--seeds), None for the preset's. ``student_epochs`` (demo.student_epochs) is every student's sft.epochs,
    the reward's student (b) included; None: the preset's sft.epochs, as the teacher's warm-up."""
    task, seed_out = out / "task", seed_out or out
    sft: list[str] = []  # sft.* and learner.* of the preset: the same budget for every arm
    student = sft + ([f"sft.epochs={student_epochs}"] if student_epochs else [])
    rl_teacher = seed_out / "rl" / "checkpoints" / f"step_{steps:06d}" / "hf"
    distill = [f"data.source={task / 'train.jsonl'}", "distill.k=1", "distill.keep=best", "distill.batch_rows=256",
               f"model.student={out / 'student_b' / 'final'}"]
    return {
        "sft_teacher": sft + [f"data.source={task / 'train.jsonl'}", f"sft.output_dir={out / 'teacher_sft'}"],
        "student_b": student + [f"data.source={task / 'train.jsonl'}", f"sft.output_dir={out / 'student_b'}",
                            f"data.max_rows={student_rows}"],
        "train_rlt": [f"data.source={task / 'train.jsonl'}", f"data.eval_source={task / 'test.jsonl'}",
                      f"model.teacher={out / 'teacher_sft' / 'final'}",
                      f"model.student={out / 'student_b' / 'final'}", f"run.steps={steps}", "run.checkpoint_every=0",
                      f"run.output_dir={seed_out / 'rl'}", f"learner.lr={rl_lr}",
                      "learner.lr_schedule=constant", f"learner.warmup_ratio={rl_warmup_ratio}",
                      f"run.eval_every={rl_eval_every}"]
                     + ([f"run.seed={seed}", f"data.seed={seed}"] if seed is not None else []),
        "distill_c": distill + [f"model.teacher={out / 'teacher_sft' / 'final'}",
                                f"distill.output_dir={out / 'distill_warmup'}"],
        "distill_d": distill + [f"model.teacher={rl_teacher}", f"distill.output_dir={seed_out / 'distill_rl'}"],
        "student_a": student + [f"data.source={task / 'train_answer_only.jsonl'}", f"sft.output_dir={out / 'student_a'}"],
        "student_c": student + [f"data.source={out / 'distill_warmup' / 'data'}", f"sft.output_dir={out / 'student_c'}"],
        "student_d": student + [f"data.source={seed_out / 'distill_rl' / 'data'}",
                            f"sft.output_dir={seed_out / 'student_d'}"],
        "evaluate": [f"eval.source={task / 'test.jsonl'}"],
        "serve": [f"serve.model={rl_teacher}", f"serve.student={out / 'student_b' / 'final'}", "serve.max_tokens=128"],
    }


def distilled_rows(folder: Path) -> list[dict]:
    import datasets

    shards = sorted((folder / "data").glob("part-*.parquet"))  # named by their first row: the input's order
    return list(datasets.load_dataset("parquet", data_files=[str(s) for s in shards], split="train")) if shards else []


def rows_per_arm(sizes: dict[str, int], student_rows: int, out: Path, min_rows: int = 1) -> int:
    """Every arm trains on as many rows as the shortest source has (at most demo.student_rows); a distillation
    that kept fewer than ``min_rows`` (a student's batch, sft.batch_size) stops the demo here, saying why,
    instead of failing inside a student's SFT."""
    from rlt_ray.errors import RunStopped

    rows = min([student_rows] + list(sizes.values()))
    if rows < min_rows:
        short = [arm for arm, n in sizes.items() if n < min_rows]
        head = (f"distillation kept too few explanations for arm(s) {', '.join(short)} "
                f"({', '.join(f'{a}: {sizes[a]} rows' for a in short)}; a student needs at least sft.batch_size="
                f"{min_rows}): the teacher did not close its explanation tag (see errors.jsonl under "
                f"{out / 'distill_warmup'} and {out / 'distill_rl'}); ")
        if sizes.get("c", 0) >= min_rows:  # the warm-up teacher closes its tag: RL taught it not to
            raise RunStopped(
                head + f"the warm-up teacher did, so RL taught it to stop (the 'closed' of "
                f"{out / 'rl' / 'metrics.jsonl'} shows when, and its reward_hack_suspected event names the likely "
                "cause). The KL term can pay more than the unclosed-tag penalty costs: with the reference's span "
                "(reward.explanation_span=with_prompt_pad) the prompt's padding weighs more in a shorter "
                "explanation; explanations cut off at rollout.max_new_tokens lower the mean "
                "log-ratio. Try reward.explanation_span=sampled, a more negative reward.not_matched_penalty, or "
                "reward.kl_estimator=k3")
        raise RunStopped(head + "the warm-up is too short for the teacher to learn the format: raise sft.epochs or "
                                "demo.train_questions")
    return rows


def plot(out: Path, students: dict, metrics_file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.5))
    arms = list(students)
    acc = [students[a]["accuracy"] for a in arms]
    err = [[students[a]["accuracy"] - students[a]["low"] for a in arms],
           [students[a]["high"] - students[a]["accuracy"] for a in arms]]
    bars.bar(range(len(arms)), acc, yerr=err, capsize=6, color=["#999", "#6a9fd4", "#e0a050", "#4caf50"])
    bars.set_xticks(range(len(arms)), [f"({a})\n{ARMS[a]}".replace("'s ", "'s\n") for a in arms], fontsize=8)
    bars.set_ylabel(f"accuracy on {students[arms[0]]['n']} held-out questions (95 % CI)")
    bars.set_ylim(0, 1)
    bars.set_title("students distilled four ways")
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    rows = [r for r in records if "reward_mean" in r]  # a last record may hold the final validation alone
    steps = [r["step"] + 1 for r in rows]
    for key, label, sign in (("reward_mean", "reward", 1), ("r_ss_mean", "r_SS", 1), ("r_kl_mean", "-r_KL", -1)):
        curves.plot(steps, [sign * (r[key] if r[key] is not None else float("nan")) for r in rows], label=label)
    validated = [r for r in records if r.get("val/reward_mean") is not None]
    if validated:  # run.eval_every: the held-out questions, greedy; step s's record holds the weights after s steps
        at = [r["step"] for r in validated]
        curves.plot(at, [r["val/reward_mean"] for r in validated], "o--", color="C0", label="held-out reward")
        curves.plot(at, [r["val/r_ss_mean"] for r in validated], "s--", color="C1", label="held-out r_SS")
    curves.set_xlabel("RL step")
    curves.set_ylabel("mean over the step's completions")
    twin = curves.twinx()
    twin.plot(steps, [r["closed_tag_fraction"] for r in rows], "k:", label="closed-tag fraction")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("closed-tag fraction")
    curves.legend(loc="lower left")
    twin.legend(loc="lower right")
    curves.set_title("teacher RL (GRPO, RLT reward)")
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=110)
    plt.close(fig)


def ask_the_endpoint(preset: str, overrides: list[str], row: dict) -> dict:
    """Serve the RL teacher (with the student, for rewards) on Ray Serve and ask for the best of 4 explanations."""
    import socket
    import urllib.request

    from ray import serve

    from serve.app import app_builder

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app_builder({"config": preset, "overrides": overrides}), name="rlt-demo", route_prefix="/")
        body = json.dumps({"question": row["question"], "solution": row["solution"], "n": 4, "best_of": True,
                           "seed": 0}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/explain", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as r:
            return json.loads(r.read())
    finally:
        serve.shutdown()


class StageLog:
    """Each stage's own output (its print lines and driver-side library warnings) goes to <out>/logs/<stage>.log;
    the console gets the demo's line per stage, the stages' progress bars, and the lines starting with one of
    ``show`` (the RL step lines)."""

    def __init__(self, logs: Path, verbose: bool):
        self.logs, self.verbose = logs, verbose
        logs.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def stage(self, name: str, show: tuple[str, ...] = ()):
        if self.verbose:
            yield
            return
        console = sys.stdout
        tty = console.isatty()
        log = open(self.logs / f"{name}.log", "a", buffering=1)

        class Tee:
            pending = ""  # a line is shown or not once it is complete (print writes its newline separately)

            def write(self, text: str) -> int:
                if text.startswith("\r") or "%|" in text:  # a tqdm bar redrawing its line: on a terminal only
                    if tty:
                        console.write(text)
                        console.flush()
                    return len(text)
                log.write(text)
                self.pending += text
                *lines, self.pending = self.pending.split("\n")
                shown = [line for line in lines if show and line.startswith(show)]
                if shown:
                    console.write("".join(line + "\n" for line in shown))
                    console.flush()
                return len(text)

            def flush(self) -> None:
                log.flush()

            def isatty(self) -> bool:
                return False

        # what writes to the process's stderr itself (Ray's C++ core worker in this process) goes to the log too
        sys.stderr.flush()
        saved_fd = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(Tee()), contextlib.redirect_stderr(Tee()):
                yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            log.close()


def shape_holds(students: dict) -> bool:
    """The paper's shape: (d)'s 95 % interval lies above (b)'s and (c)'s."""
    return all(students["d"]["low"] > students[arm]["high"] for arm in "bc")


def rl_curve(metrics_file: Path) -> dict:
    """The RL curves at step 1 and their means over the first and last quarter of the steps (at most 10 steps
    each): rlt_ray.infra.metrics.run_summary."""
    from rlt_ray.infra.metrics import run_summary

    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    return run_summary(metrics, ("reward_mean", "r_ss_mean", "r_kl_mean", "closed_tag_fraction",
                                 "completion_tokens_mean"))


def cpu_name() -> str:
    from rlt_ray.infra.metrics import cpu_info

    name, avx512 = cpu_info()
    return f"{name} ({'AVX-512' if avx512 else 'no AVX-512'})"


def plot_replicates(out: Path, replicates: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(replicates["seeds"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = {"a": "#999", "b": "#6a9fd4", "c": "#e0a050", "d": "#4caf50"}
    for offset, arm in zip((-0.18, -0.06, 0.06, 0.18), ARMS):
        xs, ys, lo, hi = [], [], [], []
        for x, seed in enumerate(seeds):
            s = replicates["seeds"][seed]["students"].get(arm)
            if s:
                xs.append(x + offset), ys.append(s["accuracy"])
                lo.append(s["accuracy"] - s["low"]), hi.append(s["high"] - s["accuracy"])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=4, color=colors[arm], label=f"({arm}) {ARMS[arm]}")
    marks = {s: "\n(stopped)" if e["stopped"] is not None else "\n(copying)" if e.get("copied") else ""
             for s, e in replicates["seeds"].items()}
    ax.set_xticks(range(len(seeds)), [f"seed {s}{marks[s]}" for s in seeds])
    ax.set_ylabel("held-out accuracy (95 % CI)")
    ax.set_ylim(0, 1)
    ax.set_title(f"the demo at {len(seeds)} RL seeds ((a)-(c) do not depend on it); {replicates['cpu']}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "replicates.png", dpi=110)
    plt.close(fig)


def split_seeds(argv: list[str]) -> tuple[list[int] | None, list[str]]:
    """``--seeds 42,43,...`` (or --seeds=...): the RL seeds of a replicate run; the rest of argv."""
    from rlt_ray.errors import ConfigError

    seeds, rest, it = None, [], iter(argv)
    for a in it:
        if a == "--seeds" or a.startswith("--seeds="):
            text = a.split("=", 1)[1] if "=" in a else next(it, "")
            try:
                seeds = [int(x) for x in text.split(",") if x.strip()]
            except ValueError:
                seeds = []
            if not seeds or len(set(seeds)) != len(seeds):
                raise ConfigError(f"--seeds: expected distinct integers separated by commas, got {text!r}")
        else:
            rest.append(a)
    return seeds, rest


class Demo:
    """One demo's run: its config, its stage overrides, the stages' log and times, and the RL teacher's arms (one,
    or one per replicate seed). Each stage is a method, called in order by main()."""

    def __init__(self, cfg, preset: str, overrides: list[str], seeds: list[int] | None, extended: bool):
        from rlt_ray.infra.cluster import verbose

        self.cfg, self.preset, self.overrides, self.seeds, self.extended = cfg, preset, overrides, seeds, extended
        self.out = Path(cfg.run.output_dir)
        self.steps = int(cfg.run.steps)
        self.train_questions, self.test_questions = int(cfg.demo.train_questions), int(cfg.demo.test_questions)
        self.student_rows = int(cfg.demo.student_rows)  # every arm's rows (demo.* in the schema says why)
        self.base = ["--config", preset] + overrides
        if cfg.logging.group is None:  # the stages' tracker runs in one W&B group / under one MLflow tag
            self.base.append(f"logging.group={self.out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.student_epochs = cfg.demo.student_epochs
        self.args = self.arm_args(None)
        self.logs = StageLog(self.out / "logs", verbose())
        self.timings: dict[str, float] = {}
        self.n_stages = (10 if extended else 8) if seeds is None else 7
        # the RL teacher's arm: (seed, its folder, the stage overrides), once, or once per replicate seed
        self.rl_arms = [(None, self.out, self.args)] if seeds is None else [
            (seed, self.out / "seeds" / str(seed), self.arm_args(seed)) for seed in seeds]
        self.stopped: dict = {}  # with replicates, a stopped seed (run.stop_on_hack) is a result, not the end

    def arm_args(self, seed: int | None) -> dict[str, list[str]]:
        cfg = self.cfg
        return stage_args(self.out, self.steps, self.student_rows, float(cfg.demo.rl_lr),
                          None if seed is None else self.out / "seeds" / str(seed), seed, self.student_epochs,
                          float(cfg.demo.rl_warmup_ratio), int(cfg.demo.rl_eval_every))

    def run(self, name: str, job, extra: list[str], show: tuple[str, ...] = ()) -> None:
        """One job, its output in <out>/logs/<name>.log, its time in ``timings``; a failure names the log."""
        from rlt_ray.errors import RunStopped

        t = time.time()
        with self.logs.stage(name, show):
            code = job.main(self.base + extra)
        if code != 0:
            raise RunStopped(f"stage {name} failed (exit {code}); see {self.out / 'logs' / (name + '.log')}")
        self.timings[name] = time.time() - t

    def stage(self, k: int, name: str, title: str, job, extra: list[str]) -> None:
        print(f"[{k}/{self.n_stages}] {title} ...", flush=True)
        self.run(name, job, extra)
        print(f"      done in {self.timings[name]:.0f} s", flush=True)

    def evaluate_arm(self, arm: str, name: str, model: Path, folder: Path, rows: int,
                     source: Path | None = None) -> dict:
        """``model``: an SFT output folder (its final/) or an HF folder; ``source``: the test set (the task's)."""
        from jobs import evaluate

        weights = model / "final" if (model / "final").is_dir() else model
        test = [f"eval.source={source}"] if source else []
        self.run(name, evaluate, self.args["evaluate"] + test + [f"eval.model={weights}", f"eval.output_dir={folder}"])
        s = json.loads((folder / "summary.json").read_text())
        return {"arm": ARMS[arm], "accuracy": s["accuracy"], "low": s["low"], "high": s["high"], "n": s["n"],
                "correct": s["correct"], "train_rows": rows, "no_solution_block": s["no_solution_block"]}

    def task_and_warm_up(self) -> dict[str, Path]:
        """Stages 1-3: the task's files, the teacher's warm-up, student (b)."""
        from jobs import sft_student, sft_teacher
        from rlt_ray.data.demo_task import write_task

        print(f"[1/{self.n_stages}] task: chained sums, {self.train_questions} train questions with reference traces, "
              f"{self.test_questions} held-out", flush=True)
        files = write_task(self.out / "task", self.train_questions, self.test_questions, int(self.cfg.data.seed))
        self.stage(2, "sft_teacher", "teacher warm-up on the reference traces", sft_teacher, self.args["sft_teacher"])
        self.stage(3, "student_b", "student (b) on the reference traces (also the RL reward's student)", sft_student,
                   self.args["student_b"])
        return files

    def rl(self) -> None:
        """Stage 4: RL, once or per seed."""
        from jobs import train_rlt
        from rlt_ray.errors import RunStopped

        print(f"[4/{self.n_stages}] RL: {self.steps} GRPO steps with the RLT reward"
              + ("" if self.seeds is None else f", at seeds {', '.join(map(str, self.seeds))}") + " ...", flush=True)
        t = time.time()
        for seed, _, arm_args in self.rl_arms:
            if seed is not None:
                print(f"      seed {seed}", flush=True)
            try:
                self.run("train_rlt" + (f"_{seed}" if seed is not None else ""), train_rlt, arm_args["train_rlt"],
                         show=("step ", "warning: "))
            except RunStopped as exc:
                if seed is None:
                    raise
                self.stopped[seed] = str(exc)
                print(f"      seed {seed} stopped: {str(exc)[:300]}", flush=True)
        print(f"      done in {time.time() - t:.0f} s", flush=True)

    def distil(self) -> tuple[list[dict], dict]:
        """Stage 5: the warm-up teacher's explanations, and each RL teacher's."""
        from jobs import distill

        print(f"[5/{self.n_stages}] distil the warm-up teacher's and the RL teacher's explanations ...", flush=True)
        t = time.time()
        self.run("distill_c", distill, self.args["distill_c"], show=("warning: ",))  # rows repeating across questions
        warm = distilled_rows(self.out / "distill_warmup")
        distilled = {}
        for seed, folder, arm_args in self.rl_arms:
            if seed not in self.stopped:
                self.run("distill_d" + (f"_{seed}" if seed is not None else ""), distill, arm_args["distill_d"],
                         show=("warning: ",))
                distilled[seed] = distilled_rows(folder / "distill_rl")
        print(f"      done in {time.time() - t:.0f} s", flush=True)
        return warm, distilled

    def students(self, sizes: dict[str, int], distilled: dict) -> tuple[int, dict]:
        """Stage 6: students (a), (c), (d) on the same number of rows (distillation drops the rows whose
        explanation never closed its tag); (b) again on as few, when fewer. Returns the rows and (d)'s per seed."""
        from jobs import sft_student
        from rlt_ray.errors import RunStopped

        min_rows = int(self.cfg.sft.batch_size)
        rows = rows_per_arm(sizes, self.student_rows, self.out, min_rows)
        same = [f"data.max_rows={rows}"]
        print(f"[6/{self.n_stages}] students (a), (c), (d): {rows} rows each "
              f"({self.student_epochs or self.cfg.sft.epochs} epochs) ...", flush=True)
        t = time.time()
        for arm in "ac":
            self.run(f"student_{arm}", sft_student, self.args[f"student_{arm}"] + same)
        if rows < self.student_rows:  # (b) was trained before distillation; retrain it on as few rows as the others
            self.run("student_b_same_rows", sft_student,
                     self.args["student_b"] + same + [f"sft.output_dir={self.out / 'student_b_same_rows'}"])
        d_rows = {}
        for seed, folder, arm_args in self.rl_arms:
            if seed in self.stopped:
                continue
            try:  # a replicate's RL teacher may keep fewer rows than the shared arms: (d) then trains on fewer
                d_rows[seed] = rows_per_arm({**sizes, "d": len(distilled[seed])}, rows, self.out, min_rows)
            except RunStopped as exc:
                if seed is None:
                    raise
                self.stopped[seed] = str(exc)
                continue
            self.run("student_d" + (f"_{seed}" if seed is not None else ""), sft_student,
                     arm_args["student_d"] + [f"data.max_rows={d_rows[seed]}"])
        print(f"      done in {time.time() - t:.0f} s", flush=True)
        return rows, d_rows

    def evaluate(self, rows: int, d_rows: dict) -> tuple[dict, dict]:
        """Stage 7: every student on the held-out questions. Returns the shared arms and, per seed, all four."""
        print(f"[7/{self.n_stages}] evaluate the students on {self.test_questions} held-out questions ...",
              flush=True)
        t = time.time()
        students = {}
        for arm in "abc":
            model = self.out / (f"student_{arm}" if arm != "b" or rows == self.student_rows else "student_b_same_rows")
            students[arm] = self.evaluate_arm(arm, f"evaluate_{arm}", model, self.out / "eval" / arm, rows)
        per_seed = {}
        for seed, folder, _ in self.rl_arms:
            if seed not in self.stopped:
                per_seed[seed] = {**students, "d": self.evaluate_arm(
                    "d", "evaluate_d" + (f"_{seed}" if seed is not None else ""), folder / "student_d",
                    folder / "eval" / "d", d_rows[seed])}
        print(f"      done in {time.time() - t:.0f} s", flush=True)
        return students, per_seed

    def serve(self, test_row: dict) -> dict:
        """Stage 8: the RL teacher on Ray Serve, asked for one explanation."""
        t = time.time()
        print(f"[8/{self.n_stages}] serve the RL teacher on Ray Serve, POST /v1/explain ...", flush=True)
        with self.logs.stage("serve"):
            served = ask_the_endpoint(self.preset, self.overrides + self.args["serve"], test_row)
        self.timings["serve"] = time.time() - t
        best = served["explanations"][0]
        print(f"      weights version {served['weights_version']}, best of 4 by RLT reward "
              f"{best['reward']['total']:.3f}: {test_row['question']} -> {best['text'].strip()[:160]!r}", flush=True)
        return served


def main(argv: list[str]) -> int:
    """The demo; with ``--seeds 42,43,...`` its replicates: the stages that do not depend on the RL stage's seed
    (task, warm-up, students (a)-(c) and their evaluation) run once, and the RL teacher's arm (RL, distillation,
    student (d), its evaluation) once per seed, under <out>/seeds/<seed>/; writes <out>/replicates.json and
    <out>/replicates.png and prints the table per seed (no Serve stage)."""
    from rlt_ray.config import load_config, split_argv
    from rlt_ray.errors import ConfigError
    from rlt_ray.infra.cluster import connect_ray, quiet_library_bars

    seeds, argv = split_seeds(argv)
    extended = "--extended" in argv
    argv = [a for a in argv if a != "--extended"]
    if extended and seeds is not None:
        raise ConfigError("--extended and --seeds: run the extended demo at one seed at a time (run.seed=...)")
    preset, overrides = split_argv(argv, default="demo")
    demo = Demo(load_config(preset, overrides), preset, overrides, seeds, extended)
    out = demo.out
    for folder in ("teacher_sft", "rl", "distill_warmup", "distill_rl", "eval", "seeds", "student_b_same_rows",
                   "cold_start", "transfer") + tuple(f"student_{a}" for a in ARMS):
        shutil.rmtree(out / folder, ignore_errors=True)  # a demo starts from scratch (distill would resume)
    quiet_library_bars()
    t0 = time.time()
    connect_ray()
    files = demo.task_and_warm_up()
    demo.rl()
    warm, distilled = demo.distil()
    sizes = {"a": demo.train_questions, "b": demo.train_questions, "c": len(warm)}
    if seeds is None:
        sizes["d"] = len(distilled[None])
    rows, d_rows = demo.students(sizes, distilled)
    students, per_seed = demo.evaluate(rows, d_rows)
    if seeds is not None:
        return report_replicates(out, seeds, per_seed, demo.stopped, students, distilled, time.time() - t0,
                                 float(demo.cfg.distill.max_shared_fraction))
    students = per_seed[None]
    served = demo.serve(json.loads(files["test"].read_text().splitlines()[0]))
    cold = transfer = None
    if extended:
        model_b = out / ("student_b" if rows == demo.student_rows else "student_b_same_rows")
        cold = cold_start(demo.cfg, out, demo.args, demo.run, demo.evaluate_arm, model_b, rows, demo.n_stages)
        students.update(cold)
        transfer = transfer_arms(demo.cfg, out, demo.args, demo.run, demo.evaluate_arm, rows, demo.n_stages)
    summary, curve = write_summary(demo, files, students, sizes, warm, distilled[None], served, transfer, t0)
    print_summary(demo, summary, curve, cold, transfer)
    return 0


def write_summary(demo: Demo, files: dict[str, Path], students: dict, sizes: dict, warm: list[dict],
                  rl: list[dict], served: dict, transfer: dict | None, t0: float) -> tuple[dict, dict]:
    """<out>/summary.json and <out>/demo.png: the table, the RL curves, what the explanations contain, times.
    Returns the summary and the RL curve it was made from."""
    out = demo.out
    curve = rl_curve(out / "rl" / "metrics.jsonl")
    k = curve["window"]
    by_id = {r["id"]: r for r in rl}
    train_rows = [json.loads(line) for line in files["train"].read_text().splitlines()]
    traces = {r["id"]: r["reasoning_trace"] for r in train_rows}
    examples = [{"question": r["question"], "solution": r["solution"], "reference_trace": traces.get(r["id"]),
                 "warm_up": r["explanation"], "rl": by_id[r["id"]]["explanation"]}
                for r in warm if r["id"] in by_id][:3]
    features = explanation_table(train_rows, warm, rl)
    plot(out, {a: students[a] for a in "abcd"}, out / "rl" / "metrics.jsonl")
    summary = {"students": students, "shape": shape_holds(students), "cpu": cpu_name(),
               "rl": {"steps": demo.steps, "step1": curve["step1"], f"first{k}": curve["first"],
                      f"last{k}": curve["last"], "reward_rose": curve["last"]["reward_mean"] > curve["first"]["reward_mean"],
                      "reward_ended_above_step1": curve["reward_ended_above_step1"],
                      **({"validation": curve["validation"]} if "validation" in curve else {})},
               "distilled_rows": sizes, "explanations": features, "examples": examples,
               "served_weights_version": served["weights_version"],
               **({"transfer": transfer} if transfer is not None else {}),
               "seconds": time.time() - t0, "stage_seconds": demo.timings}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary, curve


def print_summary(demo: Demo, summary: dict, curve: dict, cold: dict | None, transfer: dict | None) -> None:
    """The console's closing table and lines."""
    from rlt_ray.infra.cluster import library_log_dir

    cfg, out, students = demo.cfg, demo.out, summary["students"]
    k, step1, first, last = curve["window"], curve["step1"], curve["first"], curve["last"]
    library_logs = library_log_dir(out / "logs" / "ray")
    print("\n=== demo: students distilled four ways (the paper's Table 1 in miniature)")
    print_table({a: students[a] for a in "abcd"})
    if cold:
        print(f"\ncold start: students (b) and (d) after {cfg.demo.cold_start_steps} outcome-reward GRPO steps")
        print_table(cold)
    if transfer:
        print(f"\ntransfer: {cfg.demo.transfer_terms}-term sums, which the teachers never trained on")
        print_table(transfer)
    print(f"(d)'s interval above (b)'s and (c)'s (the paper's shape): {'yes' if summary['shape'] else 'no'}")
    print(f"\nteacher RL, step 1 / mean of the first {k} steps -> of the last {k}:")
    for key, label in (("reward_mean", "reward"), ("r_ss_mean", "r_SS"), ("r_kl_mean", "r_KL"),
                       ("closed_tag_fraction", "closed tag"), ("completion_tokens_mean", "explanation tokens")):
        print(f"  {label:20} {step1[key]:9.3f} / {first[key]:9.3f} -> {last[key]:9.3f}")
    if "validation" in curve:  # run.eval_every: the held-out questions, greedy, before the first step and after the last
        v = curve["validation"]
        print(f"teacher RL on {cfg.data.eval_size} held-out questions (greedy), before -> after:")
        for key, label in (("val/reward_mean", "reward"), ("val/r_ss_mean", "r_SS"),
                           ("val/closed_tag_fraction", "closed tag")):
            print(f"  {label:20} {v['first'][key]:9.3f} -> {v['last'][key]:9.3f}")
    if summary["examples"]:
        e = summary["examples"][0]
        print(f"\n{e['question']}  (solution {e['solution']})\n  reference trace: {e['reference_trace']}\n"
              f"  warm-up teacher: {e['warm_up'].strip()}\n  RL teacher:      {e['rl'].strip()}")
    print(f"\ntotal {summary['seconds']:.0f} s; figures {out / 'demo.png'}, {out / 'summary.json'}; "
          f"TensorBoard: tensorboard --logdir {out}; logs: {out / 'logs'}"
          + (f" (Ray, vLLM, DeepSpeed: {library_logs})" if library_logs else ""))
    if not summary["rl"]["reward_rose"]:
        print(f"note: the RL reward did not rise (mean of the first {k} steps {first['reward_mean']:.3f}, of the last "
              f"{k} {last['reward_mean']:.3f}); docs/demo.md ('Reading the result') says what it does on this task")


def cold_start(cfg, out: Path, args: dict, run, evaluate_arm, model_b: Path, rows: int, n_stages: int) -> dict:
    """--extended, the paper's §5 cold start: students (b) and (d), each after the same outcome-reward GRPO
    (reward.kind=verifier: 1 for a right answer) on the same training questions, evaluated as (a)-(d) are."""
    from jobs import train_rlt

    steps = int(cfg.demo.cold_start_steps)
    print(f"[9/{n_stages}] cold start: {steps} outcome-reward GRPO steps from students (b) and (d) ...", flush=True)
    t = time.time()
    arms = {}
    for arm, start in (("e", model_b), ("f", out / "student_d")):
        folder = out / "cold_start" / arm
        weights = start / "final" if (start / "final").is_dir() else start
        run(f"cold_start_{arm}", train_rlt, [
            f"data.source={out / 'task' / 'train.jsonl'}", f"data.eval_source={out / 'task' / 'test.jsonl'}",
            "reward.kind=verifier",
            f"model.student={weights}", f"run.steps={steps}", "run.checkpoint_every=0", f"run.output_dir={folder}",
            f"learner.lr={cfg.demo.cold_start_lr}", "learner.lr_schedule=constant", "grpo.ref_mixup_every=0",
            f"learner.warmup_ratio={cfg.demo.rl_warmup_ratio}", f"run.eval_every={cfg.demo.rl_eval_every}",
            f"rollout.max_new_tokens={cfg.eval.max_new_tokens}"], show=("step ",))
        arms[arm] = evaluate_arm(arm, f"evaluate_{arm}", folder / "checkpoints" / f"step_{steps:06d}" / "hf",
                                 out / "eval" / arm, rows)
    print(f"      done in {time.time() - t:.0f} s", flush=True)
    return arms


def transfer_arms(cfg, out: Path, args: dict, run, evaluate_arm, rows: int, n_stages: int) -> dict:
    """--extended, the paper's zero-shot transfer: a task the teachers never trained on (longer chains). The
    warm-up and RL teachers distil its questions without further RL; students on each and on its reference
    traces are trained as (b)-(d) are and evaluated on its own held-out questions."""
    from jobs import distill, sft_student
    from rlt_ray.data.demo_task import write_task

    terms, tests = int(cfg.demo.transfer_terms), int(cfg.demo.transfer_test_questions)
    print(f"[10/{n_stages}] transfer: {terms}-term sums, distilled by both teachers without RL on them; "
          f"students on {tests} of its held-out questions ...", flush=True)
    t = time.time()
    task = out / "transfer" / "task"
    write_task(task, int(cfg.demo.train_questions), tests, int(cfg.data.seed) + 100, terms=terms)
    base = [f"data.source={task / 'train.jsonl'}", "distill.k=1", "distill.keep=best", "distill.batch_rows=256",
            f"model.student={out / 'student_b' / 'final'}"]
    teachers = {"c": out / "teacher_sft" / "final",
                "d": out / "rl" / "checkpoints" / f"step_{int(cfg.run.steps):06d}" / "hf"}
    sizes = {"b": int(cfg.demo.train_questions)}
    for arm, teacher in teachers.items():
        run(f"transfer_distill_{arm}", distill, base + [f"model.teacher={teacher}",
                                                       f"distill.output_dir={out / 'transfer' / f'distill_{arm}'}"])
        sizes[arm] = len(distilled_rows(out / "transfer" / f"distill_{arm}"))
    n = rows_per_arm(sizes, rows, out / "transfer", int(cfg.sft.batch_size))
    sources = {"b": task / "train.jsonl", "c": out / "transfer" / "distill_c" / "data",
               "d": out / "transfer" / "distill_d" / "data"}
    arms = {}
    for arm, source in sources.items():
        folder = out / "transfer" / f"student_{arm}"
        run(f"transfer_student_{arm}", sft_student, [f"data.source={source}",
                                                     f"sft.output_dir={folder}", f"data.max_rows={n}"])
        arms[arm] = evaluate_arm(arm, f"transfer_evaluate_{arm}", folder, out / "transfer" / "eval" / arm, n,
                                 source=task / "test.jsonl")
    print(f"      done in {time.time() - t:.0f} s", flush=True)
    return arms


def explanation_table(train_rows: list[dict], warm: list[dict], rl: list[dict]) -> dict[str, dict]:
    """What each arm's training text contains (rlt_ray.data.demo_task.describe_explanations): the reference traces
    (b), the warm-up teacher's (c) and the RL teacher's (d) explanations."""
    from rlt_ray.data.demo_task import describe_explanations

    reference = [{**r, "explanation": r["reasoning_trace"]} for r in train_rows]
    return {"b": describe_explanations(reference), "c": describe_explanations(warm), "d": describe_explanations(rl)}


def print_table(students: dict) -> None:
    print(f"{'student trained on':40} {'accuracy':>9} {'95 % interval':>16}")
    for arm, s in students.items():
        print(f"({arm}) {s['arm']:36} {s['accuracy']:9.3f}   [{s['low']:.3f}, {s['high']:.3f}]  "
              f"({s['correct']}/{s['n']})")


def report_replicates(out: Path, seeds: list[int], per_seed: dict, stopped: dict, shared: dict,
                      distilled: dict, seconds: float, max_shared: float = 0.25) -> int:
    """<out>/replicates.json and replicates.png, and the table per seed (``distilled``: each seed's rows). A seed
    whose distilled rows repeat across questions more than ``max_shared`` (distill.max_shared_fraction) is
    counted as copying (``copied_at``) beside the seeds the RL watch stopped: the watch reads 64 explanations a
    step and can miss what a whole data set shows (docs/lab-notes/demo-runs.md, run 28: seed 57)."""
    from rlt_ray.data.demo_task import describe_explanations

    entries = {}
    for seed in seeds:
        entry: dict = {"students": per_seed.get(seed, {}), "stopped": stopped.get(seed), "shape": False, "rl": None}
        metrics = out / "seeds" / str(seed) / "rl" / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().strip():
            curve = rl_curve(metrics)
            entry["rl"] = {"k": curve["window"], "step1": curve["step1"], "first": curve["first"],
                           "last": curve["last"]}
        if seed in per_seed:
            entry["shape"] = shape_holds(per_seed[seed])
            entry["explanations"] = describe_explanations(distilled[seed])
            entry["copied"] = entry["explanations"].get("shared", 0.0) > max_shared
        entries[str(seed)] = entry
    replicates = {"cpu": cpu_name(), "seeds": entries, "shared": shared, "seconds": seconds,
                  "shape_at": [int(s) for s, e in entries.items() if e["shape"]],
                  "stopped_at": [int(s) for s, e in entries.items() if e["stopped"]],
                  "copied_at": [int(s) for s, e in entries.items() if e.get("copied")],
                  "max_shared_fraction": max_shared}
    (out / "replicates.json").write_text(json.dumps(replicates, indent=2))
    plot_replicates(out, replicates)
    print(f"\n=== demo replicates at {len(seeds)} RL seeds ({replicates['cpu']})")
    print("shared by every seed (they do not depend on the RL stage):")
    print_table(shared)
    print(f"\n{'seed':>6} {'(d) RL teacher':>16} {'95 % interval':>16} {'closed tag':>11} {'expl. tokens':>13} "
          f"{'repeated':>9}  shape")
    for seed, e in entries.items():
        if e["stopped"]:
            print(f"{seed:>6}  stopped: {e['stopped'][:200]}")
            continue
        d, rl = e["students"]["d"], e["rl"]
        print(f"{seed:>6} {d['accuracy']:16.3f}   [{d['low']:.3f}, {d['high']:.3f}] "
              f"{rl['last']['closed_tag_fraction']:11.2f}"
              f" {rl['last']['completion_tokens_mean']:13.1f} {e['explanations'].get('shared', 0.0):9.2f}"
              f"  {'yes' if e['shape'] else 'no'}{'  (copying)' if e['copied'] else ''}")
    print(f"\nthe paper's shape ((d)'s interval above (b)'s and (c)'s) at {len(replicates['shape_at'])} of "
          f"{len(seeds)} "
          f"seeds; stopped (reward hacking or too few rows) at {len(replicates['stopped_at'])}; distilled rows "
          f"repeated across questions (over distill.max_shared_fraction={max_shared}) at "
          f"{len(replicates['copied_at'])}; total {seconds:.0f} s; {out / 'replicates.json'}, {out / 'replicates.png'}")
    return 0


if __name__ == "__main__":
    from rlt_ray.infra.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "demo"))
