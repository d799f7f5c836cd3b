"""ScorerDeployment: the student behind the Serve app, scoring explanations exactly as training scores them;
concurrent requests batched into one forward (@serve.batch)."""

from __future__ import annotations

import asyncio
from typing import Optional

from ray import serve
# the base class LLMConfig.callback_config takes (ray.serve.llm exports no public name for it)


# Everything a deployment uses is defined above it: Serve captures the class when it is decorated.
@serve.deployment
class ScorerDeployment:
    """The RLT reward of explanations under the student: r_SS, r_KL and the total, as training scores them."""

    def __init__(self, preset: Optional[str], overrides: list[str]):
        from rlt_ray.config import load_config, temperatures
        from rlt_ray.method.formats import RLTFormat
        from rlt_ray.models.registry import load_causal_lm, load_tokenizer
        from rlt_ray.method.rewards import RewardSpec
        from rlt_ray.method.spans import check_same_vocabulary

        self.cfg = cfg = load_config(preset, overrides)
        teacher_tok = load_tokenizer(cfg.serve.model or cfg.model.teacher)
        student_tok = load_tokenizer(cfg.serve.student)
        check_same_vocabulary(teacher_tok, student_tok)
        self.fmt, self.student_fmt = RLTFormat(cfg.format, teacher_tok), RLTFormat(cfg.format, student_tok)
        self.device = "cuda" if cfg.resources.device == "cuda" and float(cfg.serve.scorer_gpus) > 0 else "cpu"
        self.student = load_causal_lm(cfg.serve.student, cfg.model.dtype, self.device, cfg.model.attention).eval()
        self.spec = RewardSpec.from_config(cfg.reward)
        self.temperature = temperatures(cfg)["student"]
        self.score.set_max_batch_size(int(cfg.serve.scorer_batch_size))

    async def ready(self) -> bool:
        return True  # the constructor has loaded the student

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score(self, jobs: list[dict]) -> list[list[dict[str, float]]]:
        """Each job: {question, solution, prompt_ids, completions: [{ids, logprobs}]}; all of a batch's
        explanations go through the student together (reward.max_batch_tokens per forward)."""
        return await asyncio.to_thread(self._score, jobs)

    def _score(self, jobs: list[dict]) -> list[list[dict[str, float]]]:
        import torch

        from rlt_ray.method.formats import Row
        from rlt_ray.models.registry import pad_token_id
        from rlt_ray.method.rewards import penalty_parts
        from rlt_ray.method.scoring import score_sequences
        from rlt_ray.errors import AlignmentError
        from rlt_ray.method.spans import build_reward_sequence

        flat = [(j, c) for j, job in enumerate(jobs) for c in job["completions"]]
        parts = penalty_parts(self.spec, len(flat))
        seqs, teacher, kept = [], [], []
        for k, (j, c) in enumerate(flat):
            job = jobs[j]
            prompt = job["prompt_ids"]
            # the explanation span leaves out the prompt's closing padding: its teacher log-probs would need an
            # HF forward of the teacher (vLLM gives prompt log-probs only at temperature 1); docs/design.md
            try:
                seq = build_reward_sequence(Row(question=job["question"], solution=job["solution"]), prompt,
                                            c["ids"], self.fmt, self.student_fmt, self.cfg.reward.solution_span,
                                            "sampled")
            except AlignmentError:  # scored like the training loop scores it: the penalty reward
                continue
            a, b = seq.teacher_explanation
            seqs.append(seq)
            kept.append(k)
            teacher.append(torch.tensor(c["logprobs"][a - len(prompt): b - len(prompt)]))
        if seqs:
            got = score_sequences(self.student, seqs, teacher, self.spec, pad_token_id(self.student_fmt.tokenizer),
                                  self.temperature, self.cfg.reward.max_batch_tokens, device=self.device)
            for key in parts:
                parts[key][kept] = got[key].to(parts[key].device)
        out = [{key: float(parts[key][k]) for key in ("total", "r_ss", "r_kl", "match")} for k in range(len(flat))]
        per_job, start = [], 0
        for job in jobs:
            per_job.append(out[start: start + len(job["completions"])])
            start += len(job["completions"])
        return per_job
