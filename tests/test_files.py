"""gpt_jax.files: atomic writes into folders that may not exist yet."""

import json
import os

import pytest

from gpt_jax import files
from gpt_jax.errors import UserError


@pytest.mark.parametrize('write', [
    lambda path: files.write_json(path, {'a': 1}),
    lambda path: files.write_text(path, '{"a": 1}'),
])
def test_writers_make_the_missing_folder(tmp_path, write):
  # bench_decode's default --json, runs/bench/decode.json, in a fresh checkout (issue 24, kind 9)
  path = tmp_path / 'runs' / 'bench' / 'decode.json'
  write(str(path))
  assert json.loads(path.read_text()) == {'a': 1}
  assert os.listdir(path.parent) == ['decode.json']  # no temporary file left beside it


def test_atomic_path_makes_the_missing_folder_and_keeps_the_old_file_on_failure(tmp_path):
  path = tmp_path / 'a' / 'b.bin'
  with files.atomic_path(str(path)) as tmp:
    with open(tmp, 'wb') as f:
      f.write(b'old')
  with pytest.raises(RuntimeError), files.atomic_path(str(path)) as tmp:
    with open(tmp, 'wb') as f:
      f.write(b'half')
    raise RuntimeError('killed mid-write')
  assert path.read_bytes() == b'old' and os.listdir(path.parent) == ['b.bin']


def test_a_file_in_the_way_of_the_folder_is_one_line(tmp_path):
  (tmp_path / 'runs').write_text('not a folder')
  with pytest.raises(UserError, match=r'cannot make the folder .*runs/bench to write'):
    files.write_json(str(tmp_path / 'runs' / 'bench' / 'decode.json'), {})


def test_a_new_directory_under_a_file_is_one_line(tmp_path):
  (tmp_path / 'runs').write_text('not a folder')
  with pytest.raises(UserError, match=r'cannot make the folder .*runs/merged.tmp\d+ to write'):
    with files.new_directory(str(tmp_path / 'runs' / 'merged'), '--out'):
      pass
