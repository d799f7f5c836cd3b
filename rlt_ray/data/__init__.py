"""Rows and batches: data sources, the demo task, SFT and distillation rows, the rollout batch layout, the
Ray Data back-pressure."""
