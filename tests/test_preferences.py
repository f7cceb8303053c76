"""Preference pairs (gpt_jax.preferences): reading both layouts, the split, and the encoding."""

import json
import re

import numpy as np
import pytest

from gpt_jax import instructions, preferences
from gpt_jax.errors import UserError


class CharTokenizer:
  """A token per character (id = code point % 50 + 3), EOS 1: lengths are easy to count."""
  eos_id = 1

  def encode_batch(self, texts):
    return [[ord(c) % 50 + 3 for c in text] for text in texts]


def write(path, rows) -> str:
  path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows))
  return str(path)


def test_both_layouts_are_read(tmp_path):
  hh_chosen = '\n\nHuman: Hi\n\nAssistant: Hello there'
  hh_rejected = '\n\nHuman: Hi\n\nAssistant: Go away'
  path = write(tmp_path / 'p.jsonl', [
      {'prompt': 'Q', 'chosen': ' yes', 'rejected': 'no', 'score': 3},
      {'chosen': hh_chosen, 'rejected': hh_rejected},
      {'chosen': 'The cat sat', 'rejected': 'The cat ran'}])
  pairs = preferences.read_pairs(path)
  assert pairs == [
      preferences.Pair('p-1', 'Q', ' yes', 'no'),
      preferences.Pair('p-2', '\n\nHuman: Hi\n\nAssistant:', 'Hello there', 'Go away'),
      # no 'Assistant:': the shared start is cut back to a whitespace, not inside 'sat'/'ran'
      preferences.Pair('p-3', 'The cat ', 'sat', 'ran')]


def test_files_joined_with_their_byte_order_marks_are_read(tmp_path):
  rows = [{'prompt': f'Q{i}', 'chosen': 'a', 'rejected': 'b'} for i in range(3)]
  path = tmp_path / 'joined.jsonl'
  path.write_text(''.join(f'\ufeff{json.dumps(row)}\n' for row in rows) + '\ufeff\n')
  assert [p.prompt for p in preferences.read_pairs(str(path))] == ['Q0', 'Q1', 'Q2']


@pytest.mark.parametrize('row, message', [
    ({'prompt': 'Q', 'chosen': 'a'}, "line 1 has keys ['chosen', 'prompt']; a preference file"),
    ({'prompt': 'Q', 'chosen': 'a', 'rejected': 'a'}, 'chosen and rejected are the same text'),
    ({'prompt': ' ', 'chosen': 'a', 'rejected': 'b'}, 'the prompt text is empty'),
    ({'prompt': 1, 'chosen': 'a', 'rejected': 'b'}, 'prompt is not a string'),
    ('{"prompt": "Q"', 'line 1 is not JSON'),
    ([1], 'line 1 is a JSON list'),
])
def test_bad_rows_are_one_line_errors(tmp_path, row, message):
  with pytest.raises(UserError, match=re.escape(message)) as e:
    preferences.read_pairs(write(tmp_path / 'bad.jsonl', [row]))
  assert '\n' not in str(e.value) and 'bad.jsonl' in str(e.value)


def test_the_split_is_by_prompt_and_depends_on_the_seed_and_prompts_only():
  pairs = [preferences.Pair(f'p-{i}', f'prompt {i % 10}', 'a', 'b') for i in range(40)]
  train, held = preferences.split_pairs(pairs, 0.2, seed=0)
  assert len({p.prompt for p in held}) == 2 and len(held) == 8
  assert not {p.prompt for p in train} & {p.prompt for p in held}
  again = preferences.split_pairs(pairs[::-1], 0.2, seed=0)[1]
  assert {p.id for p in again} == {p.id for p in held}
  assert {p.prompt for p in preferences.split_pairs(pairs, 0.2, seed=1)[1]} != {
      p.prompt for p in held}
  with pytest.raises(UserError, match=r'preference.held_out=1.0 must be in \(0, 1\)'):
    preferences.split_pairs(pairs, 1.0)


def test_encoding_lays_out_prompt_answers_targets_and_last_token():
  pair = preferences.Pair('p-1', 'ab', 'xyz', 'q')
  arrays = preferences.encode_pairs([pair], CharTokenizer(), seq_len=24)
  prompt = [1] + [ord(c) % 50 + 3 for c in preferences.prompt_text('ab')]
  assert preferences.prompt_text('ab') == 'Input: ab\nOutput:'
  for c, answer in enumerate((' xyz', ' q')):
    sequence = prompt + [ord(ch) % 50 + 3 for ch in answer] + [1]
    n = len(sequence)
    np.testing.assert_array_equal(arrays['tokens'][0, c], sequence + [0] * (24 - n))
    np.testing.assert_array_equal(arrays['targets'][0, c, :n - 1], sequence[1:])
    # the targets of the answer's tokens and its EOS, none of the prompt's
    expected_mask = np.zeros(24)
    expected_mask[len(prompt) - 1:n - 1] = 1
    np.testing.assert_array_equal(arrays['mask'][0, c], expected_mask)
    assert arrays['last'][0, c] == n - 1 and arrays['tokens'][0, c, n - 1] == 1
  assert not arrays['cut'][0]


def test_a_long_prompt_is_cut_on_the_left_and_no_room_is_an_error():
  pair = preferences.Pair('p-7', 'a long prompt indeed', 'xyz', 'q')
  arrays = preferences.encode_pairs([pair], CharTokenizer(), seq_len=12)
  assert arrays['cut'][0] and arrays['last'][0, 0] == 11  # the longer answer fills the context
  assert arrays['tokens'][0, 0, 6] == ord(':') % 50 + 3  # the prompt's end is kept
  with pytest.raises(UserError, match=r'pair p-7: an answer takes 5 tokens, no room left for its '
                                      r'prompt in the 5-token context; raise --config.seq_len'):
    preferences.encode_pairs([pair], CharTokenizer(), seq_len=5)


def test_prompts_to_sample_from_are_left_padded():
  tokens, positions, cut = preferences.encode_prompts(['a', 'abcdefg'], CharTokenizer(), 20)
  n = 1 + len(preferences.prompt_text('a'))
  assert n == 20 - 3 and list(positions[0]) == [-1] * 3 + list(range(n))
  assert list(tokens[0, :3]) == [0, 0, 0] and tokens[0, 3] == 1
  assert cut.tolist() == [False, True] and list(positions[1]) == list(range(20))


def test_sft_reads_the_chosen_answers_of_both_layouts(tmp_path):
  path = write(tmp_path / 'pairs.jsonl', [
      {'prompt': 'Q', 'chosen': 'yes', 'rejected': 'no'},
      {'chosen': '\n\nHuman: Hi\n\nAssistant: Hello',
       'rejected': '\n\nHuman: Hi\n\nAssistant: Go'}])
  task, = instructions.read_tasks(path)
  assert [(i.input, i.outputs) for i in task.instances] == [
      ('Q', ('yes',)), ('\n\nHuman: Hi\n\nAssistant:', ('Hello',))]
