"""vLLM throughput with activation QDQ off vs on, measured interleaved on one GPU.

    python scripts/bench_plugin_throughput.py [--models gptoss,dense] [--pairs 5] [--budget-s S]
                                              [--target 0.97] [--together]
                                              [--out DIR] [--json FILE] [--shapes prefill,decode]
                                              [--kv-cache FORMAT [--attn-q FORMAT] [--kv-shapes decode]
                                               [--no-act]] [--cpus LIST] [--no-device-steps]

Models (random weights, built once under ``--out``, :mod:`vllm_qdq.study.tiny`; ``--build-only``
builds them and exits):

* ``gptoss``: gpt-oss-shaped MXFP4 MoE (hidden 2880, intermediate 2880, 32 experts, top-4,
  4 layers, 64 query / 8 KV heads of 64) served with ``moe_backend="marlin"``: the plugin wraps
  ``moe_wna16_marlin_gemm`` (W4A16 -> W4A4 mxfp4);
* ``dense``: Llama-shaped dense model (hidden 4096, MLP 14336, 32 / 8 heads of 128, 4 layers)
  quantized online to FP8 with ``linear_backend="marlin"``: the plugin wraps ``marlin_gemm``
  (FP8 weight-only -> mxfp8_e4m3 activations).

Shapes: ``prefill`` (256 prompts x 512 tokens in, 128 out) and ``decode`` (64 prompts x 128
in, 1024 out), ``ignore_eos``, random token ids (the same for both engines).

How it measures on a machine whose speed drifts (~30% between runs here): per model, engines
with vLLM's defaults (torch.compile + CUDA graphs), ``VLLM_QDQ=0`` (``off``) and ``VLLM_QDQ=1``
(``on``), each in its own worker process, stay up side by side, with a second ``VLLM_QDQ=0``
engine, ``aa``, as the A/A control (``--no-aa`` leaves it out): its ratio to ``off`` would be 1
on a perfect bench, so its row shows the bench's own noise and any bias tied to an engine's
slot (start order, memory placement). Each engine gets a fixed KV cache
(``kv_cache_memory_bytes``: ``QDQ_BENCH_KV_BYTES``, default 8 GiB, room for every token of
both shapes at once on both models), with which vLLM skips its memory profiling, so they
start at the same time; ``QDQ_BENCH_KV_BYTES=0``: profiled (``QDQ_BENCH_GPU_UTIL``, 0.4 each),
each engine starting once the last is up (vLLM's profiler fails beside a starting engine).
Each engine runs every shape's whole batch once, untimed, before it reports ready (its first
batch of a shape pays one-time costs: kernel JIT and autotuning, allocator growth). Then
``--pairs`` rounds (with ``--budget-s``, as many of them as fit in that many seconds per model,
engine starts included, and at least 3: the smoke suite's steps must end inside a call); in a
round each shape runs ``reps`` batches on each engine (``reps``:
enough for about ``--min-seconds`` per engine, 4 s), one batch per engine per turn, the order
cycling turn by turn through a balanced set of orders (within a turn, each engine in each
position, and directly after each other engine, equally often over ``len(engines)`` turns,
twice that for an odd count; off-on, on-off, ... with two), the others idle. A turn's batches
are seconds apart, so slow drift cancels in its ratio
``t_off / t_q`` (= throughput of ``q`` over ``off``); a row reports the median of its
``rounds x reps`` ratios with a 95% bootstrap interval of that median, min and max, and the
median tok/s of each engine. Each batch is also timed on the engine core's own clock (one stamp
per core step that returns tokens, :class:`CoreSteps`): a row reports the ratio of the median
step times, and of the mean ones, too, and the best-batch ratio (each engine's least median
step time over the row's batches, :func:`_best`); prefill-heavy rows are judged on the median of
wall-time ratios, decode-heavy rows on a bound (below; ``JUDGED_ON`` says why). Each batch also records where the front end's and the engine core's threads
ran (:class:`HostProbe`: CPU seconds, preemptions, CPUs, the time stolen from the engine
core's CPUs and their clock), and ``--cpus`` pins every engine to a CPU list. Each engine's
worker carries a step timer (:class:`StepTimer`, a vLLM worker extension; ``--no-device-steps``
leaves it out) that times every step's model-runner calls on the device's clock, so a row
also reports the ratio of the steps' device spans: the device's share of a step, which a
host-bound decode step hides (a span also holds the device's waits for the host inside the
calls, so a slow host lengthens it too). Before the rounds, each engine also runs two untimed
decode-shape batches in one torch profiler session (:func:`profile_batch`), whose difference gives
the device time per decode step (its records' summed durations: kernels, copies, memsets) over
contexts of 128 to 384 tokens (the timed batches reach 1,152): the ``kernel`` column, QDQ's
device cost with no host state in it, and the ``bound`` column, on which decode-heavy rows are
judged: ``off / (off + added)``, the off engine's best median step and the device time QDQ adds
to a decode step: the on/off ratio that QDQ's added device time alone allows, if the host's
work per step is the same on and off (checked as far as the host's launch calls go, in the same
profile) and none of the added time is hidden behind the host's (:func:`step_bound`). The
prefill-heavy shape's prompts are profiled too, once per engine: the ``kernel`` column of its
rows is the ratio of the device time of one whole timed batch, off over on (its prefill and
its 128 decode steps), reported, not judged; the same profile
gives the host time of QDQ's eager calls in that batch (prefill steps longer than the CUDA
graphs' sizes run outside a graph), and prefill-heavy rows are judged on ``bound`` too:
:func:`batch_bound`, QDQ's added device time plus that host time on the off engine's best
batch (since 2026-12-04, after two prefill rows missed the target on wall time with the A/A
control's own wall figure at 0.95-0.98). Exit 1
when a QDQ row's judged ratio is below ``--target`` (or a row has no profile, adds host
launches outside QDQ's calls, or its A/A control's bound misses the target); the A/A row is not
judged itself, but its bound gates the QDQ rows' verdicts; a row that falls back to wall time
(no core-step times) reports its A/A control with a warning when it sits outside the target's
margin or its interval misses 1 (then the verdicts are within the bench's noise). 2026-12-02d, before
this design: five 4-s measurements per engine (dense prefill) gave ratios 0.77-1.08 and
gpt-oss prefill a median of 1.112 (QDQ faster than off): noise or a bias, which that bench
could not tell apart.

``--together`` (several models): every model's engines start at once, so the run pays one
start-up (~90 s on one H200 for four engines: Python imports in 2 x 4 processes, then compiles)
instead of one per model; then each model's calibration and profiles, then rounds of every model
in turn (model A's round, model B's round, ...), ``--budget-s`` for the whole run. The engines of
the model not being timed sit idle (no step runs: no device or host work of theirs in the other's
batches). Each engine's KV cache is then ``TOGETHER_KV_BYTES`` (4 GiB) unless
``QDQ_BENCH_KV_BYTES`` is set: eight engines of 8 GiB would not fit an 80-GB GPU.

``--kv-cache FORMAT`` adds an engine, ``kv`` (issue 19): ``VLLM_QDQ=1`` with
``{"kv_cache": FORMAT, "linear": "off", "moe": "off"}`` (``--attn-q`` adds the query QDQ), up
beside the others and timed in the same turns on ``--kv-shapes`` (default: the decode
shape); its rows' ratio is the cost of QDQ'ing
each layer's keys and values as they are written to the paged cache (and of the query, with
``--attn-q``), against the same ``off`` engine. ``--no-act`` leaves the activation engine out.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: shape -> (prompts, input tokens, output tokens)
SHAPES: dict[str, tuple[int, int, int]] = {"prefill": (256, 512, 128), "decode": (64, 128, 1024)}
#: model -> (description, LLM keyword arguments)
MODELS: dict[str, tuple[str, dict]] = {
    "gptoss": ("gpt-oss-shaped MXFP4 MoE (hidden 2880, 32 experts top-4, 4 layers), moe_backend=marlin",
               {"moe_backend": "marlin"}),
    "dense": ("Llama-shaped dense (hidden 4096, MLP 14336, 4 layers), online FP8, linear_backend=marlin",
              {"quantization": "fp8", "linear_backend": "marlin"}),
}

#: every engine's max_model_len: the longest shape, and a margin
MAX_LEN = max(i + o for _, i, o in SHAPES.values()) + 16


def device_steps_on() -> bool:
    """Whether the workers carry the step timer and profile (``QDQ_BENCH_DEVICE_STEPS``, set by
    ``--no-device-steps``; default on)."""
    return os.environ.get("QDQ_BENCH_DEVICE_STEPS", "1") != "0"


#: each engine's KV cache with ``--together`` and several models (unless ``QDQ_BENCH_KV_BYTES`` says
#: otherwise): eight engines of 8 GiB would not fit an 80-GB GPU; 4 GiB still holds every token of
#: the larger shape at once (256 x 640 tokens: 2.5 GiB on the dense model, 16 KiB a token)
TOGETHER_KV_BYTES = 4 << 30


def kv_bytes() -> int:
    """Each engine's fixed KV-cache size (``QDQ_BENCH_KV_BYTES``, default 8 GiB; 0: profiled)."""
    from vllm_qdq.config import env_int

    n = env_int("QDQ_BENCH_KV_BYTES", 8 << 30)
    if n is None or n < 0:
        raise SystemExit(f"QDQ_BENCH_KV_BYTES={n!r}; accepted: an integer >= 0 (0: vLLM profiles memory)")
    return n


def build(name: str, root: Path) -> Path:
    """Build (once; a ``.done`` marker says it is complete) the benchmark model ``name``."""
    from vllm_qdq.study.tiny import build_once, build_tiny_gptoss_mxfp4, build_tiny_llama

    if name == "gptoss":
        return build_once(root / "bench-gptoss", build_tiny_gptoss_mxfp4, hidden=2880, experts=32, layers=4,
                          intermediate=2880, top_k=4, heads=64, kv_heads=8, head_dim=64)
    return build_once(root / "bench-dense", build_tiny_llama, hidden=4096, intermediate=14336, heads=32,
                      kv_heads=8, head_dim=128, layers=4, std=0.02, max_position=MAX_LEN)


def parse_cpus(text: str) -> set[int]:
    """A CPU list as Linux writes it (``0-7,16-23``) -> the set of CPU numbers; ValueError on
    anything else."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()) or (sep and int(hi) < int(lo)):
            raise ValueError(part)
        cpus.update(range(int(lo), int(hi if sep else lo) + 1))
    if not cpus:
        raise ValueError(text)
    return cpus


def cpu_ranges(cpus: set[int]) -> str:
    """The set of CPU numbers as a Linux CPU list (``{0, 1, 2, 5}`` -> ``0-2,5``)."""
    out, xs = [], sorted(cpus)
    for _, g in itertools.groupby(enumerate(xs), lambda t: t[1] - t[0]):
        run = [v for _i, v in g]
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}")
    return ",".join(out)


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def host_topology() -> dict:
    """What the bench's CPUs are: the ones this process may run on, the NUMA nodes' CPU lists,
    the sets of SMT siblings, and the CPUs local to each NVIDIA PCI device (from ``/sys``; empty
    where the host does not say). Printed and kept with every row: where an engine's threads run
    is the likeliest cause of its slow decode batches (results/h200-2026-12-03d)."""
    nodes = {n.name: _read(f"{n}/cpulist") for n in sorted(Path("/sys/devices/system/node").glob("node[0-9]*"))}
    smt = sorted({_read(f"{c}/topology/thread_siblings_list")
                  for c in Path("/sys/devices/system/cpu").glob("cpu[0-9]*")} - {""})
    gpus = {d.name: _read(f"{d}/local_cpulist") for d in sorted(Path("/sys/bus/pci/devices").glob("*"))
            if _read(f"{d}/vendor") == "0x10de" and _read(f"{d}/class").startswith("0x03")}
    return {"allowed": sorted(os.sched_getaffinity(0)), "numa_nodes": nodes,
            "smt_siblings": [s for s in smt if "," in s or "-" in s], "gpu_local_cpus": gpus}


class HostProbe:
    """Where a process tree's threads ran during a batch, from ``/proc`` (read before and after
    the timed call, never inside it): per process, CPU seconds used, involuntary context switches
    (preemptions by other work) and the CPUs its busy threads were last seen on. Linux only;
    elsewhere (or for a process gone meanwhile) the figures are simply absent. ``children`` of
    a task is what ``/proc`` lists (exact for the long-lived engine core; a process started and
    gone between two reads is missed). The ``core`` is the busiest descendant at any depth: the engine core, whose busy
    loop outruns any helper process (resource tracker, compile workers) during a batch."""

    _TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()

    def _tree(self) -> list[int]:
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            for t in Path(f"/proc/{p}/task").glob("*"):
                todo += [int(c) for c in _read(f"{t}/children").split()]
        return out

    def snapshot(self) -> dict[int, dict[int, tuple[float, int, int]]]:
        """pid -> tid -> (CPU seconds, last CPU, involuntary context switches)."""
        snap: dict[int, dict[int, tuple[float, int, int]]] = {}
        for pid in self._tree():
            threads = {}
            for t in Path(f"/proc/{pid}/task").glob("*"):
                stat = _read(f"{t}/stat")
                fields = stat[stat.rfind(")") + 2:].split()  # after the command name
                if len(fields) < 37:
                    continue
                nv = 0
                for line in _read(f"{t}/status").splitlines():
                    if line.startswith("nonvoluntary_ctxt_switches:"):
                        nv = int(line.split()[1])
                threads[int(t.name)] = ((int(fields[11]) + int(fields[12])) / self._TICK, int(fields[36]), nv)
            if threads:
                snap[pid] = threads
        return snap

    @staticmethod
    def delta(before: dict, after: dict, seconds: float) -> dict:
        """``front`` (the probed process) and ``core`` (its busiest descendant): CPU seconds,
        involuntary context switches, and the last CPU of each thread that used >= 5% of
        ``seconds``."""
        procs = {}
        for pid, threads in after.items():
            old = before.get(pid, {})
            cpu, nv, busy = 0.0, 0, set()
            for t, (c, k, n) in threads.items():
                c0, _, n0 = old.get(t, (0.0, 0, 0))  # a thread started meanwhile counts from zero
                cpu += c - c0
                nv += n - n0
                if c - c0 >= 0.05 * seconds:
                    busy.add(k)
            procs[pid] = {"pid": pid, "cpu_s": round(cpu, 3), "nvcsw": nv, "busy_cpus": sorted(busy)}
        if not procs:
            return {}
        front = procs.pop(next(iter(after)))  # the probed process: the tree's root, listed first
        core = max(procs.values(), key=lambda d: d["cpu_s"], default=None)
        return {"front": front, "core": core}

    @staticmethod
    def cpus() -> dict[int, tuple[float, float | None]]:
        """Every CPU's state now: CPU -> (seconds stolen from it so far, ``steal`` of
        ``/proc/stat``: time a hypervisor ran something else while this guest's CPU had work;
        its clock in MHz, ``cpu MHz`` of ``/proc/cpuinfo``, None where not listed: on many
        virtual machines that is the nominal clock, fixed, not the running one). ``{}`` off
        Linux; a line that does not parse is left out."""
        steal: dict[int, float] = {}
        for line in _read("/proc/stat").splitlines():
            f = line.split()
            if len(f) > 8 and f[0].startswith("cpu") and f[0][3:].isdigit() and f[8].isdigit():
                steal[int(f[0][3:])] = int(f[8]) / HostProbe._TICK
        mhz: dict[int, float] = {}
        cpu = None
        for line in _read("/proc/cpuinfo").splitlines():
            key, _, val = line.partition(":")
            try:
                if key.strip() == "processor":
                    cpu = int(val)
                elif key.strip() == "cpu MHz" and cpu is not None:
                    mhz[cpu] = float(val)
            except ValueError:
                continue
        return {c: (s, mhz.get(c)) for c, s in steal.items()}

    @staticmethod
    def cpu_state(before: dict, after: dict, cpus: list[int], seconds: float) -> dict:
        """What ``cpus`` (the CPUs a busy thread was last seen on, :meth:`delta`: where it ran at
        the end, not necessarily throughout) went through in ``seconds`` between two
        :meth:`cpus` readings: ``steal``, the share of that time stolen from them (their stolen
        seconds over ``seconds`` x their count), and ``mhz``, their mean clock at the end (where
        listed). ``{}`` without readings for them."""
        have = [c for c in cpus if c in before and c in after]
        if not have or seconds <= 0:
            return {}
        out = {"steal": round(sum(after[c][0] - before[c][0] for c in have) / (seconds * len(have)), 4)}
        clocks = [after[c][1] for c in have if after[c][1] is not None]
        if clocks:
            out["mhz"] = round(statistics.fmean(clocks))
        return out


# ----------------------------------------------------------------------------- worker


def _params(max_tokens: int):
    """Greedy, ``max_tokens`` exactly (``ignore_eos``), no detokenization: the token ids are
    random and their text is never read, so the engine's throughput is timed without the
    front end's string work (vLLM's own throughput bench offers the same switch); it makes
    QDQ's share of the time larger, not smaller."""
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False)


class CoreSteps:
    """The engine core's own clock, one reading per scheduler step: wraps ``get_output`` of an
    ``LLM``'s engine-core client (one ``EngineCoreOutputs`` per core step, stamped with
    ``time.monotonic()`` where the core made it, in its own process) and keeps the stamps of
    the steps that returned tokens. The stamps cost nothing and change nothing the engine does."""

    def __init__(self, llm) -> None:
        core = llm.llm_engine.engine_core
        get = core.get_output
        self.stamps: list[float] = []

        def get_output(*args, **kwargs):
            out = get(*args, **kwargs)
            if out.outputs:
                self.stamps.append(out.timestamp)
            return out

        core.get_output = get_output

    def intervals(self) -> list[float]:
        """Seconds between consecutive stamps since the last call (then forgotten): each spans
        one token-returning core step (its scheduling, forward pass, sampling) and whatever came
        between it and the one before (a chunked-prefill step that returned no token, an idle
        gap); the first step of a batch starts no interval."""
        st, self.stamps = self.stamps, []
        return [b - a for a, b in itertools.pairwise(st)]


#: the host records of QDQ's own calls: the ops of the ``vllm_qdq`` library
#: (:mod:`vllm_qdq.activation.ops`), named ``vllm_qdq::<op>`` by the dispatcher; in a CUDA graph's
#: replay they run no host code and leave no record
QDQ_OP_PREFIX = "vllm_qdq::"
#: the names kineto gives CUPTI's synchronization records: waits, not work (a host waiting for
#: the device, or a stream for another stream's event); torch's profiler reports them only when
#: asked (its experimental config), so normally none come
SYNC_RECORDS = frozenset({"Event Sync", "Stream Wait Event", "Stream Sync", "Context Sync", "Unknown Sync"})


class StepTimer:
    """A vLLM worker extension (``worker_extension_cls``, mixed into the engine's worker, in the
    engine-core process): :meth:`qdq_bench_time_steps` wraps the model runner's
    ``execute_model`` and ``sample_tokens`` so that each call is timed on the device, CUDA events
    recorded on the current stream at its entry and exit (on a CPU worker, where the forward
    pass runs synchronously inside the call, the host clock); :meth:`qdq_bench_step_times`
    returns each step's time (its ``execute_model`` call and the ``sample_tokens`` calls after
    it, summed) since the last reading and forgets them. On the GPU an event pair spans, on the
    device's clock, from the stream reaching the call's first event to its last kernel: the
    step's kernels and every wait of an idle device for the host inside the call (preparing the
    inputs before the forward pass, launching what runs outside a CUDA graph), not the host
    work between calls (scheduling, output processing). So it is a device *span*, not a kernel
    sum: a slow host lengthens it too, by its share inside the calls. Steps that schedule no
    token count as steps too. Cost: a Python wrapper and two events per call."""

    def qdq_bench_time_steps(self) -> str:
        """Install the timers once; says which clock they read."""
        runner = self.model_runner  # type: ignore[attr-defined]
        if hasattr(runner, "_qdq_bench_marks"):
            return runner._qdq_bench_clock
        import torch

        cuda = torch.cuda.is_available() and str(getattr(self, "device", "")).startswith("cuda")
        marks: list[tuple[str, object, object]] = []

        def wrap(kind: str, fn):
            def timed(*args, **kwargs):
                if cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    start.record()
                    out = fn(*args, **kwargs)
                    end = torch.cuda.Event(enable_timing=True)
                    end.record()
                else:
                    start = time.perf_counter()
                    out = fn(*args, **kwargs)
                    end = time.perf_counter()
                marks.append((kind, start, end))
                return out
            return timed

        for kind in ("execute_model", "sample_tokens"):
            if hasattr(runner, kind):
                setattr(runner, kind, wrap(kind, getattr(runner, kind)))
        runner._qdq_bench_marks = marks
        runner._qdq_bench_clock = "cuda events" if cuda else "host clock"
        return runner._qdq_bench_clock

    def qdq_bench_profile(self, action: str) -> dict | None:
        """The torch profiler in this process (installs the timers first): ``"start"`` it,
        recording the device's activity on a GPU worker (kernels, copies, memsets, with the
        host's ops beside them; the host's ops alone on a CPU one); ``"mark"`` the end of a
        segment (a host op named ``qdq_bench_mark``: the device's records after it are the next
        segment's); ``"stop"`` it and return ``segments``, for each: ``device_us``, the summed
        durations of its device records (µs; no host work in them; records that overlap on two
        streams count twice; user annotations, which span from their first kernel to their
        last, are left out), ``records``, their count, ``launches``, the host's launch calls
        (CUDA runtime or driver calls named ``cu*Launch*``: a kernel each, or a whole CUDA graph),
        ``qdq_calls`` / ``qdq_host_us``, the host's calls of QDQ's ops (``QDQ_OP_PREFIX``: run
        eagerly, outside a CUDA graph) and their host time (µs, each call whole: its Python, its
        allocations, its launches; the union per host thread, so nested calls count once; the
        profiler's own cost on the host inflates it), ``qdq_launches``, the launch calls made
        inside those calls (on their thread), ``dropped``, records whose duration is
        negative or over a second (CUPTI has handed back kernel records with a start ~1e14 ns
        off: pytorch/pytorch#192021), and ``steps``, the ``execute_model`` calls in it. One
        session for all segments: CUPTI is set up once. A start stops a profiler a failed stop
        left behind. Synchronization records (``SYNC_RECORDS``: waits, which torch's profiler
        leaves out unless asked) are not summed but counted, ``waits``."""
        import torch

        clock = self.qdq_bench_time_steps()
        runner = self.model_runner  # type: ignore[attr-defined]
        if action == "mark":
            with torch.profiler.record_function("qdq_bench_mark"):
                runner._qdq_bench_prof[1].append(len(runner._qdq_bench_marks))
            return None
        left = runner.__dict__.pop("_qdq_bench_prof", None)
        if action == "start":
            if left is not None:
                left[0].__exit__(None, None, None)
            act = torch.profiler.ProfilerActivity
            # the host's ops too on a GPU (the usual pairing; only the device's records are summed)
            prof = torch.profiler.profile(activities=[act.CPU, act.CUDA] if clock == "cuda events" else [act.CPU])
            prof.__enter__()
            runner._qdq_bench_prof = (prof, [len(runner._qdq_bench_marks)])
            return None
        if action != "stop":
            raise ValueError(f"qdq_bench_profile({action!r}); accepted: 'start', 'mark', 'stop'")
        if left is None:
            raise RuntimeError("qdq_bench_profile('stop') without a profiler started")
        prof, at = left  # taken off first: a stop that fails is not tried again
        prof.__exit__(None, None, None)
        at = [*at, len(runner._qdq_bench_marks)]
        events = prof.events()
        cuts = sorted(e.time_range.start for e in events if e.name == "qdq_bench_mark")
        if len(cuts) != len(at) - 2:
            raise RuntimeError(f"{len(cuts)} marks in the profile for {len(at) - 2} made")
        segs = [{"device_us": 0.0, "records": 0, "dropped": 0, "launches": 0, "waits": 0,
                 "qdq_host_us": 0.0, "qdq_calls": 0, "qdq_launches": 0,
                 "steps": sum(k == "execute_model" for k, _, _ in runner._qdq_bench_marks[at[i]:at[i + 1]])}
                for i in range(len(at) - 1)]
        cpu = torch.autograd.DeviceType.CPU
        # the host's QDQ calls (ops of the vllm_qdq library run eagerly: outside a CUDA graph), as
        # spans per host thread, nested or overlapping calls merged into one (no time counted
        # twice), and the launch calls made inside them (on the same thread)
        def seg_of(t: float) -> dict:  # the segment of a record starting at t: after as many marks
            return segs[bisect.bisect_right(cuts, t)]

        spans: dict[int, list[list[float]]] = {}
        for e in sorted((e for e in events if e.device_type == cpu and e.name.startswith(QDQ_OP_PREFIX)),
                        key=lambda e: e.time_range.start):
            a = e.time_range.start
            b = a + e.time_range.elapsed_us()
            seg_of(a)["qdq_calls"] += 1
            got = spans.setdefault(getattr(e, "thread", 0), [])
            if got and a <= got[-1][1]:
                got[-1][1] = max(got[-1][1], b)
            else:
                got.append([a, b])
        starts = {t: [a for a, _ in got] for t, got in spans.items()}

        def in_qdq(e) -> bool:
            t, thread = e.time_range.start, getattr(e, "thread", 0)
            i = bisect.bisect_right(starts.get(thread, []), t) - 1
            return i >= 0 and t <= spans[thread][i][1]

        for got in spans.values():
            for a, b in got:
                seg_of(a)["qdq_host_us"] += b - a
        for e in events:
            seg = seg_of(e.time_range.start)
            if e.device_type == cpu:  # the host: its launch calls (QDQ's own calls are counted above)
                if "Launch" in e.name and e.name.startswith("cu"):
                    seg["launches"] += 1
                    seg["qdq_launches"] += in_qdq(e)
                continue
            if getattr(e, "is_user_annotation", False):
                continue
            if e.name in SYNC_RECORDS:  # a wait, not work (when CUPTI reports them)
                seg["waits"] += 1
                continue
            us = e.time_range.elapsed_us()
            if 0 <= us <= 1e6:
                seg["device_us"] += us
                seg["records"] += 1
            else:
                seg["dropped"] += 1
        return {"segments": [{**g, "device_us": round(g["device_us"], 1), "qdq_host_us": round(g["qdq_host_us"], 1)}
                             for g in segs]}

    def qdq_bench_step_times(self) -> list[float]:
        """Seconds of each step timed since the last call, in order (then forgotten)."""
        runner = self.model_runner  # type: ignore[attr-defined]
        marks = list(runner._qdq_bench_marks)
        del runner._qdq_bench_marks[:len(marks)]
        if marks and not isinstance(marks[0][1], float):
            marks[-1][2].synchronize()  # type: ignore[attr-defined]
        out: list[float] = []
        for kind, start, end in marks:
            t = (end - start) if isinstance(start, float) else start.elapsed_time(end) / 1e3  # type: ignore[attr-defined]
            if kind == "execute_model" or not out:
                out.append(t)
            else:
                out[-1] += t
        return out


#: decode steps profiled per engine (:func:`profile_batch`)
PROFILE_TOKENS = 256


def profile_batch(llm, prompts: list, tokens: int = PROFILE_TOKENS, first: int = 1) -> dict:
    """The device time per decode step of ``prompts`` (µs: the summed durations of its kernels,
    copies and memsets, which no host state lengthens), from two untimed batches in one
    profiler session in the engine core (:meth:`StepTimer.qdq_bench_profile`): ``prompts`` x
    ``first`` tokens (1: the prefill), a mark, then x ``first + tokens`` (with ``tokens`` 0, no
    second batch: the first batch's figures alone); their difference is ``tokens`` decode
    steps of the whole batch, contexts from the prompt's length to ``tokens`` more. Returns
    ``us_per_step``, ``records_per_step``, ``launches_per_step`` (the host's launch calls: QDQ
    that adds none adds no host work to a step), ``steps``, ``device_us`` of that difference and
    ``dropped`` (records of implausible duration, left out), ``waits_per_step``
    (synchronization records, left out: none unless CUPTI reports them), and the first batch's
    own figures (what a prefill-heavy row, profiled as its whole timed batch with ``first`` =
    its output length and ``tokens`` 0, reads): ``prefill_us`` (device time), ``prefill_launches``
    (host launch calls), ``prefill_steps``, ``prefill_qdq_calls`` / ``prefill_qdq_host_us`` /
    ``prefill_qdq_launches`` (QDQ's eager calls, their host time and the launches inside them:
    :meth:`StepTimer.qdq_bench_profile`); a failure (no profiler on the host, say) comes back as
    ``error``, its text, for the bench to print."""
    try:
        llm.collective_rpc("qdq_bench_profile", args=("start",))
        try:
            llm.generate(prompts, _params(first), use_tqdm=False)
            llm.collective_rpc("qdq_bench_profile", args=("mark",))
            if tokens:  # 0: the first batch alone (its segment is all the caller reads)
                llm.generate(prompts, _params(first + tokens), use_tqdm=False)
        finally:
            a, b = llm.collective_rpc("qdq_bench_profile", args=("stop",))[0]["segments"]
    except Exception as e:  # said by the bench, not skipped
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    k = b["steps"] - a["steps"]
    us, rec, n = b["device_us"] - a["device_us"], b["records"] - a["records"], b["launches"] - a["launches"]
    return {"steps": k, "device_us": round(us, 1), "us_per_step": us / k if k > 0 else None,
            "records_per_step": rec / k if k > 0 else None, "launches_per_step": n / k if k > 0 else None,
            "dropped": a["dropped"] + b["dropped"], "prefill_us": round(a["device_us"], 1),
            "prefill_launches": a["launches"], "prefill_steps": a["steps"],
            "prefill_qdq_calls": a.get("qdq_calls", 0), "prefill_qdq_host_us": a.get("qdq_host_us", 0.0),
            "prefill_qdq_launches": a.get("qdq_launches", 0),
            "waits_per_step": (b.get("waits", 0) - a.get("waits", 0)) / k if k > 0 else None}


def _prefill_text(p: dict) -> str:
    """One engine's profile of a whole prefill-heavy batch (:func:`profile_batch`'s ``prefill_*``
    figures), or why none."""
    if p.get("error"):
        return f"none ({p['error']})"
    if not p.get("prefill_us"):
        return "none (no device records: a CPU engine, or no device tracing)"
    return (f"{p['prefill_us'] / 1e3:.2f} ms ({p.get('prefill_launches') or 0} host launches in "
            f"{p.get('prefill_steps') or 0} steps; QDQ {p.get('prefill_qdq_calls') or 0} calls, "
            f"{(p.get('prefill_qdq_host_us') or 0) / 1e3:.2f} ms on the host, {p.get('prefill_qdq_launches') or 0} launches)")


def _profile_text(p: dict) -> str:
    """One engine's :func:`profile_batch` figures, or why it has none."""
    if p.get("error"):
        return f"none ({p['error']})"
    if p.get("us_per_step") is None:
        return "none (no decode steps between the two batches)"
    if not p["us_per_step"]:
        return "none (no device records: a CPU engine, or no device tracing)"
    return (f"{p['us_per_step']:.0f} us ({p['records_per_step']:.0f} records, "
            f"{p.get('launches_per_step') or 0:.1f} host launches"
            + (f"; {p['dropped']} of implausible duration left out" if p.get("dropped") else "")
            + (f"; {p['waits_per_step']:.1f} synchronization records a step left out" if p.get("waits_per_step") else "")
            + ")")


#: the worker extension's qualified name: the engine core imports it (``scripts/`` is on its path)
STEP_TIMER = f"{Path(__file__).stem}.StepTimer"


def _device_steps(llm) -> list[float]:
    """The engine's :meth:`StepTimer.qdq_bench_step_times` (its one worker's)."""
    return llm.collective_rpc("qdq_bench_step_times")[0]


def timed_generate(llm, steps: CoreSteps, prompts: list, params, reps: int = 1,
                   probe: HostProbe | None = None, device_steps: bool = False) -> dict:
    """``llm.generate(prompts, params)`` ``reps`` times back to back, timed two ways.

    ``seconds``: wall time of the whole (every step, and whatever else the host did meanwhile).
    ``step_s`` / ``step_mean_s`` / ``step_p90_s``: median / mean / 90th percentile of the
    ``intervals`` between the batches' core steps (:meth:`CoreSteps.intervals`; a batch's first
    step starts none). On a decode-heavy batch nearly every interval is one decode step of the
    whole batch, so ``1 / step_s`` is its decode rate with the steps that a minority of host
    hiccups stretched left out; the mean keeps them (and any cost that only some steps pay).
    ``intervals_us``: every interval (µs, in order), kept in the bench's JSON. With ``probe``,
    ``host``: where the front end's and the engine core's threads ran meanwhile
    (:meth:`HostProbe.delta`, read outside the timed call), and for the engine core's busy CPUs
    the share of the time stolen from them and their clock (:meth:`HostProbe.cpu_state`). With
    ``device_steps`` (the engine has :class:`StepTimer` installed): ``device_step_s`` /
    ``device_step_mean_s`` / ``device_steps``, the median / mean / count of the steps' device
    spans (read outside the timed call; only figures, no list, go in the JSON)."""
    if device_steps:
        _device_steps(llm)  # forget steps from before this batch (before the probe's first reading)
    before, cpus0 = (probe.snapshot(), HostProbe.cpus()) if probe else (None, None)
    t = time.perf_counter()
    gen, ivs = 0, []
    for _ in range(reps):
        steps.intervals()  # forget stamps from before this batch
        outs = llm.generate(prompts, params, use_tqdm=False)
        gen += sum(len(x.outputs[0].token_ids) for x in outs)
        ivs += steps.intervals()
    dt = time.perf_counter() - t
    host = HostProbe.delta(before, probe.snapshot(), dt) if probe else None
    if host and host["core"]:  # the engine core's CPUs: stolen time, clock
        host["core"].update(HostProbe.cpu_state(cpus0, HostProbe.cpus(), host["core"]["busy_cpus"], dt))
    dev = _device_steps(llm) if device_steps else None
    device = {"device_step_s": statistics.median(dev), "device_step_mean_s": statistics.fmean(dev),
              "device_steps": len(dev)} if dev else {}
    return {"seconds": dt, "generated": gen, "gen_tok_s": gen / dt, "intervals": len(ivs),
            "step_s": statistics.median(ivs) if ivs else None,
            "step_mean_s": statistics.fmean(ivs) if ivs else None,
            "step_p90_s": sorted(ivs)[int(0.9 * (len(ivs) - 1))] if ivs else None,
            # every interval, in µs: where a slow batch lost its time (a few steps or all of them)
            "intervals_us": [round(1e6 * v) for v in ivs], **({"host": host} if host else {}), **device}


def pin_from_env() -> None:
    """``QDQ_BENCH_CPUS`` (``--cpus``): the CPUs this process and every process it starts later
    (the engine core) may run on. ``sched_setaffinity(0)`` sets the calling thread's mask, which
    threads and processes started after it inherit: so it is called first, before vLLM is
    imported and any thread exists."""
    if os.environ.get("QDQ_BENCH_CPUS"):
        os.sched_setaffinity(0, parse_cpus(os.environ["QDQ_BENCH_CPUS"]))


def worker(model: str, llm_kwargs: dict) -> int:
    """One engine; commands on stdin (one JSON shape name a line, or ``quit``), results on stdout."""
    pin_from_env()

    from vllm import LLM

    t0 = time.perf_counter()
    kv = kv_bytes()
    mem = {"kv_cache_memory_bytes": kv, "gpu_memory_utilization": 0.1} if kv else \
        {"gpu_memory_utilization": float(os.environ.get("QDQ_BENCH_GPU_UTIL", "0.4"))}
    timer = device_steps_on()
    ext = {"worker_extension_cls": STEP_TIMER} if timer else {}
    # no prefix caching: every repetition of a batch must prefill again
    llm = LLM(model=model, max_model_len=MAX_LEN, seed=0, enable_prefix_caching=False, **mem, **llm_kwargs, **ext)
    clock = llm.collective_rpc("qdq_bench_time_steps")[0] if timer else None
    steps = CoreSteps(llm)
    probe = HostProbe()
    vocab = len(llm.get_tokenizer())
    prompts = {}
    for shape, (n, i, _) in SHAPES.items():
        rng = random.Random(f"{shape}-{n}-{i}")
        prompts[shape] = [{"prompt_token_ids": [rng.randrange(2, vocab) for _ in range(i)]} for _ in range(n)]
    for shape, (_, _, o) in SHAPES.items():  # untimed warm-up: each shape's whole batch once
        llm.generate(prompts[shape], _params(o), use_tqdm=False)
    print("READY " + json.dumps({"start_s": round(time.perf_counter() - t0, 1), "device_clock": clock}), flush=True)
    for line in sys.stdin:
        cmd, _, reps = line.strip().partition(" ")
        if cmd == "quit":
            break
        if cmd == "profile":  # "profile SHAPE": decode: PROFILE_TOKENS decode steps; else the whole timed batch
            got = ({"error": "no step timer (--no-device-steps)"} if not timer else
                   profile_batch(llm, prompts[reps], PROFILE_TOKENS) if reps == "decode" else
                   profile_batch(llm, prompts[reps], 0, first=SHAPES[reps][2]))
            print("PROFILE " + json.dumps(got), flush=True)
            continue
        n, i, o = SHAPES[cmd]
        k = int(reps or 1)
        got = timed_generate(llm, steps, prompts[cmd], _params(o), k, probe, device_steps=timer)
        got.update(shape=cmd, reps=k, total_tok_s=(got["generated"] + k * n * i) / got["seconds"])
        print("BENCH " + json.dumps(got), flush=True)
    return 0


class Engine:
    """A worker process holding one engine: ``name`` is ``off`` or ``aa`` (``VLLM_QDQ=0``), ``on`` or ``kv``."""

    def __init__(self, model: Path, llm_kwargs: dict, name: str, log: Path, qdq_config: dict | None = None) -> None:
        env = dict(os.environ, VLLM_QDQ="0" if name in ("off", "aa") else "1")
        env.pop("VLLM_QDQ_TRACE", None)
        env.pop("VLLM_QDQ_CONFIG", None)
        # the engine core imports the step timer (STEP_TIMER) from this script's folder
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent)]
                                            + [p for p in [env.get("PYTHONPATH")] if p])
        if name != "off" and qdq_config:
            env["VLLM_QDQ_CONFIG"] = json.dumps(qdq_config)
        self.name = name
        self.log = log
        self.err = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(model), "--llm", json.dumps(llm_kwargs)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.ready: dict = {}

    def wait_ready(self) -> dict:
        """Block until the engine is up and warmed up; its ``READY`` figures."""
        self.ready = self._read("READY")
        return self.ready

    def _read(self, tag: str) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # vLLM logs to stdout: keep its lines in the log too
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
            self.err.write(line)
            self.err.flush()
        self.err.flush()
        raise SystemExit(f"QDQ {self.name} engine exited (rc {self.proc.wait()}); log {self.log}:\n"
                         + self.log.read_text()[-4000:])

    def _ask(self, command: str, tag: str) -> dict:
        """Send the worker one command line; the figures of its reply line tagged ``tag``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read(tag)

    def run(self, shape: str, reps: int = 1) -> dict:
        return self._ask(f"{shape} {reps}", "BENCH")

    def profile(self, shape: str) -> dict:
        """:func:`profile_batch` of ``shape``'s prompts in this engine."""
        return self._ask(f"profile {shape}", "PROFILE")

    def quit(self) -> None:
        """Ask the worker to stop (it shuts its engine down); :meth:`reap` waits for it."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except OSError:
                pass

    def reap(self, timeout: float = 60.0) -> None:
        """Wait up to ``timeout`` s for the worker asked to :meth:`quit`, then kill it."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def close_all(engines: list[Engine], timeout: float = 60.0) -> None:
    """Stop every worker at once (their engines shut down side by side, not one after another)."""
    for e in engines:
        e.quit()
    t_end = _now() + timeout
    for e in engines:
        e.reap(max(0.0, t_end - _now()))


#: the figure each shape's verdict reads: ``wall`` (the median over turns of the batches' wall-time
#: ratio), ``step`` (of their median engine-core step times, :func:`timed_generate`), ``best``
#: (each engine's best batch: the least of its batches' median step times, :func:`_best`) or
#: ``bound`` (:func:`step_bound`: the least on/off ratio QDQ's added device time per step allows).
#: Decode-heavy batches are ~1,000 steps of the whole batch, each a few ms of host work
#: (scheduling, sampling) around a short forward pass, so their speed follows the host. On the
#: H200 here the A/A control (two identical QDQ-off engines) sat 9-11% off 1 on the median of
#: wall or step ratios (results/h200-2026-12-03d) and 8-12% off it on the best batches
#: (results/h200-2026-12-03e): an engine instance's speed in decode is its own host state, so no
#: figure of one instance per configuration resolves 3% there. Decode rows are therefore judged
#: on ``bound``, chosen before the run that first applies it (results/h200-2026-12-03f): QDQ runs
#: inside vLLM's CUDA graphs and adds device work only, so with the host's work per step the
#: same on and off, a step with QDQ on takes at most the off engine's step plus the device time
#: QDQ adds; the ratio ``off / (off + added)`` (``off`` the off engine's least median step, the
#: smallest and so the strictest base; ``added`` the difference of the profiled device time per
#: decode step, on minus off, :func:`profile_batch`) is the throughput ratio QDQ's device time
#: alone allows. It is a model, not a measurement of throughput: it assumes equal host work per
#: step, which the bench checks only as far as the host's launch calls go (more than
#: ``LAUNCH_SLACK`` added a step fails the row), and the wall and step figures beside it still
#: move with the host's state. The profile's own resolution is checked with the A/A control: its
#: bound, on the *absolute* difference of its device time from off's (an off profile that came
#: out high would otherwise hide QDQ's cost and pass the control), must meet the target, else
#: the QDQ rows of that shape fail; without an A/A engine (``--no-aa``) that is unchecked, and
#: said. A decode row without profiled figures fails, saying why,
#: unless ``--no-device-steps`` left the profile out (then it is judged on ``best``, said as a
#: fallback). Wall, step and best figures stay in the table. Prefill-heavy batches were judged
#: on wall time until results/h200-2026-12-04c, where their per-turn ratios spread 0.78-1.27 and
#: the A/A control's own medians read 0.984 (gpt-oss) and 0.950 (dense), 12 turns each: a
#: median that cannot resolve 3%, the QDQ rows failing at 0.959 / 0.947 with best-batch ratios
#: of 1.03 / 1.01. Their steps are host-bound too (~9 ms wall, ~4 ms of device time), so they
#: are judged on a bound as well (chosen before the run that first applies it,
#: results/h200-2026-12-04d): :func:`batch_bound`, one whole timed batch profiled on each
#: engine, QDQ's added device time plus the host time of its eager calls (prefill steps past
#: the CUDA-graph sizes run outside a graph, and there QDQ's op costs host time a call) on the
#: off engine's best batch; the launch calls outside QDQ's must match off's (``LAUNCH_SLACK`` a
#: step), and the A/A control's bound must meet the target. First run (results/h200-2026-12-03f, dense): off 812 us of device time a decode step on
#: a 2.98-ms best step, act +44.5 us (bound 0.985), KV nvfp4 +78 us (0.975), A/A +2.0 us
#: (0.999), host launches equal to within 0.2 a step (~21).
JUDGED_ON = {"prefill": "bound", "decode": "bound"}
#: host launch calls per step that a QDQ engine may add over ``off`` in the profile before the
#: ``bound`` no longer holds (a fraction: the count is per step over 256 steps). 0.1 in the run
#: that first applied the rule (results/h200-2026-12-03f), where two identical off engines
#: differed by 0.08; 0.5 since (a QDQ kernel launched outside the graphs adds at least one a
#: layer, 4 or more a step on the bench's models); 1.0 since results/lease-2026-12-06c: the A/A
#: rows of the committed runs (two identical off engines) read up to +0.86 launches a decode step
#: (gpt-oss, 06c) and +0.44 a prefill step (gpt-oss, 06 and 06c), and the same ~61 extra launches
#: of a gpt-oss prefill-heavy batch landed in whichever engine they liked (the act engine in 05e,
#: +0.44; the A/A engine in 06 and 06c), so 0.5 sat inside identical engines' spread; 06c's act
#: prefill row failed on it (+0.60 a step over its own steps; bound 0.988, wall median 1.015).
#: Chosen after that run, which stays a FAIL; the next run is the first to apply it. Still a
#: quarter of what a QDQ kernel launched outside the CUDA graphs adds.
LAUNCH_SLACK = 1.0


def step_bound(base_us: float, added_us: float) -> float:
    """The throughput ratio (on/off) that ``added_us`` of device time per step allows on a step
    of ``base_us``, with the host's work per step the same on and off: ``base / (base + max(0,
    added))``, the device's added work running wholly after the host's (none of it hidden
    behind the host's next step)."""
    return base_us / (base_us + max(0.0, added_us))



def batch_bound(po: dict, pq: dict, base_us: float, control: bool = False) -> dict:
    """A prefill-heavy row's bound, from one whole batch profiled on ``off`` (``po``) and on the
    QDQ engine (``pq``, :func:`profile_batch`'s ``prefill_*`` figures), on ``base_us``, the off
    engine's best batch (wall time, µs): QDQ adds ``added_device_us`` (device time, on minus off)
    and ``added_qdq_host_us`` (the host time of its eager calls: prefill steps past the CUDA-graph
    sizes run outside a graph), and a batch takes at most the sum longer, each addition at
    worst lengthening the batch's critical path by its own duration, if the host's other work
    is the same on and off: checked as the launch calls outside QDQ's calls,
    ``added_launches_per_step`` (each engine's per step of its own batch: an engine that took one
    step more is not charged that step's launches; :data:`LAUNCH_SLACK`). ``bound_ratio`` =
    :func:`step_bound` of that sum, each addition taken as at least 0 (a device profile below
    off's by chance does not cancel host time). ``control`` (the A/A row): on the absolute differences, so
    that an off profile that came out high cannot hide a cost."""
    d_dev = pq["prefill_us"] - po["prefill_us"]
    d_host = (pq.get("prefill_qdq_host_us") or 0.0) - (po.get("prefill_qdq_host_us") or 0.0)

    def outside(p: dict) -> float:  # the launch calls outside QDQ's, per step of the engine's own batch
        return ((p.get("prefill_launches") or 0) - (p.get("prefill_qdq_launches") or 0)) / max(1, p.get("prefill_steps") or 1)

    # each term clamped on its own: a device profile that came out below off's by chance must not
    # cancel QDQ's host time (the A/A control: the absolute differences)
    added = abs(d_dev) + abs(d_host) if control else max(0.0, d_dev) + max(0.0, d_host)
    return {"added_device_us": round(d_dev, 1), "added_qdq_host_us": round(d_host, 1),
            "qdq_calls": pq.get("prefill_qdq_calls") or 0, "off_best_batch_ms": base_us / 1e3,
            "added_launches_per_step": outside(pq) - outside(po),
            "bound_ratio": step_bound(base_us, added)}


def _ratio(off: dict, q: dict, key: str) -> float | None:
    """``off[key] / q[key]`` (a time ratio: q's speed over off's), None when either is missing."""
    a, b = off.get(key), q.get(key)
    return a / b if a and b else None


def _summary(prefix: str, xs: list[float]) -> dict:
    """A row's figures of the per-turn ratios ``xs``: ``<prefix>_median``, ``_ci95`` (the
    median's bootstrap interval), ``_min``, ``_max``."""
    lo, hi = median_ci(xs)
    return {f"{prefix}_median": statistics.median(xs), f"{prefix}_ci95": [lo, hi],
            f"{prefix}_min": min(xs), f"{prefix}_max": max(xs)}


def _best(got: list[dict], q: str, key: str = "step_s") -> dict:
    """The best-batch ratios of a row's turns ``got``: ``ratio`` = ``min(off[key]) / min(q[key])``
    over its batches (each engine's least median step time, or with ``key="seconds"`` its least
    wall time) and ``second`` the same of each engine's second-least (how much the figure rests
    on one batch; a bootstrap interval of a minimum would be lopsided, so none is given). ``{}``
    when a batch lacks ``key``."""
    if any(not r["off"].get(key) or not r[q].get(key) for r in got):
        return {}
    off = sorted(r["off"][key] for r in got)
    on = sorted(r[q][key] for r in got)
    return {"ratio": off[0] / on[0], "second": off[min(1, len(off) - 1)] / on[min(1, len(on) - 1)]}


def host_states(rows: list[dict], shape: str = "decode", slow: float = 1.15,
                numa: dict[str, str] | None = None) -> str | None:
    """One line on the host states of ``shape``'s batches (:class:`HostProbe` figures): a batch is
    slow when its median step exceeds ``slow`` x its engine's best; slow and quiet batches are
    compared on the engine core's preemptions per second, on how often its busy CPUs were ones
    its front end's busy threads were on too, on the time stolen from those CPUs and their clock,
    on the median device span per step against the engine's least (where the batches have
    these) and, with ``numa`` (node -> CPU list) of more than
    one node, on the nodes its busy CPUs belonged to. None without probe figures."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        if r["shape"] != shape:
            continue
        q = {"act": "on"}.get(r["mode"], r["mode"])
        for t in r["raw"]:
            for e in ("off", q):
                seen[r["model"], e, t["round"], t["turn"]] = t[e]
    batches = [(k, b) for k, b in seen.items() if b.get("step_s") and (b.get("host") or {}).get("core")]
    if not batches:
        return None
    best: dict[tuple, float] = {}
    dev_best: dict[tuple, float] = {}
    for (m, e, *_), b in batches:
        best[m, e] = min(best.get((m, e), b["step_s"]), b["step_s"])
        if b.get("device_step_s"):
            dev_best[m, e] = min(dev_best.get((m, e), b["device_step_s"]), b["device_step_s"])
    groups: dict[bool, list[dict]] = {True: [], False: []}
    for (m, e, *_), b in batches:
        if b.get("device_step_s"):  # how far its device span sits above its engine's least
            b = {**b, "device_over_best": b["device_step_s"] / dev_best[m, e]}
        groups[b["step_s"] > slow * best[m, e]].append(b)

    with_cpus = {n: cpus for n, cpus in (numa or {}).items() if cpus}  # memory-only nodes list none
    node_of = {c: n for n, cpus in with_cpus.items() for c in parse_cpus(cpus)} if len(with_cpus) > 1 else {}

    def figures(bs: list[dict]) -> str:
        if not bs:
            return "none"
        pre = statistics.median(b["host"]["core"]["nvcsw"] / b["seconds"] for b in bs)
        shared = sum(bool(set(b["host"]["core"]["busy_cpus"]) & set(b["host"]["front"]["busy_cpus"])) for b in bs)
        text = f"core preemptions {pre:.0f}/s (median), core on a CPU of the front end's in {shared} of {len(bs)}"
        steal = [b["host"]["core"]["steal"] for b in bs if "steal" in b["host"]["core"]]
        if steal:
            text += f", core CPUs' stolen time {statistics.median(steal):.1%} (median)"
        mhz = [b["host"]["core"]["mhz"] for b in bs if "mhz" in b["host"]["core"]]
        if mhz:
            text += f", their clock {min(mhz):.0f}-{max(mhz):.0f} MHz"
        dev = [b["device_over_best"] for b in bs if "device_over_best" in b]
        if dev:
            text += f", device span per step {statistics.median(dev):.2f}x its engine's least (median)"
        if node_of:
            nodes: dict[str, int] = {}
            for b in bs:
                key = "+".join(sorted({node_of.get(c, "?") for c in b["host"]["core"]["busy_cpus"]})) or "-"
                nodes[key] = nodes.get(key, 0) + 1
            text += ", core's NUMA node(s) " + " ".join(f"{k} x{v}" for k, v in sorted(nodes.items()))
        return text

    return (f"{shape} host states: {len(groups[True])} of {len(batches)} batches slow (median step > {slow:g}x "
            f"its engine's best); slow: {figures(groups[True])}; quiet: {figures(groups[False])}")


def _turn_text(x: dict) -> str:
    """A turn's wall ratio, and its core-step ratio in brackets when both engines have one."""
    return f"{x['ratio']:.3f}" + (f" [{x['step_ratio']:.3f}]" if x.get("step_ratio") else "")


#: what each QDQ engine's log must say (else the ratio would measure nothing)
LOG_LINE = {"on": "activation QDQ enabled", "kv": "KV-cache QDQ (plugin)"}


def turns(who: list[str], n: int, start: int = 0) -> list[list[str]]:
    """The engine order of ``n`` consecutive turns, turn ``start`` first, from a cycle of
    balanced orders (a Williams design): over one cycle (``len(who)`` turns, twice that for an
    odd count) each engine runs in each position equally often and, within a turn, follows each
    other engine directly equally often. So position effects (the first batch after the other
    shape's, a slot's warmth) and carry-over from the batch before cancel over whole cycles, not
    only after every permutation (24 turns for four engines); a run that stops inside a cycle
    is balanced up to its last, partial cycle. Two engines: off-on, on-off, ..."""
    k = len(who)
    first = [0]  # 0, 1, k-1, 2, k-2, ...: each difference between neighbours once, mod k
    lo, hi = 1, k - 1
    while len(first) < k:
        first.append(lo)
        lo += 1
        if len(first) < k:
            first.append(hi)
            hi -= 1
    rows = [[who[(i + j) % k] for j in first] for i in range(k)]
    if k % 2:  # odd: the mirrored square balances the neighbours too
        rows += [r[::-1] for r in rows]
    return [rows[(start + t) % len(rows)] for t in range(n)]


def median_ci(x: list[float], level: float = 0.95, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``x`` (``draws`` resamples, seeded: the same
    figures give the same interval)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(x, k=len(x))) for _ in range(draws))
    lo = meds[int((1 - level) / 2 * draws)]
    hi = meds[min(draws - 1, int((1 + level) / 2 * draws))]
    return lo, hi


#: the bench's clock (a test replaces it)
_now = time.monotonic


class ModelBench:
    """One model's engines, schedule and figures (:func:`bench_models` runs one or several).

    ``on``: activation QDQ (the plugin's defaults) on ``shapes`` (with ``act``); ``kv`` (with
    ``kv_config``, its ``VLLM_QDQ_CONFIG``): KV-cache QDQ on ``kv_shapes``; ``aa`` (with
    ``aa``): a second QDQ-off engine on every shape, the A/A control (its ratio to ``off`` is 1
    up to the bench's own noise and bias). All engines stay up side by side; in each round every
    engine that measures a shape runs its batch ``reps`` times, one batch per engine per turn,
    the order cycling through balanced orders turn by turn (:func:`turns`), the others idle;
    one ratio per engine and turn.
    """

    def __init__(self, name: str, root: Path, min_seconds: float, shapes: list[str] | None = None,
                 kv_config: dict | None = None, kv_shapes: list[str] | None = None,
                 act: bool = True, aa: bool = True) -> None:
        self.name, self.root, self.min_seconds, self.kv_config = name, root, min_seconds, kv_config
        self.desc, self.kwargs = MODELS[name]
        shapes = list(shapes or SHAPES) if act else []
        kv_shapes = list(kv_shapes or ["decode"]) if kv_config else []
        self.all_shapes = [s for s in SHAPES if s in shapes or s in kv_shapes]
        self.measured = {"on": shapes, "kv": kv_shapes, "aa": self.all_shapes if aa else []}
        self.names = ["off"] + (["on"] if act else []) + (["kv"] if kv_config else []) + (["aa"] if aa else [])
        self.engines: dict[str, Engine] = {}
        self.reps: dict[str, float] = {}
        self.prof: dict[tuple[str, str], dict] = {}
        self.raw: dict[tuple[str, str], list[dict]] = {(q, s): [] for q in self.names[1:] for s in self.measured[q]}
        self.done = 0

    def who(self, shape: str) -> list[str]:
        """The engines timed on ``shape``: ``off`` first, then each QDQ engine that measures it."""
        return ["off"] + [q for q in self.names[1:] if shape in self.measured[q]]

    def start(self, model: Path, side_by_side: bool, t_start: float) -> None:
        """Start the engines of ``model``: all at once (``side_by_side``; :meth:`wait` then waits
        for them) or each once the last is up."""
        for n in self.names:
            e = Engine(model, self.kwargs, n, self.root / f"bench-{self.name}-qdq-{n}.log",
                       self.kv_config if n == "kv" else None)
            self.engines[n] = e
            if not side_by_side:
                print(f"{self.name}: QDQ {n} engine up in {e.wait_ready()['start_s']} s [+{_now() - t_start:.0f} s]",
                      flush=True)

    def wait(self, t_start: float) -> None:
        """Wait for the engines :meth:`start` started side by side."""
        for n, e in self.engines.items():
            print(f"{self.name}: QDQ {n} engine up in {e.wait_ready()['start_s']} s (side by side) "
                  f"[+{_now() - t_start:.0f} s]", flush=True)

    def check_logs(self) -> None:
        """Each QDQ engine's log says it patched (:data:`LOG_LINE`)."""
        for n in self.names[1:]:
            if n in LOG_LINE and LOG_LINE[n] not in self.engines[n].log.read_text():
                raise SystemExit(f"{self.name}: the QDQ {n} engine's log has no {LOG_LINE[n]!r} line")

    def calibrate(self, t_start: float) -> None:
        """Turns per round (enough batches for ``min_seconds`` per engine and round), then the
        device time per decode step and of one whole prefill batch, each engine once (untimed;
        kernel time, no host state in it)."""
        for shape in self.all_shapes:
            one = self.engines["off"].run(shape)["seconds"]
            self.reps[shape] = max(1, -(-self.min_seconds // one))
            print(f"{self.name} {shape}: one batch {one:.2f} s -> {int(self.reps[shape])} turns per round "
                  f"[+{_now() - t_start:.0f} s]", flush=True)
        if device_steps_on():
            for shape in self.all_shapes:
                for k in self.who(shape):
                    self.prof[k, shape] = self.engines[k].profile(shape)
                what, text = ((f"device time per step (profiler, {PROFILE_TOKENS} tokens)", _profile_text)
                              if shape == "decode" else ("one whole batch (profiler)", _prefill_text))
                print(f"{self.name} {shape}: {what}: " + ", ".join(
                    f"{k} {text(p)}" for (k, sh), p in self.prof.items() if sh == shape)
                      + f" [+{_now() - t_start:.0f} s]", flush=True)

    def round(self, p: int, t_start: float) -> None:
        """Round ``p`` (from 0): every shape's turns; the cycle of orders goes on across rounds."""
        for shape in self.all_shapes:
            who = self.who(shape)
            orders = turns(who, int(self.reps[shape]), start=p * int(self.reps[shape]))
            for r, order in enumerate(orders):
                got = {k: self.engines[k].run(shape, 1) for k in order}
                for q in who[1:]:
                    self.raw[q, shape].append({"round": p + 1, "turn": r + 1, "off": got["off"], q: got[q],
                                               "order": order, "ratio": got["off"]["seconds"] / got[q]["seconds"],
                                               "step_ratio": _ratio(got["off"], got[q], "step_s"),
                                               "step_mean_ratio": _ratio(got["off"], got[q], "step_mean_s")})
            print(f"{self.name} {shape} round {p + 1} ({len(orders)} turns, first order {'-'.join(orders[0])}): "
                  + ", ".join(f"{q} ratios " + " ".join(_turn_text(x) for x in self.raw[q, shape][-len(orders):])
                              for q in who[1:]) + f" [+{_now() - t_start:.0f} s]", flush=True)
        self.done = p + 1

    def rows(self) -> list[dict]:
        """One row per QDQ engine and shape it measured (the A/A control's included)."""
        rows = []
        for (q, shape), got in self.raw.items():
            n, i, o = SHAPES[shape]
            ratios = [r["ratio"] for r in got]
            steps = [r["step_ratio"] for r in got if r.get("step_ratio")]
            means = [r["step_mean_ratio"] for r in got if r.get("step_mean_ratio")]
            step = {}
            if len(steps) == len(got) and len(means) == len(got):
                b = _best(got, q)
                step = {**_summary("step_ratio", steps), "step_mean_ratio_median": statistics.median(means),
                        "best_ratio": b["ratio"], "best2_ratio": b["second"],
                        "best_wall_ratio": _best(got, q, "seconds")["ratio"],
                        "off_step_ms": 1e3 * statistics.median(r["off"]["step_s"] for r in got),
                        "on_step_ms": 1e3 * statistics.median(r[q]["step_s"] for r in got),
                        "off_best_step_ms": 1e3 * min(r["off"]["step_s"] for r in got),
                        "on_best_step_ms": 1e3 * min(r[q]["step_s"] for r in got)}
            elif JUDGED_ON.get(shape, "wall") != "wall":  # said, not skipped: the row falls back to wall time
                print(f"{self.name} {q} {shape}: {len(got) - len(steps)} of {len(got)} turns have no core-step time "
                      "(no stamps from the engine core): this row is judged on wall time", flush=True)
            devs = [_ratio(r["off"], r[q], "device_step_s") for r in got]
            dev = {}
            if got and all(devs):  # the steps' device spans (StepTimer): reported, never judged
                dev = {**_summary("device_ratio", devs),
                       "off_device_step_us": 1e6 * statistics.median(r["off"]["device_step_s"] for r in got),
                       "on_device_step_us": 1e6 * statistics.median(r[q]["device_step_s"] for r in got)}
            po, pq = self.prof.get(("off", shape), {}), self.prof.get((q, shape), {})
            # the kernel column (reported, never judged): decode, per step; prefill-heavy, one whole timed batch
            us_key, n_key = ("us_per_step", "launches_per_step") if shape == "decode" else ("prefill_us",
                                                                                          "prefill_launches")
            if po.get(us_key) and pq.get(us_key):
                dev.update(kernel_ratio=po[us_key] / pq[us_key], off_kernel_us=po[us_key], on_kernel_us=pq[us_key],
                           off_launches=po.get(n_key), on_launches=pq.get(n_key))
                if step and shape != "decode" and q != "kv":  # what prefill rows are judged on (JUDGED_ON)
                    dev.update(batch_bound(po, pq, 1e6 * min(r["off"]["seconds"] for r in got), q == "aa"))
            if po or pq:
                dev["profile"] = {"off": po, q: pq}
            if step and shape == "decode" and "kernel_ratio" in dev:  # the figure decode rows are judged on (JUDGED_ON)
                added = pq["us_per_step"] - po["us_per_step"]
                dev.update(added_us_per_step=added,
                           added_launches_per_step=(pq.get("launches_per_step") or 0.0)
                           - (po.get("launches_per_step") or 0.0),
                           # the A/A control on the absolute difference: its profile off off's either way
                           bound_ratio=step_bound(step["off_best_step_ms"] * 1e3, abs(added) if q == "aa" else added))
            judged = JUDGED_ON.get(shape, "wall") if step else "wall"
            wall_why = None
            if judged == "bound" and q == "kv" and shape != "decode":
                # KV-cache QDQ runs as Python in the attention layer, not as an op: a profile cannot
                # time it on the host, and it launches outside QDQ's op calls (said, not skipped)
                judged, wall_why = "wall", "kv"
                print(f"{self.name} kv {shape}: judged on wall time: KV-cache QDQ's calls are Python in the attention "
                      "layer, not ops a profile times on the host (batch_bound)", flush=True)
            elif judged == "bound" and not device_steps_on():
                judged = "best"  # the user left the profile out: said as a fallback
            rows.append({
                "model": self.name, "description": self.desc, "mode": {"on": "act"}.get(q, q),
                "qdq_config": self.kv_config if q == "kv" else None, "shape": shape, "prompts": n, "input_len": i,
                "output_len": o, "rounds": self.done, "turns_per_round": int(self.reps[shape]), "samples": len(ratios),
                **_summary("ratio", ratios),
                "off_tok_s": statistics.median(r["off"]["total_tok_s"] for r in got),
                "on_tok_s": statistics.median(r[q]["total_tok_s"] for r in got),
                **step, **dev,
                # what the verdict reads (JUDGED_ON): decode-heavy rows the bound of QDQ's device time
                "judged_on": judged, **({"wall_why": wall_why} if wall_why else {}),
                "raw": got,
            })
        return rows


def bench_models(benches: list[ModelBench], pairs: int, budget_s: float | None = None) -> list[dict]:
    """Run ``benches`` (one model each) with their engines up side by side, all models' at once
    (a fixed KV cache, ``kv_bytes() > 0``; else each engine starts once the last is up), then
    each model's calibration and profiles, then ``pairs`` rounds, each a round of every model
    in turn; the rows of all models.

    ``budget_s`` (seconds from this call, model builds and engine starts included): no round
    starts that would end past it (by the longest round so far), so ``pairs`` is then at most;
    fewer than 3 rounds in the budget is an error naming both.
    """
    t_start = _now()
    label = "+".join(b.name for b in benches)
    try:
        models = [build(b.name, b.root) for b in benches]
        side_by_side = kv_bytes() > 0  # a fixed KV cache: no memory profiling to upset
        for b, model in zip(benches, models, strict=True):
            b.start(model, side_by_side, t_start)
        for b in benches:
            if side_by_side:
                b.wait(t_start)
            b.check_logs()
        for b in benches:
            b.calibrate(t_start)
        longest, t_rounds = 0.0, _now()
        for p in range(pairs):
            t_round = _now()
            if budget_s is not None:
                left = t_start + budget_s - t_round
                if not p and left <= 0:
                    raise SystemExit(f"{label}: start-up took {t_rounds - t_start:.0f} s, the whole --budget-s "
                                     f"{budget_s:g}: no round fits; at least 3 are needed")
                if p:
                    fit = p + max(0, int(left // longest))
                    if fit < 3:  # not even 3 rounds: say so now rather than after the rounds that fit
                        raise SystemExit(f"{label}: only {fit} round(s) fit in --budget-s {budget_s:g} (one takes "
                                         f"up to {longest:.0f} s after {t_rounds - t_start:.0f} s of start-up); "
                                         "at least 3 are needed")
                    if longest > left:
                        print(f"{label}: {p} rounds in the {budget_s:.0f}-s budget (a round takes up to "
                              f"{longest:.0f} s)", flush=True)
                        break
            for b in benches:
                b.round(p, t_start)
            longest = max(longest, _now() - t_round)
        return [r for b in benches for r in b.rows()]
    finally:
        close_all([e for b in benches for e in b.engines.values()])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    ap.add_argument("--pairs", type=int, default=5,
                    help="rounds per shape (>= 3), each of enough turns (one batch per engine) for --min-seconds; "
                         "with --budget-s, the most rounds")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="seconds per model (with --together: for the whole run), engine starts included: rounds "
                         "stop before one would end past it (at least 3 must fit)")
    ap.add_argument("--min-seconds", type=float, default=4.0,
                    help="a round gives each engine about this many seconds of batches of a shape")
    ap.add_argument("--no-aa", action="store_true", help="leave out the A/A control (a second QDQ-off engine)")
    ap.add_argument("--together", action="store_true",
                    help="every model's engines up at once (one start-up for all, rounds interleaved model by "
                         "model, --budget-s for the whole run; each engine's KV cache QDQ_BENCH_KV_BYTES, default "
                         "4 GiB here) instead of one model after another")
    ap.add_argument("--target", type=float, default=0.97,
                    help="minimum on/off ratio per QDQ row, of the figure it is judged on (JUDGED_ON: the "
                         "bound QDQ's profiled cost allows; without the profile, the best batches' median core "
                         "steps; without core steps, the median over turns of wall times)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-plugin"), help="models and engine logs")
    ap.add_argument("--json", type=Path, default=None, help="write every figure (and raw timings) here")
    ap.add_argument("--shapes", default=None, help=f"comma-separated: {', '.join(SHAPES)} (default: all)")
    ap.add_argument("--kv-cache", default=None, metavar="FORMAT",
                    help="also measure KV-cache QDQ in FORMAT (e.g. nvfp4): a third engine")
    ap.add_argument("--kv-shapes", default=None, help="with --kv-cache: the shapes its engine is timed on (default: decode)")
    ap.add_argument("--no-act", action="store_true", help="with --kv-cache: no activation-QDQ engine")
    ap.add_argument("--attn-q", default=None, metavar="FORMAT", help="with --kv-cache: QDQ the attention query too")
    ap.add_argument("--cpus", default=None, metavar="LIST",
                    help="pin every engine (its worker and engine-core processes) to these CPUs, e.g. 0-7 "
                         "(default: unpinned); the bench prints the host's NUMA nodes, SMT siblings and "
                         "GPU-local CPUs to choose from")
    ap.add_argument("--no-device-steps", action="store_true",
                    help="leave out the per-step device timer (StepTimer: two CUDA events per model-runner call)")
    ap.add_argument("--build-only", action="store_true",
                    help="build the --models under --out (once: a model already built is kept) and exit, "
                         "starting no engine (the smoke lease builds them beside other work)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--llm", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, json.loads(args.llm))
    names = [m for m in args.models.split(",") if m]
    bad = [m for m in names if m not in MODELS]
    if bad or not names:
        ap.error(f"--models {args.models!r}: unknown {bad}; accepted: {', '.join(MODELS)}")
    if args.build_only:
        for name in names:
            t0 = _now()
            print(f"{name}: {build(name, args.out)} ({_now() - t0:.0f} s)", flush=True)
        return 0
    for opt, given in (("--attn-q", args.attn_q), ("--no-act", args.no_act), ("--kv-shapes", args.kv_shapes)):
        if given and not args.kv_cache:
            ap.error(f"{opt} needs --kv-cache")
    if args.no_act and args.shapes:
        ap.error("--shapes times the activation engine, which --no-act leaves out: use --kv-shapes")
    shapes = [s for s in (args.shapes or ",".join(SHAPES)).split(",") if s]
    if not shapes or [s for s in shapes if s not in SHAPES]:
        ap.error(f"--shapes {args.shapes!r}; accepted: {', '.join(SHAPES)}")
    kv_shapes = [s for s in (args.kv_shapes or "decode").split(",") if s]
    if not kv_shapes or [s for s in kv_shapes if s not in SHAPES]:
        ap.error(f"--kv-shapes {args.kv_shapes!r}; accepted: {', '.join(SHAPES)}")
    qdq_config = None
    if args.kv_cache:
        from vllm_qdq.config import ConfigError, config_from_dict

        qdq_config = {"kv_cache": args.kv_cache, "linear": "off", "moe": "off"}
        if args.attn_q:
            qdq_config["attn_q"] = args.attn_q
        try:
            config_from_dict(qdq_config)
        except ConfigError as e:
            ap.error(str(e))
    if args.pairs < 3:
        ap.error(f"--pairs {args.pairs}: at least 3 rounds are needed for a median with a spread")
    if not args.min_seconds > 0:
        ap.error(f"--min-seconds {args.min_seconds:g}; accepted: a number of seconds > 0")
    if args.budget_s is not None and not args.budget_s > 0:
        ap.error(f"--budget-s {args.budget_s:g}; accepted: a number of seconds > 0")
    if args.cpus is not None:
        allowed = os.sched_getaffinity(0)
        try:
            cpus = parse_cpus(args.cpus)
        except ValueError:
            ap.error(f"--cpus {args.cpus!r}; accepted: a CPU list such as 0-7,16-23 of this process's CPUs "
                     f"{cpu_ranges(allowed)}")
        if not cpus <= allowed:
            ap.error(f"--cpus {args.cpus!r}: CPUs {cpu_ranges(cpus - allowed)} are not this process's; "
                     f"accepted: a list of {cpu_ranges(allowed)}")
        os.environ["QDQ_BENCH_CPUS"] = cpu_ranges(cpus)  # the workers read it
    else:
        os.environ.pop("QDQ_BENCH_CPUS", None)
    os.environ["QDQ_BENCH_DEVICE_STEPS"] = "0" if args.no_device_steps else "1"  # the workers read it
    topo = host_topology()
    print(f"host: CPUs {cpu_ranges(set(topo['allowed']))}; NUMA "
          + (", ".join(f"{k} {v}" for k, v in topo["numa_nodes"].items()) or "-")
          + f"; SMT siblings {' '.join(topo['smt_siblings'][:8]) or '-'}"
          + ("..." if len(topo["smt_siblings"]) > 8 else "")
          + "; GPU-local CPUs " + (", ".join(f"{k} {v}" for k, v in topo["gpu_local_cpus"].items()) or "-")
          + f"; engines pinned to {os.environ.get('QDQ_BENCH_CPUS', '- (unpinned)')}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    def one(name: str) -> ModelBench:
        return ModelBench(name, args.out, args.min_seconds, shapes, qdq_config, kv_shapes, act=not args.no_act,
                          aa=not args.no_aa)

    if args.together:  # every model's engines up at once: one start-up for all, their rounds interleaved
        if len(names) > 1 and "QDQ_BENCH_KV_BYTES" not in os.environ:
            os.environ["QDQ_BENCH_KV_BYTES"] = str(TOGETHER_KV_BYTES)  # the workers read it
        rows = bench_models([one(n) for n in names], args.pairs, args.budget_s)
    else:
        rows = [r for n in names for r in bench_models([one(n)], args.pairs, args.budget_s)]
    for r in rows:
        r["host_topology"] = {**topo, "pinned": os.environ.get("QDQ_BENCH_CPUS")}
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("\nqdq: act = VLLM_QDQ=1 (the plugin's defaults)"
          + (f"; kv = VLLM_QDQ=1 with VLLM_QDQ_CONFIG={json.dumps(qdq_config)}" if qdq_config else "")
          + ("; aa = a second VLLM_QDQ=0 engine (A/A control: 1 but for the bench's own noise and bias)"
             if not args.no_aa else ""))
    print(f"\n{'model':<8} {'qdq':<4} {'shape':<8} {'in/out':>9} {'off tok/s':>11} {'on tok/s':>11} "
          f"{'wall median':>12} {'95% CI':>13} {'min':>6} {'max':>6} {'step median':>12} {'mean step':>10} "
          f"{'best step':>10} {'2nd best':>9} {'device':>7} {'kernel':>7} {'bound':>7}  n  verdict (target >= {args.target}, on the figure marked *)")
    ok = True
    model_ok = dict.fromkeys(names, True)
    loose, biased, spread, fallback, below, unprofiled = [], [], [], [], [], []
    unresolved, uncontrolled = [], []  # decode A/A bounds below the target or missing; bound rows without an A/A
    aa_bound = {(r["model"], r["shape"]): r.get("bound_ratio") for r in rows if r["mode"] == "aa"}
    for r in rows:
        judged = r["judged_on"]
        lo = hi = None
        if judged == "bound":  # a bound from two profiles: no interval; the A/A row's own bound instead
            med = r.get("bound_ratio")
        elif judged == "best":  # a minimum: no interval (see _best); the second-best ratio instead
            med = r["best_ratio"]
        else:
            pre = "step_" if judged == "step" else ""
            med, (lo, hi) = r[f"{pre}ratio_median"], r[f"{pre}ratio_ci95"]
        label = f"{r['model']} {r['shape']} ({judged})"
        if (JUDGED_ON.get(r["shape"], "wall") != "wall" and judged == "wall" and label not in fallback
                and not r.get("wall_why")):
            fallback.append(label)
        if JUDGED_ON.get(r["shape"], "wall") == "bound" and judged == "best" and label not in unprofiled:
            unprofiled.append(label)
        if r["mode"] == "aa":
            verdict = "control"
            if judged == "bound":  # the gate of the QDQ rows' verdicts (below), not a margin note
                if med is None or med < args.target:
                    verdict = "control: " + ("no figure" if med is None else "below the target")
                    unresolved.append(label + ("" if med is None else f" {med:.3f}"))
            elif not args.target <= med <= 1 / args.target:
                loose.append(label)
            elif lo is not None and not lo <= 1 <= hi:
                biased.append(f"{label}: {med:.3f}, CI {lo:.3f}-{hi:.3f}")
        else:
            what = f"{r['model']} {r['mode']} {r['shape']}"
            key = (r["model"], r["shape"])
            if judged == "bound" and key not in aa_bound and what not in uncontrolled:
                uncontrolled.append(what)
            control = aa_bound.get(key, 1.0) if judged == "bound" else 1.0
            if med is None:  # a judged figure that is missing fails, saying why
                good, verdict = False, "NO FIGURE (profile: " + "; ".join(
                    f"{k} {_profile_text(v)}" for k, v in (r.get("profile") or {}).items()) + ")"
                below.append(f"{what} no profiled device time ({judged})")
            elif judged == "bound" and r["added_launches_per_step"] > LAUNCH_SLACK:
                good, verdict = False, (f"FAIL: adds {r['added_launches_per_step']:.2f} host launches a step "
                                        f"(more than LAUNCH_SLACK {LAUNCH_SLACK:g})")
                below.append(f"{what} adds host launches ({judged})")
            elif control is None or control < args.target:
                gate = "missing" if control is None else f"{control:.3f}"
                good, verdict = False, f"FAIL: A/A bound {gate}" + (
                    "" if control is None else " below the target (the profile does not resolve it)")
                below.append(f"{what} {med:.3f} (A/A {judged} {gate})")
            else:
                good = med >= args.target
                if not good:
                    below.append(f"{what} {med:.3f} ({judged})")
                verdict = ("PASS" if good else "BELOW TARGET") + (
                    " (target within the 95% CI)" if lo is not None and lo < args.target <= hi else
                    " (2nd best below the target)" if judged == "best" and good and r["best2_ratio"] < args.target
                    else "")
            ok &= good
            model_ok[r["model"]] &= good
            if judged == "step" and good and r["step_mean_ratio_median"] < args.target:
                spread.append(f"{r['model']} {r['mode']} {r['shape']}: mean-step {r['step_mean_ratio_median']:.3f}")
            if judged in ("best", "bound") and good and r["step_ratio_median"] < args.target:
                spread.append(f"{r['model']} {r['mode']} {r['shape']}: step median {r['step_ratio_median']:.3f}")
        wall = f"{r['ratio_median']:.3f}" + ("*" if judged == "wall" else " ")
        wci = f"{r['ratio_ci95'][0]:.3f}-{r['ratio_ci95'][1]:.3f}"
        if "step_ratio_median" in r:
            step = f"{r['step_ratio_median']:.3f}" + ("*" if judged == "step" else " ")
            mean = f"{r['step_mean_ratio_median']:.3f}"
            best = f"{r['best_ratio']:.3f}" + ("*" if judged == "best" else " ")
            bci = f"{r['best2_ratio']:.3f}"
        else:
            step, mean, best, bci = "-", "-", "-", "-"
        dev = f"{r['device_ratio_median']:.3f}" if "device_ratio_median" in r else "-"
        ker = f"{r['kernel_ratio']:.3f}" if "kernel_ratio" in r else "-"
        bnd = (f"{r['bound_ratio']:.3f}" + ("*" if judged == "bound" else " ")) if "bound_ratio" in r else "-"
        print(f"{r['model']:<8} {r['mode']:<4} {r['shape']:<8} {r['input_len']:>4}/{r['output_len']:<4} {r['off_tok_s']:>11.0f} "
              f"{r['on_tok_s']:>11.0f} {wall:>12} {wci:>13} {r['ratio_min']:>6.3f} {r['ratio_max']:>6.3f} "
              f"{step:>12} {mean:>10} {best:>10} {bci:>9} {dev:>7} {ker:>7} {bnd:>7} {r['samples']:>2}  {verdict}")
    added = [f"{r['model']} {r['mode']} {r['added_us_per_step']:+.1f} us, {r['added_launches_per_step']:+.2f} launches"
             for r in rows if "added_us_per_step" in r]
    batch = [f"{r['model']} {r['mode']} {r['added_device_us'] / 1e3:+.2f} ms device, {r['added_qdq_host_us'] / 1e3:+.2f} "
             f"ms host in {r['qdq_calls']} QDQ calls, {r['added_launches_per_step']:+.2f} launches a step outside "
             f"them, on a {r['off_best_batch_ms']:.0f}-ms best off batch" for r in rows if "added_device_us" in r]
    print("\nwall: ratio of the batches' wall times, step: of their median engine-core step times, mean step: of "
          "their mean step times, each one ratio per turn and the median over turns; best step: of each engine's "
          "best batch (its least median step time), 2nd best: of their second-least; device: of the median device "
          "span of a step (StepTimer: the model runner's calls on the device's clock, kernels and the device's "
          "waits for the host inside the calls, not the host work between them), median over turns; kernel: of the "
          f"summed device time per decode step in {PROFILE_TOKENS} profiled steps per engine (contexts "
          f"{SHAPES['decode'][1]} to {SHAPES['decode'][1] + PROFILE_TOKENS} tokens; the timed batches reach "
          f"{sum(SHAPES['decode'][1:])}; no host state in it), for prefill-heavy rows of the device time of one whole "
          "batch (profiled once per engine); both reported, not judged; bound: the on/off "
          "throughput ratio that QDQ's added device time per decode step (kernel time on minus off) alone allows "
          "on the off engine's best batch's median step, if the host's work per step is the same (checked as host "
          "launch calls) and none of the added time hides behind the host's (step_bound); for prefill-heavy rows, "
          "the ratio that QDQ's added device time and the host time of its eager calls in one whole batch allow "
          "on the off engine's best batch, the two added up, if the host's other work is the same (checked as "
          "host launch calls outside QDQ's; batch_bound); the A/A row's on the absolute difference. Rows are "
          "judged on the bound, with the A/A row's own bound at the target: see JUDGED_ON in this script.")
    if added:
        print(f"\nDevice time and host launches per decode step over off's (profiled; aa: the A/A control): "
              f"{'; '.join(added)}.")
    if batch:
        print(f"\nAdded in one whole prefill-heavy batch over off's (profiled; aa: the A/A control): "
              f"{'; '.join(batch)}.")
    note = host_states(rows, numa=topo["numa_nodes"])
    if note:
        print(f"\n{note}.")
    if fallback:
        print(f"\nJudged on wall time for want of core-step times: {', '.join(fallback)}.")
    if unresolved:
        print(f"\nA/A control's bound below the target or missing ({', '.join(unresolved)}): the profile does "
              "not resolve the target there, and the QDQ rows judged on it fail.")
    if uncontrolled:
        print(f"\nNo A/A control (--no-aa) for {', '.join(uncontrolled)}: the bound's resolution is unchecked.")
    if unprofiled:
        print(f"\nJudged on the best batch, the profile left out (--no-device-steps): {', '.join(unprofiled)}.")
    if spread:
        print(f"\nJudged figure at target, the median over turns below it ({'; '.join(spread)}): slow host "
              "states on that engine's batches, or a cost on some steps or batches only; the A/A row's same "
              "figure shows how far the host alone moves it.")
    if biased:
        print(f"\nA/A control within the target's margin, its 95% CI missing 1 ({'; '.join(biased)}): a small bias "
              "tied to an engine's slot, which the verdicts carry too.")
    if loose:
        print(f"\nA/A control off 1 beyond the target's margin ({', '.join(loose)}): two identical engines "
              "measure apart by as much as the target allows, so the verdicts of those rows are within the "
              "bench's own noise or bias on this machine now.")
    judged = sum(r["mode"] != "aa" for r in rows)
    if len(names) > 1:  # one line per model (the smoke suite's bench-plugin step reads them), then the whole
        print()
        for m in names:
            k = sum(r["mode"] != "aa" and r["model"] == m for r in rows)
            mine = [b for b in below if b.startswith(m + " ")]
            print(f"verdict {m}: " + (f"PASS: {k} rows >= {args.target}" if model_ok[m] else
                                      f"FAIL: below {args.target}: {', '.join(mine)}"))
    # the last line (the smoke suite's result line quotes it): the verdict, whatever notes came before
    print(f"\nverdict: {'PASS' if ok else 'FAIL'}: " + (f"{judged} rows >= {args.target}" if ok else
          f"below {args.target}: {', '.join(below)}") + (" (A/A beyond the margin: within noise)" if loose else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
