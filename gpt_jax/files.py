"""Files: atomic writes (a reader, or a run killed mid-write, sees the old file or the new one, and
a directory appears whole or not at all), and the files a list of paths and globs names."""

import contextlib
import glob
import json
import os
import shutil

from gpt_jax.errors import UserError

# U+FEFF, the byte-order mark: a Windows editor starts a UTF-8 file with one, and files joined by
# `cat` carry theirs to the start of a later line. It is not text.
BOM = '\ufeff'


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`; on success it replaces `path` in one rename. The
  folder of `path` is made first if it does not exist yet (a report's default folder in a fresh
  checkout); UserError if it cannot be (a file in the way, no permission)."""
  _make_folder(os.path.dirname(path), path)
  root, ext = os.path.splitext(path)
  tmp = f'{root}.tmp{os.getpid()}{ext}'  # same extension: matplotlib picks the format by it
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def new_directory(path: str, flag: str):
  """Yields a temporary directory beside `path` to fill; on success it becomes `path`, which must
  not exist or be empty (`flag` names the setting that gave it, for the error)."""
  check_new_directory(path, flag)
  tmp = f'{os.path.abspath(path)}.tmp{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  _make_folder(tmp, path)
  try:
    yield tmp
    if os.path.isdir(path):
      os.rmdir(path)  # empty, checked above
    os.rename(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _make_folder(folder: str, path: str) -> None:
  """Makes `folder` (and its parents) to write `path` in; UserError if it cannot be (a file in
  the way, no permission)."""
  if folder:
    try:
      os.makedirs(folder, exist_ok=True)
    except OSError as e:
      raise UserError(f'cannot make the folder {folder} to write {path} in ({e.strerror}); '
                      'pass a path in a folder that can be written') from None


def check_new_directory(path: str, flag: str) -> None:
  """UserError unless `path` (given as setting `flag`) is missing or an empty directory: checked
  by new_directory, and by a command before slow work whose result goes there."""
  if os.path.isdir(path) and os.listdir(path) or os.path.isfile(path):
    raise UserError(f'{flag}={path} already exists and is not empty; pass a new directory')


def cache_root(override: str = '') -> str:
  """Where prepared data and measurements are kept: override, $GPT_JAX_CACHE or ~/.cache/gpt_jax."""
  return override or os.environ.get('GPT_JAX_CACHE') or os.path.expanduser('~/.cache/gpt_jax')


def write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)


def write_json(path: str, obj) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def expand_paths(spec: str, what: str, fix: str, directory_files) -> list[str]:
  """The files a comma-separated list of files, directories and globs names: a directory gives
  directory_files(directory). `what` names the setting in the one-line UserError (ending in
  `fix`) for a path that does not exist, a glob that matches nothing, or a spec naming no file."""
  paths = []
  for part in filter(None, (p.strip() for p in spec.split(','))):
    if any(c in part for c in '*?['):
      matches = sorted(glob.glob(part, recursive=True))
      if not matches:
        raise UserError(f"{what} glob '{part}' matches nothing; {fix}")
    elif os.path.exists(part):
      matches = [part]
    else:
      raise UserError(f"{what} path '{part}' does not exist; {fix}")
    for path in matches:
      paths += directory_files(path) if os.path.isdir(path) else [path]
  if not paths:
    raise UserError(f"{what}='{spec}' names no file; {fix}")
  return paths


def read_json_lines(path: str, name: str, fix: str) -> list[tuple[int, str, object]]:
  """(line number, where, object) of each non-blank line of a UTF-8 JSON Lines file (byte-order
  marks at the start of any line are ignored), where = f'{name} line {number}'. One-line
  UserError, ending in `fix`, for a file that cannot be read or a line that is not JSON."""
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().split('\n')  # not splitlines(): JSON strings may hold U+2028 and others
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f'{name} cannot be read ({e}); {fix}') from None
  records = []
  for number, line in enumerate(lines, 1):
    line = line.lstrip(BOM)
    if not line.strip():
      continue
    where = f'{name} line {number}'
    try:
      records.append((number, where, json.loads(line)))
    except json.JSONDecodeError as e:
      raise UserError(f'{where} is not JSON ({e.msg}); {fix}') from None
  return records
