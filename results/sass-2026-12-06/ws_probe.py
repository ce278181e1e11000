"""Does Triton 3.6's Hopper automatic warp specialization take sage3's attention loop (sm_90)?

A flash-attention forward (Q, K, V through TMA tensor descriptors, BLOCK_M 128, BLOCK_N 64, D 128,
bf16 dots, fp32 accumulation) with its key loop marked ``tl.range(..., warp_specialize=True)`` or
not, compiled for sm_90 at 4 and 8 warps, with one of :data:`MODES` applied to P before the PV dot;
and the same loop with P's blocks of 32 keys as sub-tiles (two QK and two PV dots a step). Prints,
per form: warps after the pass, ``SETMAXNREG`` count (register reallocation between producer and
consumer warpgroups), SASS instructions, or the compile error. Run from the repository root:

    PYTHONPATH=.venv/triton-gpu .venv/bin/python results/sass-2026-12-06/ws_probe.py
"""

import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, "overlay")
from vllm_qdq.sage3.numerics import kernel as K

#: what P gets between its exp2 and the PV dot
MODES = ("nothing", "sage3 _quant_p (mxfp4, 3-D reshape)", "block max by 3-D reshape", "elementwise rounding",
         "1-D exp2, broadcast", "2-D integer bit ops", "1-D integer bit ops, broadcast", "minimum, NaN propagated",
         "2-D select", "1-D select, broadcast", "1-D integer select", "block maxima by masks, a factor selected")


@triton.jit
def _start(desc_q, BLOCK_M: tl.constexpr, D: tl.constexpr):
    """This program's query tile and the online softmax's starting state."""
    pid = tl.program_id(0)
    return (pid, desc_q.load([pid * BLOCK_M, 0]), tl.full([BLOCK_M], float("-inf"), tl.float32),
            tl.zeros([BLOCK_M], tl.float32), tl.zeros([BLOCK_M, D], tl.float32))


@triton.jit
def _finish(o_ptr, pid, acc, l_i, BLOCK_M: tl.constexpr, D: tl.constexpr):
    """The normalized output tile, stored through pointers (a descriptor store failed the pass)."""
    offs = (pid * BLOCK_M + tl.arange(0, BLOCK_M))[:, None] * D + tl.arange(0, D)[None, :]
    tl.store(o_ptr + offs, (acc / l_i[:, None]).to(tl.bfloat16))


@triton.jit
def fa(desc_q, desc_k, desc_v, o_ptr, S, c, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
       WS: tl.constexpr, MODE: tl.constexpr):
    pid, q, m_i, l_i, acc = _start(desc_q, BLOCK_M, D)
    for n0 in tl.range(0, S, BLOCK_N, warp_specialize=WS):
        k = desc_k.load([n0, 0])
        s = tl.dot(q, k.T) * c
        b = tl.max(s, 1)
        m_new = tl.maximum(m_i, b)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        if MODE == 1:
            p = K._quant_p(p, o_ptr, BLOCK_M, BLOCK_N, 32, False, 6.0, 2, 0, 1, 6.0, 0)
        if MODE == 2:
            p3 = tl.reshape(p, (BLOCK_M, BLOCK_N // 32, 32))
            p = tl.reshape(p3 * tl.max(p3, 2)[:, :, None], (BLOCK_M, BLOCK_N))
        if MODE == 3:
            p = (p * 6.0 + 12582912.0) - 12582912.0
        if MODE == 4:
            p = p * tl.exp2(b - m_new)[:, None]
        if MODE == 5:
            p = (p.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
        if MODE == 6:
            e = (tl.exp2(b - m_new).to(tl.int32, bitcast=True) >> 23) - 127
            p = p * ((127 - e) << 23).to(tl.float32, bitcast=True)[:, None]
        if MODE == 7:
            p = tl.minimum(p, 0.75, propagate_nan=tl.PropagateNan.ALL)
        if MODE == 8:
            p = tl.where(p > 0.5, p, 0.0)
        if MODE == 9:
            p = p * tl.where(b > 0, 2.0, 1.0)[:, None]
        if MODE == 10:
            e = b.to(tl.int32, bitcast=True) >> 23
            p = p * tl.where(e >= 1, (e + 127) << 23, 0).to(tl.float32, bitcast=True)[:, None]
        if MODE == 11:
            lo = tl.arange(0, BLOCK_N)[None, :] < 32
            f0 = (254 - (tl.exp2(tl.max(tl.where(lo, s, float("-inf")), 1) - m_new).to(tl.int32, bitcast=True) >> 23)) << 23
            f1 = (254 - (tl.exp2(tl.max(tl.where(lo, float("-inf"), s), 1) - m_new).to(tl.int32, bitcast=True) >> 23)) << 23
            p = (p * tl.where(lo, f0[:, None], f1[:, None]).to(tl.float32, bitcast=True) + 12582912.0) - 12582912.0
        l_i = l_i * alpha + tl.sum(p, 1)
        v = desc_v.load([n0, 0])
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(tl.bfloat16), v, acc)
        m_i = m_new
    _finish(o_ptr, pid, acc, l_i, BLOCK_M, D)


@triton.jit
def _sub(q, desc_k, n0, c):
    s = tl.dot(q, desc_k.load([n0, 0]).T) * c
    return s, tl.max(s, 1)


@triton.jit
def subtiles(desc_q, desc_k, desc_v, o_ptr, S, c, BLOCK_M: tl.constexpr, D: tl.constexpr, BLK: tl.constexpr,
             WS: tl.constexpr, QUANT: tl.constexpr):
    pid, q, m_i, l_i, acc = _start(desc_q, BLOCK_M, D)
    for n0 in tl.range(0, S, 2 * BLK, warp_specialize=WS):
        s0, b0 = _sub(q, desc_k, n0, c)
        s1, b1 = _sub(q, desc_k, n0 + BLK, c)
        m_new = tl.maximum(m_i, tl.maximum(b0, b1))
        alpha = tl.exp2(m_i - m_new)
        p0 = tl.exp2(s0 - m_new[:, None])
        p1 = tl.exp2(s1 - m_new[:, None])
        if QUANT:  # each sub-tile one MX block of P (mxfp4), its maximum from the logits'
            p0 = K._mx_qdq_nonneg_amax(p0 * 6.0, tl.exp2(b0 - m_new) * 6.0, 1, 2, 0, 1, 6.0, 0)
            p1 = K._mx_qdq_nonneg_amax(p1 * 6.0, tl.exp2(b1 - m_new) * 6.0, 1, 2, 0, 1, 6.0, 0)
        l_i = l_i * alpha + tl.sum(p0, 1) + tl.sum(p1, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p0.to(tl.bfloat16), desc_v.load([n0, 0]), acc)
        acc = tl.dot(p1.to(tl.bfloat16), desc_v.load([n0 + BLK, 0]), acc)
        m_i = m_new
    _finish(o_ptr, pid, acc, l_i, BLOCK_M, D)


def stats(fn, kv_rows: int, constexprs: dict, num_warps: int) -> str:
    """Compile ``fn`` for sm_90 and describe the result (or the compile error's last line)."""
    sig = {"desc_q": "tensordesc<bf16[128,128]>", "desc_k": f"tensordesc<bf16[{kv_rows},128]>",
           "desc_v": f"tensordesc<bf16[{kv_rows},128]>", "o_ptr": "*bf16", "S": "i32", "c": "fp32",
           **{name: "constexpr" for name in constexprs}}
    try:
        k = triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": num_warps, "num_stages": 2, "enable_fp_fusion": False})
    except Exception as e:  # the pass's failure, reported
        return "compile failed: " + (str(e).strip().splitlines() or [type(e).__name__])[-1][:120]
    path = os.path.join(tempfile.mkdtemp(), "k.cubin")
    with open(path, "wb") as f:
        f.write(k.asm["cubin"])
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    sass = subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True).stdout
    return (f"warps {k.metadata.num_warps}, SETMAXNREG {len(re.findall(r'SETMAXNREG|USETMAXREG', sass))}, "
            f"SASS instructions {len(re.findall(r'/[*][0-9a-f]{4,}[*]/', sass))}")


def main() -> None:
    for mode, what in enumerate(MODES):
        for warps in (4, 8):
            for ws in (False, True):
                consts = {"BLOCK_M": 128, "BLOCK_N": 64, "D": 128, "WS": ws, "MODE": mode}
                print(f"{what} | {warps} warps | warp_specialize {ws}: {stats(fa, 64, consts, warps)}", flush=True)
    for quant in (False, True):
        for warps in (4, 8):
            for ws in (False, True):
                consts = {"BLOCK_M": 128, "D": 128, "BLK": 32, "WS": ws, "QUANT": quant}
                print(f"sub-tiles of 32 keys{', P quantized' if quant else ''} | {warps} warps | warp_specialize {ws}: "
                      f"{stats(subtiles, 32, consts, warps)}", flush=True)


if __name__ == "__main__":
    main()
