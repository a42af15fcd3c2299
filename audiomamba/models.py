"""AudioLM and AudioClassifier: input embedding → MultiResolutionBackbone → head; building, saving, loading.

Both follow the state contract: ``init_state(batch_size)`` and ``forward(x, state=None) -> (output, state)``,
exact for any chunking (a bidirectional classifier has no state). ``build_model(spec, **overrides)`` builds
either from a preset name, a YAML path or a mapping; ``model.save(dir)`` / ``load_model(dir)`` round-trip it,
together with the model's audio contract (``model.audio``: sample rate, input kind, tokenizer, label names; see
``audiomamba.contract``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import BackboneState, MultiResolutionBackbone
from .config import ModelConfig, load_experiment_config, load_model_config, model_config_to_yaml
from .contract import METADATA_KEY, AudioContract, TokenizerSpec
from .generation import generate
from .heads import ClassifierHead, LMHead, MeanPoolState
from .precision import LowPrecisionLinear, low_precision_copy
from .streaming import Stream

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
# what training runs before the audio contract wrote beside the weights (read by ``load_model`` as a fallback)
LEGACY_TASK_FILE = "task.json"
LEGACY_EXPERIMENT_FILE = "experiment.yaml"


class TokenEmbedding(nn.Module):
    """K codebooks of V tokens, one table each, summed: (B, L, K) int64 → (B, L, D)."""

    def __init__(self, vocab_size: int, n_codebooks: int, d_model: int):
        super().__init__()
        self.vocab_size, self.n_codebooks = vocab_size, n_codebooks
        self.embedding = nn.Embedding(n_codebooks * vocab_size, d_model)
        self.register_buffer("offsets", torch.arange(n_codebooks) * vocab_size, persistent=False)  # (K,)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.n_codebooks == 1:  # one gather (no offset add, no sum over one codebook): the same values
            return self.embedding(tokens[..., 0])
        return self.embedding(tokens + self.offsets).sum(dim=-2)  # (B, L, K, D) → (B, L, D)


class _AudioModel(nn.Module):
    """What both models share: config, backbone, state, streaming, saving."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = MultiResolutionBackbone(config.backbone)
        self.d_model = config.backbone.d_model
        self._audio: AudioContract | None = None

    @property
    def audio(self) -> AudioContract | None:
        """The model's audio contract (sample rate, input kind, tokenizer, label names), or None for a model
        built without one. ``model.save`` stores it; ``load_model`` restores it."""
        return self._audio

    @audio.setter
    def audio(self, contract: AudioContract | None) -> None:
        if contract is not None:
            check_contract(self.config, contract)
        self._audio = contract

    @property
    def labels(self) -> tuple[str, ...]:
        """A classifier's class names in index order (from the audio contract; empty without one)."""
        return self._audio.labels if self._audio is not None else ()

    @property
    def causal(self) -> bool:
        return not self.backbone.bidirectional

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) [K = 1] or (B, L, K) → (B, L, D), after checking their range."""
        K, V = self.config.n_codebooks, self.config.vocab_size
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"tokens: expected an integer tensor, got {tokens.dtype}")
        if tokens.dim() == 2 and K == 1:
            tokens = tokens[..., None]  # (B, L, 1)
        if tokens.dim() != 3 or tokens.shape[-1] != K:
            raise ValueError(f"tokens: expected (batch, length{', ' + str(K) if K > 1 else ''}), "
                             f"got {tuple(tokens.shape)}")
        if tokens.numel():
            lo, hi = torch.stack([tokens.min(), tokens.max()]).tolist()
            if lo < 0 or hi >= V:
                raise ValueError(f"tokens: values must lie in [0, {V}), got {lo}..{hi}")
        return self.embed(tokens.long())

    def stream(self, batch_size: int = 1, device=None, dtype=None, compile: bool = False, weights: str | None = None):
        """A :class:`audiomamba.streaming.Stream` over this (causal) model: push chunks, get their outputs.
        ``compile``: pushes through ``torch.compile`` (CPU, float32; see ``audiomamba.streaming``).
        ``weights``: "float32" (default: this model, exact) or "bfloat16" (a ``low_precision_copy``, made now)."""
        return Stream(self, batch_size, device=device, dtype=dtype, compile=compile, weights=weights)

    def low_precision_copy(self, weights: str | torch.dtype = "bfloat16") -> _AudioModel:
        """An inference copy (eval mode, no gradients) whose linear layers keep their weight matrices in
        ``weights`` precision ("bfloat16") and multiply in it (:class:`LowPrecisionLinear`); the rest (waveform
        embedding, norms, convolutions, scans, states, outputs) stays float32. Half the weight bytes; faster where
        the products run on prepacked weights with bfloat16 instructions (avx512_bf16, AMX): the compiled stream
        (``stream(compile=True, weights="bfloat16")``) freezes them so; eager calls reorder the weights at every
        product and are no faster than float32. Its outputs approximate this model's (deviations of order 1e-3
        to 1e-2 of the largest output, not the 1e-5 of the state contract): measure the task metric before
        relying on it. ``weights="float32"`` returns an exact copy."""
        return low_precision_copy(self, weights)

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` (weights; its metadata holds the audio contract, when the model has one)
        and ``config.yaml`` (the resolved config) into ``directory``."""
        if any(isinstance(m, LowPrecisionLinear) for m in self.modules()):
            raise ValueError("save: this is a low_precision_copy (an inference copy); save the float32 model instead")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": "pt"}
        if self._audio is not None:
            metadata[METADATA_KEY] = self._audio.to_json()
        save_file(weights, str(directory / WEIGHTS_FILE), metadata=metadata)
        (directory / CONFIG_FILE).write_text(model_config_to_yaml(self.config))
        return directory


@dataclass
class ClassifierState:
    """backbone: the backbone's state; head: the running-mean state (None for "last" pooling)."""

    backbone: BackboneState
    head: MeanPoolState | None


class AudioLM(_AudioModel):
    """Autoregressive model of token streams: tokens → embedding (K codebooks summed) → backbone → logits.

    ``logits[:, t]`` is the distribution of the token at t + 1 given tokens 0..t.
    """

    def __init__(self, config: ModelConfig):
        if config.kind != "lm":
            raise ValueError(f"AudioLM needs config.kind 'lm', got {config.kind!r}")
        super().__init__(config)
        self.embed = TokenEmbedding(config.vocab_size, config.n_codebooks, self.d_model)
        self.head = LMHead(self.d_model, config.vocab_size, config.n_codebooks)

    def init_state(self, batch_size: int, device=None, dtype=None) -> BackboneState:
        return self.backbone.init_state(batch_size, device, dtype)

    def forward(self, tokens: torch.Tensor, state: BackboneState | None = None, return_state: bool = True):
        """tokens: (B, L) (one codebook) or (B, L, K) → logits (B, L, V) or (B, L, K, V), new state.
        ``return_state=False`` (training, scoring): None in place of the new state, which is not computed."""
        logits, state = self.forward_embedded(self._embed_tokens(tokens), state, return_state=return_state)
        return (logits[:, :, 0] if tokens.dim() == 2 else logits), state  # (B, L, K, V) → (B, L, V) for K = 1

    def forward_embedded(self, h: torch.Tensor, state: BackboneState | None = None, phases: list[int] | None = None,
                         return_state: bool = True):
        """Embedded tokens h (B, L, D) → logits (B, L, K, V), new state. ``phases``: the pooling phases of
        ``state`` when the caller knows them; ``return_state``: see ``MultiResolutionBackbone.forward``."""
        h, state = self.backbone(h, state, phases, return_state)  # (B, L, D)
        return self.head(h), state

    def features(self, tokens: torch.Tensor, state: BackboneState | None = None):
        """The backbone's output (B, L, D) and new state, without the head (prompt consumption)."""
        return self.backbone(self._embed_tokens(tokens), state)

    def step(self, tokens: torch.Tensor, state: BackboneState, depth: int, inplace: bool = False):
        """One step for generation: tokens (B, 1, K) int64 → logits (B, 1, K, V), new state. No checks, no
        host sync; ``depth`` = ``self.backbone.step_depth(t)``; ``inplace``: see ``MultiResolutionBackbone.step``."""
        h, state = self.backbone.step(self.embed(tokens), state, depth, inplace)
        return self.head(h), state

    def generate(self, batch_size: int = 1, num_steps: int = 16000, prompt: torch.Tensor | None = None, **kwargs):
        """Sample ``num_steps`` new tokens; see :func:`audiomamba.generation.generate` for the arguments."""
        return generate(self, batch_size, num_steps, prompt=prompt, **kwargs)


class AudioClassifier(_AudioModel):
    """Classifier of waveforms (float samples, a linear map into D) or tokens: input → backbone → head.

    Causal: ``forward`` returns a running prediction (B, L, C) and a state (stream it as samples arrive).
    Bidirectional: ``forward`` returns one prediction (B, C) per sequence and no state.
    """

    def __init__(self, config: ModelConfig):
        if config.kind != "classifier":
            raise ValueError(f"AudioClassifier needs config.kind 'classifier', got {config.kind!r}")
        super().__init__(config)
        if config.input == "waveform":
            # one sample → (D,), without a bias: a bias (init ±1) would swamp samples of RMS ~0.1, and after the
            # per-step norms the features would hardly depend on the input (bf16 training then stays at chance)
            self.embed = nn.Linear(1, self.d_model, bias=False)
        else:
            self.embed = TokenEmbedding(config.vocab_size, config.n_codebooks, self.d_model)
        self.head = ClassifierHead(self.d_model, config.n_classes, config.pooling, causal=self.causal)

    def init_state(self, batch_size: int, device=None, dtype=None) -> ClassifierState:
        if not self.causal:
            raise ValueError("a bidirectional classifier has no streaming state: build it with "
                             "backbone.bidirectional=false to stream")
        return ClassifierState(self.backbone.init_state(batch_size, device, dtype),
                               self.head.init_state(batch_size, device, dtype))

    def _inputs(self, x: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
        """x (B, L) → (B, L, D). ``check_finite=False``: skip the NaN/Inf check of a waveform (a host sync), for
        callers that checked it already (and for CUDA graph captures, where a sync is not allowed)."""
        if self.config.input == "tokens":
            return self._embed_tokens(x)
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"x: expected a float waveform (batch, length), got {tuple(x.shape)} {x.dtype}")
        if check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"x: the waveform holds {int(x.isnan().sum())} NaN and {int(x.isinf().sum())} infinite "
                             f"sample(s) (of {x.numel()})")
        weight = self.embed.weight  # (D, 1): one sample → (D,), as a broadcast product (a K = 1 matmul costs more)
        return x[..., None].to(weight.dtype) * weight[:, 0]  # (B, L, 1) · (D,) → (B, L, D)

    def forward(self, x: torch.Tensor, state: ClassifierState | None = None, return_state: bool = True):
        """x: (B, L) waveform or tokens ((B, L, K) for K codebooks).

        Returns (logits (B, L, C) running, new state) when causal, (logits (B, C), None) when bidirectional.
        ``return_state=False``: None in place of the new state, which is not computed.
        """
        return self.forward_embedded(self._inputs(x), state, return_state=return_state)

    def forward_embedded(self, h: torch.Tensor, state: ClassifierState | None = None,
                         phases: list[int] | None = None, return_state: bool = True):
        """The inputs' embedding h (B, L, D) → what ``forward`` returns. ``phases``: the pooling phases of
        ``state`` when the caller knows them; ``return_state``: see ``MultiResolutionBackbone.forward``."""
        h, backbone_state = self.backbone(h, None if state is None else state.backbone, phases, return_state)
        if not self.causal:
            return self.head.pool_sequence(h), None
        logits, head_state = self.head(h, None if state is None else state.head)
        return logits, (ClassifierState(backbone_state, head_state) if return_state else None)

    def classify(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Whole-clip logits (B, C); ``lengths`` (B,) gives the valid samples of zero-padded rows."""
        if self.causal:
            logits, _ = self(x, return_state=False)  # (B, L, C)
            if lengths is None:
                return logits[:, -1]
            return logits[torch.arange(x.shape[0], device=x.device), lengths.to(x.device) - 1]
        h, _ = self.backbone(self._inputs(x), return_state=False)
        return self.head.pool_sequence(h, lengths)


MODEL_CLASSES = {"lm": AudioLM, "classifier": AudioClassifier}


def check_contract(config: ModelConfig, audio: AudioContract) -> None:
    """ValueError unless ``audio`` fits a model of ``config`` (input kind, vocabulary, codebooks, classes)."""
    want = "tokens" if config.kind == "lm" else config.input
    if audio.input != want:
        raise ValueError(f"audio contract: input {audio.input!r} does not fit a model that takes {want}")
    tok = audio.tokenizer
    if tok is not None and tok.kind != "codec" and 2**tok.bits != config.vocab_size:
        raise ValueError(f"audio contract: a {tok.bits}-bit {tok.kind} tokenizer makes {2**tok.bits} tokens, the "
                         f"model's vocabulary has {config.vocab_size}")
    if tok is not None and tok.kind == "codec" and tok.pattern != "flatten" and tok.n_codebooks != config.n_codebooks:
        raise ValueError(f"audio contract: {tok.n_codebooks} codebooks ({tok.pattern} pattern), the model "
                         f"embeds {config.n_codebooks}")
    if config.kind == "classifier" and audio.labels and len(audio.labels) != config.n_classes:
        raise ValueError(f"audio contract: {len(audio.labels)} labels for a classifier of {config.n_classes} classes")
    if config.kind == "lm" and audio.labels:
        raise ValueError("audio contract: a language model has no labels")


def build_model(spec: Any, audio: AudioContract | None = None, **overrides: Any) -> AudioLM | AudioClassifier:
    """Build a model from a preset name (``"sc09_small"``), a YAML path, a mapping or a ModelConfig.

    Overrides are dotted keys: ``build_model("sc09_small", **{"backbone.d_model": 32})``. ``audio``: the model's
    audio contract (``model.audio``; training sets it from the experiment's data).
    """
    config = load_model_config(spec, overrides)
    if config.arch == "logmel_cnn":  # the baseline of audiomamba.baselines (which imports this module)
        from .baselines import LogMelCNNClassifier

        model = LogMelCNNClassifier(config)
    else:
        model = MODEL_CLASSES[config.kind](config)
    model.audio = audio
    return model


def read_audio_contract(weights_file: str | Path) -> AudioContract | None:
    """The audio contract stored in a ``model.safetensors`` file's metadata (None when it holds none)."""
    with safe_open(str(weights_file), framework="pt") as f:
        text = (f.metadata() or {}).get(METADATA_KEY)
    if text is None:
        return None
    try:
        return AudioContract.from_json(text)
    except ValueError as e:
        raise ValueError(f"{weights_file}: {e}") from None


def _legacy_audio_contract(directory: Path, config: ModelConfig) -> AudioContract | None:
    """The contract of a model directory written before contracts were stored in the weights: rebuilt from the
    ``task.json`` (rate, tokenizer, class names) and ``experiment.yaml`` (clip length, trimming, loudness) that
    training wrote beside it. None when neither is there."""
    task_file, exp_file = directory / LEGACY_TASK_FILE, directory / LEGACY_EXPERIMENT_FILE
    if exp_file.is_file():
        cfg = load_experiment_config(str(exp_file))
        labels = json.loads(task_file.read_text()).get("classes", []) if task_file.is_file() else []
        return AudioContract.from_experiment(cfg, labels)
    if task_file.is_file():
        info = json.loads(task_file.read_text())
        tokenizer = info.get("tokenizer", "none")
        return AudioContract(
            sample_rate=int(info["sample_rate"]), input="tokens" if config.kind == "lm" else config.input,
            tokenizer=None if tokenizer == "none" else TokenizerSpec(tokenizer, bits=int(info.get("bits", 8))),
            labels=tuple(info.get("classes", [])) if config.kind == "classifier" else (), length=info.get("length"))
    return None


def load_model(directory: str | Path, device: torch.device | str | None = None) -> AudioLM | AudioClassifier:
    """Restore a model written by ``model.save(directory)``: same config, bit-identical weights, and its audio
    contract (``model.audio``).

    Directories saved before the contract existed: when training wrote ``task.json`` / ``experiment.yaml``
    beside the weights, the contract is rebuilt from them; otherwise ``model.audio`` is None (set it, then save
    again, to use the model from the command line).
    """
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"load_model: {directory / name} not found (expected a model.save directory)")
    model = build_model(directory / CONFIG_FILE)
    weights = load_file(str(directory / WEIGHTS_FILE))
    float_dtypes = {v.dtype for v in weights.values() if v.is_floating_point()}
    if len(float_dtypes) == 1:
        model.to(float_dtypes.pop())  # saved in bfloat16 (say): restore in bfloat16, not upcast
    model.load_state_dict(weights, strict=True)
    audio = read_audio_contract(directory / WEIGHTS_FILE)
    model.audio = audio if audio is not None else _legacy_audio_contract(directory, model.config)
    return model.to(device) if device is not None else model
