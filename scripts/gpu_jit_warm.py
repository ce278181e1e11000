"""Build the FlashInfer sampling kernels vLLM's engine start would build, once, and say how long.

vLLM 0.30 on CUDA samples top-k / top-p requests with FlashInfer (``VLLM_USE_FLASHINFER_SAMPLER``,
on by default), and its engine start runs a warm-up step with top-k and top-p set
(``SamplingParams.for_sampler_warmup``). Where FlashInfer's prebuilt kernels
(``flashinfer-jit-cache``) are not installed, that first call compiles FlashInfer's sampling module
with nvcc into ``~/.cache/flashinfer`` (``$FLASHINFER_WORKSPACE_BASE/.cache/flashinfer``), under a
file lock, with no log line: ~100 s inside the first engine start on a machine, and every engine
starting meanwhile waits on the same lock.

This script pays that cost up front, through vLLM's own ``flashinfer_sample`` (top-k only, top-p only,
both: every branch vLLM's sampler takes), so that ``scripts/gpu-smoke.sh`` can print it as its own
line. It does nothing when vLLM would not use FlashInfer's sampler (no CUDA device,
``VLLM_USE_FLASHINFER_SAMPLER=0``, an unsupported GPU). The sampled tokens are checked only for
being in range: this is a build, not a test of FlashInfer.

``--marker FILE`` (the smoke suite's ``$SMOKE_OUT/jit-warm.ready``): after a build or find, FILE
holds the library's path and FlashInfer's version; a later run that finds that library there, under
the same installed version (read from the package metadata), says so and stops, without
importing torch, vLLM or FlashInfer (the check otherwise costs ~20 s of imports a call).

Exit status: 0 when the kernels are ready (built now or found) or not needed; 1 when the build failed
(the error is the last line).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _flashinfer_version() -> str:
    """The installed FlashInfer's version from its distribution's metadata (no import): a marker
    written under another version does not count ("" where none is installed)."""
    from importlib import metadata

    for dist in ("flashinfer-python", "flashinfer"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--marker", default="",
                    help="a file naming the built library and FlashInfer's version: written after a build or "
                         "find; when it names a library that exists, under the installed version, this run "
                         "only says so (no imports: ~20 s saved a call)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.marker and os.path.isfile(args.marker):
        with open(args.marker) as f:
            lib, _, version = f.read().strip().partition("\n")
        if lib and os.path.isfile(lib) and version == _flashinfer_version():
            print(f"jit-warm: FlashInfer {version} sampling kernels found built ({lib}; marker {args.marker}, "
                  "no imports)")
            return 0
    import torch

    if not torch.cuda.is_available():
        print("jit-warm: no CUDA device: nothing to build")
        return 0
    from vllm.v1.sample.ops.topk_topp_sampler import flashinfer_sample, flashinfer_sampler_supported

    if not flashinfer_sampler_supported():
        print("jit-warm: vLLM does not use FlashInfer's sampler here (VLLM_USE_FLASHINFER_SAMPLER="
              f"{os.environ.get('VLLM_USE_FLASHINFER_SAMPLER', 'unset')}): nothing to build")
        return 0
    import flashinfer
    from flashinfer.jit.sampling import gen_sampling_module

    t_import = time.perf_counter() - t0
    spec = gen_sampling_module()  # the module vLLM's flashinfer_sample loads (build_and_load)
    before = "prebuilt" if getattr(spec, "is_aot", False) else ("cached" if spec.is_compiled else "absent")
    where = spec.get_library_path()
    vocab, rows = 32000, 8
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(rows, vocab, device="cuda", generator=g)
    k = torch.full((rows,), 50, dtype=torch.int32, device="cuda")
    p = torch.full((rows,), 0.9, dtype=torch.float32, device="cuda")
    t1 = time.perf_counter()
    try:
        for kk, pp in ((k, p), (k, None), (None, p)):
            tokens = flashinfer_sample(logits.clone(), kk, pp)
            torch.cuda.synchronize()
            if tokens.numel() != rows or int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
                raise RuntimeError(f"sampled tokens out of range [0, {vocab}): {tokens.tolist()}")
    except Exception as e:  # the build's own message names nvcc, the compiler output, the lock
        print(f"jit-warm: FAILED building FlashInfer {flashinfer.__version__}'s sampling kernels "
              f"in {time.perf_counter() - t1:.1f} s ({where}): {type(e).__name__}: {e}")
        return 1
    t_build = time.perf_counter() - t1
    state = {"absent": "built", "cached": "found built", "prebuilt": "found prebuilt"}[before]
    if args.marker and os.path.isfile(where):
        with open(args.marker, "w") as f:
            f.write(f"{where}\n{_flashinfer_version()}\n")
    print(f"jit-warm: FlashInfer {flashinfer.__version__} sampling kernels {state} in {t_build:.1f} s "
          f"({where}; imports {t_import:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
