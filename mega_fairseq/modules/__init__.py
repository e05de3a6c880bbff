"""Mega layers as plain PyTorch modules: importable with torch alone (no fairseq)."""
from ..ops.attention import attention_weights, chunk_attention, laplace, relu2
from .config import MegaConfigError, MegaLayerConfig, get_activation
from .cross_attention import GatedCrossAttention
from .dropout import Dropout
from ..ops.ema import ema_coefficients, fft_ema
from .ema import MultiDimensionalEMA
from .feed_forward import NormalizedFeedForward
from .gated_attention import MovingAverageGatedAttention
from .layers import MegaDecoderLayer, MegaEncoderLayer
from .norms import SequenceNorm
from .position_bias import RotaryRelativePositionBias, SimpleRelativePositionBias, build_position_bias

__all__ = [
    "attention_weights", "chunk_attention", "laplace", "relu2",
    "MegaConfigError", "MegaLayerConfig", "get_activation",
    "GatedCrossAttention", "Dropout", "MultiDimensionalEMA", "ema_coefficients", "fft_ema",
    "NormalizedFeedForward", "MovingAverageGatedAttention", "MegaDecoderLayer", "MegaEncoderLayer",
    "SequenceNorm", "RotaryRelativePositionBias", "SimpleRelativePositionBias", "build_position_bias",
]
