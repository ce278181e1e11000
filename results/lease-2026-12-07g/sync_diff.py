"""GRID_SYNC eager vs off, bit for bit, at engine-like shapes (nvfp4 / fp8 per-tensor, bf16)."""
import torch
import vllm_qdq.numerics.triton_qdq as t
from vllm_qdq.numerics.qdq import quantize_dequantize as qdq
torch.manual_seed(0)
bad = 0
for name in ("nvfp4", "fp8_e4m3_per_tensor"):
    for k in (1024, 2048, 4096):
        for n in (3, 9, 16, 17, 32, 33, 64, 100, 127, 128, 129, 256, 512, 1000, 1024, 2048):
            x = (torch.randn(n, k, device="cuda") * torch.rand(n, 1, device="cuda") * 4).bfloat16()
            t.GRID_SYNC = False
            a = qdq(x, name, axis=-1)
            t.GRID_SYNC = "eager"
            b = qdq(x, name, axis=-1)
            b2 = qdq(x, name, axis=-1)
            t.GRID_SYNC = False
            ref = qdq(x, name, axis=-1, backend="reference") if n * k <= 1 << 20 else a
            torch.cuda.synchronize()
            d1 = (a.view(torch.int16) != b.view(torch.int16)).sum().item()
            d2 = (a.view(torch.int16) != b2.view(torch.int16)).sum().item()
            d3 = (a.view(torch.int16) != ref.view(torch.int16)).sum().item()
            if d1 or d2 or d3:
                bad += 1
                print(f"{name} {n}x{k}: off!=sync {d1}, off!=sync-replay {d2}, off!=ref {d3}; amax {x.abs().max().item()}")
print("bad", bad)
