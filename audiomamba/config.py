"""Configuration schemas: dataclasses loaded through OmegaConf.structured.

A typo in a YAML file or an override fails at load time with the key's full name; cross-field checks live in
``__post_init__`` (they run when a merged config is turned back into its dataclass).

Model part (this section): :class:`BackboneConfig`, :class:`ModelConfig`, :func:`load_model_config`. Presets
are the YAML files under ``configs/model/`` (installed as the package ``audiomamba.configs``).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

MIXER_NAMES = ("mamba1", "mamba2", "s4d")
NORM_NAMES = ("layernorm", "rmsnorm")
ARCH_NAMES = ("backbone", "logmel_cnn")


def load_yaml(path: str | Path) -> Any:
    """A YAML file as plain containers (interpolations resolved); ValueError naming the file, with the line and
    column of a syntax error, for a file that is not valid YAML or not text."""
    import yaml  # omegaconf's parser (PyYAML)

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (YAML) file") from None
    except OmegaConfBaseException as err:
        raise ValueError(f"{path}: {str(err).strip().splitlines()[0]}") from None


def _broadcast(name: str, values: Sequence, n: int) -> list:
    """One value per stage: a single-element list applies to all ``n`` stages."""
    values = list(values)
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"backbone.{name} needs 1 or {n} entries (one per stage), got {len(values)}: {values}")
    return values


@dataclass
class BackboneConfig:
    """The multi-resolution (SaShiMi U-Net) backbone.

    Stages run at rates L, L/p1, L/(p1 p2), ...: stage 0 is the outer (full-rate) stage, stage len(pool) the
    innermost. Per-stage fields take one entry per stage or a single entry for all of them.

    Attributes:
        d_model: width D of stage 0.
        pool: pooling factors between consecutive stages, outer first (each >= 2).
        expand: width multiplier at each pooling step (len(pool) entries, or one for all).
        n_blocks: residual blocks per stage (len(pool) + 1 entries, or one for all; 0 allowed).
        mixer: mixer name per stage, from ``audiomamba.layers.MIXERS`` ("mamba1", "mamba2", "s4d").
        mixer_options: keyword arguments per mixer name, e.g. ``{"mamba1": {"d_state": 16}}``.
        mlp_expand: gated MLP after each mixer with hidden width mlp_expand * width; 0 means no MLP.
        norm: "layernorm" or "rmsnorm".
        norm_eps: epsilon of the norms.
        dropout: dropout on each residual branch.
        bidirectional: forward and reversed mixers (non-causal, no streaming state).
    """

    d_model: int = 64
    pool: list[int] = field(default_factory=lambda: [4, 4])
    expand: list[int] = field(default_factory=lambda: [2])
    n_blocks: list[int] = field(default_factory=lambda: [8])
    mixer: list[str] = field(default_factory=lambda: ["mamba1"])
    mixer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    mlp_expand: int = 0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    dropout: float = 0.0
    bidirectional: bool = False

    def __post_init__(self) -> None:
        if self.d_model < 1:
            raise ValueError(f"backbone.d_model must be >= 1, got {self.d_model}")
        for p in self.pool:
            if p < 2:
                raise ValueError(f"backbone.pool factors must be >= 2, got {list(self.pool)}")
        n = len(self.pool) + 1
        if self.pool:
            _broadcast("expand", self.expand, n - 1)
        for e in self.expand:
            if e < 1:
                raise ValueError(f"backbone.expand entries must be >= 1, got {list(self.expand)}")
        for b in _broadcast("n_blocks", self.n_blocks, n):
            if b < 0:
                raise ValueError(f"backbone.n_blocks entries must be >= 0, got {list(self.n_blocks)}")
        for m in _broadcast("mixer", self.mixer, n):
            if m not in MIXER_NAMES:
                raise ValueError(f"backbone.mixer: unknown mixer {m!r}; choose from {list(MIXER_NAMES)}")
        for m in self.mixer_options:
            if m not in MIXER_NAMES:
                raise ValueError(f"backbone.mixer_options: unknown mixer {m!r}; choose from {list(MIXER_NAMES)}")
        if self.norm not in NORM_NAMES:
            raise ValueError(f"backbone.norm must be one of {list(NORM_NAMES)}, got {self.norm!r}")
        if self.mlp_expand < 0:
            raise ValueError(f"backbone.mlp_expand must be >= 0, got {self.mlp_expand}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"backbone.dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_stages(self) -> int:
        return len(self.pool) + 1

    @property
    def pool_product(self) -> int:
        """Samples per frame of the innermost stage (a segment length should be a multiple of it)."""
        out = 1
        for p in self.pool:
            out *= p
        return out

    def stage_widths(self) -> list[int]:
        widths = [self.d_model]
        for e in (_broadcast("expand", self.expand, len(self.pool)) if self.pool else []):
            widths.append(widths[-1] * e)
        return widths

    def stage_blocks(self) -> list[int]:
        return _broadcast("n_blocks", self.n_blocks, self.num_stages)

    def stage_mixers(self) -> list[str]:
        return _broadcast("mixer", self.mixer, self.num_stages)


@dataclass
class LogMelCNNConfig:
    """The log-mel + CNN baseline classifier (``audiomamba.baselines.LogMelCNNClassifier``, ``arch: logmel_cnn``).

    Attributes:
        sample_rate: rate of the input waveform in Hz (the mel filters are laid out for it).
        n_fft, win_length, hop_length: the STFT, in samples.
        n_mels: mel bands between 0 Hz and sample_rate / 2.
        channels: output channels of the convolution blocks; each block is two 3x3 convolutions (BatchNorm, ReLU)
            and 2x2 max pooling; the last block is pooled over time and frequency.
        dropout: dropout before the linear head.
    """

    sample_rate: int = 8000
    n_fft: int = 256
    win_length: int = 200
    hop_length: int = 80
    n_mels: int = 40
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.sample_rate < 1 or self.hop_length < 1 or self.n_mels < 1 or not self.channels:
            raise ValueError("logmel_cnn needs sample_rate, hop_length, n_mels >= 1 and at least one channel entry")
        if not 1 <= self.win_length <= self.n_fft:
            raise ValueError(f"logmel_cnn.win_length must be in [1, n_fft={self.n_fft}], got {self.win_length}")
        if min(self.channels) < 1:
            raise ValueError(f"logmel_cnn.channels must be >= 1, got {list(self.channels)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"logmel_cnn.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ModelConfig:
    """AudioLM or AudioClassifier = input embedding -> backbone -> head.

    Attributes:
        kind: "lm" (next-token logits per codebook) or "classifier" (class logits).
        vocab_size: V, tokens per codebook (256 for 8-bit mu-law).
        n_codebooks: K token streams whose embeddings are summed (1 for raw quantized audio).
        input: "tokens" or "waveform" (float samples through a linear map; classifier only).
        n_classes: classes of a classifier.
        pooling: classifier pooling over time: "mean" (running mean when causal) or "last".
        start_token: token fed at the first generation step when there is no prompt (None: vocab_size // 2,
            silence for mu-law and linear 8-bit).
        backbone: the backbone.
        arch: "backbone" (embedding -> backbone -> head) or "logmel_cnn" (the baseline: log-mel spectrogram ->
            CNN -> head, a classifier of waveforms, configured by ``logmel_cnn``; ``backbone`` is then unused).
        logmel_cnn: the baseline's settings.
    """

    kind: str = "lm"
    vocab_size: int = 256
    n_codebooks: int = 1
    input: str = "tokens"
    n_classes: int = 10
    pooling: str = "mean"
    start_token: Optional[int] = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    arch: str = "backbone"
    logmel_cnn: LogMelCNNConfig = field(default_factory=LogMelCNNConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCH_NAMES:
            raise ValueError(f"arch must be one of {list(ARCH_NAMES)}, got {self.arch!r}")
        if self.arch == "logmel_cnn" and (self.kind, self.input) != ("classifier", "waveform"):
            raise ValueError("arch 'logmel_cnn' is a classifier of waveforms: set kind: classifier, input: waveform")
        if self.kind not in ("lm", "classifier"):
            raise ValueError(f"kind must be 'lm' or 'classifier', got {self.kind!r}")
        if self.input not in ("tokens", "waveform"):
            raise ValueError(f"input must be 'tokens' or 'waveform', got {self.input!r}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.n_codebooks < 1:
            raise ValueError(f"n_codebooks must be >= 1, got {self.n_codebooks}")
        if self.kind == "lm":
            if self.input != "tokens":
                raise ValueError("kind 'lm' needs input 'tokens' (it predicts the next token)")
            if self.backbone.bidirectional:
                raise ValueError("kind 'lm' needs a causal backbone: set backbone.bidirectional to false")
        else:
            if self.n_classes < 2:
                raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
            if self.pooling not in ("mean", "last"):
                raise ValueError(f"pooling must be 'mean' or 'last', got {self.pooling!r}")
            if self.input == "waveform" and self.n_codebooks != 1:
                raise ValueError("input 'waveform' takes one channel: n_codebooks must be 1")
        if self.start_token is not None and not 0 <= self.start_token < self.vocab_size:
            raise ValueError(f"start_token must be in [0, vocab_size={self.vocab_size}), got {self.start_token}")

    @property
    def first_token(self) -> int:
        return self.vocab_size // 2 if self.start_token is None else self.start_token


_LIST_FIELDS = {"pool", "expand", "n_blocks", "mixer"}


def model_preset_names() -> list[str]:
    """Names of the model presets shipped in ``audiomamba.configs`` (configs/model/*.yaml)."""
    root = importlib.resources.files("audiomamba.configs") / "model"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_spec(spec: Any) -> tuple[Any, str]:
    """A model spec as a plain container plus a description of where it came from."""
    if isinstance(spec, ModelConfig):
        return OmegaConf.to_container(OmegaConf.structured(spec)), "a ModelConfig"
    if isinstance(spec, DictConfig):
        return OmegaConf.to_container(spec, resolve=True), "a DictConfig"
    if isinstance(spec, Mapping):
        return dict(spec), "a mapping"
    if isinstance(spec, (str, Path)):
        text = str(spec)
        if text.endswith((".yaml", ".yml")) or Path(text).is_file():
            path = Path(text)
            if not path.is_file():
                raise FileNotFoundError(f"model config file not found: {path}")
            return load_yaml(path), str(path)
        resource = importlib.resources.files("audiomamba.configs") / "model" / f"{text}.yaml"
        if not resource.is_file():
            raise ValueError(f"unknown model preset {text!r}; presets: {model_preset_names()} (or pass a YAML path)")
        return OmegaConf.to_container(OmegaConf.create(resource.read_text()), resolve=True), f"preset {text!r}"
    raise TypeError(f"model spec must be a preset name, YAML path, mapping or ModelConfig, got {type(spec)}")


def _nest(overrides: Mapping[str, Any] | Sequence[str] | None) -> dict:
    """Dotted-key overrides ({"backbone.d_model": 32} or ["backbone.d_model=32"]) as a nested dict."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    out: dict = {}
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _lists_from_scalars(tree: Any) -> Any:
    """Per-stage backbone fields also accept a scalar (meaning: the same for every stage)."""
    if isinstance(tree, dict) and isinstance(tree.get("backbone"), dict):
        bb = tree["backbone"]
        for key in _LIST_FIELDS & bb.keys():
            if isinstance(bb[key], (int, str)):
                bb[key] = [bb[key]]
    return tree


def load_model_config(spec: Any, overrides: Mapping[str, Any] | Sequence[str] | None = None) -> ModelConfig:
    """Build a validated :class:`ModelConfig`.

    Args:
        spec: preset name (``"sc09_small"``), path of a YAML file, mapping, DictConfig or ModelConfig.
        overrides: dotted keys with values (``{"backbone.d_model": 32}``) or ``["backbone.d_model=32"]``.

    Raises:
        ValueError: unknown key (named with its full path) or inconsistent fields.
    """
    tree, source = _read_spec(spec)
    if not isinstance(tree, dict):
        raise ValueError(f"model config from {source} must be a mapping, got {type(tree).__name__}")
    schema = OmegaConf.structured(ModelConfig)
    try:
        merged = OmegaConf.merge(schema, _lists_from_scalars(tree), _lists_from_scalars(_nest(overrides)))
        return OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        raise ValueError(f"unknown model config key {err.full_key!r} (from {source} or overrides)") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ValueError(f"invalid model config value for {key!r} (from {source}): {err.msg}") from None


def model_config_to_yaml(config: ModelConfig) -> str:
    """The resolved config as YAML (saved beside weights and printed by the CLI)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


# ----------------------------------------------------------------------------------------------------------------
# Data, optimization, trainer and experiment schemas (training section). An experiment YAML may name presets in
# a ``defaults`` mapping ({model: sc09_small, data: synthetic, trainer: cpu}); precedence is
# schema defaults < presets < the experiment file < command-line dotlist overrides.
# ----------------------------------------------------------------------------------------------------------------

TASKS = ("lm", "classify")
DATA_SOURCES = ("synthetic", "folder", "tokens", "selective_copying")
WAVE_TOKENIZERS = ("mulaw", "linear", "none")
CODEC_PATTERNS = ("parallel", "delay", "flatten")
SPLIT_RULES = ("random", "fsdd", "folders", "speaker")
LABEL_SOURCES = ("folder", "csv", "regex", "none")
SYNTHETIC_CLASSES = ("note", "chirp", "pulses", "noise", "tremolo", "bell")


@dataclass
class SyntheticConfig:
    """The built-in synthetic set (audiomamba.data.synthetic): sizes of the splits, seed, classes."""

    train_size: int = 768
    val_size: int = 96
    test_size: int = 192
    seed: int = 0
    classes: list[str] = field(default_factory=lambda: list(SYNTHETIC_CLASSES))

    def __post_init__(self) -> None:
        for name in ("train_size", "val_size", "test_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.synthetic.{name} must be >= 1, got {getattr(self, name)}")
        bad = [c for c in self.classes if c not in SYNTHETIC_CLASSES]
        if bad or len(self.classes) < 2:
            raise ValueError(f"data.synthetic.classes: need >= 2 of {list(SYNTHETIC_CLASSES)}, "
                             f"got {list(self.classes)}")


@dataclass
class SelectiveCopyingConfig:
    """The selective-copying task (audiomamba.data.selective_copying; Mamba paper Table 1): C context positions
    holding M data tokens among blanks, a separator, then the M tokens to copy; vocabulary V (blank 0, SEP V-1)."""

    context_length: int = 256
    n_tokens: int = 16
    vocab_size: int = 16
    train_size: int = 1_000_000
    val_size: int = 512
    test_size: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size < 4 or not 1 <= self.n_tokens <= self.context_length:
            raise ValueError("data.selective_copying needs vocab_size >= 4 and 1 <= n_tokens <= context_length, "
                             f"got {self.vocab_size}, {self.n_tokens}, {self.context_length}")
        for name in ("train_size", "val_size", "test_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.selective_copying.{name} must be >= 1, got {getattr(self, name)}")


def _check_range(name: str, values, low: float = float("-inf")) -> None:
    """A [low, high] pair of an augmentation, with low <= high and both >= ``low``."""
    if len(values) != 2 or values[0] > values[1] or values[0] < low:
        raise ValueError(f"data.augment.{name} must be [low, high] with {low} <= low <= high, got {list(values)}")


@dataclass
class _Augmentation:
    """p: probability that a training clip gets this augmentation (0: off)."""

    p: float = 0.0

    def _check(self, name: str) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"data.augment.{name}.p must be in [0, 1], got {self.p}")


@dataclass
class SpeedAugment(_Augmentation):
    """Speed perturbation by resampling: a factor drawn from ``factors`` (> 1: faster, shorter, higher)."""

    factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])

    def __post_init__(self) -> None:
        self._check("speed")
        if not self.factors or min(self.factors) <= 0:
            raise ValueError(f"data.augment.speed.factors must be positive numbers, got {list(self.factors)}")


@dataclass
class PitchAugment(_Augmentation):
    """Pitch shift at constant duration by a number of semitones drawn uniformly in [-semitones, semitones]."""

    semitones: float = 2.0

    def __post_init__(self) -> None:
        self._check("pitch")
        if self.semitones < 0:
            raise ValueError(f"data.augment.pitch.semitones must be >= 0, got {self.semitones}")


@dataclass
class ReverbAugment(_Augmentation):
    """Room reverberation: a synthetic impulse response (direct path + exponentially decaying noise) with a
    reverberation time RT60 (s) and a direct-to-reverberant ratio (dB) drawn uniformly in their ranges."""

    rt60: list[float] = field(default_factory=lambda: [0.1, 0.5])
    drr_db: list[float] = field(default_factory=lambda: [0.0, 10.0])

    def __post_init__(self) -> None:
        self._check("reverb")
        _check_range("reverb.rt60", self.rt60, 1e-3)
        _check_range("reverb.drr_db", self.drr_db)


@dataclass
class BandStopAugment(_Augmentation):
    """Frequency masking on the waveform: up to ``n`` band-reject filters, each of a width drawn in ``hz``
    (Hz) around a centre drawn uniformly between 100 Hz and 0.9 x Nyquist."""

    n: int = 1
    hz: list[float] = field(default_factory=lambda: [100.0, 600.0])

    def __post_init__(self) -> None:
        self._check("band_stop")
        if self.n < 1:
            raise ValueError(f"data.augment.band_stop.n must be >= 1, got {self.n}")
        _check_range("band_stop.hz", self.hz, 1.0)


@dataclass
class TimeMaskAugment(_Augmentation):
    """Time masking on the waveform: up to ``n`` segments, each up to ``ms`` milliseconds long, set to zero."""

    n: int = 2
    ms: float = 40.0

    def __post_init__(self) -> None:
        self._check("time_mask")
        if self.n < 1 or self.ms <= 0:
            raise ValueError(f"data.augment.time_mask needs n >= 1 and ms > 0, got n={self.n}, ms={self.ms}")


@dataclass
class ShiftAugment(_Augmentation):
    """Time shift within the clip by up to ``ms`` milliseconds either way (zeros enter at the edge)."""

    ms: float = 100.0

    def __post_init__(self) -> None:
        self._check("shift")
        if self.ms < 0:
            raise ValueError(f"data.augment.shift.ms must be >= 0, got {self.ms}")


@dataclass
class GainAugment(_Augmentation):
    """Gain drawn uniformly in [-db, +db] dB."""

    db: float = 6.0

    def __post_init__(self) -> None:
        self._check("gain")
        if self.db < 0:
            raise ValueError(f"data.augment.gain.db must be >= 0, got {self.db}")


@dataclass
class NoiseAugment(_Augmentation):
    """Additive white Gaussian noise at a signal-to-noise ratio (dB, over the whole clip) drawn in ``snr_db``."""

    snr_db: list[float] = field(default_factory=lambda: [10.0, 40.0])

    def __post_init__(self) -> None:
        self._check("noise")
        _check_range("noise.snr_db", self.snr_db)


@dataclass
class AugmentConfig:
    """On-the-fly augmentation of training audio (``audiomamba.data.augment``), in this order: speed, pitch,
    reverb, band_stop, time_mask, shift, gain, noise; then the clip is peak-limited to 0.99. Each acts with its
    probability ``p`` (all 0 by default: off). Draws are seeded per (seed, epoch, item); validation and test
    clips are never augmented; token models get the augmented waveform before tokenization."""

    speed: SpeedAugment = field(default_factory=SpeedAugment)
    pitch: PitchAugment = field(default_factory=PitchAugment)
    reverb: ReverbAugment = field(default_factory=ReverbAugment)
    band_stop: BandStopAugment = field(default_factory=BandStopAugment)
    time_mask: TimeMaskAugment = field(default_factory=TimeMaskAugment)
    shift: ShiftAugment = field(default_factory=ShiftAugment)
    gain: GainAugment = field(default_factory=GainAugment)
    noise: NoiseAugment = field(default_factory=NoiseAugment)

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name).p > 0 for name in AUGMENTATIONS)


AUGMENTATIONS = ("speed", "pitch", "reverb", "band_stop", "time_mask", "shift", "gain", "noise")


@dataclass
class DataConfig:
    """Where examples come from and how they are cut, tokenized and batched.

    Attributes:
        source: "synthetic" (built-in, no files) | "folder" (audio files under ``root``) | "tokens" (.npy/.pt
            arrays [K, T] under ``root``).
        sample_rate: audio rate; files are resampled to it.
        length: samples (audio) or frames (tokens) per training example; crop/pad to it (None: whole files).
        tokenizer: waveform -> tokens for token models: "mulaw" | "linear" | "none" (raw float input).
        bits: tokenizer width; V = 2**bits.
        pattern: codec token interleaving for source "tokens": "parallel" | "delay" | "flatten".
        n_codebooks: K of the token files (source "tokens").
        codebook_size: codes per codebook of the token files; the delay pattern's filler token is this value.
        labels, label_regex, csv_path: label source for files (see AudioFolder).
        split: "random" (seeded fractions) | "fsdd" (take index 0-4 = test) | "folders" (train/ val/ test/) |
            "speaker" (every file of ``test_speaker`` = test, a seeded ``val_fraction`` of the rest = validation;
            the speaker is the group "speaker" of ``label_regex``: leave-one-speaker-out evaluation).
        test_speaker: the held-out speaker of split "speaker".
        random_crop: training clips cropped at a random offset (validation/test: center crop).
        random_pad, gain_db: training-time augmentation of audio files: short clips placed at a random offset in
            the padded window; a random gain in [-gain_db, +gain_db] dB (see AudioFolder).
        trim_db, loudness_db: optional trim (dB below peak) and RMS normalization (dBFS) of files.
        skip_bad_files: skip and count unreadable files instead of failing.
        augment: on-the-fly augmentation of training audio (see AugmentConfig; off by default).
    """

    source: str = "synthetic"
    root: Optional[str] = None
    sample_rate: int = 8000
    length: Optional[int] = 4096
    tokenizer: str = "mulaw"
    bits: int = 8
    pattern: str = "parallel"
    n_codebooks: Optional[int] = None
    codebook_size: Optional[int] = None
    labels: str = "folder"
    label_regex: Optional[str] = None
    csv_path: Optional[str] = None
    extensions: list[str] = field(default_factory=list)
    split: str = "random"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    test_speaker: Optional[str] = None
    random_crop: bool = True
    random_pad: bool = False
    gain_db: float = 0.0
    trim_db: Optional[float] = None
    loudness_db: Optional[float] = None
    skip_bad_files: bool = False
    batch_size: int = 16
    eval_batch_size: Optional[int] = None
    num_workers: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    selective_copying: SelectiveCopyingConfig = field(default_factory=SelectiveCopyingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        choices = {"source": DATA_SOURCES, "tokenizer": WAVE_TOKENIZERS, "pattern": CODEC_PATTERNS,
                   "split": SPLIT_RULES, "labels": LABEL_SOURCES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"data.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.source in ("folder", "tokens") and not self.root:
            raise ValueError(f"data.root is required for data.source={self.source!r}")
        if self.length is not None and self.length < 2:
            raise ValueError(f"data.length must be >= 2 (or null), got {self.length}")
        if self.gain_db < 0:
            raise ValueError(f"data.gain_db must be >= 0, got {self.gain_db}")
        if not 2 <= self.bits <= 16:
            raise ValueError(f"data.bits must be in [2, 16], got {self.bits}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ValueError("data.val_fraction and data.test_fraction must be in [0, 1)")
        if self.source == "tokens" and self.pattern == "delay" and self.codebook_size is None:
            raise ValueError("data.pattern 'delay' needs data.codebook_size (its filler token)")
        if self.split == "speaker" and not self.test_speaker:
            raise ValueError("data.split 'speaker' needs data.test_speaker (the held-out speaker's name)")
        if self.augment.enabled and self.source not in ("folder", "synthetic"):
            raise ValueError(f"data.augment acts on audio: data.source {self.source!r} holds no waveforms")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``; gradient clipping; optional EMA."""

    lr: float = 2e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: Optional[float] = 1.0
    ema_decay: Optional[float] = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas needs 2 entries, got {list(self.betas)}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("optim.warmup_steps must be >= 0 and optim.min_lr_ratio in [0, 1]")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"optim.ema_decay must be in (0, 1) or null, got {self.ema_decay}")


@dataclass
class TrainerConfig:
    """Lightning Trainer settings plus checkpointing, logging and sampling.

    Attributes:
        devices, strategy, accelerator, num_nodes: as in lightning.Trainer (DDP: devices=2, strategy=ddp).
        precision: "auto" = bf16-mixed on GPU, 32-true on CPU; or any Lightning precision string.
        val_every_n_steps: validate every N training steps (None: once per epoch).
        ckpt_every_n_steps: also save a checkpoint every N steps (0: only at validation).
        sample_every_n_epochs: log generated WAVs + spectrogram PNGs every N epochs (0: never; LM only).
        output_dir: runs go to ``output_dir/run_name`` (run_name defaults to the experiment name).
    """

    max_steps: int = 1000
    max_epochs: Optional[int] = None
    accelerator: str = "auto"
    devices: Union[int, str] = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    accumulate_grad_batches: int = 1
    val_every_n_steps: Optional[int] = None
    limit_val_batches: float = 1.0
    limit_test_batches: float = 1.0
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 10
    ckpt_every_n_steps: int = 0
    save_top_k: int = 1
    sample_every_n_epochs: int = 0
    n_samples: int = 2
    sample_length: int = 8000
    output_dir: str = "outputs"
    run_name: Optional[str] = None
    seed: int = 0
    deterministic: bool = False
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1 and (self.max_epochs is None or self.max_epochs < 1):
            raise ValueError("set trainer.max_steps >= 1 or trainer.max_epochs >= 1")
        if self.ckpt_every_n_steps < 0 or self.sample_every_n_epochs < 0:
            raise ValueError("trainer.ckpt_every_n_steps and trainer.sample_every_n_epochs must be >= 0")


@dataclass
class ExperimentConfig:
    """One training run: task, model, data, optimizer, trainer.

    Attributes:
        task: "lm" (next-token prediction, NLL in bits) or "classify" (cross-entropy, accuracy).
    """

    name: str = "experiment"
    task: str = "lm"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        m, d = self.model, self.data
        want = "lm" if self.task == "lm" else "classifier"
        if m.kind != want:
            raise ValueError(f"task {self.task!r} needs model.kind {want!r}, got {m.kind!r}")
        if d.source == "selective_copying":
            if self.task != "lm" or m.input != "tokens" or m.n_codebooks != 1:
                raise ValueError("data.source 'selective_copying' needs task 'lm' with one token stream")
            if m.vocab_size != d.selective_copying.vocab_size:
                raise ValueError(f"model.vocab_size={m.vocab_size} must equal data.selective_copying.vocab_size="
                                 f"{d.selective_copying.vocab_size}")
        elif d.source == "tokens":
            k = 1 if d.pattern == "flatten" else d.n_codebooks
            if k is not None and m.n_codebooks != k:
                raise ValueError(f"model.n_codebooks={m.n_codebooks} but the {d.pattern} token stream has K={k}")
            if d.codebook_size is not None:
                need = d.codebook_size + (1 if d.pattern == "delay" else 0)
                if m.vocab_size < need:
                    raise ValueError(f"model.vocab_size={m.vocab_size} < {need} needed by data.codebook_size "
                                     f"{d.codebook_size} with pattern {d.pattern!r}")
        elif m.input == "tokens":
            if d.tokenizer == "none":
                raise ValueError("a token model on audio needs data.tokenizer 'mulaw' or 'linear', not 'none'")
            if m.vocab_size != 2**d.bits:
                raise ValueError(f"model.vocab_size={m.vocab_size} must equal 2**data.bits={2**d.bits}")
            if m.n_codebooks != 1:
                raise ValueError(f"audio tokenized by data.tokenizer is one stream: model.n_codebooks must be 1, "
                                 f"got {m.n_codebooks}")
        if self.task == "classify" and d.source == "synthetic" and m.n_classes != len(d.synthetic.classes):
            raise ValueError(f"model.n_classes={m.n_classes} but data.synthetic.classes has "
                             f"{len(d.synthetic.classes)} classes")


def _config_root():
    return importlib.resources.files("audiomamba.configs")


def config_names(group: str) -> list[str]:
    """Names of the YAML presets of a group shipped in ``audiomamba.configs`` (e.g. "experiment")."""
    root = _config_root() / group
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_group(group: str, spec: str) -> tuple[dict, str]:
    """A group preset (name or YAML path) as a plain dict, with a description of its source."""
    if group == "model":
        return _read_spec(spec)
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"{group} config file not found: {path}")
        return load_yaml(path), str(path)
    resource = _config_root() / group / f"{spec}.yaml"
    if not resource.is_file():
        raise ValueError(f"unknown {group} preset {spec!r}; presets: {config_names(group)} (or pass a YAML path)")
    return OmegaConf.to_container(OmegaConf.create(resource.read_text()), resolve=True), f"{group} preset {spec!r}"


def _merge_layer(base: DictConfig, layer: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except ConfigKeyError as err:
        raise ValueError(f"unknown config key {err.full_key!r} (from {source})") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ValueError(f"invalid config value for {key!r} (from {source}): {err.msg.splitlines()[0]}") from None


def load_experiment_config(spec: Any = None, overrides: Sequence[str] | None = None) -> ExperimentConfig:
    """Build a validated :class:`ExperimentConfig`.

    Args:
        spec: an experiment preset name ("quickstart_lm"), a YAML path, a mapping, or None (schema defaults).
            The YAML may hold ``defaults: {model: NAME_OR_PATH, data: ..., optim: ..., trainer: ...}``.
        overrides: dotlist strings, e.g. ``["trainer.max_steps=100", "model.backbone.d_model=32"]``;
            ``defaults.GROUP=NAME`` swaps a preset (``defaults.trainer=ddp``).

    Raises:
        ValueError: an unknown key (named with its full path and source) or an inconsistent value.
    """
    if spec is None:
        tree, source = {}, "defaults"
    elif isinstance(spec, Mapping):
        tree, source = dict(spec), "a mapping"
    elif isinstance(spec, DictConfig):
        tree, source = OmegaConf.to_container(spec, resolve=True), "a DictConfig"
    else:
        tree, source = _read_group("experiment", str(spec))
    if not isinstance(tree, dict):
        raise ValueError(f"experiment config from {source} must be a mapping, got {type(tree).__name__}")
    defaults = tree.pop("defaults", None) or {}
    if not isinstance(defaults, Mapping):
        raise ValueError(f"'defaults' in {source} must be a mapping like {{model: sc09_small, data: synthetic}}")
    defaults = dict(defaults)
    rest = []
    for item in overrides or []:  # "defaults.trainer=ddp" swaps a preset (applied in the presets layer)
        if item.startswith("defaults."):
            key, sep, value = item[len("defaults."):].partition("=")
            if not sep or not value:
                raise ValueError(f"bad override {item!r}: write defaults.GROUP=NAME, e.g. defaults.trainer=ddp")
            defaults[key] = value
        else:
            rest.append(item)
    overrides = rest
    cfg = OmegaConf.structured(ExperimentConfig)
    for group, name in defaults.items():
        if group not in ("model", "data", "optim", "trainer"):
            raise ValueError(f"unknown defaults group {group!r} in {source}; use model, data, optim or trainer")
        part, part_source = _read_group(group, str(name))
        if group == "model":
            part = _lists_from_scalars(part)
        cfg = _merge_layer(cfg, {group: part}, part_source)
    if isinstance(tree.get("model"), dict):
        tree["model"] = _lists_from_scalars(tree["model"])
    cfg = _merge_layer(cfg, tree, source)
    if overrides:
        try:
            dotlist = OmegaConf.from_dotlist(list(overrides))
        except Exception as err:  # OmegaConf or YAML syntax errors
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"bad override in {list(overrides)} (write key=value): {first}") from None
        dot = OmegaConf.to_container(dotlist)
        if isinstance(dot.get("model"), dict):
            dot["model"] = _lists_from_scalars(dot["model"])
        cfg = _merge_layer(cfg, dot, "command-line overrides")
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid config: {err.msg.splitlines()[0]}") from None


def experiment_config_to_yaml(config: ExperimentConfig) -> str:
    """The resolved experiment config as YAML (printed at the start of a run and saved with checkpoints)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
