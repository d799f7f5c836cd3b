"""P7: served tokens/s ÷ the engine's offline tokens/s, same model, prompts, concurrency and length.

    python bench/serve_vs_offline.py [--model tiny-teacher] [--requests 256] [--concurrency 32] [--max-tokens 32]
                               [--rounds 3] [--sides offline,vllm_server,serve_completions,serve_explain]
                               [--env NAME=VALUE ...] [--serve-set KEY=VALUE ...]

Sides, each started once and then measured in --rounds rounds of --requests requests (min and median of the
round's tokens/s, best and median); half of the served requests are streamed:
  offline             vllm.LLM.generate of all prompts, max_num_seqs = concurrency (the ceiling)
  vllm_server         vLLM's own OpenAI server (python -m vllm.entrypoints.openai.api_server), /v1/completions
  serve_completions   our Serve app's /v1/completions (proxy -> ingress -> LLMServer; proxy -> TeacherReplica with
                      --serve-set serve.engine_in_ingress=true)
  serve_explain       our Serve app's /v1/explain without a student (ingress builds the prompt, calls the teacher)
  serve_explain_reward  /v1/explain with serve.student: every explanation scored by the ScorerDeployment deployment
The prompts are the teacher prompts /v1/explain builds for bench/serve_load.py's questions, sent as token ids to
the completions routes; every request generates exactly --max-tokens tokens (min_tokens / ignore_eos) except on
/v1/explain, whose tokens are counted as they come. Goal (issue 16): serve_completions / offline >= 0.5.
Each served side also reports the CPU milliseconds per request of every process kind (proxy, ingress, LLMServer,
engine core, ...): on 2 cores every one of them takes its CPU from the engine. The last stdout line is JSON
with every side, the ratios, the CPU split and the machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402  (routes vLLM's logs to stderr)
from serve_load import QUESTIONS, run_load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float, headers: dict | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if requests.get(url, headers=headers, timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def summary(per_round: list[float]) -> dict:
    return {"best_tokens_per_s": max(per_round), "median_tokens_per_s": statistics.median(per_round),
            "all_tokens_per_s": per_round}


def offline(a, cfg, prompts) -> list[float]:
    from rlt_ray.models.vllm_engine import build_llm, sampling_params

    llm = build_llm(a.model, cfg.rollout, device="cpu")
    ids = [prompts[i % len(prompts)] for i in range(a.requests)]
    params = [sampling_params(cfg.rollout, n=1, seed=i, max_tokens=a.max_tokens, min_tokens=a.max_tokens,
                              logprobs=False) for i in range(a.requests)]
    llm.generate([{"prompt_token_ids": ids[0]}], params[0], use_tqdm=False)  # warm-up
    out = []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        res = llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
        out.append(sum(len(o.outputs[0].token_ids) for o in res) / (time.perf_counter() - t0))
    del llm
    return out


KINDS = ("ProxyActor", "TeacherIngress", "TeacherReplica", "ScorerDeployment", "LLMServer", "EngineCore", "VLLM::Worker",
         "vllm.entrypoints.openai.api_server", "raylet", "gcs_server", "ServeController")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of every process on the machine, by kind (where a request's time goes)."""
    import psutil

    out: dict[str, float] = {}
    me = os.getpid()
    for p in psutil.process_iter():
        try:
            label = " ".join([p.name(), *p.cmdline()[:3]])
            t = p.cpu_times()
        except psutil.Error:
            continue
        kind = "load client" if p.pid == me else next((k for k in KINDS if k in label), "other")
        out[kind] = out.get(kind, 0.0) + t.user + t.system
    return out


def rounds(a, url: str, route: str, token: str | None, prompts, model: str, cpu: dict | None = None) -> list[float]:
    """tokens/s of each round; ``cpu`` gets the CPU milliseconds per request of each process kind."""
    run_load(url, route, a.concurrency, a.concurrency, a.max_tokens, 0.5, token, model, prompts)  # warm-up
    out, before = [], cpu_seconds()
    for _ in range(a.rounds):
        r = run_load(url, route, a.requests, a.concurrency, a.max_tokens, 0.5, token, model, prompts)
        if r["errors"]:
            raise RuntimeError(f"{route}: {r['errors']} of {a.requests} requests failed")
        out.append(r["tokens_per_s"])
    if cpu is not None:
        after, n = cpu_seconds(), a.rounds * a.requests
        cpu.update({k: round(1000 * (v - before.get(k, 0.0)) / n, 1) for k, v in sorted(after.items())
                    if v - before.get(k, 0.0) > 0.01 * n / 1000})
    return out


def vllm_server(a, cfg, prompts) -> list[float]:
    from rlt_ray.models.vllm_engine import cpu_engine_env, engine_kwargs

    kw = engine_kwargs(a.model, cfg.rollout, "cpu", cfg.model.dtype)
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", kw["model"], "--served-model-name",
           a.model, "--host", "127.0.0.1", "--port", str(port), "--dtype", kw["dtype"], "--max-model-len",
           str(kw["max_model_len"]), "--enforce-eager", "--logprobs-mode", kw["logprobs_mode"],
           "--no-enable-chunked-prefill", "--enable-prefix-caching", "--max-num-seqs", str(a.concurrency),
           "--disable-uvicorn-access-log"]
    env = {**os.environ, **cpu_engine_env(cfg.rollout)}
    with open(a.log_dir / "vllm_server.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for(f"http://127.0.0.1:{port}/v1/models", 300)
            return rounds(a, f"http://127.0.0.1:{port}", "completions", None, prompts, a.model, a.cpu["vllm_server"])
        finally:
            proc.terminate()
            proc.wait(60)


def serve_app(a, sides: list[str], prompts) -> dict[str, list[float]]:
    import ray
    from ray import serve

    from serve.app import app_builder

    out = {}
    port = free_port()
    os.environ.update(a.env)  # the local Ray's processes (proxy, replicas, engines) inherit it
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    base = [f"serve.model={a.model}", "serve.max_n=1", f"serve.max_tokens={a.max_tokens}",
            f"serve.max_ongoing_requests={4 * a.concurrency}", f"rollout.max_num_seqs={a.concurrency}"] + a.serve_set
    try:
        plain = [s for s in sides if s in ("serve_completions", "serve_explain")]
        if plain:
            serve.run(app_builder({"config": "configs/tiny_cpu.yaml", "overrides": base}), name="p7", route_prefix="/")
            if "serve_completions" in plain:
                out["serve_completions"] = rounds(a, url, "completions", None, prompts, a.model,
                                                  a.cpu["serve_completions"])
            if "serve_explain" in plain:
                out["serve_explain"] = rounds(a, url, "explain", None, prompts, a.model, a.cpu["serve_explain"])
        if "serve_explain_reward" in sides:
            serve.run(app_builder({"config": "configs/tiny_cpu.yaml", "overrides": base + [
                f"serve.student={a.student}"]}), name="p7", route_prefix="/")
            out["serve_explain_reward"] = rounds(a, url, "explain", None, prompts, a.model,
                                                 a.cpu["serve_explain_reward"])
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-teacher")
    p.add_argument("--student", default="tiny-student")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sides", default="offline,vllm_server,serve_completions,serve_explain,serve_explain_reward")
    p.add_argument("--log-dir", type=Path, default=Path("runs/bench_p7"))
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set in the environment of our app's Ray processes, e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1")
    p.add_argument("--serve-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for our app, e.g. serve.stream_batching_interval_ms=100")
    a = p.parse_args(argv)
    a.env = dict(kv.split("=", 1) for kv in a.env)
    a.log_dir.mkdir(parents=True, exist_ok=True)
    sides = a.sides.split(",")
    a.cpu = {side: {} for side in sides}

    from rlt_ray.config import load_config
    from rlt_ray.method.formats import RLTFormat, Row
    from rlt_ray.models.registry import load_tokenizer

    cfg = load_config("configs/tiny_cpu.yaml", [f"rollout.max_num_seqs={a.concurrency}"])
    tok = load_tokenizer(a.model)
    fmt = RLTFormat(cfg.format, tok)
    prompts = [tok(fmt.teacher_prompt(Row(question=q, solution=s)), add_special_tokens=False)["input_ids"]
               for q, s in QUESTIONS]

    result: dict[str, dict] = {}
    if "offline" in sides:
        result["offline"] = summary(offline(a, cfg, prompts))
    if "vllm_server" in sides:
        result["vllm_server"] = summary(vllm_server(a, cfg, prompts))
    for name, per_round in serve_app(a, sides, prompts).items():
        result[name] = summary(per_round)
    ratios = {}
    for name in result:
        for base in ("offline", "vllm_server"):
            if name != base and base in result and name != "offline":
                ratios[f"{name}/{base}"] = {
                    "ratio_of_best": result[name]["best_tokens_per_s"] / result[base]["best_tokens_per_s"],
                    "ratio_of_median": result[name]["median_tokens_per_s"] / result[base]["median_tokens_per_s"]}
    for name, r in result.items():
        print(f"{name:22s} tokens/s: best {r['best_tokens_per_s']:7.0f}  median {r['median_tokens_per_s']:7.0f}",
              file=sys.stderr)
    for name, per in a.cpu.items():
        if per:
            print(f"{name:22s} CPU ms per request: " + ", ".join(f"{k} {v}" for k, v in
                                                               sorted(per.items(), key=lambda x: -x[1])), file=sys.stderr)
    for name, r in ratios.items():
        print(f"{name:36s} {r['ratio_of_best']:.2f} (best)  {r['ratio_of_median']:.2f} (median)", file=sys.stderr)
    emit({"bench": "p7_serving", "env": a.env, "serve_set": a.serve_set, "requests": a.requests, "concurrency": a.concurrency, "max_tokens": a.max_tokens,
          "rounds": a.rounds, "sides": result, "ratios": ratios,
          "cpu_ms_per_request": {k: v for k, v in a.cpu.items() if v}})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
