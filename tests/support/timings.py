"""A pytest plugin: each test's setup and call time, written as it ends (``QDQ_TEST_TIMES``).

pytest's ``--durations`` table prints only when a run ends, so a run cut short by a time limit
(the smoke suite's kernels step inside a 10-minute device call) tells nothing of where its time
went. With ``QDQ_TEST_TIMES=FILE`` every test's setup and call phases append one line to FILE as
they finish: ``<seconds> <phase> <outcome> <node id>``. Under pytest-xdist only the controller
writes (each line once), in the order the workers' reports arrive.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_FILE: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _FILE
    path = os.environ.get("QDQ_TEST_TIMES")
    _FILE = Path(path) if path and not hasattr(config, "workerinput") else None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _FILE is not None and report.when in ("setup", "call"):
        with _FILE.open("a") as f:
            f.write(f"{report.duration:.2f} {report.when} {report.outcome} {report.nodeid}\n")
