"""P3: weight-sync time ÷ a plain memcpy of the same bytes, and RPC calls per sync, for both transports (object
store, collective broadcast), in one run on real actors (learner group + rollout workers).

    python bench/weight_sync_vs_memcpy.py [--model smollm2-135m-instruct] [--workers 1] [--rounds 5]
                                   [--config configs/tiny_cpu.yaml] [--across-nodes] [key=value ...]

--across-nodes: on a two-node Ray cluster started here (ray.cluster_utils.Cluster, one raylet and object store per
node, 127.0.0.1), the learners and one set of workers on one node, another set on the other: the object-store sync
in-node and across nodes, and the collective sync over a group that spans the nodes, side by side.

The three sides (memcpy, object-store sync, collective sync) run in interleaved rounds (bench/common.py); the
baseline is ``Tensor.copy_`` of every bucket's bytes into a preallocated buffer. Prints min and median of each
side, the ratios of the minima and of the medians, and a last JSON line with the machine.
Target (issue 7): sync <= 2x the copy, with one call per worker per sync.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from common import emit, interleaved, ratios


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    p.add_argument("--across-nodes", action="store_true")
    a, overrides = p.parse_known_args(argv)

    import ray
    import torch

    from actors.learner import LearnerGroup
    from actors.rollout import RolloutWorker, worker_options
    from rlt_ray.infra.cluster import connect_ray
    from rlt_ray.config import load_config
    from rlt_ray.models.registry import load_causal_lm
    from rlt_ray.infra.weight_sync import CollectiveSync, ObjectStoreSync, layout_for, pack_bucket, spec_of

    cfg = load_config(a.config, [f"model.teacher={a.model}", f"model.student={a.model}",
                                 f"rollout.num_workers={a.workers}", "run.questions_per_step=2"] + overrides)
    cluster = None
    if a.across_nodes:  # learners + in-node workers on node "a", the other workers on node "b"
        import os

        from ray.cluster_utils import Cluster

        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        cluster.add_node(num_cpus=2, labels={"p3": "a"})
        cluster.add_node(num_cpus=1, labels={"p3": "b"})
        ray.init(address=cluster.address, log_to_driver=False)
        cfg = load_config(a.config, [f"model.teacher={a.model}", f"model.student={a.model}",
                                     f"rollout.num_workers={a.workers}", "run.questions_per_step=2",
                                     "resources.learner_placement.labels={p3: a}"] + overrides)
    else:
        connect_ray()
    learners = LearnerGroup(cfg)

    def start_workers(node: str | None) -> list:
        where = {"label_selector": {"p3": node}} if node else {}
        started = [RolloutWorker.options(**worker_options(cfg), **where).remote(cfg, i) for i in range(a.workers)]
        ray.get([w.ready.remote() for w in started])
        return started

    workers = start_workers("a" if a.across_nodes else None)
    remote_workers = start_workers("b") if a.across_nodes else []

    # the baseline: a memcpy of the same bytes, bucket by bucket, into buffers allocated once
    model = load_causal_lm(a.model, cfg.model.dtype)
    named = dict(model.named_parameters())
    layout = layout_for(spec_of(named.items(), cfg.model.dtype), cfg.resources.sync_bucket_mb << 20)
    nbytes = sum(t.numel() * t.element_size() for t in named.values())
    sources = [pack_bucket(named, metas) for metas in layout]
    targets = [torch.empty_like(src) for src in sources]

    def memcpy() -> None:
        for src, dst in zip(sources, targets):
            dst.copy_(src)

    bucket = cfg.resources.sync_bucket_mb << 20
    if a.across_nodes:  # one collective group per learner group: the one that spans the nodes
        syncs = {"object_store": ObjectStoreSync(learners, workers, bucket),
                 "object_store_across_nodes": ObjectStoreSync(learners, remote_workers, bucket),
                 "collective_across_nodes": CollectiveSync(learners, remote_workers, bucket, cfg.resources.backend)}
    else:
        syncs = {"object_store": ObjectStoreSync(learners, workers, bucket),
                 "collective": CollectiveSync(learners, workers, bucket, cfg.resources.backend)}
    for sync in syncs.values():
        sync.init()
    version, calls = [0], {name: [] for name in syncs}

    def run_sync(name: str):
        def run() -> None:
            version[0] += 1
            calls[name].append(syncs[name].sync(version[0]).calls_per_worker)
        return run

    # the object-store sync in its two halves, to say what bounds it: the learner's export (ZeRO gather, pack
    # into buckets, put in the object store) and the engine's load (fetch, unpack, vLLM's reload_weights)
    # and the engine's load in its own two parts: getting the buckets to vLLM's loader (object-store gets,
    # unpacking: ours) and vLLM's own reload (its copies into the parameters, then its post-load processing,
    # engine_post_s: a part of engine_reload_s)
    parts: dict[str, list[float]] = {"export_s": [], "engine_load_s": [], "engine_fetch_s": [],
                                     "engine_reload_s": [], "engine_post_s": []}

    def object_store_by_parts() -> None:
        version[0] += 1
        t0 = time.perf_counter()
        refs, _ = ray.get(learners.call("export_weights", syncs["object_store"].layout))[0]
        t1 = time.perf_counter()
        loaded = ray.get([w.load_weights.remote(version[0], syncs["object_store"].layout, refs) for w in workers])
        parts["export_s"].append(t1 - t0)
        parts["engine_load_s"].append(time.perf_counter() - t1)
        parts["engine_fetch_s"].append(max(d["fetch_s"] for d in loaded))
        parts["engine_reload_s"].append(max(d["reload_s"] for d in loaded))
        parts["engine_post_s"].append(max(d["post_s"] for d in loaded))

    times = interleaved({"memcpy": memcpy, **{name: run_sync(name) for name in syncs},
                         "object_store_by_parts": object_store_by_parts}, a.rounds)
    times.pop("object_store_by_parts")
    parts_summary = {k: {"min_s": min(v), "median_s": statistics.median(v)} for k, v in parts.items()}
    copy_min = times["memcpy"]["min_s"]
    print("P3 object_store by parts (min, and x memcpy's min): " + ", ".join(
        f"{k[:-2]} {v['min_s']:.3f} s ({v['min_s'] / copy_min:.1f}x)" for k, v in parts_summary.items()))
    results = {"bench": "P3", "across_nodes": a.across_nodes, "model": a.model, "bytes": nbytes,
               "workers": a.workers, "rounds": a.rounds,
               "buckets": len(layout), "memcpy": times["memcpy"], "object_store_parts": parts_summary}
    for name, sync in syncs.items():
        r = ratios(times, name, "memcpy")
        results[name] = {**times[name], **r, "calls_per_worker": max(calls[name]), "met": r["ratio_of_min"] <= 2.0}
        print(f"P3 {name}: {nbytes / 2**20:.0f} MiB to {a.workers} worker(s): min {times[name]['min_s']:.3f} s, "
              f"median {times[name]['median_s']:.3f} s; memcpy min {times['memcpy']['min_s']:.3f} s, median "
              f"{times['memcpy']['median_s']:.3f} s -> {r['ratio_of_min']:.1f}x (min) / {r['ratio_of_median']:.1f}x "
              f"(median) / {r['median_of_round_ratios']:.1f}x (rounds); {len(layout)} buckets, "
              f"{max(calls[name])} call(s) per worker")
        sync.shutdown()
    learners.shutdown()
    for w in workers + remote_workers:
        ray.kill(w)
    emit(results)
    if cluster is not None:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
