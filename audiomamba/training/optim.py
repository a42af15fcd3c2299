"""AdamW with decoupled weight decay on matrices only, and a linear-warmup + cosine-decay schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings; none on biases, norms and SSM parameters (A_log, D, dt_bias,
    anything marked ``_no_weight_decay``), following Mamba's convention."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if p.dim() < 2 or getattr(p, "_no_weight_decay", False) or leaf in ("A_log", "D", "dt_bias", "log_dt"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over ``warmup_steps``, then cosine down to ``min_ratio`` at
    ``total_steps`` (and ``min_ratio`` after it)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, optim_cfg, total_steps: int):
    """AdamW + LambdaLR (stepped every optimizer step) from an OptimConfig."""
    opt = torch.optim.AdamW(param_groups(model, optim_cfg.weight_decay), lr=optim_cfg.lr,
                            betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
    warmup, min_ratio = optim_cfg.warmup_steps, optim_cfg.min_lr_ratio
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total_steps, min_ratio))
    return opt, sched
