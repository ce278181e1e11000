"""Does Triton 3.6's Hopper automatic warp specialization split a flash-attention loop (sm_90)?
QP: what P gets before the PV dot (0 nothing, 1 sage3's _quant_p, 2 a 3-D block max, 3 an
elementwise rounding); NW: num_warps. See README.md here."""
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl

sys.path.insert(0, 'overlay')  # run from the repository root
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from vllm_qdq.sage3.numerics import kernel as K


@triton.jit
def fa(desc_q, desc_k, desc_v, o_ptr, S, c, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, WS: tl.constexpr, QP: tl.constexpr):
    pid = tl.program_id(0)
    q = desc_q.load([pid * BLOCK_M, 0])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for n0 in tl.range(0, S, BLOCK_N, warp_specialize=WS):
        k = desc_k.load([n0, 0])
        s = tl.dot(q, k.T) * c
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        if QP == 1:
            p = K._quant_p(p, o_ptr, BLOCK_M, BLOCK_N, 32, False, 6.0, 2, 0, 1, 6.0, 0)
        if QP == 2:
            p3 = tl.reshape(p, (BLOCK_M, BLOCK_N // 32, 32))
            p = tl.reshape(p3 * tl.max(p3, 2)[:, :, None], (BLOCK_M, BLOCK_N))
        if QP == 3:
            p = (p * 6.0 + 12582912.0) - 12582912.0
        l_i = l_i * alpha + tl.sum(p, 1)
        v = desc_v.load([n0, 0])
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(tl.bfloat16), v, acc)
        m_i = m_new
    offs = (pid * BLOCK_M + tl.arange(0, BLOCK_M))[:, None] * D + tl.arange(0, D)[None, :]
    tl.store(o_ptr + offs, (acc / l_i[:, None]).to(tl.bfloat16))

QPV = int(os.environ.get('QP', '0'))
for ws in (False, True):
    sig = {"desc_q": "tensordesc<bf16[128,128]>", "desc_k": "tensordesc<bf16[64,128]>", "desc_v": "tensordesc<bf16[64,128]>",
           "o_ptr": "*bf16", "S": "i32", "c": "fp32", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "D": "constexpr", "WS": "constexpr", "QP": "constexpr"}
    src = ASTSource(fa, sig, constexprs={"BLOCK_M": 128, "BLOCK_N": 64, "D": 128, "WS": ws, "QP": QPV})
    try:
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": int(os.environ.get("NW", "4")), "num_stages": 2, "enable_fp_fusion": False})
    except Exception as e:
        print("ws", ws, "compile failed:", str(e).splitlines()[-1][:300])
        continue
    ttgir = k.asm.get("ttgir", "")
    cubin = k.asm["cubin"]
    d = tempfile.mkdtemp()
    f = os.path.join(d, "k.cubin")
    with open(f, "wb") as fh:
        fh.write(cubin)
    nvdis = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    sass = subprocess.run([nvdis, "-c", f], capture_output=True, text=True).stdout
    print("ws", ws, "warp_specialize in ttgir:", "warp_specialize" in ttgir, "| partitions:", ttgir.count("partition"),
          "| SETMAXNREG:", len(re.findall(r"SETMAXNREG|USETMAXREG", sass)), "| instrs:", len(re.findall(r"/\*[0-9a-f]{4,}\*/", sass)),
          "| warps:", k.metadata.num_warps)
