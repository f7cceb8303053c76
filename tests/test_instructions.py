"""Instruction tasks: the reader on every layout and bad input, the held-out split, prompts and
their left cut in golden token counts, and packing as a round trip."""

import hashlib
import json

import numpy as np
import pytest

from gpt_jax import instructions
from gpt_jax.errors import UserError
from gpt_jax.instructions import Example, Instance, Task

TASK = instructions.parse_task({
    'Definition': ['Say which.'],
    'Positive Examples': [{'input': 'a b', 'output': 'yes', 'explanation': 'why'},
                          {'input': 'c', 'output': 'no'}],
    'Instances': [{'id': 't-1', 'input': 'd e', 'output': ['yes']},
                  {'id': 't-2', 'input': 'f', 'output': ['no', 'maybe']}],
}, 'say_which')
# issue 11's minimal input: the layout of many published NI tasks, "Definition" a string
MINIMAL = {'Definition': 'Add the numbers.', 'Positive Examples': [],
           'Instances': [{'input': '1 2', 'output': ['3']}, {'input': '2 2', 'output': ['4']}]}


class CharTokenizer:
  """A token per character (its code point), EOS 0: token counts are character counts."""
  eos_id = 0

  def encode_batch(self, texts):
    return [[ord(c) for c in text] for text in texts]

  def decode(self, ids):
    return ''.join(map(chr, ids))


# --- reading ---------------------------------------------------------------------------------


def test_both_published_layouts_are_read(tmp_path):
  (tmp_path / 'minimal.json').write_text(json.dumps(MINIMAL))
  assert instructions.read_task(str(tmp_path / 'minimal.json')) == Task(
      'minimal', 'Add the numbers.', (), (),
      (Instance('minimal-1', '1 2', ('3',)), Instance('minimal-2', '2 2', ('4',))))
  published = {  # the keys of a current NI task; older files give an example's output as a list
      'Contributors': ['A'], 'Source': ['s'], 'URL': ['u'], 'Categories': ['Mathematics'],
      'Reasoning': [], 'Definition': ['Add the numbers.', 'Answer with a number.'],
      'Input_language': ['English'], 'Output_language': ['English'],
      'Instruction_language': ['English'], 'Domains': ['Numbers'],
      'Positive Examples': [{'input': '1 1', 'output': '2', 'explanation': '1 + 1 = 2'},
                            {'input': '2 3', 'output': ['5', 'five']}],
      'Negative Examples': [{'input': '1 3', 'output': '13', 'explanation': 'not added'}],
      'Instances': [{'id': 'task-a', 'input': '3 4', 'output': ['7', 'seven']},
                    {'id': 'task-b', 'input': '0 0', 'output': '0'}],
      'Instance License': ['MIT'],
  }
  assert instructions.parse_task(published, 'add') == Task(
      'add', 'Add the numbers.\nAnswer with a number.',
      (Example('1 1', '2', '1 + 1 = 2'), Example('2 3', '5')), (Example('1 3', '13', 'not added'),),
      (Instance('task-a', '3 4', ('7', 'seven')), Instance('task-b', '0 0', ('0',))))


def write_lines(path, records, bom=False):
  text = ''.join((json.dumps(r) if not isinstance(r, str) else r) + '\n' for r in records)
  path.write_bytes((b'\xef\xbb\xbf' if bom else b'') + text.encode())


def test_read_tasks_reads_files_directories_and_globs_of_both_schemas(tmp_path):
  tasks = tmp_path / 'tasks'
  (tasks / 'deeper').mkdir(parents=True)
  (tasks / 'a.json').write_bytes(b'\xef\xbb\xbf' + json.dumps({**MINIMAL, 'URL': ['u']}).encode())
  write_lines(tasks / 'b.jsonl', [
      {'instruction': 'Name a colour.', 'input': 'sky', 'output': 'blue', 'category': 'x'},
      '',  # blank lines are skipped; ids keep the line numbers
      {'instruction': 'Say hi.', 'output': 'hi'},
      {'instruction': 'Say no.', 'input': '', 'output': 'no'},
      {'instruction': 'Say yes.', 'input': None, 'output': 'yes'}], bom=True)
  write_lines(tmp_path / 'c.jsonl', [{'prompt': 'Q: 1+1\nA:', 'completion': ' 2'},
                                     {'prompt': 'Q: 2+2\nA:', 'completion': '4', 'id': 9}])
  (tasks / 'notes.txt').write_text('not a task')  # a directory gives its .json/.jsonl only
  (tasks / 'deeper' / 'd.json').write_text(json.dumps(MINIMAL))  # and not those below it
  found = instructions.read_tasks(f'{tasks}, {tmp_path}/c.jsonl,{tmp_path}/*/a.json')
  minimal = instructions.parse_task(MINIMAL, 'a')
  assert found == [
      minimal,
      Task('b', '', (), (), (Instance('b-1', 'Name a colour.\n\nsky', ('blue',)),
                             Instance('b-3', 'Say hi.', ('hi',)),
                             Instance('b-4', 'Say no.', ('no',)),
                             Instance('b-5', 'Say yes.', ('yes',)))),
      Task('c', '', (), (), (Instance('c-1', 'Q: 1+1\nA:', ('2',)),
                             Instance('c-2', 'Q: 2+2\nA:', ('4',)))),
      minimal]
  # a task without a definition is prompted from its first 'Input:'
  assert instructions.format_prompt(found[1], 0, found[1].instances[0].input) == (
      'Input: Name a colour.\n\nsky\nOutput:')


BAD_FILES = {  # file name -> (its text, the error it gives)
    'keys.jsonl': ('{"instruction": "x", "output": "y"}\n\n{"b": 1, "a": 2}\n',
                   "line 3 has keys ['a', 'b']; an instruction line needs the strings "
                   'instruction/output (and optionally input), prompt/completion, '
                   'prompt/chosen or chosen/rejected'),
    'list_output.jsonl': ('{"instruction": "x", "output": ["y"]}',
                          "line 1 has keys ['instruction', 'output']"),
    'array.jsonl': ('[1, 2]', 'line 1 is a JSON list'),
    'broken.jsonl': ('{"prompt": "x"', 'line 1 is not JSON'),
    'blank.jsonl': ('\n \n', 'holds no instruction lines'),
    'empty_output.jsonl': ('{"instruction": "x", "output": ""}',
                           'instance empty_output-1 has an empty answer'),
    'space_completion.jsonl': ('{"prompt": "x", "completion": " "}',
                               'instance space_completion-1 has an empty answer'),
    'empty_string.json': (json.dumps({**MINIMAL, 'Instances': [{'input': '1', 'output': ''}]}),
                          'instance empty_string-1 has an empty answer'),
    'empty_list.json': (json.dumps({**MINIMAL, 'Instances': [{'input': '1', 'output': []}]}),
                        'instance 1 needs an "input" string and an "output" list'),
    'no_instances.json': (json.dumps({**MINIMAL, 'Instances': []}), 'has no instances'),
    'notes.txt': ('x', 'is neither .json nor .jsonl'),
}


@pytest.mark.parametrize('name', BAD_FILES)
def test_a_bad_task_file_is_one_error_line(tmp_path, name):
  text, expected = BAD_FILES[name]
  (tmp_path / name).write_text(text)
  with pytest.raises(UserError) as error:
    instructions.read_tasks(str(tmp_path / name))
  assert expected in str(error.value) and '\n' not in str(error.value), str(error.value)
  assert name in str(error.value)


@pytest.mark.parametrize('spec, expected', [
    ('', "data.tasks='' names no file"), (' , ', 'names no file'),
    ('{tmp}/missing.json', 'does not exist'), ('{tmp}/nothing*.json', 'matches nothing'),
    ('{tmp}', 'names no file')])
def test_a_spec_without_tasks_is_one_error_line(tmp_path, spec, expected):
  with pytest.raises(UserError) as error:
    instructions.read_tasks(spec.format(tmp=tmp_path))
  assert expected in str(error.value) and '\n' not in str(error.value)


# --- the held-out split ----------------------------------------------------------------------


def numbered(n):
  return Task('t', 'd', (), (), tuple(Instance(f't-{k}', str(k), (str(k),)) for k in range(n)))


def test_the_split_is_by_hash_of_the_ids_whatever_their_order():
  task = numbered(10)
  train, held = instructions.split_instances(task, 3, seed=0)
  assert [i.id for i in held] == ['t-2', 't-3', 't-7']  # golden: the split of a seed never moves
  reference = sorted(task.instances, key=lambda i: hashlib.sha256(f'0:{i.id}'.encode()).digest())
  assert set(held) == set(reference[:3])
  assert list(train) == [i for i in task.instances if i not in held]  # the task's order
  backwards = Task('t', 'd', (), (), task.instances[::-1])
  assert set(instructions.split_instances(backwards, 3, seed=0)[1]) == set(held)
  assert set(instructions.split_instances(task, 3, seed=1)[1]) != set(held)


@pytest.mark.parametrize('n, held_out, expected', [
    (10, 0, 0), (10, 0.0, 0), (10, 3, 3), (10, 0.25, 2), (10, 0.35, 4),
    (10, 0.01, 1),  # a task asked to hold some out holds out one at least
    (10, 50, 9), (10, 0.99, 9),  # ... and trains on one at least
    (2, 0.5, 1), (2, 1, 1), (1, 5, 0), (1, 0.5, 0)])  # a task of one instance trains on it
def test_held_out_counts(n, held_out, expected):
  train, held = instructions.split_instances(numbered(n), held_out, seed=3)
  assert (len(train), len(held)) == (n - expected, expected)


@pytest.mark.parametrize('held_out', [-1, -0.1, 1.0, 1.5, True, '3', None])
def test_a_bad_held_out_is_an_error(held_out):
  with pytest.raises(UserError, match=r'sft.held_out=.*: pass a count'):
    instructions.split_instances(numbered(4), held_out)


# --- examples: prompt, answer and the left cut -----------------------------------------------


def test_an_example_is_eos_prompt_answer_eos():
  prompt = 'Say which.\n\nInput: a b\nOutput: yes\n\nInput: d e\nOutput:'
  assert instructions.format_prompt(TASK, 1, 'd e') == prompt and len(prompt) == 54
  examples, counts = instructions.tokenize_examples(TASK, TASK.instances, CharTokenizer(),
                                                    seq_len=100, shots=1)
  assert counts == instructions.Counts(kept=2, cut=0, dropped=0)
  tok = CharTokenizer()
  assert examples[0].tokens.tolist() == [0] + tok.encode_batch([prompt + ' yes'])[0] + [0]
  assert examples[0].tokens.dtype == np.int32 and examples[0].answer_len == 5  # ' yes', EOS
  # the first acceptable answer is the target
  assert tok.decode(examples[1].tokens[-examples[1].answer_len:-1]) == ' no'
  assert len(examples[1].tokens) == 1 + 52 + 3 + 1


@pytest.mark.parametrize('seq_len, kept_prompt', [
    (59, '\0Say which.\n\nInput: a b\nOutput: yes\n\nInput: d e\nOutput:'),  # 60 tokens: fits
    (58, 'Say which.\n\nInput: a b\nOutput: yes\n\nInput: d e\nOutput:'),  # the EOS goes first
    (40, ' a b\nOutput: yes\n\nInput: d e\nOutput:'),  # then the definition and examples
    (16, ' d e\nOutput:'),  # then the instance's 'Input: ' from its start
    (10, 'utput:'),
    (5, ':')])  # the answer and EOS leave room for one prompt token
def test_a_long_prompt_loses_tokens_on_the_left(seq_len, kept_prompt):
  (example,), counts = instructions.tokenize_examples(TASK, TASK.instances[:1], CharTokenizer(),
                                                      seq_len=seq_len, shots=1)
  assert CharTokenizer().decode(example.tokens) == kept_prompt + ' yes\0'
  assert len(example.tokens) == min(seq_len + 1, 60) and example.answer_len == 5
  assert counts == instructions.Counts(kept=1, cut=int(seq_len < 59), dropped=0)


def test_an_answer_that_fills_the_context_drops_its_example():
  # ' yes' + EOS is 5 tokens, ' no' + EOS 4: with 4 positions only the second keeps a prompt token
  examples, counts = instructions.tokenize_examples(TASK, TASK.instances, CharTokenizer(),
                                                    seq_len=4, shots=0)
  assert counts == instructions.Counts(kept=1, cut=1, dropped=1)
  assert CharTokenizer().decode(examples[0].tokens) == ': no\0'
  total = counts + instructions.Counts(kept=2, cut=0, dropped=3)
  assert total == instructions.Counts(kept=3, cut=1, dropped=4)


def test_more_shots_than_positive_examples_is_an_error():
  with pytest.raises(UserError, match=r'sft.shots=3, but task say_which has 2 positive '
                                      r'example\(s\); .* tasks have none: --config.sft.shots=0'):
    instructions.tokenize_examples(TASK, TASK.instances, CharTokenizer(), seq_len=64, shots=3)


# --- packing ---------------------------------------------------------------------------------


def example(tokens, answer_len):
  return instructions.TokenizedExample(np.asarray(tokens, np.int32), answer_len)


def unpack(rows):
  """(tokens, mask over the targets) of each example in the rows, checking how they lie."""
  found = []
  for r in range(len(rows['tokens'])):
    segment_ids = rows['segment_ids'][r]
    used = int((segment_ids > 0).sum())
    assert (segment_ids[used:] == 0).all()  # the examples first, padding after
    for key in rows:
      assert (rows[key][r, used:] == 0).all(), key
    start = 0
    for segment in range(1, segment_ids.max() + 1):
      at = np.flatnonzero(segment_ids == segment)
      assert at.tolist() == list(range(start, start + len(at)))  # one span, in turn
      assert rows['positions'][r, at].tolist() == list(range(len(at)))
      assert (rows['tokens'][r, at[1:]] == rows['targets'][r, at[:-1]]).all()
      tokens = rows['tokens'][r, at].tolist() + [int(rows['targets'][r, at[-1]])]
      found.append((tokens, rows['mask'][r, at].tolist()))
      start += len(at)
  return found


def test_first_fit_decreasing_golden_rows():
  # positions taken: 3, 5, 2, 4 in rows of 6: 5 opens row 0, 4 row 1, 3 row 2, 2 joins row 1
  examples = [example([0, 7, 8, 9], 1), example([0, 1, 2, 3, 4, 5], 2), example([0, 6, 5], 1),
              example([0, 4, 3, 2, 1], 3)]
  rows = instructions.pack(examples, 6)
  assert rows['segment_ids'].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 2, 2],
                                          [1, 1, 1, 0, 0, 0]]
  assert rows['tokens'].tolist() == [[0, 1, 2, 3, 4, 0], [0, 4, 3, 2, 0, 6], [0, 7, 8, 0, 0, 0]]
  assert rows['targets'].tolist() == [[1, 2, 3, 4, 5, 0], [4, 3, 2, 1, 6, 5], [7, 8, 9, 0, 0, 0]]
  assert rows['mask'].tolist() == [[0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 0, 1], [0, 0, 1, 0, 0, 0]]
  assert rows['positions'].tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 0, 0]]
  assert {key: a.dtype for key, a in rows.items()} == {
      'tokens': np.int32, 'targets': np.int32, 'mask': np.float32, 'segment_ids': np.int32,
      'positions': np.int32}


def as_unpacked(examples):
  return sorted((e.tokens.tolist(), [0.0] * (len(e.tokens) - 1 - e.answer_len) +
                 [1.0] * e.answer_len) for e in examples)


def test_packed_rows_unpack_to_the_examples():
  rng = np.random.default_rng(0)
  examples = []
  for _ in range(60):
    n = int(rng.integers(2, 18))  # up to seq_len + 1 tokens
    examples.append(example(rng.integers(1, 500, n), int(rng.integers(1, n))))
  rows = instructions.pack(examples, 16)
  assert sorted(unpack(rows)) == as_unpacked(examples)
  assert rows['mask'].sum() == sum(e.answer_len for e in examples)
  # first fit: had two rows each been at most half full, the later one's examples would have
  # fit into the earlier one
  used = (rows['segment_ids'] > 0).sum(axis=1)
  assert (used <= 8).sum() <= 1 and len(used) == 41  # 36 at the least: 567 positions
  again = instructions.pack(examples, 16)
  assert all((again[key] == rows[key]).all() for key in rows)


def test_tokenized_examples_pack_and_unpack():
  examples, counts = instructions.tokenize_examples(TASK, TASK.instances * 3, CharTokenizer(),
                                                    seq_len=40, shots=2)
  assert counts == instructions.Counts(kept=6, cut=6, dropped=0)
  rows = instructions.pack(examples, 40)
  assert sorted(unpack(rows)) == as_unpacked(examples)
  assert rows['mask'].sum() == 3 * (5 + 4)  # ' yes' and ' no', each with EOS


def test_an_example_longer_than_a_row_is_an_error():
  assert instructions.pack([], 8)['tokens'].shape == (0, 8)
  with pytest.raises(UserError, match='an example of 10 tokens does not fit rows of 8 positions'):
    instructions.pack([example(range(10), 2)], 8)


def test_evaluate_reads_an_instruction_jsonl_task(tmp_path):
  """--task takes the instruction JSON lines that instruction tuning trains on, as one task."""
  from gpt_jax import evaluate
  path = tmp_path / 'alpaca.jsonl'
  path.write_text('{"instruction": "Add.", "input": "1 2", "output": "3"}\n'
                  '{"prompt": "2 2", "completion": " 4"}\n')
  task = evaluate.load_task(str(path))
  assert task.name == 'alpaca' and [i.outputs for i in task.instances] == [('3',), ('4',)]
  assert instructions.format_prompt(task, 0, task.instances[0].input) == (
      'Input: Add.\n\n1 2\nOutput:')
