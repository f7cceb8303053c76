"""The disk tier: arrays in files read past the page cache, so that what the run reads from disk
is really read from disk, and what it held stays within its memory budget.

A `DiskStore` keeps named groups of arrays (one layer's weights, one batch's KV cache of a
layer) as one file each: every array starts at a multiple of ALIGN bytes, and the file is padded
to one, so a group is read with O_DIRECT into page-aligned memory (the kernel copies straight
from the device, caching nothing). Where the filesystem refuses O_DIRECT (tmpfs, some overlay
and network filesystems), the file is read normally and its cached pages are dropped right after
(posix_fadvise DONTNEED), which also keeps the page cache from hiding the disk. `direct` says
which happened. Writes are atomic (files.atomic_path): a group is the old one or the new one.
"""

import json
import mmap
import os

import ml_dtypes
import numpy as np

from gpt_jax import files
from gpt_jax.errors import UserError

ALIGN = 4096  # O_DIRECT needs offsets, sizes and memory aligned to the logical block size
_INDEX = 'index.json'


def _dtype(name: str) -> np.dtype:
  """The dtype of a name numpy's or ml_dtypes' (bfloat16, float8_e4m3fn, ...)."""
  return np.dtype(getattr(ml_dtypes, name) if hasattr(ml_dtypes, name) else name)


def _aligned(n: int) -> int:
  return -(-n // ALIGN) * ALIGN


class DiskStore:
  """Groups of named numpy arrays in `directory` (made if missing; UserError if it cannot be
  written). `bytes_read` counts what reads moved from disk."""

  def __init__(self, directory: str):
    self.directory = directory
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      raise UserError(f'cannot make the disk directory {directory} ({e.strerror}); pass a folder '
                      'this user can write') from None
    if not os.access(directory, os.W_OK):
      raise UserError(f'the disk directory {directory} is not writable; pass a folder this user '
                      'can write')
    path = os.path.join(directory, _INDEX)
    self.index = {}
    if os.path.exists(path):
      with open(path) as f:
        self.index = json.load(f)
    self.bytes_read = 0
    self.direct = None  # True once O_DIRECT worked, False once the fallback was needed

  def __contains__(self, group: str) -> bool:
    return group in self.index

  def write(self, group: str, arrays: dict[str, np.ndarray]) -> int:
    """Writes the arrays as one file; returns its size in bytes. UserError if the disk is full."""
    layout, offset = {}, 0
    for name, array in arrays.items():
      array = np.asarray(array)  # not ascontiguousarray, which makes a 0-d array 1-d
      layout[name] = {'offset': offset, 'shape': list(array.shape), 'dtype': array.dtype.name}
      offset = _aligned(offset + array.nbytes)
    path = os.path.join(self.directory, f'{group}.bin')
    try:
      with files.atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
          for name, array in arrays.items():
            f.seek(layout[name]['offset'])
            f.write(np.ascontiguousarray(array).tobytes())
          f.truncate(max(offset, ALIGN))
      self.index[group] = {'size': max(offset, ALIGN), 'arrays': layout}
      files.write_json(os.path.join(self.directory, _INDEX), self.index)
    except OSError as e:
      raise UserError(f'cannot write {path} ({e.strerror}); free disk space or pass another disk '
                      'directory') from None
    return self.index[group]['size']

  def remove(self, group: str) -> None:
    """Deletes `group` (its index entry first, so a crash leaves no entry without its file)."""
    self.index.pop(group)
    files.write_json(os.path.join(self.directory, _INDEX), self.index)
    os.remove(os.path.join(self.directory, f'{group}.bin'))

  def read(self, group: str) -> dict[str, np.ndarray]:
    """The arrays of `group`, read from disk (views into one page-aligned buffer)."""
    entry = self.index[group]
    path = os.path.join(self.directory, f'{group}.bin')
    buffer = mmap.mmap(-1, entry['size'])  # anonymous: page-aligned, never file-backed
    read = None
    if self.direct is not False and hasattr(os, 'O_DIRECT'):
      try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
          read = os.readv(fd, [buffer])
        finally:
          os.close(fd)
        self.direct = True
      except OSError:  # EINVAL: this filesystem does not do O_DIRECT
        self.direct = False
    if read is None:
      self.direct = False
      fd = os.open(path, os.O_RDONLY)
      try:
        read = os.readv(fd, [buffer])
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      finally:
        os.close(fd)
    if read != entry['size']:
      raise UserError(f'{path} is shorter than its index says ({read} of {entry["size"]} bytes); '
                      'delete the disk directory and run again')
    self.bytes_read += read
    return {name: np.frombuffer(buffer, _dtype(spec['dtype']), int(np.prod(spec['shape'])),
                                spec['offset']).reshape(spec['shape'])
            for name, spec in entry['arrays'].items()}

  def write_slots(self, group: str, name: str, values: np.ndarray, start: int | None) -> None:
    """Writes `values` in place into array `name` of `group`: at [:, start:start + L] (L =
    values.shape[1]) of an array of two or more axes, or the whole array if start is None. The
    KV cache's new tokens each step; not atomic (a cache is scratch, rebuilt by a rerun)."""
    spec = self.index[group]['arrays'][name]
    shape, itemsize = spec['shape'], _dtype(spec['dtype']).itemsize
    values = np.ascontiguousarray(values, _dtype(spec['dtype']))
    path = os.path.join(self.directory, f'{group}.bin')
    fd = os.open(path, os.O_WRONLY)
    try:
      if start is None:
        os.pwrite(fd, values.tobytes(), spec['offset'])
      else:
        row = int(np.prod(shape[1:])) * itemsize
        slot = int(np.prod(shape[2:])) * itemsize
        for b in range(shape[0]):
          os.pwrite(fd, values[b].tobytes(), spec['offset'] + b * row + start * slot)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:
      raise UserError(f'cannot write {path} ({e.strerror}); free disk space or pass another disk '
                      'directory') from None
    finally:
      os.close(fd)
