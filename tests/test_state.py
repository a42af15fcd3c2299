"""State helpers: flatten/unflatten, batch selection and concatenation, safetensors round trip, clear errors."""

from __future__ import annotations

import pytest
import torch

from audiomamba.layers import Mamba1Mixer, S4DMixer
from audiomamba.state import cat_states, flatten_state, load_state, save_state, select_batch, unflatten_state


def nested_state(batch):
    m, s = Mamba1Mixer(8, d_state=4), S4DMixer(8, d_state=4)
    return {"blocks": [m.init_state(batch), s.init_state(batch)], "phase": torch.zeros(batch, dtype=torch.long)}


def randomize(state):
    flat = {k: (torch.randn_like(v) if v.is_floating_point() else torch.randint_like(v, 0, 9))
            for k, v in flatten_state(state).items()}
    return unflatten_state(state, flat)


def test_select_then_cat_is_identity():
    s = randomize(nested_state(5))
    parts = [select_batch(s, i) for i in range(5)]
    back = cat_states(parts)
    for k, v in flatten_state(s).items():
        assert torch.equal(flatten_state(back)[k], v)
    assert flatten_state(select_batch(s, torch.tensor([4, 0])))["blocks.0.ssm"].shape[0] == 2


def test_save_load_round_trip_is_bit_exact(tmp_path):
    s = randomize(nested_state(3))
    save_state(s, tmp_path / "s.safetensors")
    r = load_state(nested_state(1), tmp_path / "s.safetensors")  # batch size comes from the file
    for k, v in flatten_state(s).items():
        got = flatten_state(r)[k]
        assert got.dtype == v.dtype and torch.equal(got, v)


def test_mismatched_state_names_the_entry(tmp_path):
    s = randomize(nested_state(2))
    save_state(s, tmp_path / "s.safetensors")
    other = {"blocks": [Mamba1Mixer(8, d_state=6).init_state(1), S4DMixer(8, d_state=4).init_state(1)],
             "phase": torch.zeros(1, dtype=torch.long)}
    with pytest.raises(ValueError, match="blocks.0.ssm"):
        load_state(other, tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="missing"):
        unflatten_state(s, {})
    with pytest.raises(FileNotFoundError, match="nope"):
        load_state(s, tmp_path / "nope.safetensors")
