"""Probe (issue 16): would the L2's persisting set-aside keep ``x`` for a two-pass call's second read?

Nsight Compute (``scripts/probe_ncu.py l2``) showed the QDQ pass of a two-pass call at 16M elements
re-reading half of x from DRAM right after the amax pass read all of it: the QDQ pass's own
allocations of y push out x's oldest lines. CUDA's access policy window marks accesses to an address
range as *persisting*, which normal accesses do not evict while the context's persisting set-aside
(``CU_LIMIT_PERSISTING_L2_CACHE_SIZE``) holds them. This probe times, per size (rows x 4096 bf16),
a copy and the two-pass recipes (nvfp4, FP8 per-tensor) and the one-pass control (nvfp4 with its
amax given), each call after a dirty L2 flush (a 256 MB buffer zeroed, as the QDQ bench does) and
with the persisting lines reset, with and without a window over x on the stream, interleaved, and
prints the medians (us) and copy time (no window) / call time. Driver calls through ctypes (``libcuda.so.1``),
so it needs nothing but torch and Triton. A probe, not the product: a window is a stream's (and a
captured kernel node's) attribute, and the set-aside is the whole context's.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics

import torch
from vllm_qdq.numerics import triton_qdq
from vllm_qdq.numerics.formats import get_format

_LIMIT_PERSISTING_L2 = 0x06  # CU_LIMIT_PERSISTING_L2_CACHE_SIZE
_ATTR_MAX_PERSISTING_L2 = 108  # CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE
_ATTR_MAX_WINDOW = 109  # CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE
_LAUNCH_ATTR_WINDOW = 1  # CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW (CUstreamAttrID)
_NORMAL, _STREAMING, _PERSISTING = 0, 1, 2  # CUaccessProperty


class _Window(ctypes.Structure):
    _fields_ = [("base_ptr", ctypes.c_void_p), ("num_bytes", ctypes.c_size_t), ("hitRatio", ctypes.c_float),
                ("hitProp", ctypes.c_int), ("missProp", ctypes.c_int)]


class _AttrValue(ctypes.Union):  # CUlaunchAttributeValue: 64 bytes
    _fields_ = [("accessPolicyWindow", _Window), ("pad", ctypes.c_char * 64)]


class _Driver:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")

    def _ok(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed: CUresult {rc}")

    def attr(self, attr: int, dev: int = 0) -> int:
        v = ctypes.c_int()
        self._ok(self.lib.cuDeviceGetAttribute(ctypes.byref(v), attr, dev), "cuDeviceGetAttribute")
        return v.value

    def set_limit(self, nbytes: int) -> None:
        self._ok(self.lib.cuCtxSetLimit(_LIMIT_PERSISTING_L2, ctypes.c_size_t(nbytes)), "cuCtxSetLimit")

    def reset(self) -> None:
        self._ok(self.lib.cuCtxResetPersistingL2Cache(), "cuCtxResetPersistingL2Cache")

    def window(self, stream: int, ptr: int, nbytes: int, hit_ratio: float) -> None:
        v = _AttrValue()
        v.accessPolicyWindow = _Window(ptr, nbytes, hit_ratio, _PERSISTING if nbytes else _NORMAL, _STREAMING
                                       if nbytes else _NORMAL)
        self._ok(self.lib.cuStreamSetAttribute(ctypes.c_void_p(stream), _LAUNCH_ATTR_WINDOW, ctypes.byref(v)),
                 "cuStreamSetAttribute")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="2048,4096,8192", help="rows x 4096 bf16, comma-separated")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    torch.cuda.init()
    drv = _Driver()
    max_persist, max_window = drv.attr(_ATTR_MAX_PERSISTING_L2), drv.attr(_ATTR_MAX_WINDOW)
    print(f"{torch.cuda.get_device_name()}: max persisting L2 {max_persist / 2**20:.1f} MiB, "
          f"max window {max_window / 2**20:.1f} MiB")
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    print(f"{'rows x 4096 (MB)':18s} {'call':26s} {'window':>7s} {'us':>8s} {'min':>8s} {'max':>8s} {'copy/call':>9s}")
    for r in (int(v) for v in args.rows.split(",")):
        x = torch.randn(r, 4096, device="cuda", dtype=torch.bfloat16)
        y = torch.empty_like(x)
        gamax = x.float().abs().amax()
        nbytes = x.numel() * x.element_size()
        calls = {"copy": lambda x=x, y=y: y.copy_(x)}
        for name, g in (("nvfp4", None), ("fp8_e4m3_per_tensor", None), ("nvfp4", gamax)):
            spec = get_format(name)
            calls[f"{name} amax {'given' if g is not None else 'dynamic'}"] = (
                lambda spec=spec, g=g, x=x: triton_qdq.qdq(x, spec, "floor", -1, g))
        for fn in calls.values():
            fn()  # compile, record
        times: dict[tuple[str, bool], list[float]] = {}
        win = min(nbytes, max_window)
        for _ in range(args.reps):
            for on in (False, True):
                if on:
                    drv.set_limit(min(max_persist, win))
                    drv.window(stream, x.data_ptr(), win, min(1.0, max_persist / win))
                else:
                    drv.window(stream, 0, 0, 0.0)
                    drv.set_limit(0)
                for label, fn in calls.items():
                    drv.reset()
                    flush.zero_()  # dirty lines everywhere, as the bench's flush; the launches queue behind it
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    fn()
                    b.record()
                    b.synchronize()
                    times.setdefault((label, on), []).append(a.elapsed_time(b) * 1e3)
        drv.window(stream, 0, 0, 0.0)
        drv.set_limit(0)
        for label in calls:
            for on in (False, True):
                t = times[(label, on)]
                med = statistics.median(t)
                copy = statistics.median(times[("copy", False)])  # the baseline: a plain copy
                print(f"{r} ({nbytes / 2**20:4.0f}){'':7s} {label:26s} {'on' if on else 'off':>7s} {med:8.1f} "
                      f"{min(t):8.1f} {max(t):8.1f} {copy / med:9.2f}", flush=True)


if __name__ == "__main__":
    main()
