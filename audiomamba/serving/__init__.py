"""Serving many concurrent audio streams from one model: state slots, batched ticks, a WebSocket server.

``audiomamba serve MODEL_DIR`` runs the server (see ``app``); ``Engine`` and ``Scheduler`` are usable without
any network (``audiomamba bench serve --engine-only``).
"""

from .engine import CapacityError, Engine, PushResult
from .scheduler import Scheduler

__all__ = ["CapacityError", "Engine", "PushResult", "Scheduler"]
