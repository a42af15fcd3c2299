"""Sequence mixers and the layers the backbone is built from. Every mixer maps (B, L, D) → (B, L, D) and
follows the state contract: ``init_state(batch_size, device, dtype)`` and ``forward(x, state=None) -> (y, state)``;
``forward(x, state, return_state=False)`` gives the same y and None in place of the state, which it does not compute
(training).
"""

from .mamba1 import Mamba1Mixer, Mamba1State
from .mamba2 import Mamba2Mixer, Mamba2State
from .s4d import S4DMixer, S4DState

MIXERS = {"mamba1": Mamba1Mixer, "mamba2": Mamba2Mixer, "s4d": S4DMixer}

__all__ = ["MIXERS", "Mamba1Mixer", "Mamba1State", "Mamba2Mixer", "Mamba2State", "S4DMixer", "S4DState"]
