"""memr1_jax: Memory-R1 (memory manager + answer agent trained with GRPO / PPO) in JAX and Flax NNX.

`memr1_jax.Memory` is the memory service's Python API (`memr1_jax.service.api`), imported on first use so that
`import memr1_jax` stays light.
"""


def __getattr__(name: str):
  if name == "Memory":
    from memr1_jax.service.api import Memory  # pylint: disable=g-import-not-at-top
    return Memory
  raise AttributeError(f"module 'memr1_jax' has no attribute {name!r}")
