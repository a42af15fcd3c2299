"""recipes/fsdd_classification/loso.py: the folds' overrides (a valid leave-one-speaker-out config), the speakers
found in a folder, and the table (per-speaker accuracy, the LOSO mean over the folds present, the conventional
split)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from audiomamba.config import load_experiment_config

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "fsdd_classification" / "loso.py"


@pytest.fixture(scope="module")
def loso():
    spec = importlib.util.spec_from_file_location("loso", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fold_overrides_make_a_speaker_split(loso, tmp_path):
    ov = loso.fold_overrides("/data/fsdd", "theo", True, tmp_path, "fsdd_classification_causal",
                             ["trainer.max_steps=7", "data.split=random"])
    cfg = load_experiment_config("fsdd_classification_causal", ov)
    assert (cfg.data.split, cfg.data.test_speaker, cfg.data.root) == ("speaker", "theo", "/data/fsdd")
    assert cfg.data.augment.enabled and cfg.trainer.max_steps == 7 and cfg.trainer.run_name == "theo"
    assert cfg.trainer.output_dir == str(tmp_path / "fsdd_classification_causal+aug")
    conv = load_experiment_config("fsdd_classification_causal", loso.fold_overrides(
        "/d", loso.CONVENTIONAL, False, tmp_path, "fsdd_classification_causal", []))
    assert conv.data.split == "fsdd" and not conv.data.augment.enabled


def test_speakers_and_table(loso, tmp_path):
    for name in ("3_ann_0.wav", "1_bob_4.wav", "2_ann_9.wav", "notes.wav"):
        (tmp_path / name).write_bytes(b"")
    assert loso.speakers_of(tmp_path) == ["ann", "bob"]
    runs = tmp_path / "runs"
    results = {("ann", False): 0.5, ("bob", False): 0.75, (loso.CONVENTIONAL, False): 0.9, ("ann", True): 0.625}
    for (fold, augment), acc in results.items():
        d = runs / loso.variant("fsdd_classification_x", augment) / fold
        d.mkdir(parents=True)
        (d / loso.RESULT_FILE).write_text(json.dumps({
            "experiment": "fsdd_classification_x", "augment": augment, "fold": fold, "test_acc": acc,
            "steps": 10, "parameters": 1234, "wall_s": 2.0}))
    lines = loso.table(loso.collect(runs)).splitlines()
    assert lines[0].split(" | ")[5:8] == ["ann", "bob", "LOSO mean (folds)"]
    plain = next(line for line in lines if "placement + gain only" in line)
    aug = next(line for line in lines if "fsdd_augmented" in line)
    assert "| 0.6250 (2) | 0.9000 |" in plain and "| 1,234 |" in plain
    assert "| 0.6250 | - | 0.6250 (1) | - |" in aug
