"""Whether one multiply ``amax * 448`` could stand in for sage3's ``2688 * (amax * fp32(1/6))`` when
only the E4M3 code of the NVFP4 P block scale matters (``kernel._nvfp4_p_raw_amax``): every fp32
``amax`` in [0, 1] (1,065,353,217 values), both forms in fp32 (the two-multiply form with its
``min`` at 448, as the kernel's older form), each converted to E4M3 by torch (round to nearest even).

    python results/sass-2026-12-07d/exhaustive_scale_448.py   # ~25 s on a 2-core CPU

2026-12-07d: the scales differ on 386,462,513 values and the codes on 31 (the first at amax =
2.18e-06: code 1 against 0), so the one multiply is not the same numbers and was not kept.
"""

import time

import torch

t0 = time.time()
c6 = torch.tensor(1 / 6, dtype=torch.float32)
n_diff_s = n_diff_code = 0
examples: list = []
one_bits = 0x3F800000
step = 1 << 26
for lo in range(0, one_bits + 1, step):
    hi = min(lo + step, one_bits + 1)
    a = torch.arange(lo, hi, dtype=torch.int64).to(torch.int32).view(torch.float32)
    s1 = torch.minimum((a * c6) * torch.tensor(2688.0), torch.tensor(448.0))
    s2 = a * torch.tensor(448.0)
    d = s1 != s2
    n_diff_s += int(d.sum())
    if d.any():
        c1 = s1[d].to(torch.float8_e4m3fn).view(torch.uint8)
        c2 = s2[d].to(torch.float8_e4m3fn).view(torch.uint8)
        dd = c1 != c2
        n_diff_code += int(dd.sum())
        if dd.any() and len(examples) < 10:
            examples += list(zip(a[d][dd][:5].tolist(), c1[dd][:5].tolist(), c2[dd][:5].tolist(), strict=True))
print(f"values {one_bits + 1}, scales differ {n_diff_s}, codes differ {n_diff_code}, "
      f"first (amax, two-multiply code, one-multiply code): {examples[:5]}, {time.time() - t0:.0f} s")
