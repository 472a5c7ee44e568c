"""The two kinds of user mistake that every command reports as one line (`error: ...`)."""


class ConfigError(ValueError):
  """A configuration that cannot run; the message names the field and what to change."""


class DataError(ValueError):
  """A bad input row; the message names file, line and problem."""


class TrainingError(RuntimeError):
  """A run that cannot go on (a non-finite loss): it stops, saving nothing of the bad step."""
