"""Evaluation drivers: run models over data and score them (NLL in bits, accuracy, generated-audio scores).

Every driver reads how audio becomes a model's input from the model's audio contract (``model.audio``:
tokenizer, sample rate, preprocessing); the data splits come from an experiment config (``cfg``), whose data
section must agree with the contract. The metric math itself is in ``audiomamba.metrics``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from .contract import AudioContract
from .data import AudioDataModule
from .data.audio_folder import crop_or_pad, normalize_loudness
from .inference import audio_contract, causal_nll, classify_long, to_model_input, tokens_to_audio
from .metrics import ClassifierOutputs, generation_scores, inception_score

LN2 = math.log(2.0)


def check_data_matches(model, cfg) -> None:
    """ValueError when an experiment's data section reads audio unlike the model's audio contract (another
    sample rate or tokenizer): the model would be scored on inputs it was not trained on."""
    audio, data = audio_contract(model), cfg.data
    if data.source not in ("synthetic", "folder"):
        return
    if data.sample_rate != audio.sample_rate:
        raise ValueError(f"data.sample_rate={data.sample_rate} but the model takes {audio.sample_rate} Hz audio")
    tok = audio.tokenizer
    if tok is not None and tok.kind != "codec" and (data.tokenizer, data.bits) != (tok.kind, tok.bits):
        raise ValueError(f"data.tokenizer={data.tokenizer} with data.bits={data.bits}, but the model takes "
                         f"{tok.bits}-bit {tok.kind} tokens")


# ---------------------------------------------------------------------------------------- classifier pass


@torch.no_grad()
def classifier_outputs(classifier, waves, batch_size: int = 32, device=None) -> ClassifierOutputs:
    """Run an :class:`audiomamba.models.AudioClassifier` over clips, keeping probabilities and features.

    Args:
        classifier: an AudioClassifier (causal or bidirectional). Its penultimate features are the input of
            its head's final linear layer (the pooled backbone features), read with a forward hook.
        waves: (n, L) float tensor, or a sequence of (L_i,) float tensors. Clips of equal length are batched
            together (no padding), so each clip's result does not depend on the others.
        batch_size: clips per forward pass. A classifier of tokens tokenizes the clips with the tokenizer of its
            audio contract (``classifier.audio``).
        device: where to run (default: the classifier's device).

    Returns:
        probs (n, C) and features (n, D) in float64.
    """
    if not hasattr(classifier, "classify") or not hasattr(classifier, "head"):
        raise TypeError("classifier: expected an audiomamba AudioClassifier (with .classify and .head)")
    if torch.is_tensor(waves):
        if waves.dim() != 2:
            raise ValueError(f"waves: expected (n, L), got {tuple(waves.shape)}")
        waves = list(waves)
    if len(waves) == 0:
        raise ValueError("waves: no clips to classify")
    device = device if device is not None else next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    captured: list[torch.Tensor] = []
    hook = classifier.head.linear.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
    # batches of equal-length clips only: a bidirectional model is not invariant to zero padding
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        by_length.setdefault(int(w.shape[-1]), []).append(i)
    groups = [idx[s : s + batch_size] for idx in by_length.values() for s in range(0, len(idx), batch_size)]
    probs, feats = [None] * len(waves), [None] * len(waves)
    try:
        for group in groups:
            x = torch.stack([waves[i].float().cpu() for i in group])  # (B, L)
            lengths = torch.full((len(group),), x.shape[1], dtype=torch.long)
            if classifier.config.input == "tokens":
                x = to_model_input(classifier, x)
            captured.clear()
            logits = classifier.classify(x.to(device), lengths.to(device)).double()  # (B, C)
            f = captured[-1]
            if f.dim() == 3:  # causal running features (B, L, D): the one at each clip's last valid step
                f = f[torch.arange(f.shape[0], device=f.device), lengths.to(f.device) - 1]
            for j, i in enumerate(group):
                probs[i], feats[i] = F.softmax(logits[j], -1).cpu(), f[j].double().cpu()
    finally:
        hook.remove()
        classifier.train(was_training)
    return ClassifierOutputs(torch.stack(probs), torch.stack(feats))


def evaluate_generation(classifier, generated_waves, reference_waves, batch_size: int = 32, device=None,
                        reference_labels: torch.Tensor | None = None, real_waves=None,
                        real_labels: torch.Tensor | None = None) -> dict:
    """Classifier-based scores of generated audio, as SaShiMi and Mamba report them for SC09.

    Args:
        classifier: a trained classifier (an AudioClassifier, e.g. the FSDD or SC09 digit classifier, or the
            log-mel CNN baseline).
        generated_waves: (n, L) or a sequence of (L_i,) float waveforms at the classifier's sample rate,
            preprocessed like its training data.
        reference_waves: real clips, same format (the training set): the p_real of AM and the reference
            statistics of FID.
        reference_labels: (m,) true labels of the reference clips; when given, the classifier's accuracy on
            them is reported too (a check that the scorer is trustworthy).
        real_waves: other real clips (the test set), same format: scored exactly like the generated ones against
            the reference, they give the ceiling a generator can reach under this classifier ("real").
        real_labels: their true labels (the classifier's accuracy on them is reported under "real").

    Returns:
        {"is", "mis", "am", "fid", "n_generated", "n_reference", "class_histogram", "reference_is"
        [, "reference_accuracy"][, "real": {"is", "mis", "am", "fid", "n_generated", ...[, "accuracy"]}]}.
    """
    gen = classifier_outputs(classifier, generated_waves, batch_size, device)
    ref = classifier_outputs(classifier, reference_waves, batch_size, device)
    out = generation_scores(gen, ref)
    out["reference_is"] = inception_score(ref.probs)
    if reference_labels is not None:
        labels = torch.as_tensor(reference_labels).long().cpu()
        out["reference_accuracy"] = float((ref.predictions == labels).double().mean())
    if real_waves is not None:
        real = classifier_outputs(classifier, real_waves, batch_size, device)
        out["real"] = generation_scores(real, ref)
        if real_labels is not None:
            labels = torch.as_tensor(real_labels).long().cpu()
            out["real"]["accuracy"] = float((real.predictions == labels).double().mean())
    return out


@torch.no_grad()
def nll_bits_per_sample(model, batches: Iterable, device=None) -> dict:
    """Test NLL of an AudioLM in bits per predicted sample (or token), teacher-forced.

    Each sequence x_0..x_{L-1} scores -Σ_{t>=1} log2 p(x_t | x_<t) / (number of scored positions), pooled over
    the whole set (total bits / total positions), as the LM training task reports it.

    Args:
        model: an AudioLM.
        batches: an iterable of dicts {"audio": (B, L) float} (tokenized as ``model.audio`` says) or
            {"tokens": (B, L) int} (one stream), optionally with "mask": (B, L) bool marking the positions that
            count as targets; or of plain (B, L) integer token tensors.

    Returns:
        {"bits_per_sample", "nats_per_sample", "n_samples"}.
    """
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            mask = None
            if torch.is_tensor(batch):
                tokens = batch
            elif "audio" in batch:
                tokens = to_model_input(model, batch["audio"])
            else:
                tokens = batch["tokens"]
                if tokens.dim() == 3:  # (B, K, T) with K == 1 from a token folder
                    if tokens.shape[1] != 1:
                        raise ValueError("nll_bits_per_sample scores one token stream; got K > 1 codebooks")
                    tokens = tokens[:, 0]
                mask = batch.get("mask")
            tokens = tokens.to(device).long()  # (B, L)
            # in chunks through the state: long sequences in bounded memory, the same sums as one call
            nll, weight = causal_nll(model, tokens, None if mask is None else mask.to(device))
            total += float(nll)
            count += int(weight)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("nll_bits_per_sample: no positions to score (empty set or all-false masks)")
    nats = total / count
    return {"bits_per_sample": nats / LN2, "nats_per_sample": nats, "n_samples": count}


# ------------------------------------------------------------------------------ experiment-level evaluation


def split_segments(cfg, split: str = "test") -> list[tuple[torch.Tensor, Path]]:
    """The audio of a data split cut into consecutive segments: [(wave (L_i,) float32, file)], L_i <= length.

    ``cfg`` is an ExperimentConfig (or DataConfig) with data.source "folder". Each file is read whole (mono,
    resampled, trimmed and loudness-normalized as the data config says) and cut into pieces of ``data.length``
    samples; the last piece of a file may be shorter. No padding: every sample is real audio.
    """
    data = getattr(cfg, "data", cfg)
    if data.source != "folder":
        raise ValueError(f"split_segments reads audio files: data.source must be 'folder', got {data.source!r}")
    dm = AudioDataModule(data)
    dm.setup()
    ds = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}[split]
    out = []
    for f in ds.files:
        wave = ds.read(f)
        step = data.length or wave.shape[0]
        out.extend((wave[s : s + step], f) for s in range(0, wave.shape[0], step) if wave.shape[0] - s >= 2)
    return out


@torch.no_grad()
def segment_nll_bits(model, cfg, split: str = "test", batch_size: int = 16, device=None,
                     max_segments: int | None = None) -> dict:
    """NLL of a causal AudioLM in bits per real sample over the audio of a split (see :func:`split_segments`).

    Segments are batched by zero-padding on the right and masking the padded targets; for a causal model this
    is exact (a position never sees the padding after it). Unlike the training loop's test NLL, which scores
    clips padded (or cropped) to ``data.length`` and so counts digital silence after short clips, this counts
    only recorded samples. ``max_segments`` keeps only the first segments (quick checks).
    Returns {"bits_per_sample", "nats_per_sample", "n_samples", "n_segments"}.
    """
    if not model.causal:
        raise ValueError("segment_nll_bits needs a causal model")
    check_data_matches(model, cfg)
    segments = split_segments(cfg, split)[:max_segments]
    segments.sort(key=lambda s: -s[0].shape[0])  # similar lengths together

    def batches():
        for start in range(0, len(segments), batch_size):
            waves = [w for w, _ in segments[start : start + batch_size]]
            length = max(w.shape[0] for w in waves)
            audio = torch.zeros(len(waves), length)
            mask = torch.zeros(len(waves), length, dtype=torch.bool)
            for i, w in enumerate(waves):
                audio[i, : w.shape[0]], mask[i, : w.shape[0]] = w, True
            yield {"tokens": to_model_input(model, audio), "mask": mask}

    out = nll_bits_per_sample(model, batches(), device=device)
    out["n_segments"] = len(segments)
    return out


def _group_of(path: Path, cfg) -> str | None:
    """The "speaker" group of a file name under the data's label regex (FSDD: {digit}_{speaker}_{index})."""
    if cfg.data.labels != "regex" or not cfg.data.label_regex:
        return None
    m = re.compile(cfg.data.label_regex).search(path.name)
    return m.group("speaker") if m is not None and "speaker" in m.groupdict() else None


@torch.no_grad()
def classifier_accuracy(classifier, cfg, split: str = "test", batch_size: int = 32, device=None) -> dict:
    """Accuracy of a classifier on a split, overall and per speaker (when the label regex names a "speaker").

    Clips are prepared exactly as in training (the DataModule's evaluation loader: center crop or zero-pad to
    ``data.length``). Returns {"accuracy", "n", "per_speaker": {name: accuracy}, "confusion": C x C counts}.
    """
    device = device if device is not None else next(classifier.parameters()).device
    check_data_matches(classifier, cfg)
    dm = AudioDataModule(cfg.data)
    dm.setup()
    ds = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}[split]
    C = classifier.config.n_classes
    confusion = torch.zeros(C, C, dtype=torch.long)
    per_group: dict[str, list[int]] = {}
    was_training = classifier.training
    classifier.eval()
    try:
        for start in range(0, len(ds), batch_size):
            items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            x = torch.stack([it["audio"] for it in items])
            if classifier.config.input == "tokens":
                x = to_model_input(classifier, x)
            pred = classify_long(classifier, x.to(device)).argmax(-1).cpu()  # long clips in bounded memory
            for it, p in zip(items, pred.tolist()):
                label = int(it["label"])
                confusion[label, p] += 1
                files = getattr(ds, "files", None)
                group = _group_of(files[int(it["index"])], cfg) if files is not None else None
                if group is not None:
                    per_group.setdefault(group, [0, 0])
                    per_group[group][0] += int(p == label)
                    per_group[group][1] += 1
    finally:
        classifier.train(was_training)
    n = int(confusion.sum())
    return {"accuracy": float(confusion.diag().sum()) / max(n, 1), "n": n,
            "per_speaker": {g: c / t for g, (c, t) in sorted(per_group.items())},
            "confusion": confusion.tolist()}


def _classifier_view(waves: Sequence[torch.Tensor], audio: AudioContract,
                     normalize: bool = True) -> list[torch.Tensor]:
    """Clips as a classifier's training data was prepared (its audio contract): loudness-normalized
    (``normalize``), center-cropped or zero-padded to its clip length."""
    out = []
    for w in waves:
        w = w.float()
        if normalize and audio.loudness_db is not None:
            w = normalize_loudness(w, audio.loudness_db)
        if audio.length is not None:
            w = crop_or_pad(w, audio.length, None)
        out.append(w)
    return out


@torch.no_grad()
def evaluate_lm_generation(model, cfg, classifier=None, classifier_cfg=None, n_samples: int = 64,
                           sample_length: int | None = None, out_dir: str | Path | None = None, seed: int = 0,
                           temperature: float = 1.0, batch_size: int = 64, reference_split: str = "train",
                           max_reference: int | None = 2000, device=None, progress: bool = False,
                           cuda_graphs: bool | None = None, real_split: str | None = "test") -> dict:
    """Generate clips from an AudioLM, write them as WAVs, and score them with a trained classifier.

    Args:
        model: a causal AudioLM on waveform tokens (its audio contract gives the tokenizer and sample rate);
            cfg: its ExperimentConfig.
        classifier, classifier_cfg: a trained AudioClassifier and its ExperimentConfig (for its data: the real
            reference clips and how clips are prepared). Without them only the WAVs are written.
        n_samples: clips to generate (in batches of ``batch_size``); sample_length: samples per clip (default
            ``cfg.data.length``); temperature: sampling temperature; seed: sampling seed.
        out_dir: where ``sample_XXX.wav`` go (None: not written).
        reference_split: the classifier data split used as real data (AM's p_real(y), FID's statistics),
            at most ``max_reference`` clips of it.
        real_split: another split of the classifier's data (default "test"; None: skip) whose real clips are
            scored like the generated ones: the ceiling of IS, mIS, FID and AM under this classifier ("real").
        cuda_graphs: passed to ``generate`` (None: on for CUDA models).

    Returns:
        {"n_samples", "sample_length", "wav_dir", "seconds_generating"} plus, with a classifier, the scores of
        :func:`evaluate_generation` ("is", "mis", "am", "fid", "class_histogram", "reference_is",
        "reference_accuracy", and "real": the scores of the real ``real_split`` clips).
    """
    audio = audio_contract(model)
    length = sample_length or cfg.data.length
    if not length:
        raise ValueError("evaluate_lm_generation: give sample_length (data.length is not set)")
    start = time.perf_counter()
    waves = []
    for b in range(0, n_samples, batch_size):
        n = min(batch_size, n_samples - b)
        tokens = model.generate(batch_size=n, num_steps=length, seed=seed + b, temperature=temperature,
                                progress=progress, cuda_graphs=cuda_graphs)
        waves.append(tokens_to_audio(model, tokens.cpu()))  # (n, length)
    waves = torch.cat(waves)
    out = {"n_samples": n_samples, "sample_length": length, "seconds_generating": time.perf_counter() - start,
           "wav_dir": None}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, w in enumerate(waves.numpy()):
            sf.write(str(out_dir / f"sample_{i:03d}.wav"), np.clip(w, -1, 1), audio.sample_rate, subtype="PCM_16")
        out["wav_dir"] = str(out_dir)
    if classifier is None:
        return out
    if classifier_cfg is None:
        raise ValueError("evaluate_lm_generation: a classifier needs its experiment config (classifier_cfg)")
    clf_audio = audio_contract(classifier)
    check_data_matches(classifier, classifier_cfg)
    if clf_audio.sample_rate != audio.sample_rate:
        waves = AF.resample(waves, audio.sample_rate, clf_audio.sample_rate)
    dm = AudioDataModule(classifier_cfg.data)
    dm.setup()
    splits = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}
    ref_set = splits[reference_split]
    n_ref = len(ref_set) if max_reference is None else min(len(ref_set), max_reference)
    idx = torch.randperm(len(ref_set), generator=torch.Generator().manual_seed(0))[:n_ref].sort().values
    ref_items = [ref_set[int(i)] for i in idx]  # center crop / pad as in evaluation
    ref_waves = [it["audio"] for it in ref_items]
    ref_labels = torch.stack([it["label"] for it in ref_items])
    real_waves = real_labels = None
    if real_split is not None:
        real_items = [splits[real_split][i] for i in range(len(splits[real_split]))]
        real_waves = [it["audio"] for it in real_items]
        real_labels = torch.stack([it["label"] for it in real_items])
    # an LM trained on data normalized like the classifier's generates at that level already; renormalizing
    # whole padded clips would not match how the real clips were normalized (before padding)
    renormalize = clf_audio.loudness_db != audio.loudness_db
    scores = evaluate_generation(classifier, _classifier_view(list(waves), clf_audio, renormalize), ref_waves,
                                 batch_size=batch_size, device=device, reference_labels=ref_labels,
                                 real_waves=real_waves, real_labels=real_labels)
    out.update(scores)
    return out


def evaluate_extras(model, cfg, split: str = "test", classifier=None, classifier_cfg=None, n_samples: int = 0,
                    out_dir: str | Path | None = None, seed: int = 0, temperature: float = 1.0,
                    device=None) -> dict:
    """What ``audiomamba evaluate`` adds to the loss on a split (the CLI calls this):

    - classifier on a folder with speakers in its label regex (FSDD): ``per_speaker`` accuracy;
    - causal LM on an audio folder: ``nll_bits_per_real_sample`` over every recorded sample of the split
      (no padding; see :func:`segment_nll_bits`);
    - LM with ``n_samples`` > 0: generated WAVs under ``out_dir`` and, with a ``classifier`` (and its
      ``classifier_cfg``), their IS, mIS, FID and AM (:func:`evaluate_lm_generation`) under "generation".
    """
    out: dict = {}
    if cfg.task == "classify" and cfg.data.source == "folder" and cfg.data.labels == "regex":
        acc = classifier_accuracy(model, cfg, split, device=device)
        if acc["per_speaker"]:
            out["per_speaker"] = acc["per_speaker"]
    if cfg.task == "lm" and cfg.data.source == "folder":
        out["nll_bits_per_real_sample"] = segment_nll_bits(model, cfg, split, device=device)["bits_per_sample"]
    if cfg.task == "lm" and (n_samples > 0 or classifier is not None):
        out["generation"] = evaluate_lm_generation(
            model, cfg, classifier=classifier, classifier_cfg=classifier_cfg, n_samples=n_samples or 64,
            out_dir=out_dir, seed=seed, temperature=temperature, batch_size=64, device=device, progress=True)
    return out
