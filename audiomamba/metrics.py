"""Evaluation metrics: NLL in bits per sample, and classifier-based scores of generated audio.

The generation scores follow SaShiMi (Goel et al., 2022) and Mamba (Gu & Dao, 2023, §4.4) on SC09: a classifier
trained on the real data scores the generated clips. With p(y|x) the classifier's class probabilities (C classes)
and f(x) its penultimate features (the input of its last linear layer):

- Inception Score:           IS  = exp( E_x KL(p(y|x) || p(y)) ),  p(y) = E_x p(y|x)      (higher is better, <= C)
- modified Inception Score:  mIS = exp( E_{x,x'} KL(p(y|x) || p(y|x')) )  over independent pairs (higher)
- AM score:                  AM  = KL(p_real(y) || p(y)) + E_x H(p(y|x)), p_real(y) the classifier's mean
                             prediction on real data (lower is better, 0 when confident and balanced like it)
- Fréchet distance:          FID = |mu_r - mu_g|² + Tr(S_r + S_g - 2 (S_r S_g)^½) on the features (lower)

Expectations over generated clips are sample means; mIS averages over all n² ordered pairs (x, x') (the
expectation the state-spaces code estimates by drawing pairs with replacement). Covariances are unbiased (n - 1).
All arithmetic is float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

LN2 = math.log(2.0)
EPS = 1e-12  # probabilities are clamped to >= EPS before logarithms (a one-hot row keeps its exact entropy 0)

# ------------------------------------------------------------------------------------------------ scores


def _as_probs(probs) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(probs) if not torch.is_tensor(probs) else probs).double()
    if p.dim() != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"probs: expected (n, C) with n >= 1 and C >= 2, got {tuple(p.shape)}")
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-6):
        raise ValueError("probs: rows must be probability vectors (non-negative, summing to 1)")
    return p


def _plogq(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ_c p_c log q_c per row pair with the convention 0·log 0 = 0: p (n, C), q (m, C) → (n, m)."""
    return p @ q.clamp_min(EPS).log().T


def entropy(probs) -> torch.Tensor:
    """H(p) = -Σ_c p_c log p_c in nats per row: (n, C) → (n,)."""
    p = _as_probs(probs)
    return -(p * p.clamp_min(EPS).log()).sum(1)


def inception_score(probs) -> float:
    """IS = exp(mean_i KL(p_i || p̄)), p̄ = mean_i p_i. probs: (n, C) class probabilities of generated clips.

    1 for identical predictions (e.g. all uniform); C for confident predictions spread evenly over C classes."""
    p = _as_probs(probs)
    mean = p.mean(0, keepdim=True)  # (1, C)
    kl = -entropy(p) - _plogq(p, mean)[:, 0]  # (n,)
    return float(torch.exp(kl.mean()))


def modified_inception_score(probs) -> float:
    """mIS = exp(mean_{i,j} KL(p_i || p_j)) over all n² ordered pairs. probs: (n, C).

    Rewards confident predictions that differ between clips (within-class diversity does not count)."""
    p = _as_probs(probs)
    kl = (-entropy(p))[:, None] - _plogq(p, p)  # (n, n): KL(p_i || p_j)
    return float(torch.exp(kl.mean()))


def am_score(probs, reference_probs) -> float:
    """AM = KL(p̄_ref || p̄) + mean_i H(p_i). probs: (n, C) generated; reference_probs: (m, C) real data."""
    p, r = _as_probs(probs), _as_probs(reference_probs)
    if p.shape[1] != r.shape[1]:
        raise ValueError(f"am_score: probs have {p.shape[1]} classes, reference_probs {r.shape[1]}")
    p_bar, r_bar = p.mean(0, keepdim=True), r.mean(0, keepdim=True)
    kl = float(-entropy(r_bar)[0] - _plogq(r_bar, p_bar)[0, 0])
    return kl + float(entropy(p).mean())


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)  # (F,), (F, F)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative rounding eigenvalues clipped to 0)."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(features_a, features_b) -> float:
    """FID = |mu_a - mu_b|² + Tr(S_a + S_b - 2 (S_a S_b)^½) between two sets of features.

    Args:
        features_a: (n, F); features_b: (m, F); n, m >= 2.

    Tr((S_a S_b)^½) is computed as Σ sqrt(eig(S_a^½ S_b S_a^½)) (same eigenvalues, symmetric PSD), exact and
    free of the complex rounding of a general matrix square root. 0 for identical sets; |shift|² for a set and
    its translate.
    """
    a = torch.as_tensor(np.asarray(features_a) if not torch.is_tensor(features_a) else features_a).double()
    b = torch.as_tensor(np.asarray(features_b) if not torch.is_tensor(features_b) else features_b).double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: expected (n, F) and (m, F), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance: need at least 2 feature vectors per set")
    mu_a, s_a = _mean_cov(a)
    mu_b, s_b = _mean_cov(b)
    root_a = _psd_sqrt(s_a)
    middle = root_a @ s_b @ root_a
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    fid = (mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * tr_covmean
    return float(fid.clamp_min(0))


# ---------------------------------------------------------------------------------------- classifier pass


@dataclass
class ClassifierOutputs:
    """A classifier's view of a set of clips: probs (n, C) float64 and penultimate features (n, F) float64."""

    probs: torch.Tensor
    features: torch.Tensor

    @property
    def predictions(self) -> torch.Tensor:
        return self.probs.argmax(1)


@torch.no_grad()
def classifier_outputs(classifier, waves, batch_size: int = 32, tokenizer=None, device=None) -> ClassifierOutputs:
    """Run an :class:`audiomamba.models.AudioClassifier` over clips, keeping probabilities and features.

    Args:
        classifier: an AudioClassifier (causal or bidirectional). Its penultimate features are the input of
            its head's final linear layer (the pooled backbone features), read with a forward hook.
        waves: (n, L) float tensor, or a sequence of (L_i,) float tensors. Clips of equal length are batched
            together (no padding), so each clip's result does not depend on the others.
        batch_size: clips per forward pass.
        tokenizer: waveform tokenizer when the classifier takes tokens (``config.input == "tokens"``).
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
    if classifier.config.input == "tokens" and tokenizer is None:
        raise ValueError("this classifier takes tokens: pass the tokenizer it was trained with")
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
            if tokenizer is not None and classifier.config.input == "tokens":
                x = tokenizer.encode(x)
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


def generation_scores(generated: ClassifierOutputs, reference: ClassifierOutputs) -> dict[str, float]:
    """IS, mIS, AM and FID of generated clips against reference (real) clips, both seen by one classifier.

    Returns {"is", "mis", "am", "fid", "n_generated", "n_reference", "class_histogram"}, where the histogram
    counts the generated clips per predicted class."""
    counts = torch.bincount(generated.predictions, minlength=generated.probs.shape[1])
    return {
        "is": inception_score(generated.probs),
        "mis": modified_inception_score(generated.probs),
        "am": am_score(generated.probs, reference.probs),
        "fid": frechet_distance(reference.features, generated.features),
        "n_generated": int(generated.probs.shape[0]),
        "n_reference": int(reference.probs.shape[0]),
        "class_histogram": counts.tolist(),
    }


def evaluate_generation(classifier, generated_waves, reference_waves, batch_size: int = 32, tokenizer=None,
                        device=None, reference_labels: torch.Tensor | None = None) -> dict:
    """Classifier-based scores of generated audio, as SaShiMi and Mamba report them for SC09.

    Args:
        classifier: a trained AudioClassifier (e.g. the FSDD or SC09 digit classifier).
        generated_waves: (n, L) or a sequence of (L_i,) float waveforms at the classifier's sample rate,
            preprocessed like its training data.
        reference_waves: real clips, same format (the training or test set): the p_real of AM and the
            reference statistics of FID.
        reference_labels: (m,) true labels of the reference clips; when given, the classifier's accuracy on
            them is reported too (a check that the scorer is trustworthy).

    Returns:
        {"is", "mis", "am", "fid", "n_generated", "n_reference", "class_histogram"[, "reference_accuracy"]}.
    """
    gen = classifier_outputs(classifier, generated_waves, batch_size, tokenizer, device)
    ref = classifier_outputs(classifier, reference_waves, batch_size, tokenizer, device)
    out = generation_scores(gen, ref)
    out["reference_is"] = inception_score(ref.probs)
    if reference_labels is not None:
        labels = torch.as_tensor(reference_labels).long().cpu()
        out["reference_accuracy"] = float((ref.predictions == labels).double().mean())
    return out


# ------------------------------------------------------------------------------------------------ NLL


@torch.no_grad()
def nll_bits_per_sample(model, batches: Iterable, tokenizer=None, device=None) -> dict:
    """Test NLL of an AudioLM in bits per predicted sample (or token), teacher-forced.

    Each sequence x_0..x_{L-1} scores -Σ_{t>=1} log2 p(x_t | x_<t) / (number of scored positions), pooled over
    the whole set (total bits / total positions), as the LM training task reports it.

    Args:
        model: an AudioLM.
        batches: an iterable of dicts {"audio": (B, L) float} (tokenized with ``tokenizer``) or
            {"tokens": (B, L) int} (one stream), optionally with "mask": (B, L) bool marking the positions that
            count as targets; or of plain (B, L) integer token tensors.
        tokenizer: the waveform tokenizer the model was trained with (needed for "audio" batches).

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
                if tokenizer is None:
                    raise ValueError("audio batches need the tokenizer the model was trained with")
                tokens = tokenizer.encode(batch["audio"])
            else:
                tokens = batch["tokens"]
                if tokens.dim() == 3:  # (B, K, T) with K == 1 from a token folder
                    if tokens.shape[1] != 1:
                        raise ValueError("nll_bits_per_sample scores one token stream; got K > 1 codebooks")
                    tokens = tokens[:, 0]
                mask = batch.get("mask")
            tokens = tokens.to(device).long()  # (B, L)
            logits, _ = model(tokens)  # (B, L, V)
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")  # (B, L-1)
            weight = torch.ones_like(nll) if mask is None else mask.to(device)[:, 1:].to(nll.dtype)
            total += float((nll * weight).sum())
            count += int(weight.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("nll_bits_per_sample: no positions to score (empty set or all-false masks)")
    nats = total / count
    return {"bits_per_sample": nats / LN2, "nats_per_sample": nats, "n_samples": count}


def read_waves(paths: Sequence[str | Path], sample_rate: int, loudness_db: float | None = None,
               length: int | None = None) -> list[torch.Tensor]:
    """Generated or real WAV files as (L_i,) float tensors at ``sample_rate`` (mono, resampled), optionally
    loudness-normalized and cropped/padded like a classifier's training data (through AudioFolder)."""
    from audiomamba.data.audio_folder import AudioFolder

    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_waves: no files given")
    ds = AudioFolder(paths[0].parent, sample_rate=sample_rate, length=length, labels="none", files=paths,
                     random_crop=False, loudness_db=loudness_db)
    return [ds[i]["audio"] for i in range(len(ds))]


# ------------------------------------------------------------------------------ experiment-level evaluation


def split_segments(cfg, split: str = "test") -> list[tuple[torch.Tensor, Path]]:
    """The audio of a data split cut into consecutive segments: [(wave (L_i,) float32, file)], L_i <= length.

    ``cfg`` is an ExperimentConfig (or DataConfig) with data.source "folder". Each file is read whole (mono,
    resampled, trimmed and loudness-normalized as the data config says) and cut into pieces of ``data.length``
    samples; the last piece of a file may be shorter. No padding: every sample is real audio.
    """
    from audiomamba.data import AudioDataModule

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
    from audiomamba.tokenizers import build_tokenizer

    if not model.causal:
        raise ValueError("segment_nll_bits needs a causal model")
    data = cfg.data
    tokenizer = build_tokenizer(data.tokenizer, data.bits)
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
            yield {"tokens": tokenizer.encode(audio), "mask": mask}

    out = nll_bits_per_sample(model, batches(), device=device)
    out["n_segments"] = len(segments)
    return out


def _group_of(path: Path, cfg) -> str | None:
    """The "speaker" group of a file name under the data's label regex (FSDD: {digit}_{speaker}_{index})."""
    import re

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
    from audiomamba.data import AudioDataModule
    from audiomamba.tokenizers import build_tokenizer

    device = device if device is not None else next(classifier.parameters()).device
    dm = AudioDataModule(cfg.data)
    dm.setup()
    ds = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}[split]
    tokenizer = build_tokenizer(cfg.data.tokenizer, cfg.data.bits) if cfg.model.input == "tokens" else None
    C = classifier.config.n_classes
    confusion = torch.zeros(C, C, dtype=torch.long)
    per_group: dict[str, list[int]] = {}
    was_training = classifier.training
    classifier.eval()
    try:
        for start in range(0, len(ds), batch_size):
            items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            x = torch.stack([it["audio"] for it in items])
            if tokenizer is not None:
                x = tokenizer.encode(x)
            pred = classifier.classify(x.to(device)).argmax(-1).cpu()
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


def _classifier_view(waves: Sequence[torch.Tensor], cfg, normalize: bool = True) -> list[torch.Tensor]:
    """Clips as a classifier's data config prepares them: loudness-normalized (``normalize``), center-cropped or
    zero-padded to its length."""
    from audiomamba.data.audio_folder import crop_or_pad, normalize_loudness

    out = []
    for w in waves:
        w = w.float()
        if normalize and cfg.data.loudness_db is not None:
            w = normalize_loudness(w, cfg.data.loudness_db)
        if cfg.data.length is not None:
            w = crop_or_pad(w, cfg.data.length, None)
        out.append(w)
    return out


@torch.no_grad()
def evaluate_lm_generation(model, cfg, classifier=None, classifier_cfg=None, n_samples: int = 64,
                           sample_length: int | None = None, out_dir: str | Path | None = None, seed: int = 0,
                           temperature: float = 1.0, batch_size: int = 64, reference_split: str = "train",
                           max_reference: int | None = 2000, device=None, progress: bool = False,
                           cuda_graphs: bool | None = None) -> dict:
    """Generate clips from an AudioLM, write them as WAVs, and score them with a trained classifier.

    Args:
        model: a causal AudioLM on waveform tokens; cfg: its ExperimentConfig (tokenizer, sample rate).
        classifier, classifier_cfg: a trained AudioClassifier and its ExperimentConfig (for its data: the real
            reference clips and how clips are prepared). Without them only the WAVs are written.
        n_samples: clips to generate (in batches of ``batch_size``); sample_length: samples per clip (default
            ``cfg.data.length``); temperature: sampling temperature; seed: sampling seed.
        out_dir: where ``sample_XXX.wav`` go (None: not written).
        reference_split: the classifier data split used as real data (AM's p_real(y), FID's statistics),
            at most ``max_reference`` clips of it.
        cuda_graphs: passed to ``generate`` (None: on for CUDA models).

    Returns:
        {"n_samples", "sample_length", "wav_dir", "seconds_generating"} plus, with a classifier, the scores of
        :func:`evaluate_generation` ("is", "mis", "am", "fid", "class_histogram", "reference_is",
        "reference_accuracy").
    """
    import time

    import soundfile as sf

    from audiomamba.tokenizers import build_tokenizer

    data = cfg.data
    tokenizer = build_tokenizer(data.tokenizer, data.bits)
    length = sample_length or data.length
    if not length:
        raise ValueError("evaluate_lm_generation: give sample_length (data.length is not set)")
    start = time.perf_counter()
    waves = []
    for b in range(0, n_samples, batch_size):
        n = min(batch_size, n_samples - b)
        tokens = model.generate(batch_size=n, num_steps=length, seed=seed + b, temperature=temperature,
                                progress=progress, cuda_graphs=cuda_graphs)
        waves.append(tokenizer.decode(tokens.cpu()))  # (n, length)
    waves = torch.cat(waves)
    out = {"n_samples": n_samples, "sample_length": length, "seconds_generating": time.perf_counter() - start,
           "wav_dir": None}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, w in enumerate(waves.numpy()):
            sf.write(str(out_dir / f"sample_{i:03d}.wav"), np.clip(w, -1, 1), data.sample_rate, subtype="PCM_16")
        out["wav_dir"] = str(out_dir)
    if classifier is None:
        return out
    if classifier_cfg is None:
        raise ValueError("evaluate_lm_generation: a classifier needs its experiment config (classifier_cfg)")
    if classifier_cfg.data.sample_rate != data.sample_rate:
        import torchaudio.functional as AF

        waves = AF.resample(waves, data.sample_rate, classifier_cfg.data.sample_rate)
    from audiomamba.data import AudioDataModule

    dm = AudioDataModule(classifier_cfg.data)
    dm.setup()
    ref_set = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}[reference_split]
    n_ref = len(ref_set) if max_reference is None else min(len(ref_set), max_reference)
    idx = torch.randperm(len(ref_set), generator=torch.Generator().manual_seed(0))[:n_ref].sort().values
    ref_items = [ref_set[int(i)] for i in idx]  # center crop / pad as in evaluation
    ref_waves = [it["audio"] for it in ref_items]
    ref_labels = torch.stack([it["label"] for it in ref_items])
    tok = None
    if classifier.config.input == "tokens":
        tok = build_tokenizer(classifier_cfg.data.tokenizer, classifier_cfg.data.bits)
    # an LM trained on data normalized like the classifier's generates at that level already; renormalizing
    # whole padded clips would not match how the real clips were normalized (before padding)
    renormalize = classifier_cfg.data.loudness_db != data.loudness_db
    scores = evaluate_generation(classifier, _classifier_view(list(waves), classifier_cfg, renormalize), ref_waves,
                                 batch_size=batch_size, tokenizer=tok, device=device, reference_labels=ref_labels)
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
