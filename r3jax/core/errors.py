"""The two kinds of user mistake that every command reports as one line (`error: ...`)."""


class ConfigError(ValueError):
  """A configuration that cannot run; the message names the field and what to change."""


class DataError(ValueError):
  """A bad input row; the message names file, line and problem."""
