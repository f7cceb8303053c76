"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one."""

import contextlib
import json
import os


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`; on success it replaces `path` in one rename."""
  root, ext = os.path.splitext(path)
  tmp = f'{root}.tmp{os.getpid()}{ext}'  # same extension: matplotlib picks the format by it
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def cache_root(override: str = '') -> str:
  """Where prepared data and measurements are kept: override, $GPT_JAX_CACHE or ~/.cache/gpt_jax."""
  return override or os.environ.get('GPT_JAX_CACHE') or os.path.expanduser('~/.cache/gpt_jax')


def write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)


def write_json(path: str, obj) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')
