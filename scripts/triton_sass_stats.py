#!/usr/bin/env python3
"""SASS figures of the Triton QDQ kernels for a GPU target, without a GPU.

Compiles the launches of one QDQ call per recipe (as ``scripts/check_triton_compile.py`` does:
specialized like Triton's JIT, for ``--arch``, default sm_90) and counts, in the cubin's SASS
(``nvdisasm`` from Triton's wheel), what decides a streaming kernel's speed before a GPU is at
hand: instructions per element a thread handles, lane shuffles, barriers and shared-memory
accesses (``LDS``, ``STS``, ``LDSM``, ``STSM``: data moved between threads), registers, local-memory spills. Rotations are listed in
each kernel layout (``ROT_TILE_MAX``: rotation blocks held whole by one thread, loaded and stored
coalesced where the recipe takes it (``coalesced``, ``ROT_COALESCE``) and in that layout
(``in-thread``), or the tile's own layout (``tile``)). Static counts, not timings: a kernel whose instructions per element stay below
the GPU's issue budget at memory bandwidth (H200: about 36 a thread per bf16 element, from
132 SMs x 4 schedulers x 1.98 GHz against 2 bytes read + 2 written at ~3.9 TB/s) can run at
bandwidth; one above it cannot. ``scripts/bench_qdq_triton.py`` measures on the GPU.

    PYTHONPATH=.venv/triton-gpu:overlay python scripts/triton_sass_stats.py [--recipes mxfp4+h16,...]

A recipe is ``format[+h<block>[r]][+sr][+46]``: ``h<block>`` a Hadamard rotation (``r``: random
signs), ``sr`` stochastic rounding, ``46`` the four-over-six scale rule.

``--sage3 mxfp4,nvfp4,...``: the sage3 attention kernel instead (D=128, BLOCK_M 128, 8 warps, fp32
accumulation, as the bench runs it): the SASS of its loop over key blocks, per P element a thread
handles in one iteration (128 x 64 / 256): the softmax and P's quantization are ALU work issued
beside the tensor cores' (HGMMA) and set the pace when they take longer than the MMAs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

DEFAULT_RECIPES = ("mxfp4,mxfp4+h16,mxfp4+h16r,mxfp4+h32,mxfp4+h64,mxfp4+h128,mxfp4+h128r,mxfp4+h256,"
                   "nvfp4,nvfp4+h16,nvfp4+h64,nvfp4+h128r,mxfp4+sr,nvfp4+46,fp8_e4m3_per_tensor+h128")
_LINE = r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?"  # an instruction line up to its opcode (after a predicate)
_INSTR = re.compile(_LINE + r"([A-Z0-9_]+)")
#: instructions of the float64 pipe (a fraction of fp32's rate on an H200: what bounds the float64
#: recipes), conversions to or from float64 included
_FP64 = re.compile(_LINE + r"(D(?:FMA|MUL|ADD|SETP|MNMX)\b|[FI]2[FI]\S*F64)")


def parse_recipe(text: str) -> tuple[str, str, int | None, int | None, bool]:
    """``(format, scale rule, rotation block or None, sign seed or None, stochastic)``."""
    fmt, *opts = text.split("+")
    rule, block, seed, stoch = "floor", None, None, False
    for o in opts:
        if m := re.fullmatch(r"h(\d+)(r?)", o):
            block, seed = int(m.group(1)), (1 if m.group(2) else None)
        elif o == "sr":
            stoch = True
        elif o == "46":
            rule = "four_over_six"
        else:
            raise SystemExit(f"recipe {text!r}: option {o!r}; accepted: h<block>[r], sr, 46")
    return fmt, rule, block, seed, stoch


def disassemble(kernel, tool_dir: Path) -> tuple[str, int]:
    """``(SASS text, registers a thread)`` of a compiled Triton kernel (the wheel's ``nvdisasm``
    and ``cuobjdump``; -1 registers when the resource line is missing)."""
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        Path(cubin).write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([str(tool_dir / "nvdisasm"), "-c", cubin], capture_output=True, text=True,
                              check=True).stdout
        res = subprocess.run([str(tool_dir / "cuobjdump"), "-res-usage", cubin], capture_output=True, text=True,
                             check=True).stdout
    regs = re.search(r"REG:(\d+)", res)
    return sass, int(regs.group(1)) if regs else -1


def redo_count(sass: str) -> int:
    """Instructions of the blocks a tile enters only when it holds a NaN or an Inf: those a
    forward branch ``@!P BRA`` skips, where ``P`` was set within the four lines before it by an
    compare ``ISETP.GE`` (signed or unsigned) of a pattern with +Inf's (``0x7f800000``), as
    ``triton_qdq._tile_amax_bits`` branches to reduce the finite maximum again (the form ptxas
    gives it on sm_90). Static counts include them; a tile of finite values never runs them. A
    heuristic for that one branch: other code with the same shape would be left out too."""
    lines = sass.splitlines()
    n = 0
    for i, line in enumerate(lines):
        m = re.search(r"@!(U?P\d) BRA `\((\.L_x_\d+)\)", line)  # skipped unless the predicate holds
        if not m or not any(re.search(rf"ISETP\.GE(?:\.U32)?\.AND {m.group(1)}, U?PT, R\d+, 0x7f800000,", lines[j])
                            for j in range(max(0, i - 4), i)):  # the predicate: "some |x| pattern >= +Inf's"
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == m.group(2) + ":"), i)
        n += sum(1 for j in range(i + 1, end) if _INSTR.match(lines[j]))
    return n


def sass_counts(sass: str, regs: int) -> dict[str, int]:
    """Counts of a kernel's SASS (and its registers); ``instr`` leaves out :func:`redo_count`'s
    blocks (``redo``)."""
    ops = Counter(m.group(1) for line in sass.splitlines() if (m := _INSTR.match(line)))
    redo = redo_count(sass)
    return {"instr": sum(ops.values()) - redo, "redo": redo, "shfl": ops["SHFL"], "bar": ops["BAR"],
            "smem": ops["LDS"] + ops["STS"] + ops["LDSM"] + ops["STSM"],
            "local": ops["LDL"] + ops["STL"], "regs": regs,
            "fp64": sum(1 for line in sass.splitlines() if _FP64.match(line))}


def loops(sass: str) -> list[Counter]:
    """Opcode counts of each loop in ``sass`` (instructions between a backward branch and its
    target), in code order."""
    addr_of, instrs, pending = {}, [], []
    for line in sass.splitlines():
        if m := re.match(r"^\.L_x_(\d+):", line.strip()):
            pending.append(m.group(1))
        elif m := re.match(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line):
            addr = int(m.group(1), 16)
            for label in pending:
                addr_of[label] = addr
            pending = []
            instrs.append((addr, m.group(2)))
    found = []
    for addr, text in instrs:
        if (m := re.search(r"\bBRA\b.*\.L_x_(\d+)", text)) and addr_of.get(m.group(1), addr) < addr:
            body = [t for a, t in instrs if addr_of[m.group(1)] <= a <= addr]
            found.append(Counter(t.split()[1] if t.startswith("@") else t.split()[0] for t in body))
    # a loop's body can hold inner backward branches (slow paths): keep the outermost loops
    return [c for c in found if sum(c.values()) > 200]


def dump_sass(folder: str, name: str, sass: str) -> None:
    """Write ``sass`` to ``folder/name`` (``--dump``; nothing when ``folder`` is empty)."""
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name.replace("/", "_")).write_text(sass)


def sage3_stats(formats: list[str], target, tool_dir: Path, dump: str = "") -> None:
    """Print the loop figures of the sage3 forward kernel per format (``dump``: a folder for each
    kernel's SASS, ``sage3.<format>.sass``)."""
    import check_triton_compile as ctc
    import torch
    from vllm_qdq.sage3.numerics import kernel as sk

    ctc.capture(sk, ctc.SAGE3_KERNELS, target)
    ctc.RECORD = True
    print("sage3 forward kernel, D=128, BLOCK_M 128 x BLOCK_N 64, 8 warps, fp32 accumulation: the loop over key "
          "blocks, SASS instructions per P element a thread handles (32) in one iteration")
    print(f"{'format':18s} {'loop instr':>10s} {'per P el':>8s} {'HGMMA':>5s} {'MUFU':>5s} {'shfl':>5s} "
          f"{'FMUL/FFMA/FADD':>15s} {'int ops':>7s} {'regs':>4s}")
    for fmt in formats:
        ctc._seen.clear()
        ctc.COMPILED.clear()
        q = torch.zeros(1, 256, 4, 128, dtype=torch.bfloat16)
        sk.sage3_attention(q, q, q, quant_format=fmt, acc_dtype="fp32", block_m=128)
        kernel = next(k for n, _, _, k in ctc.COMPILED if n == "_sage3_fwd_kernel")
        sass, regs = disassemble(kernel, tool_dir)
        dump_sass(dump, f"sage3.{fmt}.sass", sass)
        for i, ops in enumerate(loops(sass)):  # the unmasked tiles' loop first, then the masked tiles'
            n = sum(ops.values())
            per = 128 * 64 / 256
            fp = sum(v for k, v in ops.items() if k.split(".")[0] in ("FMUL", "FFMA", "FADD"))
            ints = sum(v for k, v in ops.items() if k.split(".")[0] in ("LOP3", "SHF", "SGXT", "IADD3", "IMAD",
                                                                          "VIADD", "LEA", "PRMT", "ISETP"))
            print(f"{fmt + ('' if i == 0 else ' (loop ' + str(i + 1) + ')'):18s} {n:10d} {n / per:8.1f} "
                  f"{sum(v for k, v in ops.items() if 'GMMA' in k):5d} "
                  f"{sum(v for k, v in ops.items() if k.startswith('MUFU')):5d} "
                  f"{ops['SHFL.BFLY'] + ops['SHFL.IDX']:5d} {fp:15d} {ints:7d} {regs:4d}", flush=True)


def _never(amax):
    """Stands for ``triton_qdq._narrow_fallback`` under ``--hot`` (made a Triton function there)."""
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--recipes", default=DEFAULT_RECIPES, help=f"comma-separated (default: {DEFAULT_RECIPES})")
    ap.add_argument("--shape", default="4096x4096", help="rows x K of the call (default 4096x4096)")
    ap.add_argument("--held-max", type=int, default=0, help="triton_qdq.ROT_HELD_MAX, _MX, _NVFP4 and _AMAX for the "
                    "run (elements of a rotation block a thread holds, larger blocks split over threads; the amax "
                    "pass's part too; default: the module's, per family)")
    ap.add_argument("--dump", default="", help="a folder: write each compiled kernel's SASS and TTGIR there "
                    "(<recipe>.<layout>.<kernel>.sass, .ttgir: the layouts Triton chose)")
    ap.add_argument("--sage3", default="", help="sage3 formats (e.g. mxfp4,nvfp4,mxfp8_s1,mxfp4_s1): the "
                    "attention kernel's loop instead of the QDQ recipes")
    ap.add_argument("--fuse-q", action="store_true", help="with --sage3: Q quantized in the attention kernel "
                    "(vllm_qdq.sage3.numerics.kernel.FUSE_Q on; default: the module's value, off)")
    ap.add_argument("--p-max-reduced", action="store_true", help="with --sage3: each P block's maximum reduced "
                    "from P (vllm_qdq.sage3.numerics.kernel.P_MAX_EXP2 off; default: the module's value, on)")
    ap.add_argument("--p-scales-single", action="store_true", help="with --sage3: NVFP4's P block scales by the "
                    "quotient read alone and the scale converted back (vllm_qdq.sage3.numerics.kernel.P_SCALE_PAIRS "
                    "off; default: the module's value, on)")
    ap.add_argument("--hot", action="store_true", help="the float64 recipes' fp32 path alone: the float64 redo of "
                    "tiles outside its range compiled out (static instructions count the cold path too)")
    args = ap.parse_args()
    if (args.fuse_q or args.p_max_reduced or args.p_scales_single) and not args.sage3:
        ap.error("--fuse-q, --p-max-reduced and --p-scales-single apply to the sage3 kernel only; accepted with "
                 "--sage3 FORMATS")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.sage3:
        import triton
        from triton.backends.compiler import GPUTarget
        from vllm_qdq.sage3.numerics import kernel as sk

        if args.fuse_q:
            sk.FUSE_Q = True
        if args.p_max_reduced:
            sk.P_MAX_EXP2 = False
        if args.p_scales_single:
            sk.P_SCALE_PAIRS = False
        sage3_stats(args.sage3.split(","), GPUTarget("cuda", args.arch, 32),
                    Path(triton.__file__).parent / "backends" / "nvidia" / "bin", args.dump)
        return 0
    import check_triton_compile as ctc
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import get_format
    from vllm_qdq.numerics.rotation import Rotation, hadamard_signs

    tool_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    target = GPUTarget("cuda", args.arch, 32)
    if args.hot:  # no tile is ever out of range: Triton drops the redo branch
        triton_qdq._narrow_fallback = triton.jit(_never)
    ctc.capture(triton_qdq, ("_qdq_block_kernel", "_qdq_row_kernel", "_amax_kernel"), target)
    ctc.RECORD = True
    try:
        rows, k = (int(v) for v in args.shape.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shape {args.shape!r}: expected ROWSxK, e.g. 4096x4096") from None
    tiles = triton_qdq.tile_configs().get(f"sm_{args.arch}")  # the table the GPU would use
    if tiles:
        triton_qdq.TILE_CONFIG.update(tiles)
    print(f"triton {triton.__version__}, sm_{args.arch}, bf16 {rows}x{k}; per kernel: elements a thread handles, "
          "SASS instructions per element (leaving out the blocks only a tile with NaN or Inf enters: its finite maximum "
          "reduced again; 'redo/el'), shuffles, barriers, shared-memory accesses, local (spill) accesses, registers, "
          "float64-pipe instructions (arithmetic, compares, conversions) per element")
    print(f"{'recipe':24s} {'layout':12s} {'kernel':18s} {'tile':>6s} {'warps':>5s} {'el/thr':>6s} {'instr/el':>8s} "
          f"{'redo/el':>7s} {'shfl':>5s} {'bar':>4s} {'smem':>5s} {'local':>5s} {'regs':>4s} {'f64/el':>6s}")
    default_max, default_coalesce = triton_qdq.ROT_TILE_MAX, triton_qdq.ROT_COALESCE
    if args.held_max:
        for n in triton_qdq.HELD_SWITCHES:
            setattr(triton_qdq, n, args.held_max)
    for recipe in args.recipes.split(","):
        fmt, rule, block, seed, stoch = parse_recipe(recipe.strip())
        spec = get_format(fmt)
        x = torch.empty(rows, k, dtype=torch.bfloat16)
        rot = Rotation(block=block, seed=seed) if block else None
        layouts = [("-", default_max, default_coalesce)]
        if block:  # whole blocks in a thread, loaded coalesced where the recipe takes it; uncoalesced; tile
            layouts = [("in-thread", default_max, False), ("tile", 0, False)]
            triton_qdq.ROT_TILE_MAX, triton_qdq.ROT_COALESCE = default_max, True
            if triton_qdq._rot_layout(spec, block) == 2:
                layouts.insert(0, ("coalesced", default_max, True))
        for layout, rtm, coalesce in layouts:
            triton_qdq.ROT_TILE_MAX, triton_qdq.ROT_COALESCE = rtm, coalesce
            ctc._seen.clear()
            ctc.COMPILED.clear()
            ex = triton_qdq._Extras(rot, hadamard_signs(rot, k, "cpu", torch.bfloat16) if rot else None, k,
                                    1 if stoch else None)
            triton_qdq._launch(x, torch.empty_like(x), triton_qdq._fold_rows(x, x, 1), spec, rule, None, ex)
            for name, cx, opts, kernel in ctc.COMPILED:
                sass, regs = disassemble(kernel, tool_dir)
                dump_sass(args.dump, f"{recipe}.{layout}.{name}.sass", sass)
                dump_sass(args.dump, f"{recipe}.{layout}.{name}.ttgir", kernel.asm.get("ttgir", ""))
                c = sass_counts(sass, regs)
                tile = cx["BLOCK_R"] * (cx["N_GROUPS"] * cx["GROUP"] if "GROUP" in cx else cx["BLOCK_K"])
                tile *= cx.get("TPP", 1)  # the amax pass: tiles a program (AMAX_TILES_PER_PROGRAM)
                per_thread = tile / (32 * opts["num_warps"])
                print(f"{recipe:24s} {layout:12s} {name:18s} {tile:6d} {opts['num_warps']:5d} {per_thread:6.0f} "
                      f"{c['instr'] / per_thread:8.1f} {c['redo'] / per_thread:7.1f} {c['shfl']:5d} {c['bar']:4d} {c['smem']:5d} {c['local']:5d} "
                      f"{c['regs']:4d} {c['fp64'] / per_thread:6.1f}", flush=True)
    triton_qdq.ROT_TILE_MAX, triton_qdq.ROT_COALESCE = default_max, default_coalesce
    return 0


if __name__ == "__main__":
    sys.exit(main())
