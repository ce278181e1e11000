"""One way to run ``vllm serve`` for the study, the demo, the tests and the GPU scripts.

:func:`start` launches it (own process group, output to a log file), :func:`wait` waits for
``/health`` with a visible heartbeat (one line per starting server every :data:`HEARTBEAT_S`
seconds naming its log and the log's last line; the log's tail when a server exits),
:func:`stop` ends it (SIGTERM to the group, SIGKILL after a grace period). :func:`cpu_args` and
:func:`gpu_args` are the engine settings of the CPU demo / test servers and of the GPU suite.

GPU servers beside each other: vLLM 0.30's memory profiler fails when another engine starts
beside it, so every GPU server gets a fixed KV-cache size (``--kv-cache-memory-bytes``,
:func:`gpu_kv_bytes`: ``QDQ_TEST_KV_BYTES``, default 1 GiB), with which vLLM skips that
profiling; ``QDQ_TEST_KV_BYTES=0``: profiled, 0.4 of the GPU each, started one after the other
(:func:`side_by_side`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from .. import config

__all__ = [
    "HEARTBEAT_S",
    "cpu_sets",
    "free_port",
    "gpu_args",
    "gpu_kv_bytes",
    "healthy",
    "kill_group",
    "last_line",
    "side_by_side",
    "start",
    "stop",
    "wait",
    "wait_healthy",
]

#: Seconds between the progress lines printed while servers start.
HEARTBEAT_S = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_sets(n: int) -> list[str]:
    """Split this process's CPUs into ``n`` OpenMP bind lists (one per CPU server)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cpus) < n:
        return [",".join(map(str, cpus))] * n
    per = len(cpus) // n
    return [",".join(map(str, cpus[i * per:(i + 1) * per])) for i in range(n)]


def start(model: str | os.PathLike, port: int, args: list[str], log: Path,
          env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """``vllm serve MODEL --port PORT --host 127.0.0.1 ARGS`` (:func:`vllm_qdq.vllm_cli.vllm_command`)
    in a process group of its own, stdout and stderr to ``log`` (created with its parents);
    ``env``: the whole environment (default: this process's)."""
    from ..vllm_cli import vllm_command

    cmd = [*vllm_command(), "serve", str(model), "--port", str(port), "--host", "127.0.0.1", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, env=config.process_env() if env is None else dict(env), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM to ``proc``'s process group, then SIGKILL to what is left of it (after ``timeout``
    s for ``proc`` itself): an API server that exited can leave its engine process behind."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of ``proc``'s process group (``proc`` itself and its children: started
    with ``start_new_session=True``), then reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def last_line(log: Path, width: int = 110) -> str:
    """The last non-empty line of ``log`` (shortened), or ``""``."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    if not lines:
        return ""
    return lines[-1] if len(lines[-1]) <= width else lines[-1][:width - 3] + "..."


def healthy(url: str) -> bool:
    """Whether ``URL/health`` answers 200 within 2 s."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait(servers: Mapping[str, tuple[str, subprocess.Popen, Path]], timeout: float,
         heartbeat: float = HEARTBEAT_S, tag: str = "server") -> None:
    """Wait until every server (``label -> (url, process, log)``) answers ``/health``.

    Prints ``TAG: server LABEL healthy after N s`` for each, and every ``heartbeat`` seconds one
    line per server still starting: elapsed time, its log path and the log's last line. Raises
    ``RuntimeError`` with the log's tail when a server exits, ``TimeoutError`` naming the log when
    ``timeout`` passes.
    """
    t0 = time.monotonic()
    next_beat = t0 + heartbeat
    pending = dict(servers)
    while pending:
        for label, (url, proc, log) in list(pending.items()):
            if proc.poll() is not None:
                raise RuntimeError(f"server {label} ({url}) exited with {proc.returncode}; log {log}, last lines:\n"
                                   + log.read_text(errors="replace")[-3000:])
            if healthy(url):
                print(f"{tag}: server {label} healthy after {time.monotonic() - t0:.0f} s ({url})", flush=True)
                del pending[label]
        if not pending:
            return
        now = time.monotonic()
        if now - t0 > timeout:
            label, (url, _, log) = next(iter(pending.items()))
            raise TimeoutError(f"server {label} ({url}) not healthy after {timeout:.0f} s; log {log}, "
                               f"last line: {last_line(log)!r}")
        if now >= next_beat:
            next_beat = now + heartbeat
            for label, (_, _, log) in pending.items():
                print(f"{tag}: waiting for server {label}, {now - t0:.0f} s so far; log {log}: "
                      f"{last_line(log) or '(empty)'}", flush=True)
        time.sleep(1.0)


def wait_healthy(label: str, port: int, proc: subprocess.Popen, log: Path, timeout: float,
                 tag: str = "server") -> bool:
    """:func:`wait` for one server on 127.0.0.1:``port``; False (the reason printed) when it exits
    or ``timeout`` passes."""
    try:
        wait({label: (f"http://127.0.0.1:{port}", proc, log)}, timeout, tag=tag)
    except (RuntimeError, TimeoutError) as e:
        print(f"{tag}: {e}", flush=True)
        return False
    return True


def gpu_kv_bytes() -> int:
    """The fixed KV-cache size of every GPU server (:func:`vllm_qdq.config.engine_kv_bytes`:
    ``QDQ_TEST_KV_BYTES``, default 1 GiB); 0: profiled."""
    return config.engine_kv_bytes()


def side_by_side() -> bool:
    """Whether GPU servers may start at once (a fixed KV-cache size: no memory profiling to upset)."""
    return gpu_kv_bytes() > 0


def gpu_args(*, max_model_len: int = 256, max_num_seqs: int = 8, max_logprobs: int = 5) -> list[str]:
    """``vllm serve`` arguments of the GPU suite's servers: vLLM's defaults (torch.compile, CUDA
    graphs up to ``max_num_seqs``), seed 0, the KV-cache size of :func:`gpu_kv_bytes`."""
    sizes = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= max_num_seqs]
    kv = gpu_kv_bytes()
    mem = ["--gpu-memory-utilization", "0.1", "--kv-cache-memory-bytes", str(kv)] if kv else \
        ["--gpu-memory-utilization", "0.4"]
    return ["--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs), "--seed", "0", *mem,
            "--max-logprobs", str(max_logprobs), "--compilation-config", json.dumps({"cudagraph_capture_sizes": sizes})]
