"""Training: schedule, parameter groups, LM loss masking, the run's outputs, and exact resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from audiomamba.cli import main
from audiomamba.config import load_experiment_config
from audiomamba.contract import AudioContract, TokenizerSpec
from audiomamba.models import load_model
from audiomamba.training import build_task, load_task, param_groups, warmup_cosine

TINY = [
    "model.backbone.d_model=8", "model.backbone.pool=[2]", "model.backbone.n_blocks=[1]",
    "model.backbone.mixer=[s4d,mamba1]", "model.backbone.mixer_options={s4d: {d_state: 8}, mamba1: {d_state: 4}}",
    "model.backbone.dropout=0.1", "data.length=64", "data.batch_size=4", "data.synthetic.train_size=24",
    "data.synthetic.val_size=8", "data.synthetic.test_size=8", "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1", "optim.warmup_steps=2", "optim.ema_decay=0.9",
]


def test_warmup_cosine_schedule():
    vals = [warmup_cosine(s, 4, 20, 0.1) for s in range(25)]
    assert vals[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert vals[4] == pytest.approx(1.0) and vals[12] == pytest.approx(0.1 + 0.9 * 0.5)
    assert vals[20] == pytest.approx(0.1) and vals[24] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(vals[4:], vals[5:]))


def test_no_weight_decay_on_ssm_parameters_biases_and_norms():
    task = build_task(load_experiment_config("quickstart_lm", TINY))
    groups = param_groups(task.model, 0.1)
    names = {id(p): n for n, p in task.model.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    plain = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert any(n.endswith("A_log") for n in plain) and not any(n.endswith(("A_log", ".D", "bias")) for n in decayed)
    assert any("embed" in n for n in decayed)
    assert len(decayed) + len(plain) == len(list(task.model.parameters()))


def _delay_ref(codes, special):
    B, K, T = codes.shape
    seq = torch.full((B, T + K - 1, K), special, dtype=torch.long)  # (B, S = T + K - 1, K)
    for k in range(K):
        seq[:, k : k + T, k] = codes[:, k]
    return seq


def test_lm_nll_bits_and_delay_pattern_masking():
    torch.manual_seed(0)
    over = TINY + ["data.source=tokens", "data.root=/unused", "data.pattern=delay", "data.n_codebooks=3",
                   "data.codebook_size=10", "model.n_codebooks=3", "model.vocab_size=11", "data.tokenizer=none"]
    task = build_task(load_experiment_config("quickstart_lm", over)).eval()
    codes = torch.randint(0, 10, (2, 3, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False  # row 1 has 5 real frames, 2 padding frames
    with torch.no_grad():
        total, count = task.nll(task.model, {"tokens": codes, "mask": mask})
        logits, _ = task.model(seq_ref := _delay_ref(codes, 10))
    # reference: loop over every target position of the delayed sequence; count only real codes
    seq = seq_ref
    ref_total, ref_count = 0.0, 0
    for b in range(2):
        for s in range(1, 9):
            for k in range(3):
                t = s - k
                if 0 <= t < 7 and mask[b, t]:
                    ref_total += float(F.cross_entropy(logits[b, s - 1, k][None], seq[b, s, k][None]))
                    ref_count += 1
    assert int(count) == ref_count == 3 * 7 + 3 * 5 - 2  # real codes, minus each row's first (never a target)
    assert float(total) == pytest.approx(ref_total, rel=1e-5)


def test_classifier_task_uses_labels_and_tokens():
    cfg = load_experiment_config("quickstart_classifier", TINY + ["optim.ema_decay=0.9"])
    task = build_task(cfg).eval()
    assert task.model.audio == AudioContract.from_experiment(cfg)  # rate, mu-law tokenizer, clip length
    audio = torch.rand(3, 64) * 2 - 1
    x = task.inputs({"audio": audio})
    assert x.dtype == torch.long and torch.equal(x, AF.mu_law_encoding(audio, 256))
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        loss, acc = task._loss_acc(task.model, {"audio": audio, "label": labels})
        logits = task.model.classify(x)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert float(acc) == pytest.approx(float((logits.argmax(-1) == labels).float().mean()), abs=1e-7)
    # label names go into the contract of the model and of its EMA copy (the exported one)
    task.classes = cfg.data.synthetic.classes
    assert task.model.labels == task.eval_model.labels == tuple(cfg.data.synthetic.classes)
    with pytest.raises(ValueError, match="the data has 2 classes, model.n_classes is 6"):
        task.classes = ["a", "b"]
    # the task tokenizes with the tokenizer of its model's contract
    task.model.audio = AudioContract(8000, "tokens", TokenizerSpec("linear", bits=8))
    assert torch.equal(task.inputs({"audio": audio}), torch.round((audio.double() + 1) * 127.5).long())


CHILD = textwrap.dedent('''
    import json, os, signal, sys
    import lightning as L
    from audiomamba.config import load_experiment_config
    from audiomamba.training import train

    out, log, kill_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] or None
    overrides = json.loads(sys.argv[5])

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # the checkpoint of step kill_at is already on disk

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with open(log, "a") as fh:
                fh.write(json.dumps([trainer.global_step, float(outputs["loss"])]) + "\\n")

    cfg = load_experiment_config("quickstart_lm", overrides + [f"trainer.output_dir={out}"])
    train(cfg, resume=resume, callbacks=[Record()], quiet=True)
''')


def _run_child(tmp_path, out, log, kill_at, resume, overrides):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(script), str(out), str(log), str(kill_at), resume or "",
                           json.dumps(overrides)], capture_output=True, text=True, timeout=600, env=env)


def _losses(log: Path) -> dict[int, float]:
    return {step: loss for step, loss in (json.loads(line) for line in log.read_text().splitlines())}


def test_sigkill_and_resume_gives_the_same_losses(tmp_path, capsys):
    over = TINY + ["trainer.max_steps=9", "trainer.ckpt_every_n_steps=2", "trainer.sample_every_n_epochs=1",
                   "trainer.n_samples=1", "trainer.sample_length=50"]
    full = _run_child(tmp_path, tmp_path / "a", tmp_path / "a.jsonl", -1, None, over)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _run_child(tmp_path, tmp_path / "b", tmp_path / "b.jsonl", 4, None, over)
    assert killed.returncode == -9, killed.stderr[-3000:]  # really killed by SIGKILL
    ckpt = tmp_path / "b" / "quickstart_lm" / "checkpoints" / "step0000004.ckpt"
    assert ckpt.is_file() and sorted(_losses(tmp_path / "b.jsonl")) == [1, 2, 3, 4]
    # killed before the first validation: the periodic checkpoints kept last.ckpt current (atomically: no .tmp)
    checkpoints = ckpt.parent
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 4
    shutil.copytree(tmp_path / "b", tmp_path / "d")  # resumed below with `audiomamba train ... --resume last`
    resumed = _run_child(tmp_path, tmp_path / "b", tmp_path / "c.jsonl", -1, str(ckpt), over)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b, c = _losses(tmp_path / "a.jsonl"), _losses(tmp_path / "b.jsonl"), _losses(tmp_path / "c.jsonl")
    assert sorted(a) == list(range(1, 10)) and sorted(c) == list(range(5, 10))
    for step in range(1, 5):
        assert b[step] == a[step]
    for step in range(5, 10):  # the next step after resuming, across the epoch boundary (6 batches per epoch)
        assert c[step] == pytest.approx(a[step], rel=1e-6, abs=0), f"step {step}: {c[step]} vs {a[step]}"

    # `--resume last` on the command line: the run's saved config (its overrides: 9 steps, not the preset's),
    # this command line's override on top (printed), the same losses as the uninterrupted run
    argv = ["train", "quickstart_lm", f"trainer.output_dir={tmp_path / 'd'}", "trainer.limit_test_batches=0.5",
            "--resume", "last"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    head, _, rest = printed.partition("; changed on this command line:\n")
    assert head.endswith("d/quickstart_lm/checkpoints/last.ckpt with its run's saved config")
    changes = rest[: rest.index("# resolved config")].splitlines()  # (the copy's saved output_dir is b's)
    assert changes == ["  trainer.limit_test_batches: 1.0 -> 0.5",
                       f"  trainer.output_dir: {tmp_path / 'b'} -> {tmp_path / 'd'}"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["quickstart_lm"]  # no new version folder
    logged = {}
    with open(tmp_path / "d" / "quickstart_lm" / "logs" / "version_1" / "metrics.csv") as fh:
        for row in csv.DictReader(fh):
            if row.get("train/loss"):
                logged[int(row["step"]) + 1] = float(row["train/loss"])  # the logger counts steps from 0
    assert sorted(logged) == list(range(5, 10))
    for step in range(5, 10):
        assert logged[step] == pytest.approx(a[step], rel=1e-6, abs=0), f"step {step}: {logged[step]} vs {a[step]}"
    resumed_cfg = load_experiment_config(str(tmp_path / "d" / "quickstart_lm" / "config.yaml"))
    assert (resumed_cfg.trainer.max_steps, resumed_cfg.trainer.limit_test_batches) == (9, 0.5)

    # the uninterrupted run's outputs: config, logs, samples, metrics, exported model, checkpoint round trip
    run = tmp_path / "a" / "quickstart_lm"
    assert (run / "config.yaml").read_text().startswith("name: quickstart_lm")
    assert "train/loss" in (run / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb" / "version_0").iterdir())
    # the resumed run logged into a new version folder and kept the first launch's metrics
    resumed_run = tmp_path / "b" / "quickstart_lm" / "logs"
    assert sorted(p.name for p in resumed_run.iterdir()) == ["version_0", "version_1"]
    wav, sr = sf.read(str(run / "samples" / "epoch_0000" / "sample_0.wav"))
    assert sr == 8000 and wav.shape == (50,) and (run / "samples" / "epoch_0000" / "sample_0.png").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 9 and math.isfinite(metrics["test/bits"]) and metrics["test/bits"] > 0
    model = load_model(run / "model").eval()
    task, cfg = load_task(run / "checkpoints" / "last.ckpt")  # no validation ran: "best" is the last checkpoint
    assert model.audio == task.eval_model.audio == AudioContract.from_experiment(cfg)
    assert (model.audio.sample_rate, model.audio.tokenizer) == (8000, TokenizerSpec("mulaw", bits=8))
    assert cfg.trainer.max_steps == 9 and task.ema is not None
    exported, from_ckpt = model.state_dict(), task.eval_model.state_dict()
    assert exported.keys() == from_ckpt.keys()
    for name in exported:
        assert torch.equal(exported[name], from_ckpt[name]), name
    # the EMA of the weights resumed exactly too
    resumed_ema = load_task(tmp_path / "b" / "quickstart_lm" / "checkpoints" / "last.ckpt")[0].eval_model.state_dict()
    for name in exported:
        torch.testing.assert_close(resumed_ema[name], exported[name], rtol=1e-6, atol=1e-8, msg=name)
