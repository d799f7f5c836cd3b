"""The memory plan (rlt_ray.memory): the paper layout fits on 80 GiB, a 32B teacher on it is refused with its
numbers, and the learner formulas agree with the peak memory of a real learner step measured on this CPU."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlt_ray.config import load_config
from rlt_ray.memory import check_memory, GIB, learner_rank, main, model_shape, plan
from rlt_ray.errors import MemoryPlanError

ROOT = Path(__file__).resolve().parent.parent
PAPER = str(ROOT / "configs" / "paper_7b.yaml")


def test_shipped_shapes_give_the_known_parameter_counts():
    assert model_shape("Qwen/Qwen2.5-7B-Instruct").params == pytest.approx(7.62e9, rel=0.005)
    assert model_shape("Qwen/Qwen2.5-32B-Instruct").params == pytest.approx(32.76e9, rel=0.005)
    with pytest.raises(MemoryPlanError, match="no config.json for model 'nobody/nothing'"):
        model_shape("nobody/nothing")


def test_the_paper_preset_fits_on_80_gib(capsys):
    assert main(["--config", PAPER]) == 0
    out = capsys.readouterr().out
    assert "learner rank (x4, ZeRO-3, bfloat16)" in out and "DOES NOT FIT" not in out
    devices = check_memory(load_config(PAPER))
    assert {d.role.split(" (")[0] for d in devices} == {"learner rank", "rollout worker", "scorer"}
    assert all(d.peak < 80 * GIB for d in devices)
    # the weight sync costs one bucket on each side, not the model: the largest tensor (the embedding, 1 GiB)
    learner = devices[0]
    assert dict(learner.items)["weight-sync bucket (rank 0)"] == 152064 * 3584 * 2


def test_a_32b_teacher_on_the_same_layout_is_refused_with_its_numbers(capsys):
    cfg = load_config(PAPER, ["model.teacher=Qwen/Qwen2.5-32B-Instruct"])
    with pytest.raises(MemoryPlanError) as err:
        check_memory(cfg)
    msg = str(err.value)
    assert "learner rank" in msg and "rollout worker" in msg and "> 80 GiB" in msg
    assert "learner.zero_stage" in msg and "resources.learner_ranks" in msg  # the keys to change
    assert main(["--config", PAPER, "model.teacher=Qwen/Qwen2.5-32B-Instruct"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_without_gradient_checkpointing_the_paper_learner_does_not_fit():
    cfg = load_config(PAPER, ["learner.gradient_checkpointing=false"])
    learner = plan(cfg, ("learner",))[0]
    assert not learner.fits


def test_cpu_layouts_are_printed_but_not_checked_at_start(cfg):
    assert check_memory(cfg) == []
    assert plan(cfg)  # the plan itself works for any layout


def test_learner_formulas_match_a_measured_learner_step(tmp_path):
    """A 57M-parameter model (the tiny presets' models are dwarfed by the Python/torch runtime, so they would test
    nothing): one real fp32 learner step with checkpointing, peak RSS against the plan's learner items."""
    from transformers import Qwen2Config

    hidden, layers, intermediate, vocab, seq = 512, 8, 1536, 32000, 2048
    Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                intermediate_size=intermediate, vocab_size=vocab, tie_word_embeddings=False).save_pretrained(tmp_path)
    cfg = load_config(None, [f"model.teacher={tmp_path}", f"model.student={tmp_path}", "learner.zero_stage=0",
                             "resources.learner_ranks=1", "learner.dtype=float32", "grpo.beta=0",
                             "learner.gradient_checkpointing=true", "rollout.max_prompt_tokens=1024",
                             "rollout.max_new_tokens=1024", "learner.micro_batch_size=1"])
    estimate = sum(v for name, v in learner_rank(cfg, model_shape(str(tmp_path))).items
                   if not name.startswith("weight-sync"))  # no sync during a step
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "rss_probe.py"), str(hidden),
                           str(layers), str(intermediate), str(vocab), str(seq)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["params"] == model_shape(str(tmp_path)).params
    assert 0.7 < estimate / measured["peak_bytes"] < 1.3, (estimate / GIB, measured["peak_bytes"] / GIB)


def test_serving_a_7b_teacher_and_student_puts_each_on_its_own_gpu():
    """The engine takes rollout.gpu_memory_utilization of its GPU; the student scorer is a deployment of its own
    (serve.scorer_gpus), so the 7B pair fits where one GPU for both would not; an oversized scoring batch does
    not, and the refusal names the keys to change."""
    cfg = load_config(PAPER, ["serve.student=bespokelabs/Bespoke-Stratos-7B"])
    teacher, scorer = check_memory(cfg, ("serve",))
    assert teacher.role.startswith("serve teacher") and scorer.role.startswith("serve scorer")
    assert teacher.fits and scorer.fits and teacher.peak + scorer.peak > 80 * 2**30  # would not share one H100
    with pytest.raises(MemoryPlanError, match="serve scorer.*reward.max_batch_tokens"):
        check_memory(load_config(PAPER, ["serve.student=bespokelabs/Bespoke-Stratos-7B",
                                         "reward.max_batch_tokens=2000000"]), ("serve",))


def test_student_sft_plans_7b_on_one_node_and_refuses_32b_on_8_gpus(capsys):
    """The SFT jobs' layout (Ray Train workers: the RL learner's engine, no reference, sft.max_seq_tokens)."""
    sft = str(ROOT / "configs" / "paper_student_sft.yaml")
    assert main(["--sft", "student", "--config", sft]) == 0
    out = capsys.readouterr().out
    assert "SFT worker (x8, ZeRO-3, bfloat16)" in out and "reference" not in out and "weight-sync" not in out
    assert "activations, 16384 tokens x 1" in out and "-> 1 node(s) of 8" in out
    big = ["model.student=Qwen/Qwen2.5-32B-Instruct"]
    cfg = load_config(sft, big, job="sft")
    with pytest.raises(MemoryPlanError, match=r"SFT worker \(x8, ZeRO-3, bfloat16\): peak 9\d\.\d GiB > 80 GiB"):
        check_memory(cfg, roles=("sft_student",))
    assert main(["--sft", "student", "--config", sft, *big, "resources.learner_ranks=16"]) == 0
    assert "-> 2 node(s) of 8" in capsys.readouterr().out


def test_a_verifier_run_plans_no_student_and_no_gpu_for_its_verifiers(capsys):
    preset = str(ROOT / "configs" / "paper_verifier_7b.yaml")
    assert main(["--config", preset]) == 0
    out = capsys.readouterr().out
    assert "scorer" not in out.split("nodes, by placement")[0] and "scorer 0 = 8 GPUs -> 1 node(s)" in out
    cfg = load_config(preset)
    assert [d.role.split(" (")[0] for d in check_memory(cfg)] == ["learner rank", "rollout worker"]


def test_the_gpu_check_runs_every_check_on_cpu(tmp_path):
    """scripts/gpu_check.py is run only where a GPU is lent, rarely: its CPU smoke run keeps it working. Every
    check reports, the plan's figures are positive, and the object-store export packs the same tensors both ways
    (the script raises otherwise)."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--smoke",
                           "--dtype", "float32", "--tokens", "128", "--batch-tokens", "512", "--bucket-mb", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = json.loads(out.read_text())
    assert [x["check"] for x in lines] == ["setup", "learner_activations", "learner_activations", "scorer_batch", "P2",
                                           "sync_buffers", "sync_export", "bf16_vs_fp32_reward"]
    assert all(x["planned_gib"] > 0 for x in lines if "planned_gib" in x)
    assert [x["checkpointing"] for x in lines if x["check"] == "learner_activations"] == [True, False]
    export = lines[6]
    assert export["buckets"] >= 2 and export["before_s"] > 0 and export["now_s"] > 0


def test_a_packed_learner_is_planned_from_its_token_budget():
    """learner.max_tokens_per_micro_batch: activations at the budget's tokens in place of the longest sequence x
    micro_batch_size (and, with transformers' own SDPA, the packed [T, T] mask); the paper preset fits."""
    budget = ["learner.max_tokens_per_micro_batch=49152"]
    packed = dict(plan(load_config(PAPER, budget), ("learner",))[0].items)
    assert packed["activations, 49152 packed tokens (checkpointed)"] > 0
    assert not any("mask" in k for k in packed)  # sdpa_varlen: one attention per row, no [T, T] mask
    masked = dict(plan(load_config(PAPER, budget + ["model.attention=sdpa"]), ("learner",))[0].items)
    assert masked["packed attention mask (49152 x 49152, bool)"] == 49152.0 ** 2  # transformers' own SDPA path
    assert plan(load_config(PAPER, budget), ("learner",))[0].fits
    padded = dict(plan(load_config(PAPER, ["learner.max_tokens_per_micro_batch=null"]), ("learner",))[0].items)
    assert "activations, 32768 tokens x 1 (checkpointed)" in padded and not any("mask" in k for k in padded)
