"""The QDQ server under load and bad input (issue 13; marked ``slow``).

One server for the module: the tiny random Llama (:func:`vllm_qdq.study.tiny.build_study_llama`)
served by the real vLLM CPU engine with ``--quantization qdq`` in vLLM's default compiled mode,
``VLLM_QDQ_STATS`` on, on 127.0.0.1 only (started by :func:`vllm_qdq.study.demo.serve`).

* The bad-input battery (:data:`BAD`): each request gets a 4xx whose message names what was
  wrong, never a 5xx; after each one the server is alive, ``/health`` answers 200 and a normal
  completion succeeds. Streaming clients that hang up mid-stream have their requests aborted
  (nothing left running or waiting in the engine).
* The soak (last: it stops the server): ``vllm bench serve``, :data:`SOAK_REQUESTS` requests at
  concurrency 16, 0 failed, healthy afterwards, and the per-layer statistics complete, checked
  token by token against the server's own Prometheus counters: every linear layer of the model
  has a key, each recorded exactly the tokens the engine computed for the soak, and the file
  read after a graceful stop equals the live one.

Traffic goes to 127.0.0.1 only; every request and loop is bounded in count and time.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from vllm_qdq.stats import FILE_GLOB, KeyStats, load_stats
from vllm_qdq.study import demo
from vllm_qdq.study import run as study
from vllm_qdq.study import server as servers
from vllm_qdq.study.tiny import TINY_CONFIG, build_study_llama

#: Bounds (seconds): server start-up, one HTTP request, one battery test, the soak, the stop.
START_TIMEOUT = 420.0
REQUEST_TIMEOUT = 60.0
TEST_TIMEOUT = 180.0
SOAK_TIMEOUT = 300.0
STOP_TIMEOUT = 60.0

# Every test bounded (its body; the module's server start-up is bounded by START_TIMEOUT).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(TEST_TIMEOUT, func_only=True)]

HOST = "127.0.0.1"
#: Server sizes (see :func:`vllm_qdq.study.demo.serve`): context and logprob limits the battery hits.
MAX_MODEL_LEN = 1024
MAX_LOGPROBS = 20
#: The soak: requests, concurrency, prompt and output tokens per request.
SOAK_REQUESTS = 256
SOAK_CONCURRENCY = 16
SOAK_INPUT_LEN = 32
SOAK_OUTPUT_LEN = 16


@dataclass
class Server:
    """The module's QDQ server."""

    proc: subprocess.Popen
    port: int
    model: Path
    stats_dir: Path
    log: Path
    out: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:
    """One HTTP request to the server; returns (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _completion(server: Server, **kw: object) -> bytes:
    body = {"model": str(server.model), "prompt": "The quick brown fox", "max_tokens": 4}
    body.update(kw)
    return json.dumps(body).encode()


def _error_message(data: bytes) -> str:
    """The error text of a vLLM (``{"error": {"message"}}``) or Starlette (``{"detail"}``) reply."""
    try:
        d = json.loads(data)
    except ValueError:
        return data.decode(errors="replace")
    if isinstance(d, dict) and isinstance(d.get("error"), dict):
        return str(d["error"].get("message", ""))
    if isinstance(d, dict) and "detail" in d:
        return str(d["detail"])
    return data.decode(errors="replace")


def _metrics(server: Server) -> dict[str, float]:
    """The server's Prometheus counters and gauges, summed over labels (``name`` and
    ``name{label=value}`` keys)."""
    status, data = _request(server.port, "GET", "/metrics")
    assert status == 200, f"/metrics answered {status}"
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(data.decode()):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
            for k, v in s.labels.items():
                if k not in ("engine", "model_name"):
                    key = f"{s.name}{{{k}={v}}}"
                    out[key] = out.get(key, 0.0) + s.value
    return out


def _assert_serving(server: Server, after: str) -> None:
    """The server process is alive, /health answers 200 and a normal completion succeeds."""
    assert server.proc.poll() is None, f"server exited ({server.proc.returncode}) after {after}:\n{server.log_tail()}"
    status, _ = _request(server.port, "GET", "/health")
    assert status == 200, f"/health answered {status} after {after}"
    status, data = _request(server.port, "POST", "/v1/completions", _completion(server, ignore_eos=True))
    assert status == 200, f"a normal completion got {status} after {after}: {data[:500]!r}"
    assert json.loads(data)["usage"]["completion_tokens"] == 4, data[:500]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    out = tmp_path_factory.mktemp("serve_load")
    model = build_study_llama(out / "model")
    stats_dir = out / "stats"
    log = out / "serve.log"
    port = servers.free_port()
    t0 = time.monotonic()
    proc = demo.serve(model, port, qdq=True, log=log, cpus=servers.cpu_sets(1)[0], stats_dir=stats_dir,
                      max_model_len=MAX_MODEL_LEN, enforce_eager=False)
    srv = Server(proc, port, model, stats_dir, log, out)
    try:
        servers.wait({"qdq": (srv.url, proc, log)}, START_TIMEOUT, tag="demo")
        srv.timings["start_s"] = time.monotonic() - t0
        yield srv
    finally:
        servers.stop(proc, STOP_TIMEOUT)


# ----------------------------------------------------------------------------- the battery

#: A bad request: (path, body builder, expected status, words the message must contain).
Case = tuple[str, Callable[[Server], bytes], int, tuple[str, ...]]


def _raw(text: bytes) -> Callable[[Server], bytes]:
    return lambda s: text


def _with(**kw: object) -> Callable[[Server], bytes]:
    return lambda s: _completion(s, **kw)


BAD: dict[str, Case] = {
    "malformed_json": ("/v1/completions", _raw(b'{"model": "m", "prompt": '), 400, ("JSON decode error",)),
    "json_not_an_object": ("/v1/completions", _raw(b"[1, 2, 3]"), 400, ("valid dictionary",)),
    "empty_body": ("/v1/completions", _raw(b""), 400, ("Field required",)),
    "chat_malformed_json": ("/v1/chat/completions", _raw(b'{"messages": [}'), 400, ("JSON decode error",)),
    "unknown_model": ("/v1/completions", _with(model="no-such-model"), 404, ("no-such-model", "does not exist")),
    "chat_unknown_model": (
        "/v1/chat/completions",
        lambda s: json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        404, ("no-such-model", "does not exist"),
    ),
    "negative_max_tokens": ("/v1/completions", _with(max_tokens=-1), 400, ("max_tokens", "-1")),
    "zero_max_tokens": ("/v1/completions", _with(max_tokens=0), 400, ("max_tokens", "0")),
    "huge_max_tokens": ("/v1/completions", _with(max_tokens=10**9), 400, ("max_tokens=1000000000", "max_model_len")),
    "int64_overflow_max_tokens": ("/v1/completions", _with(max_tokens=2**63), 400, ("max_tokens", str(2**63))),
    "string_max_tokens": ("/v1/completions", _with(max_tokens="lots"), 400, ("max_tokens", "valid integer")),
    "over_long_prompt_text": ("/v1/completions", _with(prompt="fox " * 3000), 400, ("maximum context length",)),
    "over_long_prompt_ids": ("/v1/completions", _with(prompt=[5] * (MAX_MODEL_LEN + 10)), 400,
                             ("maximum context length", f"{MAX_MODEL_LEN + 10} input tokens")),
    "prompt_plus_max_tokens_too_long": ("/v1/completions", _with(prompt=[5] * 1000, max_tokens=100), 400,
                                        ("maximum context length",)),
    "out_of_vocabulary_ids": ("/v1/completions", _with(prompt=[10**6, 3]), 400, ("1000000", "out of vocabulary")),
    "negative_token_ids": ("/v1/completions", _with(prompt=[-1, 3]), 400, ("greater than or equal to 0",)),
    "huge_logprobs": ("/v1/completions", _with(logprobs=10**6), 400, ("logprobs", "1000000", f"{MAX_LOGPROBS}")),
    "logprobs_one_over_limit": ("/v1/completions", _with(logprobs=MAX_LOGPROBS + 1), 400,
                                ("logprobs", f"{MAX_LOGPROBS + 1}")),
    "huge_prompt_logprobs": ("/v1/completions", _with(prompt_logprobs=10**6), 400, ("prompt logprobs", "1000000")),
    "logprobs_minus_one_is_whole_vocabulary": ("/v1/completions", _with(logprobs=-1), 400,
                                               ("logprobs", f"max allowed: {MAX_LOGPROBS}")),
    "huge_n": ("/v1/completions", _with(n=10**6), 400, ("n must be at most",)),
    "prompt_list_too_long": ("/v1/completions", _with(prompt=["hi"] * 100_000), 400, ("100000", "prompt list")),
    "seed_over_int64": ("/v1/completions", _with(seed=2**64), 400, ("seed", str(2**64))),
    "logit_bias_out_of_vocabulary": ("/v1/completions", _with(logit_bias={"1000000": 5}), 400,
                                     ("logit_bias", "1000000")),
    "invalid_regex": ("/v1/completions", _with(structured_outputs={"regex": "(["}), 400, ("invalid regex",)),
    "text_plain_content_type": ("/v1/completions", _with(), 400, ("application/json",)),
    "nesting_100k_deep": ("/v1/completions", _raw(b"[" * 100_000 + b"]" * 100_000), 400,
                          ("error parsing the body",)),
    "nan_temperature": ("/v1/completions", lambda s: _completion(s, temperature=float("nan")), 400,
                        ("temperature", "nan")),
    "oversized_body_16mib_prompt": ("/v1/completions", _with(prompt="a" * (16 << 20)), 400,
                                    ("maximum context length", "16777216 characters")),
    "non_utf8_in_json_string": (
        "/v1/completions", lambda s: b'{"model": "' + str(s.model).encode() + b'", "prompt": "\xff\xfe\xfa"}',
        400, ("error parsing the body",),
    ),
    "non_utf8_binary_body": ("/v1/completions", _raw(bytes(range(128, 256)) * 64), 400,
                             ("error parsing the body",)),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_a_clear_4xx(server: Server, name: str) -> None:
    """Each bad request: the expected 4xx with a message naming the problem; then still serving."""
    path, build, want, words = BAD[name]
    headers = {"Content-Type": "text/plain"} if name == "text_plain_content_type" else None
    status, data = _request(server.port, "POST", path, build(server), headers)
    msg = _error_message(data)
    assert status < 500, f"{name}: server error {status}: {msg[:1000]}"
    assert status == want, f"{name}: status {status}, expected {want}: {msg[:1000]}"
    missing = [w for w in words if w.lower() not in msg.lower()]
    assert not missing, f"{name}: message lacks {missing}: {msg[:1000]}"
    _assert_serving(server, name)


#: Odd input that vLLM 0.30 accepts (answers 200; measured): a 4xx would do as well, a 5xx not.
ODD: dict[str, Callable[[Server], bytes]] = {
    # no request-size limit in vLLM or uvicorn: unknown fields are ignored (one log line)
    "oversized_body_32mib_unknown_field": lambda s: _completion(s, padding="x" * (32 << 20)),
    "top_k_over_vocabulary": _with(top_k=10**9),  # clamped to the vocabulary
    "best_of_huge": _with(n=2, best_of=10**6),  # best_of is ignored by vLLM's V1 engine
    "logit_bias_1e30": _with(logit_bias={"5": 1e30}),
    "seed_minus_one": _with(seed=-1),
}


@pytest.mark.parametrize("name", list(ODD))
def test_odd_input_is_answered_not_a_5xx(server: Server, name: str) -> None:
    """Input vLLM accepts though it is odd: answered 200 or 4xx (never 5xx); still serving."""
    status, data = _request(server.port, "POST", "/v1/completions", ODD[name](server))
    assert status == 200 or 400 <= status < 500, f"{name}: {status}: {_error_message(data)[:1000]}"
    _assert_serving(server, name)


def _start_stream(server: Server, max_tokens: int) -> socket.socket:
    """Open a streamed completion and read until the first data chunk arrives."""
    body = _completion(server, stream=True, max_tokens=max_tokens, ignore_eos=True)
    s = socket.create_connection((HOST, server.port), timeout=REQUEST_TIMEOUT)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % (HOST.encode(), len(body)) + body)
    got = b""
    while b"data:" not in got:
        chunk = s.recv(4096)
        assert chunk, f"stream closed before its first chunk: {got[:500]!r}"
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got[:500]
    return s


def test_streaming_clients_that_disconnect(server: Server) -> None:
    """Clients hang up mid-stream (FIN and RST) and mid-body: the engine aborts their requests
    (none left running or waiting, not all their tokens generated) and goes on serving."""
    n, max_tokens = 8, 512
    before = _metrics(server)
    socks = [_start_stream(server, max_tokens) for _ in range(n)]
    for i, s in enumerate(socks):
        if i % 2:  # RST instead of FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    # a client that announces a body and hangs up half-way through it
    s = socket.create_connection((HOST, server.port), timeout=REQUEST_TIMEOUT)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"model\": ")
    s.close()
    deadline = time.monotonic() + 60
    while True:
        m = _metrics(server)
        idle = m.get("vllm:num_requests_running", 0) == 0 and m.get("vllm:num_requests_waiting", 0) == 0
        if idle or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert idle, f"disconnected streams still in the engine after 60 s: running {m.get('vllm:num_requests_running')}, " \
                 f"waiting {m.get('vllm:num_requests_waiting')}"
    generated = m.get("vllm:generation_tokens_total", 0) - before.get("vllm:generation_tokens_total", 0)
    assert generated < n * max_tokens, f"disconnected streams ran to completion ({generated:.0f} tokens)"
    _assert_serving(server, "disconnected streams")


# ----------------------------------------------------------------------------- the soak (stops the server)


def _layer_inputs() -> dict[str, int]:
    """Every linear layer of the tiny Llama that the ``qdq`` method QDQs, with its input size K."""
    c = TINY_CONFIG
    hidden, inter = c["hidden_size"], c["intermediate_size"]
    attn = c["num_attention_heads"] * (hidden // c["num_attention_heads"])
    out: dict[str, int] = {}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out |= {f"{p}.self_attn.qkv_proj": hidden, f"{p}.self_attn.o_proj": attn,
                f"{p}.mlp.gate_up_proj": hidden, f"{p}.mlp.down_proj": inter}
    return out


def _by_layer(rows: list[KeyStats]) -> dict[str, KeyStats]:
    out: dict[str, KeyStats] = {}
    for k in rows:
        assert k.op not in out, f"layer {k.op} recorded under two formats: {out[k.op].fmt}, {k.fmt}"
        out[k.op] = k
    return out


@pytest.mark.timeout(SOAK_TIMEOUT + 2 * STOP_TIMEOUT + TEST_TIMEOUT, func_only=True)
def test_soak_then_graceful_stop_keeps_complete_stats(server: Server) -> None:
    """``vllm bench serve``: SOAK_REQUESTS requests at concurrency 16 -> 0 failed, healthy after;
    every layer's statistics grew by exactly the tokens the engine computed for them; the file
    read after a graceful stop equals the live one."""
    assert server.proc.poll() is None, f"server exited before the soak:\n{server.log_tail()}"
    layers = _layer_inputs()
    stats_before = _by_layer(load_stats(server.stats_dir))
    m0 = _metrics(server)
    t0 = time.monotonic()
    result = study.run_bench(server.url, "soak", str(server.model), server.out, num_prompts=SOAK_REQUESTS,
                             input_len=SOAK_INPUT_LEN, output_len=SOAK_OUTPUT_LEN,
                             max_concurrency=SOAK_CONCURRENCY, num_warmups=0)
    soak_s = time.monotonic() - t0
    assert soak_s < SOAK_TIMEOUT, f"soak took {soak_s:.0f} s"
    res = json.loads(Path(result).read_text())
    errors = [e for e in res.get("errors", []) if e]
    assert res["failed"] == 0 and res["completed"] == SOAK_REQUESTS, \
        f"completed {res['completed']}, failed {res['failed']}; first errors: {errors[:3]}"
    assert res["total_output_tokens"] == SOAK_REQUESTS * SOAK_OUTPUT_LEN
    # The server counts a request once its last output is processed: wait for all of them.
    deadline = time.monotonic() + 30
    while True:
        m1 = _metrics(server)
        done = round(m1.get("vllm:request_success_total", 0) - m0.get("vllm:request_success_total", 0))
        if done >= SOAK_REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done >= SOAK_REQUESTS, f"the server counted {done} finished requests of {SOAK_REQUESTS} after 30 s"
    stats_live = _by_layer(load_stats(server.stats_dir))  # written at the end of every engine step

    def delta(name: str) -> int:
        return round(m1.get(name, 0.0) - m0.get(name, 0.0))

    requests = delta("vllm:request_success_total")
    generated = delta("vllm:generation_tokens_total")
    computed_prompt = delta("vllm:prompt_tokens_by_source_total{source=local_compute}")
    preempted = delta("vllm:num_preemptions_total")
    assert preempted == 0, f"{preempted} preemptions: recomputed tokens make the exact count below loose"
    # Every request's prompt tokens not found in the prefix cache, plus every generated token
    # but the last (it is sampled, never fed back), passed once through every linear layer.
    tokens = computed_prompt + generated - requests
    server.timings |= {"soak_s": soak_s, "requests": requests, "tokens": tokens,
                       "req_per_s": res["request_throughput"], "output_tok_per_s": res["output_throughput"],
                       "ttft_p50_ms": res.get("median_ttft_ms", float("nan")),
                       "tpot_p50_ms": res.get("median_tpot_ms", float("nan"))}
    assert sorted(stats_live) == sorted(layers), f"layers with statistics {sorted(stats_live)} != {sorted(layers)}"
    steps = set()
    for name, k_in in layers.items():
        now, was = stats_live[name], stats_before.get(name)
        calls = now.calls - (was.calls if was else 0)
        numel = now.numel - (was.numel if was else 0)
        assert numel == tokens * k_in, \
            f"{name}: {numel} elements recorded for the soak, expected {tokens} tokens x {k_in}"
        steps.add(calls)
        assert now.fmt == "mxfp4" and now.nonfinite == 0, (name, now.fmt, now.nonfinite)
        assert 5.0 < now.sqnr_db < 40.0, f"{name}: SQNR {now.sqnr_db:.1f} dB"
    assert len(steps) == 1, f"layers recorded different numbers of forward calls: {steps}"
    calls = steps.pop()
    per_req = SOAK_OUTPUT_LEN  # forwards each request takes part in (1 prefill + the decodes)
    assert requests * per_req / SOAK_CONCURRENCY <= calls <= requests * per_req, \
        f"{calls} forward calls per layer for {requests} requests of {per_req} forwards"

    # graceful stop: nothing lost, nothing half-written
    _assert_serving(server, "the soak")
    stats_live = _by_layer(load_stats(server.stats_dir))
    t0 = time.monotonic()
    servers.stop(server.proc, STOP_TIMEOUT)
    server.timings |= {"stop_s": time.monotonic() - t0, "exit_code": server.proc.returncode}
    assert server.proc.returncode != -9, "the server needed SIGKILL to stop"
    files = sorted(p.name for p in server.stats_dir.iterdir())
    assert files and all(p.startswith("qdq-stats-") and p.endswith(".jsonl") for p in files), files
    for p in server.stats_dir.glob(FILE_GLOB):
        for line in p.read_text().splitlines():
            json.loads(line)
    stats_stopped = _by_layer(load_stats(server.stats_dir))
    assert {n: (k.calls, k.numel) for n, k in stats_stopped.items()} == \
        {n: (k.calls, k.numel) for n, k in stats_live.items()}
    print(f"serve_load: {json.dumps(server.timings)}", flush=True)
