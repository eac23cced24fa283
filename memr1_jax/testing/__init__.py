"""Test helpers shared by the test suite: tiny random-init HF checkpoints, the PyTorch reference forward, and a
tiny offline tokenizer. Importing this package is cheap; torch / transformers load on first use.
"""

from memr1_jax.testing.hf_reference import (LLAMA3_SCALING, hf_logits, left_padded_batch, load_hf_model,
                                            make_hf_checkpoint)
from memr1_jax.testing.tiny_tokenizer import CHATML_TEMPLATE, write_tiny_tokenizer

__all__ = [
    "CHATML_TEMPLATE", "LLAMA3_SCALING", "hf_logits", "left_padded_batch", "load_hf_model", "make_hf_checkpoint",
    "write_tiny_tokenizer",
]
