"""Worker processes for data preparation: an ordered map with a bounded number of items in flight.

`multiprocessing.Pool.imap` reads its whole input ahead, so a corpus larger than memory would be
queued into it; `Workers.map` submits at most `ahead` items per worker before it takes a result.
Workers are spawned, not forked: a fork of a process running JAX's threads can deadlock.
"""

import collections
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator


class Workers:
  """`count` processes (count <= 1: this process) that map functions over items in order."""

  def __init__(self, count: int, ahead: int = 2):
    self.count = count
    self._ahead = ahead
    self._pool = multiprocessing.get_context('spawn').Pool(count) if count > 1 else None

  def map(self, fn: Callable, items: Iterable) -> Iterator:
    """fn(item) for each item, in the order of `items`."""
    if self._pool is None:
      yield from map(fn, items)
      return
    pending = collections.deque()
    for item in items:
      pending.append(self._pool.apply_async(fn, (item,)))
      if len(pending) >= self._ahead * self.count:
        yield pending.popleft().get()
    while pending:
      yield pending.popleft().get()

  def __enter__(self) -> 'Workers':
    return self

  def __exit__(self, *exc) -> None:
    if self._pool is not None:
      self._pool.terminate()
      self._pool.join()


def cores() -> int:
  """The CPU cores this process may use: its affinity where the OS has one (Linux), else all."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def count(setting: int, input_bytes: int, bytes_per_worker: int = 16 << 20) -> int:
  """How many workers: `setting`, or for 0 one per core but no more than one per
  `bytes_per_worker` of input (starting processes costs more than a small corpus takes)."""
  if setting:
    return setting
  return max(1, min(os.cpu_count() or 1, input_bytes // bytes_per_worker))
