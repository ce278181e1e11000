"""``make demo`` while its servers start: a heartbeat naming each log, the log's tail on failure.

The servers here are small real processes (an HTTP server that answers ``/health`` after a
delay, one that exits), so :func:`vllm_qdq.study.server.wait` (``make demo``'s wait, tag ``demo``) runs its real polling loop.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from vllm_qdq.study import server

#: Writes two log lines, sleeps, then serves ``/health`` on argv[1]; or exits 3 when argv[2] is "die".
SERVER = r"""
import http.server, sys, time
print("INFO loading weights", flush=True)
time.sleep(float(sys.argv[3]))
if sys.argv[2] == "die":
    print("ValueError: a clear message", flush=True)
    sys.exit(3)
print("INFO starting the API server", flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _port() -> int:
    return server.free_port()


def _start(tmp_path: Path, label: str, mode: str, delay: float) -> tuple[str, subprocess.Popen, Path]:
    port, log = _port(), tmp_path / f"serve-{label}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), mode, str(delay)],
                                stdout=fh, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", proc, log


def test_heartbeat_names_the_logs_until_healthy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    servers = {"qdq": _start(tmp_path, "qdq", "ok", 3.0), "baseline": _start(tmp_path, "baseline", "ok", 0.0)}
    try:
        server.wait(servers, timeout=60, heartbeat=1.0, tag="demo")
    finally:
        for _, proc, _ in servers.values():
            proc.kill()
            proc.wait()
    out = capsys.readouterr().out
    beats = [ln for ln in out.splitlines() if ln.startswith("demo: waiting for server qdq")]
    assert beats, out
    assert all(str(tmp_path / "serve-qdq.log") in ln for ln in beats), out
    assert any(ln.endswith("INFO loading weights") for ln in beats), out
    assert "demo: server qdq healthy after" in out and "demo: server baseline healthy after" in out, out


def test_a_server_that_exits_raises_with_its_log_tail(tmp_path: Path) -> None:
    servers = {"qdq": _start(tmp_path, "qdq", "die", 0.0)}
    with pytest.raises(RuntimeError) as e:
        server.wait(servers, timeout=60, heartbeat=1.0, tag="demo")
    msg = str(e.value)
    assert "exited with 3" in msg and str(tmp_path / "serve-qdq.log") in msg and "a clear message" in msg, msg


def test_timeout_names_the_log(tmp_path: Path) -> None:
    servers = {"qdq": _start(tmp_path, "qdq", "ok", 30.0)}
    try:
        with pytest.raises(TimeoutError) as e:
            server.wait(servers, timeout=2, heartbeat=1.0, tag="demo")
    finally:
        servers["qdq"][1].kill()
        servers["qdq"][1].wait()
    assert str(tmp_path / "serve-qdq.log") in str(e.value) and "loading weights" in str(e.value), str(e.value)
