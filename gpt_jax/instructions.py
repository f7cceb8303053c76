"""Instruction tasks: reading them and turning them into training rows.

Tasks are Natural Instructions task files (Mishra et al. 2022; Wang et al. 2022,
Super-NaturalInstructions): a definition, solved examples and the instances to answer. The same
reader and the same prompt (format_prompt) serve evaluation (gpt_jax.evaluate) and instruction
tuning, so a model is tested on the text it was tuned on.
"""

import dataclasses
import json
import os

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
    raise UserError(f'{source} has no "Instances" list; {fix}')
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
  """The definition, `shots` positive examples and the query, ending in 'Output:'."""
  parts = [task.definition]
  parts += [f'Input: {e.input}\nOutput: {e.output}' for e in task.positive_examples[:shots]]
  return '\n\n'.join(parts + [f'Input: {query}\nOutput:'])
