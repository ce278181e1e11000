"""The study and its tooling: the side-by-side QDQ study and everything that runs vLLM for it.

Modules (each imported on its own; this package imports none of them):

* :mod:`~vllm_qdq.study.run`: the study (``python -m vllm_qdq.study SUB ...``): bench, eval,
  logprobs, report against two running servers.
* :mod:`~vllm_qdq.study.report`: the study directory -> ``report.md`` with plots.
* :mod:`~vllm_qdq.study.tasks`: the local lm-eval tasks and the logprob prompt set (data).
* :mod:`~vllm_qdq.study.demo`: ``make demo`` (``python -m vllm_qdq.study.demo``).
* :mod:`~vllm_qdq.study.tiny`: tiny random checkpoints built on the spot.
* :mod:`~vllm_qdq.study.server`: start ``vllm serve``, wait for ``/health`` with a heartbeat, stop.
* :mod:`~vllm_qdq.study.llm_run`: run ``LLM()`` configurations in driver processes (tests, GPU suite).

The study layer may import every other layer of :mod:`vllm_qdq` (and vLLM); nothing below it
imports the study.
"""
