"""The audio contract of a model: what audio it takes and how that audio becomes its input.

A model trained on 8 kHz mu-law tokens must be fed 8 kHz mu-law tokens; a classifier's class indices mean the
label names it was trained with. :class:`AudioContract` records these facts on the model (``model.audio``),
``model.save`` writes them into the weights file and ``load_model`` restores them, so that every consumer
(command line, training, evaluation, serving, export) reads them from the model instead of guessing.

Stored format: the metadata of ``model.safetensors`` holds one entry, ``audiomamba.audio``, a JSON object
(read with ``safetensors.safe_open(...).metadata()``, no unpickling)::

    {"version": 1, "sample_rate": 8000, "input": "tokens",
     "tokenizer": {"kind": "mulaw", "bits": 8},
     "labels": ["chirp", "note", ...], "length": 4096, "trim_db": null, "loudness_db": null}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from .config import ExperimentConfig
from .tokenizers import PATTERNS, CodebookPattern, build_tokenizer

CONTRACT_VERSION = 1
METADATA_KEY = "audiomamba.audio"
INPUT_KINDS = ("waveform", "tokens")
TOKENIZER_KINDS = ("mulaw", "linear", "codec")


@dataclass(frozen=True)
class TokenizerSpec:
    """How audio becomes tokens.

    Attributes:
        kind: "mulaw" or "linear" (waveform quantizers, one token per sample) or "codec" (K codebooks of codec
            codes at the codec's frame rate, interleaved by ``pattern``).
        bits: code width of a waveform quantizer (V = 2**bits); None for codecs.
        n_codebooks: K codebooks (1 for waveform quantizers).
        pattern: codec interleaving: "parallel" | "delay" | "flatten" (see ``audiomamba.tokenizers.codec``).
        codebook_size: codes per codebook (the delay pattern's filler token is this value); codecs only.
    """

    kind: str
    bits: int | None = None
    n_codebooks: int = 1
    pattern: str = "parallel"
    codebook_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(f"audio contract: tokenizer kind must be one of {list(TOKENIZER_KINDS)}, "
                             f"got {self.kind!r}")
        if self.kind == "codec":
            if self.pattern not in PATTERNS or self.n_codebooks < 1:
                raise ValueError(f"audio contract: codec tokenizer needs a pattern in {list(PATTERNS)} and "
                                 f"n_codebooks >= 1, got {self.pattern!r}, {self.n_codebooks}")
        elif self.bits is None or not 2 <= self.bits <= 16 or self.n_codebooks != 1:
            raise ValueError(f"audio contract: a {self.kind} tokenizer needs bits in [2, 16] and one codebook, "
                             f"got bits={self.bits}, n_codebooks={self.n_codebooks}")

    def build(self):
        """The waveform tokenizer (``MuLawTokenizer`` / ``LinearTokenizer``) this spec names.

        Raises ValueError for codec tokens: their codec is not part of the model (encode audio with it first)."""
        if self.kind == "codec":
            raise ValueError("this model takes codec tokens: encode the audio with the codec its training tokens "
                             "came from (e.g. audiomamba.tokenizers.EncodecTokenizer), then interleave them with "
                             "its codebook pattern")
        return build_tokenizer(self.kind, self.bits)

    def codebook_pattern(self) -> CodebookPattern:
        """The codec interleaving pattern (its filler token is ``codebook_size``)."""
        if self.kind != "codec":
            raise ValueError(f"a {self.kind} tokenizer has no codebook pattern")
        return CodebookPattern(self.pattern, self.n_codebooks, special_token=self.codebook_size or 0)


@dataclass(frozen=True)
class AudioContract:
    """What audio a model takes, as its training data had it.

    Attributes:
        sample_rate: samples per second of the model's audio (files at other rates are resampled to it).
        input: "waveform" (float samples) or "tokens".
        tokenizer: how audio becomes the model's tokens; None for waveform input, and for token models whose
            tokens are not audio (e.g. the selective-copying task's symbols).
        labels: a classifier's class names in index order (empty for language models).
        length: samples per training clip (None: whole files); a classifier pads shorter files to it.
        trim_db: silence trimmed from the ends of files, in dB below peak (None: no trimming).
        loudness_db: RMS loudness files are normalized to, in dBFS (None: levels kept).
    """

    sample_rate: int
    input: str
    tokenizer: TokenizerSpec | None = None
    labels: tuple[str, ...] = field(default_factory=tuple)
    length: int | None = None
    trim_db: float | None = None
    loudness_db: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sample_rate, int) or self.sample_rate < 1:
            raise ValueError(f"audio contract: sample_rate must be a positive integer, got {self.sample_rate!r}")
        if self.input not in INPUT_KINDS:
            raise ValueError(f"audio contract: input must be one of {list(INPUT_KINDS)}, got {self.input!r}")
        if self.input == "waveform" and self.tokenizer is not None:
            raise ValueError("audio contract: a waveform-input model has no tokenizer")
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"audio contract: labels must be distinct, got {list(self.labels)}")
        if self.length is not None and self.length < 1:
            raise ValueError(f"audio contract: length must be >= 1 or None, got {self.length}")

    def with_labels(self, labels) -> AudioContract:
        """This contract with other label names."""
        return replace(self, labels=tuple(labels))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the stored format, see the module docstring)."""
        tok = None
        if self.tokenizer is not None:
            t = self.tokenizer
            tok = {"kind": t.kind, "bits": t.bits} if t.kind != "codec" else {
                "kind": t.kind, "n_codebooks": t.n_codebooks, "pattern": t.pattern, "codebook_size": t.codebook_size}
        return {"version": CONTRACT_VERSION, "sample_rate": self.sample_rate, "input": self.input, "tokenizer": tok,
                "labels": list(self.labels), "length": self.length, "trim_db": self.trim_db,
                "loudness_db": self.loudness_db}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioContract:
        """Inverse of :meth:`to_dict`; ValueError naming an unknown version or key."""
        data = dict(data)
        version = data.pop("version", None)
        if version != CONTRACT_VERSION:
            raise ValueError(f"audio contract: unsupported version {version!r} (this audiomamba reads "
                             f"version {CONTRACT_VERSION})")
        tok = data.pop("tokenizer", None)
        known = {"sample_rate", "input", "labels", "length", "trim_db", "loudness_db"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"audio contract: unknown keys {unknown}")
        if tok is not None:
            unknown = sorted(set(tok) - {"kind", "bits", "n_codebooks", "pattern", "codebook_size"})
            if unknown:
                raise ValueError(f"audio contract: unknown tokenizer keys {unknown}")
            tok = TokenizerSpec(**tok)
        return cls(tokenizer=tok, labels=tuple(data.pop("labels", ())), **data)

    @classmethod
    def from_json(cls, text: str) -> AudioContract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"audio contract: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError("audio contract: expected a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_experiment(cls, cfg: ExperimentConfig, labels=()) -> AudioContract:
        """The contract of a model trained by experiment ``cfg`` (its data section), with class names
        ``labels`` (classifiers; ignored for language models)."""
        d, m = cfg.data, cfg.model
        tokenizer = None
        if m.input == "tokens":
            if d.source == "tokens":
                k = d.n_codebooks if d.n_codebooks is not None else m.n_codebooks  # K of the codec's frames
                tokenizer = TokenizerSpec("codec", n_codebooks=k, pattern=d.pattern, codebook_size=d.codebook_size)
            elif d.source != "selective_copying":
                tokenizer = TokenizerSpec(d.tokenizer, bits=d.bits)
        return cls(sample_rate=d.sample_rate, input=m.input, tokenizer=tokenizer,
                   labels=tuple(labels) if m.kind == "classifier" else (), length=d.length, trim_db=d.trim_db,
                   loudness_db=d.loudness_db)
