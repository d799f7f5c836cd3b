"""The streamed RL step of jobs/train_rlt.py: the actors it drives, and what it does when one of them fails.

``RLStep`` holds the run's actors (the DeepSpeed learner group, the rollout workers and student scorers in
``actors.ActorSlots``, the weight sync) and the run's log. Per step, jobs/train_rlt.py calls

    sync_if_stale(step, version)    1. the workers get the learner's weights (workers lost during it are replaced)
    learn(step, version)            2-5. generate -> (teacher log-probs ->) score -> learn, streamed (``stream``):
                                    every worker hands over finished GRPO groups as they complete, each chunk is
                                    scored at once, scored chunks go straight into the learners' gradient
                                    accumulation (``BatchFeed``); the optimizer steps once per batch
    log_step(...)                   6. metrics, events, the console line
and ``Checkpoints`` saves (7). ``stop_with_checkpoint`` turns any failure while the learners live into a checkpoint
of the completed steps and an ``error`` event. Stages pass ObjectRefs to each other's actors: the controller never
carries a batch. It drives actors, so it lives in actors/ beside them, not in rlt_ray/ (pure functions only).
One idea, in more than 400 lines: the streamed step and what it does when an actor fails.
"""

from __future__ import annotations

import collections
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from actors.rl_checkpoints import Checkpoints
from actors.rl_prompts import Prompts
from rlt_ray.infra.step_metrics import reward_part_metrics, sample_records, step_metrics


def prompt_tail_tokens(cfg) -> int:
    """How many of the prompt's last tokens may belong to the explanation span: those of the padding that ends
    the RL prompt (reward.explanation_span=with_prompt_pad; a token is at least one character). None with a
    verifier, which needs no log-probs."""
    if cfg.reward.kind == "verifier":
        return 0
    return len(cfg.format.padding) if cfg.reward.explanation_span == "with_prompt_pad" else 0


def _node_id(_actor) -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def node_ids(ray, actors: list) -> list[str]:
    """The Ray node id each actor runs on."""
    return ray.get([a.__ray_call__.remote(_node_id) for a in actors])


def learner_get(ray, refs):
    """The learners' results, waited for one at a time: the survivors of a dead rank may hang in a collective, so
    the first error is raised as soon as it arrives. What it means is decided by who died
    (RLStep.classify_failure), not by which error came first."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
    return ray.get(list(refs))


class BatchFeed:
    """A step's batch into the learners' gradient accumulation while it is still arriving: scored chunks are
    appended in arrival order and learned as soon as they give every rank whole micro-batches
    (rlt_ray.data.rollout_batch.learnable_stop). Every rank gets the same calls in the same order; the optimizer steps once,
    at finish. A token-mean loss needs the batch's token count, so it starts learning when generation is done."""

    def __init__(self, learners, cfg, batch_size: int):
        self.learners, self.cfg, self.batch_size = learners, cfg, batch_size
        self.parts: list[tuple[int, Any, Any]] = []  # (offset, rollout ref, scored ref), in arrival order
        self.sent = self.consumed = self.available = 0
        self.tokens: int | None = None
        self.finish_refs: list | None = None  # set by finish()
        self.refs = learners.call("begin_step")  # every learner call of the step, to wait on and to fail on

    def add(self, chunk: dict[str, Any]) -> None:
        self.parts.append((self.available, chunk["ref"], chunk["scored"]))
        self.available += chunk["sequences"]
        self._learn()

    def all_generated(self, tokens: int) -> None:
        self.tokens = tokens
        self._learn()

    def _learn(self) -> None:
        from rlt_ray.data.rollout_batch import learnable_stop, loss_denominator

        aggregation = self.cfg.grpo.loss_aggregation
        if aggregation == "token_mean" and self.tokens is None:
            return
        if self.cfg.learner.max_tokens_per_micro_batch:  # packed: any prefix plans into as many micro-batches a rank
            stop = self.available
        else:
            stop = learnable_stop(self.consumed, self.available, self.learners.world,
                                  self.cfg.learner.micro_batch_size)
        if stop == self.consumed:
            return
        denominator = loss_denominator(aggregation, self.batch_size, self.tokens or 0, self.learners.world)
        # the batch's last part: its last micro-batch steps the optimizer (packed plans set the boundary themselves)
        self.refs += self.learners.call("accumulate", self.parts[self.sent:], self.consumed, stop, denominator,
                                        stop == self.batch_size)
        self.sent, self.consumed = len(self.parts), stop

    def finish(self) -> list:
        """Issue the end of the batch; returns the refs of every rank's metrics (after all the step's calls)."""
        if self.consumed != self.batch_size:
            raise RuntimeError(f"the learners got {self.consumed} of the batch's {self.batch_size} sequences")
        self.finish_refs = self.learners.call("finish_step")
        self.refs += self.finish_refs
        return self.finish_refs


class RLStep:
    """The run's actors and the streamed step. ``start`` keeps each kind of actor as soon as it is created, so
    ``shutdown`` (in the caller's ``finally``) stops whatever did start, even when another kind failed to."""

    def __init__(self, ray: Any, cfg: Any, data: Prompts, out: Path, log: Any):
        from rlt_ray.data.sources import DataOrder

        self.ray, self.cfg, self.out, self.log = ray, cfg, out, log
        self.rows, self.prompts = data.rows, data.prompts
        self.eval_rows, self.eval_prompts = data.eval_rows, data.eval_prompts
        self.order = DataOrder(len(self.rows), cfg.run.questions_per_step, cfg.data.seed)
        self.validations: list[dict] = []  # {"step", "val/...": ...} of each validation, for the hack watch
        self.learners = self.workers = self.scorers = self.sync = None
        self.in_flight: BatchFeed | None = None  # the step the learners are in the middle of
        self.prefetched: list | None = None  # grpo.max_staleness=1: the next step's chunks, sampled while learning
        self.nonfinite_in_a_row = 0
        self.history: list[dict] = []  # this run's step metrics, for the reward-hacking watch
        # the last run.hack_window steps' (question, explanation) pairs: the watch's view of copies across steps
        self.recent_explanations: collections.deque = collections.deque(maxlen=cfg.run.hack_window)
        self.hacks_seen: set[str] = set()  # one event per kind of sign
        self.replaced = 0  # rollout workers and scorers replaced in this attempt (the actors_replaced metric)

    def start(self) -> None:
        """The rollout workers and the student scorers (named, so that operators and the fault-injection tests can
        find them: rlt:<run>:rollout:<i>[:r<n>]), the learner group (a placement group), the weight sync. The
        engines and the students load while the learner group sets up DeepSpeed: the workers and scorers are
        created first and waited for after the learners."""
        from actors import ActorSlots, actor_options
        from actors.learner import LearnerGroup
        from actors.rollout import RolloutWorker, worker_options
        from actors.student import StudentScorer
        from actors.verifier import Verifier
        from rlt_ray.infra.weight_sync import make_weight_sync

        cfg, run = self.cfg, self.out.name
        # reward.kind=verifier: the outcome reward in the scorer's place, the same slots and calls (no model: no GPU)
        scorer, gpus = (Verifier, 0.0) if cfg.reward.kind == "verifier" else (StudentScorer, None)
        self.workers = ActorSlots(lambda i, g: RolloutWorker.options(
            name=f"rlt:{run}:rollout:{i}" + (f":r{g}" if g else ""), **worker_options(cfg),
        ).remote(cfg, i), cfg.rollout.num_workers, "rollout worker", cfg.resources.ready_timeout_s, wait=False)
        self.scorers = ActorSlots(lambda i, g: scorer.options(
            name=f"rlt:{run}:scorer:{i}" + (f":r{g}" if g else ""),
            **actor_options(cfg, gpus, role="scorer")).remote(cfg, i),
            cfg.resources.scorer_workers, "scorer", cfg.resources.ready_timeout_s, wait=False)
        self.learners = LearnerGroup(cfg, name=f"rlt:{run}")
        held = self.learners.info[0]
        print(f"train_rlt: {self.learners.world} learner ranks (ZeRO-{cfg.learner.zero_stage}); rank 0 holds policy "
              f"{held['policy_bytes'] / 2**20:.1f} MiB and reference shard {held['reference_bytes'] / 2**20:.1f} "
              f"of {held['model_bytes'] / 2**20:.1f} MiB", flush=True)
        self.workers.wait_ready()
        self.scorers.wait_ready()
        self.sync = make_weight_sync(cfg.resources.weight_sync, self.learners, self.workers.actors,
                                     cfg.resources.sync_bucket_mb << 20, cfg.resources.backend,
                                     cfg.rollout.tensor_parallel_size, cfg.resources.liveness_timeout_s)
        self.sync.init()  # checks the learner's names/shapes/dtypes against the engines' once, before any step
        self.log.event(0, "placement", echo=False, **self.nodes())  # where each role runs (rlt_ray.config.placement)

    def nodes(self) -> dict[str, list[str]]:
        """The Ray node id of every actor of the run, by role."""
        roles = {"learner": self.learners.ranks, "rollout": self.workers.actors, "scorer": self.scorers.actors}
        return {role: node_ids(self.ray, actors) for role, actors in roles.items()}

    def resume(self, checkpoint: Path | None) -> int:
        """Load a checkpoint into the learners; returns the step to start from (0 without one)."""
        from rlt_ray.infra.checkpoint import check_resume_compatible, read_state

        if checkpoint is None:
            return 0
        state = read_state(checkpoint)
        check_resume_compatible(state, self.cfg.data.seed, self.cfg.run.questions_per_step)
        self.ray.get(self.learners.call("load_checkpoint", str(checkpoint)))
        print(f"train_rlt: resumed from {checkpoint} (step {state['step']})", flush=True)
        return int(state["step"])

    def shards(self, step: int) -> list:
        """The step's questions over the workers; a GRPO group never straddles two."""
        return [s for s in np.array_split(np.asarray(self.order.step_indices(step)), len(self.workers)) if len(s)]

    def sync_if_stale(self, step: int, version: int):
        """Bring the workers to the learner's weights ``version`` if they are not; a worker whose actor or engine
        dies during it is replaced and every worker synced again. Returns the SyncStats, or None."""
        from rlt_ray.errors import RunStopped
        from rlt_ray.errors import WorkersLost

        if not self.sync.is_stale(version):
            return None
        for _ in range(2 * len(self.workers) + 1):
            try:
                return self.sync.sync(version)
            except WorkersLost as lost:
                for k in lost.indices:
                    self.sync.replace_worker(k, self.workers.replace(k))
                    self.replaced += 1
                    self.log.event(step, "rollout_worker_replaced", worker=k, generation=self.workers.generation[k],
                                   synced_to_version=version, error=str(lost), during="sync",
                                   node=node_ids(self.ray, [self.workers[k]])[0])
        raise RunStopped(f"the weight sync to version {version} kept losing rollout workers")

    def tails(self, step: int) -> list | None:
        """Start the teacher log-probs of the step's prompts' closing padding (the reference's explanation span
        starts with it; vLLM gives prompt log-probs only at temperature 1), with the weights the step's samples
        are drawn with: call before any learning call of the step."""
        from rlt_ray.config import temperatures

        if not prompt_tail_tokens(self.cfg) or self.cfg.reward.teacher_logprobs_from == "learner":
            return None
        return self.learners.call("prompt_tail_logprobs", [self.prompts[i] for i in self.order.step_indices(step)],
                                  prompt_tail_tokens(self.cfg), temperatures(self.cfg)["teacher"])

    def learn(self, step: int, version: int) -> tuple[list, list]:
        """Stages 2-5 of a step; returns (chunks, every rank's metrics). On-policy: generate, score and learn
        streamed. grpo.max_staleness=1: learn the samples drawn while the previous step learned (on the first step,
        and after a resume, draw them now), and meanwhile sample the next step's with these weights."""
        batch_size = self.cfg.run.questions_per_step * self.cfg.rollout.n
        last = step + 1 == self.cfg.run.steps
        if not self.cfg.grpo.max_staleness:
            step_tails = self.tails(step)
            feed = self.in_flight = BatchFeed(self.learners, self.cfg, batch_size)
            chunks = self.stream(step, version, step_tails, feed)
        else:
            step_tails = None if self.prefetched else self.tails(step)
            next_tails = None if last else self.tails(step + 1)
            chunks = self.prefetched or self.stream(step, version, step_tails)
            feed = self.in_flight = BatchFeed(self.learners, self.cfg, batch_size)
            for chunk in chunks:
                feed.add(chunk)
            feed.all_generated(sum(c["tokens"] for c in chunks))
        feed.finish()
        if self.cfg.grpo.max_staleness:
            self.prefetched = None if last else self.stream(step + 1, version, next_tails, learner_version=step + 1)
        learner_get(self.ray, feed.refs)
        trained = self.ray.get(feed.finish_refs)
        self.in_flight = None
        return chunks, trained

    def replace_lost_worker(self, step: int, k: int, exc: BaseException, sync_to: int) -> int:
        """After rollout worker k's error ``exc``: who died decides, not which error arrived first. A worker gone (its
        actor, its engine or its node) is replaced by a new one, brought to weights ``sync_to`` before it samples (a
        fresh engine holds the weights on disk); returns the version it holds. An error from a worker that answers
        is a bug or a bad input: it is raised, and the run stops."""
        from rlt_ray.infra.cluster import lost, worker_lost

        if not (worker_lost(exc) or lost(self.workers.who_is_alive([k], self.cfg.resources.liveness_timeout_s))):
            raise exc
        new = self.workers.replace(k)
        self.sync.replace_worker(k, new)
        stats = self.sync.sync(sync_to)
        self.replaced += 1
        self.log.event(step, "rollout_worker_replaced", worker=k, generation=self.workers.generation[k],
                       synced_to_version=stats.version, error=type(exc).__name__, node=node_ids(self.ray, [new])[0])
        return stats.version

    def replace_lost_scorer(self, step: int, slot: int, exc: BaseException, generation: int) -> None:
        """After an error ``exc`` scoring a chunk sent to scorer ``slot`` at ``generation``: a scorer that answers
        raised a bug or a bad input (or a learner's log-probs it was handed, when a learner died: classify_failure
        sees that), which is raised. A dead scorer held several chunks: it is replaced once (the first of its
        chunks to fail), and the caller scores each of them again on the new one."""
        from rlt_ray.infra.cluster import lost, worker_lost

        if self.scorers.generation[slot] != generation:  # replaced already, for another of its chunks
            return
        if not (worker_lost(exc) or lost(self.scorers.who_is_alive([slot], self.cfg.resources.liveness_timeout_s))):
            raise exc
        self.scorers.replace(slot)
        self.replaced += 1
        self.log.event(step, "scorer_replaced", scorer=slot, generation=self.scorers.generation[slot],
                       error=type(exc).__name__, node=node_ids(self.ray, [self.scorers[slot]])[0])

    def learner_teacher_logprobs(self, chunks: list[dict[str, Any]]) -> list:
        """3. with reward.teacher_logprobs_from=learner: the teacher's log-probs from a forward of the learners'
        policy on the complete batch (refs); each chunk's ``lp_offset`` says where its sequences start in them."""
        from rlt_ray.config import temperatures

        refs = self.learners.call("completion_logprobs", [c["ref"] for c in chunks], temperatures(self.cfg)["teacher"],
                                  prompt_tail_tokens(self.cfg))
        offset = 0
        for chunk in chunks:
            chunk["lp_offset"], offset = offset, offset + chunk["sequences"]
        return refs

    def stream(self, step: int, version: int, prompt_tails: list | None = None, feed: BatchFeed | None = None,
               learner_version: int | None = None) -> list[dict[str, Any]]:
        """Stages 2-4 (and, given a ``feed``, 5) of a step, streamed: each worker samples its groups in one engine
        batch and hands them over ``rollout.stream_groups`` at a time as they finish (0: all at once); each chunk is
        scored as soon as it arrives, and a scored chunk goes straight into ``feed``. Learner teacher log-probs need
        the whole batch, so then scoring starts once every sample is in.

        The workers sample with weights ``version``. A worker that dies is replaced, brought to the learner's weights
        BEFORE it samples (a fresh engine holds the weights on disk), and samples only the groups it had not handed
        over; ``learner_version`` is the version that sync delivers (off-policy prefetch: the one this step's learning,
        queued before the sync on the learners, ends at). A dead scorer's chunk is scored again. ``prompt_tails``: the
        learners' refs of the prompts' closing-padding log-probs (reward.explanation_span=with_prompt_pad with
        rollout log-probs). Returns the chunks:
        {"ref", "worker", "rows" (row indices), "sequences", "tokens", "scored"}."""
        from rlt_ray.data.rollout_batch import step_seeds

        pending: dict[Any, tuple] = {}
        chunks: list[dict[str, Any]] = []
        teacher_lp = None  # learner log-prob refs (reward.teacher_logprobs_from=learner), over `chunks` in order

        def generate(k, row_ids, weights_version=version):
            gen = self.workers[k].generate_stream.remote(
                [self.prompts[i] for i in row_ids], step_seeds(self.cfg.run.seed, step, row_ids), weights_version,
                self.cfg.rollout.stream_groups or len(row_ids))
            pending[gen] = ("generate", k, row_ids)

        def score(c):
            chunk, slot = chunks[c], c % len(self.scorers)
            chunk["scored"] = self.scorers[slot].score.remote(
                [self.rows[i] for i in chunk["rows"]], chunk["ref"], teacher_lp, chunk["lp_offset"], prompt_tails)
            pending[chunk["scored"]] = ("score", c, self.scorers.generation[slot])

        for k, shard in enumerate(self.shards(step)):
            generate(k, [int(i) for i in shard])
        left = {k: len(shard) for k, shard in enumerate(self.shards(step))}  # groups still to arrive, per worker
        while pending:
            (ready,), _ = self.ray.wait(list(pending), num_returns=1)
            stage, *what = pending.pop(ready)
            if stage == "generate":
                k, row_ids = what
                try:
                    ref = next(ready)
                    rollout = self.ray.get(ref)
                except StopIteration:
                    continue
                except Exception as exc:  # a lost worker is replaced; any other error stops the run
                    synced = self.replace_lost_worker(step, k, exc,
                                                      version if learner_version is None else learner_version)
                    handed_over = {r for chunk in chunks if chunk["worker"] == k for r in chunk["rows"]}
                    generate(k, [i for i in row_ids if i not in handed_over], synced)
                    continue
                pending[ready] = ("generate", k, row_ids)  # more chunks to come
                chunk_rows = [row_ids[i] for i in rollout["prompt_index"]]
                chunks.append({"ref": ref, "worker": k, "rows": chunk_rows, "lp_offset": 0, "scored": None,
                               "sequences": len(rollout["completion_ids"]), "tokens": rollout["tokens"]})
                left[k] -= len(chunk_rows)
                if self.cfg.reward.teacher_logprobs_from == "rollout":
                    score(len(chunks) - 1)
                if not any(left.values()):
                    if feed is not None:
                        feed.all_generated(sum(c["tokens"] for c in chunks))
                    if self.cfg.reward.teacher_logprobs_from == "learner":
                        # 3. teacher log-probs from a forward of the learner's policy, on the complete batch
                        teacher_lp = self.learner_teacher_logprobs(chunks)
                        for c in range(len(chunks)):
                            score(c)
            else:
                c, generation = what
                slot = c % len(self.scorers)
                try:
                    self.ray.get(ready)
                except Exception as exc:  # a lost scorer is replaced and the chunk scored again; else: stop
                    self.replace_lost_scorer(step, slot, exc, generation)
                    score(c)
                    continue
                if feed is not None:
                    feed.add(chunks[c])
        return chunks



    def validation_due(self, step: int) -> bool:
        """run.eval_every: at the first step, every N steps, and (``step`` = run.steps) after the last."""
        every = self.cfg.run.eval_every
        return bool(every and self.eval_rows and (step % every == 0 or step == self.cfg.run.steps))

    def validate(self, step: int, version: int) -> dict[str, float]:
        """The current policy (weights ``version``, which the workers must hold) answers the held-out rows greedily
        on the rollout workers, and the answers are scored as in training: the student scorers with the learners'
        teacher log-probs (the greedy samples carry none at the reward's temperature), or the verifier. Returns
        the val/* metrics, printed on one line; they go into the record of ``step``, whose samples ``version``
        draws."""
        from rlt_ray.config import temperatures

        t0 = time.perf_counter()
        shards = [[int(i) for i in s] for s in np.array_split(np.arange(len(self.eval_rows)), len(self.workers))
                  if len(s)]
        refs = [self.workers[k].generate.remote([self.eval_prompts[i] for i in shard], [0] * len(shard), version,
                                                1, 0.0) for k, shard in enumerate(shards)]
        teacher_lp = None
        if self.cfg.reward.kind == "rlt":
            teacher_lp = self.learners.call("completion_logprobs", refs, temperatures(self.cfg)["teacher"],
                                            prompt_tail_tokens(self.cfg))
        scored, offset = [], 0
        for j, (ref, shard) in enumerate(zip(refs, shards)):
            scored.append(self.scorers[j % len(self.scorers)].score.remote(
                [self.eval_rows[i] for i in shard], ref, teacher_lp, offset))
            offset += len(shard)
        rollouts, scored = self.ray.get(refs), self.ray.get(scored)
        metrics = {f"val/{k}": v for k, v in reward_part_metrics(rollouts, scored).items()}
        metrics["val/seconds"] = time.perf_counter() - t0
        self.validations.append({"step": step, **metrics})
        quality = (f"accuracy {metrics['val/accuracy']:.3f}  format {metrics['val/format_rate']:.2f}"
                   if "val/accuracy" in metrics else
                   f"r_SS {metrics['val/r_ss_mean']:+.3f}  closed {metrics['val/closed_tag_fraction']:.2f}")
        print(f"validation after {version} steps ({len(self.eval_rows)} held-out rows, greedy): reward "
              f"{metrics['val/reward_mean']:+.3f}  {quality}  {metrics['val/seconds']:.1f}s", flush=True)
        return metrics

    def log_step(self, step: int, version: int, chunks: list, trained: list, sync_stats: Any,
                 t_step: float, validation: dict | None = None) -> None:
        """6. Metrics, events and the console line of a finished step. A non-finite loss or gradient made
        DeepSpeed skip the optimizer step (the weights stay as they were); run.max_nonfinite_steps in a row stop
        the run."""
        from rlt_ray.data.rollout_batch import sample_staleness
        from rlt_ray.errors import RunStopped
        from rlt_ray.method.hack_watch import shared_explanation_fraction

        cfg, log = self.cfg, self.log
        rollouts = self.ray.get([c["ref"] for c in chunks])
        scored = self.ray.get([c["scored"] for c in chunks])
        # workers and the loop's order refuse this already; never log it
        staleness = sample_staleness([r["version"] for r in rollouts], version - 1, cfg.grpo.max_staleness)
        metrics = step_metrics(rollouts, scored, trained, sync_stats, t_step)
        metrics.update(validation or {})
        metrics["weights_version"] = float(version)
        metrics["staleness"] = float(staleness)
        metrics["chunks"] = float(len(chunks))  # hand-overs from the workers (rollout.stream_groups)
        metrics["unscorable_samples"] = float(sum(len(part["errors"]) for part in scored))
        for part in scored:  # samples that got the penalty reward, with the reason
            for e in part["errors"]:
                log.event(step, "sample_unscorable", row=e["row"], error=e["error"])
        records = sample_records(self.rows, chunks, scored)
        pairs = [(r["row"], r["explanation"]) for r in records]
        metrics["shared_explanation_fraction"] = shared_explanation_fraction(pairs)
        self.recent_explanations.append(pairs)
        if cfg.run.hack_window > 1 and len(self.recent_explanations) == cfg.run.hack_window:
            metrics["window_shared_fraction"] = shared_explanation_fraction(
                pair for step_pairs in self.recent_explanations for pair in step_pairs)
        metrics["actors_replaced"] = float(self.replaced)
        skipped = not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"]))
        quality = (f"accuracy {metrics['accuracy']:.2f}  format {metrics['format_rate']:.2f}" if "accuracy" in metrics
                   else f"closed {metrics['closed_tag_fraction']:.2f}")
        print(f"step {step + 1}/{cfg.run.steps}  reward {metrics['reward_mean']:+.3f}  "
              f"{quality}  loss {metrics['loss']:+.3e}  "
              f"sync {metrics['sync_seconds']:.2f}s  step {metrics['step_seconds']:.1f}s"
              + ("  SKIPPED (non-finite)" if skipped else ""), flush=True)
        stop = self.watch_for_hacks(step, metrics)  # the step is logged first, then stopped (run.stop_on_hack)
        metrics["hack_signs"] = float(len(self.hacks_seen - {"templated"}))
        log.log(step, metrics)
        log.samples(step, records)
        self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if skipped else 0
        if skipped:
            log.event(step, "step_skipped_nonfinite", loss=metrics["loss"], grad_norm=metrics["grad_norm"],
                      in_a_row=self.nonfinite_in_a_row)
        if stop is not None:
            raise stop
        if self.nonfinite_in_a_row >= cfg.run.max_nonfinite_steps:
            raise RunStopped(f"{self.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient "
                             f"(run.max_nonfinite_steps={cfg.run.max_nonfinite_steps}); steps "
                             f"{step + 2 - self.nonfinite_in_a_row}-{step + 1} were skipped")

    def watch_for_hacks(self, step: int, metrics: dict) -> Exception | None:
        """The reward-hacking watch (rlt_ray.method.hack_watch): an event and a console line the first time each sign shows;
        with run.stop_on_hack, returns the RunStopped that stops the run once the step is logged
        (stop_with_checkpoint then saves the completed steps)."""
        from rlt_ray.errors import RunStopped
        from rlt_ray.method.hack_watch import hack_sign

        run = self.cfg.run
        if self.cfg.reward.kind == "verifier":  # its signs are the RLT reward's (an explanation's tag, its length)
            return None
        self.history.append(metrics)
        reward = self.cfg.reward
        sign = hack_sign(self.history, run.min_closed_fraction, run.hack_patience, run.min_length_ratio,
                         reward.explanation_span, run.max_shared_fraction, kl_estimator=reward.kl_estimator,
                         kl_weight=float(reward.kl_penalty_coeff[0]), grpo_beta=float(self.cfg.grpo.beta),
                         validation=self.validations, step=step)
        if sign is None or sign.kind in self.hacks_seen:
            return None
        self.hacks_seen.add(sign.kind)
        if sign.kind == "templated":  # the student shares the template: reported, never stopped on
            self.log.event(step, "templated", echo=False, message=sign.message)
            print(f"warning: step {step + 1}: {sign.message}", flush=True)
            return None
        self.log.event(step, "reward_hack_suspected", echo=False, sign=sign.kind, message=sign.message)
        print(f"warning: step {step + 1}: {sign.message}", flush=True)
        if run.stop_on_hack:
            return RunStopped(f"stopped at step {step + 1} (run.stop_on_hack): {sign.message}")
        return None

    def stop_with_checkpoint(self, exc: BaseException, step: int, version: int, start: int,
                             checkpoints: Checkpoints) -> None:
        """Any failure (Ctrl-C, SIGTERM from `ray job stop`, an exception anywhere) while the learners live: let
        them finish the calls they have, checkpoint the completed steps, write an event, and raise: the
        interrupt as it is, a RunStopped naming the run.resume_from that continues."""
        from rlt_ray.infra.checkpoint import latest, read_state, step_dir
        from rlt_ray.errors import LearnerLost, RunStopped
        from rlt_ray.infra.cluster import collective_error

        exc = self.classify_failure(exc, step)
        interrupted, saved, out = isinstance(exc, KeyboardInterrupt), None, self.out
        if self.learners is not None and not isinstance(exc, LearnerLost):
            try:
                if self.in_flight is not None:  # the learners are mid-step: let them finish the calls they have
                    learner_get(self.ray, self.in_flight.refs)
                    if self.in_flight.finish_refs is not None:  # the whole batch was in: the step is complete
                        version = step + 1
                    # else a partial batch: its accumulated gradients are dropped, the weights are the last step's
                if version > start and (self.cfg.run.checkpoint_on_interrupt or not interrupted):
                    if latest(out) != step_dir(out, version):  # not already written at that step's end
                        checkpoints.save(version)
                    saved = step_dir(out, version)
            except Exception as save_exc:  # the learners' state is unknown: keep the last good checkpoint
                self.log.event(version, "checkpoint_failed", error=f"{type(save_exc).__name__}: {save_exc}")
        if interrupted:
            self.log.event(version, "interrupted", completed_steps=version)
            raise exc
        last, error = saved or latest(out), describe_error(exc)
        self.log.event(version, "error", completed_steps=version, error=error, checkpoint=str(last) if last else None)
        if isinstance(exc, RunStopped):  # its message says why; say where the completed steps are
            if last is not None and str(last) in str(exc):
                raise exc
            where = (f"the completed steps are in {last}: run.resume_from={last} (or run.resume_from=latest) "
                     f"continues from there" if last
                     else "no checkpoint was written yet: start again")
            raise type(exc)(f"{exc}; {where}") from exc
        where = (f"run.resume_from={last} (or run.resume_from=latest) continues from step {read_state(last)['step']}"
                 if last else "no checkpoint was written yet: start again")
        if collective_error(exc):  # classify_failure found every learner rank alive
            error += ("; every learner rank answered, so this collective error is not a lost node (a mismatch of "
                      "the ranks' calls or shapes, a rank too slow for the collective's timeout, or a network "
                      "fault) and the run is not restarted")
        raise RunStopped(f"step {step + 1} failed with {error}; {where}") from exc

    def classify_failure(self, exc: BaseException, step: int) -> BaseException:
        """Who died decides what a failure is, not which error reached the driver first: when a node crashes, the
        ranks on the other nodes see gloo's or NCCL's error seconds before Ray declares the node dead. So every
        learner rank is asked (LearnerGroup.who_is_alive, at most resources.liveness_timeout_s): if one is gone,
        the failure is LearnerLost, which run.max_restarts restarts; if all answer, it stays what it was."""
        from rlt_ray.errors import LearnerLost
        from rlt_ray.infra.cluster import describe_lost, lost

        if self.learners is None or isinstance(exc, (KeyboardInterrupt, LearnerLost)):
            return exc
        status = self.learners.who_is_alive(self.cfg.resources.liveness_timeout_s)
        if not lost(status):
            return exc
        self.log.event(step, "learner_lost", echo=False, ranks=status, first_error=describe_error(exc))
        classified = LearnerLost(f"a learner rank died: {describe_lost(status, 'learner rank')} during step "
                                 f"{step + 1} (the driver first saw {describe_error(exc)}); the run stops because "
                                 f"DeepSpeed ranks cannot be replaced one by one (run.max_restarts starts it again)")
        classified.__cause__ = exc
        return classified

    def shutdown(self) -> None:
        if self.sync is not None:
            self.sync.shutdown()
        for slots in (self.workers, self.scorers):
            if slots is not None:
                slots.kill_all()
        if self.learners is not None:
            self.learners.shutdown()


def describe_error(exc: BaseException) -> str:
    """One line: the exception (the original one, for an error raised inside an actor) and its message."""
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError: the actor's own exception
    where = f" in {exc.function_name}" if cause is not None and getattr(exc, "function_name", None) else ""
    err = cause if cause is not None else exc
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}{where}: {text[-1][:300] if text else ''}"


def inject_fault(cfg, kind: str, step: int) -> None:
    """Tests only (run.fault_injection, refused unless RLT_ALLOW_FAULT_INJECTION=1): fail here at this step."""
    if cfg.run.fault_injection == f"{kind}@{step}":
        raise RuntimeError(f"injected fault {kind} at step {step} (run.fault_injection)")


