"""Generation: jitted prefill + `lax.while_loop` decode over a KV cache, samplers, and the `RolloutEngine`."""

from memr1_jax.sampling.engine import Completion, RolloutConfig, RolloutEngine
from memr1_jax.sampling.generation import GenerateOutput, bucket_size, decode, generate, prefill
from memr1_jax.sampling.samplers import SamplingParams, filter_top_k_top_p, sample, token_logprobs

__all__ = [
    "Completion", "GenerateOutput", "RolloutConfig", "RolloutEngine", "SamplingParams", "bucket_size", "decode",
    "filter_top_k_top_p", "generate", "prefill", "sample", "token_logprobs",
]
