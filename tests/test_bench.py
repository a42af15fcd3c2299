"""``audiomamba bench``: the train bench end to end on CPU (tiny models), its Transformer sizing and mamba_ssm
weight copy, the table helper, the stage shapes and floors of the kernel bench, and the ONNX stream bench."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from audiomamba.kernels import selective_scan_ref

from audiomamba.bench import train
from audiomamba.bench.kernels import preset_stage_shapes, scan_floor_ms
from audiomamba.bench.timing import Column, Ratio, table_lines
from audiomamba.bench.train import (
    CausalTransformerLM,
    MambaSSMMixer,
    _batch_for,
    swap_mamba1_mixers,
    transformer_parameters,
    transformer_shape,
)
from audiomamba.cli import main
from audiomamba.layers import Mamba1Mixer
from audiomamba.models import build_model


def test_bench_train_tiny_through_the_cli(capsys):
    assert main(["bench", "train", "--tiny"]) == 0
    out = capsys.readouterr().out
    assert "mamba_ssm skipped" in out  # CPU: the mamba_ssm row is skipped with its reason
    rows = {}
    for line in out.splitlines():
        m = re.match(r"(sc09_small|transformer|sc09_s4d)\s+([\d,]+)\s+([\d.]+)\s", line)
        if m:
            rows[m.group(1)] = (int(m.group(2).replace(",", "")), float(m.group(3)))
    assert set(rows) == {"sc09_small", "transformer", "sc09_s4d"}
    for params, ms in rows.values():
        assert params > 0 and math.isfinite(ms) and ms > 0
    # the Transformer baseline is sized to the preset
    assert abs(rows["transformer"][0] / rows["sc09_small"][0] - 1) <= 0.1
    assert "time / transformer" in out and "time / sc09_s4d" in out


@pytest.mark.parametrize("preset, params", [("sc09_small", 6_096_384), ("sc09_large", 24_400_000)])
def test_transformer_baseline_matches_the_preset_size(preset, params):
    width, layers, heads = transformer_shape(params, 256)
    with torch.device("meta"):
        model = CausalTransformerLM(256, width, layers, heads)
    count = sum(p.numel() for p in model.parameters())
    assert count == transformer_parameters(256, width, layers)
    assert abs(count / params - 1) <= 0.1 and width % heads == 0
    if preset == "sc09_small":
        assert (width, layers) == (256, 8)


def test_transformer_baseline_is_causal():
    torch.manual_seed(0)
    model = CausalTransformerLM(32, 16, 2, 2)
    x = torch.randint(0, 32, (1, 12))
    emb = model.embed(x).detach().requires_grad_(True)
    model.embed = nn.Identity()
    logits = model(emb)  # (1, 12, V)
    logits[0, 5].sum().backward()
    assert emb.grad[0, 6:].abs().sum() == 0 and emb.grad[0, :6].abs().sum() > 0


def test_batch_shrinks_to_keep_tokens_per_step():
    assert _batch_for(64_000, 16) == 4 and _batch_for(16_000, 16) == 16 and _batch_for(8_000, 16) == 16


class _MambaLike(nn.Module):
    """mamba_ssm's ``Mamba`` parameter layout (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj) with its
    forward written in plain PyTorch: what the weight copy has to reproduce."""

    def __init__(self, d_model, d_state, d_conv, expand, dt_rank, conv_bias, bias):
        super().__init__()
        inner = expand * d_model
        self.dt_rank, self.d_state = dt_rank, d_state
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner)
        self.A_log = nn.Parameter(torch.randn(inner, d_state))
        self.D = nn.Parameter(torch.randn(inner))
        self.out_proj = nn.Linear(inner, d_model, bias=bias)

    def forward(self, x):
        length = x.shape[1]
        xs, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        xs = F.silu(self.conv1d(xs)[..., :length])
        dt, Bm, Cm = self.x_proj(xs.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (B, E, L)
        y = selective_scan_ref(xs, delta, -torch.exp(self.A_log), Bm.transpose(1, 2), Cm.transpose(1, 2), self.D,
                               z, self.dt_proj.bias, True)
        return self.out_proj(y.transpose(1, 2))


def test_mamba_ssm_swap_copies_every_weight():
    torch.manual_seed(1)
    ours = Mamba1Mixer(8, d_state=4, d_conv=3)
    x = torch.randn(2, 11, 8)
    with torch.no_grad():
        y_ours, _ = ours(x)
        y_swapped, state = MambaSSMMixer(ours, _MambaLike)(x)
    assert state is None and (y_swapped - y_ours).norm() / y_ours.norm() < 1e-5
    model = build_model("sc09_small", **{"backbone.d_model": 8, "backbone.n_blocks": [1],
                                         "backbone.mixer_options": {"mamba1": {"d_state": 4}}})
    assert swap_mamba1_mixers(model, _MambaLike) == 3  # one Mamba-1 block per stage
    assert not any(isinstance(m, Mamba1Mixer) for m in model.modules())


def test_bench_train_mamba_ssm_row_and_baseline(monkeypatch):
    """Where mamba_ssm imports, the preset runs again with its mixers swapped, as a third baseline."""
    monkeypatch.setattr(train, "mamba_ssm_class", lambda device: _MambaLike)
    lines = []
    rows = train.bench_train(tiny=True, steps=1, warmup=1, print_fn=lines.append)
    by_name = {r["model"]: r for r in rows}
    assert list(by_name) == ["sc09_small", "transformer", "sc09_s4d", "sc09_small+mamba_ssm"]
    assert by_name["sc09_small+mamba_ssm"]["params"] == by_name["sc09_small"]["params"]
    assert all(math.isfinite(r["ms"]) and r["ms"] > 0 for r in rows)
    assert any("time / sc09_small+mamba_ssm" in line for line in lines)


def test_table_ratio_columns():
    rows = [{"name": "a", "ms": 2.0, "mb": None}, {"name": "base", "ms": 4.0, "mb": None}]
    lines = table_lines(rows, [Column("name", "model"), Column("ms", "ms", ".1f"), Column("mb", "MB", ".0f")],
                        [Ratio("ms", "time", ["base", "missing"]), Ratio("mb", "mem", ["base"])])
    assert lines[0].split() == ["model", "ms", "MB", "time", "/", "base"]  # no column for an absent baseline
    assert lines[1].split() == ["a", "2.0", "-", "0.50"] and lines[2].split() == ["base", "4.0", "-", "1.00"]


def test_kernel_bench_stage_shapes_and_floor():
    scan = preset_stage_shapes(["sc09_small"], batch=16, length=16_000)
    assert [(s.op, s.shape, s.blocks) for s in scan] == [
        ("scan", (16, 128, 16_000, 64), 8), ("scan", (16, 256, 4_000, 64), 8), ("scan", (16, 512, 1_000, 64), 8)]
    ssd = preset_stage_shapes(["sc09_mamba2"], batch=16, length=16_000)
    assert [(s.op, s.shape, s.headdim, s.chunk) for s in ssd] == [
        ("ssd", (16, 2, 16_000, 64), 64, 256), ("ssd", (16, 4, 4_000, 64), 64, 256),
        ("ssd", (16, 8, 1_000, 64), 64, 256)]
    assert preset_stage_shapes(["sc09_s4d"]) == []
    # exponential floor of sc09_small's stage 0: B·E·L·N / 4.2e12 s
    assert scan_floor_ms(16, 128, 16_000, 64) == pytest.approx(16 * 128 * 16_000 * 64 / 4.2e12 * 1e3)


def test_stream_onnx_bench_on_a_token_model_with_s4d_stages(capsys):
    """``bench stream --backend onnxruntime`` on an experiment preset (8 kHz mu-law tokens, S4D and Mamba-1
    stages): three timed rows on the same chunks, outputs that agree, the ratios printed."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from audiomamba.bench.stream_onnx import bench_stream_onnx

    result = bench_stream_onnx("quickstart_classifier", chunk_ms=20, seconds=0.2)
    assert result["chunk_samples"] == 160 and result["chunks"] == 10
    assert set(result["rows"]) == {"torch", "eager", "onnxruntime"}
    assert all(r["cpu_ms_median"] > 0 for r in result["rows"].values())
    assert result["max_rel_diff"] < 1e-5
    out = capsys.readouterr().out
    assert "160 samples at 8000 Hz" in out and "(eager)" in out and "against the eager stream" in out
