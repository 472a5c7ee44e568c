"""Named entries chosen from the config: the one extension mechanism of r3jax.

Every kind of pluggable method (advantage estimators, policy losses, loss terms, KL
estimators, RL methods, preference losses, rewards, rollout engines) is a `Registry` of
typed entries. An entry is a frozen dataclass whose first field is the function; its other
fields say what the method needs (a value model, groups, a reference model, ...), so the
trainer, the validation, the presets and the memory planner read them instead of listing
names by hand. Adding a method is one function and one decorator:

  @POLICY_LOSSES.register("cispo", needs=("old_logp",))
  def cispo(logp_BT, batch, cfg): ...

The lookup of an unknown name raises ConfigError naming the field and every known name.
"""

import dataclasses
from typing import Any, Callable, Generic, Iterator, TypeVar

from r3jax.core.errors import ConfigError

E = TypeVar("E")


@dataclasses.dataclass(frozen=True)
class Entry:
  """The plainest entry: a function and nothing else it needs."""
  fn: Callable


class Registry(Generic[E]):
  """An ordered table name -> entry of type `entry` (a frozen dataclass with field `fn`)."""

  def __init__(self, kind: str, entry: type = Entry):
    self.kind, self.entry_type = kind, entry
    self._entries: dict[str, E] = {}

  def register(self, name: str, **fields: Any) -> Callable:
    """Decorator: registers the decorated function under `name` with the entry's fields."""
    def add(fn):
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = self.entry_type(fn, **fields)
      return fn
    return add

  def get(self, name: str, field: str = "") -> E:
    """The entry of `name`; an unknown name is a one-line ConfigError naming `field`."""
    if name not in self._entries:
      where = f"config.{field}={name!r}" if field else f"{self.kind} {name!r}"
      raise ConfigError(f"{where}: unknown {self.kind}; expected one of {', '.join(self._entries)}")
    return self._entries[name]

  def __getitem__(self, name: str) -> E:
    return self.get(name)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def names(self, **where: Any) -> tuple[str, ...]:
    """Names in registration order, optionally those whose entry fields equal `where`."""
    return tuple(n for n, e in self._entries.items()
                 if all(getattr(e, k) == v for k, v in where.items()))

  def items(self):
    return self._entries.items()
