"""Does Triton 3.6's Hopper automatic warp specialization take a sage3-like loop when P's blocks
are sub-tiles of the key tile (2D reductions only, no 3D reshape)?"""
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


@triton.jit
def _sub(q, desc_k, desc_v, n0, c, m_i, BLK: tl.constexpr):
    k = desc_k.load([n0, 0])
    s = tl.dot(q, k.T) * c
    return s, tl.max(s, 1)

@triton.jit
def fa(desc_q, desc_k, desc_v, o_ptr, S, c, BLOCK_M: tl.constexpr, D: tl.constexpr, BLK: tl.constexpr, WS: tl.constexpr):
    pid = tl.program_id(0)
    q = desc_q.load([pid * BLOCK_M, 0])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for n0 in tl.range(0, S, 2 * BLK, warp_specialize=WS):
        s0, b0 = _sub(q, desc_k, desc_v, n0, c, m_i, BLK)
        s1, b1 = _sub(q, desc_k, desc_v, n0 + BLK, c, m_i, BLK)
        m_new = tl.maximum(m_i, tl.maximum(b0, b1))
        alpha = tl.exp2(m_i - m_new)
        p0 = K._mx_qdq_nonneg_amax(tl.exp2(s0 - m_new[:, None]) * 6.0, tl.exp2(b0 - m_new) * 6.0, 1, 2, 0, 1, 6.0, 0)
        p1 = K._mx_qdq_nonneg_amax(tl.exp2(s1 - m_new[:, None]) * 6.0, tl.exp2(b1 - m_new) * 6.0, 1, 2, 0, 1, 6.0, 0)
        l_i = l_i * alpha + tl.sum(p0, 1) + tl.sum(p1, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p0.to(tl.bfloat16), desc_v.load([n0, 0]), acc)
        acc = tl.dot(p1.to(tl.bfloat16), desc_v.load([n0 + BLK, 0]), acc)
        m_i = m_new
    offs = (pid * BLOCK_M + tl.arange(0, BLOCK_M))[:, None] * D + tl.arange(0, D)[None, :]
    tl.store(o_ptr + offs, (acc / l_i[:, None]).to(tl.bfloat16))

nw = int(os.environ.get("NW", "4"))
for ws in (False, True):
    sig = {"desc_q": "tensordesc<bf16[128,128]>", "desc_k": "tensordesc<bf16[32,128]>", "desc_v": "tensordesc<bf16[32,128]>",
           "o_ptr": "*bf16", "S": "i32", "c": "fp32", "BLOCK_M": "constexpr", "D": "constexpr", "BLK": "constexpr", "WS": "constexpr"}
    src = ASTSource(fa, sig, constexprs={"BLOCK_M": 128, "D": 128, "BLK": 32, "WS": ws})
    try:
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": nw, "num_stages": 2, "enable_fp_fusion": False})
    except Exception as e:
        print(f"num_warps {nw} warp_specialize {ws}: compile failed ({str(e).splitlines()[-1][:200]})")
        continue
    d = tempfile.mkdtemp()
    f = os.path.join(d, "k.cubin")
    open(f, "wb").write(k.asm["cubin"])
    nvdis = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    sass = subprocess.run([nvdis, "-c", f], capture_output=True, text=True).stdout
    print(f"num_warps {nw} warp_specialize {ws}: warps {k.metadata.num_warps}, SETMAXNREG "
          f"{len(re.findall(r'SETMAXNREG|USETMAXREG', sass))}, SASS instructions {len(re.findall(r'/[*][0-9a-f]{4,}[*]/', sass))}, "
          f"HGMMA {len(re.findall(r'HGMMA', sass))}, registers {k.n_regs if hasattr(k, 'n_regs') else '-'}")
