"""Kernel benchmarks behind ``audiomamba bench kernels`` (re-exported by ``audiomamba.bench``).

``bench_kernels``: the Mamba-1 selective scan and the Mamba-2 SSD on the issue's shapes, ours against the
plain-PyTorch reference (where it fits in time) and mamba_ssm's kernels when that package is importable:
forward and forward+backward median milliseconds (``triton.testing.do_bench``), ours as a multiple of the
roofline floor, and the peak memory of forward+backward. Imports only torch, triton and audiomamba.kernels.
"""

from __future__ import annotations

import time

import torch

# (batch, channels, length, state size) of the table; bf16 with z, D, delta_bias and softplus.
SCAN_SHAPES = ((8, 1536, 2048, 16), (16, 128, 16384, 16), (8, 256, 65536, 16))
SSD_HEADDIM, SSD_STATE, SSD_CHUNK = 64, 64, 256


def _sync():
    torch.cuda.synchronize()


def measure_copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    import triton.testing

    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return nbytes / (ms * 1e-3)


def measure_exp_rate() -> float:
    """Measured exp2 throughput of the GPU (special-function unit), in exponentials per second."""
    import triton
    import triton.language as tl
    import triton.testing

    @triton.jit
    def _exp_kernel(x_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs)
        a = x
        b = x + 0.5
        c = x + 0.25
        d = x + 0.125
        for _ in range(ITERS):
            a = tl.exp2(a * -0.5)
            b = tl.exp2(b * -0.5)
            c = tl.exp2(c * -0.5)
            d = tl.exp2(d * -0.5)
        tl.store(x_ptr + offs, a + b + c + d)

    block, iters = 1024, 512
    n = block * torch.cuda.get_device_properties(0).multi_processor_count * 32
    x = torch.rand(n, device="cuda")
    ms = triton.testing.do_bench(lambda: _exp_kernel[(n // block,)](x, ITERS=iters, BLOCK=block, num_warps=8),
                                 return_mode="median")
    return n * iters * 4 / (ms * 1e-3)


def _scan_inputs(batch, channels, length, n, dtype, channel_last, requires_grad, seed=0, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, device=device, generator=g) * scale

    def act(scale=1.0):  # (B, E, L) logical, physical (B, L, E) when channel_last
        t = rnd(batch, length, channels, scale=scale).transpose(1, 2) if channel_last else \
            rnd(batch, channels, length, scale=scale)
        return t.to(dtype).requires_grad_(requires_grad)

    def bc():
        t = rnd(batch, length, n).transpose(1, 2) if channel_last else rnd(batch, n, length)
        return t.to(dtype).requires_grad_(requires_grad)

    u, delta, z = act(), act(0.5), act()
    A = (-torch.exp(rnd(channels, n, scale=0.5))).requires_grad_(requires_grad)
    D = rnd(channels).requires_grad_(requires_grad)
    dtb = (rnd(channels, scale=0.5) - 4.0).requires_grad_(requires_grad)
    return dict(u=u, delta=delta, A=A, B=bc(), C=bc(), D=D, z=z, delta_bias=dtb)


def _grads_of(inputs):
    return [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]


def _time(fn, grad_to_none=None, budget_s=None):
    """Median ms of fn via do_bench, or None if a single call exceeds ``budget_s`` (or runs out of memory)."""
    import triton.testing

    try:
        if budget_s is not None:
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            if time.perf_counter() - t0 > budget_s:
                return None
        return triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median")
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def _measure(fwd, fwd_bwd, inputs, reference: bool):
    """(forward ms, forward+backward ms, peak MB of forward+backward) of one implementation; the reference gets a
    2 s budget per call (None where it is over budget or out of memory)."""
    budget = 2.0 if reference else None
    t_f = _time(fwd, budget_s=budget)
    t_fb = _time(fwd_bwd, grad_to_none=_grads_of(inputs), budget_s=budget) if t_f is not None else None
    for t in _grads_of(inputs):
        t.grad = None
    return t_f, t_fb, (_peak_mb(fwd_bwd) if t_fb is not None else None)


def _peak_mb(fn):
    _sync()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        fn()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    _sync()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def scan_floor_ms(batch, channels, length, n, elem_bytes, copy_bw, exp_rate):
    """Roofline floor of one forward: max(bytes / copy bandwidth, exponentials / exp rate), in ms."""
    nbytes = (4 * batch * channels * length + 2 * batch * n * length) * elem_bytes
    exps = batch * channels * length * n
    return max(nbytes / copy_bw, exps / exp_rate) * 1e3


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def bench_scan(shapes=SCAN_SHAPES, dtype=torch.bfloat16, layouts=("channel-first", "channel-last"),
               reference=True, mamba=True, config=None, copy_bw=None, exp_rate=None, print_fn=print):
    """Time the selective scan; returns a list of row dicts (also printed as a table)."""
    from audiomamba.kernels import mamba1_scan as ss_mod
    from audiomamba.kernels.mamba1_scan import selective_scan_triton
    from audiomamba.kernels.reference import selective_scan_chunked_ref

    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_scan
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        mamba_scan = None
    copy_bw = copy_bw or measure_copy_bandwidth()
    exp_rate = exp_rate or measure_exp_rate()
    ss_mod._CONFIG_OVERRIDES.clear()
    ss_mod._CONFIG_OVERRIDES.update(config or {})
    rows = []
    impls = [("ours", selective_scan_triton)]
    if reference:
        impls.append(("reference", selective_scan_chunked_ref))
    if mamba and mamba_scan is not None:
        impls.append(("mamba_ssm", mamba_scan))
    for shape in shapes:
        batch, channels, length, n = shape
        floor = scan_floor_ms(batch, channels, length, n, torch.finfo(dtype).bits // 8, copy_bw, exp_rate)
        for layout in layouts:
            cl = layout == "channel-last"
            for name, fn in impls:
                if name == "mamba_ssm" and cl:
                    continue  # mamba_ssm's kernel needs stride 1 along L
                inp = _scan_inputs(batch, channels, length, n, dtype, cl, requires_grad=True)
                def call(inp=inp, fn=fn):
                    return fn(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"],
                              inp["delta_bias"], delta_softplus=True)

                def fwd(call=call):
                    with torch.no_grad():
                        return call()

                dy = torch.randn(batch, channels, length, device="cuda", dtype=dtype)

                def fwd_bwd(call=call, dy=dy):
                    call().backward(dy)

                t_f, t_fb, mem = _measure(fwd, fwd_bwd, inp, name == "reference")
                row = dict(op="scan", shape=shape, layout=layout, impl=name, fwd_ms=t_f, fwd_bwd_ms=t_fb,
                           floor_ms=floor, x_floor=None if t_f is None else t_f / floor, peak_mb=mem)
                rows.append(row)
                print_fn(_row_text(row))
                del inp, dy
                torch.cuda.empty_cache()
    ss_mod._CONFIG_OVERRIDES.clear()
    return rows


def _ssd_inputs(batch, heads, length, dtype, requires_grad, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale)

    P, N = SSD_HEADDIM, SSD_STATE
    x = rnd(batch, length, heads, P).to(dtype).requires_grad_(requires_grad)
    dt = rnd(batch, length, heads, scale=0.5).to(dtype).requires_grad_(requires_grad)
    A = (-torch.exp(rnd(heads, scale=0.5))).requires_grad_(requires_grad)
    B = rnd(batch, length, 1, N).to(dtype).requires_grad_(requires_grad)
    C = rnd(batch, length, 1, N).to(dtype).requires_grad_(requires_grad)
    D = rnd(heads).requires_grad_(requires_grad)
    z = rnd(batch, length, heads, P).to(dtype).requires_grad_(requires_grad)
    dt_bias = (rnd(heads, scale=0.5) - 4.0).requires_grad_(requires_grad)
    return dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)


def bench_ssd(shapes=SCAN_SHAPES, dtype=torch.bfloat16, reference=True, mamba=True, print_fn=print):
    """Time the SSD scan (headdim 64, N 64, chunk 256; heads = channels / 64); returns row dicts."""
    from audiomamba.kernels.reference import ssd_scan_chunked_ref

    try:
        from audiomamba.kernels.ssd import ssd_scan_triton
    except Exception:  # noqa: BLE001
        ssd_scan_triton = None
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # noqa: BLE001
        mamba_chunk_scan_combined = None
    impls = []
    if ssd_scan_triton is not None:
        impls.append(("ours", lambda i: ssd_scan_triton(i["x"], i["dt"], i["A"], i["B"], i["C"], SSD_CHUNK, i["D"],
                                                        i["z"], i["dt_bias"], True)))
    if reference:
        impls.append(("reference", lambda i: ssd_scan_chunked_ref(i["x"], i["dt"], i["A"], i["B"], i["C"], SSD_CHUNK,
                                                                  i["D"], i["z"], i["dt_bias"], True)))
    if mamba and mamba_chunk_scan_combined is not None:
        impls.append(("mamba_ssm", lambda i: mamba_chunk_scan_combined(
            i["x"], i["dt"], i["A"], i["B"], i["C"], SSD_CHUNK, D=i["D"], z=i["z"], dt_bias=i["dt_bias"],
            dt_softplus=True)))
    rows = []
    for batch, channels, length, _ in shapes:
        heads = max(1, channels // SSD_HEADDIM)
        for name, fn in impls:
            inp = _ssd_inputs(batch, heads, length, dtype, True)
            dy = torch.randn(batch, length, heads, SSD_HEADDIM, device="cuda", dtype=dtype)

            def fwd(fn=fn, inp=inp):
                with torch.no_grad():
                    return fn(inp)

            def fwd_bwd(fn=fn, inp=inp, dy=dy):
                fn(inp).backward(dy)

            t_f, t_fb, mem = _measure(fwd, fwd_bwd, inp, name == "reference")
            row = dict(op="ssd", shape=(batch, heads, length, SSD_STATE), layout="(B, L, H, P)", impl=name,
                       fwd_ms=t_f, fwd_bwd_ms=t_fb, floor_ms=None, x_floor=None, peak_mb=mem)
            rows.append(row)
            print_fn(_row_text(row))
            del inp, dy
            torch.cuda.empty_cache()
    return rows


# Launch variants of the SSD kernels for 16-bit inputs, as overrides of kernels/ssd.py's configurations ("fwd":
# _FWD_CONFIG[False], the forward chunk scan; "state": _CHUNK_STATE_CONFIG, the forward's chunk-state kernel and state
# pass; "dstate": _DSTATE_CONFIG, the backward's chunk-dstate kernel; "bwd": _BWD_CONFIG[False], the [T, T] backward
# kernel). The forward sweep times each forward variant and combines the fastest "fwd" and "state" overrides; the
# forward+backward sweep runs each backward variant on top of that combination. The first of each is the default.
SSD_FWD_VARIANTS = {
    "default": {},
    "8 warps r128": {"fwd": {"warps": 8, "maxnreg": 128}},
    "3 stages": {"fwd": {"stages": 3}},
}
SSD_BWD_VARIANTS = {
    "default": {},
    "dstate bk 64": {"dstate": {"bk": 64}},
    "dstate bk 64 w16": {"dstate": {"bk": 64, "warps": 16}},
}


class _ssd_config:
    """Context manager: kernels/ssd.py's launch configurations with a variant's overrides, restored on exit."""

    def __init__(self, ssd, variant):
        self.ssd, self.variant = ssd, variant

    def _targets(self):
        ssd = self.ssd
        return {"fwd": (ssd._FWD_CONFIG, False), "bwd": (ssd._BWD_CONFIG, False), "state": (ssd.__dict__,
                "_CHUNK_STATE_CONFIG"), "dstate": (ssd.__dict__, "_DSTATE_CONFIG")}

    def __enter__(self):
        self.saved = []
        for key, over in self.variant.items():
            holder, name = self._targets()[key]
            self.saved.append((holder, name, holder[name]))
            holder[name] = {**holder[name], **over}
        return self

    def __exit__(self, *exc):
        for holder, name, old in reversed(self.saved):
            holder[name] = old
        return False


def check_ssd(variants=None, print_fn=print):
    """Every SSD output and gradient against the float32 chunked reference at a real size (B 2, L 1000, H 8, G 2,
    P = N = 64, chunk 256, D, z, dt_bias, initial state), float32 and bf16 (bf16 with the default backward launch and
    with loops over heads in both phases, or each of ``variants``, {name: overrides} as in SSD_BWD_VARIANTS). Returns
    True when all are
    within 1e-4 (float32) / 1e-2 (bf16) relative."""
    from audiomamba.kernels import ssd
    from audiomamba.kernels.reference import ssd_scan_chunked_ref

    torch.manual_seed(0)
    b, length, heads, P, groups, n, chunk = 2, 1000, 8, SSD_HEADDIM, 2, SSD_STATE, SSD_CHUNK
    base = [torch.randn(b, length, heads, P, device="cuda"), torch.randn(b, length, heads, device="cuda") * 0.5,
            -torch.exp(torch.randn(heads, device="cuda") * 0.5), torch.randn(b, length, groups, n, device="cuda"),
            torch.randn(b, length, groups, n, device="cuda"), torch.randn(heads, device="cuda"),
            torch.randn(b, length, heads, P, device="cuda"), torch.randn(heads, device="cuda") * 0.5 - 2.0,
            torch.randn(b, heads, P, n, device="cuda")]
    names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "h0")
    ok = True
    # "heads loops": the default launch with every program looping over the 4 heads of its group in both phases
    variants = variants or {"default": {}, "heads loops": {"bwd": {"min_programs": 1, "min_programs_source": 1}}}
    cases = [("float32", torch.float32, {})] + [("bf16 " + k, torch.bfloat16, v) for k, v in variants.items()]
    for label, dtype, variant in cases:
        ins = [t.to(dtype) if t.dim() >= 3 and i < 7 else t for i, t in enumerate(base)]
        ours = [t.clone().requires_grad_(True) for t in ins]
        ref = [t.detach().float().clone().requires_grad_(True) for t in ins]
        try:
            with _ssd_config(ssd, variant):
                y, hT = ssd.ssd_scan_triton(*ours[:5], chunk, *ours[5:8], True, ours[8], True)
                yr, hTr = ssd_scan_chunked_ref(*ref[:5], chunk, *ref[5:8], True, ref[8], True)
                gy, gh = torch.randn_like(yr), torch.randn_like(hTr)
                ((y.float() * gy).sum() + (hT * gh).sum()).backward()
                ((yr * gy).sum() + (hTr * gh).sum()).backward()
        except Exception as e:  # noqa: BLE001 - report the variant and go on
            print_fn(f"ssd check {label}: FAILED to run: {type(e).__name__}: {e}")
            ok = False
            continue
        tol = 1e-4 if dtype == torch.float32 else 1e-2

        def rel(a, r):
            return ((a.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30)).item()

        errs = {"y": rel(y, yr), "final_state": rel(hT, hTr)}
        errs.update({"d" + k: rel(a.grad, r.grad) for k, a, r in zip(names, ours, ref)})
        bad = [k for k, v in errs.items() if not v <= tol]
        ok = ok and not bad
        print_fn(f"ssd check {label}: {'ok' if not bad else 'FAIL ' + ','.join(bad)} (tol {tol:g}) "
                 + " ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    return ok


def bench_ssd_variants(shapes=SCAN_SHAPES, dtype=torch.bfloat16, fwd_variants=SSD_FWD_VARIANTS,
                       bwd_variants=SSD_BWD_VARIANTS, profile=True, print_fn=print):
    """Forward ms of our SSD on the bench shapes for each forward launch variant (outputs compared with the first
    variant's), the fastest "fwd" and "state" overrides combined (by the sum over the shapes); then
    forward+backward ms for each backward variant on top of that combination (gradients compared with the first
    variant's); with ``profile``, the CUDA time per kernel of one forward+backward (combination, first backward
    variant). Returns {"fwd": {variant: [ms per shape]}, "fwd_bwd": {...}, "combined": overrides}."""
    from audiomamba.kernels import ssd

    inputs = []
    for batch, channels, length, _ in shapes:
        heads = max(1, channels // SSD_HEADDIM)
        inputs.append(((batch, heads, length), _ssd_inputs(batch, heads, length, dtype, True)))

    def call(i):
        return ssd.ssd_scan_triton(i["x"], i["dt"], i["A"], i["B"], i["C"], SSD_CHUNK, i["D"], i["z"],
                                   i["dt_bias"], True)

    def rel(a, r):
        return ((a.float() - r.float()).norm() / r.float().norm().clamp_min(1e-30)).item()

    def sweep_fwd(variants, table):
        for name, variant in variants.items():
            table[name] = []
            for (shape, inp), first in zip(inputs, firsts):
                try:
                    with _ssd_config(ssd, variant), torch.no_grad():
                        y = call(inp)
                        first.setdefault("y", y)
                        diff = rel(y, first["y"])
                        del y
                        t_f = _time(lambda inp=inp: call(inp))
                except Exception as e:  # noqa: BLE001 - report the variant and go on
                    print_fn(f"ssd fwd {shape} {name:<24} FAILED: {type(e).__name__}: {e}")
                    t_f, diff = None, float("nan")
                table[name].append(t_f)
                print_fn(f"ssd fwd {shape} {name:<24} {_fmt(t_f)} ms  y vs first {diff:.1e}"
                         + ("" if diff <= 1e-2 else "  MISMATCH"))

    def total(ts):
        return float("inf") if None in ts else sum(ts)

    out = {"fwd": {}, "fwd_bwd": {}}
    firsts = [{} for _ in inputs]
    sweep_fwd(fwd_variants, out["fwd"])
    combined = {}
    for key in ("fwd", "state"):  # the fastest override of each kernel family, against the default
        cands = [(total(out["fwd"][k]), v[key]) for k, v in fwd_variants.items() if set(v) == {key}]
        best = min(cands, key=lambda c: c[0], default=None)
        if best is not None and best[0] < total(out["fwd"][next(iter(fwd_variants))]):
            combined[key] = best[1]
    out["combined"] = combined
    if len(combined) > 1:
        sweep_fwd({"combined": combined}, out["fwd"])
    print_fn(f"ssd combined forward overrides: {combined}")
    for (shape, inp) in inputs:
        dy = torch.randn_like(inp["x"])
        first = None
        for name, variant in bwd_variants.items():
            out["fwd_bwd"].setdefault(name, [])
            try:
                with _ssd_config(ssd, {**combined, **variant}):
                    for t in _grads_of(inp):
                        t.grad = None
                    call(inp).backward(dy)
                    grads = [t.grad.float().clone() for t in _grads_of(inp)]
                    first = first or grads
                    diff = max(rel(a, r) for a, r in zip(grads, first))
                    del grads
                    t_fb = _time(lambda inp=inp, dy=dy: call(inp).backward(dy), grad_to_none=_grads_of(inp))
                    mem = _peak_mb(lambda inp=inp, dy=dy: call(inp).backward(dy))
            except Exception as e:  # noqa: BLE001 - report the variant and go on
                print_fn(f"ssd fwd+bwd {shape} {name:<20} FAILED: {type(e).__name__}: {e}")
                t_fb, mem, diff = None, None, float("nan")
            out["fwd_bwd"][name].append(t_fb)
            print_fn(f"ssd fwd+bwd {shape} {name:<20} {_fmt(t_fb)} ms  peak {_fmt(mem, 0)} MB  grads vs first "
                     f"{diff:.1e}" + ("" if diff <= 1e-2 else "  MISMATCH"))
        del first
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            try:
                with _ssd_config(ssd, combined):
                    call(inp).backward(dy)
                    _sync()
                    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(3):
                            for t in _grads_of(inp):  # as timed: no gradient accumulation kernels
                                t.grad = None
                            call(inp).backward(dy)
                        _sync()
                rows = sorted(((e.key, e.device_time_total / 3e3) for e in prof.key_averages()),
                              key=lambda r: -r[1])
                print_fn(f"   {shape} per fwd+bwd (ms): " + ", ".join(f"{k[:40]} {v:.3f}" for k, v in rows[:10]))
            except Exception as e:  # noqa: BLE001 - the profile is a bonus
                print_fn(f"   profile failed: {type(e).__name__}: {e}")
        for t in _grads_of(inp):
            t.grad = None
        del dy
        torch.cuda.empty_cache()
    shapes_txt = [str(s) for s, _ in inputs]
    print_fn("")
    print_fn(f"{'ssd variant (ms)':<34}" + "".join(f"{s:>18}" for s in shapes_txt))
    for kind, table in (("fwd", out["fwd"]), ("fwd+bwd", out["fwd_bwd"])):
        for name, ts in table.items():
            print_fn(f"{kind + ' ' + name:<34}" + "".join(f"{_fmt(t):>18}" for t in ts))
    return out


HEADER = f"{'op':<5} {'shape':<24} {'layout':<14} {'impl':<10} {'fwd ms':>8} {'f+b ms':>8} {'floor':>7} " \
         f"{'x floor':>7} {'peak MB':>8}"


def _row_text(r):
    return (f"{r['op']:<5} {str(r['shape']):<24} {r['layout']:<14} {r['impl']:<10} {_fmt(r['fwd_ms']):>8} "
            f"{_fmt(r['fwd_bwd_ms']):>8} {_fmt(r['floor_ms']):>7} {_fmt(r['x_floor'], 2):>7} "
            f"{_fmt(r['peak_mb'], 0):>8}")


def bench_kernels(shapes=SCAN_SHAPES, dtype=torch.bfloat16, reference=True, mamba=True, ssd=True,
                  print_fn=print):
    """Print (and return) the kernel table: selective scan in both physical layouts, then SSD."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench kernels: needs a CUDA GPU")
    copy_bw = measure_copy_bandwidth()
    exp_rate = measure_exp_rate()
    print_fn(f"# {torch.cuda.get_device_name()}: copy {copy_bw / 1e12:.2f} TB/s (read+write), "
             f"exp2 {exp_rate / 1e12:.2f} T/s; floor = max(bytes/copy, exps/exp rate); {dtype}")
    print_fn(HEADER)
    rows = bench_scan(shapes, dtype, reference=reference, mamba=mamba, copy_bw=copy_bw, exp_rate=exp_rate,
                      print_fn=print_fn)
    if ssd:
        rows += bench_ssd(shapes, dtype, reference=reference, mamba=mamba, print_fn=print_fn)
    print_fn("")
    print_fn(HEADER)
    for r in rows:
        print_fn(_row_text(r))
    return rows


__all__ = ["bench_kernels", "bench_scan", "bench_ssd", "bench_ssd_variants", "check_ssd", "measure_copy_bandwidth",
           "measure_exp_rate", "scan_floor_ms"]


if __name__ == "__main__":  # python -m audiomamba.kernels.bench ssd [default]: SSD check at real size, then timings
    import sys

    if sys.argv[1:] not in (["ssd"], ["ssd", "default"]):
        raise SystemExit("usage: python -m audiomamba.kernels.bench ssd [default]  (default: only the default "
                         "launches; the full table: audiomamba bench kernels)")
    passed = check_ssd()
    only_default = sys.argv[2:] == ["default"]
    bench_ssd_variants(fwd_variants=dict(list(SSD_FWD_VARIANTS.items())[:1 if only_default else None]),
                       bwd_variants=dict(list(SSD_BWD_VARIANTS.items())[:1 if only_default else None]))
    raise SystemExit(0 if passed else 1)
