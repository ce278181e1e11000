"""Fused Triton QDQ kernels: one kernel family for every recipe of :mod:`vllm_qdq.numerics.formats`.

Bit-exact with :func:`vllm_qdq.numerics.reference.qdq_reference` (the numeric contract is stated there).
Every format fact (element bits, bias, emax, max_normal, block size, floors, the power-of-two
flag, fp32 vs float64 math) is read from the :class:`~vllm_qdq.numerics.formats.FormatSpec` /
:class:`~vllm_qdq.numerics.formats.ElemSpec` records, which reach the kernels as ``tl.constexpr``.

Layout. The scaling axis is moved last *logically*: the launcher describes the tensor as rows
``row = outer * inner_rows + inner`` of ``K`` elements with three strides (outer, inner, along
the axis), so batched tensors, ``axis != -1`` and strided rows are read in place; only a
tensor whose leading dimensions cannot be folded into two strides is copied first. Offsets
are int64. When there is one outer group (``FLAT``, every 2-D tensor) the row offset is
``row * stride``, which lets Triton prove 16-byte alignment and vectorize loads and stores. Row padding is a load mask with ``other=0`` and never changes a scale.

The kernels call only Triton builtins and their own helpers (no ``triton.language.standard``
jit function is called; ``tl.reduce`` gets the stdlib max combiner, which the interpreter
recognises without calling it), so the module can be reloaded under ``TRITON_INTERPRET=1`` in a process that
imported Triton earlier (the CPU tests do).

Kernels (one program per ``[BLOCK_R, BLOCK_K]`` tile, tile shape and ``num_warps`` from a
static table keyed on the format and ``K``, never on the number of rows):

* ``_qdq_block_kernel``: block recipes (MX, NVFP4, FP8 per-group128[/ue8m0]) and per-tensor
  recipes; every scale group lies inside one tile, so x is read once and y written once. A
  two-pass call of one tile reduces its own tensor amax (:data:`ONE_TILE_MAX`); with
  :data:`GRID_SYNC` (off), one whose programs all fit on the GPU at once reduces it across them at
  a grid barrier (``SYNC``): one launch, no amax pass.
* ``_qdq_row_kernel``: per-row recipes (FP8 per-token / per-channel, INT8). A row of up to
  ``_ROW_SINGLE_MAX`` elements is one tile (one read); longer rows are swept twice (amax,
  then QDQ; the second sweep mostly hits L2).
* ``_amax_kernel``: first pass of the per-tensor recipes (FP8 per-tensor, NVFP4 without
  ``global_amax``): reads x once (2 B/elem for bf16), reduces the max of finite ``|x|`` and of
  all ``|x|`` (the NaN/Inf flag) per tile as fp32 bit patterns (the fp32 bit pattern of a
  non-negative float orders like the float). With at most :data:`PARTIALS_MAX` programs
  (decode-sized calls) each stores its pair in a buffer the QDQ pass reduces (two launches, no
  zeroing); above it, the pairs are folded into a zeroed 2-word int32 buffer with
  ``atomic_max``. NVFP4 with a given ``global_amax`` is one pass: a float reaches the kernel as
  an fp32 argument, a tensor is read where it lies. One tile per program: a grid-stride loop over a few programs per SM (one atomic
  pair per program) measured slower on an H200 (nvfp4 0.43-0.45 of a copy in
  ``results/h200-2026-12-03b``, against 0.50-0.51 for a per-tile pass with float reductions in
  ``results/h200-2026-12-03``; this integer-bits version is not timed yet). The QDQ pass then
  walks the tiles in reverse order so that its first reads hit what the amax pass left in L2,
  and the two passes' accesses carry L2 eviction hints to that end (:data:`L2_HINTS`; the QDQ
  pass's stores of y, :data:`Y_STREAM`). Hints only: the same bits.

Operation order (fixed, all values fp32 unless said; ``fp32(v)`` = RNE to fp32):

* Load: x -> fp32 (exact for bf16/fp16/fp32). Group ``bad`` = some ``|x| > FLT_MAX`` or NaN;
  ``amax`` = max of ``|x|`` (one integer max of the ``|x|`` bit patterns gives both: a bad
  group's amax is clamped to FLT_MAX and never used, since a bad group is stored as NaN;
  per-tensor amaxes, from the amax pass, are over the finite elements). The NaN comes through
  the group's dequantization factor (MX ``2**e``, NVFP4's block factor, the SCALED fp32 scale, or
  the fp32 form's ``amax``: ``q * NaN``), not a select an element; the float64 form selects.
* MX: shared exponent ``e`` from the bits of ``amax`` (subnormal amax is first scaled by
  2**64, exactly): floor: ``floor(log2 amax) - emax``; ceil: ``ceil(log2 amax) - emax``;
  even: floor after rounding the significand to ``mbits + 1`` bits (ties up), read as an
  integer compare on the mantissa field; rceil: ``ceil(log2(div_rn(amax, max_normal)))``
  (a quotient that underflows to 0 gives ``e = -127``);
  ``amax == 0`` gives -127; then clamp to [-127, 127]. ``2**e`` and ``2**-e`` are built
  from exponent bits (``e = -127`` is the subnormal ``0x00400000``). ``v = x * 2**-e`` is
  exact (a power-of-two scaling; a result below 2**-126 is far under half the smallest
  element step, so it rounds to a signed zero either way), the element rounding is exact
  (below), and ``q * 2**e`` is exact in fp32 (at most 7 significant bits, exponent within
  [-149, 127]). So fp32 equals the reference's float64 bit for bit, and the single RNE to
  the output dtype happens last.
* Element rounding (:func:`~vllm_qdq.numerics.triton_primitives.round_elem_f32`, shared with sage3): ``a = |v|`` saturated at ``max_normal`` (NaN
  kept), quantum ``2**(max(floor(log2 a), emin) - mbits)`` (``2**-mbits`` for integers):
  at or above ``2**emin`` the fp32 bits are rounded half to even to ``mbits`` mantissa bits
  with integer ops, below it ``(a + C) - C`` with ``C = 2**(23 + emin - mbits)``, integers
  ``rne(a * 2**mbits) * 2**-mbits`` with ``rne(t) = (t + 2**23) - 2**23`` (the kernels are
  compiled with FP fusion off); sign copied from ``v`` (zeros keep theirs). E4M3 and E5M2 on
  sm_90+: the GPU's conversion (``cvt.rn.satfinite``), the same values.
* NVFP4 (the reference's fp32 order): ``gs = div_rn(2688, gamax)`` (1 when ``gamax == 0``,
  2688 = e4m3.max_normal * e2m1.max_normal), ``s = e4m3(min(gs * (amax * fp32(1/6)), 448))``,
  ``inv = div_rn(1, s * div_rn(1, gs))`` (0 when ``s == 0``), ``q = e2m1(x * inv)``
  (saturating; ``gamax == 0`` gives ``s = 0`` and signed zeros), ``y = q * div_rn(s, gs)``. Same fp32 ops
  as the reference, each correctly rounded, so equal bits are expected everywhere; the
  contract only promises equality outside fp32 tie cases.
* SCALED: the group scale is computed in float64 exactly as the reference does
  (``max(amax, amax_floor) / qmax``, ``max(., scale_floor)``, optional ``2**ceil(log2 .)``
  from the float64 bits). Power-of-two recipes (ue8m0): ``s = 2**c`` with ``c`` in
  [-42, 119] (amax_floor 1e-10 below, FLT_MAX above), so ``x * 2**-c`` and ``q * 2**c`` are
  exact in fp32 and fp32 is used. ``fp32_math`` recipes: ``s32 = fp32(s)`` (FP8 per-token:
  computed in fp32, ``max(RN32(amax / 448), RN32(floor))``, the same number:
  :attr:`~vllm_qdq.numerics.formats.FormatSpec.fp32_scale_floor`), ``v = div_rn(x, s32)``
  (equal to the reference's float64 quotient rounded to fp32: double rounding of a quotient
  of two 24-bit numbers through 53 bits is innocuous since 53 >= 2*24 + 2; computed from
  ``1 / s32`` once per group and two FMA corrections per element, :func:`_div_rn`),
  ``y = q * s32`` in fp32. Other recipes: ``v = x / s`` in float64 (correctly rounded, from
  ``1 / s`` as a float64 pair once per group, a product and three FMAs per element:
  :func:`_div_rn_f64`), held in fp32 for FP8
  elements, rounded in float64 for INT8; ``y = fp32(q * s)`` in float64, then the output
  cast, as torch's float64 -> bf16/fp16 cast goes through fp32. A group with ``s == 0`` (all
  zeros) keeps its signed zeros. Per-tensor recipes take ``amax`` and ``bad`` from the amax pass.
* SCALED float64 recipes in fp32 (``NARROW``: bf16/fp16 in and out, unrotated; groups with
  ``amax`` 0 or in [2**-32, 2**100], a tile with any other group is redone in the float64 form):
  ``v = x * qmax / amax`` and ``y = q * amax / qmax`` as faithful fp32 quotients (one correction,
  :func:`_div_faithful`), the same bits. Why: ``x`` and ``amax`` have at most 11 significant bits
  and ``qmax``'s odd part (7 for 448 and 57344, 127) at most 7, so ``x * qmax`` and ``q * amax``
  are exact and the ideal quotients are either dyadic with at most 18 significant bits (fp32
  numbers: the float64 detour, whose two roundings move them by at most ~2**-52 relative, lands
  back on them, and the faithful quotient is exact) or have an odd denominator of at most 2047,
  which keeps them at least ~2**-36 relative away from every fp32 midpoint (so RN32 of the float64
  value is RN32 of the ideal) and ~2**-19 from every element-grid midpoint (FP8's have at most 5
  significant bits, INT8's are half-integers up to 127.5; a faithful ``v`` is within ~2**-23, so
  it rounds as RN32(v) does), and ``y``'s ~2**-18 from every 16-bit midpoint (so the faithful
  ``y`` casts as RN32(y) does). FP8 rounds the fp32 quotient, which absorbs the float64 detour;
  INT8 rounds the float64 quotient itself. When 127 divides amax's significand the float64 scale
  is exact and so is that quotient; otherwise, for 16-bit inputs, ``127 x / amax`` is an exact
  half-integer only at ``|x| = amax / 2`` (127 is prime: ``127 X = (2n + 1) A`` forces ``2n + 1
  = 127``); where the float64 form rounds that tie down, the group's quotients divide by
  ``amax`` plus 8 ulps, which moves the tie under 63.5 and no other quotient across a
  half-integer (:func:`_int8_tie_divisor`). Checked exhaustively
  (``test_narrow_form_equals_float64_form``). The float64 redo reads ``x`` again
  after the fp32 form's store: ``y`` must not alias ``x`` (``qdq`` always writes a new tensor).
* Store: fp32 -> output dtype, RNE (the hardware conversion; in the interpreter, whose bf16
  cast truncates, bf16 by integer rounding of the fp32 bits).

Issue-18 options (same contracts as the reference, :mod:`vllm_qdq.numerics.reference` and
:mod:`vllm_qdq.numerics.rotation`):

* NVFP4 family: the block-scale element (E4M3 or UE5M3) is ``SCALE_ELEM``, the tensor scale
  ``div_rn(SCALE_ELEM.max_normal * 6, gamax)``; ``FOUR6`` computes both candidates (``m = 1/6``
  and ``1/4``) and keeps the 4-candidate where its fp32 pairwise-tree squared error is strictly
  lower.
* ``STOCH``: stochastic element rounding with ``philox_uniform_f32(seed, row * KP + col)``
  (:mod:`~vllm_qdq.numerics.triton_primitives`): the draw of an element depends on its
  position in the logical rows only, never on the tile it falls in.
* ``ROT_LOG2 > 0``: the loaded tile (whole rotation blocks: ``BLOCK_K`` is a multiple of the
  rotation block) is rotated in registers (signs, ``log2 b`` butterfly stages as
  reshape / permute / split / join, ``* fp32(1/sqrt(b))``), QDQ'd, rotated back and stored: one
  read and one write. Masked columns load as 0, which is the reference's zero padding to ``KP``.
  ``ROT_TILE`` (blocks up to :data:`ROT_TILE_MAX`): each thread holds whole rotation blocks
  (:func:`_block_cols`), so the stages are register arithmetic; the tile is loaded and stored
  in that layout (1) or coalesced and moved into it through shared memory once each way (2,
  :data:`ROT_COALESCE`); otherwise (0) Triton exchanges data between lanes for the upper
  stages. The layout changes which thread does an operation, never the operations: the same
  bits either way. (Two rewrites that give the same bits: a random rotation of
  :data:`INV_MULTS_MIN` and up held whole by a thread multiplies ``R^T``'s output once by
  ``sign * fp32(1/sqrt(b))``, which equals the two products: the sign's commutes with rounding;
  and, :data:`SIGN_BITS` / :data:`SIGN_WORDS`, a 16-bit input's signs are applied as an XOR of
  its sign bits.)
  The amax pass of two-pass recipes rotates the same way (NVFP4's tensor amax is that of ``R x``).
  Per-row recipes are rotated in torch around the row kernel (the same fp32 operations).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .formats import ELEMENTS, Family, FormatSpec, Granularity, check_rounding, check_scale_rule
from .reference import DEFAULT_SEED, SUPPORTED_DTYPES, qdq_rotated_reference
from .rotation import (
    Rotation,
    check_length,
    hadamard_scaled_signs,
    hadamard_sign_bits,
    hadamard_sign_words,
    hadamard_signs,
    inv_sqrt_f32,
)
from .triton_primitives import interpreting, rule_code

try:  # Triton is optional: without it the reference backend serves every call.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is missing
    triton = None
    tl = None

__all__ = ["TILE_CONFIG", "arch_key", "available", "kernel_class", "qdq", "tile_configs", "use_tiles_for"]

#: Wraps a format record that one jit function hands to another. Compiled Triton (3.6 at
#: least) passes an object to a nested jit function only as ``tl.constexpr``; the interpreter
#: must get the bare object (its constexpr does not forward attribute reads).
_cx = (lambda v: v) if tl is None or interpreting() else tl.constexpr

#: Whether the kernels run in Triton's interpreter (fixed at import: the CPU tests reload the
#: module under ``TRITON_INTERPRET=1``); selects the output cast of :func:`_to_out`.
_INTERPRETED = None if tl is None else tl.constexpr(interpreting())

#: Element encoding of the NVFP4 block scales.
_NVFP4_SCALE_ELEM = ELEMENTS["e4m3"]

#: The float64 recipes (FP8 per-tensor, per-channel, per-group128, INT8) run in fp32 for 16-bit
#: tensors (:func:`_scaled_qdq_narrow`, bit for bit the float64 form's result; a tile with a group
#: amax outside [2**-32, 2**100] is redone in the float64 form). False: the float64 form everywhere
#: (what ``scripts/bench_qdq_triton.py`` compares it with). SASS for sm_90, bf16 4096 x 4096,
#: instructions an element on the fp32 path (float64-pipe ones) and the kernel's registers:
#: per-channel FP8 32.8 (10.2) / 64 before, 28.8 (0) / 48 now; per-group128 44.5 (12.6) / 52 ->
#: 37.5 (0) / 40; INT8 30.5 (12.2) / 70 -> 33.0 (1.5) / 78; per-tensor 38.5 (11.3) / 46 -> 33.0 (0) / 32.
#: On the H200 (results/h200-2026-12-05, fraction of a copy's speed, bf16 4096^2 / 8192^2, fp32
#: form against float64 form): per-channel 0.79 / 0.88 against 0.77 / 0.64, per-group128 0.74 /
#: 0.73 against 0.66 / 0.63, INT8 0.83 / 0.84 against 0.80 / 0.73, per-tensor 0.52 / 0.52
#: against 0.47 / 0.45.
NARROW_F64 = True
#: Input and output dtypes of that fp32 form.
_NARROW_DTYPES = (torch.bfloat16, torch.float16)
#: Columns a per-row kernel's float64 redo handles at a time.
_FIX_K = 256

#: Per-row recipes keep a whole row in one tile up to this many elements.
_ROW_SINGLE_MAX = 8192

#: (target elements per tile, warps per program) by kernel class: static, keyed on the format
#: only (the tile shape then follows from K, never from the number of rows). The table in force:
#: these defaults (chosen on the H100 with ``scripts/tune_qdq_triton.py``, a sweep at 16M and 64M
#: bf16 elements), updated once per process, at the first CUDA launch, with the entry of the GPU's
#: architecture in ``tile_configs.json`` (:func:`use_tiles_for`; the sweep writes it).
TILE_CONFIG: dict[str, tuple[int, int]] = {
    "mx": (4096, 4),  # MX formats, mxint8
    "nvfp4": (8192, 8),
    "scaled_fp32": (8192, 8),  # per-group/per-tensor FP8 with fp32 or power-of-two math
    "scaled_fp64": (4096, 8),  # recipes whose scale division is float64 (see the docstring)
    "row_fp32": (4096, 8),  # per-row recipes
    "row_fp64": (8192, 16),
    "amax": (16384, 16),  # first pass of per-tensor recipes
}
TILE_FILE = Path(__file__).with_name("tile_configs.json")
_tiles_arch: list[str | None] = []  # [] until use_tiles_for ran: then [the arch whose table is in force, or None]


def tile_configs(path: Path = TILE_FILE) -> dict[str, dict[str, tuple[int, int]]]:
    """The tuned tables on disk: ``{"sm_90": {kernel class: (tile, warps)}}``; each checked
    (a known class, two positive integers), a bad entry a ``ValueError`` naming it."""
    raw = json.loads(path.read_text())
    out = {}
    for arch, table in raw.items():
        if arch.startswith("_"):
            continue
        if not isinstance(table, dict):
            raise ValueError(f"{path.name}: {arch} must be an object of kernel class -> [tile, warps]")
        for cls, v in table.items():
            ok = isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) and i > 0 for i in v)
            if cls not in TILE_CONFIG or not ok:
                raise ValueError(f"{path.name}: {arch}.{cls}={json.dumps(v)}; accepted: a class of "
                                 f"{', '.join(TILE_CONFIG)} with [tile, warps], positive integers")
        out[arch] = {cls: (v[0], v[1]) for cls, v in table.items()}
    return out


def arch_key(device: torch.device | int | None = None) -> str:
    """``sm_XY`` of a CUDA device (compute capability X.Y)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def use_tiles_for(device: torch.device | int | None = None) -> str | None:
    """Once per process: put the ``tile_configs.json`` entry of ``device``'s architecture into
    :data:`TILE_CONFIG` (classes it does not name keep their defaults). The architecture whose
    table is in force, or ``None`` (no entry: the defaults)."""
    if not _tiles_arch:
        arch = arch_key(device)
        table = tile_configs().get(arch)
        if table:
            TILE_CONFIG.update(table)
        _tiles_arch.append(arch if table else None)
    return _tiles_arch[0]


def kernel_class(spec: FormatSpec) -> str:
    """The :data:`TILE_CONFIG` key of a recipe."""
    if spec.family is Family.MX:
        return "mx"
    if spec.family is Family.NVFP4:
        return "nvfp4"
    fp32 = spec.fp32_math or (spec.pow2_scale and spec.amax_floor / spec.elem.max_normal > 2.0**-100)
    prefix = "row" if spec.granularity is Granularity.ROW else "scaled"
    return f"{prefix}_{'fp32' if fp32 else 'fp64'}"


def available() -> bool:
    """Triton importable, and a CUDA device present or ``TRITON_INTERPRET=1`` set."""
    if triton is None:
        return False
    return torch.cuda.is_available() or interpreting()


# ============================================================================ kernels

if triton is not None:
    from triton.runtime.jit import constexpr_function

    from .triton_primitives import (
        mx_exponent,
        philox_uniform_f32,
        pow2_f32,
        round_elem_f32,
        round_elem_sr_f32,
    )

    @triton.jit
    def _butterfly(x, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, LOG2_B: tl.constexpr):
        """Unnormalized Walsh-Hadamard butterfly of ``[BLOCK_R, BLOCK_K]`` fp32 rows in blocks of
        ``2**LOG2_B``: stage ``h`` maps each aligned ``[u, v]`` (halves of ``h``) to ``[u + v, u - v]``
        (:func:`vllm_qdq.numerics.rotation.butterfly`, same order and roundings)."""
        for st in tl.static_range(LOG2_B):
            x = _butterfly_stage(x, BLOCK_R, BLOCK_K, 1 << st)
        return x

    @constexpr_function
    def _part_lane(BLOCK_R, BLOCK_K, LOG2_B, HL, SHFL):
        """The lane bit that holds bit 0 of a part's index (a rotation block held in parts of
        ``2**HL`` by adjacent threads, :data:`ROT_SPLIT`) in the layout Triton 3.6 gives a tile of
        :func:`_block_cols`'s shape, ``[BLOCK_R, BLOCK_K // 2**HL, 2**(HL - 3), 8]`` (blocked,
        ``sizePerThread [1, 1, 1, 8]``, ``order [3, 0, 1, 2]``): a part's 8-chunks in one thread's
        registers, then ``min(BLOCK_R, 32)`` lanes to the rows, then the lanes left to the parts
        (``scripts/check_triton_compile.py`` checks that layout in each compiled kernel's TTGIR).
        ``-1`` (the cross-lane stages as reductions over a pair axis) when ``SHFL`` is off, when
        the block is not split, or when a block's parts would reach past a warp's lanes."""
        if not SHFL or LOG2_B <= HL:
            return -1
        row_bits = min(BLOCK_R, 32).bit_length() - 1
        part_bits = (BLOCK_K >> HL).bit_length() - 1
        if row_bits + (LOG2_B - HL) > 5 or part_bits < LOG2_B - HL:
            return -1
        return row_bits

    @constexpr_function
    def _shfl_stage_asm(mask):
        """PTX of a cross-lane butterfly stage (:func:`_butterfly_held`): the partner lane's value
        ``p`` (``shfl.sync.bfly`` by ``mask``), then ``fma(s, x, p)`` with ``s = +1`` in the lane
        that holds a pair's first half (``x + p = u + v``) and ``-1`` in the other (``-x + p = u -
        v``): the product by one is exact, so each is the one rounding of ``[u + v, u - v]``."""
        return ("{ .reg .b32 p; shfl.sync.bfly.b32 p, $1, " + str(int(mask)) + ", 0x1f, 0xffffffff; "
                "fma.rn.f32 $0, $2, $1, p; }")

    @triton.jit
    def _butterfly_held(x, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, LOG2_B: tl.constexpr, HL: tl.constexpr,
                        SHFL: tl.constexpr = False):
        """:func:`_butterfly` of a tile in :func:`_block_cols`'s layout with ``2**HL`` elements of
        each block a thread (``HL``: the kernels' ``ROT_HELD``): the stages within the part a thread
        holds in registers; for a block split over ``2**(LOG2_B - HL)`` threads (:data:`ROT_SPLIT`),
        each later stage across the lanes that hold the two halves. ``SHFL`` (:data:`ROT_SHFL`, on
        the GPU, where :func:`_part_lane` finds the parts on lanes): one ``shfl.sync.bfly`` and one
        FMA by ``+-1`` an element (:func:`_shfl_stage_asm`); otherwise as a sum over a pair axis:
        ``u + v`` and ``u + (-v)``, one addition each (two lane shuffles an element). The same
        roundings as ``[u + v, u - v]`` either way, zeros' signs included. Under the interpreter,
        whose ``tl.reduce`` adds from ``+0`` (``-0 + -0`` came out ``+0``: 2026-12-07, NVFP4 +
        random Hadamard-64 in parts of 32 on subnormal inputs), the stage as
        :func:`_butterfly_stage`."""
        x = _butterfly(x, BLOCK_R, BLOCK_K, HL)
        LANE0: tl.constexpr = _part_lane(BLOCK_R, BLOCK_K, LOG2_B, HL, SHFL and not _INTERPRETED)
        for st in tl.static_range(HL, LOG2_B):  # halves of 2**st (a constexpr is not reassigned in the loop)
            x4 = tl.reshape(x, [BLOCK_R, BLOCK_K // (2 << st), 2, 1 << st])
            sgn = (1 - 2 * tl.arange(0, 2)).to(tl.float32)
            if LANE0 >= 0:
                s4 = tl.broadcast_to(sgn[None, None, :, None], [BLOCK_R, BLOCK_K // (2 << st), 2, 1 << st])
                x4 = tl.inline_asm_elementwise(_shfl_stage_asm(1 << (LANE0 + st - HL)), "=r,r,r", [x4, s4],
                                               dtype=tl.float32, is_pure=True, pack=1)
                x = tl.reshape(x4, [BLOCK_R, BLOCK_K])
            elif _INTERPRETED:  # the interpreter's tl.reduce starts a sum from +0 (-0 + -0 gave +0)
                x = _butterfly_stage(x, BLOCK_R, BLOCK_K, 1 << st)
            else:
                # tl.reduce with the standard combiner named, as tl.sum (a jit function) cannot be
                # called from this module's interpreted functions once Triton ran compiled here
                plus = tl.reduce(x4, 2, tl.standard._sum_combine)
                minus = tl.reduce(x4 * sgn[None, None, :, None], 2, tl.standard._sum_combine)
                half = tl.arange(0, 2)[None, None, :, None]
                x = tl.reshape(tl.where(half == 0, plus[:, :, None, :], minus[:, :, None, :]), [BLOCK_R, BLOCK_K])
        return x

    @triton.jit
    def _butterfly_stage(x, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, H: tl.constexpr):
        """One butterfly stage: halves of ``H`` in aligned segments of ``2H``."""
        v = tl.permute(tl.reshape(x, [BLOCK_R, BLOCK_K // (2 * H), 2, H]), [0, 1, 3, 2])
        a, b = tl.split(v)
        return tl.reshape(tl.permute(tl.join(a + b, a - b), [0, 1, 3, 2]), [BLOCK_R, BLOCK_K])

    @triton.jit
    def _rotate(x, sgn, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, ROT_LOG2: tl.constexpr,
                HAS_SIGNS: tl.constexpr, ROT_SCALE: tl.constexpr, INVERSE: tl.constexpr):
        """``R x`` (or ``R^T x``) of a ``[BLOCK_R, BLOCK_K]`` tile; ``sgn``: ``[BLOCK_K]`` signs."""
        if HAS_SIGNS and not INVERSE:
            x = x * sgn[None, :]
        x = _butterfly(x, BLOCK_R, BLOCK_K, ROT_LOG2)
        if ROT_SCALE != 1.0:  # 1.0: the MX kernels fold it into the block scale (ROT_FOLD)
            x = x * ROT_SCALE
        if HAS_SIGNS and INVERSE:
            x = x * sgn[None, :]
        return x

    @triton.jit
    def _block_cols(k0, BLOCK_K: tl.constexpr, RB: tl.constexpr):
        """Columns of a tile of ``BLOCK_K`` as ``[BLOCK_K // RB, RB // 8, 8]`` (int64): rotation
        blocks of ``RB``, each as chunks of 8. Loaded in this shape, a tile has only its 8-chunks
        contiguous, so Triton gives lanes and warps to (row, block) pairs first and the chunks of a
        block to one thread's registers (when the tile has at least one block per thread): every
        butterfly stage is then register arithmetic (no shuffles, no shared memory)."""
        return (k0 + tl.arange(0, BLOCK_K // RB)[:, None, None] * RB + tl.arange(0, RB // 8)[None, :, None] * 8
                + tl.arange(0, 8)[None, None, :]).to(tl.int64)

    @triton.jit
    def _load_rotated(x_ptr, sign_ptr, xr, rows, n_rows, k0, K, KP, sx_k, BLOCK_R: tl.constexpr,
                      BLOCK_K: tl.constexpr, ROT_LOG2: tl.constexpr, HAS_SIGNS: tl.constexpr,
                      ROT_SCALE: tl.constexpr, ROT_TILE: tl.constexpr, ROT_HELD: tl.constexpr, EVICT: tl.constexpr,
                      ROT_SHFL: tl.constexpr = False):
        """``(R x, columns, mask)`` of a ``[BLOCK_R, BLOCK_K]`` tile with whole rotation blocks
        per thread (:func:`_block_cols`): ``R x`` fp32 ``[BLOCK_R, BLOCK_K]`` (signs, butterfly,
        ``* ROT_SCALE``; masked columns load as 0), the columns and the mask in the ``[BLOCK_R,
        blocks, chunks, 8]`` shape. ``ROT_TILE == 1``: loaded in that layout (each thread reads
        its blocks: a warp's 16-byte accesses fall in up to 32 memory lines); ``2``: loaded in
        the coalesced 2-d layout and moved into it once, through shared memory, as loaded (16-bit
        values for bf16 / fp16 inputs; :func:`_block_anchor`). ``EVICT``: the x load's eviction
        policy (:func:`_evict`). ``ROT_HELD``: ``log2`` of the elements of a block a thread holds
        (:func:`_rot_held`)."""
        HELD: tl.constexpr = 1 << ROT_HELD
        c4 = _block_cols(k0, BLOCK_K, HELD)
        mask4 = (rows < n_rows)[:, None, None, None] & (c4 < K)[None, :, :, :]
        if ROT_TILE == 2:
            cols, mask = _tile_cols(rows, n_rows, k0, K, BLOCK_K)
            x = tl.load(x_ptr + xr[:, None] + (cols * sx_k)[None, :], mask=mask, other=0.0, eviction_policy=EVICT)
            x = tl.reshape(x, [BLOCK_R, BLOCK_K // HELD, HELD // 8, 8])
            if HAS_SIGNS == 3:  # sign words: each column's bit into the raw 16-bit value's sign bit
                m = _sign_masks16(sign_ptr, k0, rows, BLOCK_R, BLOCK_K, HELD)
                x = _to_f32((x.to(tl.int16, bitcast=True) ^ m).to(x.dtype, bitcast=True))
            elif HAS_SIGNS == 2:  # sign masks XORed into the raw 16-bit values (their load places the transpose)
                x = _to_f32((x.to(tl.int16, bitcast=True) ^ _block_padded(sign_ptr, c4, rows)).to(x.dtype, bitcast=True))
            elif HAS_SIGNS:  # the signs' own load places the transpose
                x = _to_f32(x) * _block_signs(sign_ptr, c4, rows, KP)
            elif x.dtype.primitive_bitwidth == 16:  # x | 0 on the raw bits: no instruction left
                x = _to_f32((x.to(tl.int16, bitcast=True) | _block_anchor(sign_ptr, rows, BLOCK_K, HELD))
                            .to(x.dtype, bitcast=True))
            else:
                x = _to_f32(x) * (_block_anchor(sign_ptr, rows, BLOCK_K, HELD) + 1).to(tl.float32)
        else:
            x = _to_f32(tl.load(x_ptr + xr[:, None, None, None] + (c4 * sx_k)[None, :, :, :], mask=mask4,
                                other=0.0, eviction_policy=EVICT))
            if HAS_SIGNS:  # (sign masks only in the coalesced layout: SIGN_BITS)
                x = x * _block_signs(sign_ptr, c4, rows, KP)
        x = _butterfly_held(tl.reshape(x, [BLOCK_R, BLOCK_K]), BLOCK_R, BLOCK_K, ROT_LOG2, ROT_HELD, ROT_SHFL)
        if ROT_SCALE != 1.0:  # 1.0: the MX kernels fold it into the block scale (ROT_FOLD)
            x = x * ROT_SCALE
        return x, c4, mask4

    @triton.jit
    def _tile_cols(rows, n_rows, k0, K, BLOCK_K: tl.constexpr):
        """``(columns (int64), mask)`` of a ``[BLOCK_R, BLOCK_K]`` tile in the 2-d (coalesced) layout:
        the rotation's coalesced load and store of the same tile."""
        cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        return cols, (rows < n_rows)[:, None] & (cols < K)[None, :]

    @constexpr_function
    def _ystore(on):
        """The cache modifier of a two-pass call's stores of y (:data:`Y_STREAM`): ``".cs"``
        (streaming: evict first) when ``on``, else Triton's default."""
        return ".cs" if on else ""

    @constexpr_function
    def _evict(on, keep):
        """The eviction policy of a two-pass call's loads of x (Triton 3.6 puts it on L1 and L2:
        ``ld.global.L1::evict_*.L2::cache_hint``): ``evict_last`` for the amax pass's read
        (``keep``), ``evict_first`` for the QDQ pass's (the last); ``""`` (Triton's default) when
        ``on`` is false."""
        if not on:
            return ""
        return "evict_last" if keep else "evict_first"

    @triton.jit
    def _block_anchor(ptr, rows, BLOCK_K: tl.constexpr, RB: tl.constexpr):
        """0 (int16) in the layout of a tile loaded by :func:`_block_cols`: a load whose mask is
        never true (offsets from 0 up, compared with 0), which reads nothing (ptxas drops it: its
        predicate is a constant). Its only effect is on Triton's layout choice: a large load fixes
        its layout (it is not re-derived from its users), so a tile loaded coalesced and combined
        with this value is moved into the whole-blocks-per-thread layout right after its load (one
        shared-memory transpose of the loaded values) instead of stage by stage in the butterfly.
        Combined as ``bits | 0`` with 16-bit inputs (exact, and compiled away) and as ``x * 1.0``
        with fp32 ones (exact: NaN stays NaN; one multiplication an element). Loaded as 16-bit
        words whatever ``ptr`` points to: 8 of them fill the 16-byte vector of a chunk (an int32
        anchor split a chunk over two lanes, and the butterfly went back to shuffles)."""
        offs = _block_cols(0, BLOCK_K, RB)[None, :, :, :] + 0 * rows[:, None, None, None]
        return tl.load(ptr.to(tl.pointer_type(tl.int16)) + offs, mask=offs < 0, other=0)

    @triton.jit
    def _block_signs(sign_ptr, c4, rows, KP):
        """A random Hadamard's signs (fp32) for a tile loaded by :func:`_block_cols`, with the
        tile's own 4-d shape (each row reads the same signs, from L1): the same layout as the
        tile, so no data moves between threads (signs ``[1, ...]`` broadcast at use went through
        shared memory); columns at or past ``KP`` get +1."""
        offs = c4[None, :, :, :] + 0 * rows[:, None, None, None]
        mask = (c4 < KP)[None, :, :, :] & (rows >= 0)[:, None, None, None]
        return tl.load(sign_ptr + offs, mask=mask, other=1.0).to(tl.float32)

    @triton.jit
    def _block_padded(ptr, c4, rows):
        """A per-column tensor padded to whole tiles (a random Hadamard's int16 sign masks,
        :func:`~vllm_qdq.numerics.rotation.hadamard_sign_bits`, or its inverse multipliers, fp32
        signs times the rotation scale, :func:`~vllm_qdq.numerics.rotation.hadamard_scaled_signs`)
        for a tile in :func:`_block_cols`'s layout, like :func:`_block_signs`: unmasked (no
        compare or predicate an element)."""
        return tl.load(ptr + (c4[None, :, :, :] + 0 * rows[:, None, None, None]))

    @triton.jit
    def _sign_words(ptr, k0, rows, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, RB: tl.constexpr,
                    EVICT: tl.constexpr):
        """The sign words of a tile's rotation blocks (:func:`~vllm_qdq.numerics.rotation.hadamard_sign_words`,
        padded to whole tiles: unmasked), ``[BLOCK_R, blocks, RB // 32, 1]`` int32: one load of
        ``RB / 8`` bytes a block, each thread its own blocks' words."""
        wo = ((k0 + tl.arange(0, BLOCK_K // RB) * RB) >> 5)[:, None] + tl.arange(0, RB // 32)[None, :]
        return tl.load(ptr + (wo[None, :, :, None] + 0 * rows[:, None, None, None]), eviction_policy=EVICT)

    @triton.jit
    def _sign_masks16(ptr, k0, rows, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, RB: tl.constexpr):
        """16-bit sign masks (int16 ``0`` or ``-2**15``) of a tile's columns in :func:`_block_cols`'s
        shape, from its sign words: column ``j`` of a word (bit ``j // 2 + 16 (j % 2)``) shifted
        left by ``15 - j // 2``, which puts an even column's bit at 15 and the next column's at 31
        of the same word: what a pair of packed 16-bit values needs, one shift and one logic
        operation for the two, were the compiler to see it (sm_90 SASS, MXFP4 + random
        Hadamard-128: ~1.6 instructions an element, not 1)."""
        j = tl.arange(0, 32)[None, None, None, :]
        t = _sign_words(ptr, k0, rows, BLOCK_R, BLOCK_K, RB, "evict_last") << (15 - (j >> 1))
        m = (t >> ((j & 1) * 16)) & 0x8000
        return tl.reshape(m, [BLOCK_R, BLOCK_K // RB, RB // 8, 8]).to(tl.int16)

    @triton.jit
    def _sign_masks32(ptr, k0, rows, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, RB: tl.constexpr):
        """32-bit sign masks (int32 ``0`` or ``-2**31``) of a tile's columns in :func:`_block_cols`'s
        shape, from its sign words: each column's bit shifted to bit 31."""
        j = tl.arange(0, 32)[None, None, None, :]
        t = _sign_words(ptr, k0, rows, BLOCK_R, BLOCK_K, RB, "") << (31 - (j >> 1) - (j & 1) * 16)
        return tl.reshape(t & -2147483648, [BLOCK_R, BLOCK_K // RB, RB // 8, 8])

    @triton.jit
    def _tree_sum16(e, BLOCK_R: tl.constexpr, N_GROUPS: tl.constexpr):
        """fp32 sum of ``[BLOCK_R, N_GROUPS, 16]`` over the last axis by the fixed pairwise tree."""
        e = tl.reshape(e, [BLOCK_R, N_GROUPS, 8, 2])
        a, b = tl.split(e)
        e = tl.reshape(a + b, [BLOCK_R, N_GROUPS, 4, 2])
        a, b = tl.split(e)
        e = tl.reshape(a + b, [BLOCK_R, N_GROUPS, 2, 2])
        a, b = tl.split(e)
        a, b = tl.split(a + b)
        return a + b

    @triton.jit
    def _elem(v, u, ELEM: tl.constexpr, STOCH: tl.constexpr):
        """Element rounding: RNE, or stochastic with draws ``u``."""
        if STOCH:
            return round_elem_sr_f32(v, u, ELEM.max_normal, ELEM.emin, ELEM.mbits, ELEM.is_int)
        return round_elem_f32(v, ELEM.max_normal, ELEM.emin, ELEM.mbits, ELEM.is_int)

    @triton.jit
    def _pow2_wide(k):
        """Exact fp32 ``2**k`` for int32 ``k`` in [-149, 127] (subnormal below -126): the
        :data:`ROT_FOLD` exponents, which can pass :func:`pow2_f32`'s -127 by the fold's 2-4."""
        bits = tl.where(k >= -126, (k + 127) << 23, 1 << tl.maximum(k + 149, 0))
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _nvfp4_candidate(x, amax, bad, gs, one, MULT: tl.constexpr, SPEC: tl.constexpr, SCALE_ELEM: tl.constexpr,
                         u, STOCH: tl.constexpr):
        """One NVFP4-family candidate ``y`` with the block max mapped by ``MULT`` (1/6 or 1/4); NaN
        in the blocks ``bad`` names (through the block's factor: no select an element)."""
        s = gs * (amax * MULT)
        s = tl.where(s > SCALE_ELEM.max_normal, SCALE_ELEM.max_normal, s)
        s = round_elem_f32(s, SCALE_ELEM.max_normal, SCALE_ELEM.emin, SCALE_ELEM.mbits, SCALE_ELEM.is_int)
        inv = tl.where(s != 0, tl.div_rn(one + 0.0 * s, s * tl.div_rn(one, gs)), 0.0)
        q = _elem(x * inv[:, :, None], u, _cx(SPEC.elem), STOCH)
        f = tl.div_rn(s, gs + 0.0 * s)[:, :, None]
        return q * _nan_where(bad, f)

    @triton.jit
    def _rne_f64(t):
        """Round half to even to an integer, for ``0 <= t < 2**52`` (float64)."""
        return (t + 4503599627370496.0) - 4503599627370496.0

    @triton.jit
    def _round_int_f64(v, ELEM: tl.constexpr):
        """RNE of float64 ``v`` onto an integer element's grid, saturating, sign kept."""
        a = tl.abs(v)
        a = tl.where(a > ELEM.max_normal, ELEM.max_normal, a)
        r = _rne_f64(a * (2.0**ELEM.mbits)) * (2.0**-ELEM.mbits)
        sign = v.to(tl.int64, bitcast=True) & -9223372036854775808
        return (r.to(tl.int64, bitcast=True) | sign).to(tl.float64, bitcast=True)

    @triton.jit
    def _nan_like(x):
        return tl.full(x.shape, 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)

    @triton.jit
    def _nan_where(bad, f):
        """``f`` with NaN where ``bad``: applied to a group's dequantization factor (its scale, or
        its amax in the fp32 form), it makes the whole group NaN through ``q * f`` with no select an
        element."""
        return tl.where(bad, _nan_like(f), f)

    @triton.jit
    def _to_f32(x):
        """Input dtype -> fp32, exact. bf16 by moving its bits up (the interpreter's bf16
        cast mishandles subnormals; on the GPU this is what the cast does anyway)."""
        if x.dtype == tl.bfloat16:
            return (x.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
        else:
            return x.to(tl.float32)

    @triton.jit
    def _to_out(y, OUT: tl.constexpr):
        """fp32 -> output dtype, RNE. On the GPU the hardware conversion (``cvt.rn``); in the
        interpreter (whose bf16 cast truncates) bf16 is rounded with integer ops (NaN kept),
        which gives the same bits (NaN payloads aside)."""
        if OUT == tl.bfloat16 and _INTERPRETED:
            bits = y.to(tl.int32, bitcast=True)
            r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            r = tl.where(y != y, 0x7FC0, r)
            return r.to(tl.int16).to(tl.bfloat16, bitcast=True)
        else:
            return y.to(OUT, fp_downcast_rounding="rtne") if OUT != tl.float32 else y

    @triton.jit
    def _group_max_bits(x, AXIS: tl.constexpr):
        """The largest ``|x|`` bit pattern (int32) along AXIS: one reduction. A non-negative fp32
        orders like its bits, and +Inf / NaN patterns lie above every finite one."""
        return tl.reduce(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, AXIS, tl.standard._elementwise_max)

    @triton.jit
    def _stats_of_bits(m):
        """``(amax, bad)`` from :func:`_group_max_bits`: ``bad`` = a NaN/Inf in the group. A bad
        group is stored as NaN whatever its scale, so the amax of its finite elements is not
        needed and one reduction serves both; its amax is clamped to FLT_MAX, so the scale math
        of the discarded lanes stays finite (no overflow / invalid-operation warnings in the
        interpreter)."""
        return tl.minimum(m, 0x7F7FFFFF).to(tl.float32, bitcast=True), m > 0x7F7FFFFF

    @triton.jit
    def _scaled_scale(amax, SPEC: tl.constexpr):
        """float64 scale of a SCALED recipe from fp32 group amax (the reference's float64 order;
        power-of-two recipes with ``qmax = 7 * 2**k``: the same exponent from ``amax``'s bits,
        :attr:`~vllm_qdq.numerics.formats.FormatSpec.pow2_seven_shift`, no float64 arithmetic)."""
        if SPEC.fp32_scale_floor >= 0:  # fp32 scale, the reference's number (FormatSpec.fp32_scale_floor)
            QMAX: tl.constexpr = SPEC.elem.max_normal
            qmax = tl.full(amax.shape, QMAX, tl.float32)
            s32 = _div_rn(amax, qmax, tl.full(amax.shape, 1.0 / QMAX, tl.float32))  # under 2**-60: floored below
            return tl.maximum(s32, SPEC.fp32_scale_floor).to(tl.float64)
        if SPEC.pow2_seven_shift >= 0:
            bits = amax.to(tl.int32, bitcast=True)
            c = ((bits >> 23) & 0xFF) - (127 + SPEC.pow2_seven_shift + 2) + ((bits & 0x7FFFFF) > 0x600000).to(tl.int32)
            c = tl.where(amax < SPEC.amax_floor_f32, SPEC.pow2_floor_code, c)
            return ((c.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)
        a = amax.to(tl.float64)
        if SPEC.amax_floor > 0:
            a = tl.where(a < SPEC.amax_floor, SPEC.amax_floor, a)
        s = a / SPEC.elem.max_normal
        if SPEC.scale_floor > 0:
            s = tl.where(s < SPEC.scale_floor, SPEC.scale_floor, s)
        if SPEC.pow2_scale:
            bits = tl.where(s > 0, s, 1.0).to(tl.int64, bitcast=True)
            c = ((bits >> 52) & 0x7FF) - 1023 + ((bits & 0xFFFFFFFFFFFFF) != 0).to(tl.int64)
            s = tl.where(s > 0, ((c + 1023) << 52).to(tl.float64, bitcast=True), s)
        return s

    @triton.jit
    def _div_rn(a, b, rb):
        """``a / b`` correctly rounded in fp32 (the per-token FP8 recipe; the float64 recipes take
        :func:`_div_rn_f64`), ``b > 0``, from ``rb = RN(1 / b)``: ``q0 = RN(a * rb)`` is within 1.5 ulp of the
        quotient (the reciprocal's error and the product's rounding add); one correction
        ``q1 = RN(q0 + RN(a - q0 * b) * rb)`` brings it within 1 ulp (half an ulp plus a term of
        order 2**-p ulp, whether or not the first remainder is exact); Markstein's step on that
        faithful ``q1`` (its remainder ``a - q1 * b`` exact by FMA, ``rb`` within half an ulp of
        ``1 / b``) then gives the correctly rounded quotient. (One step from ``q0``, as before
        2026-12-04, is not covered by the theorem when ``q0`` is 1-1.5 ulp off; no test ever found
        such a case.) No overflow here (``|a / b|`` is at most the element's max). The second
        remainder is exact while it stays normal: for quotients of at least 2**-60 (``b`` at
        least the per-token scale floor, 2**-17.8): a smaller fp32 quotient can come out an ulp off, with ``a``'s sign, and
        the element grid (from 2**-9) rounds it to that zero either way. :func:`_div_faithful` and
        then one more :func:`_div_step`: each remainder is taken as ``q * b - a`` and subtracted, so
        ``a = -0`` gives ``-0`` with no compare (until 2026-12-04 a select on a zero remainder did). Five multiply-adds instead of
        a division (test: ``test_div_rn_f32_is_division``)."""
        return _div_step(_div_faithful(a, b, rb), a, b, rb)

    @triton.jit
    def _recip2_f64(b):
        """``(rb, rb_lo)`` for float64 ``b > 0``, once per group: ``rb = RN(1 / b)`` and ``rb_lo =
        RN(e * rb)`` with ``e = 1 - b * rb``, exact by FMA (the residual of a correctly rounded
        reciprocal is representable), so ``rb + rb_lo = (1 / b)(1 + d)``, ``|d| <= 2**-104``
        (the recipes' scales keep every term a normal float64)."""
        rb = 1.0 / b
        return rb, tl.fma(0.0 - b, rb, 1.0) * rb

    @triton.jit
    def _div_rn_f64(x, b, rb, rb_lo):
        """``a / b`` correctly rounded in float64 for fp32 ``x`` (``a`` its float64 value), ``b >
        0``, ``(rb, rb_lo)`` from :func:`_recip2_f64`: ``q0 = RN(a * rb + RN(a * rb_lo))`` is within
        half an ulp plus ``2**-103 |a / b|`` of the quotient, so faithful; its remainder ``a - q0 *
        b`` is then exact by FMA and Markstein's step ``RN(q0 + r * rb)`` (``rb`` within half an
        ulp of ``1 / b``, ``q0`` faithful) gives the correctly rounded quotient: a product and three
        FMAs an element, no compare in float64 (the two-correction form, :func:`_div_rn`, took a
        product, four FMAs and two float64 compares: on the H200 2026-12-04 INT8 per-token fell
        from 0.77 to 0.44 of a copy at 64M elements with it). No underflow or overflow for the
        recipes' ``a`` (fp32) and ``b`` (``amax / qmax``, at least the smallest fp32 over 57344):
        every term stays a normal float64. A zero ``x`` gives ``a`` itself, its sign kept (the
        sum would give +0 for -0). Test: ``test_div_rn_f64_is_division``."""
        a = x.to(tl.float64)
        q = tl.fma(a, rb, a * rb_lo)
        r = tl.fma(q, 0.0 - b, a)
        return tl.where(x == 0, a, tl.fma(r, rb, q))

    @triton.jit
    def _div_faithful(a, b, rb):
        """``a / b`` within an ulp in fp32 (faithful), exact when the quotient is an fp32 number,
        with ``a``'s sign (zeros too), ``b > 0``, ``rb = RN(1 / b)``: ``q0 = RN(a * rb)`` (within
        1.5 ulp) and one correction ``RN(q0 - RN(q0 * b - a) * rb)`` (the first half of
        :func:`_div_rn`). Where the quotient is representable, ``q0 + (v - q0)(1 + e)``, ``|e| <=
        ~2**-23`` (the reciprocal's and the remainder's roundings), rounds to ``v`` itself. The
        remainder is taken as ``q0 * b - a`` and subtracted (:func:`_div_step`): for ``a = -0`` it is
        ``+0``, and ``-0 + (-0) * rb`` stays ``-0`` (the other way round gives ``+0 + -0 = +0``).
        Three multiply-adds (the sign flips are operand modifiers)."""
        return _div_step(a * rb, a, b, rb)

    @triton.jit
    def _div_step(q, a, b, rb):
        """One correction of a quotient ``q`` of ``a / b`` (``rb = RN(1 / b)``): ``RN(q - RN(q * b -
        a) * rb)``, the remainder subtracted so that ``a = -0`` keeps ``-0``."""
        return tl.fma(tl.fma(q, b, a * -1.0) * -1.0, rb, q)  # * -1.0: a sign flip (0.0 - r would give +0)

    @triton.jit
    def _narrow_fallback(amax):
        """Whether some group of the tile is outside the range of the fp32 form (``amax`` neither 0
        nor in [2**-32, 2**100]; a NaN/Inf group's amax is FLT_MAX): a scalar, one reduction per
        tile. Such a tile is done again in the float64 form (:func:`_rows_qdq`, :func:`_tile_f64`)."""
        out = (amax != 0) & ((amax < 2.0**-32) | (amax > 2.0**100))
        return tl.reduce(tl.reshape(out.to(tl.int32), [out.numel]), 0, tl.standard._elementwise_max) != 0

    @triton.jit
    def _int8_tie_divisor(a, s, SPEC: tl.constexpr):
        """The divisor of INT8's quotient ``x * 127 / a`` in the fp32 form, once per group (``a``
        the group's amax, ``s`` its float64 scale). ``|x| = a / 2`` makes the quotient 63.5 exactly,
        which the fp32 form rounds to 64 (even); the float64 order, ``RN64(x / RN64(a / 127))``,
        can round it to 63. Where it does, the quotient divides by ``a`` plus 8 fp32 ulps instead:
        that tie then lies at least ``2**-15`` under 63.5 (its faithful quotient too: 63.5's ulp is
        2**-18) and rounds to 63, and every other quotient moves by at most ``2**-20`` of itself,
        less than its distance from a half-integer, ``|254 x - (2m + 1) a| / (2a)``, at least
        ``1 / (254 X)`` of it with ``X`` ``x``'s integer significand (under 2**11 for fp16,
        2**8 for bf16), with the faithful quotient's own ulp on top. No other quotient is an exact
        tie there: ``254 x = (2m + 1) a`` needs 127 to divide ``2m + 1`` (so ``m = 63``) unless it
        divides ``a``'s significand, and then ``a / 127`` is exact and both orders round the tie
        alike. (Until 2026-12-05 a select on ``|x| = a / 2`` put the float64 tie in: three
        instructions an element.) Checked with the rest of the form: every bf16 pair, fp16 pairs
        (``test_narrow_form_equals_float64_form``)."""
        tl.static_assert(SPEC.elem.max_normal == 127.0, "the INT8 tie argument is for qmax = 127")
        sd = tl.where(s > 0, s, 1.0)
        rb, rb_lo = _recip2_f64(sd)
        qt = _round_int_f64(_div_rn_f64(a * 0.5, sd, rb, rb_lo), _cx(SPEC.elem))  # the float64 order's tie
        up8 = (a.to(tl.int32, bitcast=True) + 8).to(tl.float32, bitcast=True)
        return tl.where(qt < 63.5, up8, a)

    @triton.jit
    def _scaled_qdq_narrow(x, amax, s, SPEC: tl.constexpr):
        """The float64 recipes' QDQ in fp32 alone, for 16-bit inputs and outputs (``NARROW``): the
        same bits as :func:`_scaled_qdq_f64`, for groups whose ``amax`` is 0 or within
        [2**-32, 2**100] (:func:`_narrow_fallback` checks; the module docstring has the argument).
        ``x``, ``amax`` fp32 (``amax`` broadcast to ``x``), ``s`` the float64 scale (INT8 ties)."""
        QMAX: tl.constexpr = SPEC.elem.max_normal
        a = tl.where(amax == 0, 1.0, amax)  # a NaN amax (a NaN/Inf group, _scaled_qdq): NaN throughout
        a_div = a
        if SPEC.elem.is_int:  # |x| = amax / 2, INT8's one exact tie: see _int8_tie_divisor
            a_div = _int8_tie_divisor(a, s, SPEC)
        ra = tl.div_rn(tl.full(a.shape, 1.0, tl.float32), a_div)  # once per group
        v = _div_faithful(x * QMAX, a_div, ra)  # x * QMAX exact: at most 18 significant bits
        q = round_elem_f32(v, SPEC.elem.max_normal, SPEC.elem.emin, SPEC.elem.mbits, SPEC.elem.is_int)
        qmax = tl.full(a.shape, QMAX, tl.float32)
        return _div_faithful(q * a, qmax, tl.div_rn(tl.full(a.shape, 1.0, tl.float32), qmax))  # q * a exact

    @triton.jit
    def _scaled_qdq_f64(x, s, SPEC: tl.constexpr):
        """The float64 recipes' QDQ as the reference orders it (see the module docstring)."""
        sd = tl.where(s > 0, s, 1.0)
        rb, rb_lo = _recip2_f64(sd)  # once per group
        v = _div_rn_f64(x, sd, rb, rb_lo)
        if SPEC.elem.is_int:
            q = _round_int_f64(v, _cx(SPEC.elem))
        else:
            q = round_elem_f32(v.to(tl.float32), SPEC.elem.max_normal, SPEC.elem.emin, SPEC.elem.mbits,
                               SPEC.elem.is_int).to(tl.float64)
        return (q * s).to(tl.float32)

    @triton.jit
    def _scaled_qdq(x, s, amax, bad, SPEC: tl.constexpr, NARROW: tl.constexpr):
        """QDQ of fp32 ``x`` with a float64 group scale ``s``, the group's fp32 ``amax`` and its
        NaN/Inf flag ``bad``, all broadcast to it (fp32 result, NaN in the groups ``bad`` names:
        through the group's scale or amax, no select an element, except in the float64 form).
        ``NARROW`` (a float64 recipe whose ``x`` came from a 16-bit tensor and goes to one,
        unrotated): the fp32 form, :func:`_scaled_qdq_narrow`; the kernel then redoes a tile that
        :func:`_narrow_fallback` names in the float64 form."""
        if SPEC.pow2_scale and not SPEC.fp32_math and SPEC.amax_floor / SPEC.elem.max_normal > 2.0**-100:
            # s = 2**c, c in [-100, 119] (ue8m0: [-42, 119]): x * 2**-c and q * 2**c are exact in fp32
            s32 = s.to(tl.float32)
            pos = s32 > 0
            v = x * tl.div_rn(tl.full(s32.shape, 1.0, tl.float32), tl.where(pos, s32, 1.0))
            q = round_elem_f32(v, SPEC.elem.max_normal, SPEC.elem.emin, SPEC.elem.mbits, SPEC.elem.is_int)  # s == 0: an all-zero group, q = its signed zeros
            y = q * _nan_where(bad, s32)
        elif SPEC.fp32_math:
            s32 = s.to(tl.float32)
            b = tl.where(s32 > 0, s32, 1.0)
            v = _div_rn(x, b, tl.div_rn(tl.full(b.shape, 1.0, tl.float32), b))  # 1 / b: once per group
            q = round_elem_f32(v, SPEC.elem.max_normal, SPEC.elem.emin, SPEC.elem.mbits, SPEC.elem.is_int)  # s == 0: an all-zero group, q = its signed zeros
            y = q * _nan_where(bad, s32)
        elif NARROW:
            y = _scaled_qdq_narrow(x, _nan_where(bad, amax), s, SPEC)
        else:
            y = tl.where(bad, _nan_like(x), _scaled_qdq_f64(x, s, SPEC))
        return y

    @triton.jit
    def _rows_qdq(x_ptr, y_ptr, xr, yr, rmask, s, amax, bad, K, sx_k, sy_k, SPEC: tl.constexpr, CH: tl.constexpr,
                  NARROW: tl.constexpr):
        """Whole rows through :func:`_scaled_qdq`, ``CH`` columns at a time, with each row's ``s``,
        ``amax`` and ``bad`` given: the second sweep of long rows, and (``NARROW`` off, small
        ``CH``) the float64 redo of rows outside the fp32 form's range, light on registers."""
        c = tl.arange(0, CH).to(tl.int64)
        for k0 in range(0, K, CH):
            cols = k0 + c
            mask = rmask & (cols < K)[None, :]
            x = _to_f32(tl.load(x_ptr + xr[:, None] + (cols * sx_k)[None, :], mask=mask, other=0.0))
            y = _scaled_qdq(x, s, amax, bad, SPEC, NARROW)
            tl.store(y_ptr + yr[:, None] + (cols * sy_k)[None, :], _to_out(y, y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _tile_f64(x_ptr, y_ptr, xr, yr, rows, n_rows, k0, K, sx_k, sy_k, s, bad, SPEC: tl.constexpr,
                  GROUP: tl.constexpr, N_GROUPS: tl.constexpr):
        """A block kernel's tile in the float64 form, one group column at a time: per-tensor
        recipes with the tensor's ``s`` and ``bad``, block recipes each group's again (what
        :func:`_rows_qdq` does for the per-row recipes)."""
        c = tl.arange(0, GROUP)
        for g in range(0, N_GROUPS):
            cols = (k0 + g * GROUP + c).to(tl.int64)
            mask = (rows < n_rows)[:, None] & (cols < K)[None, :]
            x = _to_f32(tl.load(x_ptr + xr[:, None] + (cols * sx_k)[None, :], mask=mask, other=0.0))
            if SPEC.granularity.value == "tensor":
                sg = s
                bg = bad
            else:
                am, bd = _stats_of_bits(_group_max_bits(x, 1))
                sg = _scaled_scale(am, SPEC)[:, None]
                bg = bd[:, None]
            y = tl.where(bg, _nan_like(x), _scaled_qdq_f64(x, sg, SPEC))
            tl.store(y_ptr + yr[:, None] + (cols * sy_k)[None, :], _to_out(y, y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _row_offsets(rows, inner_rows, s_outer, s_inner, FLAT: tl.constexpr):
        """int64 element offsets of ``rows``. FLAT (one outer group): ``rows * s_inner``, a form
        whose divisibility Triton can see, so loads and stores vectorize."""
        if FLAT:
            return rows * s_inner
        outer = rows // inner_rows
        return outer * s_outer + (rows - outer * inner_rows) * s_inner

    @triton.jit
    def _tile_coords(pid, n_rows, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, REVERSE: tl.constexpr):
        """Row numbers (int64) and first column of this program's tile."""
        n_k = (K + BLOCK_K - 1) // BLOCK_K
        if REVERSE:
            pid = ((n_rows + BLOCK_R - 1) // BLOCK_R) * n_k - 1 - pid
        pid_r = pid // n_k
        k0 = (pid - pid_r * n_k) * BLOCK_K
        rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        return rows, k0

    @triton.jit
    def _fold_tile_bits(x_ptr, t, n_rows, inner_rows, K, sx_outer, sx_inner, sx_k, fin, raw, BLOCK_R: tl.constexpr,
                        BLOCK_K: tl.constexpr, FLAT: tl.constexpr, EVICT: tl.constexpr):
        """``(fin, raw)`` with unrotated tile ``t``'s ``|x|`` bit patterns folded in, element by
        element: ``fin`` the largest finite one (at most FLT_MAX's bits), ``raw`` the largest of all
        (+Inf and NaN lie above FLT_MAX's); masked elements (past the rows or K) load as 0.
        ``EVICT``: the load's eviction policy (:func:`_evict`)."""
        rows, k0 = _tile_coords(t, n_rows, K, BLOCK_R, BLOCK_K, False)
        xr = _row_offsets(rows, inner_rows, sx_outer, sx_inner, FLAT)
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = (rows < n_rows)[:, None] & (cols < K)[None, :]  # a tile past the last: rows past n_rows
        b = _to_f32(tl.load(x_ptr + xr[:, None] + (cols.to(tl.int64) * sx_k)[None, :], mask=mask, other=0.0,
                            eviction_policy=EVICT)).to(tl.int32, bitcast=True) & 0x7FFFFFFF
        return tl.maximum(fin, tl.where(b <= 0x7F7FFFFF, b, 0)), tl.maximum(raw, b)

    @triton.jit
    def _fin_raw_stats(fin, raw, N: tl.constexpr):
        """``(amax bits, bad)`` of :func:`_fold_tile_bits`'s ``fin`` / ``raw`` tiles of ``N``
        elements: their maxima, and whether the largest pattern lies above FLT_MAX's."""
        amax = tl.reduce(tl.reshape(fin, [N]), 0, tl.standard._elementwise_max)
        bad = tl.reduce(tl.reshape(raw, [N]), 0, tl.standard._elementwise_max) > 0x7F7FFFFF
        return amax, bad

    @triton.jit
    def _slot_max(buf_ptr, slot, amax, bad):
        """``atomic_max`` of a program's ``(amax bits, bad)`` into the pair ``buf[2 * slot : 2 * slot
        + 2]`` (zeroed by the caller)."""
        tl.atomic_max(buf_ptr + 2 * slot, amax)
        tl.atomic_max(buf_ptr + 2 * slot + 1, bad.to(tl.int32))

    @triton.jit
    def _amax_kernel(
        # pointers
        x_ptr, buf_ptr, sign_ptr,
        # sizes
        n_rows, inner_rows, K, KP,
        # strides (elements)
        sx_outer, sx_inner, sx_k,
        # meta
        BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, FLAT: tl.constexpr,
        ROT_LOG2: tl.constexpr, HAS_SIGNS: tl.constexpr, ROT_SCALE: tl.constexpr, ROT_TILE: tl.constexpr,
        ROT_HELD: tl.constexpr, N_PARTIALS: tl.constexpr, SLOTS: tl.constexpr, TPP: tl.constexpr,
        L2_HINTS: tl.constexpr, PDL: tl.constexpr, ROT_SHFL: tl.constexpr = False,
    ):
        """Per tile: max finite ``|x|`` (of ``R x`` when ``ROT_LOG2 > 0``) and a NaN/Inf flag
        (from the ``|x|`` bit patterns: +Inf and NaN lie above FLT_MAX's), as int32 words.
        ``N_PARTIALS == 0``: folded with ``atomic_max`` into the pair ``buf[2 * slot : 2 * slot + 2]``,
        ``slot = pid % SLOTS`` (``2 * SLOTS`` words zeroed by the caller; many slots, so that
        thousands of programs do not queue on one address); otherwise (at most ``N_PARTIALS``
        programs) stored at ``buf[2 * pid : 2 * pid + 2]``, every word written. Either way the QDQ
        pass reduces the pairs (:func:`_tensor_stats`). ``TPP > 1`` (unrotated only): a program
        takes ``TPP`` consecutive tiles (tile ``pid * TPP + i``), all loads issued before one
        reduction and one pair (:data:`AMAX_TILES_PER_PROGRAM`). ``L2_HINTS``: x is loaded to stay in L2
        (``evict_last``) for the QDQ pass that reads it next (:data:`L2_HINTS`). ``PDL``: the QDQ
        pass is a programmatic dependent launch of this one, told at once that it may launch
        (:data:`PDL`)."""
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        if TPP > 1:
            tl.static_assert(ROT_LOG2 == 0, "several tiles a program: unrotated calls only")
            fin = tl.full([BLOCK_R, BLOCK_K], 0, tl.int32)  # tl.full: a builtin
            raw = tl.full([BLOCK_R, BLOCK_K], 0, tl.int32)
            for i in tl.static_range(TPP):
                fin, raw = _fold_tile_bits(x_ptr, tl.program_id(0) * TPP + i, n_rows, inner_rows, K, sx_outer,
                                           sx_inner, sx_k, fin, raw, BLOCK_R, BLOCK_K, FLAT, _evict(L2_HINTS, True))
            amax, bad = _fin_raw_stats(fin, raw, BLOCK_R * BLOCK_K)
        else:
            amax, bad = _amax_one_tile(x_ptr, sign_ptr, n_rows, inner_rows, K, KP, sx_outer, sx_inner, sx_k, BLOCK_R,
                                       BLOCK_K, FLAT, ROT_LOG2, HAS_SIGNS, ROT_SCALE, ROT_TILE, ROT_HELD,
                                       _evict(L2_HINTS, True), ROT_SHFL)
        if N_PARTIALS > 0:
            pid = tl.program_id(0)
            tl.store(buf_ptr + 2 * pid, amax)
            tl.store(buf_ptr + 2 * pid + 1, bad.to(tl.int32))
        else:
            _slot_max(buf_ptr, tl.program_id(0) % SLOTS, amax, bad)

    @triton.jit
    def _amax_stream_kernel(
        # pointers
        x_ptr, buf_ptr,
        # sizes
        n_rows, inner_rows, K, n_tiles,
        # strides (elements)
        sx_outer, sx_inner, sx_k,
        # meta
        BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, FLAT: tl.constexpr, SLOTS: tl.constexpr,
        STAGES: tl.constexpr,
    ):
        """The amax pass of a large unrotated call as a streaming read (:data:`AMAX_STAGES`): a
        grid of a few programs per SM, each taking tiles ``pid, pid + G, ...`` in a loop that
        Triton 3.6 software-pipelines ``STAGES`` deep (``cp.async`` into shared memory: several
        tiles in flight a program, all the time, where a program of :func:`_amax_kernel` waits for
        its own loads, reduces and exits), the max of every element's ``|x|`` bits kept in
        registers, then one reduction and one ``atomic_max`` pair into slot ``pid % SLOTS``: the
        same words :func:`_amax_kernel` leaves (a max does not depend on the order)."""
        pid = tl.program_id(0)
        fin = tl.full([BLOCK_R, BLOCK_K], 0, tl.int32)  # tl.full: a builtin
        raw = tl.full([BLOCK_R, BLOCK_K], 0, tl.int32)
        for t in tl.range(pid, n_tiles, tl.num_programs(0), num_stages=STAGES):
            fin, raw = _fold_tile_bits(x_ptr, t, n_rows, inner_rows, K, sx_outer, sx_inner, sx_k, fin, raw, BLOCK_R,
                                       BLOCK_K, FLAT, "")
        amax, bad = _fin_raw_stats(fin, raw, BLOCK_R * BLOCK_K)
        _slot_max(buf_ptr, pid % SLOTS, amax, bad)

    @triton.jit
    def _amax_one_tile(x_ptr, sign_ptr, n_rows, inner_rows, K, KP, sx_outer, sx_inner, sx_k, BLOCK_R: tl.constexpr,
                       BLOCK_K: tl.constexpr, FLAT: tl.constexpr, ROT_LOG2: tl.constexpr, HAS_SIGNS: tl.constexpr,
                       ROT_SCALE: tl.constexpr, ROT_TILE: tl.constexpr, ROT_HELD: tl.constexpr,
                       EVICT: tl.constexpr, ROT_SHFL: tl.constexpr = False):
        """``(amax bits, bad)`` of this program's one tile (of ``R x`` when ``ROT_LOG2 > 0``); ``EVICT``:
        the x load's L2 eviction policy. In the layouts that hold blocks the rotation's scale
        multiplies the tile's maximum, not each element: ``max |RN(c y)| = RN(c max |y|)`` for
        ``0 < c <= 1`` (rounding is monotonic, and ``c y`` is finite exactly where ``y`` is), one
        multiplication a tile instead of one an element."""
        rows, k0 = _tile_coords(tl.program_id(0), n_rows, K, BLOCK_R, BLOCK_K, False)
        xr = _row_offsets(rows, inner_rows, sx_outer, sx_inner, FLAT)
        if ROT_TILE:  # whole rotation blocks per thread (_block_cols)
            x, _c4, _mask = _load_rotated(x_ptr, sign_ptr, xr, rows, n_rows, k0, K, KP, sx_k, BLOCK_R, BLOCK_K,
                                         ROT_LOG2, HAS_SIGNS, 1.0, ROT_TILE, ROT_HELD, EVICT, ROT_SHFL)
            amax, bad = _tile_amax_bits(x, BLOCK_R * BLOCK_K, 1 << ROT_HELD)
            if ROT_SCALE != 1.0:
                amax = (amax.to(tl.float32, bitcast=True) * ROT_SCALE).to(tl.int32, bitcast=True)
            return amax, bad
        else:
            cols = k0 + tl.arange(0, BLOCK_K)
            mask = (rows < n_rows)[:, None] & (cols < K)[None, :]
            x = _to_f32(tl.load(x_ptr + xr[:, None] + (cols.to(tl.int64) * sx_k)[None, :], mask=mask, other=0.0,
                                eviction_policy=EVICT))
        if ROT_LOG2 > 0 and not ROT_TILE:
            if HAS_SIGNS:
                sgn = tl.load(sign_ptr + cols, mask=cols < KP, other=1.0).to(tl.float32)
            else:
                sgn = tl.full([BLOCK_K], 1.0, tl.float32)
            x = _rotate(x, sgn, BLOCK_R, BLOCK_K, ROT_LOG2, HAS_SIGNS, ROT_SCALE, False)
        return _tile_amax_bits(x, BLOCK_R * BLOCK_K)

    @triton.jit
    def _tile_amax_bits(x, N: tl.constexpr, PART: tl.constexpr = 1):
        """``(max finite |x| as fp32 bits, some |x| not finite)`` of an fp32 tile of ``N``
        elements, from integer maxima of the raw bit patterns. Over each run of ``PART``
        consecutive elements of the flattened tile (a rotated tile's part a thread holds, so these
        reduce in registers), two: signed (the largest positive value's pattern where the run has
        one, else the largest negative magnitude's: a negative pattern grows with its magnitude as
        a signed integer too) and unsigned (the largest negative magnitude's, sign bit set, where
        the run has one); the run's ``max |x|`` pattern is the larger of the two with the sign bit
        cleared, and the tile's the largest of those. +Inf and NaN lie above FLT_MAX's pattern; only
        a tile that holds one reduces its finite maximum again (masked elements load as 0). The
        combiner is named at each call, as compiled Triton cannot hold a jit function in a
        variable. Until 2026-12-07b every element's ``|x|`` pattern, the finite ones selected, in
        two reductions (sm_90 SASS, NVFP4 + random Hadamard-128's amax pass: ~4 instructions an
        element, now 1, three-input maxima of two elements each)."""
        b = tl.reshape(x.to(tl.int32, bitcast=True), [N // PART, PART])
        hs = tl.reduce(b, 1, tl.standard._elementwise_max)
        hu = tl.reduce(b.to(tl.uint32, bitcast=True), 1, tl.standard._elementwise_max).to(tl.int32, bitcast=True)
        amax = tl.reduce(tl.maximum(hs & 0x7FFFFFFF, hu & 0x7FFFFFFF), 0, tl.standard._elementwise_max)
        bad = amax > 0x7F7FFFFF
        if bad:  # a NaN or Inf in the tile: the largest finite |x|
            a = tl.reshape(b, [N]) & 0x7FFFFFFF
            amax = tl.reduce(tl.where(a <= 0x7F7FFFFF, a, 0), 0, tl.standard._elementwise_max)
        return amax, bad

    @triton.jit
    def _tensor_stats(buf_ptr, n_part, N_PARTIALS: tl.constexpr, PDL: tl.constexpr):
        """``(amax, bad)`` of the whole tensor from the amax pass: the max over its ``n_part``
        pairs ``buf[2p], buf[2p + 1]`` (``n_part <= N_PARTIALS``; partials, or the atomics' slots:
        the same integer max). A given NVFP4 global amax: :func:`_nvfp4_gamax`. ``PDL``: this
        program is a programmatic dependent of the amax pass (:data:`PDL`): it waits for that
        grid (``griddepcontrol.wait``) before reading the words it wrote."""
        tl.static_assert(N_PARTIALS > 0, "an amax pass leaves at least one pair")
        if PDL:
            tl.extra.cuda.gdc_wait()
        return _pairs_max(buf_ptr, n_part, N_PARTIALS, "")

    @triton.jit
    def _pairs_max(buf_ptr, n_part, N_PARTIALS: tl.constexpr, CACHE: tl.constexpr):
        """``(amax, bad)``: the integer max over the ``n_part`` pairs ``buf[2p], buf[2p + 1]``
        (``n_part <= N_PARTIALS``; the same words in any order), the amax's bits as fp32 and the
        flag as a bool; the pairs loaded with the cache modifier ``CACHE`` (``""``: Triton's
        default; ``".cg"``: at the L2, :func:`_grid_stats`)."""
        p = tl.arange(0, N_PARTIALS)
        m = p < n_part
        a = tl.reduce(tl.load(buf_ptr + 2 * p, mask=m, other=0, cache_modifier=CACHE), 0, tl.standard._elementwise_max)
        b = tl.reduce(tl.load(buf_ptr + 2 * p + 1, mask=m, other=0, cache_modifier=CACHE), 0,
                      tl.standard._elementwise_max)
        return a.to(tl.float32, bitcast=True), b > 0

    @triton.jit
    def _nvfp4_gamax(buf_ptr, n_part, gamax_f, N_PARTIALS: tl.constexpr, GAMAX: tl.constexpr, PDL: tl.constexpr):
        """NVFP4's global amax (fp32): from the amax pass (``GAMAX == 0``, :func:`_tensor_stats`,
        which waits for it under ``PDL``), the fp32 argument ``gamax_f`` (1: a given Python float)
        or the fp32 word at ``buf_ptr`` (2: a given tensor)."""
        if GAMAX == 1:
            g = tl.full([1, 1], 0.0, tl.float32) + gamax_f  # fp32 (RN) from the launcher; tl.full: a builtin
        elif GAMAX == 2:
            g = tl.load(buf_ptr).to(tl.float32)
        else:
            g, _ = _tensor_stats(buf_ptr, n_part, N_PARTIALS, PDL)
        return g

    @triton.jit
    def _grid_barrier(bar_ptr, n):
        """A barrier of all ``n`` programs of the grid (every one co-resident: :data:`GRID_SYNC`) on
        the two int32 words ``bar_ptr[0]`` (arrivals) and ``bar_ptr[32]`` (generation, on a 128-byte
        line of its own, so that the programs polling it do not queue on the count's line), zeroed once
        when created (:func:`_grid_barrier_words`) and never again: sense reversal. Each program
        reads the generation, arrives (``atomic_add`` of 1); the last to arrive (the count it read
        is ``n - 1``) sets the count back to 0 and then bumps the generation, which releases the
        others, spinning while the generation is the one they read. So every launch leaves the words
        as it found them but for the generation (compared for equality only: its wrap is harmless).

        Lowering (Triton 3.6 for sm_90: its PTX, which ``scripts/check_triton_compile.py`` checks,
        ``_check_sync_ptx``): a scalar atomic is issued by one thread of the program (predicated on
        thread 0), and where its result is used that thread stores it to shared memory, ``bar.sync``,
        and every thread loads it back (Triton's lowering of ``tt.atomic_rmw``): the count and the generation
        each program compares are the same in all its threads, so both branches and the ``while``
        loop (its exit condition from that broadcast; Triton puts a ``bar.sync`` at the loop head
        before the shared slot is written again) are uniform. ``atomic_add(p, 0)`` with
        ``sem="acquire"`` is lowered to ``ld.global.gpu.acquire`` (no read-modify-write at the L2);
        the arrival, reset and bump are ``atom.global.gpu.acq_rel`` (Triton's defaults).

        Memory order: the program's stores before the barrier (its pair, by its thread 0 or any
        thread) are ordered before thread 0's arrival by the first ``debug_barrier`` (``bar.sync``:
        CTA-scope ordering of every thread's earlier accesses) and released at GPU scope by the
        arrival (``acq_rel``, cumulative); the arrivals are read-modify-writes of one word, so the last
        arriver's acquire reads the end of that chain and sees every program's stores; its bump of the
        generation (``acq_rel``, after its ``atomic_xchg``) releases them again, and a spinning
        program's ``ld.acquire`` that reads the new generation synchronizes with it; the second
        ``debug_barrier`` carries that to every thread of the program. The first read of the
        generation is ordered before the arrival (its value goes through shared memory and a
        ``bar.sync`` before thread 0 arrives; acquire keeps later accesses after it), so it cannot
        read this launch's bump (which needs this program's arrival) and the spin ends once the last
        program arrives. The previous launch's words are visible at the start (a kernel boundary;
        launches of one stream only: :data:`GRID_SYNC`)."""
        gen_ptr = bar_ptr + 32  # the generation: its own 128-byte line (_GRID_WORDS), apart from the count's
        gen = tl.atomic_add(gen_ptr, 0, sem="acquire")
        tl.debug_barrier()  # every thread's stores before the arrival
        old = tl.atomic_add(bar_ptr, 1)  # arrive (acq_rel, gpu scope)
        if old == n - 1:  # the last: reset the count for the next launch, then release the others
            tl.atomic_xchg(bar_ptr, 0)
            tl.atomic_add(gen_ptr, 1)
        else:
            cur = tl.atomic_add(gen_ptr, 0, sem="acquire")
            while cur == gen:
                cur = tl.atomic_add(gen_ptr, 0, sem="acquire")
        tl.debug_barrier()  # every thread after the release

    @triton.jit
    def _grid_stats(buf_ptr, bar_ptr, amax_bits, bad, n_part, N_PARTIALS: tl.constexpr):
        """``(amax, bad)`` of the whole tensor from inside the QDQ pass (:data:`GRID_SYNC`): this
        program's pair (``amax_bits``, ``bad``: :func:`_tile_amax_bits` of its loaded tile) stored at
        ``buf[2 * pid], buf[2 * pid + 1]``, a grid barrier (:func:`_grid_barrier`), then the max over
        the ``n_part`` pairs, as :func:`_tensor_stats` takes it (an integer max: the same words in
        any order), loaded ``.cg`` (at the L2: no line of ``buf`` an earlier read left in this SM's
        L1 can answer)."""
        pid = tl.program_id(0)
        tl.store(buf_ptr + 2 * pid, amax_bits)
        tl.store(buf_ptr + 2 * pid + 1, bad.to(tl.int32))
        _grid_barrier(bar_ptr, n_part)
        return _pairs_max(buf_ptr, n_part, N_PARTIALS, ".cg")

    # the seed words are never compile-time constants: Triton specializes an int argument equal
    # to 1 into a constexpr, which has no .to() (seed 1, or 2**32)
    @triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
    def _qdq_block_kernel(
        # pointers
        x_ptr, y_ptr, buf_ptr, sign_ptr, mult_ptr, bar_ptr,
        # sizes (KP: the row length of the QDQ'd rows: K, or K padded to the rotation block;
        # n_part: partial pairs of the amax pass in buf when N_PARTIALS > 0; gamax_f: a given
        # NVFP4 global amax when GAMAX == 1)
        n_rows, inner_rows, K, KP, n_part, gamax_f,
        # strides (elements)
        sx_outer, sx_inner, sx_k,
        sy_outer, sy_inner, sy_k,
        # stochastic rounding: the two 32-bit words of the seed
        seed_lo, seed_hi,
        # meta
        SPEC: tl.constexpr, RULE: tl.constexpr, GROUP: tl.constexpr,
        BLOCK_R: tl.constexpr, N_GROUPS: tl.constexpr, REVERSE: tl.constexpr,
        SCALE_ELEM: tl.constexpr, INV_EMAX: tl.constexpr, FLAT: tl.constexpr,
        FOUR6: tl.constexpr, STOCH: tl.constexpr,
        ROT_LOG2: tl.constexpr, HAS_SIGNS: tl.constexpr, ROT_SCALE: tl.constexpr, ROT_TILE: tl.constexpr,
        ROT_FOLD: tl.constexpr, INV_MULTS: tl.constexpr, ROT_HELD: tl.constexpr, ROT_SHFL: tl.constexpr,
        N_PARTIALS: tl.constexpr, GAMAX: tl.constexpr, ONE_TILE: tl.constexpr, NARROW: tl.constexpr,
        L2_HINTS: tl.constexpr, Y_STREAM: tl.constexpr, PDL: tl.constexpr, SYNC: tl.constexpr,
    ):
        """QDQ of one ``[BLOCK_R, N_GROUPS * GROUP]`` tile; groups of GROUP along K.

        Block recipes reduce each group in registers; per-tensor recipes (and NVFP4's global
        amax) read ``amax`` / ``bad`` from ``buf_ptr`` (int32 words: fp32 bits, flag).
        ``ROT_LOG2 > 0``: the tile is rotated (``R x``, blocks of ``2**ROT_LOG2`` inside the
        tile) before the QDQ and rotated back after it. ``STOCH``: stochastic element rounding
        with draws indexed ``row * KP + col``. ``FOUR6``: NVFP4's four-over-six block scales.
        ``ONE_TILE``: the whole tensor is this one tile (a decode-sized call of a two-pass recipe):
        its amax and NaN/Inf flag are reduced from the loaded (rotated) tile as the amax pass
        would, with no amax pass and no buffer. ``ROT_FOLD`` (MX recipes whose orthonormal
        rotation scale is a power of two, ``2**ROT_FOLD``, with whole groups in a thread: Hadamard-16
        and -64, :data:`ROT_FOLD`; ``ROT_SCALE`` is then 1.0): the tile is rotated unscaled, and the scale goes into the block's exponents
        instead (:func:`_pow2_wide`): the amax ``* 2**ROT_FOLD`` gives the block exponent ``e``,
        the elements are scaled by ``2**(ROT_FOLD - e)`` and dequantized by ``2**(e + ROT_FOLD)``
        before the unscaled inverse butterfly: the same numbers as scaling ``R x`` and ``R^T y``
        (scaling by a power of two is exact and commutes with every rounding while no value is
        subnormal, which holds for blocks of amax at least ``2**-100``), two multiplies an element
        fewer. ``L2_HINTS`` (the QDQ pass of a two-pass call): x, read
        for the last time, is loaded ``evict_first`` (:data:`L2_HINTS`). ``PDL`` (the QDQ pass
        of a two-pass call launched as a programmatic dependent of its amax pass, :data:`PDL`):
        the program waits for the amax pass (``griddepcontrol.wait``) just before it reads the
        pairs that pass wrote, after loading and reducing its tile. ``SYNC`` (a two-pass call of
        one launch, :data:`GRID_SYNC`; every program co-resident): each program reduces its loaded
        (rotated) tile's pair as ``ONE_TILE`` does, stores it at ``buf[2 * pid]``, waits at a grid
        barrier on the words at ``bar_ptr`` and reduces the ``n_part`` pairs (:func:`_grid_stats`),
        then QDQs the tile it holds: x is read once, and no amax pass is launched.
        """
        BLOCK_K: tl.constexpr = N_GROUPS * GROUP
        rows, k0 = _tile_coords(tl.program_id(0), n_rows, K, BLOCK_R, BLOCK_K, REVERSE)
        xr = _row_offsets(rows, inner_rows, sx_outer, sx_inner, FLAT)
        yr = _row_offsets(rows, inner_rows, sy_outer, sy_inner, FLAT)
        if ROT_TILE:  # whole rotation blocks per thread (_block_cols)
            x, c4, mask4 = _load_rotated(x_ptr, sign_ptr, xr, rows, n_rows, k0, K, KP, sx_k, BLOCK_R, BLOCK_K,
                                         ROT_LOG2, HAS_SIGNS, ROT_SCALE, ROT_TILE, ROT_HELD, _evict(L2_HINTS, False),
                                         ROT_SHFL)
            x = tl.reshape(x, [BLOCK_R, N_GROUPS, GROUP])
            cols = tl.reshape(c4, [N_GROUPS, GROUP])
        else:
            cols = (k0 + tl.arange(0, N_GROUPS)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]).to(tl.int64)
            mask = (rows < n_rows)[:, None, None] & (cols < K)[None, :, :]
            x = _to_f32(tl.load(x_ptr + xr[:, None, None] + (cols * sx_k)[None, :, :], mask=mask, other=0.0,
                                eviction_policy=_evict(L2_HINTS, False)))
        if ROT_LOG2 > 0 and not ROT_TILE:
            cols1 = k0 + tl.arange(0, BLOCK_K)
            if HAS_SIGNS:
                sgn = tl.load(sign_ptr + cols1, mask=cols1 < KP, other=1.0).to(tl.float32)
            else:
                sgn = tl.full([BLOCK_K], 1.0, tl.float32)  # unused
            x = _rotate(tl.reshape(x, [BLOCK_R, BLOCK_K]), sgn, BLOCK_R, BLOCK_K, ROT_LOG2, HAS_SIGNS,
                        ROT_SCALE, False)
            x = tl.reshape(x, [BLOCK_R, N_GROUPS, GROUP])
        if STOCH:
            u = philox_uniform_f32(seed_lo, seed_hi, rows[:, None, None] * KP + cols[None, :, :])
        else:
            u = x
        if ONE_TILE or SYNC:  # the amax pass's reduction, over this tile (ONE_TILE: the only one)
            t_amax, t_bad = _tile_amax_bits(x, BLOCK_R * BLOCK_K)
            if SYNC:  # every program's pair, after a grid barrier
                t_amax, t_bad = _grid_stats(buf_ptr, bar_ptr, t_amax, t_bad, n_part, N_PARTIALS)
            else:
                t_amax = t_amax.to(tl.float32, bitcast=True)

        if SPEC.granularity.value == "tensor":
            if ONE_TILE or SYNC:
                amax, bad = t_amax, t_bad
            else:
                amax, bad = _tensor_stats(buf_ptr, n_part, N_PARTIALS, PDL)
            s = _scaled_scale(amax, SPEC)
            y = _scaled_qdq(x, s, amax, bad, SPEC, NARROW)
            if NARROW:
                fallback = _narrow_fallback(tl.full([1], 0.0, tl.float32) + amax)  # tl.full: a builtin
        else:
            amax, bad = _stats_of_bits(_group_max_bits(x, 2))
            bad = bad[:, :, None]
            if SPEC.family.value == "mx":
                if ROT_FOLD != 0:  # x is the unscaled butterfly's: the scale 2**ROT_FOLD goes in the exponents
                    e = mx_exponent(amax * (2.0**ROT_FOLD), RULE, SPEC.elem.emax, SPEC.elem.mbits,
                                    SPEC.elem.max_normal)[:, :, None]
                    q = _elem(x * _pow2_wide(ROT_FOLD - e), u, _cx(SPEC.elem), STOCH)
                    f = _pow2_wide(e + ROT_FOLD)
                else:
                    e = mx_exponent(amax, RULE, SPEC.elem.emax, SPEC.elem.mbits, SPEC.elem.max_normal)[:, :, None]
                    q = _elem(x * pow2_f32(-e), u, _cx(SPEC.elem), STOCH)
                    f = pow2_f32(e)
                y = q * _nan_where(bad, f)
            elif SPEC.family.value == "nvfp4":
                if ONE_TILE or SYNC:
                    gamax = t_amax
                else:
                    gamax = _nvfp4_gamax(buf_ptr, n_part, gamax_f, N_PARTIALS, GAMAX, PDL)
                zero_tensor = gamax == 0
                one = tl.full([1, 1], 1.0, tl.float32)
                gs = tl.where(zero_tensor, one,
                              tl.div_rn(tl.full([1, 1], SCALE_ELEM.max_normal * SPEC.elem.max_normal,
                                                tl.float32), gamax + 0.0 * one))
                y = _nvfp4_candidate(x, amax, bad, gs, one, INV_EMAX, SPEC, SCALE_ELEM, u, STOCH)
                if FOUR6:  # keep the 4-candidate only when its error is strictly lower (NaN blocks: both NaN)
                    y4 = _nvfp4_candidate(x, amax, bad, gs, one, 0.25, SPEC, SCALE_ELEM, u, STOCH)
                    d6 = y - x
                    d4 = y4 - x
                    use4 = _tree_sum16(d4 * d4, BLOCK_R, N_GROUPS) < _tree_sum16(d6 * d6, BLOCK_R, N_GROUPS)
                    y = tl.where(use4[:, :, None], y4, y)
            else:
                s = _scaled_scale(amax, SPEC)[:, :, None]
                y = _scaled_qdq(x, s, amax[:, :, None], bad, SPEC, NARROW)
                if NARROW:
                    fallback = _narrow_fallback(amax)
        if ROT_TILE:
            HELD: tl.constexpr = 1 << ROT_HELD
            y = _butterfly_held(tl.reshape(y, [BLOCK_R, BLOCK_K]), BLOCK_R, BLOCK_K, ROT_LOG2, ROT_HELD, ROT_SHFL)
            if ROT_SCALE != 1.0 and not INV_MULTS:
                y = y * ROT_SCALE
            y = tl.reshape(y, [BLOCK_R, BLOCK_K // HELD, HELD // 8, 8])
            if INV_MULTS:  # signs * ROT_SCALE, one product from their own fp32 tensor
                y = y * _block_padded(mult_ptr, c4, rows)
            elif HAS_SIGNS == 3:  # the sign words' bits, into the fp32 sign bit
                m = _sign_masks32(sign_ptr, k0, rows, BLOCK_R, BLOCK_K, HELD)
                y = (y.to(tl.int32, bitcast=True) ^ m).to(tl.float32, bitcast=True)
            elif HAS_SIGNS == 2:  # the forward's sign masks, into the fp32 sign bit
                bits = _block_padded(sign_ptr, c4, rows).to(tl.int32) << 16
                y = (y.to(tl.int32, bitcast=True) ^ bits).to(tl.float32, bitcast=True)
            elif HAS_SIGNS:  # the compiler merges this load with the forward's: held across the QDQ
                y = y * _block_signs(sign_ptr, c4, rows, KP)
            if ROT_TILE == 2:  # stored coalesced: the output values moved back through shared memory
                cols2, mask2 = _tile_cols(rows, n_rows, k0, K, BLOCK_K)
                tl.store(y_ptr + yr[:, None] + (cols2 * sy_k)[None, :],
                         tl.reshape(_to_out(y, y_ptr.dtype.element_ty), [BLOCK_R, BLOCK_K]), mask=mask2,
                         cache_modifier=_ystore(Y_STREAM))
            else:
                tl.store(y_ptr + yr[:, None, None, None] + (c4 * sy_k)[None, :, :, :],
                         _to_out(y, y_ptr.dtype.element_ty), mask=mask4, cache_modifier=_ystore(Y_STREAM))
        else:
            if ROT_LOG2 > 0:
                y = _rotate(tl.reshape(y, [BLOCK_R, BLOCK_K]), sgn, BLOCK_R, BLOCK_K, ROT_LOG2, HAS_SIGNS,
                            ROT_SCALE, True)
                y = tl.reshape(y, [BLOCK_R, N_GROUPS, GROUP])
            tl.store(y_ptr + yr[:, None, None] + (cols * sy_k)[None, :, :],
                     _to_out(y, y_ptr.dtype.element_ty), mask=mask, cache_modifier=_ystore(Y_STREAM))
        if NARROW:  # a group outside the fp32 form's range: the tile again, in the float64 form
            if fallback:
                tl.debug_barrier()  # every thread's store above lands first
                _tile_f64(x_ptr, y_ptr, xr, yr, rows, n_rows, k0, K, sx_k, sy_k, s, bad, SPEC, GROUP, N_GROUPS)

    @triton.jit
    def _qdq_row_kernel(
        # pointers
        x_ptr, y_ptr,
        # sizes
        n_rows, inner_rows, K,
        # strides (elements)
        sx_outer, sx_inner, sx_k,
        sy_outer, sy_inner, sy_k,
        # meta
        SPEC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE: tl.constexpr,
        FLAT: tl.constexpr, NARROW: tl.constexpr, FIX_K: tl.constexpr,
    ):
        """QDQ of BLOCK_R whole rows with one scale per row (SCALED per-token / per-channel)."""
        rows, k0 = _tile_coords(tl.program_id(0), n_rows, BLOCK_K, BLOCK_R, BLOCK_K, False)
        xr = _row_offsets(rows, inner_rows, sx_outer, sx_inner, FLAT)
        yr = _row_offsets(rows, inner_rows, sy_outer, sy_inner, FLAT)
        rmask = (rows < n_rows)[:, None]
        c = tl.arange(0, BLOCK_K).to(tl.int64)
        if SINGLE:
            mask = rmask & (c < K)[None, :]
            x = _to_f32(tl.load(x_ptr + xr[:, None] + (c * sx_k)[None, :], mask=mask, other=0.0))
            amax, bad = _stats_of_bits(_group_max_bits(x, 1))
            s = _scaled_scale(amax, SPEC)[:, None]
            y = _scaled_qdq(x, s, amax[:, None], bad[:, None], SPEC, NARROW)
            tl.store(y_ptr + yr[:, None] + (c * sy_k)[None, :], _to_out(y, y_ptr.dtype.element_ty), mask=mask)
            if NARROW:  # a row outside the fp32 form's range: the rows again, in the float64 form
                if _narrow_fallback(amax):
                    tl.debug_barrier()  # every thread's store above lands first
                    _rows_qdq(x_ptr, y_ptr, xr, yr, rmask, s, amax[:, None], bad[:, None], K, sx_k, sy_k, SPEC, FIX_K,
                              False)
        else:
            m = tl.full([BLOCK_R], 0, tl.int32)
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + c
                mask = rmask & (cols < K)[None, :]
                x = tl.load(x_ptr + xr[:, None] + (cols * sx_k)[None, :], mask=mask, other=0.0)
                m = tl.maximum(m, _group_max_bits(_to_f32(x), 1))
            amax, bad = _stats_of_bits(m)
            s = _scaled_scale(amax, SPEC)[:, None]
            amax = amax[:, None]
            bad = bad[:, None]
            if NARROW:
                if _narrow_fallback(amax):  # decided before any store: no redo, no barrier
                    _rows_qdq(x_ptr, y_ptr, xr, yr, rmask, s, amax, bad, K, sx_k, sy_k, SPEC, FIX_K, False)
                else:
                    _rows_qdq(x_ptr, y_ptr, xr, yr, rmask, s, amax, bad, K, sx_k, sy_k, SPEC, BLOCK_K, True)
            else:
                _rows_qdq(x_ptr, y_ptr, xr, yr, rmask, s, amax, bad, K, sx_k, sy_k, SPEC, BLOCK_K, False)


# ============================================================================ launcher


@dataclass(frozen=True)
class _Rows:
    """``[n_rows, K]`` view of a tensor: row = outer * inner_rows + inner, three strides."""

    n_rows: int
    inner_rows: int
    k: int
    strides_x: tuple[int, int, int]
    strides_y: tuple[int, int, int]


def _fold_rows(x: torch.Tensor, y: torch.Tensor, axis: int) -> _Rows | None:
    """Describe x and y (same shape) as rows along ``axis`` with two leading strides each.

    Leading dimensions are folded where both tensors allow it; ``None`` when more than two
    remain (the caller then copies).
    """
    dims = [d for d in range(x.ndim) if d != axis and x.shape[d] != 1]
    groups: list[list[int]] = []  # [size, stride_x, stride_y], outermost first
    for d in dims:
        size, sx, sy = x.shape[d], x.stride(d), y.stride(d)
        if groups and groups[-1][1] == sx * size and groups[-1][2] == sy * size:
            groups[-1] = [groups[-1][0] * size, sx, sy]
        else:
            groups.append([size, sx, sy])
    if len(groups) > 2:
        return None
    while len(groups) < 2:
        groups.insert(0, [1, 0, 0])
    (n_out, sxo, syo), (n_in, sxi, syi) = groups
    return _Rows(
        n_out * n_in, n_in, x.shape[axis],
        (sxo, sxi, x.stride(axis)), (syo, syi, y.stride(axis)),
    )


def _rows(x: torch.Tensor, y: torch.Tensor, axis: int) -> _Rows | None:
    """:func:`_fold_rows`, without the stride walk in the common case (both contiguous, last axis)."""
    if axis == x.ndim - 1 and x.is_contiguous() and y.is_contiguous() and x.stride(-1) == 1:
        k = x.shape[-1]
        n = x.numel() // k
        s = (0, k if n > 1 else 0, 1)
        return _Rows(n, n, k, s, s)
    return _fold_rows(x, y, axis)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _block_tile(k: int, group: int, tile: int, min_k: int = 1) -> tuple[int, int]:
    """(BLOCK_R, N_GROUPS) for a block recipe: up to 1024 columns (at least ``min_k``, the
    rotation block), ~``tile`` elements per tile."""
    block_k = max(group, min_k, min(_pow2_at_least(k), 1024))
    return max(1, tile // block_k), block_k // group


def _row_tile(k: int, tile: int) -> tuple[int, int, bool]:
    """(BLOCK_R, BLOCK_K, single) for a per-row recipe."""
    if k <= _ROW_SINGLE_MAX:
        block_k = _pow2_at_least(k)
        return max(1, tile // block_k), block_k, True
    return 1, 2048, False


def _check(x: torch.Tensor, spec: FormatSpec, scale_rule: str, axis: int, global_amax, rounding: str) -> int:
    if not isinstance(x, torch.Tensor) or x.dtype not in SUPPORTED_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"unsupported input {got}; accepted dtypes: {', '.join(map(str, SUPPORTED_DTYPES))}")
    if triton is None or not (x.is_cuda or interpreting()):  # a CUDA tensor: Triton runs
        raise RuntimeError(
            f"the Triton QDQ backend needs Triton and a CUDA tensor (or TRITON_INTERPRET=1); got a "
            f"{x.device.type} tensor{'' if triton is not None else ' and no Triton'}; use backend='reference'"
        )
    if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis} is out of range for a {x.ndim}-d tensor")
    if isinstance(scale_rule, str) and isinstance(rounding, str):
        _check_recipe(spec, scale_rule, rounding, global_amax is not None)
    else:  # not hashable: checked uncached, which names the value
        _check_recipe.__wrapped__(spec, scale_rule, rounding, global_amax is not None)
    return axis % x.ndim


@lru_cache(maxsize=1024)
def _check_recipe(spec: FormatSpec, scale_rule: str, rounding: str, has_global_amax: bool) -> None:
    """The checks that depend on the recipe alone: once per recipe (an error is not cached)."""
    check_scale_rule(spec, scale_rule)
    check_rounding(spec, rounding)
    if has_global_amax and spec.family is not Family.NVFP4:
        raise ValueError(f"global_amax applies to the NVFP4 family only, not {spec.name!r}")
    if spec.granularity is Granularity.BLOCK and spec.block_size not in (16, 32, 64, 128):
        raise ValueError(f"block_size={spec.block_size} unsupported by the Triton kernels; accepted: 16, 32, 64, 128")


@dataclass(frozen=True)
class _Extras:
    """The issue-18 options of one launch: rotation and stochastic rounding (four over six is a
    scale rule: the launch plan reads it from the rule)."""

    rot: Rotation | None = None
    signs: torch.Tensor | None = None
    kp: int = 0  # row length of the QDQ'd rows (K, or K padded to the rotation block)
    seed: int | None = None  # stochastic rounding when not None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@lru_cache(maxsize=4096)
def _plan(spec: FormatSpec, rule: str, k: int, rot_block: int, has_signs: bool, stoch: bool, two_pass: bool,
          tile: tuple[int, int], amax_tile: tuple[int, int], one_tile_rows: int = 0, rot_tile: int = 0,
          rot_fold: bool = False, sign_bits: bool = False, maxnreg: int = 0, sign_words: bool = False,
          sync: int = 0, held_max: int = 128, shfl: bool = False, amax_held: int = 0,
          maxnreg64: int = 0) -> tuple:
    """Everything a launch needs that follows from the recipe and the row length alone, worked
    out once per key (the eager hot path then does no lookups but this one): per-row recipes
    ``(block_r, constexpr kwargs)``; block recipes ``(block_r, block_k, amax (block_r, block_k,
    kwargs) or None, constexpr kwargs)``. ``tile`` / ``amax_tile``: the :data:`TILE_CONFIG` entries
    in force (part of the key, so a changed table takes effect). ``one_tile_rows``: the rows of a
    call that is one tile (:func:`_one_tile`), 0 otherwise. ``rot_tile``: 1 or 2, rotation blocks
    held whole by one thread (:data:`ROT_TILE_MAX`; 2: loaded and stored coalesced,
    :data:`ROT_COALESCE`); the tiles then grow to at least one rotation block per thread.
    ``rot_fold``: :data:`ROT_FOLD` in force. ``sign_bits``: a 16-bit input with :data:`SIGN_BITS`
    on: where rotation blocks are held whole and loaded coalesced (``rot_tile == 2``),
    ``HAS_SIGNS = 2`` (the signs as 16-bit sign masks,
    :func:`~vllm_qdq.numerics.rotation.hadamard_sign_bits`, padded to whole tiles). ``maxnreg``:
    :data:`ROT_MAXNREG` in force, the QDQ pass's register cap where ``rot_tile == 2`` and the
    rotation block is at least :data:`ROT_HELD_MAX` (0: none). ``sign_words``: a 16-bit input with
    :data:`SIGN_WORDS` on: there ``HAS_SIGNS = 3`` instead (the signs packed a bit a column,
    :func:`~vllm_qdq.numerics.rotation.hadamard_sign_words`, for the inverse too: no
    ``INV_MULTS``). ``sync``: a two-pass call of one launch (:data:`GRID_SYNC`), its tile
    ``sync`` times the rows of the planned one with ``sync`` times its warps (the elements a
    thread holds unchanged; :func:`_grid_sync_grow` picks it), no amax pass, ``SYNC`` set.
    ``held_max``: :func:`_held_max` of the recipe (blocks larger are held in parts, ``ROT_HELD``;
    a rotated call must pass it: the default serves the unrotated ones, where it changes nothing).
    ``shfl``: :data:`ROT_SHFL` in force (``ROT_SHFL``: a split block's cross-lane stages by lane
    shuffles in PTX, :func:`_butterfly_held`). ``amax_held``: :func:`_amax_held_max` of the
    recipe, the amax pass's part size (0: ``held_max``). ``maxnreg64``: :data:`ROT_MAXNREG_64`
    in force, the QDQ pass's register cap where a thread holds a part of 64 of a larger block
    loaded coalesced (0: none)."""
    size, warps = tile
    if spec.granularity is Granularity.ROW:
        block_r, block_k, single = _row_tile(k, size)
        return block_r, {"SPEC": spec, "BLOCK_R": block_r, "BLOCK_K": block_k, "SINGLE": single,
                         "FIX_K": min(block_k, _FIX_K), "num_warps": warps, "enable_fp_fusion": False}
    rot_tile = rot_tile if rot_block > 1 else 0
    rot_held = _rot_held(rot_block, rot_tile, held_max)
    held_coalesced = has_signs and rot_tile == 2
    mode = 3 if held_coalesced and sign_words else 2 if held_coalesced and sign_bits else has_signs
    rot = {"ROT_LOG2": rot_block.bit_length() - 1, "HAS_SIGNS": mode,
           "ROT_SCALE": inv_sqrt_f32(rot_block) if rot_block > 1 else 1.0, "ROT_TILE": rot_tile,
           "ROT_HELD": rot_held}
    fold = _rot_fold(spec, rot_block, rot_tile) if rot_fold else 0
    q_rot = {**rot, "ROT_SCALE": 1.0, "ROT_FOLD": fold} if fold else {**rot, "ROT_FOLD": 0}
    q_rot["INV_MULTS"] = bool(has_signs and rot_tile and rot_block >= INV_MULTS_MIN and mode != 3)
    if rot_tile:  # one block (or part) per thread at least
        held = 1 << rot_held
        size = max(size, held * 32 * warps)
    group = spec.block_size if spec.granularity is Granularity.BLOCK else 128
    block_r, n_groups = _block_tile(k, group, size, rot_block)
    if one_tile_rows:  # the whole tensor in one tile (:func:`_one_tile`)
        block_k = max(_pow2_at_least(k), group, rot_block)
        block_r, n_groups = _pow2_at_least(one_tile_rows), block_k // group
        warps = ONE_TILE_WARPS
    if sync:  # the grid barrier's tile: more rows and warps, the same elements a thread
        block_r, warps = block_r * sync, warps * sync
    amax = None
    if two_pass and not sync:  # the amax pass: its own part size (amax_held), its tile at least a part a thread
        a_held = _rot_held(rot_block, rot_tile, amax_held or held_max)
        if rot_tile:
            amax_tile = (max(amax_tile[0], (32 << a_held) * amax_tile[1]), amax_tile[1])
        a_r, a_groups = _block_tile(k, group, amax_tile[0], rot_block)
        amax = (a_r, a_groups * group, {"BLOCK_R": a_r, "BLOCK_K": a_groups * group, "num_warps": amax_tile[1], **rot,
                "ROT_HELD": a_held,
                "ROT_SHFL": _shfl_ok(shfl, a_r * a_groups * group, amax_tile[1], rot_block, rot_tile, a_held),
                "enable_fp_fusion": False})
    consts = {
        "SPEC": spec, "RULE": rule_code(rule) if spec.family is Family.MX else 0, "GROUP": group,
        "BLOCK_R": block_r, "N_GROUPS": n_groups, "REVERSE": two_pass and not sync, "SYNC": bool(sync),
        "SCALE_ELEM": spec.scale_elem or _NVFP4_SCALE_ELEM,
        "INV_EMAX": float(np.float32(1.0 / spec.elem.max_normal)),
        "FOUR6": rule == "four_over_six", "STOCH": stoch, **q_rot, "num_warps": warps, "enable_fp_fusion": False,
        "ROT_SHFL": _shfl_ok(shfl, block_r * n_groups * group, warps, rot_block, rot_tile, rot_held),
    }
    if maxnreg and _rot_capped(rot_block, rot_tile, held_max):
        consts["maxnreg"] = maxnreg
    elif maxnreg64 and rot_tile == 2 and rot_held == 6 and rot_block > 64:
        consts["maxnreg"] = maxnreg64
    return block_r, n_groups * group, amax, consts


def _shfl_ok(shfl: bool, tile: int, warps: int, rot_block: int, rot_tile: int, rot_held: int) -> bool:
    """The ``ROT_SHFL`` of a kernel whose tile holds ``tile`` elements over ``warps`` warps:
    :data:`ROT_SHFL` in force (``shfl``), a block held in parts (``rot_block`` above ``2**rot_held``)
    in the coalesced layout (``rot_tile == 2``, whose layout the anchor load fixes whatever the row
    length: loaded in the blocks' own layout, ``rot_tile == 1``, the layout follows the rows'
    alignment, and at 16 x 3000 a part's chunks went to other lanes, which
    ``scripts/check_triton_compile.py`` found after the H100 of 2026-12-07 had: FP8 per-group128 +
    Hadamard-256 padded, not the reference's bits), and at least one whole part a thread (in a
    smaller tile, such as a decode-sized call's one tile, Triton spreads a part's chunks over lanes;
    the kernel's :func:`_part_lane` then checks that a block's parts lie on one warp's lanes)."""
    return bool(shfl and rot_tile == 2 and rot_held and rot_block > (1 << rot_held)
                and tile >= (32 << rot_held) * warps)


def _launch(x: torch.Tensor, y: torch.Tensor, r: _Rows, spec: FormatSpec, rule: str, global_amax,
            ex: _Extras | None = None, rec: list | None = None) -> tuple[torch.Tensor, ...]:
    """Launch the kernels of one call; with ``rec``, append ``(jit function, grid, args, kwargs,
    compiled kernel, buf)`` per launch (what :class:`_FastCall` replays). Returns the constant
    tensors passed (a random rotation's signs and inverse multipliers, cached; the grid barrier's
    words, :data:`GRID_SYNC`), which a replay holds."""
    ex = ex or _Extras(kp=r.k)
    per_tensor = spec.granularity is Granularity.TENSOR
    nvfp4 = spec.family is Family.NVFP4
    two_pass = per_tensor or (nvfp4 and global_amax is None)
    flat = r.inner_rows == r.n_rows  # one outer group: row offsets are rows * stride
    # 16-bit in and out, unrotated: the float64 recipes may take their fp32 form (_scaled_qdq_narrow)
    narrow = (NARROW_F64 and x.dtype in _NARROW_DTYPES and y.dtype in _NARROW_DTYPES and ex.rot is None
              and kernel_class(spec) in ("scaled_fp64", "row_fp64"))
    if not _tiles_arch and x.is_cuda:
        use_tiles_for(x.device)
    tile = tuple(TILE_CONFIG[kernel_class(spec)])
    if spec.granularity is Granularity.ROW:
        block_r, consts = _plan(spec, rule, r.k, 1, False, False, False, tile, tile)
        grid = (_cdiv(r.n_rows, block_r),)
        args = (x, y, r.n_rows, r.inner_rows, r.k, *r.strides_x, *r.strides_y)
        consts = {"FLAT": flat, "NARROW": narrow, **consts}
        k = _qdq_row_kernel[grid](*args, **consts)
        if rec is not None:
            rec.append((_qdq_row_kernel, grid, args, consts, k, None))
        return ()
    rot_b = ex.rot.block if ex.rot is not None else 1
    one_tile = two_pass and _one_tile(spec, r.n_rows, r.k, rot_b)
    plan = (spec, rule, r.k, rot_b, ex.signs is not None, ex.seed is not None, two_pass, tile,
            tuple(TILE_CONFIG["amax"]) if two_pass else tile, r.n_rows if one_tile else 0, _rot_layout(spec, rot_b),
            ROT_FOLD, SIGN_BITS and x.dtype in _NARROW_DTYPES, ROT_MAXNREG, SIGN_WORDS and x.dtype in _NARROW_DTYPES)
    held_max = _held_max(spec)
    block_r, block_k, amax, consts = _plan(*plan, held_max=held_max, shfl=ROT_SHFL, amax_held=_amax_held_max(spec),
                                           maxnreg64=ROT_MAXNREG_64)
    bar = None  # the grid barrier's words: a two-pass call of one launch (GRID_SYNC)
    if GRID_SYNC is not False and two_pass and not one_tile and _grid_sync_on(x.device):
        grow = _grid_sync_grow(x.device, r.n_rows, block_r, _cdiv(r.k, block_k), consts["num_warps"],
                               consts.get("maxnreg", 0))
        bar = _grid_barrier_words(x.device) if grow else None
        if bar is not None:
            block_r, block_k, amax, consts = _plan(*plan, sync=grow, held_max=held_max, shfl=ROT_SHFL,
                                                   maxnreg64=ROT_MAXNREG_64)
            if not _BARRIER_LOGGED:
                _BARRIER_LOGGED.append(True)
                import logging

                logging.getLogger(__name__).info(
                    "vllm_qdq: GRID_SYNC=%r: a two-pass call in one launch with a grid barrier (first: %s, "
                    "%d x %d, %d programs); the same numbers as two launches", GRID_SYNC, spec.name, r.n_rows,
                    r.k, _cdiv(r.n_rows, block_r) * _cdiv(r.k, block_k))
    buf = y  # placeholder: the kernel reads buf_ptr only for NVFP4 and per-tensor recipes
    # the amax pass's pairs: n_part of them in buf, the QDQ pass reducing N_PARTIALS = pairs words
    # (partials: stored by the programs, at most PARTIALS_MAX; else atomics into ATOMIC_SLOTS)
    n_part = partials = pairs = gamax_mode = 0
    gamax_f = 0.0
    stream = 0
    if amax is not None and not one_tile:
        tpp = AMAX_TILES_PER_PROGRAM if ex.rot is None else 1
        n_tiles = _cdiv(r.n_rows, amax[0]) * _cdiv(r.k, amax[1])
        a_grid = (_cdiv(n_tiles, tpp),)
        n_part, partials = _partials(a_grid[0])
        if AMAX_STAGES > 1 and ex.rot is None and not partials:  # a large call: the streaming amax pass
            stream = min(n_tiles, _sm_count(x.device) * AMAX_PROGRAMS_PER_SM)
        if partials:  # every word is written by the amax pass: no zeroing
            buf = torch.empty(2 * n_part, dtype=torch.int32, device=x.device)
            pairs = partials
        else:  # atomics into zeroed slots
            n_part, pairs = ATOMIC_SLOTS, _pairs_held(ATOMIC_SLOTS)
            buf = torch.zeros(2 * n_part, dtype=torch.int32, device=x.device)
    elif bar is not None:  # one pair a QDQ program, every word written by its program: no zeroing
        n_part = _cdiv(r.n_rows, block_r) * _cdiv(r.k, block_k)
        pairs = _pairs_held(n_part)
        buf = torch.empty(2 * n_part, dtype=torch.int32, device=x.device)
    elif nvfp4 and global_amax is not None:  # given: an fp32 argument, or read where it lies (no copy)
        if isinstance(global_amax, torch.Tensor):  # one fp32 word on x's device (qdq converted it)
            buf, gamax_mode = global_amax, 2
        else:
            gamax_f, gamax_mode = float(global_amax), 1
    signs = ex.signs if ex.signs is not None else buf
    anchor = None
    if ex.signs is None and consts["ROT_TILE"] == 2:
        # the coalesced layout's anchor load (_block_anchor) reads through sign_ptr: a base of our
        # own, 16-byte aligned, not buf (a given global amax is the caller's tensor, possibly a
        # view 4 bytes into one): the pointer's alignment sets that load's vector width and with
        # it the layout the lane shuffles (ROT_SHFL) are planned for
        signs = anchor = _anchor_base(x.device)
    mults = None
    if consts["HAS_SIGNS"] in (2, 3) or consts["INV_MULTS"]:
        # random signs held whole by a thread, padded to whole tiles (loaded unmasked): as sign
        # masks or sign words for 16-bit inputs; the inverse's multipliers (signs * ROT_SCALE)
        step = block_k if amax is None else max(block_k, amax[1])  # powers of two
        padded = _cdiv(max(r.k, ex.kp), step) * step
        if consts["HAS_SIGNS"] == 3:
            signs = hadamard_sign_words(ex.rot, ex.kp, x.device, padded)
        elif consts["HAS_SIGNS"] == 2:
            signs = hadamard_sign_bits(ex.rot, ex.kp, x.device, padded)
        if consts["INV_MULTS"]:
            mults = hadamard_scaled_signs(ex.rot, ex.kp, x.device, consts["ROT_SCALE"], padded)
    # the QDQ pass as a programmatic dependent launch of the amax pass just before it (PDL; the
    # streaming amax pass, off by default, keeps the plain order)
    pdl = bool(PDL and amax is not None and not one_tile and not stream and not _INTERPRETED and _pdl_capable(x))
    if stream:
        s_consts = {"BLOCK_R": amax[0], "BLOCK_K": amax[1], "FLAT": flat, "SLOTS": ATOMIC_SLOTS,
                    "STAGES": AMAX_STAGES, "num_warps": amax[2]["num_warps"], "enable_fp_fusion": False}
        args = (x, buf, r.n_rows, r.inner_rows, r.k, n_tiles, *r.strides_x)
        k = _amax_stream_kernel[(stream,)](*args, **s_consts)
        if rec is not None:
            rec.append((_amax_stream_kernel, (stream,), args, s_consts, k, buf))
    elif amax is not None and not one_tile:
        a_consts = {"FLAT": flat, "N_PARTIALS": partials, "SLOTS": ATOMIC_SLOTS, "TPP": tpp, "L2_HINTS": L2_HINTS,
                    "PDL": pdl, **amax[2]}
        args = (x, buf, signs, r.n_rows, r.inner_rows, r.k, ex.kp, *r.strides_x)
        k = _amax_kernel[a_grid](*args, **a_consts)
        if rec is not None:
            rec.append((_amax_kernel, a_grid, args, a_consts, k, buf))
    seed = ex.seed or 0
    grid = (_cdiv(r.n_rows, block_r) * _cdiv(r.k, block_k),)
    args = (x, y, buf, signs, signs if mults is None else mults, buf if bar is None else bar, r.n_rows,
            r.inner_rows, r.k, ex.kp, n_part, gamax_f, *r.strides_x,
            *r.strides_y, seed & 0xFFFFFFFF, seed >> 32)
    consts = {"FLAT": flat, "N_PARTIALS": pairs, "GAMAX": gamax_mode, "ONE_TILE": one_tile, "NARROW": narrow,
              "L2_HINTS": L2_HINTS and amax is not None and not one_tile,
              "Y_STREAM": Y_STREAM and amax is not None and not one_tile, "PDL": pdl, **consts}
    if pdl:
        consts["launch_pdl"] = True
    if bar is not None and not _INTERPRETED:  # the driver places every program at once, or fails the launch
        consts["launch_cooperative_grid"] = True
    k = _qdq_block_kernel[grid](*args, **consts)
    if rec is not None:
        rec.append((_qdq_block_kernel, grid, args, consts, k, buf))
    return tuple(t for t in (signs if ex.signs is not None else None, mults, bar, anchor) if t is not None)


_ANCHORS: dict[torch.device, torch.Tensor] = {}


def _anchor_base(device: torch.device) -> torch.Tensor:
    """Four zero int32 words on ``device`` (a fresh allocation: 16-byte aligned and more), cached:
    the base pointer of the coalesced rotation layout's anchor load (:func:`_block_anchor`), which
    reads nothing but whose pointer alignment Triton specializes on (a 16-byte-aligned base gives
    the load its 8-value vectors, the layout :func:`_part_lane` assumes)."""
    t = _ANCHORS.get(device)
    if t is None:
        t = _ANCHORS[device] = torch.zeros(4, dtype=torch.int32, device=device)
    return t


def _gamax_tensor(g: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A given NVFP4 global amax as one fp32 word on ``device``: the tensor itself (a view) when it
    is one fp32 element there, else converted (RN to fp32, as the reference's ``as_tensor``)."""
    if g.numel() != 1:
        raise ValueError(f"global_amax must hold one value, got a tensor of shape {tuple(g.shape)}")
    g = g.detach().reshape(1)
    if g.dtype != torch.float32 or g.device != device:
        g = g.to(device=device, dtype=torch.float32)
    return g


#: The amax pass of a two-pass recipe with at most this many programs stores one partial pair per
#: program (no zeroed buffer, no atomics; the QDQ pass reduces them): decode-sized calls then launch
#: two kernels, not three (the zeroing was a third). Above it, ``atomic_max`` into a zeroed pair
#: (reducing thousands of partials in every QDQ program would cost more than the zeroing). 0: off.
PARTIALS_MAX = 256


#: The amax pass of a larger call (more programs than :data:`PARTIALS_MAX`) folds its tiles with
#: ``atomic_max`` into this many zeroed pairs (program ``p`` into pair ``p % ATOMIC_SLOTS``), which
#: the QDQ pass reduces as it reduces partial pairs. One pair made every program's atomics queue on
#: one address: on the H200 the amax pass of a 64M-element NVFP4 call took ~52 us against ~33 us to
#: read the tensor (16384 programs, 32768 atomics; results/h200-2026-12-04b, two-pass minus
#: given-amax time). Not yet timed with slots.
ATOMIC_SLOTS = 32


#: Tiles one program of the amax pass reads (consecutive tiles, every load issued before one
#: reduction and one pair; unrotated calls): fewer programs, reductions and atomics for the same
#: bytes in flight. The bench's "amax pass" table on the H200 (results/h200-2026-12-05, the whole
#: two-pass call as a fraction of a copy's speed, 4096^2 / 8192^2): nvfp4 0.52 / 0.52 with 1 tile,
#: 0.53 / 0.55 with 2, 0.53 / 0.55 with 4, 0.49 / 0.54 with 8; FP8 per-tensor 0.52 / 0.53, 0.53 /
#: 0.56, 0.53 / 0.56, 0.50 / 0.54. (A grid-stride loop of 4 programs per SM, one tile in flight
#: each, measured slower in results/h200-2026-12-03b.)
AMAX_TILES_PER_PROGRAM = 2

#: The amax pass of a large unrotated two-pass call (more programs than :data:`PARTIALS_MAX`) as
#: a streaming read, :func:`_amax_stream_kernel`: ``AMAX_PROGRAMS_PER_SM`` programs an SM, each
#: looping over tiles with Triton's software pipelining ``AMAX_STAGES`` deep (``cp.async``, several
#: tiles in flight a program: PTX checked by ``tests/test_triton_compile.py``); 0 or 1: the
#: one-wave-per-tile pass above. Why: that pass read 128 MB in 47.8 us (2.8 TB/s) and 32 MB in
#: 18.9 us on the H200 (``results/h200-2026-12-05c``, the bench's two-pass split), against a
#: copy's 68 / 20 us for twice the bytes: each program waits for its loads, reduces and exits.
#: The same words either way (a max). Off until the bench's "streaming amax pass" table times it.
AMAX_STAGES = 0
AMAX_PROGRAMS_PER_SM = 2


#: A two-pass call's loads of x carry eviction hints (Triton's ``eviction_policy``: ``createpolicy``
#: + ``ld.global.L1::evict_*.L2::cache_hint`` in Triton 3.6, on L1 and L2): the amax pass reads x
#: as ``evict_last``, the QDQ pass reads it (its last use) as ``evict_first``, so that the QDQ
#: pass's writes of y (no hint: the next kernel reads y) push out other lines before the x it has
#: yet to read. Without them, a 16M-element bf16 call (32 MB, in the H200's 50 MB L2) read x twice
#: from memory: its QDQ pass took as long as a one-pass call (24.7 us, ``results/h200-2026-12-04b``),
#: even with the tiles walked in reverse. Hints only: the same bits either way. Timed on the H200
#: (``results/h200-2026-12-05c``, the bench's "L2 hints" table, three interleaved rounds, the whole
#: call as a fraction of a copy's speed, 4096^2 / 8192^2): nvfp4 0.57 / 0.59 with hints, 0.58 / 0.59
#: without; FP8 per-tensor 0.62 / 0.60 with, 0.63 / 0.61 without. No gain, so off by default; the
#: switch and the table stay, for other GPUs.
L2_HINTS = False

#: A two-pass call's QDQ pass stores y as streaming (``st.global.cs``: evict first), so that the
#: output it writes does not push out of L2 the x its later tiles read again (at 16M bf16
#: elements x and y are 32 MB each, the L2 50 MB; the QDQ pass took as long as a one-pass call,
#: hints on the loads or not: :data:`L2_HINTS`). The cost: a next kernel reading y finds less of
#: it in L2. Hints only: the same bits. Timed on the H100 (results/h100-2026-12-05e, the bench's
#: "y stored streaming (Y_STREAM, .cs)" tables): 0.65 of a copy on and off, with and without
#: :data:`L2_HINTS`, at 16M and 64M. No gain, so off; the switch stays, for other GPUs.
Y_STREAM = False

#: A two-pass call's QDQ pass is launched as a programmatic dependent launch (PDL, sm_90 and up:
#: Triton's ``launch_pdl``, ``cuLaunchKernelEx`` with programmatic stream serialization) of its
#: amax pass, which signals at its start (``griddepcontrol.launch_dependents``) that it may go:
#: the QDQ pass's programs then launch while the amax pass's last wave runs (a decode-sized call's
#: only one; a dependent launches only once every program of the amax pass has signalled or
#: ended) instead of after it has drained, load their tile of x and reduce its blocks, and wait
#: (``griddepcontrol.wait``: the amax pass finished, its writes visible) only before they read the
#: tensor amax. Safe because the QDQ pass reads nothing else the amax pass writes and its
#: predecessor is always that amax pass (launched without PDL, so whatever wrote x finished
#: before it started); one-pass calls, calls of one tile, a given NVFP4 global amax and the
#: streaming amax pass launch as before, and so do GPUs below compute capability 9.0 (no
#: ``griddepcontrol``) and the interpreter. The same bits (the same arithmetic; the order of
#: launches only). Why: two dependent launches of a decode-sized call replayed from a CUDA graph
#: took 3.7-5.4 us on the H100 against 1.3-1.9 us for a copy (issue 16: at most twice a copy).
#: On since the H200 of 2026-12-06 ran it (results/lease-2026-12-06): ``tests/gpu/
#: test_triton_recipes_gpu.py::test_two_pass_dependent_launch_in_a_graph`` passed (PDL launches
#: captured in a CUDA graph between a kernel writing x and one reading y, bit for bit), and
#: ``scripts/bench_qdq_triton.py``'s PDL tables (on and off interleaved, best of 3) gained in 8 of 10
#: figures (one tie, one loss): graph replay at 16 / 64 / 256 rows x 4096, NVFP4 4.1 -> 3.4, 4.3 -> 3.7, 5.0 -> 4.4 us,
#: FP8 per-tensor 3.5 -> 2.9, 3.7 -> 3.1 us, but 4.6 -> 5.7 us at 256 rows; of a copy at 16M / 64M
#: 0.60 -> 0.62, 0.61 -> 0.61 (NVFP4), 0.61 -> 0.64, 0.63 -> 0.64 (FP8 per-tensor).
PDL = True

#: A two-pass call (NVFP4 without a given global amax, FP8 per-tensor) that is not one tile
#: (:data:`ONE_TILE_MAX`) and whose QDQ pass fits on the GPU at once is ONE launch of
#: :func:`_qdq_block_kernel` (``SYNC``), with no amax pass: each program loads its tile (rotated
#: where asked), reduces its own ``(amax bits, bad)`` pair from it as a one-tile call does, stores
#: it at ``buf[2 * pid]``, waits at a grid barrier (:func:`_grid_barrier`, on a persistent
#: workspace per device and stream, :func:`_grid_barrier_words`), reduces every pair (:func:`_grid_stats`) and
#: QDQs the tile it holds: x is read once. "Fits": at most ``min(SM count, PARTIALS_MAX)`` programs
#: (:func:`_grid_sync_grow`; the tile grows by rows and warps in powers of two, the elements a
#: thread holds unchanged, up to :data:`GRID_SYNC_WARPS_MAX` warps), so that every program is
#: resident at once (one CTA of the grown tile fits an SM: ``.reqntid`` caps its registers; a
#: register cap, ``ROT_MAXNREG``, that would not fit 16 warps stops the growth), and the launch is
#: cooperative (``launch_cooperative_grid``: the driver places every program of the grid at once or
#: fails the launch, so that programs spinning at the barrier never hold SMs that programs of their
#: own grid wait for, even beside another stream's such launch; vLLM runs MoE shared experts on an
#: aux stream beside the routed ones); larger calls, calls of one tile and the interpreter (which
#: runs programs one after another: only a grid of 1 takes the path there) launch as before. The
#: same bits as the two-launch path (the same pairs, a max of maxima; the tile's shape changes no
#: number). The workspace is one per device and stream (launches of one stream run in order; a
#: recorded eager call replayed on another stream takes the full path); it is made outside a CUDA
#: graph capture (a first call on a stream while it captures takes the two-launch path; vLLM warms
#: up eagerly on the stream it captures on, so its graphs find the words made). A graph replayed on
#: another stream than it was captured on, beside eager calls on the capture stream, would share
#: them: not supported. On a device whose SMs are shared (MPS, green contexts) the SM count must be
#: what this process can use. Why: a decode-sized two-pass call replayed from a CUDA
#: graph took 3.2-5.7 us on the H100 (two launches, PDL on) against a target of twice a copy (2.4-3.6
#: us), and 14.5 us eager against ~8.5 for one-pass recipes (issue 16). Run on the H100 of lease
#: 2026-12-06g (``results/lease-2026-12-06g``): its GPU tests pass (bits against the two-launch
#: path, graphs, 2000 barrier rounds), and ``scripts/bench_qdq_triton.py --grid-sync-table`` timed
#: NVFP4 and FP8 per-tensor at 16 / 64 / 256 rows x 4096, on / off: replayed from a graph 4.8-6.8
#: against 3.1-5.9 us (slower in all six rows: the barrier's round trip through the L2 costs more
#: than the second launch, which PDL already overlaps), eager 13.3-21.2 against 16.0-25.3 us (faster
#: in all six, one launch less on the host). Off, as vLLM replays decode steps from CUDA graphs by
#: default; an eager-only form (two launches under capture) would save ~3-4 us a call in
#: ``enforce_eager`` serving: ``"eager"``, below.
#:
#: Values: ``False`` (two launches); ``True`` (one launch with the barrier wherever a call fits,
#: CUDA graph captures included); ``"eager"`` (the barrier only outside graph captures: a call
#: made while its stream captures takes the two launches, and a recorded barrier call is not
#: replayed into a capture, nor replaced by one recorded there; :func:`_capturing`, and in a
#: replay :func:`_call_state`). In vLLM processes ``VLLM_QDQ_GRID_SYNC`` (off | eager | on) sets it
#: when the settings are built (:func:`vllm_qdq.config.apply_grid_sync`).
GRID_SYNC: bool | str = False
#: The most warps the grid barrier's tile grows to (:data:`GRID_SYNC`); a call that would need more
#: takes the two-launch path.
GRID_SYNC_WARPS_MAX = 16
#: The grid barrier's workspace (:func:`_grid_barrier_words`): int32 words, the arrival count at
#: word 0 and the generation at word :data:`_GRID_GEN` (``bar_ptr + 32`` in :func:`_grid_barrier`:
#: 128 bytes apart, a cache line each).
_GRID_WORDS = 64
_GRID_GEN = 32
_GRID_BARRIERS: dict = {}
#: Registers an SM holds (sm_80 and up): a register cap times the grown tile's threads must fit.
_SM_REGISTERS = 65536


def _grid_sync_grow(device: torch.device, n_rows: int, block_r: int, n_k: int, warps: int, maxnreg: int = 0) -> int:
    """The factor (a power of two) by which the rows and warps of a planned QDQ tile of ``block_r``
    rows (``n_k`` tiles a row) grow so that the grid holds at most ``min(SM count,
    PARTIALS_MAX)`` programs (1 under the interpreter), every one resident at once (:data:`GRID_SYNC`);
    0 when none does within :data:`GRID_SYNC_WARPS_MAX` warps (or ``PARTIALS_MAX`` is 0), or when a
    register cap ``maxnreg`` (the plan's ``maxnreg``: ``ROT_MAXNREG`` or ``ROT_MAXNREG_64``) times the grown tile's threads
    exceeds an SM's registers (the launch would fail for resources)."""
    limit = 1 if _INTERPRETED else min(_sm_count(device), PARTIALS_MAX)
    f = 1
    while _cdiv(n_rows, block_r * f) * n_k > limit:
        if block_r * f >= n_rows or warps * f * 2 > GRID_SYNC_WARPS_MAX:
            return 0
        f *= 2
    if maxnreg and maxnreg * 32 * warps * f > _SM_REGISTERS:
        return 0
    return f


def _stream_of(device: torch.device) -> int:
    """The raw handle of ``device``'s current stream (0 for a CPU tensor: the interpreter)."""
    if device.type != "cuda":
        return 0
    return torch._C._cuda_getCurrentRawStream(device.index if device.index is not None else torch.cuda.current_device())


def _capturing(device: torch.device) -> bool:
    """Whether the current CUDA stream (of the current device: where Triton launches) is capturing a
    CUDA graph; never for a ``device`` off CUDA."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _grid_sync_on(device: torch.device) -> bool:
    """Whether :data:`GRID_SYNC` lets a call on ``device``'s current stream take the grid barrier
    now; a value other than ``False``, ``True`` or ``"eager"`` is an error naming it."""
    if not (GRID_SYNC is True or GRID_SYNC is False or GRID_SYNC == "eager"):
        raise ValueError(f"triton_qdq.GRID_SYNC = {GRID_SYNC!r}; accepted: False, True, 'eager'")
    return GRID_SYNC is True or (GRID_SYNC == "eager" and not _capturing(device))


def _grid_barrier_words(device: torch.device) -> torch.Tensor | None:
    """The grid barrier's workspace for ``device``'s current stream: :data:`_GRID_WORDS` int32 words
    (the count at 0, the generation at :data:`_GRID_GEN`) zeroed once, on that stream, when made,
    and kept for the process (:func:`_grid_barrier` leaves the count at 0 after each launch; the
    stream's launches run in order, so no two launches share the words at once); None while the
    stream captures a CUDA graph and none exists yet for it (made there, they would come from the
    graph's pool and be zeroed only at replay: that call takes the two-launch path)."""
    key = (device, _stream_of(device))
    w = _GRID_BARRIERS.get(key)
    if w is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        w = torch.zeros(_GRID_WORDS, dtype=torch.int32, device=device)
        _GRID_BARRIERS[key] = w
    return w


#: A two-pass recipe's call whose whole tensor fits in one tile of at most this many elements
#: (rows and row length each rounded up to a power of two; one or two decode tokens at K = 4096)
#: is one program of :func:`_qdq_block_kernel` that reduces the tensor amax from its own tile: one
#: launch instead of two (and no scratch buffer). On by default since 2026-12-05: it compiles for
#: sm_90 (``scripts/check_triton_compile.py``; 43-155 registers, no spills), matches the reference
#: in the interpreter (``tests/test_triton_qdq.py::test_two_pass_paths_agree``) and on the H200
#: (``tests/gpu/test_triton_recipes_gpu.py::test_two_pass_paths_on_gpu``, NaN and Inf rows and eager
#: replays included, in ``results/h200-2026-12-05``'s 873 passed). Its time is the bench's decode
#: table's 1-row column (two launches before: nvfp4 3.7 us from a CUDA graph, 19.2 us eager).
#: 0: off.
ONE_TILE_MAX = 8192
#: Warps of that one program.
ONE_TILE_WARPS = 8


#: Rotation blocks up to this size are held whole by one thread (:func:`_block_cols`): the
#: butterfly runs in registers, the tiles grow to a block per thread. Larger blocks (and 0: every
#: block) take the tile's own layout, where Triton moves data between lanes for the butterfly's
#: upper stages (shuffles, shared memory, barriers), except blocks up to :data:`ROT_SPLIT_MAX` held
#: in parts (:data:`ROT_SPLIT`; MX recipes hold parts of 64 since 2026-12-06g, :data:`ROT_HELD_MAX_MX`). SASS for sm_90, bf16, instructions per element
#: (``scripts/triton_sass_stats.py``; plain MXFP4 22.2): MXFP4 + Hadamard-16 31.8 this way, 52.8
#: the other; Hadamard-128 33.2 / 72.8; NVFP4 + Hadamard-64 36.9 / 119.0. At 128 the thread holds
#: 128 elements: random signs (MXFP4), NVFP4 and per-tensor FP8 spill registers to local memory
#: (106, 478, 112 accesses a thread), and a decode-sized call keeps few of a program's threads
#: busy (the tile grows by rows); GPU timings of both layouts: ``scripts/bench_qdq_triton.py``'s
#: options table, which decides this default.
ROT_TILE_MAX = 128

#: The most elements of a rotation block one thread holds (a power of two, 32 to 128; at 128 its
#: registers hold 128 fp32 values) for the recipes outside the MX and NVFP4 families
#: (:data:`ROT_HELD_MAX_MX`, :data:`ROT_HELD_MAX_NVFP4`): larger blocks are split over threads (:data:`ROT_SPLIT`). The kernels
#: take the log2 of what a thread holds as the constexpr ``ROT_HELD`` (:func:`_rot_held`).
ROT_HELD_MAX = 128

#: Rotation blocks larger than the part a thread holds (:func:`_held_max`), up to
#: :data:`ROT_SPLIT_MAX`, are held as such parts, one a thread, where :data:`ROT_TILE_MAX` holds
#: blocks of that part's size: the butterfly stages within a part in registers, each later one as a sum
#: across the two lanes that hold its halves (:func:`_butterfly_held`), instead of the tile's own
#: layout (Hadamard-256 as halves of 128; with :data:`ROT_HELD_MAX` 64, Hadamard-128 as halves and
#: Hadamard-256 as quarters).
ROT_SPLIT = True
ROT_SPLIT_MAX = 256

#: A block held in parts (:data:`ROT_SPLIT`) takes each cross-lane butterfly stage as one
#: ``shfl.sync.bfly`` and one FMA by ``+-1`` an element, in inline PTX (:func:`_shfl_stage_asm`),
#: where Triton's reduction over the pair axis took two shuffles, a product, two additions and a
#: select (sm_90 SASS, MXFP4 + Hadamard-128 held in 64s: 4 shuffles an element, forward and
#: inverse). On the GPU only (the interpreter runs plain butterfly stages: the same roundings), in
#: the coalesced layout only, where every thread holds whole parts (:func:`_shfl_ok`) and
#: :func:`_part_lane` finds a block's parts on a warp's lanes; the lane it shuffles with
#: follows Triton 3.6's layout of the tile, which ``scripts/check_triton_compile.py`` checks in
#: the TTGIR of every kernel that takes this path.
ROT_SHFL = True

#: :data:`ROT_HELD_MAX` of the MX recipes (:func:`_held_max`): their blocks above 64 held in parts
#: of 64. Timed on the H100 of 2026-12-06g twice (``scripts/bench_qdq_triton.py --options-only
#: --no-sweeps``, ``results/lease-2026-12-06g/call3``), x plain at 16M / 64M
#: elements, held 128 -> 64: MXFP4 + Hadamard-128 1.40 / 1.25 -> 1.31 / 1.27, + random
#: Hadamard-128 1.63 / 1.49 -> 1.45 / 1.42, + Hadamard-256 1.77 / 1.66 -> 1.59 / 1.60, MXFP8 +
#: Hadamard-128 1.20 / 1.09 -> 1.14 / 1.08 (both runs within 0.01): better in seven of eight cells,
#: 0.02 worse in one. Nsight Compute (06g): the held MXFP4 rotations at 12-19% occupancy with
#: 168-254 registers, 30% with 96. With the cross-lane stages by lane shuffles (:data:`ROT_SHFL`,
#: H100 of 2026-12-07, ``results/lease-2026-12-07/call1``), held 64 / 32 / 128 at 16M / 64M:
#: MXFP4 + Hadamard-128 1.15 / 1.10, 1.16 / 1.13, 1.41 / 1.24; + random Hadamard-128 1.24 / 1.20,
#: 1.25 / 1.26, 1.64 / 1.49; + Hadamard-256 1.20 / 1.16, 1.21 / 1.18, 1.53 / 1.36: 64 stays.
ROT_HELD_MAX_MX = 64

#: :data:`ROT_HELD_MAX` of the NVFP4 recipes (nvfp4, nvfp4_e5m3; :func:`_held_max`): their blocks
#: above 32 held in parts of 32. Timed with the lane shuffles (:data:`ROT_SHFL`; H100 of
#: 2026-12-07, ``results/lease-2026-12-07/call1``), NVFP4 + random Hadamard-128 at 16M / 64M,
#: held 128 (the default until then) / 64 / 32: 1.54 / 1.45, 1.39 / 1.33, 1.33 / 1.31 x plain
#: (NVFP4's QDQ pass holds more a thread than MX's: 255 registers at 128, 148 at 64, 72 at 32).
ROT_HELD_MAX_NVFP4 = 32


#: The part size of the amax pass's rotation blocks (the first pass of NVFP4 without a given
#: global amax and of FP8 per-tensor, :func:`_amax_held_max`) where it is larger than the QDQ
#: pass's (:func:`_held_max`: NVFP4's 32; FP8's 128 stays) and :data:`ROT_TILE_MAX` holds blocks
#: of it; 0: the same as the QDQ pass's. The amax pass holds no QDQ state, so it
#: can hold more of a block in registers than the QDQ pass does and run fewer cross-lane stages:
#: sm_90 SASS (``scripts/triton_sass_stats.py``, bf16 4096 x 4096), NVFP4 + random Hadamard-128's
#: amax pass, instructions an element on the path of a tile without NaN or Inf / registers, parts
#: of 32 / 64 / 128: 20.9 / 48, 17.2 / 80, 14.9 / 165 (23.8 / 48 in parts of 32 before
#: :func:`_tile_amax_bits` took its maximum from signed and unsigned integer maxima). Timed in
#: the bench's options table ("amax 32", "amax 64", "amax 128" columns).
ROT_HELD_MAX_AMAX = 64


def _held_switch(spec: FormatSpec) -> str:
    """The module constant that holds the part size of ``spec``'s rotation blocks
    (:func:`_held_max`): ``ROT_HELD_MAX_MX``, ``ROT_HELD_MAX_NVFP4`` or ``ROT_HELD_MAX``."""
    return {Family.MX: "ROT_HELD_MAX_MX", Family.NVFP4: "ROT_HELD_MAX_NVFP4"}.get(spec.family, "ROT_HELD_MAX")


#: Every part-size constant (:func:`_held_switch`), for tools that set them all at once.
HELD_SWITCHES = ("ROT_HELD_MAX", "ROT_HELD_MAX_MX", "ROT_HELD_MAX_NVFP4", "ROT_HELD_MAX_AMAX")


def _amax_held_max(spec: FormatSpec, setting: int | None = None) -> int:
    """The most elements of a rotation block one thread of the amax pass holds (NVFP4 without a
    given global amax, FP8 per-tensor): :data:`ROT_HELD_MAX_AMAX` (or ``setting`` in its place:
    what another value would give, for the bench's columns) where it is larger than the QDQ
    pass's :func:`_held_max`, :data:`ROT_SPLIT` is on and :data:`ROT_TILE_MAX` holds blocks of that
    size (as the QDQ pass splits only into parts it could hold whole), else the QDQ pass's. A value
    other than 0, 32, 64 or 128 is an error naming it."""
    setting = ROT_HELD_MAX_AMAX if setting is None else setting
    if setting not in (0, 32, 64, 128):
        raise ValueError(f"triton_qdq.ROT_HELD_MAX_AMAX = {setting!r}; accepted: 0 (the QDQ pass's part "
                         "size), 32, 64, 128")
    held = _held_max(spec)
    amax = max(setting, held)
    return amax if ROT_SPLIT and ROT_TILE_MAX >= amax else held


def _held_max(spec: FormatSpec) -> int:
    """The most elements of a rotation block one thread holds for ``spec``'s recipes: the family's
    constant (:func:`_held_switch`: :data:`ROT_HELD_MAX_MX`, :data:`ROT_HELD_MAX_NVFP4`,
    :data:`ROT_HELD_MAX` for the others); with :data:`ROT_SPLIT` off, :data:`ROT_TILE_MAX` (blocks
    up to it held whole, none split). A part size other than 32, 64 or 128 is an error naming it (a
    thread must hold whole groups of 32 and chunks of 8)."""
    name = _held_switch(spec)
    held = globals()[name]
    if held not in (32, 64, 128):
        raise ValueError(f"triton_qdq.{name} = {held!r}; accepted: 32, 64, 128")
    return held if ROT_SPLIT else max(ROT_TILE_MAX, 1)

#: Random Hadamards of at least this block, held whole by one thread (:data:`ROT_TILE_MAX`): the
#: inverse multiplies each element once by its sign times the rotation scale, read from an fp32
#: tensor (:func:`~vllm_qdq.numerics.rotation.hadamard_scaled_signs`), instead of by the scale and
#: by the signs loaded for the forward rotation, which the compiler merges with the forward's load
#: and holds across the QDQ: at 128 elements a thread that spilled (sm_90 SASS, bf16: MXFP4 +
#: random Hadamard-128 coalesced 37.6 instructions an element, 78 local-memory accesses, 255
#: registers -> 37.0, none, 209; NVFP4 41.3, 84 -> 40.8, none). Below it, the forward's signs
#: are used again, held (Hadamard-64 before :data:`SIGN_BITS`: 34.1 instructions held, 36.2 with
#: the fp32 tensor; with it, a 16-bit input's sign masks XORed into the fp32 sign bits). The same
#: bits (the sign's product commutes with rounding).
INV_MULTS_MIN = 128

#: Random rotation signs where rotation blocks are held whole by a thread and loaded coalesced
#: (:data:`ROT_COALESCE`), for bf16 / fp16 inputs: 16-bit sign masks XORed into the raw input
#: values (one logic operation for two packed values, where a sign product took a conversion of
#: the sign and a product an element) and, below :data:`INV_MULTS_MIN`, into the inverse's fp32
#: sign bits; padded to whole tiles, like the inverse's multipliers, so that both load unmasked
#: (no compare, predicate or default value an element). The same bits as the sign products for
#: every number (a sign flip is exact; a NaN stays a NaN, its sign bit not part of the contract).
#: SASS (sm_90, results/sass-2026-12-05e): MXFP4 + random Hadamard-128 37.0 -> 33.5 instructions
#: an element, NVFP4 40.8 -> 37.2, MXFP4 + random Hadamard-256 46.3 -> 42.8; in
#: the in-thread layout (Hadamard-16) it cost instructions, so that layout keeps the products.
SIGN_BITS = True

#: Random rotation signs packed one bit a column (:func:`~vllm_qdq.numerics.rotation.hadamard_sign_words`)
#: where :data:`SIGN_BITS` would use 16-bit masks (blocks held whole, loaded coalesced, bf16 / fp16
#: input), for the forward and the inverse alike (no :data:`INV_MULTS_MIN` multipliers). Each
#: thread loads its blocks' words once (16 bytes for 128 columns: :func:`_sign_words`) and
#: spreads them over the columns in registers: forward into the packed 16-bit values
#: (:func:`_sign_masks16`; ~1.6 instructions an element in the SASS), and a shift and a logic
#: operation for each fp32 value of the inverse (:func:`_sign_masks32`, after the scale's product). Why: with the masks and multipliers a
#: thread of MXFP4 + random Hadamard-128 reads 768 bytes of signs (through L1) for its 128
#: columns, where its x and y are 512, and it took 1.53x plain MXFP4 on the H100 (06b/06c) at
#: nearly plain Hadamard-128's instructions (1.25x); with a register cap it ran at plain's
#: occupancy and no faster (lease 06). SASS (sm_90, bf16 4096 x 4096, coalesced,
#: ``scripts/triton_sass_stats.py``), instructions an element / registers, masks -> words: MXFP4 +
#: random Hadamard-128 33.5 / 255 -> 36.3 / 185, random Hadamard-256 42.8 / 255 -> 44.5 / 192,
#: MXFP8 + random Hadamard-128 28.6 / 173 -> 31.2 / 168, NVFP4 + random Hadamard-128 (QDQ pass)
#: 37.2 / 189 -> 40.1 / 255; no spills, no shared-memory access more. The inverse's words load
#: apart from the forward's (``evict_last`` there): one shared load let the compiler spread the
#: inverse's bits early and hold them (255 registers). The same bits (a sign flip is exact).
#: Timed twice (H100, ``scripts/bench_qdq_triton.py``'s options table, the column of the other
#: form), x plain MXFP4 / NVFP4 at 16M / 64M, masks -> words: results/lease-2026-12-06d, MXFP4 +
#: random Hadamard-128 1.68 / 1.52 -> 1.62 / 1.50, NVFP4 + random Hadamard-128 1.66 / 1.51 -> 1.54 /
#: 1.47; results/lease-2026-12-06f, 1.69 / 1.53 -> 1.62 / 1.50 and 1.66 / 1.51 -> 1.54 / 1.47 (plain
#: Hadamard-128: 1.25). Better in all four cells of both runs: on since 2026-12-06f (the masks,
#: off, stay timed in the table's "sign masks" column and bit for bit in the GPU test file).
SIGN_WORDS = True

#: Register cap (ptxas ``.maxnreg``) of the QDQ pass where rotation blocks of at least
#: :data:`ROT_HELD_MAX` are held and loaded coalesced (``ROT_TILE == 2``); 0: none (ptxas picks,
#: up to 255). A thread holding 128 elements of a random Hadamard-128 or of a Hadamard-256 takes
#: 254-255 registers uncapped, so that a 64-thread program fits four to an SM; at 168 six fit
#: (plain Hadamard-128's count and occupancy) for a few spilled values, at 200 five with none.
#: SASS (sm_90, bf16, ``scripts/triton_sass_stats.py``), instructions an element / local-memory
#: accesses, uncapped -> 168 -> 200: MXFP4 + random Hadamard-128 33.5 / 0 -> 34.6 / 28 -> 33.4 / 0;
#: random Hadamard-256 42.8 / 0 -> 44.8 / 8 -> 42.8 / 0; Hadamard-256 40.9 / 0 -> 41.8 / 113 ->
#: 40.9 / 0; NVFP4 + random Hadamard-128 (one warp a program: 10 -> 12 an SM at 168) 37.2 / 0 ->
#: 38.2 / 24; plain Hadamard-128 unchanged (168 uncapped). Not below Hadamard-128: given a cap,
#: ptxas takes what it is given (random Hadamard-64 128 -> 168 registers, fewer programs an SM).
#: The same bits (a spill moves a value, it does not round it). Timed on the H200 of 2026-12-06
#: (results/lease-2026-12-06, the options table; x plain at 16M / 64M, cap 168 / uncapped / cap
#: 200): Hadamard-128 1.63 / 1.65 / 1.73, 1.56 / 1.57 / 1.73; Hadamard-256 2.09 / 2.06 / 2.11, 2.22
#: / 2.15 / 2.20; random Hadamard-128 1.95 / 1.90 / 1.93, 1.88 / 1.93 / 1.93; NVFP4 + random
#: Hadamard-128 1.81 / 1.83 / 1.80, 1.77 / 1.84 / 1.82. No setting won every row (best of the
#: three: 168 in four rows, uncapped in three, 200 in one; each within 1-4%), and 168 was to be
#: kept only if it beat both: 0, no cap and no spills; the bench keeps timing 168 and 200 beside it.
ROT_MAXNREG = 0

#: Register cap (ptxas ``.maxnreg``) of the QDQ pass where a thread holds a part of 64 elements of
#: a larger rotation block loaded coalesced (``ROT_TILE == 2``, ``ROT_HELD == 6``: MX's default
#: parts, NVFP4's with :data:`ROT_HELD_MAX_NVFP4` at 64); 0: none. NVFP4 + random Hadamard-128 in
#: parts of 64 has one cross-lane butterfly stage each way where parts of 32 have two (sm_90 SASS,
#: ``scripts/triton_sass_stats.py``: 44.6 instructions an element against 50.5), but 148
#: registers against 72; capped at 96, 45.1 with two local-memory accesses (MX's parts of 64 take
#: 96 uncapped). Timed in the bench's options table ("held 64 cap 96").
ROT_MAXNREG_64 = 0

#: MX and NVFP4 recipes with rotation blocks of 64 to :data:`ROT_TILE_MAX`, held whole by one
#: thread, are loaded and stored in the coalesced layout (a warp's 16-byte accesses at consecutive
#: addresses) and moved between it and the whole-blocks-per-thread layout once each way, as
#: loaded (16-bit values for bf16 / fp16) through shared memory (``ROT_TILE == 2``, :func:`_load_rotated`,
#: :func:`_block_anchor`; NVFP4's amax pass loads the same way). Off (and for the other recipes):
#: loaded and stored in that layout, where a warp's 16-byte access touches 32 memory lines from
#: Hadamard-64 up (each thread its own line; 16 at Hadamard-32, 8 at 16), the layout timed in
#: ``results/h200-2026-12-04c`` and ``-05`` (MXFP4 + Hadamard-32 / -64 / -128: 1.22x / 1.94x /
#: 2.38x plain MXFP4 at 64M elements; NVFP4 + random Hadamard-128 3.54x). Why: on the GPU's L1 a
#: warp's access costs about a cycle per line it touches, 4 when coalesced; counted that way over
#: a 64M-element call, the extra lines come to ~25 us (Hadamard-32) and ~66 us (64 and up)
#: against measured excesses of 16 and 71 / 103 us. SASS for sm_90
#: (``scripts/triton_sass_stats.py``, bf16 4096 x 4096, coalesced against not): no shuffles in
#: the QDQ kernels, 1-15 barriers and 16-32 16-byte shared-memory stores a thread (and as many
#: ``ldmatrix`` loads), 1.5-3.0 more instructions an element (unpacking the transposed 16-bit
#: values; the anchor is OR-ed into 16-bit inputs' bits and compiles away), fewer registers or
#: spills (MXFP4 + Hadamard-64 85 against 96 registers, MXFP8 / MXINT8 + Hadamard-128 168 against
#: ~200, NVFP4 + random Hadamard-128 84 spill accesses against 146; ``results/sass-2026-12-05b``).
#: Hadamard-32 would pay ~6 more instructions an element for the smaller excess, so it keeps the
#: other layout, as do the scaled recipes
#: (per-tensor FP8 + Hadamard-128 spilled: 611 accesses). ``test_triton_compile`` checks the
#: MXFP4 and NVFP4 kernels have no shuffles. Timed on the H200 (``results/h200-2026-12-05c``,
#: the bench's options table, time / the plain format's at 16M / 64M elements, coalesced against
#: this off): MXFP4 + Hadamard-64 1.31 / 1.31 against 1.80 / 1.96, + Hadamard-128 1.77 / 1.82
#: against 2.37 / 2.36, + random Hadamard-128 2.03 / 2.05 against 2.54 / 2.63; MXFP8 +
#: Hadamard-128 1.43 / 1.37 against 2.38 / 2.34; NVFP4 + random Hadamard-128 1.87 / 1.92 against
#: 2.49 / 2.70.
ROT_COALESCE = True

#: MX recipes whose rotation blocks make the orthonormal scale a power of two (Hadamard-16, -64,
#: -256: ``1/4``, ``1/8``, ``1/16``) fold it into the block exponents instead of multiplying every
#: element by it twice (``ROT_FOLD`` of :func:`_qdq_block_kernel`): the same numbers (tests in
#: ``tests/test_triton_recipes.py`` with this on and off), two multiplies an element fewer, where a
#: thread holds whole groups (blocks up to :data:`ROT_TILE_MAX`; in the tile's layout the
#: exponents' work is per element). SASS sm_90, bf16 4096 x 4096, instructions an element off / on
#: (``results/sass-2026-12-05c``): MXFP4 + Hadamard-16 26.8 / 25.0, + Hadamard-64 coalesced 31.5 /
#: 29.9, + random Hadamard-64 coalesced 36.0 / 34.1, MXFP8 + Hadamard-64 coalesced 26.8 / 24.8,
#: MXINT8 + Hadamard-16 25.8 / 24.0; MXFP4 + random Hadamard-16 31.0 / 32.0 (ptxas keeps the
#: saturation as a compare and select there). Off: the scale multiplied as the reference writes it.
ROT_FOLD = True


def _rot_layout(spec: FormatSpec, rot_block: int) -> int:
    """The ``ROT_TILE`` of a rotated call: 0 (tile layout), 1 (whole blocks, or parts of
    :func:`_held_max`, per thread), 2 (the same, loaded and stored coalesced); see
    :data:`ROT_TILE_MAX`, :data:`ROT_SPLIT`, :data:`ROT_COALESCE`."""
    held = _held_max(spec)
    split = ROT_SPLIT and held < rot_block <= ROT_SPLIT_MAX and ROT_TILE_MAX >= held
    if rot_block <= 1 or (rot_block > ROT_TILE_MAX and not split):
        return 0
    return 2 if ROT_COALESCE and rot_block >= 64 and spec.family in (Family.MX, Family.NVFP4) else 1


def _rot_held(rot_block: int, rot_tile: int, held_max: int) -> int:
    """The kernels' ``ROT_HELD``: ``log2`` of the elements of a rotation block one thread holds in
    the layouts that hold blocks (``rot_tile`` 1 or 2: the block, or a part of ``held_max``,
    :func:`_held_max`); 0 in the tile's own layout."""
    return (min(rot_block, held_max).bit_length() - 1) if rot_tile and rot_block > 1 else 0


def _rot_capped(rot_block: int, rot_tile: int, held_max: int) -> bool:
    """Whether :data:`ROT_MAXNREG` caps the QDQ pass of a rotated call: a thread holds at least 128
    elements of a block (``min(rot_block, held_max)``, :func:`_held_max`) and loads coalesced
    (``rot_tile == 2``, :func:`_rot_layout`)."""
    return rot_tile == 2 and min(rot_block, held_max) >= 128


def _rot_fold(spec: FormatSpec, rot_block: int, rot_tile: int) -> int:
    """The ``ROT_FOLD`` exponent of a rotated call with :data:`ROT_FOLD` on: ``log2`` of the
    orthonormal scale where that is an integer (blocks of ``4**j``) for MX recipes held in whole
    groups a thread (``rot_tile`` 1 or 2, :func:`_rot_layout`); 0 otherwise (in the tile's layout
    each thread's elements lie in as many groups, and the exponents' work an element outweighs the
    two multiplies)."""
    log2 = rot_block.bit_length() - 1
    return -(log2 // 2) if spec.family is Family.MX and rot_tile and log2 > 0 and log2 % 2 == 0 else 0


def _one_tile(spec: FormatSpec, n_rows: int, k: int, rot_block: int) -> bool:
    """The call is one tile of at most :data:`ONE_TILE_MAX` elements."""
    group = spec.block_size if spec.granularity is Granularity.BLOCK else 128
    return _pow2_at_least(n_rows) * max(_pow2_at_least(k), group, rot_block) <= ONE_TILE_MAX


#: The compute capability (``major * 10 + minor``) :func:`_pdl_capable` assumes for tensors on no
#: CUDA device: 0 (no PDL), except in ``scripts/check_triton_compile.py``, which compiles CPU
#: tensors' launches for its ``--arch`` and sets it to that.
NO_DEVICE_CC = 0
_PDL_OK: dict = {}


def _pdl_capable(x: torch.Tensor) -> bool:
    """Whether ``x``'s device runs programmatic dependent launches (compute capability 9.0 and up:
    ``griddepcontrol``; cached per device)."""
    if x.device.type != "cuda":
        return NO_DEVICE_CC >= 90
    ok = _PDL_OK.get(x.device)
    if ok is None:
        ok = _PDL_OK[x.device] = torch.cuda.get_device_capability(x.device)[0] >= 9
    return ok


_SMS: dict = {}


def _sm_count(device: torch.device) -> int:
    """The device's streaming multiprocessors (cached; 2 under the interpreter, so that its
    programs loop over several tiles there too)."""
    n = _SMS.get(device)
    if n is None:
        n = _SMS[device] = (torch.cuda.get_device_properties(device).multi_processor_count
                            if device.type == "cuda" else 2)
    return n


def _partials(n_programs: int) -> tuple[int, int]:
    """``(n_part, N_PARTIALS)`` for an amax pass of ``n_programs`` programs: ``N_PARTIALS`` the
    power of two (at least 16, a few compiled variants) that holds them, or ``(0, 0)`` above
    :data:`PARTIALS_MAX` (atomics)."""
    if n_programs > PARTIALS_MAX:
        return 0, 0
    return n_programs, _pairs_held(n_programs)


def _pairs_held(n: int) -> int:
    """The ``N_PARTIALS`` (a power of two, at least 16: a few compiled variants) that holds ``n``
    pairs."""
    return max(16, _pow2_at_least(n))


#: The eager fast path (:class:`_FastCall`), on by default (issue 16; measured on an H200,
#: ``results/h200-2026-12-03``: 13-17 us a one-pass call instead of 28-41 us, bit for bit with
#: the reference in ``tests/gpu/test_triton_qdq_gpu.py::test_eager_replay``). The second and later
#: calls of a recipe (format, rule, rotation, rounding, seed) on the same tensor layout skip
#: Triton's per-call argument binding and replay the compiled kernels with the arguments
#: ``JITFunction.run`` would pass; the numbers are the same kernels'. Where the compiled launcher is
#: the one verified (:data:`_DIRECT_TRITON`: Triton 3.6's ``CudaLauncher``, no scratch memory) and
#: no launch hook is installed, the replay calls the generated C launcher itself with the tensors'
#: addresses as integers (no ``data_ptr()`` call and no ``cuPointerGetAttribute`` per pointer in
#: the launcher, no launch-metadata dict); otherwise through ``CompiledKernel[grid]``.
#: ``triton_qdq.FAST_LAUNCH = False`` binds through Triton on every call
#: (``scripts/bench_qdq_triton.py`` times both).
FAST_LAUNCH = True
#: Triton versions whose generated launcher's argument layout the direct replay was checked
#: against (grid x3, stream, function, cooperative flag, PDL flag, two scratch objects, kernel
#: metadata, launch metadata, enter hook, exit hook, the kernel's arguments).
_DIRECT_TRITON = ("3.6.",)
#: That layout as the generated launcher parses it (``PyArg_ParseTuple`` format of the leading
#: arguments, Triton 3.6's ``triton.backends.nvidia.driver._BASE_ARGS_FORMAT``):
#: ``tests/test_triton_compile.py`` checks it against the GPU image's Triton.
_DIRECT_LAYOUT = "iiiKKppOOOOOO"
#: Alignment classes of a pointer the eager fast path keys on: ``data_ptr() & _ALIGN`` (Triton
#: specializes a pointer on 16-byte divisibility; 128 is a finer partition, so a replayed launch
#: never meets a pointer of another specialization).
_ALIGN = 127
#: An eager replay of a two-pass call whose scratch buffer holds partial pairs (every word written
#: by the amax pass, or by each program of a :data:`GRID_SYNC` launch, before the QDQ pass or the
#: program reads it: no zeroing) takes a buffer kept per device and stream (:data:`_SCRATCH`, at
#: least ``2 * PARTIALS_MAX`` words) instead of allocating one per call. Safe because one stream's
#: launches run in order: the next call's amax pass (never a programmatic dependent launch) starts
#: after the previous call's QDQ pass has read the pairs. Calls made while the stream captures a
#: CUDA graph allocate as before (a graph may be replayed on another stream than it was captured
#: on); a stream handle reused by a new stream while the old one still runs work that holds the
#: buffer is not supported (as for the grid barrier's words). The same bits either way. Why: issue
#: 16's eager target for the two-pass recipes (an allocation is ~1-2 us of host time per call).
EAGER_SCRATCH = True
_SCRATCH: dict[tuple[int, int], torch.Tensor] = {}


def _call_state(device: torch.device, index: int, capture: bool) -> tuple[int, bool]:
    """``(stream, capturing)`` for an eager replay of a call whose tensor lives on ``device`` and
    whose launches go to the current stream of CUDA device ``index`` (the current device, as Triton
    launches): that stream's raw handle, and (asked only with ``capture``: 0.37 us on an H100 host,
    against 0.11 for the stream) whether it is capturing a CUDA graph, else False; ``(0, False)``
    off CUDA (the interpreter, whose launches run in order). Asked once a call: the replay's
    launch stream, the grid barrier's stream check (:data:`GRID_SYNC`) and :data:`EAGER_SCRATCH`'s
    kept buffer all read it (until 07f up to three stream and two capture queries a barrier call)."""
    if device.type != "cuda":
        return 0, False
    return (torch._C._cuda_getCurrentRawStream(index),
            capture and torch._C._cuda_isCurrentStreamCapturing())


#: Most entries kept by :data:`_FAST` (cleared whole when full: serving sees few shapes per layer).
_FAST_MAX = 4096
_FAST: dict[tuple, _FastCall] = {}
_FAST_REFUSED: set[tuple] = set()  # keys that could not be recorded: not tried again
_FAST_LOGGED: list[bool] = []  # the refusal is logged once per process
_BARRIER_LOGGED: list[bool] = []  # the first call to take the grid barrier (GRID_SYNC) is logged once per process
_SIGNATURES: dict[object, list[tuple[str, object]]] = {}


def _full_args(fn, args: tuple, kwargs: dict) -> list:
    """Every parameter of jit function ``fn`` in signature order, as ``JITFunction.run`` hands them
    to the launcher: ``args`` positionally, then ``kwargs`` (launch options such as ``num_warps``
    are not parameters and are left out), then defaults."""
    import inspect

    sig = _SIGNATURES.get(fn)
    if sig is None:
        sig = _SIGNATURES[fn] = [(n, p.default) for n, p in inspect.signature(fn.fn).parameters.items()]
    out = list(args)
    for name, default in sig[len(args):]:
        if name in kwargs:
            out.append(kwargs[name])
        elif default is inspect.Parameter.empty:
            raise TypeError(f"{fn.__name__}: no value for parameter {name!r}")
        else:
            out.append(default)
    return out


def _direct_launcher(compiled) -> tuple | None:
    """``(C launch function, the arguments between the stream and the kernel's)`` of a compiled
    kernel whose launcher the direct replay knows (:data:`_DIRECT_TRITON`), or None."""
    if triton is None or not triton.__version__.startswith(_DIRECT_TRITON):
        return None
    try:
        run = compiled.run  # Triton's CudaLauncher (the property loads the module)
        if type(run).__name__ != "CudaLauncher" or run.global_scratch_size or run.profile_scratch_size:
            return None
        return run.launch, (compiled.function, run.launch_cooperative_grid, run.launch_pdl, None, None,
                            compiled.packed_metadata, None, None, None)
    except AttributeError:
        return None


def _replay_entry(compiled, grid) -> tuple:
    """``(runner, 3-d grid, direct launcher or None)`` of a recorded launch: Triton's
    ``CompiledKernel[grid]`` runner, and :func:`_direct_launcher`'s pair where it knows the launcher."""
    grid3 = tuple(grid) + (1,) * (3 - len(grid))
    return compiled[grid3], grid3, _direct_launcher(compiled)


def _make_replay(launches: list) -> object:
    """One generated function ``replay(stream, x_ptr, y_ptr, buf_ptr, gamax_ptr)`` that calls each
    recorded launch's C launcher with its whole argument list written out (the recorded values
    as names bound in the function's globals, the four addresses in their slots): no argument
    list is built per call."""
    env: dict[str, object] = {}
    body = []
    for j, (_, grid3, (launch, head), template, slots) in enumerate(launches):
        env[f"L{j}"] = launch
        names = [repr(int(g)) for g in grid3] + ["stream"]
        for h, v in enumerate(head):
            env[f"H{j}_{h}"] = v
            names.append(f"H{j}_{h}")
        where = dict(slots)
        for i, v in enumerate(template):
            if i in where:
                names.append(("x_ptr", "y_ptr", "buf_ptr", "gamax_ptr")[where[i]])
            else:
                env[f"A{j}_{i}"] = v
                names.append(f"A{j}_{i}")
        body.append(f"    L{j}({', '.join(names)})")
    exec("def replay(stream, x_ptr, y_ptr, buf_ptr, gamax_ptr):\n" + "\n".join(body) + "\n", env)
    return env["replay"]


def _hooks_idle() -> bool:
    """No Triton launch hook installed (a profiler's hook needs the full launch path): each hook
    ``None`` or an empty ``HookChain`` (Triton 3.6); anything else counts as installed."""
    rt = _RUNTIME_KNOBS
    if rt is None:
        return False
    a, b = rt.launch_enter_hook, rt.launch_exit_hook
    return (a is None or not getattr(a, "calls", True)) and (b is None or not getattr(b, "calls", True))


#: Triton's runtime knobs (the launch hooks live there), or None where Triton has none.
_RUNTIME_KNOBS = getattr(getattr(triton, "knobs", None), "runtime", None)


class _FastCall:
    """A recorded eager call, replayed without Triton's per-call binding: the compiled kernels get
    the recorded arguments with ``x``, a fresh ``y``, a given global amax tensor and (two-pass
    recipes with an amax pass or a grid barrier) a scratch buffer (a fresh zeroed one for the
    atomics' slots; for the partial pairs, every word of which the amax pass, or each QDQ program
    of a :data:`GRID_SYNC` launch, writes, the one kept for the stream, :data:`EAGER_SCRATCH`, or a
    fresh one while the stream captures) put in their places; constant tensors of the call
    (a random rotation's signs and inverse multipliers, cached; the grid barrier's words, kept per
    device) are held. The
    module's path switches (:data:`PARTIALS_MAX`, :data:`ONE_TILE_MAX`, :data:`ATOMIC_SLOTS`,
    :data:`ROT_TILE_MAX`, :data:`ROT_COALESCE`, :data:`ROT_SPLIT`, :data:`ROT_SPLIT_MAX`, :data:`ROT_HELD_MAX`,
    :data:`ROT_HELD_MAX_MX`, :data:`ROT_HELD_MAX_NVFP4`, :data:`ROT_HELD_MAX_AMAX`, :data:`ROT_SHFL`, :data:`L2_HINTS`, :data:`Y_STREAM`, :data:`SIGN_BITS`, :data:`SIGN_WORDS`, :data:`ROT_MAXNREG`, :data:`ROT_MAXNREG_64`, :data:`PDL`, :data:`GRID_SYNC`,
    :data:`_DIRECT_TRITON`) are read when a call is recorded: change them before the first call, or clear :data:`_FAST`. Valid for the key it is stored under (recipe,
    dtype, shape, strides, devices, x's alignment class) while the tile table entries it was
    planned with are in force; a ``y`` or buffer of another alignment class than recorded sends
    the call back to the full path."""

    __slots__ = ("amax_tile", "ask_capture", "bar_stream", "buf_align", "buf_n", "buf_zero", "cls", "device", "direct", "held",
                 "launches", "replay", "spec", "tile", "torch_device", "y_align")

    def __init__(self, spec: FormatSpec, x: torch.Tensor, y: torch.Tensor, rec: list,
                 held: tuple[torch.Tensor, ...] = (), gamax: torch.Tensor | None = None,
                 device: int | None = None) -> None:
        self.spec = spec  # held: the key's id(spec) cannot be reused while the entry lives
        self.cls = kernel_class(spec)
        self.tile = TILE_CONFIG.get(self.cls)
        self.amax_tile = TILE_CONFIG.get("amax")
        # the current device when recorded (part of the key): the one whose context and stream
        # Triton launched on, and loaded the kernels for
        self.device = x.get_device() if device is None else device
        self.torch_device = x.device
        self.held = held
        # a grid barrier's launch holds the words of the stream it was recorded on (:data:`GRID_SYNC`):
        # replayed on another stream, the call takes the full path (which finds that stream's words)
        self.bar_stream = _stream_of(x.device) if any(kw.get("SYNC") for _, _, _, kw, _, _ in rec) else None
        self.y_align = y.data_ptr() & _ALIGN
        bufs = {id(b): b for *_, b in rec if b is not None and b is not y and b is not gamax}
        if len(bufs) > 1:
            raise AssertionError("one scratch buffer per call expected")
        buf = next(iter(bufs.values()), None)
        self.buf_align = None if buf is None else buf.data_ptr() & _ALIGN
        self.buf_n = 0 if buf is None else buf.numel()
        self.buf_zero = any(kw.get("N_PARTIALS", 0) == 0 for _, _, _, kw, _, b in rec if b is buf)
        # a replay asks whether its stream captures only where the answer matters: a barrier call, or
        # a pairs buffer that may be the kept one (:func:`_call_state`)
        self.ask_capture = self.bar_stream is not None or (buf is not None and not self.buf_zero)
        self.launches = []
        directs = []
        for fn, grid, args, kwargs, compiled, _ in rec:
            full = _full_args(fn, args, kwargs)
            slots, template = [], []
            for i, a in enumerate(full):
                if not isinstance(a, torch.Tensor):
                    template.append(a)
                    continue
                if a is x or a is y or a is buf or a is gamax:
                    slots.append((i, 0 if a is x else 1 if a is y else 2 if a is buf else 3))
                elif any(a is h for h in held):
                    template.append(a.data_ptr())
                    continue
                else:
                    raise AssertionError(f"{fn.__name__}: a tensor argument that is not x, y, the buffer, "
                                         "the global amax or held")
                template.append(None)
            run, grid3, direct = _replay_entry(compiled, grid)
            directs.append(direct is not None)
            self.launches.append((run, grid3, direct, tuple(template), tuple(slots)))
        self.direct = all(directs)
        self.replay = None  # generated at the first replay: a key met once never pays for it

    def valid(self) -> bool:
        """The tile table entries the launches were planned with are still the ones in force."""
        return TILE_CONFIG.get(self.cls) is self.tile and TILE_CONFIG.get("amax") is self.amax_tile

    def __call__(self, x: torch.Tensor, gamax: torch.Tensor | None = None) -> torch.Tensor | None:
        stream, capturing = _call_state(self.torch_device, self.device, self.ask_capture)
        if self.bar_stream is not None and (stream != self.bar_stream or (capturing and GRID_SYNC is not True)):
            # the barrier's words held are another stream's, or a capture with GRID_SYNC not True
            # ("eager": two launches there): the full path
            return None
        y = torch.empty_like(x)
        y_ptr = y.data_ptr()
        if y_ptr & _ALIGN != self.y_align:
            return None
        buf = None
        buf_ptr = 0
        if self.buf_align is not None:
            if self.buf_zero:
                buf = torch.zeros(self.buf_n, dtype=torch.int32, device=self.torch_device)
            elif EAGER_SCRATCH and not capturing:
                buf = _SCRATCH.get((self.device, stream))
                if buf is None or buf.numel() < self.buf_n:
                    buf = _SCRATCH[(self.device, stream)] = torch.empty(
                        max(self.buf_n, 2 * PARTIALS_MAX), dtype=torch.int32, device=self.torch_device)
            else:
                buf = torch.empty(self.buf_n, dtype=torch.int32, device=self.torch_device)
            buf_ptr = buf.data_ptr()
            if buf_ptr & _ALIGN != self.buf_align:
                return None
        if self.direct and _hooks_idle():
            if self.replay is None:
                self.replay = _make_replay(self.launches)
            self.replay(stream, x.data_ptr(), y_ptr, buf_ptr, 0 if gamax is None else gamax.data_ptr())
        else:
            t = (x, y, buf, gamax)
            for run, _, _, template, slots in self.launches:
                args = list(template)
                for i, s in slots:
                    args[i] = t[s]
                run(*args)
        return y


def _fast_key(x: torch.Tensor, spec: FormatSpec, scale_rule: str, axis: int, rotate: Rotation | None = None,
              rounding: str = "nearest", seed: int | None = None, global_amax=None) -> tuple | None:
    """The :data:`_FAST` key of an eager call, or None when the call cannot be replayed (not a
    plain CUDA tensor, under the interpreter, no Triton, an argument of a type the key cannot
    hold: the full path then checks it and names it). A given global amax: a float by value, a
    tensor (one fp32 element on x's device, passed by address) by its alignment class."""
    if type(x) is not torch.Tensor or not x.is_cuda or triton is None or type(scale_rule) is not str:
        return None
    g = None
    if global_amax is not None:
        if type(global_amax) is float:
            g = global_amax
        elif (type(global_amax) is torch.Tensor and global_amax.dtype == torch.float32 and global_amax.numel() == 1
              and global_amax.device == x.device):
            g = ("tensor", global_amax.data_ptr() & _ALIGN)
        else:
            return None
    if rounding == "nearest":
        seed = None
    elif rounding != "stochastic" or not (seed is None or type(seed) is int):
        return None
    elif seed is None:
        seed = DEFAULT_SEED  # the seed the full path draws with
    if rotate is not None and type(rotate) is not Rotation:
        return None
    return (id(spec), scale_rule, axis, rotate, rounding, seed, g, x.dtype, x.shape, x.stride(), x.get_device(),
            torch._C._cuda_getDevice(), x.data_ptr() & _ALIGN)


def qdq(
    x: torch.Tensor,
    spec: FormatSpec,
    scale_rule: str = "floor",
    axis: int = -1,
    global_amax: float | torch.Tensor | None = None,
    rounding: str = "nearest",
    seed: int | None = None,
    rotate: Rotation | None = None,
) -> torch.Tensor:
    """Fused quantize-dequantize of ``x`` (same shape, dtype and strides where x is dense).

    Same numbers as :func:`vllm_qdq.numerics.reference.qdq_reference` (see the module docstring for
    the operation order); with ``rotate``, as :func:`~vllm_qdq.numerics.reference.qdq_rotated_reference`
    (block recipes: the rotation is fused into the QDQ kernel, one read and one write; per-row
    recipes: rotated in torch around the kernel, the same fp32 operations). ``rounding`` /
    ``seed``: stochastic rounding (MX and NVFP4 family). ``x`` must live where Triton runs: a
    CUDA tensor, or a CPU tensor under ``TRITON_INTERPRET=1``.
    """
    key = None
    if FAST_LAUNCH:
        key = _fast_key(x, spec, scale_rule, axis, rotate, rounding, seed, global_amax)
        if key is not None:
            hit = _FAST.get(key)
            if (hit is not None and hit.spec is spec and TILE_CONFIG.get(hit.cls) is hit.tile
                    and TILE_CONFIG.get("amax") is hit.amax_tile):  # hit.valid(), inlined
                y = hit(x, global_amax if isinstance(global_amax, torch.Tensor) else None)
                if y is not None:
                    return y
    axis = _check(x, spec, scale_rule, axis, global_amax, rounding)
    if isinstance(global_amax, torch.Tensor):
        global_amax = _gamax_tensor(global_amax, x.device)
    if x.numel() == 0:
        return x.clone()
    sr_seed = (seed if seed is not None else DEFAULT_SEED) if rounding == "stochastic" else None
    kp = x.shape[axis]
    signs = None
    if rotate is not None:
        kp = check_length(rotate, x.shape[axis])
        if spec.granularity is Granularity.ROW:
            def inner(v, spec_, rule_, axis_, gamax_, rounding_, seed_):
                return qdq(v, spec_, rule_, axis_, gamax_, rounding_, seed_)

            return qdq_rotated_reference(x, spec, rotate, scale_rule, axis, global_amax, rounding, seed, qdq_fn=inner)
        signs = hadamard_signs(rotate, kp, x.device, torch.bfloat16)  # +-1: exact, half fp32's bytes
    ex = _Extras(rotate, signs, kp, sr_seed)
    y = torch.empty_like(x)
    rows = _rows(x, y, axis)
    if rows is None:  # leading dims not expressible with two strides: work on a copy
        xc = x.movedim(axis, -1).contiguous()
        yc = torch.empty_like(xc)
        _launch(xc, yc, _fold_rows(xc, yc, xc.ndim - 1), spec, scale_rule, global_amax, ex)
        return y.copy_(yc.movedim(-1, axis))
    # launches that return no kernel (interpreter): not kept
    rec: list | None = [] if key is not None and key not in _FAST_REFUSED else None
    held = _launch(x, y, rows, spec, scale_rule, global_amax, ex, rec)
    if rec and all(k is not None for *_, k, _b in rec):
        try:
            hit = _FastCall(spec, x, y, rec, held,
                            global_amax if isinstance(global_amax, torch.Tensor) else None, key[-2])
        except AssertionError as e:  # a launch the replay cannot rebuild: this key stays on the full path
            _fast_refused(key, e)
        else:
            old = _FAST.get(key)
            # a capture's two launches (GRID_SYNC "eager") do not replace a recorded barrier call
            if old is None or old.bar_stream is None or hit.bar_stream is not None or not _capturing(x.device):
                if len(_FAST) >= _FAST_MAX:
                    _FAST.clear()
                _FAST[key] = hit
    return y


def _fast_refused(key: tuple, why: Exception) -> None:
    """Log, once per process, that a call could not be recorded for the eager fast path (the call
    itself already ran through Triton and is unaffected)."""
    if not _FAST_LOGGED:
        _FAST_LOGGED.append(True)
        import logging

        logging.getLogger(__name__).warning("vllm_qdq: eager fast path not used for %s: %s", key[1:6], why)
    if len(_FAST_REFUSED) >= _FAST_MAX:
        _FAST_REFUSED.clear()
    _FAST_REFUSED.add(key)
