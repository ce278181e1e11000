"""A vllm-qdq configuration error is the last thing printed, found as early as vLLM allows.

``vllm serve`` (the real CLI, ``vllm_qdq.vllm_cli.vllm_command()``) and ``LLM()`` in a user's
script (a subprocess, vLLM's default multiprocess engine), each with a bad ``VLLM_QDQ_CONFIG``,
a bad ``qdq`` quantization config (``hf_overrides``), a layer pattern that matches no layer, a bad
``kv_cache`` format and a KV layer rule that matches no attention layer:
non-zero exit, the message is the last non-empty line; the CLI exits with status 2 and prints
no traceback after it (none at all when the front process found the error); the first two
never start an engine; the pattern is checked before any weight is read. The time to fail of
each run is printed (``pytest -rA`` shows it). Mechanism: ``vllm_qdq.errors``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vllm_qdq.config import ConfigError
from vllm_qdq.study.server import free_port as _free_port
from vllm_qdq.vllm_cli import vllm_command

REPO = Path(__file__).resolve().parent.parent

#: What ``vllm serve`` does on a vllm-qdq error (vllm_qdq.errors.EXIT_CODE / CLI_PREFIX, stated
#: here so the engine tests run, and fail, on code without that module).
EXIT_CODE = 2
CLI_PREFIX = "vllm-qdq: error: "
#: vLLM prefixes the lines of its processes with ``(APIServer pid=N) `` and the like.
PROC_PREFIX = re.compile(r"^\(\w+ pid=\d+\) ")

BAD_ENV = '{"linear": {"format": "mxfp5"}}'
BAD_ENV_MSG = "linear.format='mxfp5' is not a known format; accepted: off, auto, mxfp4"
BAD_RUN = {"quantization_config": {"quant_method": "qdq", "act": "mxfp5"}}
BAD_RUN_MSG = "qdq quantization_config: act.format='mxfp5' is not a known format; accepted: off, mxfp4"
BAD_PATTERN = {"quantization_config": {"quant_method": "qdq", "layers": [{"pattern": "model.layers.7.*", "skip": True}]}}
BAD_PATTERN_MSG = "qdq method: layer pattern(s) ['model.layers.7.*'] matched no layer of this model"
BAD_KV_ENV = '{"kv_cache": "fp8_e4m3_per_channel"}'
BAD_KV_ENV_MSG = "kv_cache: 'fp8_e4m3_per_channel' is a per-output-channel weight recipe"
BAD_KV_PATTERN = '{"kv_cache": "mxfp4", "layers": [{"pattern": "model.layers.*.mlp", "kv_cache": "off"}]}'
BAD_KV_PATTERN_MSG = "kv_cache / attn_q layer rule(s) ['model.layers.*.mlp'] matched no attention layer of this model"

#: case -> (extra environment, hf_overrides or None, message, found in the front process)
CASES = {
    "env": ({"VLLM_QDQ_CONFIG": BAD_ENV}, None, BAD_ENV_MSG, True),
    "run_config": ({}, BAD_RUN, BAD_RUN_MSG, True),
    "pattern": ({}, BAD_PATTERN, BAD_PATTERN_MSG, False),
    # issue 19: a bad KV format (front process), a KV layer rule matching no attention layer
    # (the plugin, in the worker, right after the model is built)
    "kv_env": ({"VLLM_QDQ_CONFIG": BAD_KV_ENV}, None, BAD_KV_ENV_MSG, True),
    "kv_pattern": ({"VLLM_QDQ": "1", "VLLM_QDQ_CONFIG": BAD_KV_PATTERN}, None, BAD_KV_PATTERN_MSG, False),
}

USER_SCRIPT = """
import json, sys
from vllm import LLM

if __name__ == "__main__":
    kw = {"hf_overrides": json.loads(sys.argv[2])} if sys.argv[2] != "null" else {}
    try:
        LLM(model=sys.argv[1], quantization="qdq", dtype="float32", max_model_len=128,
            enforce_eager=True, **kw)
    except BaseException as e:
        print(f"LLM() raised {type(e).__module__}.{type(e).__qualname__}", file=sys.stderr, flush=True)
        raise
    print("LLM() started an engine", file=sys.stderr)
"""


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_QDQ", "_VLLM_QDQ"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "overlay"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    return env | extra


def _lines(out: str) -> list[str]:
    return [PROC_PREFIX.sub("", ln).rstrip() for ln in out.splitlines() if ln.strip()]


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=540)
    return p.returncode, p.stdout, time.monotonic() - t0


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from vllm_qdq.study.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("errors") / "llama")


def _check_common(case: str, out: str, lines: list[str]) -> None:
    front = CASES[case][3]
    assert lines, "no output"
    if front:  # found in the front process: no engine process ever started
        assert "EngineCore" not in out and "Worker pid" not in out, out[-3000:]
    else:  # found in the worker, before it read any weight
        assert "VllmWorker" in lines[-2] or "VllmWorker" in lines[-3], lines[-3:]
        assert "Loading weights took" not in out, "the pattern was checked after the weights loaded"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_vllm_serve_exits_with_the_message(model, case):
    extra, overrides, msg, front = CASES[case]
    cmd = [*vllm_command(), "serve", str(model), "--quantization", "qdq", "--dtype", "float32",
           "--max-model-len", "128", "--enforce-eager", "--host", "127.0.0.1", "--port", str(_free_port())]
    if overrides is not None:
        cmd += ["--hf-overrides", json.dumps(overrides)]
    rc, out, secs = _run(cmd, _env(extra))
    print(f"time to fail: {secs:.1f} s (exit status {rc})")
    lines = _lines(out)
    assert rc == EXIT_CODE, f"rc={rc}\n{out[-3000:]}"
    assert lines[-1].startswith(CLI_PREFIX + msg), lines[-3:]
    _check_common(case, out, lines)
    if front:
        assert "Traceback" not in out, out[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_llm_raises_with_the_message_last(model, case, tmp_path):
    extra, overrides, msg, front = CASES[case]
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    rc, out, secs = _run([sys.executable, str(script), str(model), json.dumps(overrides)], _env(extra))
    print(f"time to fail: {secs:.1f} s (exit status {rc})")
    lines = _lines(out)
    assert rc != 0, out[-3000:]
    assert lines[-1].startswith("vllm_qdq.config.ConfigError: " + msg), lines[-3:]
    _check_common(case, out, lines)
    if front:  # LLM() itself raised the ConfigError (not pydantic's ValidationError)
        assert "LLM() raised vllm_qdq.config.ConfigError" in lines, lines[-12:]
        assert "ValidationError" not in out


# ----------------------------------------------------------------------------- no engine


def test_config_error_passes_through_pydantic():
    """vLLM's configs are pydantic dataclasses, which bury a ValueError raised inside them."""
    from pydantic.dataclasses import dataclass

    @dataclass
    class Cfg:
        x: int = 0

        def __post_init__(self) -> None:
            raise ConfigError("x='y'; accepted: z")

    with pytest.raises(ConfigError, match="accepted: z"):
        Cfg()


def test_cli_constants():
    from vllm_qdq import errors

    assert (errors.EXIT_CODE, errors.CLI_PREFIX) == (EXIT_CODE, CLI_PREFIX)


def test_own_error_follows_the_chain():
    from vllm_qdq import errors

    e = ConfigError("bad")
    try:
        try:
            raise e
        except ConfigError as inner:
            raise RuntimeError("vLLM's") from inner
    except RuntimeError as outer:
        assert errors.own_error(outer) is e
    assert errors.own_error(RuntimeError("x")) is None


def _child_reports(message: str) -> None:
    from vllm_qdq import errors

    raise errors.reported(ConfigError(message))


def test_engine_process_error_is_recorded_for_the_front(tmp_path, monkeypatch):
    """A multiprocessing child (as vLLM's engine core and workers are) records its error in the
    file the front process named; the first one wins; the front process takes it once."""
    from vllm_qdq import errors

    path = tmp_path / "record.json"
    monkeypatch.setenv(errors.ERROR_FILE_ENV, str(path))
    ctx = multiprocessing.get_context("spawn")
    for message in ("first: pattern ['x'] matched no layer", "second"):
        p = ctx.Process(target=_child_reports, args=(message,), name="VllmWorker-0")
        p.start()
        p.join(60)
        assert p.exitcode == 1
    monkeypatch.setattr(errors, "_front", True)
    assert errors.reported(ConfigError("in the front")) is not None  # not recorded there
    rec = errors.take_recorded()
    assert rec is not None and rec["message"] == "first: pattern ['x'] matched no layer", rec
    assert rec["type"] == "vllm_qdq.config.ConfigError" and rec["process"] == "VllmWorker-0"
    assert errors.take_recorded() is None and not path.exists()
