"""A language model's continuation of a served stream: sampled token by token from a copy of its state.

The stream's saved slot (``Engine.slot_state``) holds the state after its last pushed token and the
log-probabilities of the next token; sampling starts there and steps the recurrence (``AudioLM.step``), leaving
the stream itself untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..sampling import sample_from_logits
from ..state import unflatten_state
from .engine import POSITION_KEY, SERVE_PREFIX, STATE_PREFIX


def continue_stream(model, saved: dict[str, torch.Tensor], num_steps: int, emit: Callable[[torch.Tensor], bool],
                    temperature: float = 1.0, top_p: float | None = None, block: int = 160,
                    seed: int | None = None) -> int:
    """Sample ``num_steps`` tokens after a saved stream; ``emit`` gets them in blocks of ``block`` (1, n) int64
    (it returns False to stop early). Returns the number of tokens emitted.

    Args:
        model: the AudioLM the stream runs (one codebook).
        saved: ``Engine.slot_state`` output (``state.*`` of batch 1, ``stream.position``, ``serve.last_logp``).
    """
    param = next(model.parameters())
    device = param.device
    template = model.init_state(1, device)
    state = unflatten_state(template, {k[len(STATE_PREFIX) :]: v.to(device) for k, v in saved.items()
                                       if k.startswith(STATE_PREFIX)})
    position = int(saved[POSITION_KEY][0])
    logits = saved[SERVE_PREFIX + "last_logp"].to(device).float()  # (1, V) the next token's log-probabilities
    generator = torch.Generator(device=device)
    generator.manual_seed(int(torch.randint(0, 2**62, ()).item()) if seed is None else seed)
    out, done = [], 0
    with torch.no_grad():
        for i in range(num_steps):
            gumbel = -torch.empty_like(logits).exponential_(generator=generator).log()  # Gumbel(0, 1) noise
            token = sample_from_logits(logits, gumbel if temperature > 0 else None, temperature, None, top_p)  # (1,)
            out.append(token)
            if len(out) == block or i == num_steps - 1:
                done += len(out)
                if not emit(torch.stack(out, dim=1)) or i == num_steps - 1:
                    return done
                out = []
            step_logits, state = model.step(token.view(1, 1, 1), state, model.backbone.step_depth(position + i))
            logits = step_logits[:, 0, 0].float()  # (1, V)
    return done
