"""Low-precision inference copies: linear layers whose weight matrices are kept (and multiplied) in bfloat16.

``low_precision_copy(model, "bfloat16")`` is what ``model.low_precision_copy()`` and
``model.stream(weights="bfloat16")`` run; ``INFERENCE_WEIGHTS`` names the precisions they accept.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# precisions of ``low_precision_copy`` / ``stream(weights=...)``: float32 (the model as it is) or bfloat16 weights
INFERENCE_WEIGHTS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def inference_weights_dtype(weights: str | torch.dtype | None) -> torch.dtype:
    """The dtype named by a ``weights`` argument ("float32", "bfloat16", a torch dtype, or None = float32)."""
    if weights is None:
        return torch.float32
    for name, dtype in INFERENCE_WEIGHTS.items():
        if weights == name or weights is dtype:
            return dtype
    raise ValueError(f"weights: expected one of {sorted(INFERENCE_WEIGHTS)}, got {weights!r}")


def inference_weights_name(weights: str | torch.dtype | None) -> str:
    """The name ("float32", "bfloat16") of a ``weights`` argument; ValueError naming the choices otherwise."""
    dtype = inference_weights_dtype(weights)
    return next(name for name, d in INFERENCE_WEIGHTS.items() if d is dtype)


class LowPrecisionLinear(nn.Module):
    """Inference stand-in for an ``nn.Linear`` (B, ..., D_in) → (B, ..., D_out) whose weight is kept rounded to a
    lower precision (bfloat16): the product takes the input rounded to it as well (oneDNN's bfloat16 kernels on
    CPUs, float32 accumulation) and returns the input's dtype; the bias stays in float32 and is added after.
    ``weight`` gives the rounded weight in float32 for code that reads it directly (e.g. the Mamba-1 Δ
    projection of the short-chunk path). No autograd: an inference copy (see ``low_precision_copy``)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = linear.weight.dtype
        self.register_buffer("weight_low", linear.weight.detach().to(dtype).contiguous())  # (D_out, D_in)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_low.to(self.compute_dtype)  # (D_out, D_in): the rounded weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eager: oneDNN reorders the weight at each call; compiled streams freeze it (inductor keeps it prepacked)
        y = F.linear(x.to(self.weight_low.dtype), self.weight_low).to(x.dtype)  # (..., D_out)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.weight_low.dtype}"


def low_precision_copy(model: nn.Module, weights: str | torch.dtype = "bfloat16") -> nn.Module:
    """An inference copy of ``model`` (eval mode, no gradients) whose linear layers keep their weight matrices in
    ``weights`` precision and multiply in it (:class:`LowPrecisionLinear`); see ``_AudioModel.low_precision_copy``.
    ``weights="float32"`` returns an exact copy."""
    dtype = inference_weights_dtype(weights)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("low_precision_copy: expects a float32 model, got parameters in "
                         f"{sorted({str(p.dtype) for p in model.parameters()})}")
    model = copy.deepcopy(model).eval().requires_grad_(False)
    if dtype == torch.float32:
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            # every weight matrix; not a one-input map (the waveform embedding: a broadcast product, no matmul)
            if type(child) is nn.Linear and child.in_features > 1:
                setattr(module, name, LowPrecisionLinear(child, dtype))
    return model
