"""The CPU demo, a client of the library: the synthetic memory task, its scripted policies, tokenizer and shipped
base model, and the demo pipeline (`python -m memr1_jax.main --config=configs/demo.py`).

This package is a `memr1_jax.tasks` task module (`config.task = "memr1_jax.demo"`): it supplies the conversations,
the statement extractor, the scripted "heuristic" answerer, the task's metrics, its config section config.demo and
the mode "demo".

  task.py       the task hooks and config.demo      synthetic.py  the conversation generator and oracle operations
  policies.py   scripted managers / answerers, SFT trajectories
  tokenizer.py  the demo tokenizer (assets/demo_tokenizer)     base.py  the shipped base model (assets/demo_base)
  pipeline.py   mode=demo's stages                  report.py     the results table and reward plot
"""

from memr1_jax.demo.task import MODES, SECTION, make_task, section_config, validate

__all__ = ["MODES", "SECTION", "make_task", "section_config", "validate"]
