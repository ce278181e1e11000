"""Data of the study: local lm-eval tasks (YAML + JSON lines) and the logprob prompt set."""
