"""Loader of the study's local lm-eval tasks: JSON-lines files beside this module, no download."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rows(name: str) -> list[dict]:
    with open(HERE / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_mc(**_: object):
    """The multiple-choice task's data (``qdq_tiny_mc.jsonl``) as a ``test`` split."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_rows("qdq_tiny_mc.jsonl"))})


def load_gen(**_: object):
    """The generation task's data (``qdq_tiny_gen.jsonl``) as a ``test`` split."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_rows("qdq_tiny_gen.jsonl"))})
