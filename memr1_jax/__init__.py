"""memr1_jax: Memory-R1 (memory manager + answer agent trained with GRPO / PPO) in JAX and Flax NNX."""
