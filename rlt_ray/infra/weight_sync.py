"""Weight sync, learner → rollout engines: one call per worker per sync, tensors packed into a few flat buckets.

The reference pushes one parameter per HTTP call; anchors report per-parameter RPCs, not bytes, dominating sync
time at scale. Here a sync is:

- ``pack_bucket``: the learner's HF-named tensors → flat uint8 buckets (any dtype, bf16 included) + a layout,
  ONE BUCKET AT A TIME: the learner gathers (ZeRO-3), packs and sends a bucket, then the next;
- transport: ``ObjectStoreSync`` (one ``ray.put`` per bucket, one ``load_weights`` call per worker) or
  ``CollectiveSync`` (a process group of learner rank 0 + every engine worker, gloo on CPU / nccl on GPU, one
  broadcast per bucket);
- ``check_layout`` against the engine's expected names, shapes and dtypes BEFORE any reload (a failed reload
  leaves a vLLM engine dead), then the engine's weight loading reads a generator that receives (or fetches) a
  bucket only when it needs the next tensor, so neither side ever holds more than about one bucket
  (``BufferMeter`` measures it; ``SyncStats.peak_buffer_bytes``). Exception: an object-store sync into a
  multi-process engine sends every bucket's bytes in its one RPC (the engine process cannot read the object
  store); use the collective sync there (the GPU presets do).

The interface is NeMo-RL's weight synchroniser: init / sync / is_stale / shutdown. Transports call the actors by
method name (``export_weights``, ``broadcast_weights``, ``load_weights``, ...), so this module never imports them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Sequence

import torch
from rlt_ray.errors import WeightSyncError, WorkersLost

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


# One tensor inside a bucket: (name, dtype name, shape, byte offset, byte count). Plain tuples, so the layout
# crosses vLLM's msgpack RPC and Ray unchanged.
TensorMeta = tuple[str, str, tuple[int, ...], int, int]
Spec = dict[str, tuple[tuple[int, ...], str]]  # name → (shape, dtype name)


def spec_of(named: Iterable[tuple[str, torch.Tensor]], dtype: str | None = None) -> Spec:
    return {n: (tuple(t.shape), dtype or DTYPE_NAMES[t.dtype]) for n, t in named}


def layout_for(spec: Spec, bucket_bytes: int) -> list[list[TensorMeta]]:
    """Deterministic bucket layout for a spec (the order of the spec); a tensor larger than a bucket gets one
    of its own. Offsets are 8-byte aligned."""
    buckets: list[list[TensorMeta]] = [[]]
    used = 0
    for name, (shape, dtype) in spec.items():
        nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=DTYPES[dtype]).element_size()
        if buckets[-1] and used + nbytes > bucket_bytes:
            buckets.append([])
            used = 0
        buckets[-1].append((name, dtype, tuple(shape), used, nbytes))
        used += (nbytes + 7) // 8 * 8
    return [b for b in buckets if b]


def bucket_nbytes(metas: Sequence[TensorMeta]) -> int:
    return max(off + n for _, _, _, off, n in metas) if metas else 0


def pack_bucket(named: dict[str, torch.Tensor], metas: Sequence[TensorMeta],
                device: str | torch.device = "cpu", out: torch.Tensor | None = None) -> torch.Tensor:
    """Copy one bucket's tensors into a flat uint8 tensor (one copy per tensor, cast to the layout dtype). With
    ``out`` (a uint8 buffer of at least the bucket's bytes, on ``device``): into its first bytes, returned as a
    view. A buffer reused from sync to sync costs no allocation: on CPU a fresh buffer is paid in page faults,
    which made packing 5x slower than the copy itself (bench/weight_sync_vs_memcpy.py)."""
    nbytes = bucket_nbytes(metas)
    flat = torch.empty(nbytes, dtype=torch.uint8, device=device) if out is None else out[:nbytes]
    for name, dtype, shape, off, nbytes in metas:
        t = named[name].detach().to(device=device, dtype=DTYPES[dtype]).contiguous().reshape(-1)
        flat[off:off + nbytes].copy_(t.view(torch.uint8))
    return flat


def pack_to_host(named: dict[str, torch.Tensor], metas: Sequence[TensorMeta], buffer: torch.Tensor,
                 host: torch.Tensor | None = None) -> torch.Tensor:
    """One bucket for the object store: packed into ``buffer`` on the weights' device (one device-side copy per
    tensor), then, when that is a GPU, copied to ``host`` (pinned) in ONE transfer. Packing a GPU model straight
    into host memory moves each tensor across PCIe on its own through a pageable staging copy: 1.4 GB/s against
    52 GB/s this way for a 7B model on an H200 (scripts/gpu_check.py, docs/lab-notes/benchmarks-record.md)."""
    flat = pack_bucket(named, metas, buffer.device, out=buffer)
    if host is None:
        return flat
    out = host[:flat.numel()]
    out.copy_(flat)
    return out


class BufferMeter:
    """The bytes of sync buffers alive at once, and their peak. A buffer counts from ``track`` until it and every
    view handed out of it (``views``) are garbage (weakref finalisers), so whatever still holds a piece of it
    (vLLM's loader buffering a layer, say) keeps it counted."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def track(self, buffer: torch.Tensor, views: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        import weakref

        nbytes = buffer.numel() * buffer.element_size()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        holders = [buffer, *views]
        left = [len(holders)]

        def release() -> None:
            left[0] -= 1
            if left[0] == 0:
                self.live -= nbytes

        for h in holders:
            weakref.finalize(h, release)
        return buffer


def unpack(metas: Sequence[TensorMeta], flat: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Views into a flat uint8 bucket (no copy)."""
    out = []
    for name, dtype, shape, off, nbytes in metas:
        out.append((name, flat[off:off + nbytes].view(DTYPES[dtype]).view(shape)))
    return out


def check_layout(expected: Spec, layout: Sequence[Sequence[TensorMeta]]) -> None:
    """Refuse an update whose names, shapes or dtypes differ from the engine's model (all problems listed)."""
    got = {name: (tuple(shape), dtype) for metas in layout for name, dtype, shape, _, _ in metas}
    problems = []
    missing = sorted(set(expected) - set(got))
    unknown = sorted(set(got) - set(expected))
    if missing:
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unknown:
        problems.append(f"unknown {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    for name in sorted(set(got) & set(expected)):
        (es, ed), (gs, gd) = expected[name], got[name]
        if tuple(es) != gs or ed != gd:
            problems.append(f"{name}: expected {tuple(es)} {ed}, got {gs} {gd}")
    if problems:
        raise WeightSyncError("weight update does not match the rollout model: " + "; ".join(problems[:8]))


def open_group(backend: str, host: str, port: int, rank: int, world: int, timeout_s: float = 600.0):
    """A process group of its own (not torch's default group, which DeepSpeed and vLLM already use)."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world, rank == 0, timeout=timeout)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, timeout)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world)
    raise ValueError(f"unknown collective backend {backend!r}")


def close_group(group, backend: str) -> None:
    """Leave a sync group for good. An NCCL communicator is aborted, not just dropped: a communicator whose peer
    died can hang in its destructor, or keep a broadcast blocked, and then the group formed for the replacement
    worker waits behind it. A gloo group (CPU) needs nothing: its sockets close with the object. Never raises."""
    if group is None or backend != "nccl":
        return
    abort = getattr(group, "abort", None) or getattr(group, "shutdown", None)  # torch < 2.3 had only shutdown
    try:
        if abort is not None:
            abort()
    except Exception:  # already torn down: nothing left to release
        pass


def broadcast(group, tensor: torch.Tensor, root: int = 0) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = root
    opts.rootTensor = 0
    group.broadcast([tensor], opts).wait()


@dataclass
class SyncStats:
    version: int
    seconds: float
    bytes: int
    buckets: int
    calls_per_worker: int  # remote calls made to each worker for this sync (the most any worker got)
    peak_buffer_bytes: int = 0  # the most sync-buffer bytes alive at once on any side (BufferMeter)
    engine_fetch_s: float = 0.0  # the slowest engine's time getting the buckets to its loader
    engine_reload_s: float = 0.0  # the slowest engine's time in vLLM's own reload (copies, post-load processing)
    engine_post_s: float = 0.0  # of which the slowest engine's time in vLLM's post-load processing alone


class WeightSync:
    """init() once; sync(version) whenever is_stale(learner version); shutdown() at the end."""

    def __init__(self, learners: Any, workers: Sequence[Any], bucket_bytes: int, liveness_timeout_s: float = 60.0):
        self.learners = learners  # actors.learner.LearnerGroup: .call(method, ...) → refs of every rank
        self.workers = list(workers)
        self.liveness_timeout_s = liveness_timeout_s  # resources.liveness_timeout_s: see _gather_workers
        self.bucket_bytes = int(bucket_bytes)
        self.version = 0
        self.layout: list[list[TensorMeta]] = []
        self.calls: dict[int, int] = {}  # worker index → calls in the current sync

    def _call(self, k: int, method: str, *args: Any) -> Any:
        """A remote call to worker k, counted (SyncStats.calls_per_worker comes from these counts)."""
        self.calls[k] = self.calls.get(k, 0) + 1
        return getattr(self.workers[k], method).remote(*args)

    def init(self) -> None:
        import ray

        learner_spec = ray.get(self.learners.rank0.weight_spec.remote())
        self.layout = layout_for(learner_spec, self.bucket_bytes)
        for worker_spec in ray.get([w.weight_spec.remote() for w in self.workers]):
            check_layout(worker_spec, self.layout)  # fail at start, not at the first sync

    def replace_worker(self, index: int, worker: Any) -> None:
        """A replaced (fresh) engine holds the weights on disk: check it, and mark every worker stale so the
        next sync brings all of them, the new one included, to the learner's version."""
        import ray

        check_layout(ray.get(worker.weight_spec.remote()), self.layout)
        self.workers[index] = worker
        self.version = -1

    def is_stale(self, learner_version: int) -> bool:
        """True when the workers hold another version than the learner's."""
        return learner_version != self.version

    def _gather_workers(self, refs: list) -> list:
        """Each worker's result; workers whose actor or engine died are reported together (WorkersLost). Who died
        decides, not the error: a worker whose call failed and that does not answer a ping (its node crashed, and
        the error came from the broken transfer first) is lost too; one that answers raised a real error."""
        import ray

        from rlt_ray.infra.cluster import ALIVE, ping, who_is_alive, worker_lost

        done, lost, errors = [], [], []
        for k, ref in enumerate(refs):
            try:
                done.append(ray.get(ref))
            except Exception as exc:
                if not worker_lost(exc) and who_is_alive(
                        ray, [ping(self.workers[k])], None, self.liveness_timeout_s) == [ALIVE]:
                    raise
                lost.append(k)
                errors.append(type(getattr(exc, "cause", None) or exc).__name__)
        if lost:
            self.version = -1  # the lost workers hold no known version: the next sync reloads every worker
            self.calls = {}
            raise WorkersLost(lost, errors)
        return done

    def sync(self, version: int) -> SyncStats:
        raise NotImplementedError

    def shutdown(self) -> None:
        pass

    def _stats(self, version: int, t0: float, learner_peak: int, loaded: Sequence[dict]) -> SyncStats:
        """``loaded``: each worker's answer (actors.rollout: peak_buffer_bytes, fetch_s, reload_s, post_s)."""
        self.version = version
        calls, self.calls = self.calls, {}
        return SyncStats(version, time.perf_counter() - t0, sum(bucket_nbytes(m) for m in self.layout),
                         len(self.layout), max(calls.values(), default=0),
                         int(max([learner_peak] + [d["peak_buffer_bytes"] for d in loaded])),
                         max((d["fetch_s"] for d in loaded), default=0.0),
                         max((d["reload_s"] for d in loaded), default=0.0),
                         max((d["post_s"] for d in loaded), default=0.0))


class ObjectStoreSync(WeightSync):
    """Learner rank 0 puts each bucket in the object store once; each worker gets one call with all the refs."""

    def sync(self, version: int) -> SyncStats:
        import ray

        t0 = time.perf_counter()
        # Every rank joins (ZeRO-3 gathers per bucket); rank 0 returns the bucket refs and its peak.
        refs, learner_peak = ray.get(self.learners.call("export_weights", self.layout))[0]
        calls = [self._call(k, "load_weights", version, self.layout, refs) for k in range(len(self.workers))]
        done = self._gather_workers(calls)
        return self._stats(version, t0, learner_peak, done)


class CollectiveSync(WeightSync):
    """Learner rank 0 broadcasts each bucket to every engine worker in a group of their own (gloo/nccl)."""

    def __init__(self, learners: Any, workers: Sequence[Any], bucket_bytes: int, backend: str,
                 ranks_per_worker: int = 1, timeout_s: float = 600.0, liveness_timeout_s: float = 60.0):
        super().__init__(learners, workers, bucket_bytes, liveness_timeout_s)
        self.backend, self.ranks_per_worker, self.timeout_s = backend, ranks_per_worker, timeout_s

    def init(self) -> None:
        super().init()
        self._join()

    def replace_worker(self, index: int, worker: Any) -> None:
        super().replace_worker(index, worker)
        self.shutdown()  # the old group had the dead worker in it: form a new one
        self._join()

    def _join(self) -> None:
        import ray

        host, port = ray.get(self.learners.rank0.free_address.remote())
        world = 1 + self.ranks_per_worker * len(self.workers)
        joins = [self.learners.rank0.join_sync_group.remote(self.backend, host, port, 0, world, self.timeout_s)]
        joins += [w.join_sync_group.remote(self.backend, host, port, 1 + i * self.ranks_per_worker, world,
                                           self.timeout_s) for i, w in enumerate(self.workers)]
        ray.get(joins)

    def sync(self, version: int) -> SyncStats:
        import ray

        t0 = time.perf_counter()
        sends = self.learners.call("broadcast_weights", self.layout)
        receives = [self._call(k, "receive_weights", version, self.layout) for k in range(len(self.workers))]
        # the workers first: a worker's lost node breaks the broadcast, and the learner's gloo/NCCL error must not
        # hide the lost worker (WorkersLost replaces it and forms a new group)
        loaded = self._gather_workers(receives)
        return self._stats(version, t0, ray.get(sends)[0], loaded)

    def shutdown(self) -> None:
        import ray

        try:
            ray.get([self.learners.rank0.leave_sync_group.remote()] +
                    [w.leave_sync_group.remote() for w in self.workers], timeout=30)
        except Exception:  # shutting down: a dead actor has left already
            pass


def make_weight_sync(kind: str, learners: Any, workers: Sequence[Any], bucket_bytes: int, backend: str,
                     ranks_per_worker: int = 1, liveness_timeout_s: float = 60.0) -> WeightSync:
    if kind == "object_store":
        return ObjectStoreSync(learners, workers, bucket_bytes, liveness_timeout_s)
    if kind == "collective":
        return CollectiveSync(learners, workers, bucket_bytes, backend, ranks_per_worker,
                              liveness_timeout_s=liveness_timeout_s)
    raise ValueError(f"unknown weight sync {kind!r}")
