"""The ``audiomamba`` command line: quickstart, train, generate, classify, stream, evaluate, export, bench.

Each command imports the package (torch, Lightning) when it runs, not when this module is imported: building
the parser needs only the standard library, so ``audiomamba --help`` answers in a tenth of a second rather
than the ~7 s those imports take. Everything audio about a model (sample rate, tokenizer, label names) comes
from its audio contract (``model.audio``), and files become model inputs through ``audiomamba.inference``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

# the names of audiomamba.models.INFERENCE_WEIGHTS (spelled here so that building the parser imports no torch)
WEIGHTS = ("float32", "bfloat16")

EPILOG = """\
examples:
  audiomamba quickstart                                   # ~5 min on a laptop CPU: classifier + LM, samples
  audiomamba train quickstart_lm trainer.max_steps=300    # an experiment preset (or a YAML path) + overrides
  audiomamba train configs/experiment/quickstart_classifier.yaml data.batch_size=32 --resume last
  audiomamba generate outputs/quickstart_lm --n 4 --seconds 2 --temperature 0.9 --out samples/
  audiomamba classify outputs/quickstart_classifier clip1.wav clip2.flac
  audiomamba stream outputs/quickstart_classifier clip.wav --chunk-ms 20
  audiomamba evaluate outputs/quickstart_lm/checkpoints/last.ckpt
  audiomamba export outputs/quickstart_lm/checkpoints/last.ckpt my_model/
  audiomamba export outputs/quickstart_classifier --format onnx --chunk 320 classifier_onnx/
  audiomamba bench stream
  audiomamba serve outputs/quickstart/quickstart_classifier   # http://127.0.0.1:8000/

MODEL is a model directory written by `export` or `model.save` (config.yaml + model.safetensors), a run
directory (its model/ subfolder is used), or a Lightning checkpoint (.ckpt) written by `train`.
"""


# CPU threads of classify and stream when --threads is not given: on a 2-core machine shared with other work, one
# thread ran a causal classifier 5-8x faster than two (two threads wait on each other when a core is busy)
DEFAULT_THREADS = 1
DEBUG_ENV = "AUDIOMAMBA_DEBUG"  # =1: errors show their Python traceback


class CLIError(Exception):
    """A bad input: reported as one line on stderr with a non-zero exit code."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _state_dict_problem(text: str) -> str:
    """torch's load_state_dict report ("Missing key(s) ...", "Unexpected key(s) ...", "size mismatch for ...") in
    one line, naming up to 5 keys of each kind."""
    parts = []
    for kind, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*)"),
                          ("unexpected", r"Unexpected key\(s\) in state_dict: (.*)")):
        m = re.search(pattern, text)
        if m:
            keys = re.findall(r'"([^"]+)"', m.group(1))
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            parts.append(f"{len(keys)} {kind} key(s): {', '.join(keys[:5])}{more}")
    sizes = re.findall(r"size mismatch for ([^:]+): copying a param with shape (\S+ \S+) from checkpoint, the shape "
                       r"in current model is (\S+ \S+)", text)
    if sizes:
        shown = "; ".join(f"{k} {a} in the file, {b} in the model" for k, a, b in sizes[:5])
        parts.append(f"{len(sizes)} size mismatch(es): {shown}")
    return "the weights do not fit the model: " + ("; ".join(parts) if parts else _first_line(RuntimeError(text)))


def _load_problem(e: BaseException) -> str | None:
    """What went wrong reading a model or checkpoint file, in one line; None when ``e`` is not such a failure."""
    import pickle

    from safetensors import SafetensorError

    if isinstance(e, SafetensorError):
        return f"not a readable safetensors file (truncated or corrupt: {_first_line(e)})"
    if isinstance(e, EOFError):
        return "empty or truncated checkpoint (the file ends before its data)"
    if isinstance(e, pickle.UnpicklingError):
        key = re.search(r"invalid load key, '[^']*'", str(e))
        return f"not a PyTorch checkpoint (it cannot be unpickled{': ' + key.group(0) if key else ''})"
    if isinstance(e, RuntimeError):
        text = str(e)
        if "state_dict" in text and ("key(s)" in text or "size mismatch" in text):
            return _state_dict_problem(text)
        if "PytorchStreamReader" in text or "zip archive" in text or "central directory" in text:
            return f"truncated or corrupt checkpoint ({_first_line(e)})"
    if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, PermissionError)):
        return f"truncated or corrupt checkpoint (reading it failed: {_first_line(e)})"
    if isinstance(e, KeyError):
        return f"not an audiomamba checkpoint (no {e} entry inside)"
    return None


@contextlib.contextmanager
def _reading(path):
    """Failures to read the model or checkpoint file ``path`` become one-line CLIErrors naming it."""
    try:
        yield
    except CLIError:
        raise
    except Exception as e:
        problem = _load_problem(e)
        if problem is None:
            raise
        raise CLIError(f"{path}: {problem}") from e


def _set_threads(args) -> None:
    """torch CPU threads: --threads, else DEFAULT_THREADS on the CPU (GPU runs keep torch's default)."""
    import torch

    threads = args.threads if args.threads else (DEFAULT_THREADS if args.device == "cpu" else None)
    if threads:
        if threads < 1:
            raise CLIError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def _quiet_lightning() -> None:
    import lightning  # noqa: F401  (it sets its loggers' levels on import: set ours after)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*weight_norm.*")
    warnings.filterwarnings("ignore", category=UserWarning, message=".*does not have many workers.*")


# ---------------------------------------------------------------------------------------------- model loading


def load_any(spec: str, device: str = "cpu"):
    """(model, experiment) from a model directory, a run directory or a training checkpoint.

    The model carries its audio contract (``model.audio``: sample rate, input kind, tokenizer, label names);
    ``experiment`` is the ExperimentConfig it was trained with (its data splits, for ``evaluate``), or None
    when the directory holds none.
    """
    from audiomamba.config import load_experiment_config
    from audiomamba.models import CONFIG_FILE, WEIGHTS_FILE, load_model
    from audiomamba.training import load_task
    from audiomamba.training.run import EXPERIMENT_FILE

    path = Path(spec).expanduser()
    if not path.exists():
        raise CLIError(f"model not found: {path}")
    if path.is_file():
        if path.suffix != ".ckpt":
            raise CLIError(f"{path}: expected a model directory, a run directory or a .ckpt checkpoint")
        with _reading(path):
            task, cfg = load_task(path)
        return task.eval_model.to(device).eval(), cfg
    if not (path / WEIGHTS_FILE).is_file() and (path / "model" / WEIGHTS_FILE).is_file():
        path = path / "model"
    if not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        raise CLIError(f"{path}: no {WEIGHTS_FILE} + {CONFIG_FILE} inside (not a model directory)")
    with _reading(path / WEIGHTS_FILE):
        model = load_model(path, device=device).eval()
    experiment = None
    if (path / EXPERIMENT_FILE).is_file():
        experiment = load_experiment_config(str(path / EXPERIMENT_FILE))
    return model, experiment


# ---------------------------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from audiomamba.config import load_experiment_config
    from audiomamba.training import train
    from audiomamba.training.run import last_checkpoint, resumed_config

    cfg = load_experiment_config(args.config, args.overrides)
    resume = args.resume
    if resume is not None:
        # a resumed run keeps the config it was saved with (its overrides too); this command line's overrides
        # apply on top (the config/preset named here only locates the run for --resume last)
        resume = str(last_checkpoint(cfg)) if resume == "last" else resume
        if not Path(resume).is_file():
            raise CLIError(f"--resume: checkpoint not found: {resume}")
        with _reading(resume):
            cfg, diff = resumed_config(resume, args.overrides)
        print(f"resuming {resume} with its run's saved config"
              + ("; changed on this command line:\n  " + "\n  ".join(diff) if diff else " (unchanged)"), flush=True)
    out = train(cfg, resume=resume)
    if out["model_dir"] is not None:
        print(json.dumps(out["metrics"], indent=2, sort_keys=True))
        print(f"run directory: {out['run_dir']}\nmodel: {out['model_dir']}\nbest checkpoint: {out['checkpoint']}")
    return 0


def _generate_to(model, n, steps, out_dir: Path, seed, temperature, top_k, top_p, prefix="sample",
                 prompt=None) -> list[Path]:
    """Sample ``n`` clips of ``steps`` tokens (after ``prompt``, (1, L) tokens, when given) and write them as
    WAVs at the model's rate; returns the paths."""
    import torch

    from audiomamba.inference import tokens_to_audio
    from audiomamba.training.callbacks import write_samples

    tokens = model.generate(batch_size=n, num_steps=steps, prompt=prompt, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed, progress=True)
    if prompt is not None:  # write the prompt followed by its continuation
        tokens = torch.cat([prompt.expand(n, -1).to(tokens.device), tokens], dim=1)
    return write_samples(tokens_to_audio(model, tokens.cpu()), model.audio.sample_rate, out_dir, prefix)


def cmd_generate(args) -> int:
    from audiomamba.inference import audio_contract, file_to_input

    model, _ = load_any(args.model, args.device)
    if model.config.kind != "lm":
        raise CLIError(f"{args.model} is a classifier; generate needs a language model (task lm)")
    steps = args.steps if args.steps is not None else int(round(args.seconds * audio_contract(model).sample_rate))
    if steps < 1:
        raise CLIError("--seconds/--steps must give at least one sample")
    prompt = file_to_input(model, args.prompt).to(args.device) if args.prompt else None
    paths = _generate_to(model, args.n, steps, Path(args.out), args.seed, args.temperature, args.top_k,
                         args.top_p, prompt=prompt)
    for p in paths:
        print(p)
    return 0


def cmd_classify(args) -> int:
    import torch

    from audiomamba.inference import audio_contract, classify_long, file_to_input

    _set_threads(args)
    model, _ = load_any(args.model, args.device)
    if model.config.kind != "classifier":
        raise CLIError(f"{args.model} is a language model; classify needs a classifier")
    audio_contract(model)
    classes = model.labels or [str(i) for i in range(model.config.n_classes)]
    for f in args.files:
        # read as the test clips were: resampled, trimmed, normalized, padded to the training clip length
        x = file_to_input(model, f, pad=True).to(args.device)  # (1, L)
        with torch.no_grad():  # long files in chunks (causal) or windows (bidirectional): bounded memory
            probs = classify_long(model, x).float().softmax(-1)[0]
        top = probs.topk(min(args.top, probs.numel()))
        ranked = ", ".join(f"{classes[int(i)]} {float(p):.3f}" for p, i in zip(top.values, top.indices))
        print(f"{f}\t{classes[int(top.indices[0])]}\t({ranked})")
    return 0


def cmd_stream(args) -> int:
    import torch

    from audiomamba.inference import audio_contract, file_to_input

    _set_threads(args)
    model, _ = load_any(args.model, args.device)
    sr = audio_contract(model).sample_rate
    x = file_to_input(model, args.file).to(args.device)  # (1, L)
    chunk = max(1, int(round(sr * args.chunk_ms / 1000)))
    try:
        stream = model.stream(1, compile=args.compile, weights=args.weights)
    except ValueError as e:
        raise CLIError(str(e)) from None
    n_chunks = math.ceil(x.shape[1] / chunk)
    every = max(1, int(round(args.print_every_ms / args.chunk_ms)))
    classes = model.labels or [str(i) for i in range(model.config.n_classes)]
    total_bits, count, start = 0.0, 0, time.perf_counter()
    print(f"streaming {args.file}: {x.shape[1] / sr:.2f} s in {n_chunks} chunks of {chunk} samples "
          f"({args.chunk_ms:g} ms)")
    prev_last = None
    for i in range(n_chunks):
        piece = x[:, i * chunk : (i + 1) * chunk]
        with torch.no_grad():
            out = stream.push(piece)
        t_audio = min((i + 1) * chunk, x.shape[1]) / sr
        if model.config.kind == "classifier":
            probs = out[0, -1].float().softmax(-1)
            line = f"{t_audio:7.2f} s  {classes[int(probs.argmax())]:<12} p={float(probs.max()):.3f}"
        else:
            # the logits at position t predict token t + 1: score this chunk's tokens with the previous logits
            logp = out[0].float().log_softmax(-1)  # (n, V)
            targets = piece[0]
            if prev_last is not None:
                total_bits -= float(prev_last[targets[0]]) / math.log(2)
                count += 1
            if targets.numel() > 1:
                total_bits -= float(logp[:-1].gather(-1, targets[1:, None]).sum()) / math.log(2)
                count += targets.numel() - 1
            prev_last = logp[-1]
            line = f"{t_audio:7.2f} s  running NLL {total_bits / max(count, 1):.3f} bits/sample"
        if (i + 1) % every == 0 or i == n_chunks - 1:
            print(line, flush=True)
    # a compiled stream compiles a graph at the first push of each chunk pattern: reported apart, not in the RTF
    compiling = stream.compile_seconds
    elapsed = time.perf_counter() - start - compiling
    print(f"done: {elapsed:.2f} s compute for {x.shape[1] / sr:.2f} s audio "
          f"(real-time factor {elapsed / (x.shape[1] / sr):.3f})"
          + (f"; compiling {stream.compiled_patterns} graph(s) took {compiling:.1f} s more" if args.compile else ""))
    return 0


def cmd_evaluate(args) -> int:
    import torch
    from tqdm import tqdm

    from audiomamba.config import load_experiment_config
    from audiomamba.data import AudioDataModule
    from audiomamba.evaluation import check_data_matches, evaluate_extras
    from audiomamba.inference import audio_contract, causal_nll, classify_long
    from audiomamba.training import build_task

    model, cfg = load_any(args.model, args.device)
    audio_contract(model)
    if args.weights != "float32":
        try:
            model = model.low_precision_copy(args.weights)  # what `stream --weights` streams
        except ValueError as e:
            raise CLIError(str(e)) from None
    if cfg is None:
        raise CLIError(f"{args.model}: no experiment config beside the model; pass --config")
    if args.config or args.overrides:
        from omegaconf import OmegaConf

        base = OmegaConf.to_container(OmegaConf.structured(cfg))
        cfg = load_experiment_config(args.config or base, args.overrides)
    check_data_matches(model, cfg)
    dm = AudioDataModule(cfg.data, seed=cfg.trainer.seed)
    dm.setup("test")
    split = {"test": dm.test_set, "val": dm.val_set, "train": dm.train_set}[args.split]
    loader = dm._eval_loader(split)
    task = build_task(cfg)
    task.model = model  # evaluate these weights (and their audio contract's tokenizer) with the task's loss
    task.ema = None
    model.eval()
    sums = {"nll": 0.0, "count": 0.0, "correct": 0.0, "n": 0.0}
    with torch.no_grad():
        for batch in tqdm(loader, desc=f"evaluate {args.split}", leave=False):
            batch = {k: v.to(args.device) for k, v in batch.items()}
            # long clips (data.length null) run in chunks through the state: bounded memory
            if cfg.task == "lm":
                total, count = causal_nll(model, *task.sequence(batch)) if model.causal else task.nll(model, batch)
                sums["nll"] += float(total)
                sums["count"] += float(count)
            else:
                logits = classify_long(model, task.inputs(batch)).float()
                sums["nll"] += float(torch.nn.functional.cross_entropy(logits, batch["label"], reduction="sum"))
                sums["count"] += batch["label"].numel()
                sums["correct"] += float((logits.argmax(-1) == batch["label"]).sum())
    result = {"split": args.split, "items": len(split)}
    result["nll_nats"] = sums["nll"] / max(sums["count"], 1)
    if cfg.task == "lm":
        result["nll_bits_per_token"] = result["nll_nats"] / math.log(2)
    else:
        result["accuracy"] = sums["correct"] / max(sums["count"], 1)
    # per-speaker accuracy, NLL over real samples only, generated WAVs and classifier scores
    clf = clf_cfg = None
    if args.classifier:
        clf, clf_cfg = load_any(args.classifier, args.device)
        if clf.config.kind != "classifier" or clf_cfg is None:
            raise CLIError(f"--classifier {args.classifier}: expected a trained classifier run (with its config)")
    result.update(evaluate_extras(model, cfg, args.split, clf, clf_cfg, args.n_samples, args.out, args.seed,
                                  args.temperature, args.device))
    print(json.dumps(result, indent=2))
    return 0


def cmd_export(args) -> int:
    if args.format != "safetensors":
        return _export_stream(args)
    from audiomamba.training import load_task
    from audiomamba.training.run import export_model

    if not Path(args.model).is_file():
        raise CLIError(f"checkpoint not found: {args.model}")
    with _reading(args.model):
        task, _ = load_task(args.model)
    out = export_model(task, args.out)
    print(f"exported {args.model} -> {out} ({task.model.num_parameters():,} parameters)")
    return 0


def _export_stream(args) -> int:
    """export --format onnx|torch-export: the streaming step of a causal model (audiomamba.export)."""
    from audiomamba.export import export_stream, read_layout

    model, _ = load_any(args.model)
    start = time.perf_counter()
    layout_path = export_stream(model, args.out, args.format, args.chunk,
                                batch_size=None if args.dynamic_batch else args.batch)
    layout = read_layout(layout_path.parent)
    files = ", ".join(layout["graphs"].values())
    print(f"exported the streaming step of {args.model} ({args.format}, chunks of {args.chunk}, batch "
          f"{layout['batch']}) in {time.perf_counter() - start:.0f} s -> {layout_path.parent}/ ({files}, "
          f"{layout_path.name}: {len(layout['state'])} state tensors)")
    return 0


def cmd_serve(args) -> int:
    import torch

    from audiomamba.serving.app import serve

    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_any(args.model, args.device)
    serve(model, host=args.host, port=args.port, max_streams=args.max_streams, max_wait_ms=args.max_wait_ms,
          chunk_ms=args.chunk_ms, keep_s=args.keep_s, state_dir=args.state_dir, token=args.token, compile=args.compile)
    return 0


def cmd_bench(args) -> int:
    from audiomamba import bench

    if args.what == "kernels":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("bench kernels needs a CUDA GPU")
        bench.bench_kernels(presets=args.presets, batch=args.batch, length=args.length)
    elif args.what == "train":
        bench.bench_train(presets=args.presets or ["sc09_small"], length=args.length, batch=args.batch,
                          steps=args.steps, device=args.device, profile=args.profile, tiny=args.tiny)
    elif args.what == "generate":
        kw = {"preset": args.preset or "sc09_small", "batch_sizes": tuple(args.batch_sizes), "dtype": args.dtype}
        if args.steps:
            kw["num_steps"] = args.steps
        if args.device:
            kw["device"] = args.device
        bench.bench_generate(**kw)
    elif args.what == "serve":
        from audiomamba.serving.bench import bench_serve

        bench_serve(args.model, args.preset or "classifier_small", args.streams, args.seconds, args.chunk_ms,
                    args.max_wait_ms, args.device or "cpu", args.threads, args.engine_only, args.compile,
                    client_processes=args.client_processes)
    elif args.backend == "onnxruntime":
        from audiomamba.bench.stream_onnx import bench_stream_onnx

        bench_stream_onnx(preset=args.preset or "classifier_small", chunk_ms=args.chunk_ms, seconds=args.seconds,
                          threads=args.threads)
    else:
        bench.bench_stream(preset=args.preset or "classifier_small", chunk_ms=args.chunk_ms, seconds=args.seconds,
                           threads=args.threads, device=args.device or "cpu", compile=args.compile,
                           weights=args.weights)
    return 0


def run_quickstart(out_dir: Path, classifier_steps=None, lm_steps=None, sample_seconds=1.0, n_samples=2,
                   threads=None, overrides=()) -> dict:
    """Train the two quickstart experiments, generate samples, write ``out_dir/metrics.json``; returns it.

    ``overrides`` (dotlist) apply to both experiments, e.g. ``["data.synthetic.train_size=256"]``."""
    import torch

    from audiomamba.config import load_experiment_config
    from audiomamba.training import train

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    print(f"audiomamba quickstart: a tiny classifier and a tiny LM on synthetic sounds (6 classes, 8 kHz), "
          f"{torch.get_num_threads()} CPU thread(s); outputs under {out_dir}/", flush=True)
    summary: dict = {}
    runs = (("classifier", "quickstart_classifier", classifier_steps), ("lm", "quickstart_lm", lm_steps))
    for i, (key, name, steps) in enumerate(runs, 1):
        extra = [f"trainer.output_dir={out_dir}"] + ([f"trainer.max_steps={steps}"] if steps else [])
        cfg = load_experiment_config(name, list(overrides) + extra)
        what = "classifier (mu-law tokens -> 6 classes)" if key == "classifier" else "LM (next mu-law token)"
        print(f"[{i}/3] training the {what}: {cfg.trainer.max_steps} steps of batch {cfg.data.batch_size} x "
              f"{cfg.data.length} samples", flush=True)
        t0 = time.perf_counter()
        res = train(cfg, quiet=True)
        m = res["metrics"]
        entry = {"model_dir": res["model_dir"], "parameters": m.get("parameters"), "steps": m.get("steps"),
                 "train_seconds": round(time.perf_counter() - t0, 1), "test_loss": m.get("test/loss")}
        if key == "classifier":
            entry["test_accuracy"] = m.get("test/acc")
            entry["chance_accuracy"] = 1 / cfg.model.n_classes
            print(f"      test accuracy {entry['test_accuracy']:.3f} (chance {entry['chance_accuracy']:.3f}), "
                  f"{entry['parameters']:,} parameters, {entry['train_seconds']:.0f} s", flush=True)
        else:
            entry["test_nll_bits_per_sample"] = m.get("test/bits")
            entry["uniform_bits_per_sample"] = float(cfg.data.bits)
            print(f"      test NLL {entry['test_nll_bits_per_sample']:.3f} bits/sample (uniform: {cfg.data.bits}), "
                  f"{entry['parameters']:,} parameters, {entry['train_seconds']:.0f} s", flush=True)
        summary[key] = entry
    model, _ = load_any(summary["lm"]["model_dir"])
    steps = int(round(sample_seconds * model.audio.sample_rate))
    print(f"[3/3] generating {n_samples} x {sample_seconds:g} s ({steps} samples each, one step per sample)",
          flush=True)
    t0 = time.perf_counter()
    paths = _generate_to(model, n_samples, steps, Path(out_dir) / "samples", seed=0, temperature=1.0,
                         top_k=None, top_p=None)
    summary["samples"] = {"files": [str(p) for p in paths], "seconds": round(time.perf_counter() - t0, 1)}
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    metrics_path = Path(out_dir) / "metrics.json"
    metrics_path.write_text(json.dumps(summary, indent=2) + "\n")
    c, lm = summary["classifier"], summary["lm"]
    print(f"\nquickstart done in {summary['total_seconds']:.0f} s")
    print(f"  classifier  test accuracy {c['test_accuracy']:.3f} (chance {c['chance_accuracy']:.3f})"
          f"  -> {c['model_dir']}")
    print(f"  LM          test NLL {lm['test_nll_bits_per_sample']:.3f} bits/sample (uniform 8)  -> {lm['model_dir']}")
    print(f"  samples     {', '.join(summary['samples']['files'])}")
    print(f"  metrics     {metrics_path}")
    print(f"next: audiomamba classify {c['model_dir']} {paths[0]}   |   audiomamba stream {c['model_dir']} {paths[0]}")
    return summary


def cmd_quickstart(args) -> int:
    run_quickstart(out_dir=Path(args.out), classifier_steps=args.classifier_steps, lm_steps=args.lm_steps,
                   sample_seconds=args.seconds, n_samples=args.n, threads=args.threads, overrides=args.overrides)
    return 0


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="audiomamba", formatter_class=fmt, epilog=EPILOG,
                                description="Mamba state space models for raw audio and codec tokens.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    q = sub.add_parser("quickstart", formatter_class=fmt, help="train a tiny classifier and LM on synthetic audio",
                       description="Train a tiny classifier and a tiny LM on the built-in synthetic sounds (CPU, "
                       "a few minutes), print test accuracy and NLL, write WAVs, a spectrogram PNG and "
                       "metrics.json.", epilog="examples:\n  audiomamba quickstart --out outputs/quickstart\n"
                       "  audiomamba quickstart --lm-steps 600 data.synthetic.train_size=2048   # longer, bigger")
    q.add_argument("overrides", nargs="*", help="dotlist overrides for both experiments, e.g. data.batch_size=8")
    q.add_argument("--out", default="outputs/quickstart", help="output folder (default: %(default)s)")
    q.add_argument("--classifier-steps", type=int, default=None, help="override the classifier's max_steps")
    q.add_argument("--lm-steps", type=int, default=None, help="override the LM's max_steps")
    q.add_argument("--seconds", type=float, default=1.0, help="length of each generated sample (default: 1)")
    q.add_argument("--n", type=int, default=2, help="samples to generate (default: 2)")
    q.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    q.set_defaults(fn=cmd_quickstart)

    t = sub.add_parser("train", formatter_class=fmt, help="train from an experiment config",
                       description="Train from an experiment preset name or YAML path, with dotlist overrides "
                       "(defaults < presets < file < overrides). The resolved config is printed and saved.",
                       epilog="examples:\n  audiomamba train quickstart_lm trainer.max_steps=300\n"
                       "  audiomamba train my_exp.yaml data.root=/data/fsdd trainer.devices=2 trainer.strategy=ddp\n"
                       "  audiomamba train quickstart_lm --resume last")
    t.add_argument("config", help="experiment preset (e.g. quickstart_lm) or YAML path")
    t.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. trainer.max_steps=100")
    t.add_argument("--resume", default=None, help="checkpoint to resume from, or 'last' (the run's last.ckpt)")
    t.set_defaults(fn=cmd_train)

    g = sub.add_parser("generate", formatter_class=fmt, help="sample audio from a language model",
                       epilog="examples:\n  audiomamba generate outputs/quickstart/quickstart_lm --n 4 --seconds 2\n"
                       "  audiomamba generate my_model/ --prompt start.wav --seconds 3 --top-p 0.95")
    g.add_argument("model", help="model directory, run directory or .ckpt")
    g.add_argument("--n", type=int, default=2, help="number of samples (default: 2)")
    g.add_argument("--seconds", type=float, default=1.0, help="length of each sample in seconds (default: 1)")
    g.add_argument("--steps", type=int, default=None, help="length in tokens (overrides --seconds)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prompt", default=None, help="an audio file to continue")
    g.add_argument("--out", default="outputs/generated", help="output folder (default: %(default)s)")
    g.add_argument("--device", default="cpu")
    g.set_defaults(fn=cmd_generate)

    c = sub.add_parser("classify", formatter_class=fmt, help="classify audio files",
                       description="Classify whole files. Each file is read as the model's test data was: "
                       "resampled to the model's sample rate, trimmed and loudness-normalized as its audio contract "
                       "says, and zero-padded at the end when shorter than the training length (with a warning). "
                       "Long files run in bounded memory: a causal model takes them in chunks through its state "
                       "(the same result as one call); a bidirectional model sees at most 2^19 samples at once and "
                       "classifies a longer file as the mean logits of near-equal consecutive windows.",
                       epilog="example:\n  audiomamba classify outputs/quickstart/quickstart_classifier a.wav b.flac")
    c.add_argument("model")
    c.add_argument("files", nargs="+")
    c.add_argument("--top", type=int, default=3, help="classes shown per file (default: 3)")
    c.add_argument("--device", default="cpu")
    c.add_argument("--threads", type=int, default=None,
                   help=f"torch CPU threads (default: {DEFAULT_THREADS} on the CPU, the fastest on a loaded machine)")
    c.set_defaults(fn=cmd_classify)

    s = sub.add_parser("stream", formatter_class=fmt, help="run a file through a causal model chunk by chunk",
                       description="Push a file through the streaming module in chunks; print the running "
                       "prediction (classifier) or running NLL (LM). The file is resampled, trimmed and "
                       "loudness-normalized (over the whole file) as the model's training data was.",
                       epilog="example:\n  audiomamba stream outputs/quickstart/quickstart_classifier clip.wav "
                       "--chunk-ms 20 --print-every-ms 100")
    s.add_argument("model")
    s.add_argument("file")
    s.add_argument("--chunk-ms", type=float, default=20.0, help="chunk length in ms (default: 20)")
    s.add_argument("--print-every-ms", type=float, default=100.0, help="print a line every ... ms of audio")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=None,
                   help=f"torch CPU threads (default: {DEFAULT_THREADS} on the CPU, the fastest on a loaded machine)")
    s.add_argument("--compile", action="store_true",
                   help="push through torch.compile (CPU, float32 state; the first chunk of a length compiles)")
    s.add_argument("--weights", choices=WEIGHTS, default="float32",
                   help="float32 (default: the model, exact) or bfloat16 linear weights (faster compiled on CPUs "
                   "with bfloat16 instructions; an approximation of the float32 outputs)")
    s.set_defaults(fn=cmd_stream)

    e = sub.add_parser("evaluate", formatter_class=fmt, help="NLL (LM) or accuracy (classifier) on a data split",
                       epilog="examples:\n  audiomamba evaluate outputs/quickstart/quickstart_lm\n"
                       "  audiomamba evaluate run/checkpoints/last.ckpt --split val data.batch_size=4\n"
                       "  audiomamba evaluate outputs/fsdd_generation_mamba --classifier "
                       "outputs/fsdd_classification_bidirectional --n-samples 256 --out samples/")
    e.add_argument("model")
    e.add_argument("overrides", nargs="*", help="dotlist overrides of the experiment config (e.g. data.root=...)")
    e.add_argument("--config", default=None, help="experiment config to take the data from instead")
    e.add_argument("--split", choices=("test", "val", "train"), default="test")
    e.add_argument("--classifier", default=None, help="LM: score generated clips with this classifier "
                   "(IS, mIS, FID, AM)")
    e.add_argument("--n-samples", type=int, default=0, help="LM: clips to generate (default 64 with --classifier)")
    e.add_argument("--out", default=None, help="LM: folder for the generated WAVs")
    e.add_argument("--seed", type=int, default=0, help="LM: sampling seed")
    e.add_argument("--temperature", type=float, default=1.0, help="LM: sampling temperature")
    e.add_argument("--device", default="cpu")
    e.add_argument("--weights", choices=WEIGHTS, default="float32",
                   help="evaluate the model as it is (float32) or its bfloat16-weights copy (model.low_precision_copy, "
                   "what `audiomamba stream --weights bfloat16` runs)")
    e.set_defaults(fn=cmd_evaluate)

    x = sub.add_parser("export", formatter_class=fmt, help="checkpoint -> model directory; or the streaming step of a "
                       "model as ONNX / torch.export",
                       description="--format safetensors (default): a Lightning checkpoint -> a model directory. "
                       "--format onnx|torch-export: one streaming step of a causal MODEL for chunks of --chunk "
                       "samples, every state tensor a named input and output, into the directory OUT with "
                       "stream.json (state layout, initial values, audio contract); run it with "
                       "audiomamba.export.OnnxStream / ProgramStream.",
                       epilog="examples:\n  audiomamba export outputs/quickstart/quickstart_lm/checkpoints/last.ckpt "
                       "my_lm/\n  audiomamba export outputs/quickstart/quickstart_classifier --format onnx --chunk 320 "
                       "classifier_onnx/")
    x.add_argument("model", help="safetensors: a .ckpt checkpoint; onnx, torch-export: any MODEL")
    x.add_argument("out")
    x.add_argument("--format", choices=("safetensors", "onnx", "torch-export"), default="safetensors")
    x.add_argument("--chunk", type=int, default=320, help="onnx, torch-export: samples (LM: tokens) per step "
                   "(320 = 20 ms at 16 kHz); shorter ends of streams run through a one-sample graph")
    x.add_argument("--batch", type=int, default=1, help="onnx, torch-export: streams per call (a fixed batch)")
    x.add_argument("--dynamic-batch", action="store_true", help="onnx, torch-export: any batch (slower to export)")
    x.set_defaults(fn=cmd_export)

    v = sub.add_parser("serve", formatter_class=fmt, help="serve a causal model to many audio streams over WebSockets",
                       description="A WebSocket server (/v1/stream) that batches the chunks of many concurrent "
                       "streams into one push per tick, exactly as model.stream(1) would run each alone; /healthz, "
                       "/metrics (Prometheus), and a microphone demo page at /.",
                       epilog="examples:\n  audiomamba serve outputs/quickstart/quickstart_classifier\n"
                       "  audiomamba serve my_model/ --max-streams 256 --state-dir states/ --keep-s 120\n"
                       "  audiomamba serve my_model/ --host 0.0.0.0 --token $TOKEN --device cuda")
    v.add_argument("model", help="model directory, run directory or .ckpt (its audio contract gives rate and labels)")
    v.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s; others need --token)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--max-streams", type=int, default=64, help="state slots (default: %(default)s)")
    v.add_argument("--max-wait-ms", type=float, default=5.0, help="longest a ready chunk waits for its batch")
    v.add_argument("--chunk-ms", type=float, default=20.0, help="audio per push and result (default: 20)")
    v.add_argument("--keep-s", type=float, default=60.0, help="how long a dropped stream stays resumable")
    v.add_argument("--state-dir", default=None, help="streams are written here on SIGTERM and resumed from here")
    v.add_argument("--token", default=None, help="clients must present it (?token= or Authorization: Bearer)")
    v.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    v.add_argument("--device", default="cpu")
    v.add_argument("--compile", action="store_true", help="CPU: compile each batch bucket's push (torch.compile)")
    v.set_defaults(fn=cmd_serve)

    b = sub.add_parser("bench", formatter_class=fmt, help="benchmarks: kernels (GPU), generate, stream, train",
                       epilog="examples:\n  audiomamba bench kernels\n  audiomamba bench generate --batch-sizes 1 64\n"
                       "  audiomamba bench generate --dtype bfloat16\n"
                       "  audiomamba bench stream --chunk-ms 20 --threads 1\n  audiomamba bench stream --compile\n"
                       "  audiomamba bench stream --compile --weights bfloat16\n"
                       "  audiomamba bench stream --backend onnxruntime\n"
                       "  audiomamba bench train\n  audiomamba bench train --length 64000 --profile\n"
                       "  audiomamba bench train --presets sc09_small sc09_mamba2\n  audiomamba bench train --tiny\n"
                       "  audiomamba bench serve --streams 8 16 32\n"
                       "  audiomamba bench serve --engine-only --device cuda --streams 1000 10000")
    b.add_argument("what", choices=("kernels", "generate", "stream", "train", "serve"))
    b.add_argument("--model", default=None, help="serve: a model directory to serve (default: --preset)")
    b.add_argument("--streams", type=int, nargs="+", default=[32], help="serve: concurrent streams, one run each")
    b.add_argument("--engine-only", action="store_true", help="serve: the engine without the network")
    b.add_argument("--max-wait-ms", type=float, default=5.0, help="serve: the server's --max-wait-ms")
    b.add_argument("--client-processes", type=int, default=1, help="serve: processes the clients run in")
    b.add_argument("--presets", nargs="+", default=None,
                   help="kernels: presets whose stage shapes are timed (default: all); train: presets to time beside "
                   "the baselines (default: sc09_small)")
    b.add_argument("--length", type=int, default=16_000,
                   help="kernels, train: samples per sequence (train: above 16000 the batch shrinks to keep the "
                   "tokens per step)")
    b.add_argument("--batch", type=int, default=16, help="kernels, train: sequences per step")
    b.add_argument("--profile", action="store_true", help="train: the top-10 kernels of each model's step")
    b.add_argument("--tiny", action="store_true", help="train: tiny models, 2 × 64 tokens (a CPU smoke test)")
    b.add_argument("--preset", default=None, help="model preset (default: sc09_small / classifier_small); serve and "
                   "stream --backend onnxruntime also take an experiment preset, e.g. quickstart_classifier")
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    b.add_argument("--steps", type=int, default=None, help="generate: steps per run; train: timed steps (10)")
    b.add_argument("--chunk-ms", type=float, default=20.0)
    b.add_argument("--seconds", type=float, default=10.0)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--device", default=None)
    b.add_argument("--dtype", choices=WEIGHTS, default="float32",
                   help="generate: the model's weights and activations (the SSM state stays float32)")
    b.add_argument("--compile", action="store_true",
                   help="stream: measure the torch.compile'd push (CPU; compile time reported apart, not in the RTF)")
    b.add_argument("--weights", choices=WEIGHTS, default="float32",
                   help="stream: float32 (default, exact) or bfloat16 linear weights (model.stream(weights=...))")
    b.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="stream: onnxruntime runs the exported ONNX step (audiomamba.export.OnnxStream) beside the "
                   "compiled PyTorch stream, on the CPU")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "fn", None) is None:
        parser.print_help()
        return 2
    _quiet_lightning()
    os.environ.setdefault("TQDM_MININTERVAL", "0.5")
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    prefix = f"audiomamba {args.command}"

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {_first_line(message) if isinstance(message, Warning) else message}",
              file=sys.stderr)

    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = show_warning
        try:
            return args.fn(args)
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return 130
        except Exception as e:
            if debug:
                raise
            print(f"{prefix}: error: {_error_line(e)}", file=sys.stderr)
    return 1


def _error_line(e: Exception) -> str:
    """One line for an error that ends a command (the traceback: AUDIOMAMBA_DEBUG=1)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from audiomamba.data.audio_folder import BadFileError

    if isinstance(e, CLIError):
        return str(e)
    if isinstance(e, MisconfigurationException):
        text = str(e)
        if re.search(r"not available|No supported gpu backend|CUDA", text, re.IGNORECASE):
            return ("no GPU found for this Trainer: use trainer.accelerator=cpu (and trainer.devices=1 "
                    "trainer.strategy=auto, or defaults.trainer=cpu) to train on the CPU")
        return f"Lightning: {_first_line(e)}"
    problem = _load_problem(e)
    if problem is not None:
        return problem
    if re.search(r"CUDA|NVIDIA driver", str(e)):
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU found here: use --device cpu (or trainer.accelerator=cpu)"
    if isinstance(e, (FileNotFoundError, ValueError, BadFileError, ImportError, RuntimeError, OSError)):
        return _first_line(e)
    return f"{type(e).__name__}: {_first_line(e)} (run with {DEBUG_ENV}=1 for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
