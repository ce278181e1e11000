"""Activation QDQ inside vLLM's quantized GEMM op wrappers (``vllm._custom_ops``).

:func:`install` replaces each covered wrapper (:data:`COVERED`) in ``vllm._custom_ops`` with a
function that, per call:

1. takes the activation argument; if its dtype is not bf16/fp16 (vLLM already quantized it,
   e.g. FP8/INT8 activations with ``a_scales``) the call passes through unchanged;
2. classifies the weights from the call's own arguments (:func:`classify_scalar_type`):
   ``float4_e2m1f`` with E8M0 (``uint8`` / ``float8_e8m0fnu``) scales and no global scale is
   ``mxfp4``; ``float4_e2m1f`` with E4M3 scales and a global scale is ``nvfp4``; FP8 element
   types are ``fp8``; integer types (``uint4b8``, ``uint4``, ``uint8b128``, ...) are ``int``.
   Any other combination raises :class:`RoutingError` naming it;
3. picks the activation format from the settings (:func:`build_table`): ``force`` if set, else
   the layer kind's spec (``linear`` or ``moe``) when it names a format, else ``route[kind]``
   when the spec is ``auto``; ``off`` leaves the call unchanged;
4. replaces the activation by ``torch.ops.vllm_qdq.qdq(x, fmt, scale_rule, -1, None, None,
   rounding, seed, rotate)`` (with a ``rotate`` spec: ``R^T QDQ(R x)``, which with the
   checkpoint's unrotated weights is what a rotated system computes, ``W R^T . QDQ(R x)``; blocks
   along the last, reduction, dimension; NVFP4's per-tensor scale from the activation's own
   amax) and calls the wrapped function with every other argument as given, returning its
   result unchanged. With ``stats_dir`` set, the op is ``torch.ops.vllm_qdq.qdq_stats(x, fmt,
   scale_rule, -1, op_name)`` instead: the same QDQ, recorded under the wrapper's name by the
   op's implementation, in compiled graphs too (:mod:`vllm_qdq.stats`).

The wrapper is plain Python that Dynamo inlines: routing reads only trace-time constants
(scalar-type ids, dtypes, ``is None``), the QDQ is one custom-op node, and the trace line goes
through :func:`vllm_qdq.activation.trace.emit_traced`; so it runs inside ``torch.compile(fullgraph=True)``
graphs and CUDA-graph captures, not only eagerly.

Re-entrancy and chaining: a wrapper carries the attribute :data:`SENTINEL`; :func:`install`
skips a wrapper whose ``__wrapped__`` chain already holds one (double registration), wraps
whatever is in the module now (so another plugin's earlier patch is kept, and runs after the
QDQ), and a later patch by someone else wraps ours. Modules that imported a wrapper by name
(``from vllm._custom_ops import fused_experts_cpu``) before :func:`install` ran are rebound by
scanning ``sys.modules`` for the original function object; modules imported afterwards read
the patched attribute and need nothing (no import hook).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import WEIGHT_KINDS, ConfigError, QDQConfig
from ..numerics.formats import FORMATS, check_rounding, check_scale_rule
from ..numerics.rotation import Rotation

__all__ = [
    "COVERED",
    "LAYER_KINDS",
    "LEFT_OUT",
    "SENTINEL",
    "OpSpec",
    "PatchReport",
    "RoutingError",
    "build_table",
    "classify_scalar_type",
    "install",
    "is_wrapped",
    "set_stats_hook",
    "uninstall",
]

logger = logging.getLogger("vllm_qdq")

#: Attribute set on every wrapper this module makes (value: the op name).
SENTINEL = "__vllm_qdq_wrapped__"
#: Layer kinds the settings distinguish.
LAYER_KINDS: tuple[str, ...] = ("linear", "moe")
#: Activation dtypes that get QDQ'd; any other dtype passes through.
ACT_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)

StatsHook = Callable[[str, torch.Tensor, torch.Tensor, str], None]
WeightFn = Callable[[tuple, dict], "tuple[str | None, str]"]


class RoutingError(ValueError):
    """A call's weight type / scales match no weight kind; the message names them."""


# ----------------------------------------------------------------------------- weights


def _arg(args: tuple, kwargs: dict, pos: int, kw: str) -> Any:
    return args[pos] if len(args) > pos else kwargs.get(kw)


#: ScalarType id -> (name, kind); kind "fp4" needs the scales to tell MXFP4 from NVFP4.
_SCALAR: dict[int, tuple[str, str | None]] = {}
_E8M0_DTYPES = tuple(d for d in (torch.uint8, getattr(torch, "float8_e8m0fnu", None)) if d is not None)


def _init_scalar_table() -> None:
    if _SCALAR:
        return
    from vllm.scalar_type import ScalarType, scalar_types

    for name in sorted(vars(scalar_types)):
        t = getattr(scalar_types, name)
        if not isinstance(t, ScalarType) or t.id in _SCALAR:
            continue
        if name == "float4_e2m1f":
            kind: str | None = "fp4"
        elif name in ("float8_e4m3fn", "float8_e5m2"):
            kind = "fp8"
        elif t.is_integer():
            kind = "int"
        else:
            kind = None
        _SCALAR[t.id] = (name, kind)


def classify_scalar_type(
    b_type: Any, scales: torch.Tensor | None, global_scale: torch.Tensor | None
) -> tuple[str, str]:
    """``(weight kind, description)`` of a quantized weight from its vLLM ``ScalarType``.

    Raises:
        RoutingError: an element type with no weight kind (e.g. ``float6_e3m2f``), or FP4
            elements whose scales fit neither MXFP4 (E8M0, no global scale) nor NVFP4
            (E4M3 + global scale).
    """
    entry = _SCALAR.get(b_type.id)
    name, kind = entry if entry is not None else (str(b_type), None)
    if kind == "fp4":
        sd = scales.dtype if scales is not None else None
        if global_scale is None and sd in _E8M0_DTYPES:
            return "mxfp4", f"{name}/mxfp4"
        if global_scale is not None and sd == torch.float8_e4m3fn:
            return "nvfp4", f"{name}/nvfp4"
        raise RoutingError(
            f"weight type {name} with {sd} scales and "
            f"{'a' if global_scale is not None else 'no'} global scale is neither MXFP4 "
            "(uint8/float8_e8m0fnu scales, no global scale) nor NVFP4 (float8_e4m3fn scales "
            "+ global scale)"
        )
    if kind is None:
        raise RoutingError(
            f"weight type {name} has no weight kind; accepted: float4_e2m1f (mxfp4/nvfp4), "
            "float8_e4m3fn/float8_e5m2 (fp8), integer types (int)"
        )
    return kind, name


def _scalar(type_pos: int, type_kw: str, scales: tuple[int, str] | None,
            glob: tuple[int, str] | None) -> WeightFn:
    def weight(args: tuple, kwargs: dict) -> tuple[str | None, str]:
        s = _arg(args, kwargs, *scales) if scales else None
        g = _arg(args, kwargs, *glob) if glob else None
        return classify_scalar_type(_arg(args, kwargs, type_pos, type_kw), s, g)

    return weight


def _fixed(kind: str, desc: str) -> WeightFn:
    def weight(args: tuple, kwargs: dict) -> tuple[str | None, str]:
        return kind, desc

    return weight


#: vLLM ``CPUQuantMethod`` values -> weight kind (``None``: unquantized weights).
_CPU_MOE_KINDS: dict[int, tuple[str | None, str]] = {
    0: (None, "unquantized"),
    1: ("int", "int8_w8a8"),
    2: ("fp8", "fp8_w8a16"),
    3: ("int", "int4_w4a8"),
    4: ("mxfp4", "mxfp4"),
}


def _cpu_moe_method(args: tuple, kwargs: dict) -> tuple[str | None, str]:
    method = int(_arg(args, kwargs, 6, "moe_comp_method"))
    if method not in _CPU_MOE_KINDS:
        raise RoutingError(f"fused_experts_cpu moe_comp_method={method}; accepted: {sorted(_CPU_MOE_KINDS)}")
    return _CPU_MOE_KINDS[method]


# ----------------------------------------------------------------------------- coverage


@dataclass(frozen=True)
class OpSpec:
    """One covered wrapper of ``vllm._custom_ops``.

    ``act_pos`` / ``act_kw``: where the activation is (positional index, keyword);
    ``layer``: ``linear`` or ``moe``; ``weight``: ``(args, kwargs) -> (kind, description)``
    (kind ``None``: the call's weights are not quantized, pass through); ``reached_by``: the
    vLLM kernels that call it (documentation).
    """

    name: str
    act_pos: int
    act_kw: str
    layer: str
    weight: WeightFn
    reached_by: str


COVERED: tuple[OpSpec, ...] = (
    OpSpec("marlin_gemm", 0, "a", "linear", _scalar(9, "b_q_type", (4, "b_scales"), (6, "global_scale")),
           "Marlin dense W4/W8 A16: GPTQ/AWQ (Marlin), FP8, MXFP4, NVFP4, MXFP8 weight-only"),
    OpSpec("moe_wna16_marlin_gemm", 0, "input", "moe",
           _scalar(16, "b_q_type", (4, "b_scales"), (6, "global_scale")),
           "Marlin fused MoE (gate-up and down): MXFP4 (gpt-oss), NVFP4, FP8, GPTQ/AWQ"),
    OpSpec("machete_mm", 0, "a", "linear", _scalar(2, "b_type", None, None),
           "Machete W4A16/W8A16 (default GPTQ/AWQ dense kernel on Hopper)"),
    OpSpec("gptq_gemm", 0, "a", "linear", _fixed("int", "gptq"), "ExLlama GPTQ dense"),
    OpSpec("awq_gemm", 0, "input", "linear", _fixed("int", "awq"), "AWQ dense (CUDA or Triton)"),
    OpSpec("allspark_w8a16_gemm", 0, "a", "linear", _fixed("int", "uint8b128"), "AllSpark W8A16 (Ampere)"),
    OpSpec("moe_wna16_gemm", 0, "input", "moe", _fixed("int", "wna16"), "MoE WNA16 CUDA kernel"),
    OpSpec("gptq_gemm_rdna3", 0, "a", "linear", _fixed("int", "gptq"), "ROCm RDNA3 W4A16"),
    OpSpec("moe_gptq_gemm_rdna3", 0, "a", "moe", _fixed("int", "gptq"), "ROCm RDNA3 MoE W4A16"),
    OpSpec("wvSplitK_int4_g", 1, "activation", "linear", _fixed("int", "int4"), "ROCm hybrid W4A16"),
    OpSpec("cpu_gemm_wna16", 0, "input", "linear", _fixed("int", "wna16"), "CPU W4A16/W8A16"),
    OpSpec("int4_scaled_mm_cpu", 0, "x", "linear", _fixed("int", "int4"), "CPU W4A8 (dynamic int8)"),
    OpSpec("fp8_scaled_mm_cpu", 0, "mat1", "linear", _fixed("fp8", "float8_e4m3fn"),
           "CPU FP8 W8A16 (vLLM's own CPU FP8 kernel calls torch.ops directly)"),
    OpSpec("fused_experts_cpu", 1, "hidden_states", "moe", _cpu_moe_method,
           "CPU fused MoE (sgl kernels): INT8, FP8, INT4, MXFP4 weights"),
    OpSpec("cpu_fused_moe_int8", 1, "input", "moe", _fixed("int", "int8"), "CPU fused MoE, INT8 weights"),
)

#: Wrappers with a matrix product that are deliberately not wrapped, and why.
LEFT_OUT: dict[str, str] = {
    **dict.fromkeys(
        ("cutlass_scaled_mm", "cutlass_scaled_mm_azp", "cutlass_moe_mm", "cutlass_fp4_moe_mm",
         "cutlass_mxfp4_moe_mm", "cutlass_scaled_fp4_mm", "cutlass_w4a8_mm", "cutlass_w4a8_moe_mm",
         "matmul_mxf4_bf16_tn", "onednn_scaled_mm", "wvSplitKQ"),
        "activation already quantized by vLLM (FP8/INT8/FP4 operand): a real low-precision GEMM",
    ),
    **dict.fromkeys(
        ("LLMM1", "wvSplitK", "wvSplitKrc", "dsv3_fused_a_gemm", "fp32_router_gemm", "onednn_mm",
         "weight_packed_linear_cpu", "cpu_fused_moe", "bmm_cpu"),
        "unquantized (bf16/fp16/fp32) weights: not a quantized GEMM",
    ),
    **dict.fromkeys(
        ("awq_dequantize", "gptq_shuffle", "gptq_marlin_repack", "awq_marlin_repack",
         "gptq_marlin_moe_repack", "awq_marlin_moe_repack", "marlin_int4_fp8_preprocess",
         "machete_prepack_B", "allspark_repack_weight", "cpu_prepack_moe_weight",
         "cpu_prepack_moe_weight_int8", "convert_weight_packed_scale_zp"),
        "weight preparation at load time: no activation",
    ),
    **dict.fromkeys(
        ("scaled_fp8_quant", "scaled_int8_quant", "scaled_fp4_quant", "scaled_fp4_experts_quant",
         "mxfp4_experts_quant", "silu_and_mul_scaled_fp4_experts_quant",
         "silu_and_mul_mxfp4_experts_quant", "fusedQuantizeMx", "fusedQuantizeNv",
         "onednn_scaled_int8_quant"),
        "activation quantizers feeding the real low-precision GEMMs above",
    ),
}


# ----------------------------------------------------------------------------- settings


#: One routing-table entry: (format, scale rule, rounding, seed, rotation as the op's string).
Choice = tuple[str, str, str, "int | None", "str | None"]


def build_table(cfg: QDQConfig) -> dict[tuple[str, str], Choice | None]:
    """``(layer kind, weight kind) -> (format, scale rule, rounding, seed, rotate)`` or ``None``
    (off), validated.

    ``force`` wins over everything; a layer spec naming a format applies to every weight kind;
    ``auto`` takes ``route[weight kind]``. With ``auto`` or ``force``, the layer spec's scale
    rule applies where the chosen format accepts it (MX rules on MX formats, ``four_over_six`` on
    the NVFP4 family) and other formats use their default; likewise ``rounding: stochastic``
    applies where the chosen format takes it (MX, NVFP4 family) and the others round to
    nearest. A format named in the layer spec must accept the rule and rounding given. The
    layer spec's ``rotate`` applies to every format it routes to.

    Raises:
        ConfigError: a format / scale rule / rounding combination the format table rejects.
    """
    table: dict[tuple[str, str], Choice | None] = {}
    for layer in LAYER_KINDS:
        spec = cfg.linear if layer == "linear" else cfg.moe
        for kind in WEIGHT_KINDS:
            if cfg.force:
                fmt, where = cfg.force, "force"
            elif spec.format == "auto":
                fmt, where = cfg.route[kind], f"route.{kind}"
            else:
                fmt, where = spec.format, f"{layer}.format"
            if fmt == "off":
                table[(layer, kind)] = None
                continue
            if fmt not in FORMATS:
                raise ConfigError(f"{where}={fmt!r} is not a known format; accepted: off, {', '.join(FORMATS)}")
            explicit = where == f"{layer}.format"
            rule = spec.scale_rule if explicit or spec.scale_rule in FORMATS[fmt].scale_rules else "floor"
            rounding = spec.rounding if explicit or FORMATS[fmt].takes_rounding else "nearest"
            try:
                check_scale_rule(FORMATS[fmt], rule)
            except ValueError as e:
                raise ConfigError(f"{layer}.scale_rule with {where}={fmt!r}: {e}") from None
            try:
                check_rounding(FORMATS[fmt], rounding)
            except ValueError as e:
                raise ConfigError(f"{layer}.rounding with {where}={fmt!r}: {e}") from None
            table[(layer, kind)] = (fmt, rule, rounding, spec.seed if rounding != "nearest" else None,
                                    spec.rotate_arg)
    return table


@dataclass
class _State:
    cfg: QDQConfig
    table: dict[tuple[str, str], Choice | None]
    trace: bool
    stats: bool
    #: rotation string -> (block, pad), parsed once (the traced wrapper only reads it)
    rotations: dict[str, tuple[int, bool]] = field(default_factory=dict)


_STATE: _State | None = None
#: name -> the function that was in ``vllm._custom_ops`` before we wrapped it.
_ORIGINALS: dict[str, Callable] = {}
#: (module, attribute, previous value) of every by-name reference we rebound.
_REBOUND: list[tuple[Any, str, Callable]] = []


def set_stats_hook(hook: StatsHook | None) -> None:
    """Send recorded calls to ``hook(op_name, x, y, fmt)`` (``None`` or
    :func:`vllm_qdq.stats.op_hook`: the per-process recorder).

    Called only while settings have ``stats_dir``, from the run-time implementation of the
    ``vllm_qdq::qdq_stats`` op (eagerly and inside compiled graphs; never while Dynamo traces),
    so it may be any Python. Process-wide: the ``qdq`` method's calls go to it too.
    """
    from ..stats import set_hook

    set_hook(hook)


# ----------------------------------------------------------------------------- wrapping


def is_wrapped(fn: Any) -> bool:
    """Whether ``fn`` or anything on its ``__wrapped__`` chain is one of our wrappers."""
    seen = 0
    while fn is not None and seen < 64:
        if getattr(fn, SENTINEL, None):
            return True
        fn = getattr(fn, "__wrapped__", None)
        seen += 1
    return False


def _fmt_str(choice: Choice | None) -> str:
    if choice is None:
        return "off"
    fmt, rule, rounding, seed, rot = choice
    shown = f"{fmt}/{rule}" if FORMATS[fmt].takes_scale_rule or rule != "floor" else fmt
    if rot:
        shown += f"+{Rotation.decode(rot)}"
    if rounding != "nearest":
        shown += f"+{rounding}(seed={seed or 0})"
    return shown


def _trace(name: str, layer: str, x: torch.Tensor, wdesc: str, fmt: str) -> None:
    from .trace import emit, emit_traced

    if torch.compiler.is_compiling():
        emit_traced(name, layer, x, wdesc, fmt)
    else:
        emit(name, layer, x, wdesc, fmt)


def _check_rot_k(name: str, k: int, block: int, pad: bool) -> None:
    """The first call of a wrapper (vLLM's profiling run, at start-up) with a K the rotation
    block does not divide stops the engine, naming the op and K (the plugin sees ops, not layers)."""
    if k % block and not pad:
        raise ConfigError(
            f"activation QDQ in {name}: rotate.block={block} does not divide the activation's "
            f"K={k}; accepted: a block dividing K, or \"pad\": true"
        )


def _make_wrapper(spec: OpSpec, inner: Callable) -> Callable:
    name, pos, kw, layer, weight = spec.name, spec.act_pos, spec.act_kw, spec.layer, spec.weight

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        st = _STATE
        if st is None:
            return inner(*args, **kwargs)
        x = args[pos] if len(args) > pos else kwargs.get(kw)
        if not isinstance(x, torch.Tensor):
            return inner(*args, **kwargs)
        if x.dtype not in ACT_DTYPES:
            if st.trace:
                _trace(name, layer, x, "-", "skip")
            return inner(*args, **kwargs)
        kind, wdesc = weight(args, kwargs)
        if kind is None:
            if st.trace:
                _trace(name, layer, x, wdesc, "off")
            return inner(*args, **kwargs)
        choice = st.table[(layer, kind)]
        if st.trace:
            _trace(name, layer, x, wdesc, _fmt_str(choice))
        if choice is None:
            return inner(*args, **kwargs)
        fmt, rule, rounding, seed, rot = choice
        if rot is not None:
            _check_rot_k(name, x.shape[-1], *st.rotations[rot])
        if st.stats:
            y = torch.ops.vllm_qdq.qdq_stats(x, fmt, rule, -1, name, rounding, seed, rot)
        else:
            y = torch.ops.vllm_qdq.qdq(x, fmt, rule, -1, None, None, rounding, seed, rot)
        if len(args) > pos:
            args = (*args[:pos], y, *args[pos + 1:])
        else:
            kwargs = {**kwargs, kw: y}
        return inner(*args, **kwargs)

    setattr(wrapper, SENTINEL, name)
    return wrapper


def _rebind(ops_module: Any) -> list[str]:
    """Point by-name imports of an original wrapper (``sys.modules`` now) at the patched one."""
    originals = {id(fn): name for name, fn in _ORIGINALS.items()}
    done = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or mod is ops_module:
            continue
        d = getattr(mod, "__dict__", None)
        if not isinstance(d, dict):
            continue
        for attr, val in list(d.items()):
            name = originals.get(id(val))
            if name is None or val is not _ORIGINALS[name]:
                continue
            setattr(mod, attr, getattr(ops_module, name))
            _REBOUND.append((mod, attr, val))
            done.append(f"{mod_name}.{attr}")
    return done


@dataclass
class PatchReport:
    """What one :func:`install` call did."""

    wrapped: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    rebound: list[str] = field(default_factory=list)


def install(cfg: QDQConfig) -> PatchReport:
    """Validate ``cfg``, wrap every covered wrapper once, rebind by-name imports.

    Calling it again only replaces the active settings (wrappers read them per call).

    Raises:
        ConfigError: settings the routing table rejects (see :func:`build_table`).
    """
    global _STATE
    table = build_table(cfg)
    from ..numerics.qdq import set_default_backend
    from . import ops  # noqa: F401  (registers torch.ops.vllm_qdq.qdq / qdq_stats)

    set_default_backend(cfg.backend)
    import vllm._custom_ops as vllm_ops

    _init_scalar_table()
    if cfg.stats_dir:
        from ..stats import enable

        enable()
    rotations = {c[4]: (Rotation.decode(c[4]).block, Rotation.decode(c[4]).pad)
                 for c in table.values() if c is not None and c[4] is not None}
    _STATE = _State(cfg, table, cfg.trace, bool(cfg.stats_dir), rotations)
    report = PatchReport()
    for spec in COVERED:
        cur = getattr(vllm_ops, spec.name, None)
        if cur is None:
            report.missing.append(spec.name)
        elif is_wrapped(cur):
            report.already.append(spec.name)
        else:
            _ORIGINALS[spec.name] = cur
            setattr(vllm_ops, spec.name, _make_wrapper(spec, cur))
            report.wrapped.append(spec.name)
    report.rebound = _rebind(vllm_ops)
    return report


def uninstall() -> None:
    """Undo :func:`install` (tests): restore the module attributes and rebound references.

    A wrapper someone else has since wrapped cannot be removed from their chain; it becomes a
    pass-through (no active settings).
    """
    global _STATE
    _STATE = None
    import vllm._custom_ops as vllm_ops

    for name, orig in list(_ORIGINALS.items()):
        cur = getattr(vllm_ops, name, None)
        if getattr(cur, SENTINEL, None):
            setattr(vllm_ops, name, orig)
            del _ORIGINALS[name]
    for mod, attr, val in reversed(_REBOUND):
        if getattr(getattr(mod, attr, None), SENTINEL, None):
            setattr(mod, attr, val)
    _REBOUND.clear()
