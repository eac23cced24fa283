"""The PPO value model: the decoder backbone with a scalar head on the final-norm hidden state.

The backbone is a `Decoder` whose config has `tie_word_embeddings=True`, so it holds no output projection (a value
model never computes logits); it loads from any policy checkpoint of the same shape. The head is
`HeadParam` (a `nnx.Param` subclass), so that under LoRA the trained set is "adapters + head".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from memr1_jax.models import lora as lora_lib
from memr1_jax.models.config import ModelConfig
from memr1_jax.models.decoder import Decoder


class HeadParam(nnx.Param):
  """A value-head parameter: trained even when the backbone is frozen (LoRA)."""


# Filter of the value model's trained parameters under LoRA.
LORA_AND_HEAD = nnx.Any(lora_lib.LORA, HeadParam)


class ValueModel(nnx.Module):
  """`model(input_ids_bt, attention_mask_bt)` returns float32 values [B, T], one per position."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.backbone = Decoder(cfg.replace(tie_word_embeddings=True), rngs=rngs)
    self.head_d = HeadParam(jnp.zeros((cfg.hidden_size,), cfg.jnp_param_dtype), logical_axes=("embed",))
    self.head_bias = HeadParam(jnp.zeros((), cfg.jnp_param_dtype), logical_axes=())

  def __call__(self, input_ids_bt, attention_mask_bt=None, positions_bt=None) -> jax.Array:
    """Values [B, T] float32 of every position (pad positions hold finite garbage)."""
    hidden_btd, _ = self.backbone.forward_hidden(input_ids_bt, attention_mask_bt, positions_bt)
    return self.values(hidden_btd)

  def values(self, hidden_btd: jax.Array) -> jax.Array:
    """Final-norm hidden states [..., D] -> float32 values [...]."""
    return (jnp.einsum("...d,d->...", hidden_btd.astype(jnp.float32), self.head_d[...].astype(jnp.float32))
            + self.head_bias[...].astype(jnp.float32))


def value_model_from_decoder(decoder: Decoder, *, copy: bool = True) -> ValueModel:
  """A value model whose backbone starts from `decoder`'s weights and whose head is zero (values start at 0).

  Args:
    decoder: the policy (or any decoder of the same shape), possibly sharded, with or without LoRA adapters.
    copy: copy the backbone arrays (needed when both models are trained: a training step donates its buffers).
      Use False under LoRA, where the frozen base is shared by the policy, the reference and the value model.

  Returns:
    a ValueModel with `decoder.cfg` (the same LoRA rank); its adapters, if any, are fresh (B = 0).
  """
  cfg = decoder.cfg
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: ValueModel(cfg, rngs=nnx.Rngs(0))))
  state = nnx.to_pure_dict(abstract)
  source = nnx.to_pure_dict(nnx.state(decoder, nnx.Param))
  if cfg.lora_rank:
    fresh = lora_lib.add_lora(lora_lib.without_lora(decoder), cfg.lora_rank, cfg.lora_alpha, seed=1)
    source = nnx.to_pure_dict(nnx.state(fresh, nnx.Param))
  backbone = {k: v for k, v in source.items() if k != "lm_head_dv"}
  if copy:
    backbone = jax.tree.map(jnp.copy, backbone)
  state["backbone"] = backbone
  state["head_d"] = jnp.zeros((cfg.hidden_size,), cfg.jnp_param_dtype)
  state["head_bias"] = jnp.zeros((), cfg.jnp_param_dtype)
  return nnx.merge(graphdef, state)
