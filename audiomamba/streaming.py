"""Exact streaming inference: push chunks of any length into a causal model, get the outputs for exactly those
samples, equal to the offline forward over everything pushed so far (up to float rounding).

    stream = model.stream(batch_size=4)
    for chunk in chunks:                  # (4, n) waveform or tokens, any n (1, 320, 1000, ...)
        logits = stream.push(chunk)       # (4, n, ...) outputs for these n samples
    saved = stream.state_dict()           # plain tensors: save with safetensors, restore bit-exactly
    stream.load_state_dict(saved)         # ... also in another process, on another device

The rows of a batch are independent streams that advance together (one time axis), so B streams cost one
batched call. The state is the model's explicit state (``model.init_state``); nothing is hidden in modules.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .state import flatten_state, state_to, unflatten_state

_POSITION_KEY = "stream.position"
_STATE_PREFIX = "state."


class Stream:
    """A stream over a causal AudioLM or AudioClassifier.

    Args:
        model: a causal model (a bidirectional one raises ValueError: it needs the whole input at once); put
            it in eval mode when it has dropout.
        batch_size: B streams run together.
        device, dtype: of the state (default: the model's parameters').

    ``push`` takes (B, n) tokens or waveform samples ((B, n, K) tokens for K codebooks) and returns the model's
    outputs for them: LM logits (B, n[, K], V) or running classifier logits (B, n, C).
    """

    def __init__(self, model, batch_size: int = 1, device=None, dtype=None):
        if not getattr(model, "causal", False):
            raise ValueError(
                "cannot stream a bidirectional model: its reversed mixers need the whole input. "
                "Use a causal model (backbone.bidirectional: false), e.g. the classifier_small preset."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        param = next(model.parameters())
        self.model = model
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else param.device
        self.dtype = dtype if dtype is not None else param.dtype
        self.position = 0
        self.state = model.init_state(batch_size, self.device, self.dtype)

    def reset(self) -> None:
        """Start all B streams again from silence (a fresh state, position 0)."""
        self.state = self.model.init_state(self.batch_size, self.device, self.dtype)
        self.position = 0

    @torch.inference_mode()
    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        """Feed n new samples per stream, chunk (B, n[, K]); returns the outputs (B, n, ...) for them."""
        if chunk.shape[0] != self.batch_size:
            raise ValueError(f"chunk: expected batch {self.batch_size} (the stream's batch_size), "
                             f"got shape {tuple(chunk.shape)}")
        out, self.state = self.model(chunk.to(self.device), self.state)
        self.position += chunk.shape[1]
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The stream as plain tensors: ``state.<path>`` entries and the position (samples pushed)."""
        out = {_STATE_PREFIX + k: v.detach().clone() for k, v in flatten_state(self.state).items()}
        out[_POSITION_KEY] = torch.tensor([self.position], dtype=torch.long)
        return out

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict`` output (bit-exact); the batch size may differ from the current one."""
        if _POSITION_KEY not in tensors:
            raise ValueError(f"stream state: missing {_POSITION_KEY!r} (not a Stream.state_dict)")
        flat = {k[len(_STATE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_STATE_PREFIX)}
        extra = sorted(k for k in tensors if k != _POSITION_KEY and not k.startswith(_STATE_PREFIX))
        if extra:
            raise ValueError(f"stream state: unexpected entries {extra[:5]}")
        batch = {v.shape[0] for v in flat.values()}
        if len(batch) != 1:
            raise ValueError(f"stream state: entries disagree on the batch size: {sorted(batch)}")
        template = self.model.init_state(batch.pop(), self.device, self.dtype)
        self.state = state_to(unflatten_state(template, flat), self.device)
        self.batch_size = next(iter(flat.values())).shape[0]
        self.position = int(tensors[_POSITION_KEY][0])

    def save(self, path: str | Path) -> None:
        """Write ``state_dict`` to a safetensors file."""
        save_file({k: v.cpu().contiguous() for k, v in self.state_dict().items()}, str(path))

    def load(self, path: str | Path) -> None:
        """Restore a stream written by ``save`` (bit-exact)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"stream state file not found: {path}")
        self.load_state_dict(load_file(str(path)))
