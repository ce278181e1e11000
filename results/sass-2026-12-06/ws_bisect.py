"""Which op of sage3's P quantization stops Triton 3.6's Hopper warp specialization? One op at a
time in a flash-attention loop (num_warps 4, TMA descriptor loads, warp_specialize=True), sm_90
compiles; see README.md here."""
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def fa(desc_q, desc_k, desc_v, o_ptr, S, c, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, WS: tl.constexpr, MODE: tl.constexpr):
    pid = tl.program_id(0)
    q = desc_q.load([pid * BLOCK_M, 0])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for n0 in tl.range(0, S, BLOCK_N, warp_specialize=WS):
        k = desc_k.load([n0, 0])
        s = tl.dot(q, k.T) * c
        b = tl.max(s, 1)
        m_new = tl.maximum(m_i, b)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        if MODE == 1:  # a 1-D exp2, broadcast
            p = p * tl.exp2(b - m_new)[:, None]
        if MODE == 2:  # 2-D integer bit ops
            p = (p.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
        if MODE == 3:  # 1-D integer bit ops, broadcast
            e = (tl.exp2(b - m_new).to(tl.int32, bitcast=True) >> 23) - 127
            p = p * ((127 - e) << 23).to(tl.float32, bitcast=True)[:, None]
        if MODE == 4:  # minimum with NaN propagation
            p = tl.minimum(p, 0.75, propagate_nan=tl.PropagateNan.ALL)
        if MODE == 5:  # a select
            p = tl.where(p > 0.5, p, 0.0)
        if MODE == 6:  # 1-D select
            p = p * tl.where(b > 0, 2.0, 1.0)[:, None]
        if MODE == 7:  # integer where on 1-D
            e = (b.to(tl.int32, bitcast=True) >> 23)
            t = tl.where(e >= 1, (e + 127) << 23, 0)
            p = p * t.to(tl.float32, bitcast=True)[:, None]
        if MODE == 8:  # per-block maxima of 32 keys by masks (no 3-D reshape), a per-block factor selected
            cols = tl.arange(0, BLOCK_N)[None, :]
            lo = cols < 32
            b0 = tl.max(tl.where(lo, s, float("-inf")), 1)
            b1 = tl.max(tl.where(lo, float("-inf"), s), 1)
            f0 = (127 - ((tl.exp2(b0 - m_new).to(tl.int32, bitcast=True) >> 23) - 127)) << 23
            f1 = (127 - ((tl.exp2(b1 - m_new).to(tl.int32, bitcast=True) >> 23) - 127)) << 23
            f = tl.where(lo, f0[:, None], f1[:, None]).to(tl.float32, bitcast=True)
            p = (p * f + 12582912.0) - 12582912.0
        if MODE == 9:  # the same through a 3-D reshape
            p3 = tl.reshape(p, (BLOCK_M, BLOCK_N // 32, 32))
            p = tl.reshape(p3 * tl.max(p3, 2)[:, :, None], (BLOCK_M, BLOCK_N))
        l_i = l_i * alpha + tl.sum(p, 1)
        v = desc_v.load([n0, 0])
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(tl.bfloat16), v, acc)
        m_i = m_new
    offs = (pid * BLOCK_M + tl.arange(0, BLOCK_M))[:, None] * D + tl.arange(0, D)[None, :]
    tl.store(o_ptr + offs, (acc / l_i[:, None]).to(tl.bfloat16))

for mode in range(10):
    sig = {"desc_q": "tensordesc<bf16[128,128]>", "desc_k": "tensordesc<bf16[64,128]>", "desc_v": "tensordesc<bf16[64,128]>",
           "o_ptr": "*bf16", "S": "i32", "c": "fp32", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "D": "constexpr",
           "WS": "constexpr", "MODE": "constexpr"}
    src = ASTSource(fa, sig, constexprs={"BLOCK_M": 128, "BLOCK_N": 64, "D": 128, "WS": True, "MODE": mode})
    try:
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2, "enable_fp_fusion": False})
        print("mode", mode, "ok, warps", k.metadata.num_warps, flush=True)
    except Exception:
        print("mode", mode, "FAILED", flush=True)
