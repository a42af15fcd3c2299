"""``audiomamba bench train``: one language-model training step, model against model, in one run.

A step is forward, cross-entropy on the next token, backward and an AdamW update, under bf16 autocast on CUDA
(float32 on CPU), on random tokens of B × L. Each model is timed over ``steps`` steps after ``warmup`` steps
(median ms/step) and its peak memory is ``torch.cuda.max_memory_allocated`` over those steps (weights,
gradients, optimizer state and activations; "-" on CPU). The rows:
- each preset asked for (default ``sc09_small``);
- ``transformer``: a causal Transformer written here (token embedding, pre-norm blocks of rotary SDPA attention
  and a GELU MLP, final norm, LM head), its depth and width chosen so that its parameter count is within 10 %
  of the first preset's;
- ``sc09_s4d``, the all-LTI U-Net;
- ``<preset>+mamba_ssm``: the preset with each Mamba-1 mixer replaced by mamba_ssm's ``Mamba`` (weights
  copied), where ``mamba_ssm`` imports and the device is CUDA.
Ratio columns divide each row's time and memory by each baseline's (transformer, sc09_s4d, mamba_ssm).
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiomamba.config import load_model_config
from audiomamba.layers import Mamba1Mixer
from audiomamba.models import build_model

from .timing import Column, Ratio, device_name, print_table, step_times_ms, sync

REFERENCE_LENGTH = 16_000  # the batch is scaled to keep B × this many tokens per step at other lengths
TRANSFORMER, S4D = "transformer", "sc09_s4d"
# --tiny: every model shrunk to a few thousand parameters, for a CPU smoke test of the whole bench
TINY_OVERRIDES = {
    "backbone.d_model": 16, "backbone.n_blocks": [1],
    "backbone.mixer_options": {"mamba1": {"d_state": 4}, "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8},
                               "s4d": {"d_state": 8}},
}


# ---------------------------------------------------------------------------------------------- Transformer


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (B, H, L, hd) with cos, sin (L, hd / 2)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, L, hd / 2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class _Block(nn.Module):
    """Pre-norm Transformer block: x + Attn(LN(x)), then + MLP(LN(x)) (4× GELU)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, H, L, hd)
        y = F.scaled_dot_product_attention(_rotate(q, cos, sin), _rotate(k, cos, sin), v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, length, width))  # (B, L, D)
        return x + self.mlp(self.norm2(x))


class CausalTransformerLM(nn.Module):
    """Token embedding → ``layers`` pre-norm blocks (causal SDPA with rotary positions, no length limit) →
    final LayerNorm → LM head. tokens (B, L) → logits (B, L, V)."""

    def __init__(self, vocab_size: int, width: int, layers: int, heads: int):
        super().__init__()
        if width % heads or (width // heads) % 2:
            raise ValueError(f"width: {width} must split into {heads} heads of an even size")
        self.embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        hd = width // heads
        self.register_buffer("inv_freq", 10_000.0 ** (-torch.arange(0, hd, 2).float() / hd), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (B, L, D)
        angles = torch.arange(tokens.shape[1], device=tokens.device).float()[:, None] * self.inv_freq  # (L, hd/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))  # (B, L, V)


def transformer_parameters(vocab_size: int, width: int, layers: int) -> int:
    """Parameter count of ``CausalTransformerLM(vocab_size, width, layers, ·)`` (heads do not change it)."""
    per_layer = 4 * width + 4 * width * width + 8 * width * width + 5 * width  # 2 norms, qkv + proj, MLP
    return 2 * vocab_size * width + layers * per_layer + 2 * width


def transformer_shape(target: int, vocab_size: int, tolerance: float = 0.1) -> tuple[int, int, int]:
    """(width, layers, heads) of a Transformer within ``tolerance`` of ``target`` parameters: heads of 64
    channels where some width fits (multiples of 8 otherwise, one head per 64 channels), and of the fits the one
    whose width / layers is closest to 32 (e.g. 8 layers × 256 for 6.1M parameters)."""
    for step in (64, 8):
        fits = []
        for width in range(step, 4097, step):
            for layers in range(1, 65):
                err = abs(transformer_parameters(vocab_size, width, layers) - target) / target
                if err <= tolerance:
                    fits.append((abs(math.log(width / layers / 32)), err, width, layers))
        if fits:
            _, _, width, layers = min(fits)
            heads = max(1, width // 64)
            while (width // heads) % 2 or width % heads:
                heads -= 1
            return width, layers, heads
    raise ValueError(f"no Transformer within {tolerance:.0%} of {target:,} parameters with vocabulary {vocab_size}")


# ---------------------------------------------------------------------------------------------- mamba_ssm swap


class MambaSSMMixer(nn.Module):
    """A ``Mamba1Mixer``'s weights in mamba_ssm's ``Mamba`` (CUDA scan, causal-conv1d): (B, L, D) → (B, L, D).
    Training only: it returns no streaming state."""

    def __init__(self, ours: Mamba1Mixer, mamba_cls):
        super().__init__()
        d_model = ours.d_model
        self.inner = mamba_cls(
            d_model=d_model, d_state=ours.d_state, d_conv=ours.d_conv, expand=ours.d_inner // d_model,
            dt_rank=ours.dt_rank, conv_bias=ours.conv_bias is not None, bias=ours.in_proj.bias is not None,
        ).to(ours.A_log.device)
        m = self.inner
        with torch.no_grad():
            m.in_proj.weight.copy_(ours.in_proj.weight)
            m.conv1d.weight.copy_(ours.conv_weight[:, None, :])  # (E, 1, W)
            if ours.conv_bias is not None:
                m.conv1d.bias.copy_(ours.conv_bias)
            m.x_proj.weight.copy_(ours.x_proj.weight)
            m.dt_proj.weight.copy_(ours.dt_proj.weight)
            m.dt_proj.bias.copy_(ours.dt_proj.bias)
            m.A_log.copy_(ours.A_log)
            m.D.copy_(ours.D)
            m.out_proj.weight.copy_(ours.out_proj.weight)
            for name in ("in_proj", "out_proj"):
                if getattr(ours, name).bias is not None:
                    getattr(m, name).bias.copy_(getattr(ours, name).bias)

    def init_state(self, batch_size: int, device=None, dtype=None) -> None:
        """No streaming state: the backbone passes None back in."""
        return None

    def forward(self, x: torch.Tensor, state=None, return_state: bool = True):
        if state is not None:
            raise ValueError("MambaSSMMixer: mamba_ssm's Mamba takes no streaming state here")
        return self.inner(x), None


def mamba_ssm_class(device: torch.device):
    """mamba_ssm's ``Mamba`` module class, or the reason it is not available on ``device`` (a string)."""
    if device.type != "cuda":
        return "mamba_ssm needs CUDA"
    try:
        from mamba_ssm import Mamba
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return f"mamba_ssm does not import ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''})"
    return Mamba


def swap_mamba1_mixers(model: nn.Module, mamba_cls) -> int:
    """Replace every ``Mamba1Mixer`` inside ``model`` by a ``MambaSSMMixer`` with its weights; returns how many."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, Mamba1Mixer)]
    for parent, name, child in swaps:
        setattr(parent, name, MambaSSMMixer(child, mamba_cls))
    return len(swaps)


# ---------------------------------------------------------------------------------------------- timing


def _train_step(forward: Callable, model: nn.Module, tokens: torch.Tensor, device: torch.device) -> Callable:
    """One training step on ``tokens`` (B, L + 1[, K]): inputs are tokens[:, :-1], targets tokens[:, 1:]."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    def step():
        with autocast:
            logits = forward(inputs)  # (B, L[, K], V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _profile(step: Callable, device: torch.device, steps: int = 3, top: int = 10) -> list[tuple[str, float]]:
    """(name, ms per step) of the ``top`` kernels by device time (CPU ops by self time on CPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        sync(device)
    events = prof.key_averages()
    key = (lambda e: e.device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    ranked = sorted(events, key=key, reverse=True)[:top]
    return [(e.key, key(e) / 1e3 / steps) for e in ranked]


def time_training(model: nn.Module, forward: Callable, tokens: torch.Tensor, steps: int, warmup: int,
                  profile: bool = False) -> dict:
    """{ms (median ms/step), peak_mb, profile} of training ``model`` on ``tokens``."""
    device = tokens.device
    step = _train_step(forward, model, tokens, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync(device)
    times = step_times_ms(step, steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    top = _profile(step, device) if profile else None
    return {"ms": sorted(times)[len(times) // 2], "peak_mb": peak, "profile": top}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _batch_for(length: int, batch: int) -> int:
    """The batch that keeps ``batch`` × ``REFERENCE_LENGTH`` tokens per step at longer lengths."""
    return max(1, batch * REFERENCE_LENGTH // length) if length > REFERENCE_LENGTH else batch


def bench_train(presets: Sequence[str] = ("sc09_small",), length: int = REFERENCE_LENGTH, batch: int = 16,
                steps: int | None = None, warmup: int | None = None, device: str | None = None,
                profile: bool = False, tiny: bool = False, seed: int = 0, print_fn=print) -> list[dict]:
    """Time a training step of each model (see the module docstring) and print the table; returns its rows
    {model, params, ms, peak_mb, note}. ``tiny``: every model shrunk (TINY_OVERRIDES), L = 64, B = 2, on one
    CPU thread (too small to share out), for a smoke test. Lengths above 16,000 shrink the batch so that the
    tokens per step stay equal."""
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = torch.get_num_threads()
    if tiny and dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _bench_train(presets, length, batch, steps, warmup, dev, profile, tiny, seed, print_fn)
    finally:
        torch.set_num_threads(threads)


def _bench_train(presets, length, batch, steps, warmup, dev, profile, tiny, seed, print_fn) -> list[dict]:
    presets = list(presets) or ["sc09_small"]
    overrides = TINY_OVERRIDES if tiny else {}
    if tiny:
        length, batch = min(length, 64), min(batch, 2)
    steps = steps if steps is not None else (2 if tiny else 10)
    warmup = warmup if warmup is not None else (1 if tiny else 3)
    configs = {}
    for name in presets + ([S4D] if S4D not in presets else []):
        cfg = load_model_config(name, overrides)
        if cfg.kind != "lm":
            raise ValueError(f"presets: {name!r} is a {cfg.kind} preset; bench train times language models")
        configs[name] = cfg
    eff_batch = _batch_for(length, batch)
    vocab = configs[presets[0]].vocab_size
    g = torch.Generator().manual_seed(seed)

    def tokens_for(cfg) -> torch.Tensor:  # (B, L + 1) or (B, L + 1, K)
        shape = (eff_batch, length + 1) + ((cfg.n_codebooks,) if cfg.n_codebooks > 1 else ())
        return torch.randint(0, cfg.vocab_size, shape, generator=g).to(dev)

    mamba_cls = mamba_ssm_class(dev)
    rows, notes = [], []

    def run(name: str, build: Callable[[], tuple[nn.Module, Callable]], tokens: torch.Tensor, note: str = ""):
        torch.manual_seed(seed)
        model = forward = r = None
        try:
            model, forward = build()
            params = sum(p.numel() for p in model.parameters())
            r = time_training(model, forward, tokens, steps, warmup, profile)
        except torch.cuda.OutOfMemoryError:
            note = "out of memory"
        del model, forward
        _free(dev)  # after the except clause, which held the failed step's tensors
        if r is None:
            rows.append({"model": name, "params": None, "ms": None, "peak_mb": None, "note": note})
            print_fn(f"  {name}: out of memory")
            return
        rows.append({"model": name, "params": params, "ms": r["ms"], "peak_mb": r["peak_mb"], "note": note})
        peak = "" if r["peak_mb"] is None else f", peak {r['peak_mb']:,.0f} MB"
        print_fn(f"  {name}: {params:,} parameters, {r['ms']:.1f} ms/step{peak}")
        if r["profile"]:
            print_fn(f"profile {name}: top kernels, ms per step")
            for kernel, ms in r["profile"]:
                print_fn(f"  {ms:9.3f}  {kernel[:110]}")

    def ours(name):
        def build():
            model = build_model(configs[name]).to(dev).train()
            return model, lambda x: model(x, return_state=False)[0]  # as training calls it: no state built
        return build

    first_params = None
    for name in presets:
        run(name, ours(name), tokens_for(configs[name]))
        first_params = first_params or rows[-1]["params"]
    with torch.device("meta"):
        first_params = first_params or build_model(configs[presets[0]]).num_parameters()
    width, layers, heads = transformer_shape(first_params, vocab)

    def transformer():
        model = CausalTransformerLM(vocab, width, layers, heads).to(dev).train()
        return model, model

    single = configs[presets[0]].n_codebooks == 1
    run(TRANSFORMER, transformer, tokens_for(configs[presets[0]]) if single else
        torch.randint(0, vocab, (eff_batch, length + 1), generator=g).to(dev),
        f"causal SDPA, rotary positions, {layers} layers × {width}, {heads} heads")
    if S4D not in presets:
        run(S4D, ours(S4D), tokens_for(configs[S4D]))
    mamba_names = []
    for name in presets:
        if "mamba1" not in configs[name].backbone.stage_mixers():
            continue
        if isinstance(mamba_cls, str):
            notes.append(f"{name}+mamba_ssm skipped: {mamba_cls}")
            continue

        def swapped(name=name):
            model, forward = ours(name)()
            swap_mamba1_mixers(model, mamba_cls)
            return model, forward

        mamba_names.append(f"{name}+mamba_ssm")
        run(mamba_names[-1], swapped, tokens_for(configs[name]), "Mamba-1 mixers from mamba_ssm, weights copied")

    shrunk = f" (batch {batch} scaled to {eff_batch} to keep {batch * REFERENCE_LENGTH:,} tokens per step)" \
        if eff_batch != batch else ""
    precision = "bf16 autocast" if dev.type == "cuda" else "float32"
    print_fn(f"bench train: {device_name(dev)}, batch {eff_batch} × {length:,} tokens{shrunk}, {precision}, "
             f"forward + cross-entropy + backward + AdamW, median of {steps} steps after {warmup} warm-up"
             + (" [tiny models]" if tiny else ""))
    for note in [f"{r['model']}: {r['note']}" for r in rows if r["note"]] + notes:
        print_fn(note)
    baselines = [TRANSFORMER, S4D] + mamba_names[:1]
    print_table(rows, [Column("model", "model"), Column("params", "params", ",d"), Column("ms", "ms/step", ".1f"),
                       Column("peak_mb", "peak MB", ",.0f")],
                [Ratio("ms", "time", baselines, "model"), Ratio("peak_mb", "mem", baselines, "model")],
                print_fn=print_fn)
    return rows


__all__ = ["CausalTransformerLM", "MambaSSMMixer", "bench_train", "swap_mamba1_mixers", "time_training",
           "transformer_parameters", "transformer_shape"]
