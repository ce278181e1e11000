"""Bit-for-bit comparison of a kernel's output with the reference (shared by the CPU and GPU tests)."""

from __future__ import annotations

import torch


def assert_same_bits(y: torch.Tensor, r: torch.Tensor) -> None:
    """``y`` and ``r`` have the same shape, dtype, NaN positions and bit patterns elsewhere."""
    assert y.shape == r.shape and y.dtype == r.dtype
    ny, nr = torch.isnan(y), torch.isnan(r)
    assert torch.equal(ny, nr), f"NaN positions differ: {(ny != nr).sum().item()} elements"
    ity = {2: torch.int16, 4: torch.int32, 8: torch.int64}[y.element_size()]
    yb, rb = y.contiguous().view(ity)[~ny], r.contiguous().view(ity)[~nr]
    diff = yb != rb
    assert not diff.any(), (
        f"{diff.sum().item()} of {yb.numel()} elements differ, e.g. triton {y[~ny][diff][:4].tolist()} "
        f"vs reference {r[~nr][diff][:4].tolist()}"
    )
