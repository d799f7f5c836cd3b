"""The batched RLT reward against a slow per-sample implementation written here with plain Python loops."""
import math
import random

import pytest
import torch

from rlt_ray.method.formats import Row
from rlt_ray.method.rewards import RewardSpec, left_align, rlt_reward
from rlt_ray.method.scoring import range_logprobs, score_sequences
from rlt_ray.method.spans import build_reward_sequence


# ------------------------------------------------------------------ the slow, obvious implementation
def slow_reduce(xs, op):
    if not xs:
        return float("nan")
    s = sorted(xs)
    if op == "mean":
        return sum(xs) / len(xs)
    if op == "sum":
        return sum(xs)
    if op == "min":
        return s[0]
    if op == "max":
        return s[-1]
    q = {"median": 0.5, "first_quartile": 0.25, "last_quartile": 0.75}[op]
    pos = q * (len(s) - 1)  # linear interpolation, as numpy/torch quantile
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def slow_norm(x, fn):
    if fn == "exp":
        return math.exp(x)
    if fn == "exp_norm":
        return 1 - math.exp(-x)
    return x


def slow_reward(spec, sol, t_expl, s_expl, matched, include_teacher=None):
    include_teacher = spec.include_teacher_think_entropy if include_teacher is None else include_teacher
    lp_fill = spec.not_matched_penalty if spec.nan_fill_log_prob is None else spec.nan_fill_log_prob
    kl_fill = -spec.not_matched_penalty if spec.nan_fill_kl is None else spec.nan_fill_kl
    lps = [max(slow_norm(x, spec.normalize_log_prob_fn), -spec.clip_log_prob) for x in sol]
    r_ss = 0.0
    for op, c in zip(spec.log_prob_reductions, spec.answer_log_prob_coeff):
        v = slow_reduce(lps, op)
        r_ss += c * (lp_fill if math.isnan(v) else v)
    ds = []
    for t, s in zip(t_expl, s_expl):
        if not include_teacher:
            d = -s
        else:
            d = t - s
            if spec.kl_estimator == "k3":
                d = d - 1 + math.exp(-d)
        ds.append(min(slow_norm(d, spec.normalize_kl_fn), spec.clip_kl))
    r_kl = 0.0
    for op, c in zip(spec.kl_reductions, spec.kl_penalty_coeff):
        v = slow_reduce(ds, op)
        r_kl += c * (kl_fill if math.isnan(v) else v)
    return r_ss - r_kl + (0.0 if matched else spec.not_matched_penalty)


SPECS = [
    RewardSpec(),  # the paper's
    RewardSpec(kl_estimator="k3"),
    RewardSpec(include_teacher_think_entropy=False),
    RewardSpec(normalize_log_prob_fn="exp", normalize_kl_fn="exp_norm", kl_estimator="k3"),
    RewardSpec(log_prob_reductions=("median", "first_quartile", "sum"), answer_log_prob_coeff=(1.0, 0.5, 0.1),
               kl_reductions=("last_quartile", "min"), kl_penalty_coeff=(2.0, 0.2)),
    RewardSpec(clip_log_prob=2.0, clip_kl=0.5, not_matched_penalty=-2.0, nan_fill_kl=0.0, nan_fill_log_prob=-5.0),
]


@pytest.mark.parametrize("spec", SPECS)
def test_batched_equals_slow_on_random_logprobs(spec):
    rng = random.Random(0)
    sols, texp, sexp, matched = [], [], [], []
    for i in range(24):
        n_sol = rng.choice([0, 1, 3, 17])
        n_exp = rng.choice([0, 1, 5, 40])
        sols.append([-rng.expovariate(1.0) for _ in range(n_sol)])
        texp.append([-rng.expovariate(0.5) for _ in range(n_exp)])
        sexp.append([-rng.expovariate(0.5) for _ in range(n_exp)])
        matched.append(rng.random() < 0.7)
    sol, sol_mask = left_align([torch.tensor(x, dtype=torch.float64) for x in sols])
    te, e_mask = left_align([torch.tensor(x, dtype=torch.float64) for x in texp])
    se, _ = left_align([torch.tensor(x, dtype=torch.float64) for x in sexp])
    out = rlt_reward(spec, sol, sol_mask, te, se, e_mask, torch.tensor(matched))
    for i in range(24):
        want = slow_reward(spec, sols[i], texp[i], sexp[i], matched[i])
        assert out["total"][i].item() == pytest.approx(want, abs=1e-6, rel=1e-6), i
        other = slow_reward(spec, sols[i], texp[i], sexp[i], matched[i], not spec.include_teacher_think_entropy)
        key = "total_no_entropy" if spec.include_teacher_think_entropy else "total_with_entropy"
        assert out[key][i].item() == pytest.approx(other, abs=1e-6, rel=1e-6)
    assert torch.isfinite(out["total"]).all()
    assert torch.allclose(out["total"], out["r_ss"] - out["r_kl"] + out["match"])


def test_empty_spans_and_the_missing_tag_penalty():
    spec = RewardSpec()
    z = torch.zeros((2, 3))
    none = torch.zeros((2, 3), dtype=torch.bool)
    out = rlt_reward(spec, z, none, z, z, none, torch.tensor([True, False]))
    # empty solution → both lp reductions filled with -1; empty explanation → both KL reductions filled with +1
    assert out["r_ss"].tolist() == pytest.approx([-1.01, -1.01])
    assert out["r_kl"].tolist() == pytest.approx([3.03, 3.03])
    assert out["total"].tolist() == pytest.approx([-4.04, -5.04])
    # the reference's min/max over an empty mask give ±3.4e38; ours never leave the fill
    assert torch.isfinite(out["total"]).all()


def test_k3_is_non_negative_and_k1_can_be_negative():
    t = torch.tensor([[-1.0, -3.0, -0.2]])
    s = torch.tensor([[-2.0, -1.0, -0.2]])
    m = torch.ones_like(t, dtype=torch.bool)
    one = torch.ones((1, 1))
    k1 = rlt_reward(RewardSpec(kl_reductions=("min",), kl_penalty_coeff=(1.0,)), one, m[:, :1], t, s, m, torch.tensor([True]))
    k3 = rlt_reward(RewardSpec(kl_reductions=("min",), kl_penalty_coeff=(1.0,), kl_estimator="k3"), one, m[:, :1], t, s, m,
                    torch.tensor([True]))
    assert k1["explanation_kl_min"].item() == pytest.approx(-2.0)
    assert k3["explanation_kl_min"].item() >= 0.0


def teacher_logprobs(model, seqs, pad_id, temperature, **kw):
    """The teacher's explanation log-probs by an HF forward (what the learners' completion_logprobs computes)."""
    got = range_logprobs(model, [s.teacher_ids for s in seqs], [[s.teacher_explanation] for s in seqs], pad_id,
                         temperature, **kw)
    return [g[0] for g in got]


ROW = Row(question="Tom has 3 apples and buys 4 more. How many?", solution="He has \\boxed{7} apples.",
          reasoning_trace="3 + 4 = 7")


@pytest.mark.parametrize("tau", [0.7, 1.0])
def test_on_real_tiny_models_batched_equals_slow(fmt, tok, teacher, student, tau):
    prompt_ids = tok(fmt.teacher_prompt(ROW), add_special_tokens=False)["input_ids"]
    texts = ["3 + 4 = 7\n\n<|end_of_explanation|>", "Count: three, then four more.\n\n<|end_of_explanation|>",
             "never closes", "<|end_of_explanation|>", "He has \\boxed{7} apples. ✓\n\n<|end_of_explanation|>"]
    seqs = [build_reward_sequence(ROW, prompt_ids, tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                                  fmt, fmt) for t in texts]
    spec = RewardSpec()
    t_lp = teacher_logprobs(teacher, seqs, tok.pad_token_id, tau, max_batch_tokens=300)
    out = score_sequences(student, seqs, t_lp, spec, tok.pad_token_id, tau, max_batch_tokens=300)

    def one_by_one(model, ids, a, b):  # full logits of ONE sequence, plain loop
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double() / tau, -1)
        return [lp[j - 1, ids[j]].item() for j in range(a, b)]

    for i, s in enumerate(seqs):
        sol = one_by_one(student, s.student_ids, *s.student_solution)
        se = one_by_one(student, s.student_ids, *s.student_explanation)
        te = one_by_one(teacher, s.teacher_ids, *s.teacher_explanation)
        assert len(sol) == s.student_solution[1] - s.student_solution[0] > 0
        want = slow_reward(spec, sol, te, se, s.matched)
        assert out["total"][i].item() == pytest.approx(want, abs=1e-5, rel=1e-6), texts[i]  # fp32 vs fp64
    assert out["match"].tolist() == [0.0, 0.0, -1.0, 0.0, 0.0]
    assert torch.isfinite(out["total"]).all()


def adversarial_rewards(fmt, tok, teacher, student, long_text):
    row = Row(question="Is <|end_of_explanation|> a tag? <|begin_of_thought|>", solution="Yes: <|end_of_solution|> too.")
    prompt_ids = tok(fmt.teacher_prompt(row), add_special_tokens=False)["input_ids"]
    texts = ["", "<|end_of_explanation|>", "a<|end_of_explanation|>b<|end_of_explanation|>",
             "<|begin_of_explanation|>x<|end_of_explanation|>", "ünïcödé 数学 🚀<|end_of_explanation|>",
             long_text, "<|end_of_thought|><|begin_of_solution|>fake<|end_of_solution|><|end_of_explanation|>"]
    seqs = [build_reward_sequence(row, prompt_ids, tok(t, add_special_tokens=False)["input_ids"], fmt, fmt)
            for t in texts]
    t_lp = teacher_logprobs(teacher, seqs, tok.pad_token_id, 0.7)
    out = score_sequences(student, seqs, t_lp, RewardSpec(), tok.pad_token_id, 0.7)
    return row, seqs, out


def test_adversarial_teacher_outputs_give_finite_rewards(fmt, tok, teacher, student):
    row, seqs, out = adversarial_rewards(fmt, tok, teacher, student, "y" * 10_000)
    assert torch.isfinite(out["total"]).all()
    assert out["match"].tolist() == [-1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    # the solution span is always the real solution with its padding (the reference's solutions_content),
    # whatever the explanation or question contains
    for s in seqs:
        a, b = s.student_solution
        assert tok.decode(s.student_ids[a:b]) == fmt.pad + row.solution + fmt.pad


def test_spec_from_config(cfg):
    spec = RewardSpec.from_config(cfg.reward)
    assert spec.answer_log_prob_coeff == (1.0, 0.01) and spec.kl_reductions == ("mean", "max")
    assert spec.kl_fill == 1.0 and spec.lp_fill == -1.0


@pytest.mark.slow
def test_a_100k_character_explanation_gives_a_finite_penalised_reward(fmt, tok, teacher, student):
    _, seqs, out = adversarial_rewards(fmt, tok, teacher, student, "y" * 100_000)
    assert torch.isfinite(out["total"]).all()
    assert out["match"][5].item() == -1.0
    assert seqs[5].teacher_explanation[1] - seqs[5].teacher_explanation[0] > 1000


def test_unscorable_samples_are_never_better_than_their_group():
    from rlt_ray.method.rewards import penalty_parts, unscorable_totals

    assert penalty_parts(RewardSpec(), 2)["total"].tolist() == pytest.approx([-5.04, -5.04])
    totals = torch.tensor([-20.0, -30.0, 0.0, 0.0, -1.0, 5.0])
    failed = torch.tensor([False, False, True, True, True, False])
    out = unscorable_totals(totals, failed, 2, -1.0, -5.04)
    # group 0 untouched; group 1 has nothing scored: the fill for both (no advantage); group 2: worst - 1
    assert out.tolist() == pytest.approx([-20.0, -30.0, -5.04, -5.04, 4.0, 5.0])
