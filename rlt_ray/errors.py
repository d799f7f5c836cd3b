"""The exception types a job can stop with, in one module below every other: each names the problem (the config
key, the row, the model, the layout) so that a job's command line prints one clear line, no traceback
(rlt_ray.infra.cluster.run_cli)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config: the message names the key."""


class DataError(ValueError):
    """A data source or row that cannot be read: the message names the file, the column or the row."""


class FormatError(ValueError):
    """Text that does not follow the configured tag format (format.*): the message names the tag."""


class AlignmentError(RuntimeError):
    """A span of text that no run of tokens covers exactly (tokenizer offsets): that sample is penalised, not
    the run."""


class BudgetError(ValueError):
    """A row longer than the token budget: it would have to be cut, and rows are never cut."""


class ModelNotFoundError(RuntimeError):
    """A model name that is neither a folder, nor built-in, nor obtainable from the hub here."""


class MemoryPlanError(ValueError):
    """A layout that does not fit: the message holds the arithmetic and the keys to change."""


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, or does not match the run resuming from it."""


class WeightSyncError(RuntimeError):
    """Names, shapes or dtypes of an update do not match the engine's model; nothing was loaded."""


class WorkersLost(RuntimeError):
    """A sync found workers whose actor or vLLM engine died (rlt_ray.infra.cluster.worker_lost): replace them
    (replace_worker) and sync again. The others were loaded."""

    def __init__(self, indices: list[int], errors: list[str]):
        super().__init__(f"rollout workers {indices} died during the weight sync: {errors}")
        self.indices = indices


class RunStopped(RuntimeError):
    """The run cannot go on; the message says what to do next (which checkpoint resumes it)."""


class LearnerLost(RunStopped):
    """A learner rank died: its state is gone, so the last checkpoint is where the run resumes."""


# what a job's command line reports as one line and exit code 2 (rlt_ray.infra.cluster.run_cli): the user's to fix
USER_ERRORS = (ConfigError, CheckpointError, DataError, FormatError, ModelNotFoundError, WeightSyncError,
               MemoryPlanError, RunStopped)
