"""The RL job's rows and their tokenized prompts: the training rows, and the held-out rows of run.eval_every."""

from __future__ import annotations

from typing import Any, NamedTuple


class Prompts(NamedTuple):
    rows: list  # the training rows
    prompts: list  # their tokenized prompts
    dropped: dict  # why rows were dropped -> how many
    eval_rows: list  # the held-out rows of run.eval_every (empty when it is off)
    eval_prompts: list


def load_prompts(cfg: Any) -> Prompts:
    """Rows and their tokenized prompts: the teacher's (question and solution; reward.kind=rlt) or the student's
    (the question; reward.kind=verifier). Dropped and counted: prompts over rollout.max_prompt_tokens, and with a
    verifier the rows without an answer to check (never scored 0 in silence). With run.eval_every, the held-out
    rows too: data.eval_source's, or the last data.eval_size rows of data.source (then not trained on)."""
    from rlt_ray.errors import ConfigError
    from rlt_ray.data.sources import load_rows
    from rlt_ray.method.answers import load_answer_check

    dc = cfg.data
    if cfg.reward.kind == "verifier" and cfg.reward.answer_check:  # your own check decides what it can check: load
        load_answer_check(cfg.reward.answer_check)  # it here, so a bad name stops the job before any actor starts
    rows, prompts, dropped = _prompts_of(cfg, load_rows(dc.source, split=dc.split, size=dc.size, seed=dc.seed,
                                                         max_rows=dc.max_rows, fmt_cfg=cfg.format), str(dc.source))
    eval_rows: list = []
    eval_prompts: list = []
    if cfg.run.eval_every:
        if dc.eval_source:
            held = load_rows(dc.eval_source, split=dc.eval_split, size=dc.eval_size, seed=dc.seed,
                             max_rows=dc.eval_size, fmt_cfg=cfg.format)
            eval_rows, eval_prompts, _ = _prompts_of(cfg, held, str(dc.eval_source))
            if not eval_rows:
                raise ConfigError(f"config key 'data.eval_source': no row of {dc.eval_source} is usable "
                                  f"(prompt length or answer to check; see rollout.max_prompt_tokens)")
        else:
            if len(rows) <= dc.eval_size:
                raise ConfigError(f"config key 'data.eval_size': {dc.eval_size} held-out rows leave no training row "
                                  f"of data.source's {len(rows)}; lower it or set data.eval_source")
            rows, eval_rows = rows[:-dc.eval_size], rows[-dc.eval_size:]
            prompts, eval_prompts = prompts[:-dc.eval_size], prompts[-dc.eval_size:]
    if len(rows) < cfg.run.questions_per_step:
        raise ConfigError(f"config key 'rollout.max_prompt_tokens': only {len(rows)} rows have a prompt of at most "
                          f"{cfg.rollout.max_prompt_tokens} tokens"
                          + (" and an answer to check" if cfg.reward.kind == "verifier" else "")
                          + (f" (after data.eval_size={dc.eval_size} held out)" if eval_rows and not dc.eval_source
                             else "")
                          + f", fewer than run.questions_per_step={cfg.run.questions_per_step}")
    return Prompts(rows, prompts, dropped, eval_rows, eval_prompts)


def _prompts_of(cfg: Any, rows: list, source: str) -> tuple[list, list, dict]:
    """The rows that can be prompted (and, with a verifier, checked) with their prompt ids, and the dropped counts."""
    from rlt_ray.config import trained_model
    from rlt_ray.method.answers import AnswerChecker
    from rlt_ray.method.formats import RLTFormat, prompt_ids
    from rlt_ray.models.registry import load_tokenizer
    from rlt_ray.method.verifier import checkable

    tokenizer = load_tokenizer(cfg.model.tokenizer or trained_model(cfg))
    fmt = RLTFormat(cfg.format, tokenizer)
    dropped = {}
    if cfg.reward.kind == "verifier":
        # reasoning-gym's scorer, or your own check, gets every item
        every = cfg.reward.answer_check or AnswerChecker.method_for(source) == "reasoning_gym"
        usable = [r for r in rows if checkable(r, bool(every))]
        if len(usable) < len(rows):
            dropped["without an answer to check"] = len(rows) - len(usable)
        rows = usable
        texts = [fmt.student_prompt(r) for r in rows]
    else:
        texts = [fmt.teacher_prompt(r) for r in rows]
    ids = prompt_ids(tokenizer, texts, cfg.rollout.max_prompt_tokens)
    kept = [(row, p) for row, p in zip(rows, ids) if p is not None]
    if len(kept) < len(rows):
        dropped[f"over rollout.max_prompt_tokens={cfg.rollout.max_prompt_tokens}"] = len(rows) - len(kept)
    return [r for r, _ in kept], [p for _, p in kept], dropped
