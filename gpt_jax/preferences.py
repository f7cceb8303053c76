"""Preference data: pairs of answers to one prompt, one preferred (InstructGPT's comparisons,
Ouyang et al. 2022; DPO's (x, y_w, y_l), Rafailov et al. 2023), for the reward, dpo and ppo
objectives.

A pair is read from a JSON Lines file of data.tasks, a pair a line, either
    {"prompt", "chosen", "rejected"}   the answers to the prompt, the chosen one preferred
    {"chosen", "rejected"}             whole dialogues sharing their start (Anthropic HH): the
        prompt is the shared start up to its last 'Assistant:' (else its last whitespace), the
        answers what follows (instructions.shared_prompt)
Other keys are ignored. The prompt is shown to a model as the project's instruction prompt
(prompt_text: instructions.format_prompt of a task without a definition, 'Input: ...\\nOutput:'),
and an answer follows it as ' ' + answer + EOS, exactly as the sft objective trains and
gpt_jax.scoring scores, so a model tuned by `objective=sft` on the same prompts (an SFT file
of {"prompt", "completion"} lines) is the natural start.

Pairs are split into training and held-out pairs by prompt (split_pairs), so no held-out prompt
was trained on.
"""

import dataclasses
import glob
import hashlib
import os
from collections.abc import Sequence

import numpy as np

from gpt_jax import files, instructions
from gpt_jax.errors import UserError

_FIX = ('a preference file holds a JSON object a line with the strings prompt, chosen and '
        'rejected (or chosen and rejected sharing their start)')


@dataclasses.dataclass(frozen=True)
class Pair:
  id: str  # '<file name>-<line number>'
  prompt: str
  chosen: str  # the preferred answer, y_w
  rejected: str  # y_l


def _pair(record, where: str, pair_id: str) -> Pair:
  text = lambda key: isinstance(record.get(key), str)
  if not (isinstance(record, dict) and text('chosen') and text('rejected')):
    found = (f'has keys {sorted(record)}' if isinstance(record, dict) else
             f'is a JSON {type(record).__name__}')
    raise UserError(f'{where} {found}; {_FIX}')
  if record['chosen'] == record['rejected']:
    raise UserError(f'{where}: chosen and rejected are the same text, which says nothing about '
                    'what is preferred; fix or drop the line')
  if 'prompt' in record:
    if not text('prompt'):
      raise UserError(f'{where}: prompt is not a string; {_FIX}')
    prompt, chosen, rejected = record['prompt'], record['chosen'], record['rejected']
  else:
    prompt, chosen, rejected = instructions.shared_prompt(record['chosen'], record['rejected'])
  for name, value in (('prompt', prompt), ('chosen', chosen), ('rejected', rejected)):
    if not value.strip():
      raise UserError(f'{where}: the {name} text is empty; give every pair a prompt and two '
                      'answers')
  return Pair(pair_id, prompt, chosen, rejected)


def read_pairs(spec: str, what: str = 'data.tasks') -> list[Pair]:
  """The pairs of a comma-separated list of .jsonl files, directories (their .jsonl files, sorted)
  and globs, in order. One-line UserError naming the file and line for a line that is not JSON,
  lacks chosen or rejected, has them equal, or leaves a text empty; or when no pair is found."""
  fix = f'pass preference .jsonl files, directories or globs in {what}'
  paths = files.expand_paths(spec, what, fix, lambda directory: sorted(
      glob.glob(os.path.join(directory, '*.jsonl'))))
  pairs = []
  for path in paths:
    name = os.path.basename(path).removesuffix('.jsonl')
    for number, where, record in files.read_json_lines(path, f'{what} file {path}', _FIX):
      pairs.append(_pair(record, where, f'{name}-{number}'))
  if not pairs:
    raise UserError(f'{what}={spec!r} holds no preference pairs; {fix}')
  return pairs


def split_pairs(pairs: Sequence[Pair], held_out: float, seed: int = 0
                ) -> tuple[list[Pair], list[Pair]]:
  """(training, held-out) pairs, each in the given order. A prompt's pairs all go the same way:
  the held-out prompts are the round(held_out · prompts) whose sha256 of '<seed>:<prompt>' comes
  first (at least one, and at least one left for training), so the split depends on the seed and
  the prompts alone. UserError for held_out outside (0, 1) or a single prompt."""
  if not 0 < held_out < 1:
    raise UserError(f'preference.held_out={held_out} must be in (0, 1): the fraction of prompts '
                    'held out (or pass --config.data.held_out_tasks=FILES)')
  prompts = sorted({p.prompt for p in pairs},
                   key=lambda p: hashlib.sha256(f'{seed}:{p}'.encode()).digest())
  if len(prompts) < 2:
    raise UserError('the preference pairs have a single prompt: nothing to hold out; add pairs '
                    'or pass --config.data.held_out_tasks=FILES')
  held = set(prompts[:min(max(round(held_out * len(prompts)), 1), len(prompts) - 1)])
  return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


def read_splits(config) -> tuple[list[Pair], list[Pair]]:
  """(training, held-out) pairs: data.tasks and data.held_out_tasks when set, else the split
  split_pairs makes of data.tasks by preference.held_out."""
  if not config.data.tasks:
    raise UserError(f'objective={config.objective} needs preference pairs: pass '
                    '--config.data.tasks=FILES (.jsonl lines of prompt, chosen, rejected)')
  pairs = read_pairs(config.data.tasks)
  if config.data.held_out_tasks:
    return pairs, read_pairs(config.data.held_out_tasks, 'data.held_out_tasks')
  return split_pairs(pairs, config.preference.held_out, config.seed)


def held_out_source(config) -> str:
  """Where read_splits' held-out pairs come from, for the log."""
  if config.data.held_out_tasks:
    return f'held out: data.held_out_tasks={config.data.held_out_tasks}'
  return f'held out: preference.held_out={config.preference.held_out} of the prompts'


def prompt_text(prompt: str) -> str:
  """The text a model reads before an answer: the instruction prompt of the sft objective."""
  return instructions.format_prompt(instructions.Task('', '', (), (), ()), 0, prompt)


def encode_pairs(pairs: Sequence[Pair], tokenizer, seq_len: int) -> dict[str, np.ndarray]:
  """The pairs as model inputs, both answers of a pair in one row; a dict of arrays, R pairs:

    tokens   (R, 2, L) int32    EOS, prompt, ' ' + answer, EOS (chosen at [:, 0], rejected at
                                [:, 1]), then zeros; L = seq_len
    targets  (R, 2, L) int32    the next token of each position (0 where there is none)
    mask     (R, 2, L) float32  1 where the target is an answer token (its EOS included)
    last     (R, 2)    int32    the position of each sequence's final EOS (the reward model
                                reads its hidden state)
    cut      (R,)      bool     whether the prompt lost tokens on the left to fit

  A prompt too long for the answers beside it loses tokens on the left (its EOS first), as sft
  cuts a prompt. UserError, naming the pair, if an answer leaves no room for a prompt token."""
  eos = tokenizer.eos_id
  prompts = tokenizer.encode_batch([prompt_text(p.prompt) for p in pairs])
  answers = tokenizer.encode_batch([f' {text}' for p in pairs for text in (p.chosen, p.rejected)])
  R, L = len(pairs), seq_len
  arrays = {'tokens': np.zeros((R, 2, L), np.int32), 'targets': np.zeros((R, 2, L), np.int32),
            'mask': np.zeros((R, 2, L), np.float32), 'last': np.zeros((R, 2), np.int32),
            'cut': np.zeros(R, bool)}
  for r, (pair, prompt) in enumerate(zip(pairs, prompts)):
    pair_answers = [[*answers[2 * r], eos], [*answers[2 * r + 1], eos]]
    keep = L - max(map(len, pair_answers))  # prompt tokens that fit before either answer
    if keep < 1:
      raise UserError(f'pair {pair.id}: an answer takes {max(map(len, pair_answers))} tokens, no '
                      f'room left for its prompt in the {L}-token context; raise --config.seq_len '
                      'or shorten the answer')
    document = [eos, *prompt]
    arrays['cut'][r] = len(document) > keep
    for c, answer in enumerate(pair_answers):
      sequence = document[-keep:] + answer  # at most L tokens
      n = len(sequence)
      arrays['tokens'][r, c, :n] = sequence
      arrays['targets'][r, c, :n - 1] = sequence[1:]
      arrays['mask'][r, c, n - 1 - len(answer):n - 1] = 1.0
      arrays['last'][r, c] = n - 1
  return arrays


def encode_prompts(prompts: Sequence[str], tokenizer, length: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens, positions, cut) of the prompts to sample answers to: tokens (R, P) int32, EOS and
  prompt_text(prompt) left-padded with zeros to P = length; positions (R, P) int32, 0, 1, ... on
  the prompt and -1 on padding (which no token attends to, as gpt_jax.sample pads); cut (R,)
  bool, whether the prompt lost tokens on the left to fit in `length`."""
  eos = tokenizer.eos_id
  encoded = tokenizer.encode_batch([prompt_text(p) for p in prompts])
  tokens = np.zeros((len(prompts), length), np.int32)
  positions = np.full((len(prompts), length), -1, np.int32)
  cut = np.zeros(len(prompts), bool)
  for r, prompt in enumerate(encoded):
    document = [eos, *prompt]
    cut[r] = len(document) > length
    document = document[-length:]
    tokens[r, length - len(document):] = document
    positions[r, length - len(document):] = np.arange(len(document))
  return tokens, positions, cut
