"""Recurrent state containers and the helpers that move, batch, save and restore them.

A *state* is a plain tree of tensors: a dataclass whose fields are tensors or further states, or a list /
tuple / dict of states. Every recurrent module returns one from ``init_state`` and ``forward``; the helpers
below work on any such tree without knowing the module that made it. Tensors are batch-first: the leading
dimension of every tensor in a state is the batch, which makes ``select_batch`` and ``cat_states`` generic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

State = Any  # a tensor, a dataclass of states, or a list / tuple / dict of states


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """Apply ``fn`` to every tensor of ``state``; returns a new tree of the same structure."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return type(state)(**{f.name: map_state(fn, getattr(state, f.name)) for f in dataclasses.fields(state)})
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, s) for s in state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    raise TypeError(f"state: unsupported leaf of type {type(state).__name__}")


def _leaves(state: State, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [(prefix, state)]
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        items = [(f.name, getattr(state, f.name)) for f in dataclasses.fields(state)]
    elif isinstance(state, (list, tuple)):
        items = [(str(i), s) for i, s in enumerate(state)]
    elif isinstance(state, dict):
        items = list(state.items())
    else:
        raise TypeError(f"state: unsupported leaf of type {type(state).__name__} at '{prefix}'")
    out: list[tuple[str, torch.Tensor]] = []
    for name, sub in items:
        out.extend(_leaves(sub, f"{prefix}.{name}" if prefix else str(name)))
    return out


def flatten_state(state: State) -> dict[str, torch.Tensor]:
    """Flatten a state tree into ``{dotted.path: tensor}`` (the safetensors layout)."""
    return dict(_leaves(state))


def unflatten_state(template: State, tensors: dict[str, torch.Tensor]) -> State:
    """Rebuild a state with ``template``'s structure from ``flatten_state`` output.

    Raises ValueError naming the first missing, extra or mis-shaped entry.
    """
    expected = flatten_state(template)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"state does not match its template: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, ref in expected.items():
        got = tensors[key]
        if got.shape[1:] != ref.shape[1:] or got.dtype != ref.dtype:
            raise ValueError(
                f"state entry '{key}': expected (batch, {tuple(ref.shape[1:])}) {ref.dtype}, "
                f"got {tuple(got.shape)} {got.dtype}"
            )
    it = iter(tensors[k] for k in expected)
    return map_state(lambda _: next(it), template)


def state_to(state: State, device: torch.device | str | None = None) -> State:
    """Move every tensor of ``state`` to ``device``."""
    return map_state(lambda t: t.to(device), state)


def select_batch(state: State, index: torch.Tensor | slice | int | list[int]) -> State:
    """Select streams along the batch dimension (keeps the batch dimension for an int index)."""
    if isinstance(index, int):
        index = slice(index, index + 1)
    return map_state(lambda t: t[index], state)


def cat_states(states: list[State]) -> State:
    """Concatenate states of the same structure along the batch dimension."""
    if not states:
        raise ValueError("cat_states: need at least one state")
    flats = [flatten_state(s) for s in states]
    merged = {k: torch.cat([f[k] for f in flats], dim=0) for k in flats[0]}
    return unflatten_state(states[0], merged)


def save_state(state: State, path: str | Path) -> None:
    """Save a state to a safetensors file (bit-exact; tensors are copied to contiguous CPU memory)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in flatten_state(state).items()}, str(path))


def load_state(template: State, path: str | Path, device: torch.device | str | None = None) -> State:
    """Load a state saved by ``save_state`` into ``template``'s structure (no pickle involved)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state file not found: {path}")
    return state_to(unflatten_state(template, load_file(str(path))), device)
