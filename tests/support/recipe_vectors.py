"""Generate the issue-18 recipe vectors (tests/data/recipe-vectors) from the independent oracle.

``python -m tests.support.recipe_vectors`` (about a minute on one core) rewrites every ``.npz``
and ``manifest.json``. Inputs: the 96 x 512 bf16 rows of the shared QDQ vectors
(``tests/data/qdq-vectors/dev_mx_fp4_e2m1_floor.npz``: gaussian, log-normal, outlier channels
x200, exact ties, tiny and huge rows), cut to 500 columns for the padded rotation. Outputs are
made by :mod:`tests.support.oracle` only (no ``vllm_qdq`` import); random-Hadamard signs come
from ``torch.Generator().manual_seed(seed)`` as the contract states and are stored beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import torch

from .oracle import oracle_recipe

ROOT = Path(__file__).resolve().parents[1] / "data"
SOURCE = ROOT / "qdq-vectors" / "dev_mx_fp4_e2m1_floor.npz"
OUT = ROOT / "recipe-vectors"

#: name -> (recipe, columns used)
RECIPES: dict[str, tuple[dict, int]] = {
    "mxfp4_had32": ({"fmt": "mxfp4", "rotate": {"block": 32}}, 512),
    "mxfp4_had128": ({"fmt": "mxfp4", "rotate": {"block": 128}}, 512),
    "mxfp4_had128_rand7": ({"fmt": "mxfp4", "rotate": {"block": 128, "seed": 7}}, 512),
    "mxfp4_had256_pad_k500": ({"fmt": "mxfp4", "rotate": {"block": 256, "pad": True}}, 500),
    "mxfp4_sr_seed1234": ({"fmt": "mxfp4", "rounding": "stochastic", "seed": 1234}, 512),
    "mxfp4_had64_sr_seed5": ({"fmt": "mxfp4", "rotate": {"block": 64}, "rounding": "stochastic", "seed": 5}, 512),
    "nvfp4_four_over_six": ({"fmt": "nvfp4", "scale_rule": "four_over_six"}, 512),
    "nvfp4_sr_seed99": ({"fmt": "nvfp4", "rounding": "stochastic", "seed": 99}, 512),
    "nvfp4_e5m3": ({"fmt": "nvfp4_e5m3"}, 512),
    "nvfp4_e5m3_four_over_six": ({"fmt": "nvfp4_e5m3", "scale_rule": "four_over_six"}, 512),
    "nvfp4_had16_four_over_six": ({"fmt": "nvfp4", "scale_rule": "four_over_six", "rotate": {"block": 16}}, 512),
}


def source_rows() -> np.ndarray:
    """The shared input rows as an ml_dtypes bfloat16 array [96, 512]."""
    return np.load(SOURCE)["x_bf16_bits"].view(ml_dtypes.bfloat16)


def signs_for(seed: int, kp: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (kp,), generator=g) * 2 - 1).to(torch.float32).numpy()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    x_all = source_rows()
    manifest = {"source": str(SOURCE.relative_to(ROOT)), "files": []}
    for name, (recipe, cols) in RECIPES.items():
        x = x_all[:, :cols]
        rot = recipe.get("rotate")
        signs = None
        if rot and rot.get("seed") is not None:
            b = rot["block"]
            signs = signs_for(rot["seed"], -(-cols // b) * b)
        y = oracle_recipe(x, recipe, signs)
        arrays = {"x_bf16_bits": x.view(np.uint16), "y_bf16_bits": y.view(np.uint16)}
        if signs is not None:
            arrays["signs"] = signs
        np.savez_compressed(OUT / f"{name}.npz", **arrays)
        manifest["files"].append({"file": f"{name}.npz", "recipe": recipe, "shape": list(x.shape)})
        print(name, "done", flush=True)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
