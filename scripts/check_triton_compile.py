#!/usr/bin/env python3
"""Compile every Triton kernel of vllm_qdq (QDQ and sage3) for a GPU target, without a GPU.

Catches front-end incompatibilities between Triton releases (the GPU image ships Triton 3.6,
the CPU wheel 3.9) before a GPU is at hand: each launch the package would make is captured,
turned into an ``ASTSource`` specialized as Triton's JIT specializes that launch (ints equal to 1
as constants, 16-divisible ints and pointers marked so), and compiled for ``--arch`` (default
sm_90) down to a cubin.

    python scripts/check_triton_compile.py            # every QDQ recipe x rule x dtype
    python scripts/check_triton_compile.py --grid-sync-only   # the one-launch two-pass path (GRID_SYNC)
    PYTHONPATH=/path/to/triton-3.6 python scripts/check_triton_compile.py
"""

from __future__ import annotations

import argparse
import ast
import re
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from vllm_qdq.numerics import triton_qdq
from vllm_qdq.numerics.formats import FORMATS, SCALE_RULES

_PTR = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
        torch.uint8: "*u8", torch.int8: "*i8"}
_seen: set = set()


#: With RECORD: (kernel name, constexpr values by name, compile options, compiled kernel) of each
#: variant compiled, in order (scripts/triton_sass_stats.py reads them)
RECORD = False
#: The sage3 kernels (``vllm_qdq.sage3.numerics.kernel``), in a call's launch order: what this script
#: and ``scripts/triton_sass_stats.py`` capture
SAGE3_KERNELS = ("_k_mean_part_kernel", "_k_mean_final_kernel", "_nvfp4_amax_kernel", "_qdq_prepass_kernel",
                 "_sage3_fwd_kernel")
#: Kernels whose source calls no ``tl.fma``: their PTX must hold none (the QDQ kernels' quotients,
#: ``_div_rn``, ``_div_rn_f64`` and ``_recip2_f64``, write FMAs on purpose)
NO_FMA = set(SAGE3_KERNELS)
COMPILED: list[tuple[str, dict, dict, object]] = []
#: the kernels compiled as programmatic dependent launches (``launch_pdl``: triton_qdq.PDL)
PDL_LAUNCHES: list[str] = []
#: the QDQ kernels compiled with a grid barrier (``SYNC``: triton_qdq.GRID_SYNC)
SYNC_LAUNCHES: list[str] = []
#: the cross-lane butterfly stages in PTX (triton_qdq.ROT_SHFL) whose lane was checked against the
#: layout Triton gave their operand (:func:`check_shfl_layouts`)
SHFL_STAGES: list[str] = []
#: What the PTX of a ``SYNC`` QDQ kernel must hold (``triton_qdq._grid_barrier``, Triton 3.6): the
#: arrival, the last arriver's reset and bump as gpu-scope acq_rel atomics, the generation read with
#: ``ld.acquire`` (``atomic_add(p, 0, sem="acquire")``), the pairs loaded at the L2 (``.cg``); and
#: its scalar atomics issued by one thread and broadcast through shared memory (a ``bar.sync``
#: after each), so that every thread of a program takes the same branch and leaves the spin together
SYNC_PTX = ("atom.global.gpu.acq_rel.add.u32", "atom.global.gpu.acq_rel.exch.b32", "ld.global.gpu.acquire.b32",
            "ld.global.cg")


try:  # the JIT's own specialization (Triton 3.6)
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend
except ImportError:  # another Triton: no specialization (still a compile check)
    native_specialize_impl = CUDABackend = None


def _specialize(fn, i: int, v) -> tuple[str, object, bool]:
    """``(type, constexpr value or None, divisible by 16)`` of argument ``i`` as Triton's JIT
    specializes it at a launch: an int equal to 1 becomes a constexpr, ints and pointers divisible
    by 16 carry ``tt.divisibility`` (what lets loads vectorize), unless the kernel says not to."""
    p = fn.params[i]
    if native_specialize_impl is not None:
        ty, spec = native_specialize_impl(CUDABackend, v, False, not p.do_not_specialize,
                                          not p.do_not_specialize_on_alignment)
        if ty == "constexpr":
            return ty, spec, False
        return ty, None, isinstance(spec, str) and "D" in spec
    if isinstance(v, torch.Tensor):
        return _PTR[v.dtype], None, False
    if isinstance(v, bool):
        return "i1", None, False
    if isinstance(v, int):
        return ("i64" if abs(v) >= 2**31 else "i32"), None, False
    return "fp32", None, False


def _compile(fn, args: tuple, kwargs: dict, target: GPUTarget) -> None:
    names = fn.arg_names
    opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "enable_fp_fusion", "maxnreg", "launch_pdl",
                                       "launch_cooperative_grid") if k in kwargs}
    if opts.get("enable_fp_fusion") is not False:  # absent or None: Triton's default, on
        raise ValueError(f"{fn.__name__} launched with FP fusion on: the compiler may contract a * b + c into one "
                         "rounding, which the reference does not (pass enable_fp_fusion=False)")
    defaults = {p.name: p.default for p in fn.params if p.has_default}  # constexprs a launch may leave out
    values = defaults | dict(zip(names, args, strict=False)) | kwargs
    sig, cx, attrs = {}, {}, {}
    for i, n in enumerate(names):
        v = values[n]
        if fn.params[i].is_constexpr:
            sig[n], cx[(i,)] = "constexpr", v
            continue
        ty, const, div16 = _specialize(fn, i, v)
        sig[n] = ty
        if ty == "constexpr":
            cx[(i,)] = const
        elif div16:
            attrs[(i,)] = [["tt.divisibility", 16]]
    key = (fn.__name__, tuple(sig.items()), tuple(sorted((k, repr(v)) for k, v in cx.items())),
           tuple(sorted(attrs)), tuple(sorted(opts.items())))
    if key in _seen:
        return
    _seen.add(key)
    # the kernels ask Triton for the device's compute capability (target_info.cuda_capability_geq:
    # the FP8 conversions of round_elem_f32), which reads the active driver: here, the target
    import triton.language.target_info as target_info

    def the_target():
        return target

    the_target.__triton_builtin__ = True  # as Triton marks the function it stands for
    current = target_info.current_target
    target_info.current_target = the_target
    try:
        kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs), target=target,
                                options=opts)
    finally:
        target_info.current_target = current
    ptx = kernel.asm["ptx"]
    for via_f16 in ("cvt.rn.satfinite.e4m3x2.f16x2", "cvt.rn.satfinite.e5m2x2.f16x2"):
        if via_f16 in ptx:  # Triton's sm_89 lowering: fp32 truncated to f16 first, near-ties rounded wrong
            raise ValueError(f"{fn.__name__}: {via_f16} in the PTX: an FP8 conversion through f16 does not round "
                             "fp32 to nearest even (triton_primitives.fp8_cvt_grid)")
    if fn.__name__ == "_amax_stream_kernel" and values.get("STAGES", 0) > 1 and "cp.async" not in ptx:
        raise ValueError(f"{fn.__name__}: no cp.async in the PTX: Triton did not pipeline its loop "
                         f"(STAGES={values['STAGES']}), so it reads one tile at a time")
    # a programmatic dependent launch (triton_qdq.PDL): the QDQ pass waits for its amax pass before
    # reading what that pass wrote, and is launched as a dependent; the amax pass lets it launch
    waits = "griddepcontrol.wait" in ptx
    if fn.__name__ == "_qdq_block_kernel" and (waits != bool(opts.get("launch_pdl")) or waits != bool(values.get("PDL"))):
        raise ValueError(f"{fn.__name__}: launch_pdl={opts.get('launch_pdl')}, PDL={values.get('PDL')} and "
                         f"griddepcontrol.wait {'in' if waits else 'not in'} the PTX: a dependent launch must wait "
                         "before it reads the amax pass's words, and only a dependent launch may wait")
    if fn.__name__ == "_amax_kernel" and bool(values.get("PDL")) != ("griddepcontrol.launch_dependents" in ptx):
        raise ValueError(f"{fn.__name__}: PDL={values.get('PDL')} but griddepcontrol.launch_dependents "
                         f"{'not ' if values.get('PDL') else ''}in the PTX")
    if opts.get("launch_pdl"):
        PDL_LAUNCHES.append(fn.__name__)
    if fn.__name__ in ("_qdq_block_kernel", "_amax_kernel", "_amax_stream_kernel", "_qdq_row_kernel") and bool(
            opts.get("launch_cooperative_grid")) != bool(fn.__name__ == "_qdq_block_kernel" and values.get("SYNC")):
        raise ValueError(f"{fn.__name__}: launch_cooperative_grid={opts.get('launch_cooperative_grid')} with "
                         f"SYNC={values.get('SYNC')}: a grid barrier's launch must be cooperative (every program "
                         "placed at once), and only it")
    if fn.__name__ == "_qdq_block_kernel" and values.get("SYNC"):
        _check_sync_ptx(fn.__name__, ptx, bool(opts.get("launch_pdl")))
        SYNC_LAUNCHES.append(fn.__name__)
    elif "ld.global.gpu.acquire" in ptx:
        raise ValueError(f"{fn.__name__}: an acquire load in the PTX of a kernel without a grid barrier")
    if fn.__name__ == "_qdq_block_kernel" and values.get("Y_STREAM") and "st.global.cs" not in ptx:
        raise ValueError(f"{fn.__name__}: Y_STREAM set but no streaming (.cs) store of y in the PTX")
    if "shfl.sync.bfly.b32 p," in kernel.asm["ttgir"]:
        SHFL_STAGES.extend([fn.__name__] * check_shfl_layouts(fn.__name__, kernel.asm["ttgir"]))
    elif values.get("ROT_SHFL") and not triton_qdq._INTERPRETED and triton_qdq._part_lane.fn(
            values["BLOCK_R"], values.get("BLOCK_K", values.get("N_GROUPS", 0) * values.get("GROUP", 0)),
            values["ROT_LOG2"], values["ROT_HELD"], True) >= 0:
        raise ValueError(f"{fn.__name__}: ROT_SHFL and a block split over lanes, but no lane shuffle in the TTGIR")
    if fn.__name__ in NO_FMA:  # no tl.fma in their source: any fma in the PTX is a contraction
        n = ptx.count("fma.rn")
        if n:
            raise ValueError(f"{fn.__name__}: {n} fma.rn instructions in the PTX, which its source never asks for")
    if RECORD:
        COMPILED.append((fn.__name__, {n: values[n] for i, n in enumerate(names) if fn.params[i].is_constexpr},
                         opts, kernel))


_LAYOUT = re.compile(r"^(#\w+) = #ttg\.(linear|blocked)<\{(.*)\}>", re.M)
_SHFL_ASM = re.compile(r'tt\.elementwise_inline_asm "[^"]*shfl\.sync\.bfly\.b32 p, \$1, (\d+),[^"]*".*?'
                       r": tensor<([0-9x]+)xf32, (#\w+)>")


def layout_bases(kind: str, body: str, shape: list[int]) -> dict[str, list[list[int]]]:
    """The register, lane and warp bases (each a coordinate in the tensor, as Triton's linear
    layouts state them; a zero basis is a replica) of a TTGIR layout, ``#ttg.linear`` as written
    or ``#ttg.blocked`` worked out for ``shape``: per-thread elements along ``order``, then lanes,
    then warps, then the repeats that cover the shape, each dimension fastest first."""
    def lists(key: str) -> list:
        m = re.search(key + r" = (\[[^=]*?\])(?:, \w+ = |$)", body)
        return ast.literal_eval(m.group(1)) if m else []

    if kind == "linear":
        return {k: lists(k) for k in ("register", "lane", "warp")}
    spt, tpw, wpc, order = (lists(k) for k in ("sizePerThread", "threadsPerWarp", "warpsPerCTA", "order"))
    rank = len(shape)

    def basis(d: int, v: int) -> list[int]:
        return [v if i == d and v < shape[d] else 0 for i in range(rank)]

    out = {"register": [], "lane": [], "warp": []}
    for key, per, base in (("register", spt, [1] * rank), ("lane", tpw, spt),
                           ("warp", wpc, [a * b for a, b in zip(spt, tpw, strict=True)])):
        for d in order:
            out[key] += [basis(d, base[d] << i) for i in range(per[d].bit_length() - 1)]
    for d in order:  # the repeats of the CTA's tile
        v = spt[d] * tpw[d] * wpc[d]
        while v < shape[d]:
            out["register"].append(basis(d, v))
            v *= 2
    return out


def check_shfl_layouts(name: str, ttgir: str) -> int:
    """Each cross-lane butterfly stage in inline PTX (``triton_qdq._shfl_stage_asm``: a
    ``shfl.sync.bfly`` by a lane mask, on a ``[rows, pairs, 2, half]`` operand) against the
    layout Triton gave its operand in ``ttgir``: the mask's lane bit must step along the pair axis
    (dimension 2) and no other register, lane or warp basis may (each element and its partner
    differ in that lane bit alone). Returns the stages checked; a ValueError names the first that
    fails."""
    layouts = {m.group(1): (m.group(2), m.group(3)) for m in _LAYOUT.finditer(ttgir)}
    found = ttgir.count("shfl.sync.bfly.b32 p,")
    matched = len(_SHFL_ASM.findall(ttgir))
    if matched != found:  # a stage printed in a form the pattern misses would go unchecked
        raise ValueError(f"{name}: {found} lane-shuffle stages in the TTGIR, {matched} of them in the form checked")
    n = 0
    for m in _SHFL_ASM.finditer(ttgir):
        mask, shape, lay = int(m.group(1)), [int(v) for v in m.group(2).split("x")], m.group(3)
        if lay not in layouts or len(shape) != 4 or shape[2] != 2 or mask & (mask - 1):
            raise ValueError(f"{name}: a lane shuffle on tensor<{m.group(2)}, {lay}> by mask {mask}: not a pair "
                             "axis of 2 at dimension 2 in a known layout")
        bases = layout_bases(*layouts[lay], shape)
        bit = mask.bit_length() - 1
        lanes = bases["lane"]
        ok = bit < len(lanes) and lanes[bit] == [0, 0, 1, 0]
        others = [b for k, bs in bases.items() for i, b in enumerate(bs) if b[2] and not (k == "lane" and i == bit)]
        if not ok or others:
            raise ValueError(f"{name}: a lane shuffle by mask {mask} on tensor<{m.group(2)}, {lay}> whose lane bit "
                             f"{bit} is {lanes[bit] if bit < len(lanes) else None} (pair axis bases elsewhere: "
                             f"{others}): the partner lane does not hold the pair's other half")
        n += 1
    return n


def _check_sync_ptx(name: str, ptx: str, pdl: bool) -> None:
    """A grid-barrier QDQ kernel's PTX (:data:`SYNC_PTX`): each instruction there; every atomic
    predicated (one thread issues it); a ``bar.sync`` between each atomic (or acquire load) whose
    result is used and the next compare (the broadcast); no dependent launch (the barrier's programs
    must all run: a dependent launch may start before the grid ahead has finished)."""
    missing = [ins for ins in SYNC_PTX if ins not in ptx]
    if missing:
        raise ValueError(f"{name}: SYNC but {', '.join(missing)} not in the PTX")
    if pdl or "griddepcontrol" in ptx:
        raise ValueError(f"{name}: SYNC launched or compiled as a programmatic dependent launch")
    lines = [ln.strip() for ln in ptx.splitlines()]
    # the pairs are loaded after the spin's back branch and a bar.sync: no thread reads them before the
    # program has passed the barrier
    last_acq = max(i for i, ln in enumerate(lines) if "ld.global.gpu.acquire" in ln)
    back = next(i for i in range(last_acq, len(lines)) if " bra" in lines[i] or lines[i].startswith("bra"))
    first_cg = min(i for i, ln in enumerate(lines) if "ld.global.cg" in ln)
    if not (back < first_cg and any(ln.startswith("bar.sync") for ln in lines[back:first_cg])):
        raise ValueError(f"{name}: the pairs' .cg loads are not after the spin and a bar.sync")
    for i, ln in enumerate(lines):
        if ("atom.global" in ln or "ld.global.gpu.acquire" in ln) and not ln.startswith("@"):
            raise ValueError(f"{name}: an unpredicated grid-barrier access (every thread would issue it): {ln}")
        if ln.startswith("@") and ("atom.global.gpu.acq_rel.add" in ln or "ld.global.gpu.acquire" in ln):
            rest = lines[i + 1:i + 8]
            used = any("st.shared" in r for r in rest)
            if used and not any(r.startswith("bar.sync") for r in rest):
                raise ValueError(f"{name}: an atomic result stored to shared memory with no bar.sync after it: {ln}")


#: (kernel name, its ``SYNC`` constexpr) of every launch captured, compiled or already seen
LAUNCHED: list[tuple[str, bool]] = []


class _Capture:
    def __init__(self, fn, target):
        self.fn, self.target = fn, target

    def __getitem__(self, grid):
        def launch(*a, **k):
            LAUNCHED.append((self.fn.__name__, bool(k.get("SYNC"))))
            return _compile(self.fn, a, dict(k), self.target)

        return launch


def capture(module, names, target: GPUTarget) -> None:
    """Replace ``module``'s jit functions ``names`` by :class:`_Capture`: their launches compile
    for ``target`` instead of running."""
    for name in names:
        setattr(module, name, _Capture(getattr(module, name), target))


def _extras(target: GPUTarget, only: str | None = None) -> int:
    """The issue-18 options: rotation (every block, plain and random), stochastic rounding,
    four over six, nvfp4_e5m3 (launches already captured by main)."""
    from vllm_qdq.numerics.formats import get_format
    from vllm_qdq.numerics.rotation import ROTATION_BLOCKS, Rotation, hadamard_signs

    failures = 0
    variants = [("mxfp4", "floor", None, None, b, s) for b in ROTATION_BLOCKS for s in (None, 1)]
    variants += [("mxfp4", "floor", "stochastic", 1, None, None), ("mxfp8_e4m3", "floor", None, None, 128, None),
                 ("nvfp4", "four_over_six", None, None, None, None), ("nvfp4", "floor", "stochastic", 1, 16, 1),
                 ("nvfp4_e5m3", "four_over_six", "stochastic", 1, None, None),
                 ("fp8_e4m3_per_tensor", "floor", None, None, 128, None), ("nvfp4", "floor", None, None, 128, 1),
                 ("mxfp4", "floor", "stochastic", 1, 64, None), ("nvfp4_e5m3", "four_over_six", None, None, 32, None)]
    default_max = triton_qdq.ROT_TILE_MAX
    for fmt, rule, rounding, seed, block, sseed in variants:
        spec = get_format(fmt)
        for rot_tile_max in (default_max, 0) if block else (default_max,):  # both rotation layouts
            triton_qdq.ROT_TILE_MAX = rot_tile_max
            for dtype in (torch.bfloat16, torch.float32):
                for k in (256, 4096):
                    x = torch.empty(4, k, dtype=dtype)
                    rot = Rotation(block=block, seed=sseed) if block else None
                    ex = triton_qdq._Extras(rot, hadamard_signs(rot, k, "cpu", torch.bfloat16) if rot else None, k,
                                            seed if rounding else None)
                    try:
                        triton_qdq._launch(x, torch.empty_like(x), triton_qdq._fold_rows(x, x, 1), spec, rule, None,
                                           ex)
                    except Exception as e:  # report every failing variant
                        failures += 1
                        print(f"FAIL {fmt} {rule} {rounding} rot={rot} ROT_TILE_MAX={rot_tile_max} {dtype} K={k}: "
                              f"{str(e).strip().splitlines()[-1][:300]}")
    triton_qdq.ROT_TILE_MAX = default_max
    return failures


def _split_paths() -> int:
    """Rotation blocks held in parts over lanes (``triton_qdq.ROT_SPLIT``) at parts of 32, 64 and
    128 elements, over row counts and row lengths that give the QDQ and amax passes different tile
    shapes (rows a tile 1 to 32 and more; rows of 3000, padded: not 16-byte aligned), with the
    default tile table and sm_90's (``tile_configs.json``, what an H100 or H200 plans with): each
    compiled kernel's cross-lane stages are checked against its layout (:func:`check_shfl_layouts`)."""
    from vllm_qdq.numerics.formats import get_format
    from vllm_qdq.numerics.rotation import Rotation, hadamard_signs

    failures = 0
    saved = {n: getattr(triton_qdq, n) for n in triton_qdq.HELD_SWITCHES}
    recipes = (("mxfp4", 128, 1), ("mxfp4", 256, None), ("mxfp8_e4m3", 128, None), ("nvfp4", 256, 1),
               ("nvfp4", 128, 1), ("fp8_e4m3_per_tensor", 256, None), ("fp8_e4m3_per_group128", 256, None))
    default_table = dict(triton_qdq.TILE_CONFIG)
    for held, table in [(h, t) for h in (32, 64, 128) for t in ({}, triton_qdq.tile_configs().get("sm_90", {}))]:
        triton_qdq.TILE_CONFIG.update(default_table)
        triton_qdq.TILE_CONFIG.update({k: tuple(v) for k, v in table.items()})
        for n in triton_qdq.HELD_SWITCHES:
            setattr(triton_qdq, n, held)
        for fmt, block, sseed in recipes:
            for rows, k in ((1, 256), (3, 4096), (64, 4096), (1024, 4096), (16, 16384), (1024, 256), (16, 3000)):
                x = torch.empty(rows, k, dtype=torch.bfloat16)
                rot = Rotation(block=block, seed=sseed, pad=k % block != 0)
                kp = -(-k // block) * block
                ex = triton_qdq._Extras(rot, hadamard_signs(rot, kp, "cpu", torch.bfloat16), kp, None)
                # NVFP4 also with a given global amax tensor 4 bytes into its storage (the buffer
                # the launcher passes in the signs' place, were it not for _anchor_base)
                gamaxes = (None, torch.zeros(4)[1:2]) if fmt == "nvfp4" else (None,)
                for gamax in gamaxes:
                    try:
                        triton_qdq._launch(x, torch.empty_like(x), triton_qdq._fold_rows(x, x, 1), get_format(fmt),
                                           "floor", gamax, ex)
                    except Exception as e:
                        failures += 1
                        print(f"FAIL split {fmt} H{block} seed={sseed} held {held} {rows}x{k} "
                              f"gamax={'tensor' if gamax is not None else None}: {str(e).strip().splitlines()[-1][:300]}")
    for n, v in saved.items():
        setattr(triton_qdq, n, v)
    triton_qdq.TILE_CONFIG.update(default_table)
    return failures


def _launch_with(switch: str, value, x: torch.Tensor, spec, gamax, label: str) -> int:
    """Compile one call's launches with the launcher's module switch ``switch`` set to ``value``
    (restored after); 1 (and a FAIL line naming ``label``) when that fails, else 0."""
    default = getattr(triton_qdq, switch)
    setattr(triton_qdq, switch, value)
    try:
        triton_qdq._launch(x, torch.empty_like(x), triton_qdq._fold_rows(x, x, 1), spec, "floor", gamax)
    except Exception as e:
        print(f"FAIL {label}: {str(e).strip().splitlines()[-1][:300]}")
        return 1
    finally:
        setattr(triton_qdq, switch, default)
    return 0


def _two_pass_paths() -> int:
    """The ways a two-pass recipe gets its tensor amax, each compiled: one tile (a decode-sized
    call), an amax pass of partial pairs, an amax pass of atomics (many tiles), the streaming amax
    pass (``AMAX_STAGES`` 3 and 4, whether or not on by default; its PTX must hold ``cp.async``),
    the QDQ pass storing y streaming (``Y_STREAM``; its PTX must hold a ``.cs`` store), the QDQ
    pass as a programmatic dependent launch of the amax pass and not (``PDL``; the dependent's PTX
    must wait, the amax pass's let it launch),
    NVFP4's given global amax as a float argument and as a tensor read in place, and the grid-barrier
    path of one launch (``GRID_SYNC``, :func:`_grid_sync_paths`)."""
    failures = 0
    for fmt in ("nvfp4", "nvfp4_e5m3", "fp8_e4m3_per_tensor"):
        spec = FORMATS[fmt]
        for dtype in (torch.bfloat16, torch.float32):
            cases = [(1, 4096, None), (64, 4096, None), (4096, 4096, None)]
            if fmt.startswith("nvfp4"):
                cases += [(64, 4096, 4.0), (64, 4096, torch.tensor([4.0]))]
            for rows, k, gamax in cases:  # the one-tile path, whether or not on by default
                failures += _launch_with("ONE_TILE_MAX", 8192, torch.empty(rows, k, dtype=dtype), spec, gamax,
                                         f"{fmt} {dtype} {rows}x{k} global_amax={gamax}")
            x = torch.empty(4096, 4096, dtype=dtype)
            for stages in (3, 4):
                failures += _launch_with("AMAX_STAGES", stages, x, spec, None,
                                         f"{fmt} {dtype} streaming amax pass STAGES={stages}")
            # y stored streaming, on by default or not
            failures += _launch_with("Y_STREAM", True, x, spec, None, f"{fmt} {dtype} Y_STREAM")
            # the QDQ pass a programmatic dependent launch of the amax pass (PDL), on by default or not
            for pdl in (True, False):
                failures += _launch_with("PDL", pdl, x, spec, None, f"{fmt} {dtype} PDL={pdl}")
    return failures + _grid_sync_paths()


#: The calls :func:`_grid_sync_paths` compiles with a grid barrier: (format, scale rule, rounding,
#: rotation (block, seed) or None)
GRID_SYNC_CALLS = (("nvfp4", "floor", "nearest", None), ("nvfp4", "four_over_six", "nearest", None),
                   ("nvfp4", "floor", "stochastic", None), ("nvfp4", "floor", "nearest", (128, 1)),
                   ("nvfp4_e5m3", "floor", "nearest", None), ("fp8_e4m3_per_tensor", "floor", "nearest", None),
                   ("fp8_e4m3_per_tensor", "floor", "nearest", (32, None)))


def _grid_sync_paths(sms: int = 132) -> int:
    """The two-pass recipes in one launch with a grid barrier (``GRID_SYNC``) as an H100 (``sms``
    SMs) plans them at 16, 64 and 256 rows x 4096, 37 x 4000 and 4 x 1024 (one tile with one-tile
    calls off: a grid of one program, whose count Triton specializes to a constant), bf16 and fp32,
    with the default tile table and sm_90's (``tile_configs.json``: one row a program, grown by rows
    and warps to fit): each call must launch the QDQ kernel alone, with ``SYNC`` (its PTX checked by
    :func:`_check_sync_ptx`)."""
    from vllm_qdq.numerics.formats import get_format
    from vllm_qdq.numerics.rotation import Rotation, hadamard_signs

    failures = 0
    saved = (triton_qdq.GRID_SYNC, triton_qdq._sm_count, triton_qdq.ONE_TILE_MAX, dict(triton_qdq.TILE_CONFIG))
    triton_qdq.GRID_SYNC, triton_qdq._sm_count, triton_qdq.ONE_TILE_MAX = True, lambda device: sms, 0
    try:
        for table in ({}, triton_qdq.tile_configs().get("sm_90", {})):
            triton_qdq.TILE_CONFIG.update(saved[3] | table)
            for fmt, rule, rounding, rot in GRID_SYNC_CALLS:
                spec = get_format(fmt)
                for dtype in (torch.bfloat16, torch.float32):
                    for rows, k in ((16, 4096), (64, 4096), (256, 4096), (37, 4000), (4, 1024)):
                        x = torch.empty(rows, k, dtype=dtype)
                        r = Rotation(block=rot[0], seed=rot[1], pad=True) if rot else None
                        kp = r.padded(k) if r else k
                        signs = hadamard_signs(r, kp, "cpu", torch.bfloat16) if r and r.seed is not None else None
                        ex = triton_qdq._Extras(r, signs, kp, 1 if rounding == "stochastic" else None)
                        label = f"GRID_SYNC {fmt} {rule} {rounding} rot={rot} {dtype} {rows}x{k} sm_90 table={bool(table)}"
                        LAUNCHED.clear()
                        try:
                            triton_qdq._launch(x, torch.empty_like(x), triton_qdq._fold_rows(x, x, 1), spec, rule,
                                               None, ex)
                            if LAUNCHED != [("_qdq_block_kernel", True)]:
                                raise ValueError(f"launched {LAUNCHED}, not the QDQ kernel alone with SYNC")
                        except Exception as e:
                            failures += 1
                            print(f"FAIL {label}: {str(e).strip().splitlines()[-1][:300]}")
    finally:
        triton_qdq.GRID_SYNC, triton_qdq._sm_count, triton_qdq.ONE_TILE_MAX = saved[:3]
        triton_qdq.TILE_CONFIG.clear()
        triton_qdq.TILE_CONFIG.update(saved[3])
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--two-pass-only", action="store_true",
                    help="only the two-pass recipes' paths (a quick check of another --arch)")
    ap.add_argument("--split-only", action="store_true",
                    help="only rotation blocks held in parts over lanes (triton_qdq.ROT_SPLIT), their lane shuffles "
                    "checked against the layouts")
    ap.add_argument("--grid-sync-only", action="store_true",
                    help="only the two-pass recipes in one launch with a grid barrier (triton_qdq.GRID_SYNC)")
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    triton_qdq.NO_DEVICE_CC = args.arch  # the launcher's PDL choice for this target (CPU tensors here)
    capture(triton_qdq, ("_qdq_block_kernel", "_qdq_row_kernel", "_amax_kernel", "_amax_stream_kernel"), target)
    if args.grid_sync_only:
        return _summary(args.arch, _grid_sync_paths())
    if args.two_pass_only:
        return _summary(args.arch, _two_pass_paths())
    if args.split_only:
        return _summary(args.arch, _split_paths())
    failures = 0
    for fmt, spec in FORMATS.items():
        for rule in SCALE_RULES if spec.takes_scale_rule else ("floor",):
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                for k in (64, 4096, 20000):
                    x = torch.empty(4, k, dtype=dtype)
                    try:
                        triton_qdq._launch(x, torch.empty_like(x), triton_qdq._fold_rows(x, x, 1), spec, rule,
                                           None)
                    except Exception as e:  # report every failing variant, then exit non-zero
                        failures += 1
                        print(f"FAIL {fmt} {rule} {dtype} K={k}: {str(e).strip().splitlines()[-1][:300]}")
    failures += _extras(target)
    failures += _split_paths()
    failures += _two_pass_paths()
    from vllm_qdq.sage3.numerics import kernel as sage3_kernel

    capture(sage3_kernel, SAGE3_KERNELS, target)
    saved = sage3_kernel.FUSE_Q, sage3_kernel.P_MAX_EXP2, sage3_kernel.P_SCALE_PAIRS
    # Q through the pre-pass and quantized in the attention kernel (FUSE_Q); P's block maxima from
    # the logits' and reduced from P (P_MAX_EXP2); NVFP4's P scales read in pairs or not (P_SCALE_PAIRS)
    for fuse, pmax, pairs in ((False, True, True), (True, True, True), (False, False, True), (False, True, False)):
        sage3_kernel.FUSE_Q, sage3_kernel.P_MAX_EXP2, sage3_kernel.P_SCALE_PAIRS = fuse, pmax, pairs
        for fmt in ("mxfp4", "nvfp4", "mxfp8_s1", "mxfp4_s1") if pairs else ("nvfp4",):
            for acc in ("fp32", "bf16_both_dot", "bf16_pv_only"):
                for d, bm, causal, dtype in ((128, 128, False, torch.bfloat16), (64, 64, True, torch.float16),
                                             (128, 64, False, torch.float32)):
                    q = torch.zeros(1, 256, 4, d, dtype=dtype)
                    kv = torch.zeros(1, 256, 2, d, dtype=dtype)
                    try:
                        sage3_kernel.sage3_attention(q, kv, kv, quant_format=fmt, acc_dtype=acc, causal=causal,
                                                     block_m=bm)
                    except Exception as e:
                        failures += 1
                        print(f"FAIL sage3 {fmt} {acc} D={d} BLOCK_M={bm} FUSE_Q={fuse} P_MAX_EXP2={pmax} "
                              f"P_SCALE_PAIRS={pairs}: "
                              f"{str(e).strip().splitlines()[-1][:300]}")
    sage3_kernel.FUSE_Q, sage3_kernel.P_MAX_EXP2, sage3_kernel.P_SCALE_PAIRS = saved
    return _summary(args.arch, failures)


def _summary(arch: int, failures: int) -> int:
    """Print the run's last line (the tests read it) and return the exit status."""
    print(f"grid-sync launches compiled: {len(SYNC_LAUNCHES)}")
    print(f"cross-lane butterfly stages checked against their layouts: {len(SHFL_STAGES)}")
    print(f"triton {triton.__version__}: compiled {len(_seen)} kernel variants for sm_{arch} "
          f"({len(PDL_LAUNCHES)} programmatic dependent launches), {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
