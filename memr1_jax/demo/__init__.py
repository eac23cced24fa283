"""The CPU demo, a client of the library: the synthetic memory task, its scripted policies, tokenizer and shipped
base model, and the demo pipeline (`python -m memr1_jax.main --config=configs/demo.py`).

This package is a `memr1_jax.tasks` task module (`config.task = "memr1_jax.demo"`): it supplies the conversations,
the statement extractor, the scripted "heuristic" answerer, the task's metrics, its config section config.demo and
the mode "demo". Importing it is light (config files and main's validation read it); the task itself is built by
`make_task` at run time.

  config.py     config.demo, its checks, the shipped files' paths      task.py       the task hooks
  synthetic.py  the conversation generator and oracle operations       policies.py   scripted managers / answerers
  tokenizer.py  the demo tokenizer (assets/demo_tokenizer)             base.py       the shipped base (assets/demo_base)
  pipeline.py   mode=demo's stages                                     report.py     the results table and reward plot
"""

from memr1_jax.demo.config import (DEMO_BASE_DIR, DEMO_TOKENIZER_DIR, MODES, SECTION, section_config,
                                   validate)


def make_task(config):
  """The synthetic task of `config` (`task.SyntheticTask`)."""
  # Imported here: the task pulls in the episode runner and JAX, which config files and validation do not need.
  from memr1_jax.demo import task  # pylint: disable=g-import-not-at-top
  return task.SyntheticTask(config)


__all__ = ["DEMO_BASE_DIR", "DEMO_TOKENIZER_DIR", "MODES", "SECTION", "make_task", "section_config", "validate"]
