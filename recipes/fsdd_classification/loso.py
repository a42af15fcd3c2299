"""Leave-one-speaker-out (LOSO) cross-validation of FSDD digit classifiers, through the normal training entry
point (``audiomamba.training.train``), with the conventional split as a second figure.

    # every fold of one experiment, one after another, then the table
    python recipes/fsdd_classification/loso.py run fsdd_classification_logmel_cnn --root ../shared/data/fsdd \
        [--augment] [--conventional] [--runs outputs/loso] [--budget SECONDS] [overrides ...]
    # one fold (a held-out speaker, or "conventional": take index 0-4 = test)
    python recipes/fsdd_classification/loso.py fold fsdd_classification_causal --root DIR --speaker theo ...
    # the table of every fold found under --runs (Markdown, also written to --out)
    python recipes/fsdd_classification/loso.py table --runs outputs/loso [--out loso.md]

Fold of speaker S: ``data.split=speaker data.test_speaker=S``: all 500 clips of S are the test set, a seeded 10 %
of the other four speakers' clips the validation set (model selection: the checkpoint with the best validation
loss), the rest training. ``--augment`` trains with the preset ``data/fsdd_augmented.yaml``
(``defaults.data=fsdd_augmented``). Overrides (``key=value``) go to every fold, e.g. ``trainer.max_steps=300``.
``--budget`` fits each fold's steps and learning-rate schedule to that many wall-clock seconds (after measuring
its own speed), as ``recipes/gpu_batch`` does. Each fold writes ``RUNS/<experiment>[+aug]/<fold>/loso.json``;
``--reuse`` skips folds that have one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from pathlib import Path

CONVENTIONAL = "conventional"
FSDD_REGEX = r"^(?P<label>\d)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)\.wav$"
RESULT_FILE = "loso.json"
RESERVE_S = 20.0  # of a budget: testing the best checkpoint and exporting the model


def speakers_of(root: str | Path) -> list[str]:
    """The FSDD speakers under ``root`` (sorted names from ``{digit}_{speaker}_{index}.wav`` files)."""
    pattern = re.compile(FSDD_REGEX)
    names = {m.group("speaker") for p in Path(root).expanduser().rglob("*.wav") if (m := pattern.match(p.name))}
    if len(names) < 2:
        raise SystemExit(f"loso: need FSDD files of at least two speakers under {root}, found {sorted(names)}")
    return sorted(names)


def variant(experiment: str, augment: bool) -> str:
    return experiment + ("+aug" if augment else "")


def fold_overrides(root: str, fold: str, augment: bool, runs: Path, experiment: str, overrides) -> list[str]:
    """The command-line overrides of one fold (later entries win)."""
    split = ["data.split=fsdd"] if fold == CONVENTIONAL else ["data.split=speaker", f"data.test_speaker={fold}"]
    return [*(["defaults.data=fsdd_augmented"] if augment else []), f"data.root={root}", *overrides, *split,
            f"trainer.output_dir={runs / variant(experiment, augment)}", f"trainer.run_name={fold}",
            "trainer.progress_bar=false"]


def _budget_callbacks(cfg, start: float, budget: float) -> list:
    """recipes/gpu_batch's fit-to-budget callback and a Timer that stops a run falling behind anyway."""
    from lightning.pytorch.callbacks import Timer

    path = Path(__file__).resolve().parents[1] / "gpu_batch" / "driver.py"
    spec = importlib.util.spec_from_file_location("gpu_batch_driver", path)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    deadline = start + budget
    val_every = cfg.trainer.val_every_n_steps or 250
    fit = driver.fit_to_budget(deadline, RESERVE_S, val_every, cap=cfg.trainer.max_steps, pair_file=None,
                               partner_file=None, warm=10, probe=20)
    timer = Timer(duration=dict(seconds=max(10, int(deadline - RESERVE_S - time.time()))), interval="step")
    return [fit, timer]


def run_fold(experiment: str, root: str, fold: str, augment: bool, runs: Path, overrides=(),
             budget: float | None = None, reuse: bool = False) -> dict:
    """Train and test one fold; returns (and writes) {experiment, augment, fold, test_acc, steps, ...}."""
    import torch

    from audiomamba.config import load_experiment_config
    from audiomamba.training import run_dir_of, train

    cfg = load_experiment_config(experiment, fold_overrides(root, fold, augment, runs, experiment, overrides))
    base = run_dir_of(cfg)  # a rerun writes to base-v1, base-v2, ... (audiomamba.training.train)
    done = sorted((base.parent.glob(f"{base.name}*/{RESULT_FILE}")), key=lambda f: f.stat().st_mtime)
    if reuse and done:
        return json.loads(done[-1].read_text())
    start = time.time()
    out = train(cfg, callbacks=_budget_callbacks(cfg, start, budget) if budget else (), quiet=True)
    m = out["metrics"]
    result = {"experiment": experiment, "augment": augment, "fold": fold, "test_acc": m.get("test/acc"),
              "val_acc": m.get("val/acc"), "steps": int(m.get("steps", 0)), "parameters": m.get("parameters"),
              "wall_s": round(time.time() - start, 1), "batch_size": cfg.data.batch_size,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
              else "cpu", "model_dir": out["model_dir"]}
    (Path(out["run_dir"]) / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


# --------------------------------------------------------------------------------------------------- table


def collect(runs: Path) -> dict[str, dict[str, dict]]:
    """{variant: {fold: result}} of every loso.json under ``runs`` (the newest, where a fold ran again)."""
    out: dict[str, dict[str, dict]] = {}
    for f in sorted(runs.glob(f"*/*/{RESULT_FILE}"), key=lambda f: f.stat().st_mtime):
        r = json.loads(f.read_text())
        out.setdefault(variant(r["experiment"], r["augment"]), {})[r["fold"]] = r
    return out


def table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown: one row per (experiment, augmentation): accuracy per held-out speaker, their mean (the LOSO
    score) with the number of folds it averages, the conventional split; parameters, steps and mean wall time
    per fold."""
    speakers = sorted({f for folds in results.values() for f in folds if f != CONVENTIONAL})
    head = ["model", "augmentation", "parameters", "steps / fold", "wall s / fold", *speakers,
            "LOSO mean (folds)", "conventional split"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for folds in results.values():
        any_r = next(iter(folds.values()))
        loso = [folds[s]["test_acc"] for s in speakers if s in folds and folds[s]["test_acc"] is not None]
        steps = sorted({r["steps"] for r in folds.values()})
        walls = [r["wall_s"] for r in folds.values()]
        conv = folds.get(CONVENTIONAL, {}).get("test_acc")
        mean = f"{sum(loso) / len(loso):.4f} ({len(loso)})" if loso else "-"
        cells = [any_r["experiment"].removeprefix("fsdd_classification_"),
                 "fsdd_augmented" if any_r["augment"] else "placement + gain only",
                 f"{any_r['parameters']:,}" if any_r.get("parameters") else "-",
                 f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else str(steps[0]),
                 f"{sum(walls) / len(walls):.0f}",
                 *[f"{folds[s]['test_acc']:.4f}" if s in folds else "-" for s in speakers],
                 mean, f"{conv:.4f}" if conv is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "fold"):
        s = sub.add_parser(name)
        s.add_argument("experiment", help="experiment preset or YAML, e.g. fsdd_classification_logmel_cnn")
        s.add_argument("--root", required=True, help="the folder of FSDD WAVs")
        s.add_argument("--runs", default="outputs/loso", help="where the folds' runs go")
        s.add_argument("--augment", action="store_true", help="train with the data preset fsdd_augmented")
        s.add_argument("--budget", type=float, default=None, help="wall-clock seconds per fold (fit the steps)")
        s.add_argument("--reuse", action="store_true", help="skip folds that already have a result")
        if name == "run":
            s.add_argument("--speakers", nargs="*", default=None, help="held-out speakers (default: all)")
            s.add_argument("--conventional", action="store_true", help="also train on the conventional split")
            s.add_argument("--out", default=None, help="write the Markdown table here too")
        else:
            s.add_argument("--speaker", required=True, help=f"held-out speaker, or {CONVENTIONAL!r}")
    t = sub.add_parser("table")
    t.add_argument("--runs", default="outputs/loso")
    t.add_argument("--out", default=None, help="write the Markdown table here too")
    args, overrides = p.parse_known_args(argv)  # key=value config overrides for every fold, anywhere
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad or (overrides and args.cmd == "table"):
        p.error(f"unrecognized arguments: {' '.join(bad or overrides)} (config overrides are key=value)")
    args.overrides = overrides

    if args.cmd == "fold":
        run_fold(args.experiment, args.root, args.speaker, args.augment, Path(args.runs), args.overrides,
                 args.budget, args.reuse)
        return 0
    if args.cmd == "run":
        folds = args.speakers or speakers_of(args.root)
        for fold in folds + ([CONVENTIONAL] if args.conventional else []):
            run_fold(args.experiment, args.root, fold, args.augment, Path(args.runs), args.overrides, args.budget,
                     args.reuse)
    text = table(collect(Path(args.runs)))
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
