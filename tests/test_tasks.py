"""The shipped tasks: each file is what its builder makes (byte for byte, so reproducible), the
readers take them, and their labels hold against the corpus text itself (spot checks): the play,
kind, speaker and next line of each asked line, and the split of its scene."""

import bisect
import collections
import json
import os

import pytest

from gpt_jax import clean, config as config_lib, corpus, data, evaluate, instructions, preferences
from gpt_jax import scoring
from gpt_jax.tasks import build, judge

SPLITS = ('train', 'val')
SPOT_CHECKS = 25  # rows checked against the corpus per file


@pytest.fixture(scope='module')
def shipped():
  return build.shipped()


class Scenes:
  """The cleaned scenes of the default config, searched for whole lines as plain text."""

  def __init__(self, shakespeare):
    d = config_lib.base_config().data
    self.docs = clean.clean_documents(shakespeare, clean.Settings.from_config(d))[0]
    self.held_out = [data.is_validation(doc.text, d.val_fraction) for doc in self.docs]
    self.starts, parts, at = [], [], 0
    for doc in self.docs:
      self.starts.append(at)
      parts.append(f'\n{doc.text}\n\0')  # \0: no match spans two scenes
      at += len(parts[-1])
    self.text = ''.join(parts)
    self.titles = {}
    for path in corpus.shakespeare_files():
      with open(path, encoding='utf-8') as f:
        self.titles['/'.join(path.split(os.sep)[-2:])] = f.readline().removeprefix('# ').strip()

  def find(self, lines: str) -> list[tuple[int, int]]:
    """(scene, offset in its text) of each place the text has these whole lines."""
    found, at = [], self.text.find(f'\n{lines}\n')
    while at >= 0:
      scene = bisect.bisect_right(self.starts, at) - 1
      found.append((scene, at - self.starts[scene]))
      at = self.text.find(f'\n{lines}\n', at + 1)
    return found

  def only(self, lines: str, split: str):
    """The one scene with these lines, which must be of `split`: (its play's file, its text,
    the offset of the lines)."""
    (scene, at), = self.find(lines)
    assert self.held_out[scene] == (split == 'val'), lines
    return self.docs[scene].source.split('#')[0], self.docs[scene].text, at

  def title(self, lines: str, split: str) -> str:
    return self.titles[self.only(lines, split)[0]]

  def speaker(self, line: str, split: str) -> str:
    """The name that heads the paragraph of the line, as strip_markup prints it ('IAGO:')."""
    _, text, at = self.only(line, split)
    paragraph = text[:at].rsplit('\n\n', 1)[-1]
    return paragraph.split('\n', 1)[0]


@pytest.fixture(scope='module')
def scenes(shakespeare):
  return Scenes(shakespeare)


def spot(rows):
  return rows[::len(rows) // SPOT_CHECKS]


def genre(path: str) -> str:
  return build.GENRES[path.split('/')[0]]


# --- reproducible --------------------------------------------------------------------------


def test_the_play_task_is_what_the_builder_builds():
  with open(build.PLAY_TASK, encoding='utf-8') as f:
    assert json.dumps(build.build_play_task(), indent=2, sort_keys=True) + '\n' == f.read()


def test_every_shipped_file_is_what_its_builder_builds(shipped):
  on_disk = {os.path.relpath(os.path.join(root, name), build.TASKS_DIR)
             for root, _, names in os.walk(build.TASKS_DIR) for name in names
             if name.endswith(('.json', '.jsonl'))}
  assert on_disk == set(shipped) and len(shipped) == 19
  for path, content in shipped.items():
    with open(os.path.join(build.TASKS_DIR, path), encoding='utf-8') as f:
      text = f.read()
    assert build.file_text(path, content) == text, path
    assert len(text.encode()) < 300_000, path


def test_the_seed_draws_the_rows():
  assert build.classify_genre(seed=1)['val'] != build.classify_genre()['val']
  assert build.sft_next_line(seed=1)['train'] != build.sft_next_line()['train']
  assert build.preference_pairs(seed=1)['val'] != build.preference_pairs()['val']


def test_write_play_task_still_writes_it(tmp_path, capsys):
  evaluate.main([f'--write_play_task={tmp_path}/play.json'])
  with open(build.PLAY_TASK, encoding='utf-8') as f:
    assert (tmp_path / 'play.json').read_text() == f.read()
  assert capsys.readouterr().out == f'wrote {tmp_path}/play.json\n'


# --- the shipped play task -------------------------------------------------------------------


def test_the_shipped_task_is_valid_balanced_and_held_out(shakespeare):
  task = evaluate.load_task('shakespeare_play')
  assert task.name == 'shakespeare_play'
  options = scoring.task_options(task)
  assert len(options) == 4 and len(task.positive_examples) >= 5
  outputs = [i.outputs for i in task.instances]
  assert all(len(o) == 1 and o[0] in options for o in outputs)
  assert all(sum(o == (title,) for o in outputs) == 50 for title in options)
  inputs = [i.input for i in task.instances]
  assert len(set(inputs)) == len(inputs)
  assert not {e.input for e in task.positive_examples} & set(inputs)
  d = config_lib.base_config().data
  docs = {doc.source: doc.text
          for doc in clean.clean_documents(shakespeare, clean.Settings.from_config(d))[0]}
  training = [text for text in docs.values() if not data.is_validation(text, d.val_fraction)]
  for instance in task.instances:
    source, line = instance.id.removeprefix('shakespeare_play-').rsplit(':', 1)
    assert data.is_validation(docs[source], d.val_fraction)
    assert docs[source].split('\n')[int(line) - 1] == instance.input
    assert 25 <= len(instance.input) <= 120
    assert not any(instance.input in text for text in training)


# --- instruction tuning ----------------------------------------------------------------------


def test_the_sft_tasks_read_and_share_their_prompts_across_splits():
  tasks = {split: instructions.read_tasks(os.path.join(build.TASKS_DIR, 'sft', split))
           for split in SPLITS}
  assert [t.name for t in tasks['train']] == ['genre', 'next_line', 'play', 'speaker']
  for train, val in zip(tasks['train'], tasks['val']):
    assert (len(train.instances), len(val.instances), len(train.positive_examples)) == (400, 100, 5)
    assert (train.definition, train.positive_examples) == (val.definition, val.positive_examples)
    inputs = [i.input for i in train.instances + val.instances]
    assert len(set(inputs)) == len(inputs)  # no instance twice, none in both splits
    assert not {e.input for e in train.positive_examples} & set(inputs)
  play = next(t for t in tasks['train'] if t.name == 'play')
  assert play.definition == evaluate.load_task('shakespeare_play').definition


def sft_instances(shipped, name, split):
  return instructions.parse_task(shipped[f'sft/{split}/{name}.json'], name).instances


@pytest.mark.parametrize('split', SPLITS)
def test_sft_labels_hold_in_the_corpus(shipped, scenes, split):
  for i in spot(sft_instances(shipped, 'play', split)):
    assert i.outputs == (scenes.title(i.input, split),)
  for i in spot(sft_instances(shipped, 'genre', split)):
    assert i.outputs == (genre(scenes.only(i.input, split)[0]),)
  for i in spot(sft_instances(shipped, 'speaker', split)):
    title, line = i.input.removeprefix('Play: ').split('\nLine: ')
    assert scenes.title(line, split) == title
    assert scenes.speaker(line, split) == f'{i.outputs[0]}:'
  for i in spot(sft_instances(shipped, 'next_line', split)):
    scenes.only(i.input, split)  # found once, so its next line is the one
    assert scenes.find(f'{i.input}\n{i.outputs[0]}')


@pytest.mark.parametrize('split', SPLITS)
def test_sft_labels_are_balanced(shipped, split):
  for name, labels in (('play', 4), ('genre', 6)):
    counts = collections.Counter(i.outputs for i in sft_instances(shipped, name, split))
    assert len(counts) == labels and max(counts.values()) - min(counts.values()) <= 1, name


# --- task fine-tuning ------------------------------------------------------------------------


@pytest.mark.parametrize('split', SPLITS)
def test_classify_labels_hold_in_the_corpus(shipped, scenes, split):
  rows = lambda name: shipped[f'classify/{split}/{name}.jsonl']
  for row in spot(rows('genre')):
    assert set(row) == {'text', 'label'}
    assert row['label'] == genre(scenes.only(row['text'], split)[0])
  for row in spot(rows('same_play')):
    assert set(row) == {'text_a', 'text_b', 'label'}
    same = scenes.only(row['text_a'], split)[0] == scenes.only(row['text_b'], split)[0]
    assert row['label'] == ('same' if same else 'different')
  for row in spot(rows('follows')):
    assert set(row) == {'premise', 'hypothesis', 'label'}
    scenes.only(row['premise'], split)
    follows = bool(scenes.find(f'{row["premise"]}\n{row["hypothesis"]}'))
    assert row['label'] == ('follows' if follows else 'does not follow')
  for row in spot(rows('next_line')):
    assert set(row) == {'context', 'choices', 'label'} and len(set(row['choices'])) == 4
    scenes.only(row['context'], split)
    assert [bool(scenes.find(f'{row["context"]}\n{c}')) for c in row['choices']] == [
        k == row['label'] for k in range(4)]


@pytest.mark.parametrize('split', SPLITS)
def test_classify_files_are_balanced_and_sized(shipped, split):
  n = {'train': 400, 'val': 100}[split]
  for name in build.CLASSIFY:
    rows = shipped[f'classify/{split}/{name}.jsonl']
    assert len(rows) == n, name
    counts = collections.Counter(str(row['label']) for row in rows)
    assert len(counts) == {'genre': 6, 'next_line': 4}.get(name, 2), name
    assert max(counts.values()) - min(counts.values()) <= (n // 4 if name == 'next_line' else 1)


@pytest.mark.parametrize('split', SPLITS)
def test_preference_pairs_are_the_judges_and_hold_in_the_corpus(shipped, scenes, split):
  rows = shipped[f'preference/{split}/pentameter.jsonl']
  assert len(rows) == {'train': 1000, 'val': 200}[split]
  assert len({row['prompt'] for row in rows}) == len(rows)
  for row in rows:
    assert set(row) == {'prompt', 'chosen', 'rejected'}
    assert judge.prefers(row['chosen'], row['rejected']) == 1
    assert judge.distance(row['rejected']) - judge.distance(row['chosen']) >= 2
  for row in spot(rows):
    prompt_scene = scenes.find(row['prompt'])
    scenes.only(row['prompt'], split)
    follows = [bool(scenes.find(f'{row["prompt"]}\n{row[k]}')) for k in ('chosen', 'rejected')]
    assert sorted(follows) == [False, True]  # one answer is the next line
    other = row['rejected'] if follows[0] else row['chosen']
    assert {scene for scene, _ in scenes.find(other)}.isdisjoint(s for s, _ in prompt_scene)
    scenes.only(other, split)


def test_the_preference_files_read_as_pairs_and_as_sft_tasks():
  path = os.path.join(build.TASKS_DIR, 'preference', 'val', 'pentameter.jsonl')
  pairs = preferences.read_pairs(path)
  task, = instructions.read_tasks(path)
  assert len(pairs) == len(task.instances) == 200
  assert [(i.input, i.outputs) for i in task.instances] == [(p.prompt, (p.chosen,)) for p in pairs]
