"""rlt-ray: Reinforcement-Learned Teachers on Ray.

The library in layers, lowest first. A module imports only from its own layer or a lower one, and no import
circle exists anywhere (tests/test_house.py reads ``LAYERS`` from here and checks both from the code's imports):

- ``rlt_ray.errors``   the exception types a job can stop with
- ``rlt_ray.config``   the config tree: schema, loading, checks, placement by role
- ``rlt_ray.method``   the paper's method as pure functions: formats, spans, reward, GRPO, log-probs, answer checks
- ``rlt_ray.data``     rows and batches: sources, the demo task, SFT and distillation rows, the rollout batch
- ``rlt_ray.infra``    Ray plumbing: connecting, failure classification, weight sync, checkpoints, metrics, trackers
- ``rlt_ray.models``   the engines, one builder each: the model registry, vLLM, the DeepSpeed learner model
- ``rlt_ray.memory``   the GPU memory plan (python -m rlt_ray.memory), which reads the models' shapes
- ``actors``           the Ray actors (thin: rollout worker, learner rank, student scorer, verifier)
- ``serve``            the Ray Serve application
- ``jobs``             the entrypoints a user runs or submits
"""

LAYERS = ("rlt_ray.errors", "rlt_ray.config", "rlt_ray.method", "rlt_ray.data", "rlt_ray.infra", "rlt_ray.models",
          "rlt_ray.memory", "actors", "serve", "jobs")
