"""Driver of the recipes' GPU batch (recipes/gpu_batch/run.sh): time-boxed training runs, then evaluation.

    python recipes/gpu_batch/driver.py train NAME --runs DIR --budget SECONDS [--pair KEY] [overrides ...]
    python recipes/gpu_batch/driver.py eval PART --runs DIR --out DIR       (PART: classify | copy | fsdd_gen | music)
    python recipes/gpu_batch/driver.py table --runs DIR --out DIR

``train`` runs ``audiomamba.training.train`` on an experiment preset with a wall-clock budget. After a few
warm-up steps it measures its own step time and fits the run into the budget: it sets the number of steps (a
multiple of the validation interval) and the length of the cosine schedule to match, so that the learning rate
still decays to its floor. Two runs that share ``--pair`` agree on the smaller of their two step counts through
a file under ``--runs``, so that a Mamba model and its S4D baseline get the same number of steps. A Lightning
``Timer`` stops a run that falls behind anyway. Each run writes ``DIR/NAME/batch_result.json``.

``eval`` computes what the training loop does not: per-speaker accuracy, NLL over real samples only (no padded
silence), greedy and teacher-forced copying accuracy, generated WAVs and their classifier scores.
``table`` merges everything into results.json and a Markdown table (printed last).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

PAIRS_WAIT_S = 60.0
MARGIN = 1.2  # planned step time = measured x MARGIN: validation, loader hiccups and GPU sharing vary


def _write_atomic(path, feasible: int) -> None:
    """Write {"feasible": n} so that a reader never sees a half-written file."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps({"feasible": int(feasible)}))
    tmp.replace(path)


def fit_to_budget(*args, **kwargs):
    """A Lightning callback that fits max_steps and the LR schedule to a wall-clock deadline, from the step time
    measured over steps [warm, warm + probe). Arguments: see ``_Fit.__init__``."""
    import lightning as L

    class _Fit(L.Callback):
        def __init__(self, deadline: float, reserve_s: float, val_every: int, cap: int, pair_file, partner_file,
                     warm: int = 10, probe: int = 30):
            self.deadline, self.reserve, self.val_every, self.cap = deadline, reserve_s, val_every, cap
            self.pair_file, self.partner_file = pair_file, partner_file
            self.warm, self.probe, self.t_warm, self.planned = warm, probe, None, None
            self.seconds_per_step, self.feasible = None, None
            self.t_start, self.curve = time.time(), []  # curve: one {step, seconds, metrics} per validation

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.curve.append({"step": trainer.global_step, "seconds": round(time.time() - self.t_start, 1),
                               **metrics})

        def _partner(self):
            if self.partner_file is None or not Path(self.partner_file).exists():
                return None
            try:
                return int(json.loads(Path(self.partner_file).read_text())["feasible"])
            except (OSError, ValueError, KeyError):
                return None

        def _plan(self, trainer, pl_module, feasible: int) -> None:
            """Set max_steps and the cosine schedule's length for ``feasible`` steps (rounded down)."""
            from audiomamba.training.optim import warmup_cosine

            total = max(self.val_every, min(self.cap, feasible) // self.val_every * self.val_every)
            total = max(total, trainer.global_step + 1)
            self.feasible, self.planned = feasible, total
            trainer.fit_loop.epoch_loop.max_steps = total
            optim = pl_module.cfg.optim

            def schedule(s, w=optim.warmup_steps, t=total, r=optim.min_lr_ratio):
                return warmup_cosine(s, w, t, r)

            for config in trainer.lr_scheduler_configs:  # one LambdaLR, one lambda per parameter group
                config.scheduler.lr_lambdas = [schedule] * len(config.scheduler.lr_lambdas)
            print(f"[fit-to-budget] {self.seconds_per_step * 1000:.1f} ms/step -> {total} steps", flush=True)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step == self.warm:
                self.t_warm = time.time()
            if self.planned is not None:
                # both runs keep lowering their count to the other's: they end at the same, smallest one
                if self.pair_file is not None and step % 10 == 0:
                    other = self._partner()
                    if other is not None and other < self.feasible:
                        self._plan(trainer, pl_module, other)
                        _write_atomic(self.pair_file, other)
                return
            if step != self.warm + self.probe or self.t_warm is None:
                return
            # validation and the other runs on the GPU cost time too: plan with a margin
            self.seconds_per_step = (time.time() - self.t_warm) / self.probe * MARGIN
            feasible = step + int((self.deadline - self.reserve - time.time()) / self.seconds_per_step)
            if self.pair_file is not None:
                _write_atomic(self.pair_file, feasible)
                t0 = time.time()
                while not Path(self.partner_file).exists() and time.time() - t0 < PAIRS_WAIT_S:
                    time.sleep(1.0)
                # the wait used some of this run's time: count again, then take the smaller of the two
                feasible = step + int((self.deadline - self.reserve - time.time()) / self.seconds_per_step)
                other = self._partner()
                feasible = feasible if other is None else min(feasible, other)
                _write_atomic(self.pair_file, feasible)
            self._plan(trainer, pl_module, feasible)

    return _Fit(*args, **kwargs)


def cmd_train(args) -> int:
    from lightning.pytorch.callbacks import Timer

    from audiomamba.config import load_experiment_config
    from audiomamba.training import train

    start = time.time()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    overrides = list(args.overrides) + [f"trainer.output_dir={runs}", "trainer.progress_bar=false"]
    cfg = load_experiment_config(args.name, overrides)
    val_every = cfg.trainer.val_every_n_steps or 250
    pair_file = partner_file = None
    if args.pair and args.partner:
        pair_file = runs / f"pair_{args.pair}_{args.name}.json"
        partner_file = runs / f"pair_{args.pair}_{args.partner}.json"
    deadline = start + args.budget
    fit = fit_to_budget(deadline, args.reserve, val_every, cap=args.cap or cfg.trainer.max_steps * 3,
                      pair_file=pair_file, partner_file=partner_file, warm=args.warm, probe=args.probe)
    timer = Timer(duration=dict(seconds=max(30, int(deadline - args.reserve - time.time()))), interval="step")
    out = train(cfg, callbacks=[fit, timer], quiet=True)
    result = {"name": args.name, "metrics": out["metrics"], "model_dir": out["model_dir"],
              "planned_steps": fit.planned, "ms_per_step": None if fit.seconds_per_step is None
              else fit.seconds_per_step * 1000 / MARGIN, "wall_s": time.time() - start, "curve": fit.curve,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    (runs / args.name / "batch_result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)
    return 0


def _load_run(runs: Path, name: str):
    from audiomamba.config import load_experiment_config
    from audiomamba.models import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = runs / name
    cfg = load_experiment_config(str(run / "config.yaml"))
    return load_model(run / "model", device=device), cfg


def _safe(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # one failed evaluation must not hide the others
        import traceback

        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"}


def _concat_wavs(wav_dir: Path, dest: Path, n: int, sample_rate: int) -> None:
    import numpy as np
    import soundfile as sf

    clips = [sf.read(str(p), dtype="float32")[0] for p in sorted(wav_dir.glob("sample_*.wav"))[:n]]
    gap = np.zeros(sample_rate // 4, dtype=np.float32)
    sf.write(str(dest), np.concatenate([x for c in clips for x in (c, gap)]), sample_rate, subtype="PCM_16")


def cmd_eval(args) -> int:
    from audiomamba import evaluation
    from audiomamba.data.selective_copying import SelectiveCopying, copying_accuracy

    runs, out_dir = Path(args.runs), Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    t0 = time.time()
    if args.part == "classify":
        for name in ("fsdd_classification_causal", "fsdd_classification_bidirectional"):
            if (runs / name / "model").is_dir():
                model, cfg = _load_run(runs, name)
                res[name] = _safe(evaluation.classifier_accuracy, model, cfg, "test")
    elif args.part == "copy":
        for name in ("selective_copying_mamba", "selective_copying_s4d"):
            if (runs / name / "model").is_dir():
                model, cfg = _load_run(runs, name)
                sc = cfg.data.selective_copying
                ds = SelectiveCopying(args.n_copy, sc.context_length, sc.n_tokens, sc.vocab_size, seed=sc.seed + 2)
                res[name] = _safe(copying_accuracy, model, ds, 256)
    elif args.part == "music":
        for name in ("music_mamba", "music_s4d"):
            if (runs / name / "model").is_dir():
                model, cfg = _load_run(runs, name)
                res[name] = _safe(evaluation.segment_nll_bits, model, cfg, "val", batch_size=8,
                                  max_segments=args.max_segments)
    elif args.part == "fsdd_gen":
        clf_name = _best_classifier(runs)
        clf, clf_cfg = _load_run(runs, clf_name) if clf_name else (None, None)
        for name in args.models or ("fsdd_generation_mamba", "fsdd_generation_s4d"):
            if not (runs / name / "model").is_dir():
                continue
            model, cfg = _load_run(runs, name)
            entry = {"test_real_samples": _safe(evaluation.segment_nll_bits, model, cfg, "test", batch_size=16,
                                                max_segments=args.max_segments)}
            wav_dir = runs / name / "samples"
            gen = _safe(evaluation.evaluate_lm_generation, model, cfg, classifier=clf, classifier_cfg=clf_cfg,
                        n_samples=args.n_samples, out_dir=wav_dir, seed=0, batch_size=args.n_samples,
                        max_reference=args.max_reference)
            if "error" in gen and torch.cuda.is_available():  # once more without CUDA graphs, fewer clips
                gen = _safe(evaluation.evaluate_lm_generation, model, cfg, classifier=clf, classifier_cfg=clf_cfg,
                            n_samples=min(64, args.n_samples), out_dir=wav_dir, seed=0, batch_size=64,
                            max_reference=args.max_reference, cuda_graphs=False)
                gen["note"] = "generated without CUDA graphs after an error with them (see logs.txt)"
            entry["generation"], entry["scorer"] = gen, clf_name
            res[name] = entry
            if "error" not in gen:
                _concat_wavs(wav_dir, out_dir / f"{name}_samples.wav", 8, cfg.data.sample_rate)
    res["eval_seconds_" + args.part + ("_" + "_".join(args.models) if args.models else "")] = time.time() - t0
    tag = args.part + ("_" + "_".join(args.models) if args.models else "")
    (runs / f"eval_{tag}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res)[:2000], flush=True)
    return 0


def _best_classifier(runs: Path) -> str | None:
    """The classifier with the higher test accuracy (from its training run), as the generation scorer."""
    best, best_acc = None, -1.0
    for name in ("fsdd_classification_bidirectional", "fsdd_classification_causal"):
        f = runs / name / "batch_result.json"
        if f.is_file():
            acc = json.loads(f.read_text())["metrics"].get("test/acc", -1.0)
            if acc > best_acc:
                best, best_acc = name, acc
    return best


def _fmt(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if math.isfinite(x) else str(x)
    return str(x)


def cmd_table(args) -> int:
    runs, out_dir = Path(args.runs), Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"train": {}, "eval": {}}
    for f in sorted(runs.glob("*/batch_result.json")):
        results["train"][f.parent.name] = json.loads(f.read_text())
    for f in sorted(runs.glob("eval_*.json")):
        results["eval"].update(json.loads(f.read_text()))
    results["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    rows = ["| run | params | steps | ms/step | train wall s | result |", "|---|---|---|---|---|---|"]
    ev = results["eval"]
    for name, r in results["train"].items():
        m = r["metrics"]
        if "test/acc" in m:
            e = ev.get(name, {})
            per = ", ".join(f"{k} {v:.3f}" for k, v in e.get("per_speaker", {}).items())
            result = f"test acc {_fmt(m['test/acc'])} ({per})"
        elif name.startswith("selective_copying"):
            e = ev.get(name, {})
            result = (f"copy acc teacher-forced {_fmt(e.get('token_accuracy'))}, greedy "
                      f"{_fmt(e.get('generated_token_accuracy'))}, whole sequences {_fmt(e.get('sequence_accuracy'))}")
        elif name.startswith("music"):
            e = ev.get(name, {})
            result = (f"val NLL {_fmt(e.get('bits_per_sample'))} bits/sample over all val audio "
                      f"(center crops: {_fmt(m.get('test/bits'))})")
        else:
            e = ev.get(name, {})
            real = e.get("test_real_samples", {}).get("bits_per_sample")
            g = e.get("generation", {})
            result = (f"test NLL {_fmt(real)} bits/sample real audio ({_fmt(m.get('test/bits'))} padded clips); "
                      f"IS {_fmt(g.get('is'), 2)} mIS {_fmt(g.get('mis'), 2)} FID {_fmt(g.get('fid'), 2)} "
                      f"AM {_fmt(g.get('am'), 2)}")
        rows.append(f"| {name} | {m.get('parameters', '-')} | {m.get('steps', '-')} | {_fmt(r.get('ms_per_step'), 1)} "
                    f"| {_fmt(r.get('wall_s'), 0)} | {result} |")
    table = "\n".join(rows)
    (out_dir / "table.md").write_text(f"device: {results['device']}\n\n{table}\n")
    print(table)
    return 0


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_results(results: dict, date: str) -> dict[str, str]:
    """Markdown result blocks per recipe README, from the merged results of a batch."""
    train, ev, device = results["train"], results["eval"], results["device"]

    def common(name):
        r = train.get(name, {})
        m = r.get("metrics", {})
        return m, [f"{m.get('parameters', '-'):,}" if isinstance(m.get("parameters"), int) else "-",
                   m.get("steps", "-"), _fmt(r.get("ms_per_step"), 1), _fmt(r.get("wall_s"), 0)]

    n = len(train)
    how = (f"Measured by `bash recipes/gpu_batch/run.sh` on {device} ({date}): {n} runs trained at once (up to four "
           "per GPU), each fitted to a wall-clock budget after measuring its own speed; the two runs of a "
           "Mamba-vs-S4D pair train for the same number of steps. Steps, time per step (with the GPU shared by the "
           "runs) and wall time (all included) are per run.")
    head = ["model", "parameters", "steps", "ms/step", "wall s"]
    blocks = {}
    rows = [_row(head + ["copy accuracy (teacher-forced)", "greedy, per token", "greedy, whole sequences"]),
            _row(["---"] * 8)]
    for name in ("selective_copying_mamba", "selective_copying_s4d"):
        if name in train:
            _, c = common(name)
            e = ev.get(name, {})
            rows.append(_row([name] + c + [_fmt(e.get("token_accuracy"), 4), _fmt(e.get("generated_token_accuracy"), 4),
                                           _fmt(e.get("sequence_accuracy"), 4)]))
    blocks["selective_copying"] = how + f" Test: {ev.get('selective_copying_mamba', {}).get('n_examples', '-')} " \
        "examples.\n\n" + "\n".join(rows)
    rows = [_row(head + ["test accuracy", "per speaker"]), _row(["---"] * 7)]
    for name in ("fsdd_classification_causal", "fsdd_classification_bidirectional"):
        if name in train:
            m, c = common(name)
            per = ev.get(name, {}).get("per_speaker", {})
            rows.append(_row([name] + c + [_fmt(m.get("test/acc"), 4),
                                           ", ".join(f"{k} {v:.2f}" for k, v in per.items()) or "-"]))
    blocks["fsdd_classification"] = how + " Test: the 250 clips of take index 0-4.\n\n" + "\n".join(rows)
    rows = [_row(head + ["test NLL, real samples (bits)", "test NLL, padded clips", "IS", "mIS", "FID", "AM"]),
            _row(["---"] * 11)]
    ref = {}
    for name in ("fsdd_generation_mamba", "fsdd_generation_s4d"):
        if name in train:
            m, c = common(name)
            e = ev.get(name, {})
            g = e.get("generation", {})
            ref = g if "reference_is" in g else ref
            rows.append(_row([name] + c + [_fmt(e.get("test_real_samples", {}).get("bits_per_sample")),
                                           _fmt(m.get("test/bits")), _fmt(g.get("is"), 2), _fmt(g.get("mis"), 2),
                                           _fmt(g.get("fid"), 2), _fmt(g.get("am"), 2)]))
    scorer = ev.get("fsdd_generation_mamba", {}).get("scorer", "-")
    blocks["fsdd_generation"] = (how + f" Generation: {ref.get('n_generated', '-')} clips of 1 s per model at "
                                 f"temperature 1, scored by `{scorer}` against {ref.get('n_reference', '-')} real "
                                 f"training clips (real clips: IS {_fmt(ref.get('reference_is'), 2)}, classifier "
                                 f"accuracy {_fmt(ref.get('reference_accuracy'), 3)}).\n\n" + "\n".join(rows))
    rows = [_row(head + ["val NLL, all val audio (bits/sample)", "val NLL, 6 center crops"]), _row(["---"] * 7)]
    for name in ("music_mamba", "music_s4d"):
        if name in train:
            m, c = common(name)
            e = ev.get(name, {})
            rows.append(_row([name] + c + [_fmt(e.get("bits_per_sample")), _fmt(m.get("test/bits"))]))
    blocks["music"] = how + " Data: bach_piano, split as its README says.\n\n" + "\n".join(rows)
    # only the recipes with runs in this batch (a batch of a subset, ONLY=..., leaves the other READMEs alone)
    return {name: text for name, text in blocks.items() if text.count("\n| ") > 2}


def cmd_readme(args) -> int:
    """Write the result blocks into the recipes' READMEs (between <!-- results:NAME --> markers)."""
    import re

    results = json.loads(Path(args.results).read_text())
    import textwrap

    blocks = render_results(results, args.date)
    for name, text in blocks.items():  # wrap the prose paragraph, keep the table lines
        prose, _, table = text.partition("\n\n")
        blocks[name] = textwrap.fill(prose, 110) + "\n\n" + table
    root = Path(__file__).resolve().parent
    for name, text in blocks.items():
        readme = root / name / "README.md"
        old = readme.read_text()
        pattern = re.compile(rf"(<!-- results:{name} -->\n).*?(\n<!-- /results:{name} -->)", re.S)
        if not pattern.search(old):
            print(f"{readme}: no results markers", file=sys.stderr)
            continue
        readme.write_text(pattern.sub(lambda m, t=text: m.group(1) + t + m.group(2), old))
        print(f"updated {readme}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("name")
    t.add_argument("overrides", nargs="*")
    t.add_argument("--runs", required=True)
    t.add_argument("--budget", type=float, required=True, help="wall-clock seconds for this run, all included")
    t.add_argument("--reserve", type=float, default=25.0, help="seconds kept for the final test and export")
    t.add_argument("--cap", type=int, default=None, help="most steps (default: 3x the config's max_steps)")
    t.add_argument("--pair", default=None, help="runs with the same key agree on one step count")
    t.add_argument("--partner", default=None, help="the experiment name of the other run of the pair")
    t.add_argument("--warm", type=int, default=10, help="steps before the speed measurement (compilation)")
    t.add_argument("--probe", type=int, default=30, help="steps measured")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval")
    e.add_argument("part", choices=("classify", "copy", "fsdd_gen", "music"))
    e.add_argument("--runs", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--models", nargs="*", default=[])
    e.add_argument("--n-samples", type=int, default=256)
    e.add_argument("--n-copy", type=int, default=2048)
    e.add_argument("--max-segments", type=int, default=None, help="NLL on the first segments only (smoke test)")
    e.add_argument("--max-reference", type=int, default=2000, help="real clips for FID / AM")
    e.set_defaults(fn=cmd_eval)
    b = sub.add_parser("table")
    b.add_argument("--runs", required=True)
    b.add_argument("--out", required=True)
    b.set_defaults(fn=cmd_table)
    r = sub.add_parser("readme", help="write a batch's results.json into the recipes' READMEs")
    r.add_argument("--results", required=True)
    r.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    r.set_defaults(fn=cmd_readme)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
