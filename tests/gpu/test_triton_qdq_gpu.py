"""Triton QDQ kernels on the GPU against the reference (also run on the CUDA tensors).

Run on the GPU host: ``pytest -m gpu tests/gpu/test_triton_qdq_gpu.py``. Every comparison is
bit for bit (integer views, NaN positions equal).
"""

from __future__ import annotations

import os

import pytest
import torch
from vllm_qdq.numerics.formats import FORMATS, SCALE_RULES, get_format
from vllm_qdq.numerics.reference import qdq_reference

from tests.support.bits import assert_same_bits

pytestmark = pytest.mark.gpu

CASES = [
    (name, rule)
    for name, spec in FORMATS.items()
    for rule in (SCALE_RULES if spec.takes_scale_rule else ("floor",))
]
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def check(x, spec, rule="floor", axis=-1, global_amax=None):
    from vllm_qdq.numerics import triton_qdq

    y = triton_qdq.qdq(x, spec, rule, axis, global_amax)
    torch.cuda.synchronize()
    assert_same_bits(y, qdq_reference(x, spec, rule, axis, global_amax))


def specials(x: torch.Tensor) -> torch.Tensor:
    """Sprinkle NaN, +-Inf, zeros, subnormals and huge values over a 2-D tensor."""
    x = x.clone()
    info = torch.finfo(x.dtype)
    r, k = x.shape
    x[0, k // 3] = float("nan")
    x[min(1, r - 1), -1] = float("inf")
    x[min(2, r - 1), :] = 0
    x[min(3, r - 1), ::7] = info.smallest_normal / 3
    x[min(4, r - 1), ::5] = info.max
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name,rule", CASES, ids=[f"{n}-{r}" for n, r in CASES])
@pytest.mark.parametrize(
    "shape", [(1, 4096), (1, 4095), (7, 5000), (256, 4096), (33, 129), (16, 16384 + 100)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_shapes(name: str, rule: str, dtype: torch.dtype, shape) -> None:
    x = (torch.randn(shape, device="cuda") * torch.logspace(-3, 3, shape[1], device="cuda")).to(dtype)
    check(specials(x), FORMATS[name], rule)


@pytest.mark.parametrize("name", list(FORMATS))
def test_large(name: str) -> None:
    """16k x 8k bf16 (128M elements), the size of a real weight / long prefill."""
    x = torch.randn(16384, 8192, device="cuda", dtype=torch.bfloat16)
    x[123, 4567] = float("nan")
    rule = "rceil" if FORMATS[name].takes_scale_rule else "floor"
    check(x, FORMATS[name], rule)


@pytest.mark.parametrize("name", list(FORMATS))
def test_layouts(name: str) -> None:
    spec = FORMATS[name]
    rule = "even" if spec.takes_scale_rule else "floor"
    base = torch.randn(64, 3000, device="cuda", dtype=torch.bfloat16)
    check(base[:, ::2], spec, rule)  # strided elements
    check(base[:, 7:2007], spec, rule)  # row stride != K
    check(base.t(), spec, rule)  # K along stride 3000
    check(base, spec, rule, axis=0)
    check(torch.randn(4, 1000, 6, device="cuda", dtype=torch.float16), spec, rule, axis=1)
    check(torch.randn(3, 5, 7, 300, device="cuda")[::2, :, ::3], spec, rule)  # copy path


def test_mx_block_sizes_and_global_amax() -> None:
    x = torch.randn(100, 1000, device="cuda", dtype=torch.bfloat16)
    for block in (16, 64):
        for rule in SCALE_RULES:
            check(x, get_format("mxfp6_e2m3", block), rule)
    check(x, FORMATS["nvfp4"], global_amax=2.5)
    check(x, FORMATS["nvfp4"], global_amax=torch.tensor(40.0, device="cuda"))


def test_dispatch_and_custom_op() -> None:
    import vllm_qdq.activation.ops  # noqa: F401
    from vllm_qdq.qdq import quantize_dequantize

    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    auto = quantize_dequantize(x, "mxfp4")
    assert_same_bits(auto, quantize_dequantize(x, "mxfp4", backend="reference"))

    def f(t):
        return torch.ops.vllm_qdq.qdq(t, "nvfp4", "floor", -1, None, None) * 2

    y = torch.compile(f, fullgraph=True)(x)
    assert_same_bits(y, quantize_dequantize(x, "nvfp4", backend="reference") * 2)


@pytest.mark.parametrize("name", list(FORMATS))
def test_eager_replay(name: str, monkeypatch) -> None:
    """The eager fast path (``triton_qdq._FastCall``, ``FAST_LAUNCH``): the second call of a recipe on a layout
    replays the compiled kernels with the new tensors, bit for bit with the reference; a view 2
    bytes off (another pointer specialization) and a new shape go through Triton again."""
    from vllm_qdq.numerics import triton_qdq

    replays = []
    real = triton_qdq._FastCall.__call__

    def counting(self, x, *rest):
        y = real(self, x, *rest)
        replays.append(y is not None)
        return y

    monkeypatch.setattr(triton_qdq._FastCall, "__call__", counting)
    monkeypatch.setattr(triton_qdq, "FAST_LAUNCH", True)
    spec = FORMATS[name]
    rule = "even" if spec.takes_scale_rule else "floor"
    base = torch.randn(64 * 4096 + 8, device="cuda", dtype=torch.bfloat16)
    for i in range(3):
        check(torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16) * (i + 1), spec, rule)
    assert replays == [True, True], replays
    shifted = base[1:1 + 64 * 4096].view(64, 4096)  # 2 bytes off: another pointer class, Triton again
    check(shifted, spec, rule)
    base.mul_(3)
    check(shifted, spec, rule)  # replayed in its own class
    check(torch.randn(3, 4096, device="cuda", dtype=torch.bfloat16), spec, rule)  # new shape: Triton
    assert replays == [True, True, True], replays


@pytest.mark.parametrize("name", ["fp8_e4m3_per_token", "fp8_e4m3_per_group128_ue8m0", "fp8_e4m3_per_group128"])
def test_group_scale_on_the_gpu(name: str) -> None:
    """``_scaled_scale`` compiled for the GPU (per-token's fp32 scale by the fp32 division
    helper on the GPU's FMA, UE8M0's from the amax's bits, per-group128's float64 quotient)
    against the reference's float64 scale (per-token: rounded to fp32 as the reference does):
    every bf16 and fp16 amax, every fp32 exponent with significands around 1.75 and at random,
    and every 8th significand of three binades (``scale_amaxes``)."""
    from vllm_qdq.numerics.reference import _scaled_scale
    from vllm_qdq.numerics.triton_qdq import _cdiv

    from tests.support.narrow_pairs import scale_amaxes
    from tests.support.triton_qdq_kernels import scale_kernel

    spec = FORMATS[name]
    a = scale_amaxes().cuda()
    s = torch.empty(a.numel(), dtype=torch.float64, device="cuda")
    scale_kernel[(_cdiv(a.numel(), 1024),)](a, s, a.numel(), SPEC=spec, BLOCK=1024, enable_fp_fusion=False)
    ref = _scaled_scale(a.double().cpu(), spec)
    if spec.fp32_math:
        ref = ref.float().double()
    assert_same_bits(s.cpu(), ref)


@pytest.mark.parametrize("elem", ["e4m3", "e5m2"])
def test_fp8_cvt_equals_integer_rounding(elem: str) -> None:
    """On this GPU (compute capability 9.0+) ``round_elem_f32`` rounds E4M3 and E5M2 elements
    by the hardware conversion (``cvt.rn.satfinite`` from fp32, then back through f16; the
    compiled kernel's PTX is checked to hold it): the same value as the integer-op form on every
    one of the 2**32 fp32 bit patterns (NaN for NaN, payloads aside)."""
    from vllm_qdq.numerics.formats import ELEMENTS

    from tests.support.triton_primitive_kernels import fp8_cvt_vs_bits_kernel

    assert torch.cuda.get_device_capability() >= (9, 0), "the hardware FP8 conversion is taken from sm_90"
    spec = ELEMENTS[elem]
    out = torch.tensor([0, 1 << 40], dtype=torch.int64, device="cuda")
    block, chunk = 4096, 1 << 30
    for base in range(0, 1 << 32, chunk):
        compiled = fp8_cvt_vs_bits_kernel[(chunk // block,)](out, base, MAXN=float(spec.max_normal), EMIN=spec.emin,
                                                             MBITS=spec.mbits, BLOCK=block, enable_fp_fusion=False)
    ptx = compiled.asm["ptx"]
    assert f"cvt.rn.satfinite.{elem}x2.f32" in ptx, f"{elem}: the kernel does not convert by the hardware from fp32"
    n, first = out.tolist()
    where = f", the first at fp32 bits {first:#010x}" if n else ""
    assert n == 0, f"{elem}: {n} of 2**32 fp32 inputs round differently{where}"


@pytest.mark.parametrize("elem", ["e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "ue5m3", "mxint8", "int8"])
def test_round_elem_every_bf16_and_fp16(elem: str) -> None:
    """The shared element rounding (integer-op RNE above 2**emin, the fixed subnormal quantum
    below) as compiled for the GPU: every bf16 and every fp16 bit pattern (NaN and Inf included),
    read as fp32 and scaled by 2**k for k in -8..8, plus 4M random fp32 bit patterns, against the
    torch reference, bit for bit."""
    from vllm_qdq.numerics.formats import ELEMENTS
    from vllm_qdq.numerics.reference import round_to_elem
    from vllm_qdq.numerics.triton_qdq import _cdiv

    from tests.support.triton_primitive_kernels import round_grid_kernel

    spec = ELEMENTS[elem]
    pats = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    base = torch.cat([pats.view(torch.bfloat16).float(), pats.view(torch.float16).float()])
    v = torch.cat([base * 2.0**k for k in range(-8, 9)])
    g = torch.Generator().manual_seed(3)
    v = torch.cat([v, torch.randint(-2**31, 2**31 - 1, (4 << 20,), generator=g, dtype=torch.int32).view(torch.float32)])
    v = v.cuda()
    got = torch.empty_like(v)
    round_grid_kernel[(_cdiv(v.numel(), 1024),)](
        v, got, v.numel(), MAXN=float(spec.max_normal), EMIN=0 if spec.is_int else spec.emin,
        MBITS=spec.mbits, IS_INT=spec.is_int, BLOCK=1024, enable_fp_fusion=False)
    assert_same_bits(got, round_to_elem(v, spec))


def test_div_rn_f64_is_division() -> None:
    """The float64 quotient of the scaled recipes (``triton_qdq._div_rn_f64``: a reciprocal pair,
    a faithful first quotient, one FMA correction) equals ``a / b`` bit for bit on 16M pairs: fp32 numerators over
    the whole range (signed zeros included), positive scales of random and near-1 / near-2
    significands."""
    from vllm_qdq.numerics.triton_qdq import _cdiv

    from tests.support.triton_qdq_kernels import div_f64_kernel

    n = 16 << 20
    g = torch.Generator(device="cuda").manual_seed(4)
    a = torch.randint(-2**31, 2**31 - 1, (n,), generator=g, device="cuda", dtype=torch.int32).view(torch.float32)
    a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    a[:1000] = 0.0
    a[1000:2000] = -0.0
    sig = torch.rand(n, generator=g, device="cuda", dtype=torch.float64) + 1.0
    m = torch.randint(1, 53, (n,), generator=g, device="cuda").double()  # 2**-52 .. 2**-1
    sig[: n // 4] = 2.0 - torch.exp2(-m[: n // 4])  # up to the all-ones significand
    sig[n // 4: n // 2] = 1.0 + torch.exp2(-m[n // 4: n // 2])
    b = sig * torch.exp2(torch.randint(-160, 130, (n,), generator=g, device="cuda").double())
    assert bool((b > 0).all())  # the kernels divide by positive group scales only
    q = torch.empty(n, device="cuda", dtype=torch.float64)
    div_f64_kernel[(_cdiv(n, 1024),)](a, b, q, n, BLOCK=1024, enable_fp_fusion=False)
    assert_same_bits(q, a.double() / b)


def test_div_rn_f32_is_division() -> None:
    """The per-token FP8 quotient (``triton_qdq._div_rn``: ``1 / b`` once, a product and two
    FMA corrections) equals ``a / b`` bit for bit on 16M pairs on the GPU's own FMA: random fp32
    numerators, every one within its row's scale (``b = fp32(amax / 448)``, ``amax`` from ``|a|``
    up to ``2**30 |a|``, at least the scale floor; near-2 significands of ``amax`` included), where
    ``|a / b| >= 2**-60``; below, within an ulp and of ``a``'s sign (the grid rounds it to zero)."""
    from vllm_qdq.numerics.triton_qdq import _cdiv

    from tests.support.triton_qdq_kernels import div_f32_kernel

    n = 16 << 20
    g = torch.Generator(device="cuda").manual_seed(6)
    a = torch.randint(-2**31, 2**31 - 1, (n,), generator=g, device="cuda", dtype=torch.int32).view(torch.float32)
    a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    a[:1000], a[1000:2000] = 0.0, -0.0
    grow = torch.exp2(torch.rand(n, generator=g, device="cuda", dtype=torch.float64) * 30)
    grow[: n // 8] = 1.0
    sig = 2.0 - torch.exp2(-torch.randint(1, 24, (n,), generator=g, device="cuda").double())
    grow[n // 8: n // 4] = sig[n // 8: n // 4]
    amax = torch.where(a == 0, torch.ones_like(grow), a.abs().double() * grow).clamp(max=3.4e38)
    b = torch.clamp((amax / 448.0).float(), min=1.0 / (448.0 * 512.0))
    q = torch.empty_like(a)
    div_f32_kernel[(_cdiv(n, 1024),)](a, b, q, n, BLOCK=1024, enable_fp_fusion=False)
    ref = a / b
    big = ref.abs() >= 2.0**-60
    assert_same_bits(q[big], ref[big])
    assert bool((q[~big].abs() < 2.0**-59).all()) and torch.equal(torch.signbit(q[~big]), torch.signbit(ref[~big]))


@pytest.mark.parametrize("name", ["fp8_e4m3_per_channel", "int8_per_channel"])  # per-group128, per-tensor: the
def test_narrow_form_equals_float64_form(name: str) -> None:  # same element and qmax as per-channel
    """The float64 recipes' fp32 form (``_scaled_qdq_narrow``) gives the float64 form's bits after
    the 16-bit cast on the GPU's own FMA and conversions: every bf16 ``amax`` in [2**-32, 2**100]
    against every bf16 ``x`` with ``amax * 2**-45 <= |x| <= amax`` (~195M pairs), every fp16
    ``amax`` in [1, 2), below 2**-14 and above 2**15 against every fp16 ``x`` up to it, and the
    other fp16 binades thinned (the interpreter's ``QDQ_EXHAUSTIVE=1`` run, here by default)."""
    from vllm_qdq.numerics.triton_qdq import _cdiv

    from tests.support.narrow_pairs import fp16_amax_thin, narrow_pairs
    from tests.support.triton_qdq_kernels import scaled_paths_kernel

    spec = FORMATS[name]
    cases = [(torch.bfloat16, [(2.0**-32, 2.0**-8)], 2.0**-45, None),
             (torch.bfloat16, [(2.0**-8, 2.0**24)], 2.0**-45, None),
             (torch.bfloat16, [(2.0**24, 2.0**56)], 2.0**-45, None),
             (torch.bfloat16, [(2.0**56, 2.0**100 * 1.001)], 2.0**-45, None),
             (torch.float16, [(1, 2), (0, 2.0**-14), (2.0**15, 7e4)], 0.0, None),
             (torch.float16, [(2.0**-14, 1)], 2.0**-21, fp16_amax_thin),  # fp16 outputs turn subnormal:
             (torch.float16, [(2, 2.0**15)], 2.0**-21, fp16_amax_thin)]  # each binade its own case
    total = 0
    for dtype, ranges, rel, pick in cases:
        x, amax = narrow_pairs(dtype, ranges, rel, pick)
        x, amax = x.cuda(), amax.cuda()
        n = x.numel()
        total += n
        fast, slow = torch.empty(n, dtype=dtype, device="cuda"), torch.empty(n, dtype=dtype, device="cuda")
        scaled_paths_kernel[(_cdiv(n, 1024),)](x, amax, fast, slow, n, SPEC=spec, BLOCK=1024, enable_fp_fusion=False)
        diff = (fast.view(torch.int16) != slow.view(torch.int16)).nonzero().flatten()
        where = [(x[i].item(), amax[i].item(), fast[i].item(), slow[i].item()) for i in diff[:4].tolist()]
        assert diff.numel() == 0, f"{dtype} {ranges}: {diff.numel()} of {n} differ (x, amax, fp32, float64): {where}"
    assert total > 250_000_000


@pytest.mark.parametrize("name", ["fp8_e4m3_per_tensor", "fp8_e4m3_per_channel", "fp8_e4m3_per_group128",
                                  "int8_per_token", "int8_per_channel"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_narrow_form_with_redone_tiles(name: str, dtype: torch.dtype) -> None:
    """Tiles with a group outside the fp32 form's range (tiny, huge, NaN/Inf, all-zero rows among
    ordinary ones; rows of one tile and rows swept twice) are stored in the fp32 form and then
    again in the float64 form after a barrier: the reference's bits everywhere, with every
    thread's first store overwritten where it must be."""
    spec = FORMATS[name]
    g = torch.Generator(device="cuda").manual_seed(8)
    for rows, k in ((512, 4096), (64, 8200), (3, 96)):
        x = torch.randn(rows, k, generator=g, device="cuda") * 4
        pick = torch.randperm(rows, generator=g, device="cuda")[: max(1, rows // 8)]
        x[pick[0::3]] *= 2.0**-50
        if dtype == torch.bfloat16:
            x[pick[1::3]] *= 2.0**110
        x[pick[2::3], 0] = float("nan") if pick.numel() > 2 else 0.0
        x[rows // 2] = 0.0
        x = x.to(dtype)
        check(x, spec)
        if spec.granularity.value == "tensor":  # without the NaN (which makes all of it NaN)
            xc = torch.nan_to_num(x, nan=0.0)
            check(xc, spec)  # bf16: amax over 2**100, every tile redone; fp16: the fp32 form
            check(xc * 2.0**-50, spec)  # fp16: amax under 2**-32, every tile redone
        else:
            check(x[1:], spec)  # tiles straddling other rows


# ---------------------------------------------------------------------------- GRID_SYNC (off by default)
#: Set in the child process that runs the grid-barrier checks (``test_grid_sync_one_launch``).
_GRID_SYNC_CHILD = "QDQ_GRID_SYNC_CHILD"
#: (format, quantize_dequantize options, dtype, shapes): NVFP4, with four over six, FP8 per-tensor;
#: bf16 at the decode sizes (sm_90's tiles of one row grown 1x, 2x, 8x on 132 SMs: 64 / 128 / 128
#: programs), 33 rows (132 programs: every SM one), a shape of neither power of two (2x: 76 programs)
#: and, for NVFP4, 512 rows (grown 16x: 16 warps, 128 programs); fp32 at three of them (each growth
#: once); rotated ones at one size (each shape a compiled variant: the set is kept small)
_GS_SHAPES = ((16, 4096), (33, 4096), (64, 4096), (256, 4096), (37, 4000))
_GS_SOME = ((16, 4096), (256, 4096), (37, 4000))
GRID_SYNC_CASES = (
    *((fmt, kw, dtype, ((*_GS_SHAPES, (512, 4096)) if fmt == "nvfp4" and not kw else _GS_SHAPES)
       if dtype == torch.bfloat16 else _GS_SOME)
      for fmt, kw in (("nvfp4", {}), ("nvfp4", {"scale_rule": "four_over_six"}), ("fp8_e4m3_per_tensor", {}))
      for dtype in (torch.bfloat16, torch.float32)),
    ("nvfp4", {"rotate": {"block": 128, "seed": 1}}, torch.bfloat16, ((64, 4096),)),
    ("fp8_e4m3_per_tensor", {"rotate": {"block": 32}}, torch.bfloat16, ((64, 4096),)),
)
GRID_SYNC_IDS = ("nvfp4-bf16", "nvfp4-fp32", "nvfp4-46-bf16", "nvfp4-46-fp32", "per-tensor-bf16", "per-tensor-fp32",
                 "nvfp4-h128r-bf16", "per-tensor-h32-bf16")
_child_only = pytest.mark.skipif(not os.environ.get(_GRID_SYNC_CHILD),
                                 reason="run in a child process by test_grid_sync_one_launch (a deadlock times out)")


def test_grid_sync_one_launch() -> None:
    """``triton_qdq.GRID_SYNC`` (a two-pass call in one launch whose programs meet at a grid barrier):
    the checks below run in a child process with a time limit, so that a barrier that never opens
    (a deadlock: the kernel spins for ever) fails this test instead of hanging the suite. Select
    them with ``-k grid_sync``."""
    import subprocess
    import sys
    from pathlib import Path

    from vllm_qdq.numerics import triton_qdq

    print(f"grid barrier checks on {_sms(triton_qdq)} SMs")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, **{_GRID_SYNC_CHILD: "1"})
    env.pop("QDQ_TEST_TIMES", None)  # the parent's timings file is the parent's
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rfE",
           f"{Path(__file__).resolve()}", "-k",
           "grid_sync_bits or grid_sync_graph or grid_sync_stress or grid_sync_eager"]
    try:
        out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as e:
        tail = ((e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace"))[-3000:]
        pytest.fail(f"the grid-barrier checks did not end in 420 s (a deadlock?):\n{tail}")
    tail = (out.stdout + out.stderr)[-6000:]
    assert out.returncode == 0, tail
    assert " passed" in out.stdout and " skipped" not in out.stdout.splitlines()[-1], tail


@_child_only
@pytest.mark.parametrize("fmt", ["nvfp4", "fp8_e4m3_per_tensor"])
def test_grid_sync_eager_scratch_back_to_back(fmt: str, monkeypatch) -> None:
    """The eager replay's kept scratch buffer (``EAGER_SCRATCH``) with ``GRID_SYNC = "eager"`` (one
    launch, each program's pair in the buffer): back-to-back calls on two streams, each bit for bit
    (:func:`tests.support.two_pass.back_to_back_on_two_streams`)."""
    from vllm_qdq.numerics import triton_qdq

    from tests.support import two_pass

    two_pass.back_to_back_on_two_streams(triton_qdq, fmt, "eager", monkeypatch)


def _grid_sync_spy(triton_qdq, monkeypatch) -> list[list[tuple[str, bool]]]:
    """Each call that goes through ``_launch``: its launches as (kernel name, ``SYNC``); replays by
    the eager fast path do not come here."""
    seen: list[list[tuple[str, bool]]] = []
    real = triton_qdq._launch

    def spy(x, y, r, spec, rule, gamax, ex=None, rec=None):
        mine = [] if rec is None else rec
        n = len(mine)
        held = real(x, y, r, spec, rule, gamax, ex, mine)
        seen.append([(fn.__name__, bool(kw.get("SYNC"))) for fn, _, _, kw, _, _ in mine[n:]])
        return held

    monkeypatch.setattr(triton_qdq, "_launch", spy)
    return seen


def _grid_sync_call(triton_qdq, on: bool, x: torch.Tensor, fmt: str, kw: dict) -> torch.Tensor:
    """One call with ``GRID_SYNC`` set to ``on`` (recorded calls dropped first: they keep the path
    they were recorded with)."""
    from vllm_qdq.numerics.qdq import quantize_dequantize

    if triton_qdq.GRID_SYNC != on:
        triton_qdq._FAST.clear()
        triton_qdq.GRID_SYNC = on
    return quantize_dequantize(x, fmt, backend="triton", **kw)


def _grid_sync_words(triton_qdq, stream: torch.cuda.Stream | None = None) -> tuple[int, int]:
    """(count, generation) of the grid barrier's words of ``stream`` (default: the current one)."""
    torch.cuda.synchronize()
    dev = torch.device("cuda", torch.cuda.current_device())
    raw = (stream or torch.cuda.current_stream()).cuda_stream
    words = triton_qdq._GRID_BARRIERS[(dev, raw)]
    return int(words[0]), int(words[triton_qdq._GRID_GEN])


def _has_words(triton_qdq, stream: torch.cuda.Stream | None = None) -> bool:
    """Whether the grid barrier's words of ``stream`` (default: the current one) exist yet."""
    dev = torch.device("cuda", torch.cuda.current_device())
    return (dev, (stream or torch.cuda.current_stream()).cuda_stream) in triton_qdq._GRID_BARRIERS


def _sms(triton_qdq) -> int:
    return triton_qdq._sm_count(torch.device("cuda", torch.cuda.current_device()))


#: An H100 / H200 SXM: every shape of GRID_SYNC_CASES fits one wave of the grown QDQ tile there (fewer
#: SMs, e.g. an H100 PCIe's 114: a shape that does not fit takes the two-launch path, still checked)
_FULL_SMS = 132


@_child_only
@pytest.mark.parametrize(("fmt", "kw", "dtype", "shapes"), GRID_SYNC_CASES, ids=GRID_SYNC_IDS)
def test_grid_sync_bits(fmt: str, kw: dict, dtype: torch.dtype, shapes: tuple, monkeypatch) -> None:
    """With ``GRID_SYNC`` on, each call is one launch of the QDQ kernel with ``SYNC`` (no amax
    pass), recorded and then replayed by the eager fast path, and gives the two-launch path's bits
    (``GRID_SYNC`` off), NaN / Inf / huge / subnormal values included; the barrier's words end each
    launch with the count at 0 and the generation one further."""
    from vllm_qdq.numerics import triton_qdq

    full = _sms(triton_qdq) >= _FULL_SMS
    monkeypatch.setattr(triton_qdq, "GRID_SYNC", False)
    monkeypatch.setattr(triton_qdq, "_FAST", {})
    seen = _grid_sync_spy(triton_qdq, monkeypatch)
    sync_launches = 0
    gen0 = None
    for shape in shapes:
        for i in range(2):
            torch.manual_seed(10 * i + shape[0])
            x = (torch.randn(shape, device="cuda") * torch.logspace(-3, 3, shape[1], device="cuda")).to(dtype)
            if i:
                x = specials(x)
            off = _grid_sync_call(triton_qdq, False, x, fmt, kw)
            n = len(seen)
            if gen0 is None:  # the words made by the first call with the switch on
                gen0 = _grid_sync_words(triton_qdq)[1] if _has_words(triton_qdq) else 0
            ons = [_grid_sync_call(triton_qdq, True, x, fmt, kw) for _ in range(2)]  # recorded, then replayed
            (entry,) = triton_qdq._FAST.values()
            if seen[n:] == [[("_amax_kernel", False), ("_qdq_block_kernel", False)]] and not full:
                assert len(entry.launches) == 2  # too large for this GPU's SMs: the two-launch path
            else:
                assert seen[n:] == [[("_qdq_block_kernel", True)]], (shape, _sms(triton_qdq), seen[n:])
                assert len(entry.launches) == 1  # the replay: one launch
                sync_launches += 2
            for on in ons:
                assert_same_bits(on, off)
    assert sync_launches, f"no call took the grid barrier's path on {_sms(triton_qdq)} SMs"
    assert _grid_sync_words(triton_qdq) == (0, gen0 + sync_launches)


@_child_only
@pytest.mark.parametrize("warps", [1, 16])
def test_grid_sync_stress(warps: int) -> None:
    """The grid barrier alone, 2000 rounds back to back in one cooperative launch of one program per
    SM (every SM holds one: the co-residency the QDQ path relies on, at its widest grid): after each
    barrier every program reads every other program's store of that round at the L2 (``.cg``, as the
    pairs are read) and finds it; the words end with the count at 0 and the generation 2000 further.
    Poisoned slots (a stale value from an earlier round, or never written) would count as errors."""
    from vllm_qdq.numerics import triton_qdq

    import tests.support.triton_qdq_kernels as k

    n = _sms(triton_qdq)
    n_max = 1 << (n - 1).bit_length()
    rounds = 2000
    words = torch.zeros(triton_qdq._GRID_WORDS, dtype=torch.int32, device="cuda")
    words[triton_qdq._GRID_GEN] = 7
    slots = torch.full((2 * n_max,), -1, dtype=torch.int32, device="cuda")
    err = torch.full((n,), -1, dtype=torch.int32, device="cuda")
    k.grid_barrier_stress_kernel[(n,)](words, slots, err, rounds, N_MAX=n_max, num_warps=warps,
                                       launch_cooperative_grid=True)
    torch.cuda.synchronize()
    assert err.tolist() == [0] * n, err.tolist()
    assert [int(words[0]), int(words[triton_qdq._GRID_GEN])] == [0, 7 + rounds]


@_child_only
@pytest.mark.parametrize("fmt", ["nvfp4", "fp8_e4m3_per_tensor"])
def test_grid_sync_eager_mode(fmt: str, monkeypatch) -> None:
    """``GRID_SYNC = "eager"``: eager calls on a stream take the barrier (one launch, then replayed by
    the fast path); a CUDA graph captured on that stream holds the two launches instead (the
    recorded barrier call not replayed into it), replays bit for bit with the two-launch path with
    the barrier's words untouched, and eager calls after the capture take the barrier again."""
    from vllm_qdq.numerics import triton_qdq

    monkeypatch.setattr(triton_qdq, "GRID_SYNC", False)
    monkeypatch.setattr(triton_qdq, "_FAST", {})
    seen = _grid_sync_spy(triton_qdq, monkeypatch)
    src = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    x = src.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        first = _grid_sync_call(triton_qdq, "eager", x, fmt, {})
        assert seen[-1] == [("_qdq_block_kernel", True)]
        n = len(seen)
        again = _grid_sync_call(triton_qdq, "eager", x, fmt, {})  # the fast path's replay
        assert len(seen) == n
        assert_same_bits(again, first)
    torch.cuda.synchronize()
    words = _grid_sync_words(triton_qdq, stream)
    g = torch.cuda.CUDAGraph()
    n = len(seen)
    with torch.cuda.graph(g, stream=stream):
        x.copy_(src * 2.0)
        out = _grid_sync_call(triton_qdq, "eager", x, fmt, {})
        after = out * 1.0
    assert seen[n:] == [[("_amax_kernel", False), ("_qdq_block_kernel", False)]], seen[n:]
    for i in range(3):
        torch.manual_seed(200 + i)
        src.copy_(torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16) * (i + 1))
        src[..., 3] *= 300.0
        g.replay()
        torch.cuda.synchronize()
        assert_same_bits(after, _grid_sync_call(triton_qdq, False, src * 2.0, fmt, {}))
    assert _grid_sync_words(triton_qdq, stream) == words  # the graph holds no barrier
    n = len(seen)
    with torch.cuda.stream(stream):  # (switched back from off: the recorded calls dropped, recorded anew)
        y1 = _grid_sync_call(triton_qdq, "eager", src, fmt, {})
        y2 = _grid_sync_call(triton_qdq, "eager", src, fmt, {})
    assert seen[n:] == [[("_qdq_block_kernel", True)]], seen[n:]  # recorded once, then replayed
    torch.cuda.synchronize()
    assert _grid_sync_words(triton_qdq, stream) == (0, words[1] + 2)
    want = _grid_sync_call(triton_qdq, False, src, fmt, {})
    assert_same_bits(y1, want)
    assert_same_bits(y2, want)


@_child_only
@pytest.mark.parametrize("fmt", ["nvfp4", "fp8_e4m3_per_tensor"])
def test_grid_sync_graph(fmt: str, monkeypatch) -> None:
    """The one-launch call captured in a CUDA graph between a kernel that writes x and one that reads
    y (what vLLM's graphs hold), on the stream its eager warm-up ran on (as vLLM captures: the
    barrier's words are that stream's), replayed with new values each time: bit for bit with the
    two-launch path on those values, the barrier's count back at 0 and its generation one further a
    replay. A capture on a stream that never ran the call eagerly (no words for it yet) records the
    two-launch path instead, with the same bits."""
    from vllm_qdq.numerics import triton_qdq

    monkeypatch.setattr(triton_qdq, "GRID_SYNC", False)
    monkeypatch.setattr(triton_qdq, "_FAST", {})
    seen = _grid_sync_spy(triton_qdq, monkeypatch)
    for rows in (16, 256):
        if rows == 256 and _sms(triton_qdq) < _FULL_SMS and fmt != "nvfp4":
            continue  # 16 warps x 128 programs: not one wave on fewer SMs
        src = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16)
        x = src.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # compiled, recorded and the words made before the capture
            _grid_sync_call(triton_qdq, True, x, fmt, {})
        assert seen[-1] == [("_qdq_block_kernel", True)]
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        triton_qdq._FAST.clear()  # the capture through the launcher (spied), not a recorded call's replay
        n = len(seen)
        with torch.cuda.graph(g, stream=stream):
            x.copy_(src * 2.0)  # the producer
            out = _grid_sync_call(triton_qdq, True, x, fmt, {})
            after = out * 1.0  # the consumer
        assert seen[n:] == [[("_qdq_block_kernel", True)]], seen[n:]  # the stream's words: one launch
        gen0 = _grid_sync_words(triton_qdq, stream)[1]
        for i in range(4):
            torch.manual_seed(100 + i)
            src.copy_(torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16) * (i + 1))
            src[..., 3] *= 300.0
            if i == 3:
                src[0, 5] = float("inf")
            g.replay()
            torch.cuda.synchronize()
            assert _grid_sync_words(triton_qdq, stream) == (0, gen0 + i + 1)
            want = _grid_sync_call(triton_qdq, False, src * 2.0, fmt, {})
            assert_same_bits(after, want)
    fresh = torch.cuda.Stream()  # never ran the call: no words, so the capture takes two launches
    fresh.wait_stream(torch.cuda.current_stream())
    g2 = torch.cuda.CUDAGraph()
    triton_qdq._FAST.clear()
    n = len(seen)
    with torch.cuda.graph(g2, stream=fresh):
        x.copy_(src * 2.0)
        out2 = _grid_sync_call(triton_qdq, True, x, fmt, {})
    assert seen[n:] == [[("_amax_kernel", False), ("_qdq_block_kernel", False)]], seen[n:]
    assert not _has_words(triton_qdq, fresh)
    g2.replay()
    torch.cuda.synchronize()
    assert_same_bits(out2, _grid_sync_call(triton_qdq, False, src * 2.0, fmt, {}))
