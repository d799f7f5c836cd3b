"""P3: weight-sync time ÷ a plain in-memory copy of the same bytes, and RPC calls per sync, for both
transports (object store, collective broadcast), in one run on real actors (learner group + rollout workers).

    python bench/p3_weight_sync.py [--model smollm2-135m-instruct] [--workers 1] [--repeats 3]
                                   [--config configs/tiny_cpu.yaml] [key=value ...]

Target (issue 7): sync <= 2x the copy, with one call per worker per sync.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    a, overrides = p.parse_known_args(argv)

    import ray
    from actors.learner import LearnerGroup
    from actors.rollout import RolloutWorker, worker_options
    from rlt_ray.cluster import connect_ray
    from rlt_ray.config import load_config
    from rlt_ray.models import load_causal_lm
    from rlt_ray.weight_sync import CollectiveSync, ObjectStoreSync, layout_for, pack_bucket, spec_of

    cfg = load_config(a.config, [f"model.teacher={a.model}", f"model.student={a.model}",
                                 f"rollout.num_workers={a.workers}", "run.questions_per_step=2"] + overrides)
    connect_ray()
    learners = LearnerGroup(cfg)
    workers = [RolloutWorker.options(**worker_options(cfg)).remote(cfg, i) for i in range(a.workers)]
    ray.get([w.ready.remote() for w in workers])

    # the baseline: one plain copy of the same bytes, in one process (packing the HF parameters into buckets)
    model = load_causal_lm(a.model, cfg.model.dtype)
    named = dict(model.named_parameters())
    layout = layout_for(spec_of(named.items(), cfg.model.dtype), cfg.resources.sync_bucket_mb << 20)
    nbytes = sum(t.numel() * t.element_size() for t in named.values())
    copies = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for metas in layout:
            pack_bucket(named, metas)
        copies.append(time.perf_counter() - t0)
    copy_s = statistics.median(copies)

    results = {"bench": "P3", "model": a.model, "bytes": nbytes, "workers": a.workers, "copy_s": copy_s}
    version = 0
    for name, sync in (("object_store", ObjectStoreSync(learners, workers, cfg.resources.sync_bucket_mb << 20)),
                       ("collective", CollectiveSync(learners, workers, cfg.resources.sync_bucket_mb << 20,
                                                     cfg.resources.backend))):
        sync.init()
        times, calls = [], []
        for _ in range(a.repeats):
            version += 1
            stats = sync.sync(version)
            times.append(stats.seconds)
            calls.append(stats.calls_per_worker)
        sync.shutdown()
        s = statistics.median(times)
        results[name] = {"sync_s": s, "ratio_to_copy": s / copy_s, "calls_per_worker": max(calls),
                         "buckets": len(sync.layout), "met": s / copy_s <= 2.0}
        print(f"P3 {name}: {nbytes / 2**20:.0f} MiB to {a.workers} worker(s) in {s:.3f}s = "
              f"{s / copy_s:.1f}x a plain copy ({copy_s:.3f}s); {len(sync.layout)} buckets, "
              f"{max(calls)} call(s) per worker")
    learners.shutdown()
    for w in workers:
        ray.kill(w)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
