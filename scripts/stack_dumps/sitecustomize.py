"""Scheduled stack dumps of every Python process started with this directory on ``PYTHONPATH``.

``QDQ_STACK_DUMPS="60,90,120"``: a daemon thread writes every thread's Python stack
(:func:`faulthandler.dump_traceback`) to the process's standard error file descriptor (fd 2, as it
was when the process started: what a test runner's capture does to ``sys.stderr`` does not hide
them) at those seconds after the process started, each dump headed ``=== qdq stack dump: pid P
(argv0) at T s ===``; a process that ends sooner writes none. A child made by ``fork`` (threads do
not survive it) starts its own schedule, counted from the fork. For finding where a process waits
with nothing in its log (the GPU smoke suite's ``SMOKE_STACK_DUMPS``: vLLM's engine-core processes
inherit the variable and the path and write to the logs their stderr goes to). Costs nothing until
a dump is due, and changes nothing else.

Python imports the first ``sitecustomize`` on ``sys.path``; this one then runs the next one found
after its own entry (another copy of this file, through a second checkout or a link, is passed
over), compiled as its own module would be, so that a site's own customization still happens. A
value that is not a list of seconds > 0 is said on stderr, naming it, and no dump is scheduled
(``scripts/gpu-smoke.sh`` refuses it at start-up before any process gets here).
"""

import os
import sys


def _times(spec: str) -> list[float]:
    try:
        times = sorted(float(x) for x in spec.split(","))
    except ValueError:
        return []
    return times if times and times[0] > 0 else []


def _start(times: list[float], fd: int) -> None:
    import faulthandler
    import threading
    import time

    t0 = time.monotonic()
    name = os.path.basename(sys.argv[0]) if getattr(sys, "argv", None) and sys.argv[0] else "python"

    def run() -> None:
        for t in times:
            time.sleep(max(0.0, t - (time.monotonic() - t0)))
            try:
                os.write(fd, f"\n=== qdq stack dump: pid {os.getpid()} ({name}) at {t:g} s ===\n".encode())
                faulthandler.dump_traceback(file=fd, all_threads=True)
            except OSError:  # the descriptor was closed: nothing left to write to
                return

    threading.Thread(target=run, name="qdq-stack-dumps", daemon=True).start()


def _schedule(spec: str) -> None:
    times = _times(spec)
    if not times:
        sys.stderr.write(f"qdq stack dumps: QDQ_STACK_DUMPS={spec!r}; accepted: seconds > 0 after process "
                         "start, comma-separated (e.g. 60,90,120); no dumps scheduled\n")
        return
    try:
        fd = os.dup(2)
    except OSError:  # no standard error to write to
        return
    os.set_inheritable(fd, False)
    _start(times, fd)
    os.register_at_fork(after_in_child=lambda: _start(times, fd))


def _chain() -> None:
    """Run the next ``sitecustomize.py`` on ``sys.path`` after this one's entry (the one this
    module shadows), if any, skipping other copies of this file."""
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    mine = os.path.realpath(os.path.abspath(__file__))
    entries = [os.path.realpath(os.path.abspath(e or os.getcwd())) for e in sys.path]
    after = entries[entries.index(here) + 1:] if here in entries else entries
    for entry in after:
        path = os.path.join(entry, "sitecustomize.py")
        if not os.path.isfile(path) or os.path.realpath(path) == mine:
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if "qdq stack dump" in text:  # another copy of this hook: passed over
            continue
        exec(compile(text, path, "exec", dont_inherit=True), {"__name__": "sitecustomize", "__file__": path})
        return


if not getattr(sys, "_qdq_stack_dumps", False):  # once a process, however many copies are on the path
    sys._qdq_stack_dumps = True
    if os.environ.get("QDQ_STACK_DUMPS"):
        _schedule(os.environ["QDQ_STACK_DUMPS"])
    _chain()
