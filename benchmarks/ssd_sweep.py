"""Launch sweep of the Mamba-2 SSD kernels on one CUDA GPU: correctness at a real size, then timings per launch.

Run from a clone with the project's virtual environment: ``.venv/bin/python benchmarks/ssd_sweep.py [--default]``.

1. Every output and gradient against the float32 chunked reference at (B 2, L 1000, H 8, G 2, P = N = 64, chunk
   256, D, z, dt_bias, initial state): float32 with the default launch, bf16 with the default launch and with
   each backward variant (1e-4 / 1e-2 relative).
2. Forward ms on the anchor shapes for each forward variant (outputs compared with the default's); the fastest
   chunk-scan ("fwd_*") and chunk-state ("state_*") settings combined by their sum over the shapes.
3. Forward+backward ms and peak memory for each backward variant on top of that combination (gradients compared
   with the default's), and the CUDA time per kernel of one forward+backward.
A variant is a set of ``SSDLaunch`` fields replaced in ``default_launch(False)`` (the 16-bit launch).
``--default`` runs the default launches only. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from audiomamba.kernels.reference import ssd_scan_chunked_ref
from audiomamba.kernels.ssd import SSDLaunch, default_launch, ssd_scan_triton

from audiomamba.bench.kernels import SCAN_SHAPES, SSD_CHUNK, SSD_HEADDIM, SSD_STATE, ssd_inputs
from audiomamba.bench.timing import median_ms, peak_mb

FWD_VARIANTS = {
    "default": {},
    "8 warps r128": {"fwd_warps": 8, "fwd_maxnreg": 128},
    "3 stages": {"fwd_stages": 3},
    "state bk 32": {"state_bk": 32},
}
BWD_VARIANTS = {
    "default": {},
    "dstate bk 64": {"dstate_bk": 64},
    "dstate bk 64 w16": {"dstate_bk": 64, "dstate_warps": 16},
    "one launch": {"bwd_split": False},
    "heads loops": {"bwd_min_programs": 1, "bwd_min_programs_source": 1},
}


def rel(a: torch.Tensor, r: torch.Tensor) -> float:
    return ((a.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30)).item()


def check(variants: dict, size=(2, 1000, 8, 2, SSD_HEADDIM, SSD_STATE, SSD_CHUNK), half=torch.bfloat16,
          device="cuda") -> bool:
    """Outputs and gradients against the float32 reference (float32: default launch; ``half``: each variant) at
    ``size`` = (B, L, H, G, P, N, chunk)."""
    torch.manual_seed(0)
    b, length, heads, groups, P, n, chunk = size

    def rnd(*shape):
        return torch.randn(*shape, device=device)

    base = [rnd(b, length, heads, P), rnd(b, length, heads) * 0.5, -torch.exp(rnd(heads) * 0.5),
            rnd(b, length, groups, n), rnd(b, length, groups, n), rnd(heads), rnd(b, length, heads, P),
            rnd(heads) * 0.5 - 2.0, rnd(b, heads, P, n)]
    names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "h0")
    ok = True
    cases = [("float32 default", torch.float32, {})] + [(f"{str(half)[6:]} {k}", half, v) for k, v in variants.items()]
    for label, dtype, fields in cases:
        ins = [t.to(dtype) if names[i] in ("x", "dt", "B", "C", "z") else t for i, t in enumerate(base)]
        ours = [t.clone().requires_grad_(True) for t in ins]
        ref = [t.detach().float().clone().requires_grad_(True) for t in ins]
        launch = dataclasses.replace(default_launch(dtype == torch.float32), **fields)
        try:
            y, hT = ssd_scan_triton(*ours[:5], chunk, *ours[5:8], True, ours[8], True, launch=launch)
            yr, hTr = ssd_scan_chunked_ref(*ref[:5], chunk, *ref[5:8], True, ref[8], True)
            gy, gh = torch.randn_like(yr), torch.randn_like(hTr)
            ((y.float() * gy).sum() + (hT * gh).sum()).backward()
            ((yr * gy).sum() + (hTr * gh).sum()).backward()
        except Exception as e:  # noqa: BLE001 - report the variant and go on
            print(f"check {label}: FAILED to run: {type(e).__name__}: {e}")
            ok = False
            continue
        tol = 1e-4 if dtype == torch.float32 else 1e-2
        errs = {"y": rel(y, yr), "final_state": rel(hT, hTr)}
        errs.update({"d" + k: rel(a.grad, r.grad) for k, a, r in zip(names, ours, ref)})
        bad = [k for k, v in errs.items() if not v <= tol]
        ok = ok and not bad
        print(f"check {label}: {'ok' if not bad else 'FAIL ' + ','.join(bad)} (tol {tol:g}) "
              + " ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    return ok


def _call(inputs: dict, launch: SSDLaunch) -> torch.Tensor:
    i = inputs
    return ssd_scan_triton(i["x"], i["dt"], i["A"], i["B"], i["C"], SSD_CHUNK, i["D"], i["z"], i["dt_bias"], True,
                           launch=launch)


def _leaves(inputs: dict) -> list[torch.Tensor]:
    return [t for t in inputs.values() if t.requires_grad]


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _profile(inputs: dict, dy: torch.Tensor, launch: SSDLaunch) -> str:
    """CUDA ms per kernel of one forward+backward, the 10 largest."""
    from torch.profiler import ProfilerActivity, profile

    _call(inputs, launch).backward(dy)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            for t in _leaves(inputs):
                t.grad = None
            _call(inputs, launch).backward(dy)
        torch.cuda.synchronize()
    rows = sorted(((e.key, e.device_time_total / 3e3) for e in prof.key_averages()), key=lambda r: -r[1])
    return ", ".join(f"{k[:40]} {v:.3f}" for k, v in rows[:10])


def sweep(fwd_variants: dict, bwd_variants: dict, shapes=SCAN_SHAPES, profile: bool = True) -> dict:
    """Forward sweep, combination of the fastest forward fields, forward+backward sweep (see the module doc)."""
    base = default_launch(False)
    inputs = []
    for batch, channels, length, _ in shapes:
        heads = max(1, channels // SSD_HEADDIM)
        inputs.append(((batch, heads, length), ssd_inputs(batch, heads, length)))
    out = {"fwd": {}, "fwd_bwd": {}}

    def sweep_fwd(variants):
        for name, fields in variants.items():
            launch = dataclasses.replace(base, **fields)
            out["fwd"][name] = []
            for (shape, inp), first in zip(inputs, firsts):
                try:
                    with torch.no_grad():
                        y = _call(inp, launch)
                        first.setdefault("y", y)
                        diff = rel(y, first["y"])
                        del y
                        ms = median_ms(lambda inp=inp, launch=launch: _call(inp, launch))
                except Exception as e:  # noqa: BLE001 - report the variant and go on
                    print(f"ssd fwd {shape} {name:<20} FAILED: {type(e).__name__}: {e}")
                    ms, diff = None, float("nan")
                out["fwd"][name].append(ms)
                print(f"ssd fwd {shape} {name:<20} {_fmt(ms)} ms  y vs default {diff:.1e}"
                      + ("" if diff <= 1e-2 else "  MISMATCH"))

    def total(ts):
        return float("inf") if None in ts else sum(ts)

    firsts = [{} for _ in inputs]
    sweep_fwd(fwd_variants)
    combined = {}
    for prefix in ("fwd_", "state_"):  # the fastest variant of each kernel family, if it beats the default
        cands = [(total(out["fwd"][k]), v) for k, v in fwd_variants.items()
                 if v and all(f.startswith(prefix) for f in v)]
        best = min(cands, key=lambda c: c[0], default=None)
        if best is not None and best[0] < total(out["fwd"]["default"]):
            combined.update(best[1])
    if len([p for p in ("fwd_", "state_") if any(f.startswith(p) for f in combined)]) > 1:
        sweep_fwd({"combined": combined})
    print(f"combined forward fields: {combined}")
    for shape, inp in inputs:
        dy = torch.randn_like(inp["x"])
        first = None
        for name, fields in bwd_variants.items():
            launch = dataclasses.replace(base, **{**combined, **fields})
            out["fwd_bwd"].setdefault(name, [])

            def fwd_bwd(inp=inp, dy=dy, launch=launch):
                _call(inp, launch).backward(dy)

            try:
                for t in _leaves(inp):
                    t.grad = None
                fwd_bwd()
                grads = [t.grad.float().clone() for t in _leaves(inp)]
                first = first or grads
                diff = max(rel(a, r) for a, r in zip(grads, first))
                del grads
                ms = median_ms(fwd_bwd, grad_to_none=_leaves(inp))
                mem = peak_mb(fwd_bwd)
            except Exception as e:  # noqa: BLE001 - report the variant and go on
                print(f"ssd fwd+bwd {shape} {name:<20} FAILED: {type(e).__name__}: {e}")
                ms, mem, diff = None, None, float("nan")
            out["fwd_bwd"][name].append(ms)
            print(f"ssd fwd+bwd {shape} {name:<20} {_fmt(ms)} ms  peak {'-' if mem is None else f'{mem:.0f}'} MB  "
                  f"grads vs default {diff:.1e}" + ("" if diff <= 1e-2 else "  MISMATCH"))
        if profile:
            print(f"   {shape} per fwd+bwd (ms): {_profile(inp, dy, dataclasses.replace(base, **combined))}")
        for t in _leaves(inp):
            t.grad = None
        del dy, first
        torch.cuda.empty_cache()
    labels = [str(s) for s, _ in inputs]
    print("")
    print(f"{'ssd variant (ms)':<34}" + "".join(f"{s:>18}" for s in labels))
    for kind, table in (("fwd", out["fwd"]), ("fwd+bwd", out["fwd_bwd"])):
        for name, ts in table.items():
            print(f"{kind + ' ' + name:<34}" + "".join(f"{_fmt(t):>18}" for t in ts))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--default", action="store_true", help="only the default launches")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-kernel profile")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    fwd = {"default": {}} if args.default else FWD_VARIANTS
    bwd = {"default": {}} if args.default else BWD_VARIANTS
    passed = check(bwd)
    sweep(fwd, bwd, profile=not args.no_profile)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
