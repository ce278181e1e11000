"""sage3 on a CUDA GPU: accuracy against fp32 SDPA at diffusion shapes, and the compiled kernel
against the torch reference. Run on the GPU host: ``pytest -m gpu tests/gpu/test_sage3_gpu.py -s``.

Figures are printed (``-s``). Bounds come from the torch reference on CPU (S=4096, 2 heads,
random normal bf16): default ``floor`` rule mxfp4 cos 0.969 / rel L2 0.246, nvfp4 0.982 / 0.193,
mxfp8_s1 0.998 / 0.062; ``rceil`` mxfp8_s1 0.9986 / 0.054. The previous plugin's H100 figures
(mxfp4 0.9696 / 0.257, mxfp8_s1 0.9986 / 0.053) are compared in scripts/bench_sage3.py.
"""

from __future__ import annotations

import pytest
import torch
from vllm_qdq.sage3.numerics.kernel import sage3_attention
from vllm_qdq.sage3.numerics.reference import ACC_DTYPES, SAGE3_FORMATS, sage3_attention_reference

pytestmark = pytest.mark.gpu

# format -> (min cosine, max relative L2) vs fp32 SDPA with fp32 accumulation at 4k.
BOUNDS = {
    "mxfp4": (0.966, 0.257),  # old plugin: 0.9696 / 0.257
    "mxfp8_s1": (0.9975, 0.068),  # old plugin: 0.9986 / 0.053 (matched with SAGE3_SCALE_RULE=rceil)
    "nvfp4": (0.978, 0.21),
    "mxfp4_s1": (0.96, 0.30),
}
# bf16 accumulators add error on top; allow a fixed slack.
BF16_SLACK = (0.01, 0.08)


def _inputs(b, s, hq, hkv, d, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, s, hq, d, device="cuda", generator=g).to(dtype)
    k = torch.randn(b, s, hkv, d, device="cuda", generator=g).to(dtype)
    v = torch.randn(b, s, hkv, d, device="cuda", generator=g).to(dtype)
    return q, k, v


def _sdpa32(q, k, v, causal=False):
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2),
        is_causal=causal, enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def _metrics(o, ref):
    o, ref = o.double().flatten(), ref.double().flatten()
    cos = torch.nn.functional.cosine_similarity(o, ref, dim=0).item()
    return cos, ((o - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("acc", ACC_DTYPES)
@pytest.mark.parametrize("fmt", list(SAGE3_FORMATS))
def test_accuracy_4k_d128(fmt: str, acc: str) -> None:
    q, k, v = _inputs(1, 4096, 24, 24, 128)
    ref = _sdpa32(q, k, v)
    out = sage3_attention(q, k, v, quant_format=fmt, acc_dtype=acc)
    torch.cuda.synchronize()
    cos, rel = _metrics(out, ref)
    print(f"\nsage3 {fmt:9s} {acc:14s} B=1 H=24 S=4096 D=128: cos={cos:.5f} relL2={rel:.4f}")
    min_cos, max_rel = BOUNDS[fmt]
    if acc != "fp32":
        min_cos, max_rel = min_cos - BF16_SLACK[0], max_rel + BF16_SLACK[1]
    assert torch.isfinite(out).all()
    assert cos >= min_cos and rel <= max_rel, (fmt, acc, cos, rel)


@pytest.mark.parametrize(
    ("name", "b", "s", "hq", "hkv", "d", "causal"),
    [
        ("d64", 1, 4096, 24, 24, 64, False),
        ("gqa", 2, 2048, 24, 8, 128, False),
        ("mqa-causal", 1, 2048, 16, 1, 128, True),
        ("causal-d64-odd", 1, 3001, 8, 8, 64, True),
    ],
)
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_s1"])
def test_shapes_against_sdpa(name, b, s, hq, hkv, d, causal, fmt) -> None:
    q, k, v = _inputs(b, s, hq, hkv, d, seed=1)
    cos, rel = _metrics(sage3_attention(q, k, v, quant_format=fmt, causal=causal), _sdpa32(q, k, v, causal))
    print(f"\nsage3 {fmt:9s} {name:15s}: cos={cos:.5f} relL2={rel:.4f}")
    min_cos, max_rel = BOUNDS[fmt]
    assert cos >= min_cos - 0.01 and rel <= max_rel + 0.05, (cos, rel)


@pytest.mark.parametrize("acc", ACC_DTYPES)
@pytest.mark.parametrize("fmt", list(SAGE3_FORMATS))
@pytest.mark.parametrize("causal", [False, True])
def test_compiled_kernel_matches_reference(fmt: str, acc: str, causal: bool) -> None:
    """Same numbers as the torch reference up to exp2/division ulps (which can move a P element
    across a rounding boundary now and then): per-element differences stay tiny overall."""
    q, k, v = _inputs(1, 777, 4, 2, 128, dtype=torch.float32, seed=2)
    out = sage3_attention(q, k, v, quant_format=fmt, acc_dtype=acc, causal=causal)
    ref = sage3_attention_reference(q, k, v, quant_format=fmt, acc_dtype=acc, causal=causal)
    diff = (out - ref).abs()
    cos, rel = _metrics(out, ref)
    print(f"\nkernel vs reference {fmt} {acc} causal={causal}: max={diff.max().item():.2e} relL2={rel:.2e}")
    assert rel <= 2e-3 and cos >= 0.99999, (rel, cos)
    assert (diff > 1e-3 * ref.abs().max()).float().mean().item() < 1e-3


@pytest.mark.parametrize(("fmt", "rule", "min_cos", "max_rel"), [
    ("mxfp8_s1", "rceil", 0.9984, 0.056), ("mxfp4", "even", 0.968, 0.25), ("mxfp4", "rceil", 0.965, 0.265),
])
def test_scale_rules_4k(fmt, rule, min_cos, max_rel) -> None:
    q, k, v = _inputs(1, 4096, 24, 24, 128)
    cos, rel = _metrics(sage3_attention(q, k, v, quant_format=fmt, scale_rule=rule), _sdpa32(q, k, v))
    print(f"\nsage3 {fmt} scale_rule={rule} S=4096 D=128: cos={cos:.5f} relL2={rel:.4f}")
    assert cos >= min_cos and rel <= max_rel, (cos, rel)


def test_fp16_and_fp32_inputs_run() -> None:
    for dtype in (torch.float16, torch.float32):
        q, k, v = _inputs(1, 1024, 8, 8, 128, dtype=dtype, seed=3)
        out = sage3_attention(q, k, v, quant_format="nvfp4")
        assert out.dtype == dtype
        cos, _ = _metrics(out, _sdpa32(q, k, v))
        assert cos >= 0.97, (dtype, cos)


@pytest.mark.parametrize("fmt", ["mxfp8_s1", "mxfp4_s1", "nvfp4"])
def test_compiled_op_equals_eager(fmt: str) -> None:
    """``torch.ops.vllm_qdq.sage3_attention`` (the backend's unrouted call) inside an Inductor-
    compiled function gives the eager kernel's bits: the op is opaque, so Inductor neither
    recompiles its Triton kernels (with FP fusion on, which moves the ``_s1`` formats' P) nor
    reorders its K mean (the eager kernel's match with the reference is
    :func:`test_compiled_kernel_matches_reference`'s)."""
    import vllm_qdq.sage3.ops  # noqa: F401  (registers the op)

    q, k, v = _inputs(1, 1000, 8, 4, 128, seed=5)

    def f(q, k, v):
        return torch.ops.vllm_qdq.sage3_attention(q * 1.0, k, v, fmt, "fp32", True, 0.088, "floor")

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="inductor", fullgraph=True)(q, k, v)
    eager = sage3_attention(q, k, v, quant_format=fmt, causal=True, sm_scale=0.088)
    assert torch.equal(compiled, eager)


def _count_replays(monkeypatch) -> list[tuple[bool, bool]]:
    """The fast path's replays from here on, one ``(replayed, through the C launchers)`` a
    :class:`kernel._Replay` call (``replayed`` False: the call went back to the full path)."""
    from vllm_qdq.sage3.numerics import kernel as K

    calls = []
    replay = K._Replay.__call__

    def counting(self, q, k, v):
        out = replay(self, q, k, v)
        calls.append((out is not None, self.direct))
        return out

    monkeypatch.setattr(K._Replay, "__call__", counting)
    return calls


@pytest.mark.parametrize("fmt", list(SAGE3_FORMATS))
@pytest.mark.parametrize(("s", "hq", "hkv", "d", "causal"), [(1000, 4, 2, 64, False), (256, 2, 2, 128, True)])
def test_fast_path_replays_bit_for_bit(fmt: str, s: int, hq: int, hkv: int, d: int, causal: bool,
                                       monkeypatch) -> None:
    """The eager fast path (``kernel.FAST_LAUNCH``): a second call like a first replays the first's
    launches through Triton 3.6's C launchers, with the second's tensors, and gives the full path's
    bits (NVFP4's ``g`` views and the MX formats' held ``[1, 1]`` placed right)."""
    from vllm_qdq.sage3.numerics import kernel as K

    monkeypatch.setattr(K, "_FAST", {})
    monkeypatch.setattr(K, "_REFUSED", set())
    calls = _count_replays(monkeypatch)
    q, k, v = _inputs(1, s, hq, hkv, d, seed=1)
    first = sage3_attention(q, k, v, quant_format=fmt, causal=causal)  # recorded
    q2, k2, v2 = _inputs(1, s, hq, hkv, d, seed=2)
    fast = sage3_attention(q2, k2, v2, quant_format=fmt, causal=causal)  # replayed
    monkeypatch.setattr(K, "FAST_LAUNCH", False)
    full = sage3_attention(q2, k2, v2, quant_format=fmt, causal=causal)
    torch.cuda.synchronize()
    assert calls == [(True, True)], calls
    assert torch.equal(fast.view(torch.int16), full.view(torch.int16))
    assert not torch.equal(first, fast)


@pytest.mark.parametrize(("s", "hkv", "d", "dtype"), [
    (1, 2, 128, torch.bfloat16), (1000, 4, 64, torch.float16), (4096, 24, 128, torch.bfloat16),
    (16384, 3, 128, torch.float32), (70000, 1, 32, torch.bfloat16),
])
def test_k_mean_kernel_bit_for_bit(s: int, hkv: int, d: int, dtype: torch.dtype) -> None:
    """The device K mean (``sage3_k_mean``: part sums, then the parts in order, divided by S)
    gives the reference ``k_mean``'s bits (its adds, on the GPU's fp32 adds and IEEE division),
    compared as integers, with a channel of ``-0.0`` (its mean ``-0.0``), from a strided K, up to
    274 parts (more than the final kernel's 32 loads at once)."""
    from vllm_qdq.sage3.numerics.kernel import sage3_k_mean
    from vllm_qdq.sage3.numerics.reference import k_mean

    g = torch.Generator(device="cuda").manual_seed(s)
    wide = torch.randn(2, s, hkv + 1, d, device="cuda", generator=g) * torch.logspace(-3, 3, d, device="cuda") + 0.5
    k = wide.to(dtype)[:, :, 1:]
    k[:, :, 0, 3] = -0.0
    mean, _ = sage3_k_mean(k)
    ref = k_mean(k)
    assert ref[:, 0, 3].view(torch.int32).eq(-2147483648).all()
    assert torch.equal(mean.view(torch.int32), ref.view(torch.int32))


@pytest.mark.parametrize("acc", ACC_DTYPES)
@pytest.mark.parametrize("fmt", list(SAGE3_FORMATS))
def test_fused_q_bit_for_bit(fmt: str, acc: str, monkeypatch) -> None:
    """Q quantized in the attention kernel (``kernel.FUSE_Q``) or through the pre-pass: the same
    bits, from a strided Q (a view of a wider tensor, as a fused QKV projection gives), causal and
    not, GQA, a ragged last tile; and a fused call replayed by the fast path (no raw Q buffer) with
    new tensors gives the full path's bits. One ``BLOCK_M`` (128; rows are independent, so the
    tile height moves no bits): the autotuner would compile each switch setting's kernel five
    times, the kernels step's time."""
    from vllm_qdq.sage3.numerics import kernel as K

    calls = _count_replays(monkeypatch)

    def strided_q(s, seed):
        q, k, v = _inputs(1, s, 8, 2, 128, seed=seed)
        wide = torch.zeros(1, s, 3, 8, 128, device="cuda", dtype=q.dtype)
        wide[:, :, 0] = q
        return wide[:, :, 0], k, v

    for s, causal in ((1000, False), (777, True)):
        monkeypatch.setattr(K, "_FAST", {})
        monkeypatch.setattr(K, "_REFUSED", set())
        calls.clear()
        q, k, v = strided_q(s, 3)

        def run(q, k, v, fuse, fast=True, causal=causal):
            monkeypatch.setattr(K, "FUSE_Q", fuse)
            monkeypatch.setattr(K, "FAST_LAUNCH", fast)
            return sage3_attention(q, k, v, quant_format=fmt, acc_dtype=acc, causal=causal,
                                   block_m=128).view(torch.int16)

        unfused = run(q, k, v, False)
        fused = run(q, k, v, True)  # recorded
        q2, k2, v2 = strided_q(s, 4)
        fused_replayed = run(q2, k2, v2, True)  # replayed with new tensors
        fused_full = run(q2, k2, v2, True, fast=False)
        torch.cuda.synchronize()
        assert torch.equal(unfused, fused), (fmt, acc, s, causal)
        assert [replayed for replayed, _ in calls] == [True], (fmt, acc, s, causal, calls)
        assert torch.equal(fused_replayed, fused_full), (fmt, acc, s, causal, "replay")
        assert not torch.equal(fused, fused_replayed)


def _switch_bit_for_bit(monkeypatch, switch: str, fmt: str, acc: str, seed: int) -> None:
    """The attention call with the kernel switch ``switch`` on, off, and on again: the same bits,
    causal and not, GQA, a ragged last tile, logits over many binades (keys scaled per channel, so
    that blocks' maxima sit far below their rows'); and the switch is part of the fast path's key (a
    call with it flipped is not a replay of the other; the third call is). One ``BLOCK_M`` (128):
    rows are independent, so the tile height moves no bits, and the autotuner's five configurations
    a key would compile each kernel five times (the kernels step's time)."""
    from vllm_qdq.sage3.numerics import kernel as K

    calls = _count_replays(monkeypatch)
    for s, causal in ((1000, False), (777, True)):
        monkeypatch.setattr(K, "_FAST", {})
        monkeypatch.setattr(K, "_REFUSED", set())
        calls.clear()
        q, k, v = _inputs(1, s, 8, 2, 128, seed=seed)
        k = k * torch.logspace(-2, 2, 128, device="cuda", dtype=k.dtype)

        def run(on, q=q, k=k, v=v, causal=causal):
            monkeypatch.setattr(K, switch, on)
            return sage3_attention(q, k, v, quant_format=fmt, acc_dtype=acc, causal=causal,
                                   block_m=128).view(torch.int16)

        on, off = run(True), run(False)
        on_again = run(True)  # replayed: the same key as the first call
        torch.cuda.synchronize()
        assert torch.equal(on, off), (switch, fmt, acc, s, causal)
        assert torch.equal(on, on_again)
        assert [replayed for replayed, _ in calls] == [True], (switch, fmt, acc, s, causal, calls)


@pytest.mark.parametrize("acc", ["fp32", "bf16_both_dot"])
@pytest.mark.parametrize("fmt", list(SAGE3_FORMATS))
def test_p_max_exp2_bit_for_bit(fmt: str, acc: str, monkeypatch) -> None:
    """Each P block's maximum from its logits' maximum (``kernel.P_MAX_EXP2``) or reduced from P:
    the same bits (:func:`_switch_bit_for_bit`)."""
    _switch_bit_for_bit(monkeypatch, "P_MAX_EXP2", fmt, acc, seed=7)


@pytest.mark.parametrize("acc", ["fp32", "bf16_both_dot"])
def test_p_scale_pairs_bit_for_bit(acc: str, monkeypatch) -> None:
    """NVFP4's P block scales read in pairs (``kernel.P_SCALE_PAIRS``) or the quotient alone with the
    scale converted back: the same bits through the whole attention kernel (:func:`_switch_bit_for_bit`)."""
    _switch_bit_for_bit(monkeypatch, "P_SCALE_PAIRS", "nvfp4", acc, seed=9)


@pytest.mark.parametrize("fmt", list(SAGE3_FORMATS))
def test_captured_in_a_cuda_graph(fmt: str) -> None:
    """A call captured in a CUDA graph (as ``scripts/bench_sage3.py`` times the device alone, and as
    a caller under CUDA graphs runs it) and replayed after new values are copied into its inputs
    gives the eager call's bits on those values: no host synchronization, no launch left out of the
    graph, and nothing the capture froze (the NVFP4 global scales come from the new values)."""
    from vllm_qdq.study.gpu_timing import capture

    q, k, v = _inputs(1, 1000, 8, 2, 128, seed=11)
    sage3_attention(q, k, v, quant_format=fmt)  # compiled, autotuned and recorded outside the capture
    outs = []
    graph = capture(lambda: outs.append(sage3_attention(q, k, v, quant_format=fmt)), 1)  # as the bench does
    out = outs[-1]  # the captured call's output (the warm-up calls' come first)
    q2, k2, v2 = _inputs(1, 1000, 8, 2, 128, seed=12)
    q.copy_(q2 * 3.0)
    k.copy_(k2)
    v.copy_(v2)
    graph.replay()
    eager = sage3_attention(q, k, v, quant_format=fmt)
    torch.cuda.synchronize()
    assert torch.equal(out.view(torch.int16), eager.view(torch.int16)), fmt


def test_fast_path_refuses_one_tensor_in_two_roles(monkeypatch) -> None:
    """A call passing one tensor as K and V is not recorded (a replay places tensors by identity:
    a later call with two tensors would get the first twice); the call itself runs the full path."""
    from vllm_qdq.sage3.numerics import kernel as K

    monkeypatch.setattr(K, "_FAST", {})
    q, k, _ = _inputs(1, 128, 2, 2, 64)
    assert K._fast_key(q, k, k, "mxfp4", "fp32", False, None, None, "floor") is None
    assert K._fast_key(q, k, k.clone(), "mxfp4", "fp32", False, None, None, "floor") is not None
    a = sage3_attention(q, k, k, quant_format="mxfp4")
    b = sage3_attention(q, k, k, quant_format="mxfp4")
    torch.cuda.synchronize()
    assert not K._FAST and torch.equal(a, b)


@pytest.mark.parametrize("pairs", [True, False])
def test_nvfp4_p_quantizer_every_scale_code(pairs: bool) -> None:
    """NVFP4's P quantizer on the GPU (the block scale's E4M3 code from the hardware conversion,
    the quotient, with ``pairs`` the scale too, read from the table by inline PTX:
    ``kernel._nvfp4_p_raw``) gives :func:`quantize_p_reference`'s bits on blocks whose maxima run
    over 2**-21 .. 1: every E4M3 scale code from 0 up, the subnormal ones included. ``pairs``: two codes a conversion and each code's
    (quotient, scale) pair in one read (``kernel.P_SCALE_PAIRS``, the default), or the quotient read
    alone and the scale converted back."""
    import triton
    import triton.language as tl
    from vllm_qdq.sage3.numerics import kernel as K
    from vllm_qdq.sage3.numerics.reference import get_sage3_format, quantize_p_reference

    @triton.jit
    def quant(p_ptr, o_ptr, tab_ptr, M: tl.constexpr, N: tl.constexpr, PAIRS: tl.constexpr):
        offs = tl.arange(0, M)[:, None] * N + tl.arange(0, N)[None, :]
        p3 = tl.reshape(tl.load(p_ptr + offs), (M, N // 16, 16))
        tl.store(o_ptr + offs, tl.reshape(K._nvfp4_p_raw(p3, tab_ptr, PAIRS), (M, N)))

    g = torch.Generator().manual_seed(5)
    amax = torch.exp2(torch.linspace(-21.0, 0.0, 1024))
    p16 = torch.rand(1024, 16, generator=g) * amax[:, None]
    p16[:, 7] = amax
    p = p16.reshape(256, 64).float()
    o = torch.empty_like(p, device="cuda")
    quant[(1,)](p.cuda(), o, K._nvfp4_p_scale_table(o.device), M=256, N=64, PAIRS=pairs, num_warps=8,
                enable_fp_fusion=False)
    ref = quantize_p_reference(p, get_sage3_format("nvfp4"), "floor").float()
    torch.cuda.synchronize()
    differ = o.cpu().view(torch.int32) != ref.view(torch.int32)
    assert not differ.any(), (int(differ.sum()), differ.nonzero()[:5].tolist())
