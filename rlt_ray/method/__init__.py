"""The paper's method as pure functions and texts: formats, spans, the reward, GRPO, log-probs, scoring,
the verifier's checks, answer checks, the reward-hacking watch, packing. No Ray, no engines."""
