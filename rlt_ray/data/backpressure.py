"""One rule added to Ray Data's backpressure for the distill and evaluate pipelines: a stage starts no task while
blocks it made wait to be taken.

Ray Data's own policies bound the bytes a stage may keep in the object store, and these pipelines' batches are a
few KB, so a fast stage starts batch after batch while its outputs wait for a busy next stage. A stop (`ray job
stop`, a crash) then loses the batches in flight and every batch waiting. With this rule each replica holds at
most one unwritten batch: a finished batch joins the queue only in place of the task that made it, and no task
starts while the queue holds one. The driver takes a batch only when it is ready to write it
(``iter_batches(prefetch_batches=0)``): a prefetched batch is one more a stop loses. So a re-run redoes at most
one batch per replica (issue 31). Throughput: the
slower stage sets the pace either way; the faster one waits instead of queueing.

Ray Data takes extra policies through its documented config key ``backpressure_policies.enabled``; the policy
interface is Ray Data's internal ``BackpressurePolicy`` (Ray 2.60), since no public hook bounds a stage by count.
"""

from __future__ import annotations

from ray.data._internal.execution.backpressure_policy import (
    ENABLED_BACKPRESSURE_POLICIES,
    ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    BackpressurePolicy,
)
from ray.data._internal.execution.operators.base_physical_operator import InternalQueueOperatorMixin
from ray.data._internal.execution.operators.map_operator import MapOperator


class OneBatchBetweenStages(BackpressurePolicy):
    """A map stage may start a task only when no block it made waits: in its own output queue, or in the next
    stage's input queues (the last stage's next is the driver's iterator)."""

    def can_add_input(self, op) -> bool:
        if not isinstance(op, MapOperator):
            return True
        return waiting_blocks(self._topology, op) == 0


def waiting_blocks(topology, op) -> int:
    waiting = topology[op].output_queue.num_blocks
    if isinstance(op, InternalQueueOperatorMixin):
        waiting += op.internal_output_queue_num_blocks()
    for down in op.output_dependencies:
        if isinstance(down, InternalQueueOperatorMixin):
            waiting += down.internal_input_queue_num_blocks()
    return waiting


def hold_one_batch_between_stages(context=None) -> None:
    """Adds the rule to ``context`` (default: the driver's current DataContext), before the dataset is built."""
    import ray.data

    context = context or ray.data.DataContext.get_current()
    policies = list(context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES))
    if OneBatchBetweenStages not in policies:
        context.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, policies + [OneBatchBetweenStages])
