"""The memory service: the trained manager and answer agent over persistent per-user banks.

  api.py       Memory: add / search / answer / get_all / delete / history / export / import_ (the Python API)
  store.py     BankStore: per-user snapshot + write-ahead log, recovery on open, user id checks
  batching.py  Batcher: concurrent calls collected for a few ms, one engine call for all users' adds / answers
  server.py    the FastAPI app over a Batcher (validation, API key, body limits); `python -m memr1_jax.serve` runs it
"""
