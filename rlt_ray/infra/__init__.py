"""The Ray infrastructure: connecting and failure classification, weight sync, checkpoints, metrics,
trackers and the Grafana dashboard."""
