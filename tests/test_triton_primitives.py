"""The shared Triton primitives (``vllm_qdq.numerics.triton_primitives``), bit for bit.

Run on CPU under ``TRITON_INTERPRET=1`` (the module is reloaded for the interpreter, as in
``tests/test_triton_qdq.py``). Each primitive is wrapped in a one-line kernel and compared with
the torch reference it stands for: :func:`mx_exponent` with
:func:`vllm_qdq.numerics.reference.mx_scale_exponent` for every element type and scale rule (by
its integer code), :func:`round_elem_f32` with :func:`vllm_qdq.numerics.reference.round_to_elem`
for every element type, :func:`pow2_f32` with exact powers of two. The QDQ kernels and the sage3
kernel call these and nothing else for exponents and element rounding.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import torch
from vllm_qdq.numerics.formats import ELEMENTS, SCALE_RULE_CODES, SCALE_RULES
from vllm_qdq.numerics.reference import mx_scale_exponent, round_to_elem

from tests.support.bits import assert_same_bits

N = 512


@pytest.fixture(scope="module")
def prims():
    """The primitives and three test kernels, built for the interpreter (restored after)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    pytest.importorskip("triton")
    import vllm_qdq.numerics.triton_primitives as mod

    mod = importlib.reload(mod)
    assert mod.interpreting()
    import tests.support.triton_primitive_kernels as k

    k = importlib.reload(k)
    np_err = np.seterr(divide="ignore", invalid="ignore", over="ignore")
    yield mod, k.exp_kernel, k.round_kernel, k.pow2_kernel
    np.seterr(**np_err)
    if old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = old
    importlib.reload(mod)


def _amaxes() -> torch.Tensor:
    """Finite non-negative fp32: zero, subnormals, powers of two and their neighbours, random."""
    g = torch.Generator().manual_seed(0)
    p2 = torch.tensor([2.0**k for k in range(-149, 128)], dtype=torch.float64).to(torch.float32)
    near = torch.cat([torch.nextafter(p2, torch.zeros_like(p2)), torch.nextafter(p2, torch.full_like(p2, 3e38))])
    sig = torch.tensor([1.5, 1.75, 1.875, 1.9375, 1.96875, 1.25, 1.125], dtype=torch.float32)
    marks = (sig[:, None] * p2[None, 100:200]).flatten()
    rnd = torch.exp2(torch.empty(N, dtype=torch.float64).uniform_(-149, 127, generator=g)).to(torch.float32)
    vals = torch.cat([torch.zeros(1), p2, near, marks, rnd, torch.tensor([3.4028234663852886e38])])
    vals = vals[torch.isfinite(vals)]
    return vals[: (vals.numel() // N) * N]


@pytest.mark.parametrize("rule", SCALE_RULES)
@pytest.mark.parametrize("elem", list(ELEMENTS))
def test_mx_exponent_matches_reference(prims, elem: str, rule: str) -> None:
    _, exp_kernel, _, _ = prims
    spec = ELEMENTS[elem]
    amax = _amaxes()
    want = mx_scale_exponent(amax, spec, rule).to(torch.int32)
    got = torch.empty(amax.numel(), dtype=torch.int32)
    for s in range(0, amax.numel(), N):
        exp_kernel[(1,)](amax[s:s + N], got[s:s + N], RULE=SCALE_RULE_CODES[rule], EMAX=spec.emax,
                         MBITS=spec.mbits, MAXN=float(spec.max_normal), BLOCK=N)
    bad = (got != want).nonzero().flatten()
    assert bad.numel() == 0, [(float(amax[i]), int(got[i]), int(want[i])) for i in bad[:5]]


@pytest.mark.parametrize("elem", list(ELEMENTS))
def test_round_elem_matches_reference(prims, elem: str) -> None:
    """Every grid point, every midpoint (ties), their fp32 neighbours, both signs, signed
    zeros, values past max_normal (saturation), NaNs of any payload (kept NaN) and random values
    across the element's range."""
    _, _, round_kernel, _ = prims
    spec = ELEMENTS[elem]
    grid = torch.tensor(spec.grid(), dtype=torch.float64)
    mids = (grid[:-1] + grid[1:]) / 2
    g = torch.Generator().manual_seed(1)
    rnd = torch.empty(N, dtype=torch.float64).uniform_(0, spec.max_normal * 1.5, generator=g)
    base = torch.cat([grid, mids, rnd, torch.tensor([spec.max_normal * 4, 1e30, 1e-30, 1e-45])]).to(torch.float32)
    base = torch.cat([base, torch.nextafter(base, torch.zeros_like(base)),
                      torch.nextafter(base, torch.full_like(base, 3e38))])
    nans = torch.tensor([0x7F810000, -0x3FFFFF, 0x7FC00000, 0x7F800001], dtype=torch.int32).view(torch.float32)
    v = torch.cat([base, -base, torch.tensor([0.0, -0.0]), nans])
    v = torch.cat([v, torch.zeros((-v.numel()) % N)])
    want = round_to_elem(v, spec)
    got = torch.empty_like(v)
    emin = 0 if spec.is_int else spec.emin
    for s in range(0, v.numel(), N):
        round_kernel[(1,)](v[s:s + N], got[s:s + N], MAXN=float(spec.max_normal), EMIN=emin,
                           MBITS=spec.mbits, IS_INT=spec.is_int, BLOCK=N)
    assert_same_bits(got, want)


def test_pow2_is_exact(prims) -> None:
    _, _, _, pow2_kernel = prims
    e = torch.arange(-127, 128, dtype=torch.int32)
    e = torch.cat([e, torch.zeros(256 - e.numel(), dtype=torch.int32)])
    got = torch.empty(256, dtype=torch.float32)
    pow2_kernel[(1,)](e, got, BLOCK=256)
    want = torch.exp2(e.to(torch.float64)).to(torch.float32)
    assert_same_bits(got, want)


def test_rule_codes_are_one_encoding(prims) -> None:
    """One integer per rule, in SCALE_RULES order, used by both kernel families."""
    mod = prims[0]
    assert SCALE_RULE_CODES == {"floor": 0, "ceil": 1, "even": 2, "rceil": 3}
    assert [mod.rule_code(r) for r in SCALE_RULES] == [0, 1, 2, 3]
