"""The model engines, one builder each: the model registry, vLLM (with its weight-sync worker extension),
the DeepSpeed learner model, the varlen attention."""
