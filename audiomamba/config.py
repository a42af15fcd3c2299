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
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

MIXER_NAMES = ("mamba1", "mamba2", "s4d")
NORM_NAMES = ("layernorm", "rmsnorm")


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
    """

    kind: str = "lm"
    vocab_size: int = 256
    n_codebooks: int = 1
    input: str = "tokens"
    n_classes: int = 10
    pooling: str = "mean"
    start_token: Optional[int] = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    def __post_init__(self) -> None:
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
            return OmegaConf.to_container(OmegaConf.load(path), resolve=True), str(path)
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

