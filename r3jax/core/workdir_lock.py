"""One run per workdir: a lock file, <workdir>/run.lock, naming the host and process that
holds it. A second run refuses to start; a lock whose process has died (a SIGKILL, a lost
machine on this host) is stale and taken over, so a killed run still resumes."""

import atexit
import os
import socket

from r3jax.core import paths
from r3jax.core.errors import ConfigError

NAME = "run.lock"


def holder(path: str) -> tuple[str, int] | None:
  """(host, pid) written in a lock file, or None if it is unreadable."""
  try:
    host, pid = open(path).read().split()
    return host, int(pid)
  except (OSError, ValueError):
    return None


def alive(host: str, pid: int) -> bool:
  """Whether the holder still runs; a process on another host is assumed alive."""
  if host != socket.gethostname():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def acquire(workdir: str) -> str | None:
  """Takes the lock (released at exit), or raises ConfigError naming its holder. Object
  store workdirs have no atomic create, so they are not locked."""
  if paths.is_uri(workdir):
    return None
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, NAME)
  me = (socket.gethostname(), os.getpid())
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      held = holder(path)
      if held == me:
        return path  # This process already holds it (a second stage in the same process).
      if held is not None and alive(*held):
        raise ConfigError(f"{workdir} is in use by process {held[1]} on {held[0]}; one run per "
                          f"workdir (delete {path} if that run is gone)") from None
      os.remove(path)  # Stale: its process is gone.
      continue
    with os.fdopen(fd, "w") as f:
      f.write(f"{me[0]} {me[1]}\n")
    atexit.register(release, path)
    return path


def release(path: str | None) -> None:
  if path and holder(path) == (socket.gethostname(), os.getpid()):
    os.remove(path)
