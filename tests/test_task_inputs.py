"""Labelled task files and GPT-1's input transformations: each schema and its errors, the held-out
split, golden token layouts, masks and cuts, and the majority baseline."""

import json
import random

import numpy as np
import pytest

from gpt_jax import instructions, task_inputs, tokenizer as tokenizer_lib
from gpt_jax.tasks import build
from gpt_jax.errors import UserError
from gpt_jax.task_inputs import encode, majority_rate, read_task_file, read_task_splits

LETTERS = ' abcdefghijklmnopqrstuvwxyz'
START, DELIM, EXTRACT = len(LETTERS), len(LETTERS) + 1, len(LETTERS) + 2
SPECIALS = {'<': START, '|': DELIM, '>': EXTRACT}


class CharTokenizer:
  """One token per character: ' ' is 0, 'a' 1, ..., 'z' 26."""
  vocab_size = len(LETTERS)
  eos_id = 0

  def encode_batch(self, texts):
    return [[LETTERS.index(ch) for ch in text] for text in texts]


def layout(spelled: str, seq_len: int) -> list[int]:
  """'<ab|c>' as ids: < start, | delim, > extract, letters their CharTokenizer ids; 0 after."""
  ids = [SPECIALS[ch] if ch in SPECIALS else LETTERS.index(ch) for ch in spelled]
  return ids + [0] * (seq_len - len(ids))


def mask(bits: str) -> list[float]:
  return [float(b) for b in bits]


def write_jsonl(path, examples) -> str:
  """Each example a line: a dict as JSON, a string as it is."""
  lines = [e if isinstance(e, str) else json.dumps(e) for e in examples]
  path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
  return str(path)


def encoded(tmp_path, examples, seq_len: int) -> dict[str, np.ndarray]:
  task = read_task_file(write_jsonl(tmp_path / 'task.jsonl', examples))
  arrays = encode(task, CharTokenizer(), seq_len, START, DELIM, EXTRACT)
  # The extract token ends every real sequence, and only padding follows it.
  tokens_RCL, extract_RC = arrays['tokens'], arrays['extract']
  for r, c in zip(*np.nonzero(arrays['choice_mask'])):
    assert tokens_RCL[r, c, extract_RC[r, c]] == EXTRACT
    assert not tokens_RCL[r, c, extract_RC[r, c] + 1:].any()
  return arrays


# --- reading ---------------------------------------------------------------------------------


def test_each_schema_is_read_and_its_kind_inferred(tmp_path):
  def read(examples, kind=''):
    return read_task_file(write_jsonl(tmp_path / 'news.jsonl', examples), kind)

  task = read([{'text': 'up', 'label': 'good', 'id': 7}, {'text': 'down', 'label': 'bad'}])
  assert (task.name, task.kind, task.labels) == ('news', 'classification', ('bad', 'good'))
  assert task.examples == (task_inputs.LabelledExample(('up',), (), 1),
                           task_inputs.LabelledExample(('down',), (), 0))
  task = read([{'premise': 'p', 'hypothesis': 'h', 'label': 'no'},
               {'premise': 'q', 'hypothesis': 'i', 'label': 'yes'}], 'entailment')
  assert (task.kind, task.labels) == ('entailment', ('no', 'yes'))
  assert task.examples[0].texts == ('p', 'h')
  task = read([{'text_a': 'a', 'text_b': 'b', 'label': True},
               {'text_a': 'c', 'text_b': 'd', 'label': False}])
  assert (task.kind, task.labels, task.examples[0].label) == ('similarity', ('false', 'true'), 1)
  task = read([{'context': 'c', 'choices': ['x', 'y', 'z'], 'label': 2},
               {'context': 'd', 'choices': ['v', 'w'], 'label': 0}])
  assert (task.kind, task.labels) == ('multiple_choice', ())
  assert task.examples[0] == task_inputs.LabelledExample(('c',), ('x', 'y', 'z'), 2)


def test_labels_are_strings_in_a_fixed_order(tmp_path):
  examples = [{'text': t, 'label': label} for t, label in zip('abcde', [10, 2, '1', 'b', 'a'])]
  path = tmp_path / 'numbers.jsonl'
  path.write_text('\ufeff' + ''.join(json.dumps(e) + '\n' for e in examples), encoding='utf-8')
  task = read_task_file(str(path))  # with a byte-order mark
  assert task.labels == ('1', '2', '10', 'a', 'b')
  assert [e.label for e in task.examples] == [2, 1, 0, 4, 3]


@pytest.mark.parametrize('examples, kind, message', [
    ([{'sentence': 'a', 'label': 1}], '',
     'line 1 is in no task schema: its keys are label, sentence'),
    ([{'text': 'a'}], '', 'line 1 is in no task schema: its keys are text'),
    ([{'text': 'a', 'premise': 'b', 'label': 1}], '', 'line 1 is in no task schema'),
    ([], '', 'has no examples'),
    (['', '  '], '', 'has no examples'),
    ([{'text': 'a', 'label': 'x'}, {'text': 'b', 'label': 'x'}], '',
     "every example has the label 'x', so there is nothing to classify"),
    ([{'context': 'a', 'choices': ['b', 'c'], 'label': 2}], '',
     'line 1: "label" 2 is not the index of one of its 2 choices'),
    ([{'context': 'a', 'choices': ['b', 'c'], 'label': True}], '',
     'line 1: "label" True is not the index'),
    ([{'context': 'a', 'choices': ['b'], 'label': 0}], '', 'needs at least two "choices"'),
    ([{'text': 'a', 'label': 'x'}, {'text': ' ', 'label': 'y'}], '',
     'line 2: "text" is empty or not text'),
    ([{'text': 3, 'label': 'x'}], '', 'line 1: "text" is empty or not text'),
    ([{'context': 'a', 'choices': ['b', ''], 'label': 0}], '', '"choices" is empty or not text'),
    ([{'text': 'a', 'label': 'x'}, '', {'premise': 'b', 'hypothesis': 'c', 'label': 'y'}], '',
     'line 3 is of kind entailment but'),
    ([{'text': 'a', 'label': 'x'}], 'entailment',
     'line 1 is of kind classification, not entailment'),
    ([{'text': 'a', 'label': 'x'}], 'sentiment', "task kind 'sentiment' is not one of"),
    (['{"text": "a",'], '', 'line 1 is not JSON'),
    (['[1, 2]'], '', 'line 1 is not a JSON object'),
    ([{'text': 'a', 'label': 0.5}], '', 'line 1: "label" 0.5 is not a string, integer or boolean'),
    ([{'text': 'a', 'label': 'x', 'split': 'test'}], '', 'line 1: "split" is \'test\''),
])
def test_bad_task_files_are_one_line_user_errors(tmp_path, examples, kind, message):
  path = write_jsonl(tmp_path / 'bad.jsonl', examples)
  with pytest.raises(UserError) as error:
    read_task_file(path, kind)
  assert message in str(error.value)
  assert '\n' not in str(error.value)
  assert path in str(error.value) or 'task kind' in str(error.value)


def test_a_natural_instructions_task_with_options_is_a_classification_task():
  path = build.PLAY_TASK
  task, ni_task = read_task_file(path), instructions.read_task(path)
  assert (task.name, task.kind, task.labels) == ('shakespeare_play', 'classification',
                                                 tuple(sorted(ni_task.options)))
  assert [e.texts for e in task.examples] == [(i.input,) for i in ni_task.instances]
  assert [task.labels[e.label] for e in task.examples] == [i.outputs[0] for i in ni_task.instances]
  train, held_out = read_task_splits(path)
  assert held_out.labels == train.labels == task.labels
  assert set(train.examples + held_out.examples) == set(task.examples)
  assert len(train.examples) + len(held_out.examples) == len(task.examples)


def write_ni_task(path, outputs, **extra) -> str:
  instances = [{'input': f'text {i}', 'output': output} for i, output in enumerate(outputs)]
  path.write_text(json.dumps({'Definition': 'Say.', 'Instances': instances, **extra}))
  return str(path)


def test_natural_instructions_labels_come_from_the_first_answer_or_the_options(tmp_path):
  task = read_task_file(write_ni_task(tmp_path / 'yes_no.json', [['yes', 'no']] * 3 + [['no']] * 3))
  assert task.labels == ('no', 'yes')
  assert [e.label for e in task.examples] == [1, 1, 1, 0, 0, 0]  # an instance's first answer
  task = read_task_file(write_ni_task(tmp_path / 'opt.json', [['maybe', 'no']],
                                      Options=['yes', 'no', 'unsure']))
  assert (task.labels, task.examples[0].label) == (('no', 'unsure', 'yes'), 0)


@pytest.mark.parametrize('outputs, extra, kind, message', [
    ([[f'answer {i}'] for i in range(20)], {}, '', 'its answers are free text, not a label set'),
    ([['maybe']], {'Options': ['yes', 'no']}, '',
     'instance ni-1: none of its answers is one of the task\'s "Options"'),
    ([['yes'], ['no']], {'Options': ['yes', 'no']}, 'entailment',
     'reads as a classification task, not entailment'),
])
def test_bad_natural_instructions_tasks(tmp_path, outputs, extra, kind, message):
  path = write_ni_task(tmp_path / 'ni.json', outputs, **extra)
  with pytest.raises(UserError) as error:
    read_task_file(path, kind)
  assert message in str(error.value)
  assert path in str(error.value)


# --- held-out split --------------------------------------------------------------------------


def test_a_sibling_val_file_is_held_out_with_the_training_label_set(tmp_path):
  train_path = write_jsonl(tmp_path / 'sst.train.jsonl',
                           [{'text': t, 'label': label} for t, label in zip('abc', 'xyz')])
  write_jsonl(tmp_path / 'sst.val.jsonl', [{'text': 'd', 'label': 'y'}])  # one label is enough
  train, held_out = read_task_splits(train_path)
  assert (train.name, held_out.name) == ('sst', 'sst')
  assert held_out.source == str(tmp_path / 'sst.val.jsonl')
  assert held_out.labels == train.labels == ('x', 'y', 'z')
  assert held_out.examples == (task_inputs.LabelledExample(('d',), (), 1),)

  write_jsonl(tmp_path / 'sst.val.jsonl', [{'text': 'd', 'label': 'y'},
                                           {'text': 'e', 'label': 'q'}])
  with pytest.raises(UserError, match=r"label 'q' in .*sst.val.jsonl was never seen in training "
                                      r"\(.*sst.train.jsonl has 'x', 'y', 'z'\)"):
    read_task_splits(train_path)
  write_jsonl(tmp_path / 'sst.val.jsonl', [{'premise': 'd', 'hypothesis': 'e', 'label': 'y'}])
  with pytest.raises(UserError, match='line 1 is of kind entailment, not classification'):
    read_task_splits(train_path)


def test_a_split_field_says_which_lines_are_held_out(tmp_path):
  path = write_jsonl(tmp_path / 'mc.jsonl', [
      {'context': 'a', 'choices': ['b', 'c'], 'label': 1, 'split': 'train'},
      {'context': 'd', 'choices': ['e', 'f', 'g'], 'label': 2, 'split': 'val'},
      {'context': 'h', 'choices': ['i', 'j'], 'label': 0, 'split': 'train'}])
  train, held_out = read_task_splits(path)
  assert [e.texts for e in train.examples] == [('a',), ('h',)]
  assert held_out.examples == (task_inputs.LabelledExample(('d',), ('e', 'f', 'g'), 2),)

  path = write_jsonl(tmp_path / 'some.jsonl', [{'text': 'a', 'label': 'x', 'split': 'val'},
                                               {'text': 'b', 'label': 'y'}])
  with pytest.raises(UserError, match='some.jsonl line 2 has no "split" but other lines'):
    read_task_splits(path)
  path = write_jsonl(tmp_path / 'none.jsonl', [{'text': 'a', 'label': 'x', 'split': 'train'},
                                               {'text': 'b', 'label': 'y', 'split': 'train'}])
  with pytest.raises(UserError, match='none of its 2 examples is a held-out one'):
    read_task_splits(path)
  path = write_jsonl(tmp_path / 'one.jsonl', [{'text': 'a', 'label': 'x', 'split': 'train'},
                                              {'text': 'b', 'label': 'y', 'split': 'val'}])
  with pytest.raises(UserError, match="every training example has the label 'x'"):
    read_task_splits(path)


def test_the_hash_split_holds_out_a_tenth_by_text_whatever_the_order(tmp_path):
  examples = [{'text': f'review number {i}', 'label': 'xy'[i % 2]} for i in range(400)]
  train, held_out = read_task_splits(write_jsonl(tmp_path / 'a.jsonl', examples))
  assert (len(train.examples), len(held_out.examples)) == (348, 52)
  # by a hash of the text that is the same in every process (Python's hash() is not)
  assert [e.texts[0] for e in held_out.examples[:3]] == [f'review number {i}' for i in (13, 20, 35)]
  assert held_out.labels == train.labels == ('x', 'y')
  assert all(held_out.labels[e.label] == 'xy'[int(e.texts[0].split()[-1]) % 2]
             for e in held_out.examples)
  random.Random(0).shuffle(examples)
  _, shuffled = read_task_splits(write_jsonl(tmp_path / 'b.jsonl', examples))
  assert set(shuffled.examples) == set(held_out.examples)


def test_a_shipped_task_is_found_by_name(tmp_path, monkeypatch):
  monkeypatch.setattr(task_inputs, 'SHIPPED_DIR', str(tmp_path))
  write_jsonl(tmp_path / 'demo.train.jsonl', [{'text': 'a', 'label': 'x'},
                                              {'text': 'b', 'label': 'y'}])
  write_jsonl(tmp_path / 'demo.val.jsonl', [{'text': 'c', 'label': 'x'}])
  train, held_out = read_task_splits('demo')
  assert (len(train.examples), len(held_out.examples)) == (2, 1)
  with pytest.raises(UserError, match="no task file 'demi'; .* or a shipped task: demo$"):
    read_task_splits('demi')


# --- input transformations -------------------------------------------------------------------


def test_classification_layout(tmp_path):
  arrays = encoded(tmp_path, [{'text': 'ab', 'label': 'y'}, {'text': 'c', 'label': 'x'}], 5)
  np.testing.assert_array_equal(arrays['tokens'], [[layout('<ab>', 5)], [layout('<c>', 5)]])
  np.testing.assert_array_equal(arrays['extract'], [[3], [2]])
  np.testing.assert_array_equal(arrays['label'], [1, 0])
  np.testing.assert_array_equal(arrays['choice_mask'], [[1], [1]])
  np.testing.assert_array_equal(arrays['lm_mask'], [[mask('11000')], [mask('10000')]])
  np.testing.assert_array_equal(arrays['cut'], [False, False])
  assert {k: a.dtype for k, a in arrays.items()} == {
      'tokens': np.int32, 'extract': np.int32, 'label': np.int32, 'choice_mask': np.float32,
      'lm_mask': np.float32, 'cut': bool}


def test_entailment_layout(tmp_path):
  arrays = encoded(tmp_path, [{'premise': 'ab', 'hypothesis': 'c', 'label': 'yes'},
                              {'premise': 'd', 'hypothesis': 'ef', 'label': 'no'}], 7)
  np.testing.assert_array_equal(arrays['tokens'], [[layout('<ab|c>', 7)], [layout('<d|ef>', 7)]])
  np.testing.assert_array_equal(arrays['extract'], [[5], [5]])
  np.testing.assert_array_equal(arrays['label'], [1, 0])
  np.testing.assert_array_equal(arrays['lm_mask'], [[mask('1101000')], [mask('1011000')]])


def test_similarity_layout_has_both_orders(tmp_path):
  arrays = encoded(tmp_path, [{'text_a': 'ab', 'text_b': 'c', 'label': 1},
                              {'text_a': 'd', 'text_b': 'e', 'label': 0}], 6)
  np.testing.assert_array_equal(arrays['tokens'], [[layout('<ab|c>', 6), layout('<c|ab>', 6)],
                                                   [layout('<d|e>', 6), layout('<e|d>', 6)]])
  np.testing.assert_array_equal(arrays['extract'], [[5, 5], [4, 4]])
  np.testing.assert_array_equal(arrays['label'], [1, 0])
  np.testing.assert_array_equal(arrays['choice_mask'], [[1, 1], [1, 1]])
  np.testing.assert_array_equal(arrays['lm_mask'], [[mask('110100'), mask('101100')],
                                                    [mask('101000'), mask('101000')]])


def test_multiple_choice_layout_pads_the_choices(tmp_path):
  arrays = encoded(tmp_path, [{'context': 'ab', 'choices': ['c', 'de'], 'label': 1},
                              {'context': 'f', 'choices': ['g', 'h', 'i'], 'label': 2}], 7)
  np.testing.assert_array_equal(arrays['tokens'], [
      [layout('<ab|c>', 7), layout('<ab|de>', 7), layout('', 7)],
      [layout('<f|g>', 7), layout('<f|h>', 7), layout('<f|i>', 7)]])
  np.testing.assert_array_equal(arrays['extract'], [[5, 6, 0], [4, 4, 4]])
  np.testing.assert_array_equal(arrays['label'], [1, 2])
  np.testing.assert_array_equal(arrays['choice_mask'], [[1, 1, 0], [1, 1, 1]])
  np.testing.assert_array_equal(arrays['lm_mask'], [
      [mask('1101000'), mask('1101100'), mask('0000000')],
      [mask('1010000'), mask('1010000'), mask('1010000')]])


@pytest.mark.parametrize('example, seq_len, layouts', [
    ({'text': 'abcdefgh', 'label': 0}, 5, ['<fgh>']),
    ({'premise': 'abcdefgh', 'hypothesis': 'xy', 'label': 0}, 8, ['<fgh|xy>']),
    ({'premise': 'ab', 'hypothesis': 'cdefghij', 'label': 0}, 8, ['<ab|hij>']),
    ({'premise': 'abc', 'hypothesis': 'def', 'label': 0}, 5, ['<c|f>']),  # the least that fits
    ({'text_a': 'abcd', 'text_b': 'wxyz', 'label': 0}, 8, ['<cd|xyz>', '<xyz|cd>']),
    ({'context': 'abcdefg', 'choices': ['x', 'yz'], 'label': 0}, 7, ['<efg|x>', '<fg|yz>']),
    ({'context': 'ab', 'choices': ['vwxyz', 'y'], 'label': 0}, 7, ['<ab|yz>', '<ab|y>']),
])
def test_a_long_sequence_loses_the_start_of_its_longer_text(tmp_path, example, seq_len, layouts):
  arrays = encoded(tmp_path, [example, {**example, 'label': 1}], seq_len)
  np.testing.assert_array_equal(arrays['tokens'], [[layout(s, seq_len) for s in layouts]] * 2)
  np.testing.assert_array_equal(arrays['cut'], [True, True])


def test_cuts_equal_cutting_one_token_at_a_time(tmp_path):
  def one_at_a_time(premise: str, hypothesis: str, budget: int) -> str:
    while len(premise) + len(hypothesis) > budget:
      if len(premise) >= len(hypothesis):
        premise = premise[1:]
      else:
        hypothesis = hypothesis[1:]
    return f'<{premise}|{hypothesis}>'

  rng = random.Random(0)
  examples = [{'premise': ''.join(rng.choices(LETTERS[1:], k=rng.randint(1, 12))),
               'hypothesis': ''.join(rng.choices(LETTERS[1:], k=rng.randint(1, 12))),
               'label': i % 2} for i in range(300)]
  arrays = encoded(tmp_path, examples, 9)
  expected = [[layout(one_at_a_time(e['premise'], e['hypothesis'], 6), 9)] for e in examples]
  np.testing.assert_array_equal(arrays['tokens'], expected)
  assert 0 < arrays['cut'].sum() < 300


def test_a_sequence_too_short_for_its_special_tokens_is_a_user_error(tmp_path):
  task = read_task_file(write_jsonl(tmp_path / 'pairs.jsonl', [
      {'text_a': 'a', 'text_b': 'b', 'label': 0}, {'text_a': 'c', 'text_b': 'd', 'label': 1}]))
  with pytest.raises(UserError, match=r'seq_len 4 is too short for similarity sequences, which '
                                      r'need at least 5 tokens \(\[start\] text_a \[delim\]'):
    encode(task, CharTokenizer(), 4, START, DELIM, EXTRACT)
  with pytest.raises(ValueError, match='three distinct ids >= the tokenizer'):
    encode(task, CharTokenizer(), 8, START, START, EXTRACT)
  with pytest.raises(ValueError, match='three distinct ids >= the tokenizer'):
    encode(task, CharTokenizer(), 8, 1, DELIM, EXTRACT)


def test_a_sentencepiece_tokenizer_spells_each_text_between_the_special_tokens(tmp_path):
  tokenizer = tokenizer_lib.train(['the cat sat on the mat, and a dog ran to the park.'] * 50, 300)
  start, delim, extract = tokenizer.vocab_size, tokenizer.vocab_size + 1, tokenizer.vocab_size + 2
  premises, hypotheses = ['the cat sat', 'a dog ran to the park.'], ['on the mat', 'the dog sat']
  task = read_task_file(write_jsonl(tmp_path / 'nli.jsonl', [
      {'premise': p, 'hypothesis': h, 'label': i} for i, (p, h) in enumerate(zip(premises,
                                                                                 hypotheses))]))
  arrays = encode(task, tokenizer, 32, start, delim, extract)
  for r, (premise, hypothesis) in enumerate(zip(premises, hypotheses)):
    seq = arrays['tokens'][r, 0, :arrays['extract'][r, 0] + 1].tolist()
    assert (seq[0], seq[-1], seq.count(delim)) == (start, extract, 1)
    d = seq.index(delim)
    assert tokenizer.decode(seq[1:d]) + '|' + tokenizer.decode(seq[d + 1:-1]) == (
        f'{premise}|{hypothesis}')
    np.testing.assert_array_equal(arrays['lm_mask'][r, 0, :len(seq) - 1],
                                  [t < tokenizer.vocab_size for t in seq[1:]])


def test_majority_rate(tmp_path):
  def task(labels, name):
    return read_task_file(write_jsonl(tmp_path / f'{name}.jsonl',
                                      [{'text': f'{name} {i}', 'label': label}
                                       for i, label in enumerate(labels)]))

  train, held_out = task('aab', 'train'), task('abbb', 'held_out')
  assert majority_rate(train, held_out) == 0.25
  assert majority_rate(task('ba', 'tie'), held_out) == 0.25  # a tie goes to the first label
  assert majority_rate(held_out, train) == 1 / 3
  assert majority_rate(train, task('bc', 'unseen')) == 0.0  # label sets need not agree
  choices = ['x', 'y', 'z']

  def multiple_choice(answers, name):
    return read_task_file(write_jsonl(tmp_path / f'{name}.jsonl', [
        {'context': f'{name} {i}', 'choices': choices, 'label': a} for i, a in enumerate(answers)]))

  assert majority_rate(multiple_choice([1, 1, 0], 'mc_train'),
                       multiple_choice([1, 0, 1, 2], 'mc_held_out')) == 0.5
