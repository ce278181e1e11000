"""vllm_qdq.study.rotation_compare's report: KL and top-1 agreement against the baseline, per-layer
SQNR columns (the engine runs themselves: ``python -m vllm_qdq.study.rotation_compare``)."""

from __future__ import annotations

import math

from vllm_qdq.study.rotation_compare import VARIANTS, _kl, report


def test_kl_of_known_distributions() -> None:
    p = [math.log(0.5), math.log(0.5)]
    q = [math.log(0.25), math.log(0.75)]
    assert _kl(p, p) == 0.0
    assert math.isclose(_kl(p, q), 0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75))
    assert _kl([0.0, -math.inf], [math.log(0.5), math.log(0.5)]) == math.log(2)


def test_report_side_by_side(tmp_path) -> None:
    base = [[math.log(0.5), math.log(0.5)], [math.log(0.9), math.log(0.1)]]
    runs = {"baseline": base, "mxfp4": [[math.log(0.25), math.log(0.75)], base[1]], "mxfp4_had128": base}
    sq = {"mxfp4": {"l.0.down_proj": 16.5}, "mxfp4_had128": {"l.0.down_proj": 18.9}}
    text = report(tmp_path, runs, sq)
    assert (tmp_path / "report.md").read_text() == text
    assert "| mxfp4_had128 | 2 | 0.0000 | 0.0000 | 0.0000 | 1.000 |" in text
    assert "| l.0.down_proj | 16.50 | 18.90 |" in text
    assert list(VARIANTS)[:3] == ["baseline", "mxfp4", "mxfp4_had128"]
    assert VARIANTS["mxfp4_had128"]["act"]["rotate"] == {"block": 128}
