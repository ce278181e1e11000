"""How a vllm-qdq error reaches the user as the last thing printed, whichever process found it.

vLLM runs in up to three kinds of process, and ``vllm.general_plugins`` calls
:func:`vllm_qdq.plugin.register` in each: the *front* process (the ``vllm serve`` API server,
or the Python program that calls ``LLM()``), the engine core, and the workers that build the
model (on the CPU engine a worker process of its own). Where each error is found:

* **In the front process** (before any engine starts): the environment settings, when
  ``register()`` loads them (``vllm serve`` parses its arguments, ``LLM()`` builds its
  ``EngineArgs``), and the ``qdq`` method's run config (``hf_overrides`` / ``config.json``),
  when vLLM builds its ``VllmConfig``, which instantiates the quantization config in the front
  process. The :class:`~vllm_qdq.config.ConfigError` is raised there and never reaches an
  engine. (It is not a ``ValueError`` on purpose: pydantic, under vLLM's config classes, turns
  a ``ValueError`` into a ``ValidationError`` whose last line is a pydantic URL.)
* **In a worker** (only there are the model's layer names known): a layer pattern that matches
  no layer, a MoE weight format one layer cannot take. vLLM logs the worker's traceback, the
  engine core's, and then the front process raises vLLM's generic ``RuntimeError("Engine core
  initialization failed. See root cause above...")``. So the raising code wraps the error in
  :func:`reported`, which writes its message to a file the front process named: the front
  process puts a fresh path under the system temp directory in the environment variable
  :data:`ERROR_FILE_ENV` when it registers (before vLLM starts any engine process, so every
  engine core and worker inherits it); the first error written wins (``O_EXCL``).

What the user sees (the front process's :func:`install_front_hooks`, at register time):

* ``vllm serve`` (any ``vllm`` / ``vllm-omni`` command, or ``python -m vllm_qdq.vllm_cli``): an
  uncaught exception that is, or was caused by, a vllm-qdq error, or that ends a process whose
  engine recorded one, is printed as ``vllm-qdq: error: MESSAGE`` — the last line on stderr,
  no traceback — and the command exits with status :data:`EXIT_CODE` (2, argparse's status
  for a bad argument).
* ``LLM()`` in a program: an error found in the front process is raised as ``ConfigError`` from
  ``LLM()`` (the usual traceback, whose last line is the message). For an error recorded by an
  engine process, ``LLM()`` can only raise what vLLM raises (its ``RuntimeError``); when that
  exception is not caught, Python's traceback is followed by the recorded error in traceback
  form, ``vllm_qdq.config.ConfigError: MESSAGE``, the last line; when the program catches it,
  the recorded error is printed at exit (:mod:`atexit`) instead.

Nothing of vLLM is patched. ``sys.excepthook`` is Python's hook for an exception nobody caught:
ours calls the one it replaced for every other exception and for every other process state, so
it changes nothing while vLLM runs or fails for any other reason. The engine side only writes a
file next to the ``raise``. Engine cores and workers (``multiprocessing`` children) install no
hooks; a front process started by another front process (a test spawning ``vllm serve``) names
its own file.
"""

from __future__ import annotations

import atexit
import functools
import json
import multiprocessing
import os
import secrets
import sys
import tempfile
from types import TracebackType
from typing import Any, TypeVar

from .config import ERROR_FILE_ENV, error_file

__all__ = [
    "ERROR_FILE_ENV",
    "EXIT_CODE",
    "clear_recorded",
    "install_front_hooks",
    "is_vllm_command",
    "own_error",
    "reported",
    "take_recorded",
]

#: Exit status of a vLLM command stopped by a vllm-qdq error.
EXIT_CODE = 2
#: Prefix of the one line a vLLM command prints for a vllm-qdq error.
CLI_PREFIX = "vllm-qdq: error: "

E = TypeVar("E", bound=BaseException)

_front = False  # this process installed the hooks
_cli = False  # ... and it is a vLLM command
_shown = False  # the recorded error was printed already


def is_vllm_command() -> bool:
    """Whether this process is a vLLM command line (``vllm ...``), not a user's program."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None) or ""
    if name == "vllm_qdq.vllm_cli" or name.startswith(("vllm.entrypoints.", "vllm_omni.entrypoints.")):
        return True
    return bool(sys.argv) and os.path.basename(sys.argv[0]) in ("vllm", "vllm-omni")


def own_error(exc: BaseException | None) -> BaseException | None:
    """The first vllm-qdq exception in ``exc``'s chain (itself, its causes and contexts)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.split(".")[0] == "vllm_qdq":
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def reported(exc: E) -> E:
    """Record ``exc`` for the front process when this is an engine process; return ``exc``.

    Use as ``raise reported(ConfigError(...))`` where the error can only be found in an engine
    core or worker. In the front process itself, or without a front process that registered
    (no :data:`ERROR_FILE_ENV`), nothing is written. Never raises.
    """
    path = error_file()
    if _front or not path:
        return exc
    record = {
        "type": _qualname(exc),
        "message": str(exc),
        "pid": os.getpid(),
        "process": multiprocessing.current_process().name,
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError:  # an earlier error was recorded (the first one is the cause), or no temp dir
        return exc
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return exc


def take_recorded() -> dict[str, Any] | None:
    """The error an engine process recorded for this front process (removed), or ``None``."""
    path = error_file()
    if not path:
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    finally:
        clear_recorded()
    return record if isinstance(record, dict) and "message" in record else None


def clear_recorded() -> None:
    """Forget a recorded error (a new engine is about to start in this front process)."""
    path = error_file()
    if path and _front:
        try:
            os.unlink(path)
        except OSError:
            pass


def _qualname(exc: BaseException | None) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _engine_line(record: dict[str, Any], stopped: str) -> str:
    where = f"{record.get('process', 'an engine process')} (pid {record.get('pid', '?')})"
    return f"vllm-qdq: {stopped}; the cause, found in vLLM's {where}:"


def _excepthook(
    previous: Any, cli: bool, etype: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    global _shown
    own = own_error(value)
    record = None if own is not None else take_recorded()
    if own is None and record is None:
        previous(etype, value, tb)
        return
    _shown = True
    if cli:
        if record is not None:
            sys.stderr.write(f"{_engine_line(record, f'vLLM stopped with the {etype.__name__} above')}\n")
        message = str(own) if own is not None else record["message"]
        sys.stderr.write(f"{CLI_PREFIX}{message}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_CODE)
    previous(etype, value, tb)
    stopped = f"vLLM stopped with the {etype.__name__} above"
    if record is not None:
        sys.stderr.write(f"\n{_engine_line(record, stopped)}\n{record['type']}: {record['message']}\n")
    elif own is not value:  # ours caused another exception: ours is still the last line
        sys.stderr.write(f"\nvllm-qdq: {stopped}; the cause:\n{_qualname(own)}: {own}\n")
    sys.stderr.flush()


def _at_exit() -> None:
    if _shown:
        clear_recorded()
        return
    record = take_recorded()
    if record is None:
        return
    last = f"{CLI_PREFIX}{record['message']}" if _cli else f"{record['type']}: {record['message']}"
    sys.stderr.write(f"{_engine_line(record, 'an engine this process started stopped')}\n{last}\n")
    sys.stderr.flush()


def install_front_hooks() -> None:
    """In a front process (not a ``multiprocessing`` child): name the error file, hook exit.

    Idempotent; does nothing in engine cores and workers. See the module docstring.
    """
    global _front, _cli
    if _front or multiprocessing.parent_process() is not None:
        return
    _front, _cli = True, is_vllm_command()
    os.environ[ERROR_FILE_ENV] = os.path.join(
        tempfile.gettempdir(), f"vllm-qdq-error-{os.getpid()}-{secrets.token_hex(8)}.json"
    )
    sys.excepthook = functools.partial(_excepthook, sys.excepthook, _cli)
    atexit.register(_at_exit)
