"""audiomamba: Mamba (selective state space) models for raw audio and codec-token streams.

Data path: audio → tokenizer → embedding → MultiResolutionBackbone → head → task. A model carries its audio
contract (``model.audio``: sample rate, input kind, tokenizer, label names), saved and loaded with it.

Shape glossary (docstrings, einops strings and local names use these letters):
    B batch · L length (samples or frames) · D model width (d_model) · E inner width (expand · D)
    N state size (d_state) · H heads · P head dim (Mamba-2) or pooling factor (pooling layers)
    K codebooks · V vocabulary · G groups of B/C · W conv width
Module boundaries take (B, L, D); channel-first layouts live inside ops and kernels only.
"""

__version__ = "0.1.0"

from .backbone import MultiResolutionBackbone
from .config import BackboneConfig, ModelConfig, load_model_config
from .contract import AudioContract, TokenizerSpec
from .generation import GenerationOutput, tokens_to_waveform
from .models import AudioClassifier, AudioLM, build_model, load_model
from .streaming import Stream

__all__ = [
    "AudioClassifier",
    "AudioContract",
    "AudioLM",
    "BackboneConfig",
    "GenerationOutput",
    "ModelConfig",
    "MultiResolutionBackbone",
    "Stream",
    "TokenizerSpec",
    "build_model",
    "load_model",
    "load_model_config",
    "tokens_to_waveform",
]
