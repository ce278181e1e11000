"""GRID_SYNC "eager" against off, many calls back to back (no synchronize between), engine-like
shapes (rows 100-200 x 1024 / 2048, nvfp4 and FP8 per-tensor), the largest value in the LAST rows
(a program that missed a late pair gets a smaller amax). argv[1]: rounds; argv[2]: 'load' runs a
matmul loop in a second process beside it."""
import subprocess
import sys

import torch
import vllm_qdq.numerics.triton_qdq as t
from vllm_qdq.numerics.qdq import quantize_dequantize as qdq

rounds = int(sys.argv[1])
side = None
if len(sys.argv) > 2 and sys.argv[2] == "load":
    side = subprocess.Popen([sys.executable, "-c", "import torch\na=torch.randn(4096,4096,device='cuda')\n"
                             "while True:\n  a=(a@a).clamp(-1,1)"])
g = torch.Generator(device="cuda").manual_seed(1)
cases = []
for i in range(64):
    n = 100 + (i * 37) % 101
    k = (1024, 2048)[i % 2]
    x = torch.randn(n, k, device="cuda", generator=g)
    x[-3:] *= 50.0
    cases.append((("nvfp4", "fp8_e4m3_per_tensor")[(i // 2) % 2], x.bfloat16()))
t.GRID_SYNC = False
want = [qdq(x, name, axis=-1) for name, x in cases]
t.GRID_SYNC = "eager"
bad = 0
rows_bad: dict = {}
for r in range(rounds):
    outs = [qdq(x, name, axis=-1) for name, x in cases]
    torch.cuda.synchronize()
    for (name, x), a, b in zip(cases, want, outs):
        d = (a.view(torch.int16) != b.view(torch.int16)).any(dim=1).nonzero().flatten()
        if len(d):
            bad += 1
            key = f"{name} {tuple(x.shape)}"
            rows_bad.setdefault(key, set()).update(d.tolist()[:8])
print(f"rounds {rounds}, calls {rounds * len(cases)}, bad calls {bad}")
for k, v in sorted(rows_bad.items())[:20]:
    print(k, "rows e.g.", sorted(v)[:12])
if side:
    side.kill()
