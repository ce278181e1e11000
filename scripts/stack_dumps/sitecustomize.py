"""Scheduled stack dumps of every Python process started with this directory on ``PYTHONPATH``.

``QDQ_STACK_DUMPS="60,90,120"``: a daemon thread writes every thread's Python stack
(:func:`faulthandler.dump_traceback`) to the process's stderr at those seconds after the process
started, each dump headed ``=== qdq stack dump: pid P (argv0) at T s ===``; a process that ends
sooner writes none. For finding where a process waits with nothing in its log (the GPU smoke
suite's ``SMOKE_STACK_DUMPS``: vLLM's engine-core processes inherit the variable and the path, and
write to the step's log). Costs nothing until a dump is due, and changes nothing else.

Python imports the first ``sitecustomize`` on ``sys.path``; this one then runs the next one found
on the path, if any, so that a site's own customization still happens. A value that is not a list
of seconds > 0 is said on stderr, naming it, and no dump is scheduled (``scripts/gpu-smoke.sh``
refuses it at start-up before any process gets here).
"""

from __future__ import annotations

import os
import sys


def _schedule(spec: str) -> None:
    import faulthandler
    import threading
    import time

    try:
        times = sorted(float(x) for x in spec.split(","))
    except ValueError:
        times = []
    if not times or times[0] <= 0:
        sys.stderr.write(f"qdq stack dumps: QDQ_STACK_DUMPS={spec!r}; accepted: seconds > 0 after process "
                         "start, comma-separated (e.g. 60,90,120); no dumps scheduled\n")
        return
    t0 = time.monotonic()
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"

    def run() -> None:
        for t in times:
            time.sleep(max(0.0, t - (time.monotonic() - t0)))
            sys.stderr.write(f"\n=== qdq stack dump: pid {os.getpid()} ({name}) at {t:g} s ===\n")
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()

    threading.Thread(target=run, name="qdq-stack-dumps", daemon=True).start()


def _chain() -> None:
    """Run the next ``sitecustomize.py`` on ``sys.path`` (the one this module shadows), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        path = os.path.join(entry or os.getcwd(), "sitecustomize.py")
        if os.path.abspath(os.path.dirname(path)) != here and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                code = compile(f.read(), path, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": path})
            return


if os.environ.get("QDQ_STACK_DUMPS"):
    _schedule(os.environ["QDQ_STACK_DUMPS"])
_chain()
