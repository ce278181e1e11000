"""Issue 20: the ``qdq`` method's QDQ of one tensor-parallel rank's shard vs the unsharded layer's.

Shards are cut by vLLM's own weight loaders (``ColumnParallelLinear`` / ``RowParallelLinear``,
built with an explicit ``tp_rank`` / ``tp_size`` as vLLM 0.30 allows; ``MergedColumnParallelLinear``
and ``QKVParallelLinear`` read the TP size from ``vllm.distributed``, so there the module's
``get_tensor_model_parallel_*`` are set to the rank being simulated), the QDQ is the method's
(:func:`vllm_qdq.method.qdq_tensors.qdq_weight`) and the expectation the reference QDQ of the whole
layer, sliced. :func:`vllm_qdq.method.tp.shard_effect` must predict every outcome.
"""

from __future__ import annotations

import pytest
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor import parameter as vp
from vllm.model_executor.layers import linear as vl
from vllm_qdq.config import ConfigError, QuantSpec, load_config
from vllm_qdq.method.qdq_tensors import qdq_weight, shard_amax
from vllm_qdq.method.tp import Style, shard_effect
from vllm_qdq.qdq import quantize_dequantize

TP = 2
#: One format per family: MX block 32, NVFP4 block 16 + global, per-group128, per-row, per-tensor.
FORMATS = ["mxfp4", "nvfp4", "fp8_e4m3_per_group128", "fp8_e4m3_per_channel", "fp8_e4m3_per_tensor"]


def _ref(x: torch.Tensor, fmt: str) -> torch.Tensor:
    return quantize_dequantize(x, fmt, axis=-1, backend="reference")


def _weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[: n // 4] *= 40.0  # rank 0's rows / a part of every K-slice: a much larger amax there
    w[:, : k // 8] *= 3.0
    return w


def _fake_tp(monkeypatch, rank: int) -> None:
    """vLLM's TP rank / size as the linear layers and their parameters read them (no group here)."""
    for mod in (vl, vp):
        monkeypatch.setattr(mod, "get_tensor_model_parallel_rank", lambda: rank)
        monkeypatch.setattr(mod, "get_tensor_model_parallel_world_size", lambda: TP)


@pytest.fixture(autouse=True)
def _vllm_config():
    with set_current_vllm_config(VllmConfig()):
        yield


def _column_shards(w: torch.Tensor, monkeypatch) -> list[torch.Tensor]:
    out = []
    for r in range(TP):
        _fake_tp(monkeypatch, r)
        layer = vl.ColumnParallelLinear(w.shape[1], w.shape[0], bias=False, tp_rank=r, tp_size=TP,
                                        params_dtype=torch.float32)
        layer.weight.weight_loader(layer.weight, w)
        out.append(layer.weight.data.clone())
    return out


def _row_shards(w: torch.Tensor, monkeypatch) -> list[torch.Tensor]:
    out = []
    for r in range(TP):
        _fake_tp(monkeypatch, r)
        layer = vl.RowParallelLinear(w.shape[1], w.shape[0], bias=False, params_dtype=torch.float32)
        assert layer.input_size_per_partition == w.shape[1] // TP
        layer.weight.weight_loader(layer.weight, w)
        out.append(layer.weight.data.clone())
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_column_parallel_weight(fmt, monkeypatch):
    w = _weight(64, 96)
    full = _ref(w, fmt)
    shards = _column_shards(w, monkeypatch)
    assert torch.equal(torch.cat(shards), w)  # vLLM's loader: rank r holds rows r*N/tp ...
    got = torch.cat([qdq_weight(s, QuantSpec(fmt)) for s in shards])
    fx = shard_effect(fmt, Style.COLUMN, 96, TP, "weight")
    assert torch.equal(got, full) == fx.exact, fx
    if not fx.exact:  # per-tensor scales: each rank's own amax; the layer's amax restores it
        assert fx.layer_amax_fixes and "1/2 of the output rows" in fx.reason
        amax = torch.maximum(*[shard_amax(s) for s in shards])  # what the MAX all-reduce gives
        fixed = torch.cat([qdq_weight(s, QuantSpec(fmt), amax=amax) for s in shards])
        assert torch.equal(fixed, full)
    # the input is replicated: activation QDQ is the unsharded layer's, whatever the format
    assert shard_effect(fmt, Style.COLUMN, 96, TP, "act").exact


@pytest.mark.parametrize("k", [512, 320, 96])  # K/tp = 256 (all aligned), 160 (not 128), 48 (not 32)
@pytest.mark.parametrize("fmt", FORMATS)
def test_row_parallel_weight_and_act(fmt, k, monkeypatch):
    w = _weight(32, k, seed=k)
    full = _ref(w, fmt)
    shards = _row_shards(w, monkeypatch)
    assert torch.equal(torch.cat(shards, dim=1), w)  # rank r holds K columns r*K/tp ...
    got = torch.cat([qdq_weight(s, QuantSpec(fmt)) for s in shards], dim=1)
    fx = shard_effect(fmt, Style.ROW, k, TP, "weight")
    assert torch.equal(got, full) == fx.exact, (fmt, k, fx)
    # the activation slice each rank gets (RowParallelLinear's input_is_parallel): same analysis
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 30, k)
    xs = torch.chunk(x, TP, dim=1)
    act_fmt = fmt.replace("per_channel", "per_token")
    got_x = torch.cat([_ref(s, act_fmt) for s in xs], dim=1)
    fa = shard_effect(act_fmt, Style.ROW, k, TP, "act")
    assert torch.equal(got_x, _ref(x, act_fmt)) == fa.exact, (act_fmt, k, fa)
    assert not fa.layer_amax_fixes  # activations: no all-reduce per forward
    if fx.layer_amax_fixes:
        amax = torch.maximum(*[shard_amax(s) for s in shards])
        fixed = torch.cat([qdq_weight(s, QuantSpec(fmt), amax=amax) for s in shards], dim=1)
        assert torch.equal(fixed, full)


def test_row_parallel_straddling_blocks_are_named():
    fx = shard_effect("mxfp4", Style.ROW, 96, TP, "weight")
    assert not fx.exact and "blocks of 32 straddle" in fx.reason and "K/tp=48" in fx.reason
    assert not fx.layer_amax_fixes
    assert shard_effect("mxfp4", Style.ROW, 128, TP, "weight").exact
    assert shard_effect("mxfp4", Style.ROW, 96, TP, "weight", block_size=16).exact
    assert "per output channel per rank" in shard_effect("int8_per_channel", Style.ROW, 64, TP, "weight").reason
    assert shard_effect("nvfp4", Style.ROW, 64, 1, "weight").exact


def test_merged_and_qkv_loaders_per_logical_shard(monkeypatch):
    """gate/up and q/k/v: each rank gets its 1/tp of every logical layer; the method QDQs each
    logical shard on its own (its per-tensor scale), so with the layer amax it is the unfused,
    unsharded layer's QDQ, and per-row / block formats are exact without it."""
    hidden, inter = 64, 48
    gate, up = _weight(inter, hidden, 1), _weight(inter, hidden, 2) * 0.01
    heads, kv_heads, hd = 4, 2, 16
    q, k_, v = _weight(heads * hd, hidden, 3), _weight(kv_heads * hd, hidden, 4) * 5, _weight(kv_heads * hd, hidden, 5)
    for fmt in ("nvfp4", "fp8_e4m3_per_tensor", "mxfp4"):
        per_rank_mlp, per_rank_qkv = [], []
        for r in range(TP):
            _fake_tp(monkeypatch, r)
            mlp = vl.MergedColumnParallelLinear(hidden, [inter, inter], bias=False, params_dtype=torch.float32)
            mlp.weight.weight_loader(mlp.weight, gate, 0)
            mlp.weight.weight_loader(mlp.weight, up, 1)
            qkv = vl.QKVParallelLinear(hidden, hd, heads, kv_heads, bias=False, params_dtype=torch.float32)
            for name, t in (("q", q), ("k", k_), ("v", v)):
                qkv.weight.weight_loader(qkv.weight, t, name)
            per_rank_mlp.append((mlp.weight.data.clone(), [inter // TP] * 2))
            per_rank_qkv.append((qkv.weight.data.clone(), [heads * hd // TP, kv_heads * hd // TP, kv_heads * hd // TP]))
        for logical, per_rank in (([gate, up], per_rank_mlp), ([q, k_, v], per_rank_qkv)):
            amax = torch.maximum(*[shard_amax(w, s) for w, s in per_rank])
            want = [_ref(t, fmt) for t in logical]
            for r, (w, s) in enumerate(per_rank):
                got = qdq_weight(w, QuantSpec(fmt), s, amax=amax if fmt != "mxfp4" else None)
                rows = [t.shape[0] // TP for t in logical]
                exp = torch.cat([wt[r * n : (r + 1) * n] for wt, n in zip(want, rows, strict=True)])
                assert torch.equal(got, exp), (fmt, r)


def test_tp_amax_setting():
    assert load_config({}).tp_amax == "shard"
    assert load_config({"VLLM_QDQ_TP_AMAX": " Layer "}).tp_amax == "layer"
    with pytest.raises(ConfigError, match=r"VLLM_QDQ_TP_AMAX='global'; accepted: shard, layer"):
        load_config({"VLLM_QDQ_TP_AMAX": "global"})


def _qconfig(monkeypatch, tp_amax: str):
    from vllm_qdq import config
    from vllm_qdq.method.quant_config import QDQQuantConfig

    monkeypatch.setenv("VLLM_QDQ_TP_AMAX", tp_amax)
    monkeypatch.delenv("VLLM_QDQ_CONFIG", raising=False)
    assert config.settings().tp_amax == tp_amax
    return QDQQuantConfig()


def test_layer_amax_refuses_a_rotated_weight(monkeypatch):
    """VLLM_QDQ_TP_AMAX=layer would take the amax before the rotation: a start-up error naming the
    layer and the accepted settings, not a wrong scale."""
    from vllm_qdq.method.policy import LayerPlan
    from vllm_qdq.numerics.rotation import parse_rotation

    rot = parse_rotation({"kind": "hadamard", "block": 64}, "rotate")
    plan = LayerPlan("model.layers.0.mlp.down_proj", "linear", QuantSpec("nvfp4", rotate=rot), QuantSpec("off"))
    qc = _qconfig(monkeypatch, "layer")
    with pytest.raises(ConfigError, match=r"layer 'model.layers.0.mlp.down_proj': VLLM_QDQ_TP_AMAX=layer with a "
                                          r"rotated weight spec .*accepted: VLLM_QDQ_TP_AMAX=shard"):
        qc.note_tp(plan, Style.COLUMN, 256, TP)
    qc = _qconfig(monkeypatch, "shard")
    qc.note_tp(plan, Style.COLUMN, 256, TP)  # per-shard amax of the rotated shard: allowed, noted


def test_seeded_rotation_under_row_parallelism_is_noted(monkeypatch):
    from vllm_qdq.method.policy import LayerPlan
    from vllm_qdq.numerics.rotation import parse_rotation

    plain = parse_rotation({"kind": "hadamard", "block": 32}, "rotate")
    seeded = parse_rotation({"kind": "hadamard", "block": 32, "seed": 3}, "rotate")
    qc = _qconfig(monkeypatch, "shard")
    qc.note_tp(LayerPlan("a", "linear", QuantSpec("mxfp4", rotate=plain), QuantSpec("off")), Style.ROW, 256, TP)
    qc.note_tp(LayerPlan("b", "linear", QuantSpec("mxfp4", rotate=seeded), QuantSpec("off")), Style.COLUMN, 256, TP)
    assert not qc.tp_notes
    qc.note_tp(LayerPlan("c", "linear", QuantSpec("mxfp4", rotate=seeded), QuantSpec("off")), Style.ROW, 256, TP)
    assert [v for k, v in qc.tp_notes.items() if "random-sign rotation" in k] == [["c"]]


def test_moe_experts_are_noted_under_tp(monkeypatch):
    """Fused MoE under TP: w13 column-parallel (whole K), w2 row-parallel (K = intermediate split):
    the start-up note names the MoE layer where a shard's QDQ is not the whole layer's, and says
    that VLLM_QDQ_TP_AMAX=layer is not applied to expert weights."""
    from types import SimpleNamespace

    from vllm_qdq.method.moe import QDQFusedMoEMethod
    from vllm_qdq.method.policy import LayerPlan

    def notes(fmt: str, tp_amax: str, inter: int, use_ep: bool = False) -> dict:
        qc = _qconfig(monkeypatch, tp_amax)
        m = SimpleNamespace(plan=LayerPlan("model.layers.0.mlp.experts", "moe", QuantSpec(fmt), QuantSpec("mxfp4")),
                            qconfig=qc)
        moe = SimpleNamespace(moe_parallel_config=SimpleNamespace(tp_size=TP, use_ep=use_ep), hidden_dim=256,
                              intermediate_size=inter)
        QDQFusedMoEMethod._note_tp(m, moe)
        return dict(qc.tp_notes)

    assert notes("mxfp4", "shard", 512) == {}  # 256 per rank: whole 32-blocks, activation whole
    straddle = notes("mxfp4", "shard", 2 * 48)  # 48 per rank: a 32-block straddles the split
    assert list(straddle.values()) == [["model.layers.0.mlp.experts"]] and "row-parallel weight" in next(iter(straddle))
    assert any("row-parallel weight" in k for k in notes("nvfp4", "shard", 512))  # per-rank global amax
    layer = notes("nvfp4", "layer", 512)
    assert any("not applied to expert weights" in k for k in layer)
    assert notes("nvfp4", "shard", 512, use_ep=True) == {}  # expert parallelism: whole experts
