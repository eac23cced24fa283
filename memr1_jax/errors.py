"""The project's named errors. Each message says which file, field or directory is at fault and what to do; `main`
prints any of them as one `error: ...` line (the traceback only with --verbose)."""

from __future__ import annotations


class Error(Exception):
  """Base of the errors this project raises about its inputs and its state (config, data, checkpoints, workdir)."""


class ConfigError(Error, ValueError):
  """A config field holds a value the program does not accept (the message names the file and the field)."""


# The exit code of a run stopped by SIGTERM after its checkpoint (EX_TEMPFAIL): a requeue wrapper reruns the same
# command on it, and treats 0 as done.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """A run stopped by a signal after saving its checkpoint; rerunning the same command resumes it."""
