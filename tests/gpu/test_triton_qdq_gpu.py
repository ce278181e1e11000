"""Triton QDQ kernels on the GPU against the reference (also run on the CUDA tensors).

Run on the GPU host: ``pytest -m gpu tests/gpu/test_triton_qdq_gpu.py``. Every comparison is
bit for bit (integer views, NaN positions equal).
"""

from __future__ import annotations

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

    def counting(self, x):
        y = real(self, x)
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
