"""Issue 18 options through the ``qdq`` method in vLLM's real CPU engine (marked ``slow``).

A tiny Llama under the method with rotated activations (random Hadamard 32), NVFP4
four-over-six weights with stochastic rounding and a rotated weight (``QDQ(W R^T) R``), eager
and compiled, against the independent pure-PyTorch QDQ of the same ``transformers`` model
(tests/support/qdq_method_reference.py: the same public QDQ calls per module). Stochastic
rounding is used on weights only: their draws are indexed within each weight shard, the same
tensor in vLLM and in the reference (activations are batched differently there). A K the
rotation block does not divide stops start-up naming the layer.
"""

from __future__ import annotations

import pytest

from .test_qdq_method_engine import TOL, TOL_COMPILED, _engines, _lp, _maxdiff, _meandiff, _ref, models  # noqa: F401

pytestmark = pytest.mark.slow

WEIGHT = {"format": "nvfp4", "scale_rule": "four_over_six", "rounding": "stochastic", "seed": 3,
          "rotate": {"block": 32, "seed": 11}}
ACT = {"format": "mxfp4", "rotate": {"block": 32, "seed": 11}}
RUN = {"quant_method": "qdq", "weight": WEIGHT, "act": ACT}


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory) -> dict:  # noqa: F811
    m = str(models["llama"])
    q = {"quantization": "qdq", "model": m}
    return _engines(
        tmp_path_factory.mktemp("recipe_runs"),
        "recipes",
        [
            {"name": "rot", **q, "hf_overrides": {"quantization_config": RUN}},
            {"name": "rot_compiled", **q, "hf_overrides": {"quantization_config": RUN}, "enforce_eager": False},
            {"name": "plain_mxfp4", **q},
            {
                "name": "bad_k",
                **q,
                "hf_overrides": {"quantization_config": {"quant_method": "qdq", "act": {"format": "mxfp4",
                                                                                         "rotate": {"block": 256}}}},
            },
        ],
    )


def test_rotated_method_matches_reference(models, runs) -> None:  # noqa: F811
    ref = _ref(models["llama"], weight=WEIGHT, act=ACT)
    got = _lp(runs, "rot")
    assert _maxdiff(got, ref) <= TOL
    assert _maxdiff(_lp(runs, "rot_compiled"), got) <= TOL_COMPILED
    assert _meandiff(got, _lp(runs, "plain_mxfp4")) > 1e-3  # the options change the numbers


def test_rotation_block_not_dividing_k_stops_start_up(runs) -> None:
    err = runs["bad_k"].get("error", "")
    assert "rotate.block=256 does not divide K=64" in err and "layer 'model.layers.0." in err, err
