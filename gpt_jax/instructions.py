"""Instruction tasks: reading them and turning them into training rows.

A task is a Natural Instructions task (Mishra et al. 2022; Wang et al. 2022,
Super-NaturalInstructions): a definition, solved examples and the instances to answer. It is read
from an NI .json file (parse_task) or from a JSON-lines file of instructions (read_tasks). The
same reader and the same prompt (format_prompt) serve evaluation (gpt_jax.evaluate) and
instruction tuning, so a model is tested on the text it was tuned on.

Instruction tuning follows Tk-Instruct (Wang et al. 2022): a training example is the prompt of an
instance (the definition, k positive examples, the instance's input) and its answer; the loss
counts the answer's tokens only. tokenize_examples makes the token sequences, cut to the context
on the left; pack lays them whole into rows of a fixed length, each row's examples kept apart by
segment ids and positions that restart at 0 (as T5 and MaxText pack).
"""

import dataclasses
import glob
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from gpt_jax import files
from gpt_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Example:
  """A solved example: a positive one is shown in k-shot prompts, a negative one is a mistake."""
  input: str
  output: str
  explanation: str = ''


@dataclasses.dataclass(frozen=True)
class Instance:
  id: str
  input: str
  outputs: tuple[str, ...]  # every acceptable answer


@dataclasses.dataclass(frozen=True)
class Task:
  """A Natural Instructions task (Mishra et al. 2022; Wang et al. 2022, Super-NaturalInstructions):
  a definition, solved examples and the instances to answer."""
  name: str
  definition: str
  positive_examples: tuple[Example, ...]
  negative_examples: tuple[Example, ...]
  instances: tuple[Instance, ...]
  options: tuple[str, ...] = ()  # the answer options of a multiple-choice task that lists them


def _strings(value) -> list[str] | None:
  """value as a list of strings (a string is a list of one), or None if it is neither."""
  if isinstance(value, str):
    return [value]
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return value
  return None


def parse_task(data, name: str, source: str = 'the task') -> Task:
  """The task in a JSON object of the Natural Instructions schema (github.com/allenai/
  natural-instructions, tasks/*.json), in any of its published layouts:

    "Definition": a string, or a list of strings (joined by newlines)
    "Positive Examples", "Negative Examples" (optional): [{"input", "output", "explanation"}],
        "output" a string or a list of strings (the first is the example's answer), "explanation"
        optional
    "Instances": [{"id", "input", "output"}], "output" the list of acceptable answers (or one
        string); a missing "id" becomes NAME-<number from 1>
    "Options" (optional, this project's): the answer options of a multiple-choice task

  Every other key (Contributors, Source, URL, Categories, Reasoning, Domains, Input_language,
  Output_language, Instruction_language, Instance License, ...) is ignored. UserError, naming
  `source`, if a field is missing or of another type.
  """
  fix = 'a task needs "Definition": str, "Instances": [{"input": str, "output": [str]}]'
  if not isinstance(data, dict):
    raise UserError(f'{source} holds no JSON object; {fix}')
  definition = _strings(data.get('Definition'))
  if not definition:
    raise UserError(f'{source} has no "Definition" string or list of strings; {fix}')

  def examples(key: str) -> tuple[Example, ...]:
    found = []
    for example in data.get(key) or []:
      outputs = _strings(example.get('output')) if isinstance(example, dict) else None
      if not (outputs and isinstance(example.get('input'), str)
              and isinstance(example.get('explanation', ''), str)):
        raise UserError(f'{source}: each of its "{key}" needs an "input" and an "output" string '
                        '(and optionally an "explanation" string)')
      found.append(Example(example['input'], outputs[0], example.get('explanation', '')))
    return tuple(found)

  instances = data.get('Instances')
  if not (isinstance(instances, list) and instances):
    raise UserError(f'{source} has no instances ("Instances" missing or empty); {fix}')
  parsed = []
  for number, instance in enumerate(instances, 1):
    outputs = _strings(instance.get('output')) if isinstance(instance, dict) else None
    if not (outputs and isinstance(instance.get('input'), str)):
      raise UserError(f'{source}: instance {number} needs an "input" string and an "output" list '
                      f'of its acceptable answers; {fix}')
    parsed.append(Instance(str(instance.get('id', f'{name}-{number}')), instance['input'],
                           tuple(outputs)))
  options = data.get('Options', [])
  if not (isinstance(options, list) and len(options) != 1 and
          all(isinstance(o, str) for o in options)):
    raise UserError(f'{source}: "Options" must be a list of at least two strings')
  return Task(name, '\n'.join(definition), examples('Positive Examples'),
              examples('Negative Examples'), tuple(parsed), tuple(options))


def read_task(path: str) -> Task:
  """The task in a Natural Instructions .json file (parse_task), named by the file."""
  try:
    with open(path, encoding='utf-8-sig') as f:  # -sig: also with a byte-order mark
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f'{path} is not a JSON task file ({e}); pass a Natural Instructions task'
                    ) from None
  return parse_task(data, os.path.basename(path).removesuffix('.json'), f'task file {path}')


def format_prompt(task: Task, shots: int, query: str) -> str:
  """The definition, `shots` positive examples and the query, ending in 'Output:'; a task
  without a definition (a JSON-lines file's) starts at its first 'Input:'."""
  parts = [task.definition] if task.definition else []
  parts += [f'Input: {e.input}\nOutput: {e.output}' for e in task.positive_examples[:shots]]
  return '\n\n'.join(parts + [f'Input: {query}\nOutput:'])


# --- reading the tasks of a run --------------------------------------------------------------

_FIX_TASKS = ('pass Natural Instructions .json files or instruction .jsonl files, directories '
              'or globs in data.tasks')


def read_tasks(spec: str) -> list[Task]:
  """The tasks of a comma-separated list of files, directories (the .json and .jsonl files
  directly inside, sorted) and globs (sorted), in that order:

    NAME.json   a Natural Instructions task (read_task)
    NAME.jsonl  one task NAME of JSON lines, an instance a line, either
        {"instruction", "input" (optional), "output"} (Alpaca's): its input is the instruction,
            then a blank line and the "input" when that is not empty or null
        {"prompt", "completion"}: its input is the prompt and its answer the completion, less
            one leading space (the separator such files carry; the target adds its own)
        {"prompt", "chosen", ...} or {"chosen", "rejected"} (Anthropic HH): a preference pair
            (gpt_jax.preferences); its answer is the chosen one
      Other keys are ignored. The task has no definition and no solved examples, instance ids
      are NAME-<line number>, and format_prompt gives 'Input: <input>\\nOutput:'.

  A file may start with a byte-order mark. UserError (one line, naming the file, the line and
  the keys found) for a path that does not exist, a spec that names no task, a line in neither
  layout, or an empty answer.
  """
  paths = files.expand_paths(spec, 'data.tasks', _FIX_TASKS, lambda directory: sorted(
      glob.glob(os.path.join(directory, '*.json')) + glob.glob(os.path.join(directory, '*.jsonl'))))
  tasks = []
  for path in paths:
    if path.endswith('.jsonl'):
      tasks.append(_read_jsonl_task(path))
    elif path.endswith('.json'):
      tasks.append(read_task(path))
    else:
      raise UserError(f"data.tasks file '{path}' is neither .json nor .jsonl; {_FIX_TASKS}")
    for instance in tasks[-1].instances:
      if not all(output.strip() for output in instance.outputs):
        raise UserError(f'data.tasks file {path}: instance {instance.id} has an empty answer; '
                        'give every instance its answers, or leave it out')
  return tasks


def _read_jsonl_task(path: str) -> Task:
  """The task of an instruction .jsonl file (read_tasks)."""
  name = os.path.basename(path).removesuffix('.jsonl')
  instances = []
  for number, where, record in files.read_json_lines(
      path, f'data.tasks file {path}', 'an instruction file holds a JSON object a line'):
    strings = lambda *keys: all(isinstance(record.get(key), str) for key in keys)
    if isinstance(record, dict) and strings('instruction', 'output') and isinstance(
        record.get('input') or '', str):
      query = '\n\n'.join(filter(None, (record['instruction'], record.get('input'))))
      answer = record['output']
    elif isinstance(record, dict) and strings('prompt', 'completion'):
      query, answer = record['prompt'], record['completion'].removeprefix(' ')
    elif isinstance(record, dict) and strings('prompt', 'chosen'):
      # A preference pair (gpt_jax.preferences): SFT on the preferred answers, which is how
      # Rafailov et al. (2023, sec. 4) make the reference model when no SFT model exists.
      query, answer = record['prompt'], record['chosen']
    elif isinstance(record, dict) and strings('chosen', 'rejected'):
      query, answer, _ = shared_prompt(record['chosen'], record['rejected'])
    else:
      found = (f'has keys {sorted(record)}' if isinstance(record, dict) else
               f'is a JSON {type(record).__name__}')
      raise UserError(f'{where} {found}; an instruction line needs the strings '
                      'instruction/output (and optionally input), prompt/completion, '
                      'prompt/chosen or chosen/rejected')
    instances.append(Instance(f'{name}-{number}', query, (answer,)))
  if not instances:
    raise UserError(f'data.tasks file {path} holds no instruction lines; {_FIX_TASKS}')
  return Task(name, '', (), (), tuple(instances))


ASSISTANT = 'Assistant:'


def shared_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
  """(prompt, chosen answer, rejected answer) of two dialogues that share their start (the
  Anthropic HH layout): the prompt ends at the last 'Assistant:' of the shared start, else at its
  last whitespace, so that neither answer starts inside a word; each answer loses one leading
  space (the answer's own separator, ' ' + answer, is added back when it is encoded)."""
  n = len(os.path.commonprefix([chosen, rejected]))
  cut = chosen.rfind(ASSISTANT, 0, n)
  if cut >= 0:
    cut += len(ASSISTANT)
  else:
    cut = max(chosen.rfind(c, 0, n) for c in ' \n\t') + 1
  prompt = chosen[:cut]
  return prompt, chosen[cut:].removeprefix(' '), rejected[cut:].removeprefix(' ')


def split_instances(task: Task, held_out: int | float, seed: int = 0,
                    ) -> tuple[tuple[Instance, ...], tuple[Instance, ...]]:
  """(train, held-out) instances of a task, each in the task's order.

  held_out: a count (int >= 0), or a fraction of the instances (float in [0, 1), the count
  Python's round() makes of it). A task with at least two instances keeps at least one for
  training and, when held_out > 0, holds out at least one; a task of one instance trains on it.
  The held-out instances are those whose sha256 of '<seed>:<id>' comes first, so the split
  depends on the seed and the ids only: not on the order of the instances, Python's hash seed or
  the machine.
  """
  if isinstance(held_out, bool) or not (
      isinstance(held_out, int) and held_out >= 0 or isinstance(held_out, float) and
      0 <= held_out < 1):
    raise UserError(f'sft.held_out={held_out!r}: pass a count of instances (0 or more) or a '
                    'fraction in [0, 1)')
  n = len(task.instances)
  count = round(held_out * n) if isinstance(held_out, float) else held_out
  count = min(max(count, 1 if held_out else 0), n - 1) if n >= 2 else 0
  digests = [hashlib.sha256(f'{seed}:{i.id}'.encode()).digest() for i in task.instances]
  held = set(sorted(range(n), key=lambda k: (digests[k], k))[:count])
  return (tuple(i for k, i in enumerate(task.instances) if k not in held),
          tuple(i for k, i in enumerate(task.instances) if k in held))


# --- training examples: prompt, answer, in rows ----------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedExample:
  """An instruction-tuning example: `tokens` (int32, at most seq_len + 1 of them) are EOS, the
  prompt and the answer (' ' + output, then EOS); the last `answer_len` are the answer's, the
  only targets the loss counts. A prompt cut to fit the context has lost its first tokens
  (the EOS first)."""
  tokens: np.ndarray
  answer_len: int


@dataclasses.dataclass(frozen=True)
class Counts:
  """What tokenize_examples made of the instances; counts of several calls add up with +."""
  kept: int = 0  # examples made, cut ones included
  cut: int = 0  # kept examples whose prompt lost tokens on the left to fit the context
  dropped: int = 0  # instances whose answer and EOS alone fill the context: no example

  def __add__(self, other: 'Counts') -> 'Counts':
    return Counts(self.kept + other.kept, self.cut + other.cut, self.dropped + other.dropped)


def tokenize_examples(task: Task, instances: Sequence[Instance], tokenizer, *, seq_len: int,
                      shots: int) -> tuple[list[TokenizedExample], Counts]:
  """An example of each instance, in order, and the Counts.

  The prompt is format_prompt(task, shots, instance.input): the definition, the task's first
  `shots` positive examples (Tk-Instruct shows up to 2) and the instance, the text evaluate
  prompts with. The answer is ' ' + the instance's first output (Tk-Instruct draws one at random;
  the first keeps a run reproducible) + EOS, encoded apart from the prompt as evaluate scores an
  option. A row starts with EOS, as a pretraining document does. An example has seq_len inputs
  at most (tokens[:-1]), so a longer one loses tokens on the left, as evaluate cuts a prompt: the
  EOS, then the definition and examples, then the instance's input from its start, never its end
  ('Output:') or the answer. An instance whose answer and EOS take seq_len tokens or more is
  dropped: at least one prompt token must precede the answer.

  tokenizer: gpt_jax.tokenizer's interface (encode_batch(list[str]) -> list[list[int]], eos_id).
  UserError if shots is negative or more than the task's positive examples.
  """
  if not 0 <= shots <= len(task.positive_examples):
    raise UserError(f'sft.shots={shots}, but task {task.name} has {len(task.positive_examples)} '
                    'positive example(s); pass from 0 to that many shots (instruction .jsonl '
                    'tasks have none: --config.sft.shots=0)')
  eos = tokenizer.eos_id
  prompts = tokenizer.encode_batch([format_prompt(task, shots, i.input) for i in instances])
  answers = tokenizer.encode_batch([f' {i.outputs[0]}' for i in instances])
  examples, cut, dropped = [], 0, 0
  for prompt, answer in zip(prompts, answers):
    answer = [*answer, eos]
    keep = seq_len + 1 - len(answer)  # prompt tokens that fit before the answer
    if keep < 1:
      dropped += 1
      continue
    document = [eos, *prompt]
    cut += len(document) > keep
    examples.append(TokenizedExample(np.array(document[-keep:] + answer, np.int32), len(answer)))
  return examples, Counts(len(examples), cut, dropped)


def pack(examples: Sequence[TokenizedExample], seq_len: int) -> dict[str, np.ndarray]:
  """The examples laid whole into rows of seq_len positions: a dict of (R, seq_len) arrays, R the
  number of rows.

    tokens       int32    the inputs: tokens[:-1] of each example, one after the other
    targets      int32    the next token of the same example: its tokens[1:]
    mask         float32  1 where the target is an answer token (answer_len of each example)
    segment_ids  int32    1, 2, ... for the examples of a row in turn; 0 after them (padding)
    positions    int32    0, 1, ... within each example; 0 on padding

  Padding is 0 everywhere. The order is first-fit decreasing (Johnson 1973): the examples by
  length, longest first, ties in their given order, each into the first row with room, else a
  new one; rows are in the order they were opened, so the same examples give the same rows.
  A model attends within a segment only and the loss weighs targets by the mask. UserError if
  an example is longer than seq_len + 1 tokens (tokenize_examples with the same seq_len).
  """
  lengths = np.array([len(e.tokens) - 1 for e in examples], np.int64)  # the positions each takes
  if len(examples) and lengths.max() > seq_len:
    raise UserError(f'an example of {lengths.max() + 1} tokens does not fit rows of {seq_len} '
                    'positions; make the examples with tokenize_examples at the same seq_len')
  room = np.full(len(examples), seq_len, np.int64)  # free positions of each row opened so far
  members, num_rows = [], 0  # the examples of each row, in the order they went in
  for i in np.argsort(-lengths, kind='stable'):
    fits = room[:num_rows] >= lengths[i]
    row = int(np.argmax(fits)) if fits.any() else num_rows
    if row == num_rows:
      members.append([])
      num_rows += 1
    members[row].append(i)
    room[row] -= lengths[i]
  rows = {key: np.zeros((num_rows, seq_len), dtype) for key, dtype in (
      ('tokens', np.int32), ('targets', np.int32), ('mask', np.float32),
      ('segment_ids', np.int32), ('positions', np.int32))}
  for row, indices in enumerate(members):
    start = 0
    for segment, i in enumerate(indices, 1):
      tokens, n = examples[i].tokens, lengths[i]
      span = slice(start, start + n)
      rows['tokens'][row, span] = tokens[:-1]
      rows['targets'][row, span] = tokens[1:]
      rows['mask'][row, start + n - examples[i].answer_len:start + n] = 1
      rows['segment_ids'][row, span] = segment
      rows['positions'][row, span] = np.arange(n)
      start += n
  return rows
