"""Labelled tasks for fine-tuning with a task head, and the token sequences the model reads.

Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training", section 3.3
and Figure 1: each example becomes one or more sequences that begin with a start token, separate
their texts by a delimiter token and end in an extract token, whose last hidden state the task
head reads:

  classification   [start] text [extract]
  entailment       [start] premise [delim] hypothesis [extract]
  similarity       [start] text_a [delim] text_b [extract], [start] text_b [delim] text_a [extract]
  multiple_choice  [start] context [delim] choice_i [extract], one sequence per choice

Task files are JSON Lines, one example an object per line (UTF-8, a byte-order mark allowed):

  classification   {"text": str, "label": L}
  entailment       {"premise": str, "hypothesis": str, "label": L}
  similarity       {"text_a": str, "text_b": str, "label": L}
  multiple_choice  {"context": str, "choices": [str, str, ...], "label": index of the right one}

L is a string, an integer or a boolean (true/false); an optional "split": "train" | "val" says
where the example goes (read_task_splits); other keys are ignored. A Natural Instructions task
(.json) whose answers form a label set reads as a classification task of its instances' inputs.
"""

import collections
import dataclasses
import json
import os
import re

import numpy as np

from gpt_jax import data, files
from gpt_jax.errors import UserError
from gpt_jax.instructions import read_task
from gpt_jax.scoring import MAX_LABELS, auto_scoring

# The text keys of each kind, in the order they appear in its sequences.
TEXT_KEYS = {
    'classification': ('text',),
    'entailment': ('premise', 'hypothesis'),
    'similarity': ('text_a', 'text_b'),
    'multiple_choice': ('context', 'choices'),
}
KINDS = tuple(TEXT_KEYS)
LAYOUTS = {
    'classification': '[start] text [extract]',
    'entailment': '[start] premise [delim] hypothesis [extract]',
    'similarity': '[start] text_a [delim] text_b [extract]',
    'multiple_choice': '[start] context [delim] choice [extract]',
}
HELD_OUT_FRACTION = 0.1  # of a file with neither a .val.jsonl sibling nor "split" fields
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tasks', 'classify')
_SCHEMAS = '; '.join(f'{kind}: {", ".join(keys)}, label' for kind, keys in TEXT_KEYS.items())


@dataclasses.dataclass(frozen=True)
class LabelledExample:
  texts: tuple[str, ...]  # the kind's TEXT_KEYS in order, "choices" left out
  choices: tuple[str, ...]  # multiple choice only, else ()
  label: int  # index into LabelledTask.labels; for multiple choice the right choice's index


@dataclasses.dataclass(frozen=True)
class LabelledTask:
  """The examples of one task file. `labels` is the label set (integers numerically, then strings
  alphabetically; booleans are 'false', 'true'); () for multiple choice, whose labels are choice
  indices."""
  name: str
  kind: str  # one of KINDS
  labels: tuple[str, ...]
  examples: tuple[LabelledExample, ...]
  source: str  # the file it was read from, for messages


@dataclasses.dataclass(frozen=True)
class _Row:
  """An example as read, before its label has an index."""
  where: str  # 'FILE line N', for messages
  texts: tuple[str, ...]
  choices: tuple[str, ...]
  label: str | int  # the label's name; for multiple choice the right choice's index
  split: str  # 'train', 'val', or '' when the line has no "split"


# --- reading ---------------------------------------------------------------------------------


def read_task_file(path: str, kind: str = '') -> LabelledTask:
  """The labelled task in a .jsonl file (the schemas above) or a Natural Instructions .json file.

  `kind` ('' to read it from the keys) must match the keys. Every example of the file is read,
  whatever its "split". UserError, naming the file and line, for a file in no schema or of mixed
  schemas, no examples, an empty text, a label that is not a string, integer or boolean, fewer
  than two distinct labels, fewer than two choices or a choice index out of range.
  """
  return _with_two_labels(_labelled(path, *_read(path, kind)), 'example')


def read_task_splits(spec: str, kind: str = '') -> tuple[LabelledTask, LabelledTask]:
  """(train, held_out) of a task file, or of a shipped task's name (a file in SHIPPED_DIR).

  The held-out examples are, in this order of precedence: those of the sibling NAME.val.jsonl of
  a NAME.train.jsonl; the lines with "split": "val" when lines carry a "split" (then all must);
  otherwise about HELD_OUT_FRACTION of the examples, picked by a hash of their texts, so the split
  depends on neither the order of the lines nor the run. held_out shares train's label set
  (check_labels). UserError as read_task_file, and when either side has no examples.
  """
  path = _task_path(spec)
  val_path = path.removesuffix('.train.jsonl') + '.val.jsonl'
  if path.endswith('.train.jsonl') and os.path.isfile(val_path):
    train = read_task_file(path, kind)
    return train, read_held_out(val_path, train)
  kind, rows, options = _read(path, kind)
  held = _held_out(path, rows)
  if all(held) or not any(held):
    side = 'training' if all(held) else 'held-out'
    raise UserError(f'task file {path}: none of its {len(rows)} examples is a {side} one; give '
                    'lines "split": "train" and "val", or a NAME.train.jsonl and NAME.val.jsonl '
                    f'pair, or more examples (about {HELD_OUT_FRACTION:.0%} are held out)')
  train = _with_two_labels(_labelled(path, kind, [r for r, h in zip(rows, held) if not h],
                                     options), 'training example')
  held_out = _labelled(path, kind, [r for r, h in zip(rows, held) if h], options)
  return train, check_labels(train, held_out)


def read_held_out(path: str, train: LabelledTask) -> LabelledTask:
  """Every example of the task file `path` (whatever its "split"), as held-out examples of
  `train`: of its kind, with label indices into train.labels (check_labels). Unlike
  read_task_file, one label is enough. UserError as read_task_file and check_labels."""
  kind, rows, options = _read(path, train.kind)
  return check_labels(train, _labelled(path, kind, rows, options))


def check_labels(train: LabelledTask, held_out: LabelledTask) -> LabelledTask:
  """held_out with its label indices into train.labels (the integer labels a classifier trained
  on `train` predicts); UserError for another kind or a label training never saw."""
  if held_out.kind != train.kind:
    raise UserError(f'{held_out.source} is of kind {held_out.kind} but {train.source} of kind '
                    f'{train.kind}; hold out examples of the training task')
  if train.kind == 'multiple_choice':
    return held_out
  unseen = {held_out.labels[e.label] for e in held_out.examples} - set(train.labels)
  if unseen:
    label = min(unseen, key=_label_order)
    raise UserError(f'label {label!r} in {held_out.source} was never seen in training '
                    f'({train.source} has {", ".join(map(repr, train.labels))}); add training '
                    'examples of it or leave it out of the held-out examples')
  index = {label: i for i, label in enumerate(train.labels)}
  examples = tuple(dataclasses.replace(e, label=index[held_out.labels[e.label]])
                   for e in held_out.examples)
  return dataclasses.replace(held_out, labels=train.labels, examples=examples)


def _with_two_labels(task: LabelledTask, examples: str) -> LabelledTask:
  if task.kind != 'multiple_choice' and len(task.labels) < 2:
    raise UserError(f'task file {task.source}: every {examples} has the label {task.labels[0]!r}, '
                    f'so there is nothing to classify; give {examples}s of at least two labels')
  return task


def _task_path(spec: str) -> str:
  if os.path.isfile(spec):
    return spec
  if os.sep not in spec:
    for suffix in ('.train.jsonl', '.jsonl'):
      if os.path.isfile(shipped := os.path.join(SHIPPED_DIR, spec + suffix)):
        return shipped
  entries = os.listdir(SHIPPED_DIR) if os.path.isdir(SHIPPED_DIR) else []
  names = sorted({re.sub(r'(\.train|\.val)?\.jsonl$', '', f) for f in entries
                  if f.endswith('.jsonl')})
  raise UserError(f'no task file {spec!r}; pass a .jsonl or Natural Instructions .json task file'
                  + (f' or a shipped task: {", ".join(names)}' if names else ''))


def _read(path: str, kind: str) -> tuple[str, list[_Row], tuple[str, ...]]:
  """(kind, rows, the label set the file declares or ())."""
  if kind and kind not in KINDS:
    raise UserError(f'task kind {kind!r} is not one of {", ".join(KINDS)}; pass one of them, '
                    'or none to read it from the file')
  if path.endswith('.json'):
    return _read_instructions(path, kind)
  return _read_jsonl(path, kind)


def _read_jsonl(path: str, kind: str) -> tuple[str, list[_Row], tuple[str, ...]]:
  rows, first = [], None  # first: the first row and its kind, the kind of the whole file
  for _, where, obj in files.read_json_lines(path, path, 'write one JSON object per line'):
    row_kind = _kind_of(obj, where)
    if kind and row_kind != kind:
      raise UserError(f'{where} is of kind {row_kind}, not {kind}: an example of {kind} has the '
                      f'keys {", ".join(TEXT_KEYS[kind])}, label; pass the kind of the file')
    row = _row(obj, row_kind, where)
    first = first or (row, row_kind)
    if row_kind != first[1]:
      raise UserError(f'{where} is of kind {row_kind} but {first[0].where} of kind {first[1]}; '
                      'keep one kind of example in a file')
    rows.append(row)
  if not rows:
    raise UserError(f'task file {path} has no examples; write one JSON object per line '
                    f'({_SCHEMAS})')
  return first[1], rows, ()


def _kind_of(obj, where: str) -> str:
  if not isinstance(obj, dict):
    raise UserError(f'{where} is not a JSON object; write one object per line ({_SCHEMAS})')
  text_keys = {k for keys in TEXT_KEYS.values() for k in keys} & set(obj)
  kind = next((kind for kind, keys in TEXT_KEYS.items() if set(keys) == text_keys), None)
  if kind is None or 'label' not in obj:
    raise UserError(f'{where} is in no task schema: its keys are {", ".join(sorted(obj))}; give '
                    f'the keys of one kind ({_SCHEMAS})')
  return kind


def _row(obj: dict, kind: str, where: str) -> _Row:
  for key in TEXT_KEYS[kind]:
    texts = obj[key] if key == 'choices' else [obj[key]]
    if not (isinstance(texts, list) and all(isinstance(t, str) and t.strip() for t in texts)):
      raise UserError(f'{where}: "{key}" is empty or not text; give every example its text')
  split = obj.get('split', '')
  if 'split' in obj and split not in ('train', 'val'):
    raise UserError(f'{where}: "split" is {split!r}; write "train" or "val", or leave it out')
  texts = tuple(obj[key] for key in TEXT_KEYS[kind] if key != 'choices')
  label = obj['label']
  if kind != 'multiple_choice':
    return _Row(where, texts, (), _label_name(label, where), split)
  choices = tuple(obj['choices'])
  if len(choices) < 2:
    raise UserError(f'{where}: a multiple-choice example needs at least two "choices", this one '
                    f'has {len(choices)}; add choices')
  if not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(choices)):
    raise UserError(f'{where}: "label" {label!r} is not the index of one of its {len(choices)} '
                    f'choices; give the right choice\'s index, 0 to {len(choices) - 1}')
  return _Row(where, texts, choices, label, split)


def _label_name(label, where: str) -> str:
  if isinstance(label, bool):
    return json.dumps(label)  # 'true', 'false', as the file spells them
  if isinstance(label, (str, int)):
    return str(label)
  raise UserError(f'{where}: "label" {json.dumps(label)} is not a string, integer or boolean; '
                  'give each class a name or a number')


def _label_order(name: str) -> tuple:
  """Integers by value first (so 2 comes before 10), then the other names alphabetically."""
  return (0, int(name), '') if re.fullmatch(r'-?\d+', name) else (1, 0, name)


def _read_instructions(path: str, kind: str) -> tuple[str, list[_Row], tuple[str, ...]]:
  """A Natural Instructions task: each instance's input, labelled by its first answer (its first
  one among the task's "Options", when it has them)."""
  if kind not in ('', 'classification'):
    raise UserError(f'{path} is a Natural Instructions task, which reads as a classification '
                    f'task, not {kind}; pass kind classification or a .jsonl task file')
  task = read_task(path)
  if auto_scoring(task) != 'choice':
    raise UserError(f'task file {path}: its answers are free text, not a label set; give it '
                    f'"Options", or instances whose answers are at most {MAX_LABELS} labels each '
                    'shared by several instances')
  rows = []
  for instance in task.instances:
    where = f'{path} instance {instance.id}'
    if not instance.input.strip():
      raise UserError(f'{where}: "input" is empty; give every instance its text')
    answers = [o for o in instance.outputs if o in task.options or not task.options]
    if not answers:
      raise UserError(f'{where}: none of its answers is one of the task\'s "Options"; give each '
                      'instance an answer among them')
    rows.append(_Row(where, (instance.input,), (), answers[0], ''))
  return 'classification', rows, task.options


def _labelled(path: str, kind: str, rows: list[_Row], options: tuple[str, ...]) -> LabelledTask:
  """The task of `rows`, whose label set is `options` or else the labels the rows have."""
  name = re.sub(r'(\.train|\.val)?\.jsonl?$', '', os.path.basename(path))
  if kind == 'multiple_choice':
    return LabelledTask(name, kind, (), tuple(LabelledExample(r.texts, r.choices, r.label)
                                              for r in rows), path)
  labels = tuple(sorted(set(options) or {r.label for r in rows}, key=_label_order))
  index = {label: i for i, label in enumerate(labels)}
  examples = tuple(LabelledExample(r.texts, r.choices, index[r.label]) for r in rows)
  return LabelledTask(name, kind, labels, examples, path)


def _held_out(path: str, rows: list[_Row]) -> list[bool]:
  """Whether each row is held out: by its "split", else by a hash of its texts."""
  unsplit = [r for r in rows if not r.split]
  if len(unsplit) == len(rows):
    return [data.is_validation('\n'.join(r.texts + r.choices), HELD_OUT_FRACTION) for r in rows]
  if unsplit:
    raise UserError(f'{unsplit[0].where} has no "split" but other lines of {path} have; give '
                    'every line "split": "train" or "val", or none of them')
  return [r.split == 'val' for r in rows]


# --- input transformations -------------------------------------------------------------------


def encode(task: LabelledTask, tokenizer, seq_len: int, start: int, delim: int,
           extract: int) -> dict[str, np.ndarray]:
  """The task's examples as the token sequences of GPT-1's Figure 1 (the layouts above).

  `tokenizer` has encode_batch(texts) -> ids and vocab_size (gpt_jax.tokenizer). start, delim and
  extract are three distinct ids >= tokenizer.vocab_size, which the tokenizer never produces.
  With R examples and C sequences each (1 for classification and entailment, 2 for similarity,
  the most choices of any example for multiple choice), L = seq_len:

    tokens       (R, C, L) int32    the sequences, 0 after the extract token
    extract      (R, C) int32       the position of the extract token, each sequence's last
    label        (R,) int32         index into task.labels, or the right choice's index
    choice_mask  (R, C) float32     1 for a real sequence, 0 for the padding of an example with
                                    fewer choices (tokens 0, extract 0, lm_mask 0)
    lm_mask      (R, C, L) float32  1 where the next token, tokens[..., t + 1], is a text token
                                    (for the auxiliary language-modelling loss of section 3.2)
    cut          (R,) bool          whether any sequence of the example was cut to fit L (not
                                    model input: cut.sum() is the number of examples cut)

  A sequence longer than L is cut one token at a time from the start of its longer text part (on
  a tie the one first in the example: context, premise, text_a), so each text keeps its end, the
  tokens beside the delimiter and the extract token, and both orders of a similarity pair keep the
  same tokens. UserError if L cannot hold the special tokens and a token of each text.
  """
  if len({start, delim, extract}) < 3 or min(start, delim, extract) < tokenizer.vocab_size:
    raise ValueError(f'start, delim, extract = {start}, {delim}, {extract} must be three distinct '
                     f'ids >= the tokenizer\'s vocab_size {tokenizer.vocab_size}')
  num_texts = len(TEXT_KEYS[task.kind])
  if seq_len < 2 * num_texts + 1:
    raise UserError(f'seq_len {seq_len} is too short for {task.kind} sequences, which need at '
                    f'least {2 * num_texts + 1} tokens ({LAYOUTS[task.kind]}); use a larger '
                    'seq_len')
  texts = list(dict.fromkeys(t for e in task.examples for t in e.texts + e.choices))
  ids = dict(zip(texts, tokenizer.encode_batch(texts)))
  parts = [[ids[t] for t in e.texts + e.choices] for e in task.examples]
  orders = [_sequences(task.kind, len(p)) for p in parts]
  num_rows, num_sequences = len(parts), max(map(len, orders))
  tokens_RCL = np.zeros((num_rows, num_sequences, seq_len), np.int32)
  extract_RC = np.zeros((num_rows, num_sequences), np.int32)
  choice_mask_RC = np.zeros((num_rows, num_sequences), np.float32)
  cut_R = np.zeros(num_rows, bool)
  for r, (example, example_orders) in enumerate(zip(parts, orders)):
    for c, order in enumerate(example_orders):
      budget = seq_len - len(order) - 1  # for text: all but the start, delim and extract tokens
      in_example_order = sorted(order)  # ties are cut alike in both orders of a similarity pair
      lengths = [len(example[i]) for i in in_example_order]
      kept = dict(zip(in_example_order, _kept_lengths(lengths, budget)))
      cut_R[r] |= sum(kept.values()) < sum(lengths)
      seq = [start]
      for n, i in enumerate(order):
        seq += ([delim] if n else []) + example[i][len(example[i]) - kept[i]:]
      seq.append(extract)
      tokens_RCL[r, c, :len(seq)] = seq
      extract_RC[r, c] = len(seq) - 1
      choice_mask_RC[r, c] = 1
  lm_mask_RCL = np.zeros(tokens_RCL.shape, np.float32)
  lm_mask_RCL[..., :-1] = ((tokens_RCL[..., 1:] < tokenizer.vocab_size) &
                           (np.arange(1, seq_len) < extract_RC[..., None]))
  return {'tokens': tokens_RCL, 'extract': extract_RC,
          'label': np.array([e.label for e in task.examples], np.int32),
          'choice_mask': choice_mask_RC, 'lm_mask': lm_mask_RCL, 'cut': cut_R}


def _sequences(kind: str, num_parts: int) -> list[tuple[int, ...]]:
  """The indices of the example's text parts (texts, then choices) in each of its sequences."""
  if kind == 'similarity':
    return [(0, 1), (1, 0)]
  if kind == 'multiple_choice':
    return [(0, choice) for choice in range(1, num_parts)]
  return [tuple(range(num_parts))]


def _kept_lengths(lengths: list[int], budget: int) -> list[int]:
  """How many tokens each of one or two text parts keeps to fit `budget`: one at a time, the
  longer part loses its first token, the first part on a tie."""
  if sum(lengths) <= budget:
    return lengths
  if len(lengths) == 1:
    return [budget]
  first, second = lengths
  half = budget // 2
  if first <= half:
    return [first, budget - first]
  if second <= budget - half:
    return [budget - second, second]
  return [half, budget - half]


def majority_rate(train: LabelledTask, held_out: LabelledTask) -> float:
  """The held-out accuracy of always answering the most common training label (for multiple
  choice the most common right choice's index; on a tie the first in label order): the baseline a
  classifier must beat."""
  counts = collections.Counter(_label_names(train))
  majority = min(counts, key=lambda name: (-counts[name], _label_order(str(name))))
  names = _label_names(held_out)
  return names.count(majority) / len(names)


def _label_names(task: LabelledTask) -> list[str | int]:
  return [task.labels[e.label] if task.labels else e.label for e in task.examples]
