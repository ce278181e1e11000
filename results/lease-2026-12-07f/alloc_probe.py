"""Host microseconds of ways to make an eager call's output (issue 16's eager target): back-to-back
calls, interleaved rounds, medians. Figures only."""
import statistics
import time

import torch

x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
shape, dtype, dev = x.shape, x.dtype, x.device
fns = {
    "empty_like(x)": lambda: torch.empty_like(x),
    "empty(shape, dtype, device)": lambda: torch.empty(shape, dtype=dtype, device=dev),
    "x.new_empty(shape)": lambda: x.new_empty(shape),
    "empty_strided": lambda: torch.empty_strided(shape, (4096, 1), dtype=dtype, device=dev),
    "raw stream": lambda: torch._C._cuda_getCurrentRawStream(0),
    "capturing": lambda: torch._C._cuda_isCurrentStreamCapturing(),
    "data_ptr": lambda: x.data_ptr(),
}
res = {k: [] for k in fns}
for _ in range(9):
    for k, f in fns.items():
        t = time.perf_counter()
        for _ in range(2000):
            f()
        res[k].append((time.perf_counter() - t) / 2000 * 1e6)
for k, v in res.items():
    print(f"{k:30s} {statistics.median(v):6.2f} us (min {min(v):.2f}, max {max(v):.2f})")
