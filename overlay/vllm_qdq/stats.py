"""Per-layer QDQ error statistics, written when ``VLLM_QDQ_STATS=<dir>`` is set.

The plugin's hook calls :func:`record` with the input ``x`` of a QDQ and its output ``y``.
Each (op name, format) key accumulates, in float64 on the host:

* ``calls`` and ``numel`` (finite elements counted; groups that became NaN are left out),
* ``sig_sq = sum(x**2)`` and ``err_sq = sum((x - y)**2)``, giving
  ``sqnr_db = 10 * log10(sig_sq / err_sq)`` (``inf`` when the QDQ was exact),
* ``max_abs_err = max |x - y|`` and ``max_abs_x = max |x|``,
* ``saturated``: elements clipped at the top of their group's grid, i.e. whose quantized code
  is the element format's largest finite magnitude while ``|x| > |y| * (1 + eps)``, ``eps``
  the machine epsilon of ``y``'s dtype (so the final rounding of ``y`` is not taken for
  clipping; clipping by less than that is not counted). The reference
  quantizer is re-run on ``x`` to get the codes — exact, and only paid when stats are on),
* ``nonfinite``: elements of ``y`` that are NaN (NaN/Inf groups, see :mod:`vllm_qdq.numerics.reference`).

Memory is bounded: at most :data:`MAX_KEYS` keys per process (later keys are pooled under
``op="<other>"``) of a fixed-size record each. Every process writes its own file
``qdq-stats-<pid>.jsonl`` in the directory: one JSON object per key holding the running
totals, rewritten atomically (so a reader always sees a complete snapshot) every
``flush_every`` calls, at exit, and, inside vLLM, after every engine step that recorded
something. :func:`load_stats` merges the files of every process.

Inside vLLM (:func:`enable`): the ``qdq`` method and the activation plugin record through the
``vllm_qdq::qdq_stats`` op (:mod:`vllm_qdq.activation.ops`), whose implementation calls
:func:`record_call` at run time, eagerly and inside ``torch.compile`` graphs alike; CUDA-graph
replays run no Python and are not recorded (:func:`warn_if_cuda_graphs`). Only the forwards
of served engine steps (vLLM's ``execute_model``) are counted, not vLLM's start-up profiling,
compile warm-up or CUDA-graph capture forwards, so the totals are exactly the calls the served
requests made (e.g. ``calls`` of one layer = the engine steps that ran it). The file is
rewritten at the end of each such step, before its outputs leave the worker: a server stopped
by a plain SIGTERM (vLLM force-kills its engine core at once unless ``--shutdown-timeout`` is
set) or killed outright has written every step a client has seen.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FILE_GLOB", "MAX_KEYS", "KeyStats", "QDQStats", "enable", "flush_if_dirty", "get_recorder", "load_stats",
    "op_hook", "record", "record_call", "served_steps_only", "set_hook",
    "warn_if_cuda_graphs",
]

logger = logging.getLogger("vllm_qdq")

MAX_KEYS = 4096
FLUSH_EVERY = 256
FILE_GLOB = "qdq-stats-*.jsonl"
OTHER = "<other>"


@dataclass
class KeyStats:
    """Running totals of one (op, format) key; see the module docstring for each field."""

    op: str
    fmt: str
    calls: int = 0
    numel: int = 0
    sig_sq: float = 0.0
    err_sq: float = 0.0
    max_abs_err: float = 0.0
    max_abs_x: float = 0.0
    saturated: int = 0
    nonfinite: int = 0

    @property
    def sqnr_db(self) -> float:
        if self.err_sq == 0.0:
            return math.inf
        if self.sig_sq == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.sig_sq / self.err_sq)

    @property
    def frac_saturated(self) -> float:
        return self.saturated / self.numel if self.numel else 0.0

    def merge(self, other: KeyStats) -> None:
        self.calls += other.calls
        self.numel += other.numel
        self.sig_sq += other.sig_sq
        self.err_sq += other.err_sq
        self.max_abs_err = max(self.max_abs_err, other.max_abs_err)
        self.max_abs_x = max(self.max_abs_x, other.max_abs_x)
        self.saturated += other.saturated
        self.nonfinite += other.nonfinite

    def to_json(self) -> dict:
        d = asdict(self)
        d["sqnr_db"] = self.sqnr_db
        d["frac_saturated"] = self.frac_saturated
        return d


def _saturated_count(x: torch.Tensor, y: torch.Tensor, fmt: str, scale_rule: str, axis: int) -> int:
    """Elements whose code is the largest finite element magnitude while ``|x| > |y| (1 + eps)``."""
    from .numerics.formats import Granularity
    from .numerics.qdq import quantize
    from .numerics.reference import to_rows

    q = quantize(x, fmt, scale_rule=scale_rule, axis=axis)
    elem = q.spec.elem
    codes = q.codes.to(torch.int64)
    if elem.is_int:
        top = codes.abs() == 2 ** (elem.bits - 1) - 1
    else:
        top = (codes & ((1 << (elem.bits - 1)) - 1)) == len(elem.grid()) - 1
    block = q.spec.block_size if q.spec.granularity is Granularity.BLOCK else None
    x2, _ = to_rows(x.float(), q.axis, block)
    y2, _ = to_rows(y.float(), q.axis, block)
    # |y| carries one rounding to y's dtype: clipping must exceed that (relative eps).
    tol = 1.0 + torch.finfo(y.dtype).eps
    clipped = top & (x2.abs() > y2.abs() * tol) & torch.isfinite(y2)
    return int(clipped.sum())


class QDQStats:
    """Accumulates :class:`KeyStats` per (op, format) and flushes them to ``out_dir``.

    ``out_dir`` is created by the first flush (a failure there is a failed flush: logged,
    retried, never raised); :func:`vllm_qdq.config.settings` has checked it at start-up.
    """

    def __init__(self, out_dir: str | os.PathLike, *, flush_every: int = FLUSH_EVERY,
                 max_keys: int = MAX_KEYS) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every={flush_every!r}; accepted: an integer >= 1")
        if max_keys < 1:
            raise ValueError(f"max_keys={max_keys!r}; accepted: an integer >= 1")
        self.out_dir = Path(out_dir)
        self.flush_every = flush_every
        self.max_keys = max_keys
        self.path = self.out_dir / f"qdq-stats-{os.getpid()}.jsonl"
        self._keys: dict[tuple[str, str], KeyStats] = {}
        self._calls = 0
        self._lock = threading.Lock()
        self._warned_full = False
        self.failed_flushes = 0
        self._told_recovered = False
        #: calls recorded since the last successful flush
        self.unflushed = 0

    def record(self, op_name: str, fmt: str, x: torch.Tensor, y: torch.Tensor, *,
               scale_rule: str = "floor", axis: int = -1) -> None:
        """Add one QDQ call (``y = qdq(x, fmt)``); shapes must match."""
        if x.shape != y.shape:
            raise ValueError(f"record({op_name!r}, {fmt!r}): x shape {tuple(x.shape)} != y shape {tuple(y.shape)}")
        with torch.no_grad():
            xf = x.detach().float()
            yf = y.detach().float()
            ok = torch.isfinite(yf) & torch.isfinite(xf)
            n_ok = int(ok.sum())
            xs = torch.where(ok, xf, torch.zeros_like(xf))
            err = torch.where(ok, xf - yf, torch.zeros_like(xf))
            sig_sq = float(xs.double().square().sum()) if n_ok else 0.0
            err_sq = float(err.double().square().sum()) if n_ok else 0.0
            max_err = float(err.abs().max()) if n_ok else 0.0
            max_x = float(xs.abs().max()) if n_ok else 0.0
            sat = _saturated_count(x.detach(), y.detach(), fmt, scale_rule, axis) if x.numel() else 0
            nonfinite = int((~torch.isfinite(yf)).sum())
        with self._lock:
            key = (op_name, fmt)
            ks = self._keys.get(key)
            if ks is None:
                if len(self._keys) >= self.max_keys:
                    if not self._warned_full:
                        logger.warning("vllm-qdq stats: more than %d keys; pooling the rest under %r",
                                       self.max_keys, OTHER)
                        self._warned_full = True
                    key = (OTHER, fmt)
                    ks = self._keys.get(key)
                if ks is None:
                    ks = self._keys[key] = KeyStats(key[0], fmt)
            ks.merge(KeyStats(op_name, fmt, 1, n_ok, sig_sq, err_sq, max_err, max_x, sat, nonfinite))
            self._calls += 1
            self.unflushed += 1
            due = self._calls % self.flush_every == 0
        if due:
            self.flush()

    def snapshot(self) -> list[KeyStats]:
        with self._lock:
            return [KeyStats(**asdict(k)) for k in self._keys.values()]

    def flush(self) -> Path | None:
        """Rewrite this process's file with the current totals (atomic replace).

        The file is a cumulative snapshot, so a failed write (disk full, directory gone) loses
        nothing that a later flush cannot write: the error is logged (the first one, then every
        100th, with the count) and serving goes on; returns None then, else the file's path.
        """
        with self._lock:
            rows = [KeyStats(**asdict(k)) for k in self._keys.values()]
            pending = self.unflushed
        tmp = self.path.with_suffix(f".tmp{threading.get_ident()}")
        now = time.time()
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                for ks in rows:
                    d = ks.to_json()
                    d.update(pid=os.getpid(), time=now)
                    f.write(json.dumps(d) + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.failed_flushes += 1
            if self.failed_flushes % 100 == 1:
                logger.error("vllm-qdq stats: cannot write %s (%s); %d write(s) failed so far, the "
                             "totals are kept and the next flush retries", self.path, e,
                             self.failed_flushes)
            return None
        with self._lock:
            self.unflushed -= pending
        if self.failed_flushes and not self._told_recovered:
            logger.warning("vllm-qdq stats: %s written again after %d failed write(s); nothing lost",
                           self.path, self.failed_flushes)
            self._told_recovered = True
        return self.path


_RECORDER: QDQStats | None = None
_RECORDER_LOCK = threading.Lock()


def get_recorder(out_dir: str | os.PathLike | None = None) -> QDQStats | None:
    """The process-wide recorder for ``out_dir`` (default: the config's ``stats_dir``), or None."""
    global _RECORDER
    if _RECORDER is not None and _RECORDER.path.name.endswith(f"-{os.getpid()}.jsonl"):
        return _RECORDER
    if out_dir is None:
        from .config import settings

        out_dir = settings().stats_dir
        if not out_dir:
            return None
    with _RECORDER_LOCK:
        if _RECORDER is None or not _RECORDER.path.name.endswith(f"-{os.getpid()}.jsonl"):
            _RECORDER = QDQStats(out_dir)
            atexit.register(_RECORDER.flush)
            logger.info("vllm-qdq stats: writing per-layer QDQ error statistics to %s", _RECORDER.path)
    return _RECORDER


def record(op_name: str, fmt: str, x: torch.Tensor, y: torch.Tensor, *,
           scale_rule: str = "floor", axis: int = -1) -> None:
    """Record one QDQ call in this process's recorder; does nothing when stats are off."""
    rec = get_recorder()
    if rec is not None:
        rec.record(op_name, fmt, x, y, scale_rule=scale_rule, axis=axis)


# ----------------------------------------------------------------------------- inside vLLM

#: Test hook replacing the recorder in :func:`record_call`: ``hook(name, x, y, fmt)``.
_HOOK: Callable[[str, torch.Tensor, torch.Tensor, str], None] | None = None
#: Count only calls inside served engine steps (set once this process runs a vLLM worker).
_SERVED_ONLY = False
#: Depth of ``execute_model`` calls running now in this process.
_IN_STEP = 0
_SENTINEL = "__vllm_qdq_stats_step__"
_hooks_installed = False


def set_hook(hook: Callable[[str, torch.Tensor, torch.Tensor, str], None] | None) -> None:
    """Send :func:`record_call`'s calls to ``hook(name, x, y, fmt)`` instead of the recorder
    (``None`` or :func:`op_hook`: the recorder)."""
    global _HOOK
    _HOOK = None if hook is None or hook is op_hook else hook


def record_call(name: str, fmt: str, x: torch.Tensor, y: torch.Tensor, *,
                scale_rule: str = "floor", axis: int = -1) -> None:
    """Run-time body of the ``vllm_qdq::qdq_stats`` op: record one QDQ call.

    Skipped: while a CUDA graph is being captured (the capture is not a served call, and host
    reads are illegal there) and, in a vLLM worker, outside served engine steps (profiling and
    warm-up forwards). Never raises into the forward pass: an unexpected error is logged once.
    """
    if _SERVED_ONLY and _IN_STEP <= 0:
        return
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    try:
        if _HOOK is not None:
            _HOOK(name, x, y, fmt)
        else:
            record(name, fmt, x, y, scale_rule=scale_rule, axis=axis)
    except Exception:  # statistics must never take the server down
        _log_record_error(name)


_record_error_logged = False


def _log_record_error(name: str) -> None:
    """Log the first failed recording of this process (with its traceback), and only that one."""
    global _record_error_logged
    if _record_error_logged:
        return
    _record_error_logged = True
    logger.exception("vllm-qdq stats: recording a call of %s failed; statistics may be incomplete", name)


def flush_if_dirty() -> Path | None:
    """Flush this process's recorder if it recorded calls since its last successful flush."""
    rec = _RECORDER
    if rec is None or not rec.unflushed or not rec.path.name.endswith(f"-{os.getpid()}.jsonl"):
        return None
    return rec.flush()


def served_steps_only() -> None:
    """From now on :func:`record_call` counts only calls inside served engine steps."""
    global _SERVED_ONLY
    _SERVED_ONLY = True


def enable(*, in_worker: bool = False) -> bool:
    """Hook statistics into vLLM's worker (idempotent); returns whether the hooks are in place.

    Wraps ``WorkerWrapperBase.execute_model`` (one served engine step, in every process that
    runs a worker) to count the calls inside it and to flush the file after it, and
    ``WorkerWrapperBase.init_device`` (a worker starting in this process, before any profiling
    forward) to call :func:`served_steps_only`. ``in_worker``: the caller runs inside a worker
    already (the ``qdq`` method building its layers): :func:`served_steps_only` at once.
    """
    global _hooks_installed
    if in_worker:
        served_steps_only()
    if _hooks_installed:
        return True
    try:
        from vllm.v1.worker.worker_base import WorkerWrapperBase
    except ImportError:  # not inside vLLM: record every call, flush by count and at exit
        return False
    execute_model = WorkerWrapperBase.execute_model
    init_device = WorkerWrapperBase.init_device
    if not getattr(execute_model, _SENTINEL, False):

        @functools.wraps(execute_model)
        def step(self: Any, *args: Any, **kwargs: Any) -> Any:
            global _IN_STEP
            _IN_STEP += 1
            try:
                return execute_model(self, *args, **kwargs)
            finally:
                _IN_STEP -= 1
                if _IN_STEP == 0:
                    flush_if_dirty()

        setattr(step, _SENTINEL, True)
        WorkerWrapperBase.execute_model = step
    if not getattr(init_device, _SENTINEL, False):

        @functools.wraps(init_device)
        def start(self: Any, *args: Any, **kwargs: Any) -> Any:
            served_steps_only()
            return init_device(self, *args, **kwargs)

        setattr(start, _SENTINEL, True)
        WorkerWrapperBase.init_device = start
    _hooks_installed = True
    return True


def op_hook(op_name: str, x: torch.Tensor, y: torch.Tensor, fmt: str) -> None:
    """The activation plugin's default stats hook (:func:`vllm_qdq.activation.vllm_patch.set_stats_hook`):
    the recorder."""
    record(op_name, fmt, x, y)


def _cuda_graphs_replay() -> bool:
    """Whether this process's vLLM config replays CUDA graphs (no config: a CUDA device exists)."""
    try:
        from vllm.config import get_current_vllm_config

        cfg = get_current_vllm_config()
    except Exception:  # no current config (e.g. the API process)
        return torch.cuda.is_available()
    if cfg.model_config is not None and cfg.model_config.enforce_eager:
        return False
    mode = getattr(cfg.compilation_config, "cudagraph_mode", None)
    return mode is not None and str(getattr(mode, "name", mode)).upper() != "NONE"


def warn_if_cuda_graphs(where: str) -> None:
    """One start-up line when CUDA graphs replay: those calls are not recorded."""
    if not _cuda_graphs_replay():
        return
    logger.warning(
        "vllm-qdq stats (%s): VLLM_QDQ_STATS records QDQ calls run eagerly and inside torch.compile "
        "graphs, but not calls replayed from CUDA graphs (a replay runs no Python). Serve with "
        "--enforce-eager or -cc.cudagraph_mode=NONE for complete per-layer statistics.", where)



def load_stats(stats_dir: str | os.PathLike) -> list[KeyStats]:
    """Merge every process's latest snapshot in ``stats_dir`` into one list, by (op, format)."""
    merged: dict[tuple[str, str], KeyStats] = {}
    for p in sorted(Path(stats_dir).glob(FILE_GLOB)):
        for line in p.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            ks = KeyStats(**{k: d[k] for k in KeyStats.__dataclass_fields__})
            key = (ks.op, ks.fmt)
            if key in merged:
                merged[key].merge(ks)
            else:
                merged[key] = ks
    return sorted(merged.values(), key=lambda k: (k.fmt, k.op))
