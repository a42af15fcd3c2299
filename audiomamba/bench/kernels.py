"""``audiomamba bench kernels``: the Mamba-1 selective scan and the Mamba-2 SSD on one GPU.

Two kinds of shapes (B batch, E channels, L length, N state size):
- the anchor shapes ``SCAN_SHAPES`` (N = 16), in both physical layouts, against the chunked PyTorch reference;
- the shapes the model presets run in training: for each Mamba-1 stage of a preset, (B, E, L, N) with E, L and N
  from its config (``sc09_small`` at B = 16, L = 16,000: E = 128 / 256 / 512 at L = 16,000 / 4,000 / 1,000,
  N = 64), in the layout the models hand the scan (channel-last memory); Mamba-2 stages the same way for the SSD.
Then the inputs outside the fast path, at the anchor shapes: complex A (S4D-Lin), fixed (non-selective) B and C,
and both (``bench_scan_general``). Each row: forward and forward+backward median ms (bf16, z, D, delta_bias,
softplus), the forward's roofline floor, ours against it, the peak memory of forward+backward, and mamba_ssm's
kernels beside ours when the ``mamba_ssm`` package imports (the columns are left out otherwise). After the table,
per preset: the scan time of one training step (each stage's time × its number of blocks).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from audiomamba.config import load_model_config, model_preset_names
from audiomamba.kernels import selective_scan, selective_scan_chunked_ref, ssd_scan, ssd_scan_chunked_ref
from audiomamba.layers import MIXERS

from .timing import Column, device_name, median_ms, peak_mb, print_table

# (B, E, L, N): the anchor shapes of the Mamba-1 scan.
SCAN_SHAPES = ((8, 1536, 2048, 16), (16, 128, 16384, 16), (8, 256, 65536, 16))
SSD_HEADDIM, SSD_STATE, SSD_CHUNK = 64, 64, 256
# Nominal H200-class rates behind the floor column: exponentials per second (132 SMs × 16 special-function
# results per clock × 1.98 GHz) and copy bandwidth (bytes read + written per second).
EXP_RATE = 4.2e12
COPY_BANDWIDTH = 4.25e12


@dataclass(frozen=True)
class StageShape:
    """One stage of a preset as a kernel call: ``op`` "scan" (shape (B, E, L, N)) or "ssd" (shape (B, H, L, N),
    head dim ``headdim``, ``groups`` of B/C, ``chunk`` steps per chunk); ``blocks``: calls per training step."""

    op: str
    shape: tuple[int, int, int, int]
    preset: str
    stage: int
    blocks: int
    headdim: int = 0
    groups: int = 1
    chunk: int = 0


def _mixer_options(name: str, options: dict | None) -> dict:
    """A mixer's keyword arguments: its constructor defaults updated with the preset's options."""
    params = inspect.signature(MIXERS[name]).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **(options or {})}


def preset_stage_shapes(presets: Sequence[str], batch: int = 16, length: int = 16_000) -> list[StageShape]:
    """The scan and SSD calls of each preset's stages in a training step of ``batch`` × ``length`` samples."""
    out = []
    for preset in presets:
        config = load_model_config(preset)
        if config.arch != "backbone":  # a baseline without scans (logmel_cnn)
            continue
        bb = config.backbone
        rate = 1
        for s, (width, blocks, mixer) in enumerate(zip(bb.stage_widths(), bb.stage_blocks(), bb.stage_mixers())):
            steps = length // rate
            rate *= bb.pool[s] if s < len(bb.pool) else 1
            if blocks == 0 or mixer not in ("mamba1", "mamba2"):
                continue
            blocks *= 2 if bb.bidirectional else 1  # a bidirectional block scans both directions
            opts = _mixer_options(mixer, bb.mixer_options.get(mixer))
            inner = opts["expand"] * width
            if mixer == "mamba1":
                out.append(StageShape("scan", (batch, inner, steps, opts["d_state"]), preset, s, blocks))
            else:
                out.append(StageShape("ssd", (batch, inner // opts["headdim"], steps, opts["d_state"]), preset, s,
                                      blocks, opts["headdim"], opts["ngroups"], opts["chunk_size"]))
    return out


def scan_floor_ms(batch: int, channels: int, length: int, n: int, elem_bytes: int = 2,
                  exp_rate: float = EXP_RATE, copy_bw: float = COPY_BANDWIDTH) -> float:
    """Roofline floor of one scan forward in ms: max(B·E·L·N exponentials / exp_rate, bytes / copy_bw), bytes =
    reads of u, delta, z, B, C and the write of y."""
    nbytes = (4 * batch * channels * length + 2 * batch * n * length) * elem_bytes
    return max(batch * channels * length * n / exp_rate, nbytes / copy_bw) * 1e3


def measure_copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """This GPU's device-to-device copy bandwidth in bytes/s (bytes read plus bytes written)."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return nbytes / (median_ms(lambda: dst.copy_(src)) * 1e-3)


def measure_exp_rate() -> float:
    """This GPU's exp2 throughput (special-function unit), in exponentials per second."""
    import triton
    import triton.language as tl

    @triton.jit
    def _exp_kernel(x_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs)
        a, b, c, d = x, x + 0.5, x + 0.25, x + 0.125
        for _ in range(ITERS):
            a = tl.exp2(a * -0.5)
            b = tl.exp2(b * -0.5)
            c = tl.exp2(c * -0.5)
            d = tl.exp2(d * -0.5)
        tl.store(x_ptr + offs, a + b + c + d)

    block, iters = 1024, 512
    n = block * torch.cuda.get_device_properties(0).multi_processor_count * 32
    x = torch.rand(n, device="cuda")
    ms = median_ms(lambda: _exp_kernel[(n // block,)](x, ITERS=iters, BLOCK=block, num_warps=8))
    return n * iters * 4 / (ms * 1e-3)


def scan_inputs(batch: int, channels: int, length: int, n: int, dtype=torch.bfloat16, channel_last: bool = False,
                requires_grad: bool = True, seed: int = 0, device: str = "cuda") -> dict:
    """Random scan inputs {u, delta, A, B, C, D, z, delta_bias}: u, delta, z (B, E, L) and B, C (B, N, L) in
    ``dtype`` (views of (B, L, ·) memory when ``channel_last``); A (E, N), D, delta_bias (E,) float32."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, device=device, generator=g) * scale

    def seq(width, scale=1.0):  # (B, width, L) logical
        t = rnd(batch, length, width, scale=scale).transpose(1, 2) if channel_last else \
            rnd(batch, width, length, scale=scale)
        return t.to(dtype).requires_grad_(requires_grad)

    u, delta, z, B, C = seq(channels), seq(channels, 0.5), seq(channels), seq(n), seq(n)
    A = (-torch.exp(rnd(channels, n, scale=0.5))).requires_grad_(requires_grad)
    D = rnd(channels).requires_grad_(requires_grad)
    delta_bias = (rnd(channels, scale=0.5) - 4.0).requires_grad_(requires_grad)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)


def ssd_inputs(batch: int, heads: int, length: int, headdim: int = SSD_HEADDIM, n: int = SSD_STATE,
               groups: int = 1, dtype=torch.bfloat16, requires_grad: bool = True, seed: int = 0,
               device: str = "cuda") -> dict:
    """Random SSD inputs {x, dt, A, B, C, D, z, dt_bias}: x, z (B, L, H, P), dt (B, L, H), B, C (B, L, G, N) in
    ``dtype``; A, D, dt_bias (H,) float32."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0, cast=True):
        t = torch.randn(*shape, device=device, generator=g) * scale
        return (t.to(dtype) if cast else t).requires_grad_(requires_grad)

    return dict(
        x=rnd(batch, length, heads, headdim), dt=rnd(batch, length, heads, scale=0.5),
        A=(-torch.exp(torch.randn(heads, device=device, generator=g) * 0.5)).requires_grad_(requires_grad),
        B=rnd(batch, length, groups, n), C=rnd(batch, length, groups, n), D=rnd(heads, cast=False),
        z=rnd(batch, length, heads, headdim),
        dt_bias=(torch.randn(heads, device=device, generator=g) * 0.5 - 4.0).requires_grad_(requires_grad),
    )


def _leaves(inputs: dict) -> list[torch.Tensor]:
    return [t for t in inputs.values() if t.requires_grad]


def time_op(call: Callable[[dict], torch.Tensor], inputs: dict, budget_s: float | None = None) -> dict:
    """{fwd_ms, fwd_bwd_ms, peak_mb} of ``call(inputs)``: the forward without autograd, the forward+backward
    with a random output gradient (None where a call is over ``budget_s`` or out of memory)."""
    leaves = _leaves(inputs)

    def fwd():
        with torch.no_grad():
            return call(inputs)

    t_f = median_ms(fwd, budget_s=budget_s)
    out = {"fwd_ms": t_f, "fwd_bwd_ms": None, "peak_mb": None}
    if t_f is None:
        return out
    with torch.no_grad():
        dy = torch.randn_like(call(inputs))

    def fwd_bwd():
        call(inputs).backward(dy)

    out["fwd_bwd_ms"] = median_ms(fwd_bwd, grad_to_none=leaves, budget_s=budget_s)
    if out["fwd_bwd_ms"] is not None:
        for t in leaves:
            t.grad = None
        out["peak_mb"] = peak_mb(fwd_bwd)
    for t in leaves:
        t.grad = None
    return out


def _mamba_ssm_ops() -> tuple[Callable | None, Callable | None]:
    """mamba_ssm's selective_scan_fn and mamba_chunk_scan_combined, each None when it does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        selective_scan_fn = None
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # noqa: BLE001
        mamba_chunk_scan_combined = None
    return selective_scan_fn, mamba_chunk_scan_combined


def _scan_call(fn):
    def call(i):
        return fn(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"], delta_softplus=True)
    return call


def _ssd_call(fn, chunk, keywords=False):
    def call(i):
        if keywords:  # mamba_ssm's argument names
            return fn(i["x"], i["dt"], i["A"], i["B"], i["C"], chunk, D=i["D"], z=i["z"], dt_bias=i["dt_bias"],
                      dt_softplus=True)
        return fn(i["x"], i["dt"], i["A"], i["B"], i["C"], chunk, i["D"], i["z"], i["dt_bias"], True)
    return call


def _with_mamba(row: dict, theirs: dict | None) -> dict:
    """Add mamba_ssm's times and ours / theirs to ``row``."""
    if theirs is None:
        return row
    row["mamba_fwd_ms"], row["mamba_fwd_bwd_ms"] = theirs["fwd_ms"], theirs["fwd_bwd_ms"]
    for key in ("fwd_ms", "fwd_bwd_ms"):
        a, b = row.get(key), theirs[key]
        row["vs_mamba_" + key] = None if a is None or not b else a / b
    return row


def bench_scan(stages: Sequence[StageShape] = (), anchors: Sequence[tuple] = SCAN_SHAPES, dtype=torch.bfloat16,
               reference: bool = True, mamba: bool = True, print_fn=print) -> list[dict]:
    """Rows for the selective scan: the anchor shapes in both layouts (and the reference, 2 s budget per call),
    then each distinct stage shape in the models' layout (channel-last); mamba_ssm's times in every row when it
    imports (its kernel needs stride 1 along L: timed channel-first)."""
    mamba_scan = _mamba_ssm_ops()[0] if mamba else None
    elem = torch.finfo(dtype).bits // 8
    jobs = [(shape, "anchor", layout) for shape in anchors for layout in ("channel-first", "channel-last")]
    seen = set()
    for st in stages:
        if st.op == "scan" and st.shape not in seen:
            seen.add(st.shape)
            users = sorted({f"{o.preset} s{o.stage}" for o in stages if o.op == "scan" and o.shape == st.shape})
            jobs.append((st.shape, ", ".join(users), "channel-last"))
    rows, theirs = [], {}
    for shape, source, layout in jobs:
        batch, channels, length, n = shape
        if mamba_scan is not None and shape not in theirs:
            theirs[shape] = time_op(_scan_call(mamba_scan), scan_inputs(*shape, dtype))
            torch.cuda.empty_cache()
        impls = [("ours", selective_scan)]
        if reference and source == "anchor":
            impls.append(("reference", selective_scan_chunked_ref))
        floor = scan_floor_ms(batch, channels, length, n, elem)
        for impl, fn in impls:
            inputs = scan_inputs(*shape, dtype, channel_last=layout == "channel-last")
            r = time_op(_scan_call(fn), inputs, budget_s=2.0 if impl == "reference" else None)
            row = dict(op="scan", shape=str(shape), source=source, layout=layout, impl=impl, floor_ms=floor, **r)
            row["x_floor"] = None if r["fwd_ms"] is None else r["fwd_ms"] / floor
            row["fb_over_f"] = None if r["fwd_bwd_ms"] is None else r["fwd_bwd_ms"] / r["fwd_ms"]
            rows.append(_with_mamba(row, theirs.get(shape) if impl == "ours" else None))
            print_fn(f"  scan {shape} {layout} {impl}: fwd {_ms(r['fwd_ms'])} f+b {_ms(r['fwd_bwd_ms'])} ms")
            del inputs
            torch.cuda.empty_cache()
    return rows


# The inputs outside the fast path (mamba_ssm accepts them too): (label, complex A, input-dependent B and C).
GENERAL_KINDS = (("complex A", True, True), ("fixed B, C", False, False), ("complex A, fixed B, C", True, False))


def general_scan_inputs(batch: int, channels: int, length: int, n: int, complex_a: bool, variable_bc: bool,
                        dtype=torch.bfloat16, seed: int = 0, device: str = "cuda") -> dict:
    """``scan_inputs`` (channel-first) with an S4D-Lin complex A (E, N) complex64 (real part -exp(·), imaginary
    part π n) and/or fixed B, C (E, N) (float32, or complex64 with a complex A); input-dependent B, C with a
    complex A are mamba_ssm's real (B, N, 2L) with (real, imaginary) pairs along time."""
    inputs = scan_inputs(batch, channels, length, n, dtype, seed=seed, device=device)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    wtype = torch.complex64 if complex_a else torch.float32
    if complex_a:
        A = torch.complex(inputs["A"].detach(), torch.pi * torch.arange(n, device=device).float().expand(channels, n))
        inputs["A"] = A.requires_grad_(True)
    for key in ("B", "C"):
        if not variable_bc:
            inputs[key] = torch.randn(channels, n, device=device, generator=g, dtype=wtype).requires_grad_(True)
        elif complex_a:
            t = torch.randn(batch, n, 2 * length, device=device, generator=g)
            inputs[key] = t.to(dtype).requires_grad_(True)
    return inputs


def bench_scan_general(anchors: Sequence[tuple] = SCAN_SHAPES, dtype=torch.bfloat16, mamba: bool = True,
                       print_fn=print) -> list[dict]:
    """Rows for the scan's general kernel (``GENERAL_KINDS``) at the anchor shapes, channel-first (the layout
    mamba_ssm needs), with mamba_ssm's times when it imports. The floor counts three special-function results per
    complex state update (exp, cos, sin) and the B, C bytes only when input-dependent."""
    mamba_scan = _mamba_ssm_ops()[0] if mamba else None
    elem = torch.finfo(dtype).bits // 8
    rows = []
    for label, complex_a, variable_bc in GENERAL_KINDS:
        for shape in anchors:
            batch, channels, length, n = shape
            args = (*shape, complex_a, variable_bc, dtype)
            nbytes = (4 * batch * channels * length + variable_bc * 2 * batch * n * length * (1 + complex_a)) * elem
            floor = max(batch * channels * length * n * (3 if complex_a else 1) / EXP_RATE,
                        nbytes / COPY_BANDWIDTH) * 1e3
            theirs = None
            if mamba_scan is not None:
                theirs = time_op(_scan_call(mamba_scan), general_scan_inputs(*args))
                torch.cuda.empty_cache()
            r = time_op(_scan_call(selective_scan), general_scan_inputs(*args))
            row = dict(op="scan", shape=str(shape), source=label, layout="channel-first", impl="ours",
                       floor_ms=floor, **r)
            row["x_floor"] = None if r["fwd_ms"] is None else r["fwd_ms"] / floor
            row["fb_over_f"] = None if r["fwd_bwd_ms"] is None else r["fwd_bwd_ms"] / r["fwd_ms"]
            rows.append(_with_mamba(row, theirs))
            print_fn(f"  scan {shape} {label} ours: fwd {_ms(r['fwd_ms'])} f+b {_ms(r['fwd_bwd_ms'])} ms")
            torch.cuda.empty_cache()
    return rows


def bench_ssd(stages: Sequence[StageShape] = (), anchors: Sequence[tuple] = SCAN_SHAPES, dtype=torch.bfloat16,
              reference: bool = True, mamba: bool = True, print_fn=print) -> list[dict]:
    """Rows for the SSD scan: the anchor shapes as (B, E / 64 heads, L, N = 64) with head dim 64 and chunk 256
    (and the reference, 2 s budget per call), then each distinct Mamba-2 stage of the presets."""
    mamba_ssd = _mamba_ssm_ops()[1] if mamba else None
    jobs = [((b, max(1, e // SSD_HEADDIM), length, SSD_STATE), SSD_HEADDIM, 1, SSD_CHUNK, "anchor")
            for b, e, length, _ in anchors]
    seen = set()
    for st in stages:
        key = (st.shape, st.headdim, st.groups, st.chunk)
        if st.op == "ssd" and key not in seen:
            seen.add(key)
            users = sorted({f"{o.preset} s{o.stage}" for o in stages
                            if o.op == "ssd" and (o.shape, o.headdim, o.groups, o.chunk) == key})
            jobs.append((*key, ", ".join(users)))
    rows = []
    for shape, headdim, groups, chunk, source in jobs:
        batch, heads, length, n = shape
        args = (batch, heads, length, headdim, n, groups, dtype)
        theirs = time_op(_ssd_call(mamba_ssd, chunk, keywords=True), ssd_inputs(*args)) if mamba_ssd else None
        impls = [("ours", ssd_scan)] + ([("reference", ssd_scan_chunked_ref)] if reference and source == "anchor"
                                        else [])
        for impl, fn in impls:
            r = time_op(_ssd_call(fn, chunk), ssd_inputs(*args), budget_s=2.0 if impl == "reference" else None)
            row = dict(op="ssd", shape=str(shape), source=source, layout=f"P {headdim}, Q {chunk}", impl=impl, **r)
            row["fb_over_f"] = None if r["fwd_bwd_ms"] is None else r["fwd_bwd_ms"] / r["fwd_ms"]
            rows.append(_with_mamba(row, theirs if impl == "ours" else None))
            print_fn(f"  ssd {shape} {impl}: fwd {_ms(r['fwd_ms'])} f+b {_ms(r['fwd_bwd_ms'])} ms")
            torch.cuda.empty_cache()
    return rows


def _ms(x):
    return "-" if x is None else f"{x:.3f}"


COLUMNS = [
    Column("op", "op"), Column("shape", "shape (B, E|H, L, N)"), Column("source", "source"),
    Column("layout", "layout"), Column("impl", "impl"), Column("fwd_ms", "fwd ms", ".3f"),
    Column("fwd_bwd_ms", "f+b ms", ".3f"), Column("floor_ms", "floor ms", ".3f"), Column("x_floor", "fwd/floor", ".2f"),
    Column("fb_over_f", "f+b/fwd", ".2f"), Column("peak_mb", "peak MB", ".0f"),
]
MAMBA_COLUMNS = [
    Column("mamba_fwd_ms", "mamba_ssm fwd", ".3f"), Column("mamba_fwd_bwd_ms", "mamba_ssm f+b", ".3f"),
    Column("vs_mamba_fwd_ms", "fwd/mamba_ssm", ".2f"), Column("vs_mamba_fwd_bwd_ms", "f+b/mamba_ssm", ".2f"),
]


def step_totals(rows: Sequence[dict], stages: Sequence[StageShape]) -> list[dict]:
    """Per preset: Σ over its stages of blocks × (ours fwd ms, f+b ms, floor ms) at the stage's shape."""
    ours = {(r["op"], r["shape"]): r for r in rows if r["impl"] == "ours" and r["source"] != "anchor"}
    totals: dict[str, dict] = {}
    for st in stages:
        r = ours.get((st.op, str(st.shape)))
        t = totals.setdefault(st.preset, {"preset": st.preset, "fwd_ms": 0.0, "fwd_bwd_ms": 0.0, "floor_ms": 0.0})
        for key in ("fwd_ms", "fwd_bwd_ms", "floor_ms"):
            value = None if r is None else r.get(key)
            t[key] = None if value is None or t[key] is None else t[key] + st.blocks * value
    return list(totals.values())


def bench_kernels(presets: Sequence[str] | None = None, batch: int = 16, length: int = 16_000,
                  dtype=torch.bfloat16, reference: bool = True, mamba: bool = True, ssd: bool = True,
                  print_fn=print) -> list[dict]:
    """Print (and return) the kernel table: the scan at the anchor shapes and at every preset's Mamba-1 stages
    (``presets``: default every shipped preset) for a training step of ``batch`` × ``length``, then the SSD."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench kernels: needs a CUDA GPU")
    presets = list(presets) if presets else model_preset_names()
    stages = preset_stage_shapes(presets, batch, length)
    have_mamba = mamba and _mamba_ssm_ops()[0] is not None
    copy_bw, exp_rate = measure_copy_bandwidth(), measure_exp_rate()
    print_fn(f"# {device_name('cuda')}: measured copy {copy_bw / 1e12:.2f} TB/s (read+write), exp2 "
             f"{exp_rate / 1e12:.2f} T/s")
    print_fn(f"# floor = max(B·E·L·N / {EXP_RATE:.2g} exp/s, bytes / {COPY_BANDWIDTH:.3g} B/s) (H200-class rates); "
             f"{str(dtype).replace('torch.', '')}, z, D, delta_bias, softplus; presets at batch {batch} × "
             f"{length:,} samples; " + ("mamba_ssm imported" if have_mamba else
                                        "mamba_ssm does not import: its columns are left out"))
    rows = bench_scan(stages, dtype=dtype, reference=reference, mamba=mamba, print_fn=print_fn)
    rows += bench_scan_general(dtype=dtype, mamba=mamba, print_fn=print_fn)
    if ssd:
        rows += bench_ssd(stages, dtype=dtype, reference=reference, mamba=mamba, print_fn=print_fn)
    print_fn("")
    print_table(rows, COLUMNS + (MAMBA_COLUMNS if have_mamba else []), print_fn=print_fn)
    totals = step_totals(rows, [s for s in stages if s.op == "scan"])
    if totals:
        print_fn("")
        print_fn("Mamba-1 scan per training step (Σ stages blocks × time at the stage's shape):")
        for t in totals:
            t["x_floor"] = None if t["fwd_ms"] is None or not t["floor_ms"] else t["fwd_ms"] / t["floor_ms"]
        print_table(totals, [Column("preset", "preset"), Column("fwd_ms", "fwd ms", ".1f"),
                             Column("fwd_bwd_ms", "f+b ms", ".1f"), Column("floor_ms", "fwd floor ms", ".1f"),
                             Column("x_floor", "fwd/floor", ".2f")], print_fn=print_fn)
    return rows


__all__ = ["GENERAL_KINDS", "SCAN_SHAPES", "StageShape", "bench_kernels", "bench_scan", "bench_scan_general",
           "bench_ssd", "general_scan_inputs", "measure_copy_bandwidth",
           "measure_exp_rate", "preset_stage_shapes", "scan_floor_ms", "scan_inputs", "ssd_inputs", "time_op"]
