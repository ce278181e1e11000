"""Block-diagonal Walsh-Hadamard rotations along the GEMM's reduction axis (K), as data + torch.

A :class:`Rotation` ``{"kind": "hadamard", "block": b, "seed": s | None, "pad": bool}`` is the
orthonormal block-diagonal matrix ``R = diag(H_b, ..., H_b) / sqrt(b) @ D`` acting on each row
``x`` of length ``K`` (blocks of ``b`` consecutive elements), where ``H_b`` is the Sylvester
Hadamard matrix (``H_b[i, j] = (-1)**popcount(i & j)``, symmetric) and ``D`` is the identity
(``seed`` null) or ``diag(d)`` with random signs ``d`` (``seed`` an integer: random Hadamard).
``R`` is orthogonal, so ``R^T = D @ diag(H_b) / sqrt(b)``.

Numeric contract (both the torch code here and the Triton kernels; fp32 throughout):

* Input rows are taken to fp32 exactly; a row whose length ``K`` is not a multiple of ``b`` is
  zero-padded to ``Kp`` (only with ``pad``; otherwise :func:`check_length` raises).
* Signs: ``d = 2 * torch.randint(0, 2, (Kp,), generator=torch.Generator().manual_seed(seed)) - 1``
  (CPU generator, one sign per padded column), applied by multiplication (exact).
* Forward ``R x``: signs, then the butterfly, then one multiplication by ``fp32(1 / sqrt(b))``.
  Inverse ``R^T y``: the butterfly, the multiplication by ``fp32(1 / sqrt(b))``, then signs.
* Butterfly: stages ``h = 1, 2, 4, ..., b/2``; at stage ``h`` each aligned segment of ``2h``
  elements ``[u, v]`` (halves of ``h``) becomes ``[u + v, u - v]``, every sum rounded to fp32.
  (For ``b`` in 16, 64, 256 the factor ``1/sqrt(b)`` is a power of two and exact; for 32 and 128
  it is rounded, so ``R^T R x`` equals ``x`` to within a few fp32 ulps, not bit for bit.)
* NaN / Inf anywhere in a rotation block spread over the block (IEEE arithmetic), and the QDQ
  of the rotated values makes their scaling group NaN.

Activations in the plugin and the ``qdq`` method: ``x_sim = R^T QDQ(R x)``; weights in the
``qdq`` method: ``W_sim = QDQ(W R^T) R``, i.e. every weight row gets ``R^T QDQ(R w)``, so
``x_sim . w_sim = QDQ(R x) . QDQ(R w)``: the product a rotated low-precision system computes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = [
    "ROTATION_BLOCKS",
    "ROTATION_KINDS",
    "Rotation",
    "butterfly",
    "check_length",
    "hadamard_scaled_signs",
    "hadamard_sign_bits",
    "hadamard_sign_words",
    "hadamard_signs",
    "inv_sqrt_f32",
    "parse_rotation",
    "rotate_rows",
]

#: Block sizes of the block-diagonal Hadamard transform.
ROTATION_BLOCKS: tuple[int, ...] = (16, 32, 64, 128, 256)
#: Rotation kinds.
ROTATION_KINDS: tuple[str, ...] = ("hadamard",)
_KEYS = ("kind", "block", "seed", "pad")


@dataclass(frozen=True)
class Rotation:
    """A validated rotation (see the module docstring)."""

    kind: str = "hadamard"
    block: int = 128
    seed: int | None = None
    pad: bool = False

    def encode(self) -> str:
        """``hadamard:<block>:<seed or ->:<0|1>``, the form the custom op's string argument takes."""
        return f"{self.kind}:{self.block}:{'-' if self.seed is None else self.seed}:{int(self.pad)}"

    @staticmethod
    def decode(text: str) -> Rotation:
        """Inverse of :meth:`encode` (validated)."""
        try:
            kind, block, seed, pad = text.split(":")
            obj = {"kind": kind, "block": int(block), "seed": None if seed == "-" else int(seed), "pad": pad == "1"}
        except ValueError:
            raise ValueError(f"rotation {text!r} is not 'kind:block:seed|-:0|1'") from None
        return parse_rotation(obj)

    def padded(self, k: int) -> int:
        """``k`` rounded up to a multiple of the block."""
        return -(-k // self.block) * self.block

    def __str__(self) -> str:
        rnd = "" if self.seed is None else f",seed={self.seed}"
        return f"{self.kind}{self.block}{rnd}{',pad' if self.pad else ''}"


def parse_rotation(obj: object, where: str = "rotate") -> Rotation:
    """Validate a rotation given as a mapping (JSON) or a :class:`Rotation`.

    Raises:
        ValueError: naming ``where``, the bad key or value and the accepted ones.
    """
    if isinstance(obj, Rotation):
        obj = {"kind": obj.kind, "block": obj.block, "seed": obj.seed, "pad": obj.pad}
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where} must be an object like {{\"kind\": \"hadamard\", \"block\": 128}}, got {obj!r}")
    unknown = [k for k in obj if k not in _KEYS]
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; accepted: {', '.join(_KEYS)}")
    kind = obj.get("kind", "hadamard")
    if kind not in ROTATION_KINDS:
        raise ValueError(f"{where}.kind={kind!r}; accepted: {', '.join(ROTATION_KINDS)}")
    block = obj.get("block")
    if isinstance(block, bool) or block not in ROTATION_BLOCKS:
        raise ValueError(f"{where}.block={block!r}; accepted: {', '.join(map(str, ROTATION_BLOCKS))}")
    seed = obj.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"{where}.seed={seed!r}; accepted: null (plain Hadamard) or an integer in [0, 2**63)")
    pad = obj.get("pad", False)
    if not isinstance(pad, bool):
        raise ValueError(f"{where}.pad={pad!r}; accepted: true, false")
    return Rotation(kind, int(block), seed, pad)


def check_length(rot: Rotation, k: int, what: str = "the tensor") -> int:
    """The padded length for rows of ``k``; raises ``ValueError`` when ``k`` is not a multiple of
    the block and ``pad`` is off (the message names ``what``)."""
    if k % rot.block and not rot.pad:
        raise ValueError(
            f"{what}: K={k} is not a multiple of the Hadamard block {rot.block}; accepted: a block "
            f"dividing K ({', '.join(str(b) for b in ROTATION_BLOCKS if k % b == 0) or 'none'}) "
            "or \"pad\": true"
        )
    return rot.padded(k)


@lru_cache(maxsize=64)
def _signs_cpu(seed: int, kp: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (kp,), generator=g) * 2 - 1).to(torch.float32)


@lru_cache(maxsize=256)
def _signs_on(seed: int, kp: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    return _signs_cpu(seed, kp).to(device=device, dtype=dtype)


def hadamard_signs(rot: Rotation, kp: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The sign vector ``d`` (length ``kp``, values +-1: exact in any float ``dtype``; fp32 by
    default, bf16 for the Triton kernels, half the bytes to read) of a random Hadamard, or
    ``None`` (plain).

    Cached per (seed, length, device, dtype): a call inside CUDA-graph capture (vLLM's default
    mode) must not copy from the host, and vLLM's warm-up runs every shape's first call before it
    captures. The tensor is shared: read it, never write it."""
    if rot.seed is None:
        return None
    return _signs_on(rot.seed, kp, str(torch.device(device)), dtype)


def _padded(signs: torch.Tensor, length: int) -> torch.Tensor:
    """``signs`` (+-1) followed by +1 up to ``length`` (at least ``len(signs)``)."""
    if length < signs.numel():
        raise ValueError(f"length {length} is shorter than the {signs.numel()} signs")
    return torch.cat((signs, torch.ones(length - signs.numel(), dtype=signs.dtype)))


@lru_cache(maxsize=256)
def _scaled_signs_on(seed: int, kp: int, device: str, scale: float, length: int) -> torch.Tensor:
    return (_padded(_signs_cpu(seed, kp), length) * torch.tensor(scale, dtype=torch.float32)).to(device=device)


def hadamard_scaled_signs(rot: Rotation, kp: int, device: torch.device | str, scale: float,
                          length: int | None = None) -> torch.Tensor | None:
    """``d * scale`` (fp32; each value exactly ``+-fp32(scale)``) of a random Hadamard, or
    ``None`` (plain): what the Triton kernels multiply ``R^T``'s butterfly output by, one product
    an element for the scale and the signs (the same bits as the two products: the sign's
    commutes with rounding). ``scale`` must be an fp32 value (:func:`inv_sqrt_f32`, or 1.0).
    ``length`` (default ``kp``): padded with ``+scale`` past ``kp`` (a kernel then loads whole
    tiles unmasked). Cached like :func:`hadamard_signs` (the same caveats: shared, read only)."""
    if rot.seed is None:
        return None
    return _scaled_signs_on(rot.seed, kp, str(torch.device(device)), float(scale), kp if length is None else length)


@lru_cache(maxsize=256)
def _sign_bits_on(seed: int, kp: int, device: str, length: int) -> torch.Tensor:
    bits = torch.where(_padded(_signs_cpu(seed, kp), length) < 0, -0x8000, 0)
    return bits.to(device=device, dtype=torch.int16)


def hadamard_sign_bits(rot: Rotation, kp: int, device: torch.device | str,
                       length: int | None = None) -> torch.Tensor | None:
    """The signs ``d`` of a random Hadamard as 16-bit sign masks (int16): ``0x8000`` (-32768)
    where ``d = -1``, 0 where ``+1`` and past ``kp`` up to ``length`` (default ``kp``); or
    ``None`` (plain). XORed into a bf16 or fp16 value's bits it is ``d * v`` exactly for every
    number (a NaN stays a NaN; its sign bit flips, where a product's is not specified), one logic
    operation for two packed values in place of a conversion and a product each. Cached like
    :func:`hadamard_signs` (shared, read only)."""
    if rot.seed is None:
        return None
    return _sign_bits_on(rot.seed, kp, str(torch.device(device)), kp if length is None else length)


@lru_cache(maxsize=256)
def _sign_words_on(seed: int, kp: int, device: str, length: int) -> torch.Tensor:
    neg = (_padded(_signs_cpu(seed, kp), length) < 0).to(torch.int64).view(-1, 32)
    j = torch.arange(32, dtype=torch.int64)
    words = (neg << (j // 2 + 16 * (j % 2))).sum(dim=1)
    return torch.where(words >= 2**31, words - 2**32, words).to(device=device, dtype=torch.int32)


def hadamard_sign_words(rot: Rotation, kp: int, device: torch.device | str,
                        length: int | None = None) -> torch.Tensor | None:
    """The signs ``d`` of a random Hadamard packed one bit a column (int32 words of 32 columns):
    bit ``j // 2 + 16 (j % 2)`` of word ``w`` (even columns in the low half, odd ones in the high
    half) is 1 where ``d[32 w + j] = -1``, 0 where ``+1`` and past ``kp`` up to ``length`` (default
    ``kp``; a multiple of 32). A kernel moves a column's bit to a value's sign bit and XORs it in:
    ``d * v`` exactly for every number (a NaN stays a NaN), with 4 bytes read for 32 columns where
    the 16-bit masks (:func:`hadamard_sign_bits`) take 64; the halves let one shift place the signs
    of two neighbouring columns at bits 15 and 31, the sign bits of a pair of packed 16-bit values. Cached like
    :func:`hadamard_signs` (shared, read only)."""
    if rot.seed is None:
        return None
    length = kp if length is None else length
    if length % 32:
        raise ValueError(f"sign words cover whole words of 32 columns: length {length} is not a multiple of 32")
    return _sign_words_on(rot.seed, kp, str(torch.device(device)), length)


def inv_sqrt_f32(block: int) -> float:
    """``fp32(1 / sqrt(block))`` as a Python float."""
    return float(torch.tensor(1.0 / math.sqrt(block), dtype=torch.float32))


def butterfly(v: torch.Tensor, block: int) -> torch.Tensor:
    """Unnormalized Walsh-Hadamard butterfly of fp32 rows ``[rows, Kp]`` in blocks of ``block``
    (stage order and fp32 rounding as in the module docstring)."""
    rows, kp = v.shape
    h = 1
    while h < block:
        s = v.reshape(rows, kp // (2 * h), 2, h)
        u, w = s[:, :, 0, :], s[:, :, 1, :]
        v = torch.stack((u + w, u - w), dim=2).reshape(rows, kp)
        h *= 2
    return v


def rotate_rows(v: torch.Tensor, rot: Rotation, signs: torch.Tensor | None, inverse: bool = False) -> torch.Tensor:
    """``R v`` (or ``R^T v`` with ``inverse``) of fp32 rows ``[rows, Kp]``, ``Kp`` a multiple of the block."""
    scale = torch.tensor(inv_sqrt_f32(rot.block), dtype=torch.float32, device=v.device)
    if not inverse and signs is not None:
        v = v * signs
    v = butterfly(v, rot.block) * scale
    if inverse and signs is not None:
        v = v * signs
    return v
