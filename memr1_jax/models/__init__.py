"""Models: the Qwen2 / LLaMA-3 decoder, its configs and presets, HF checkpoint loading and export."""

from memr1_jax.models.config import CheckpointError, ModelConfig, PRESETS, get_preset, read_hf_config
from memr1_jax.models.decoder import CascadeCache, Decoder, KVCache, positions_from_mask
from memr1_jax.models.loading import export_pretrained, load_pretrained

__all__ = [
    "CascadeCache", "CheckpointError", "Decoder", "KVCache", "ModelConfig", "PRESETS", "export_pretrained",
    "get_preset", "load_pretrained", "positions_from_mask", "read_hf_config",
]
