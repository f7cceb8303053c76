"""Evaluating a finished run: language-model metrics and zero-/few-shot prompted tasks.

  python -m gpt_jax.evaluate --workdir=DIR [--data=FILE] [--seq_len=N] [--max_batches=N]
  python -m gpt_jax.evaluate --workdir=DIR --task=FILE.json|FILE.jsonl|NAME [--shots=0,1,5]
      [--max_instances=N] [--scoring=auto|choice|generation]  (FILE.jsonl: instruction lines)
  python -m gpt_jax.evaluate --workdir=DIR --task=FILE.jsonl [--max_instances=N]  (DIR a run of
      objective classify: the accuracy of its task head on FILE's labelled examples)
  python -m gpt_jax.evaluate --write_play_task[=PATH]  (rebuilds the shipped shakespeare_play task;
      python -m gpt_jax.tasks.build rebuilds every shipped task)

Language-model metrics are loss (nats/token), perplexity and bits per byte on the run's validation
split or on a .txt/.jsonl[.gz] file, every token after the first scored exactly once.

Tasks are Natural Instructions task files (gpt_jax.instructions): a definition, k solved
examples, then the query. A multiple-choice task scores each answer option as the log-likelihood
of ' ' + option after the prompt, as in GPT-3 and lm-eval-harness (acc, and acc_norm: normalised
by its bytes); a task with free-text answers is scored as Super-NaturalInstructions does: the
greedy answer, up to its first newline, by exact match and ROUGE-L against the acceptable answers
(auto_scoring picks).

Log-likelihoods come from one compiled function of fixed shape (batch, seq_len): rows are padded
and masked, and the batch is laid out on the devices like a training batch (data parallel).
Generation decodes with the KV cache of gpt_jax.sample.
"""

import argparse
import collections
import functools
import math
import os
import string
import sys
from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import cli, corpus, data, files, instructions, losses, runs, sample, sharding
from gpt_jax.errors import UserError
from gpt_jax.tasks import build

DEFAULT_SHOTS = (0, 1, 5)


# --- scoring ---------------------------------------------------------------------------------


def score_fn(gpt, num_tokens: int | None = None):
  """(params, tokens_BL1, mask_BL) -> summed NLL (nats) of each row's unmasked targets, (B,),
  under the model's distribution over the first num_tokens ids (None: all of them): the ids a
  padded vocabulary adds beyond the tokenizer's are not tokens (losses.mask_padded_vocab)."""

  def score(params, tokens_BL1, mask_BL):
    logits_BLV = gpt.apply({'params': params}, tokens_BL1[:, :-1])
    return (losses.token_nll(logits_BLV, tokens_BL1[:, 1:], num_tokens) * mask_BL).sum(-1)

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


# --- Natural Instructions tasks --------------------------------------------------------------


def load_task(spec: str) -> instructions.Task:
  """The task of --task: a Natural Instructions .json file, an instruction .jsonl file (its lines
  are one task, instructions.read_tasks), or the name of a shipped task."""
  if spec.endswith('.jsonl'):
    return instructions.read_tasks(spec)[0]
  path = (spec if spec.endswith('.json') or os.path.sep in spec else
          os.path.join(build.TASKS_DIR, f'{spec}.json'))
  if not os.path.isfile(path):
    shipped = sorted(f[:-5] for f in os.listdir(build.TASKS_DIR) if f.endswith('.json'))
    raise UserError(f'--task={spec}: no such file {path!r}; pass one task file (.json, or '
                    f'instruction .jsonl) or one of {", ".join(shipped)}')
  return instructions.read_task(path)


# NI's own checks (src/test_all.py) treat fewer than 15 distinct outputs as a label set, whose
# balance they check; a label is shared when several instances accept it.
MAX_LABELS, MIN_LABEL_INSTANCES = 14, 3


def auto_scoring(task: instructions.Task) -> str:
  """'choice' (multiple choice: acc, acc_norm) or 'generation' (a greedy answer: exact match and
  ROUGE-L), decided from the task alone: a task with "Options" is multiple choice, and so is one
  whose instances share a small label set: 2 to MAX_LABELS distinct acceptable outputs over all
  its instances, each acceptable for at least MIN_LABEL_INSTANCES of them (yes/no, entailment,
  sentiment, ...). Any other task's answers are free text, scored by generation."""
  if task.options:
    return 'choice'
  instances_per_label = collections.Counter(o for i in task.instances for o in set(i.outputs))
  shared = (2 <= len(instances_per_label) <= MAX_LABELS and
            min(instances_per_label.values()) >= MIN_LABEL_INSTANCES)
  return 'choice' if shared else 'generation'


# --- multiple choice: the likeliest option ---------------------------------------------------


def task_options(task: instructions.Task) -> list[str]:
  """The answer options: the task's "Options", else every output of its instances, sorted;
  UserError if that gives fewer than two."""
  options = list(task.options) or sorted({o for i in task.instances for o in i.outputs})
  if len(options) < 2:
    raise UserError(f'task {task.name}: its instances give fewer than two answer options; add '
                    '"Options" to the task or pass --scoring=generation')
  return options


def option_logliks(scorer: Scorer, tokenizer, prompts: Sequence[str],
                   options: Sequence[str]) -> tuple[np.ndarray, int]:
  """(prompts, options) log-likelihoods of ' ' + option after each prompt (choice_logliks with
  the same options for every prompt), and the number of prompts cut."""
  logliks, cut = choice_logliks(scorer, tokenizer, prompts, [options] * len(prompts))
  return np.array(logliks).reshape(len(prompts), len(options)), cut


def choice_logliks(scorer: Scorer, tokenizer, prompts: Sequence[str],
                   choices: Sequence[Sequence[str]]) -> tuple[list[np.ndarray], int]:
  """For each prompt, the log-likelihoods of ' ' + each of its own choices after it (an array per
  prompt), the prompt starting as a new document (after EOS) and losing tokens on the left if
  prompt and choice overflow the context; and the number of prompts that lost tokens so."""
  texts = list(dict.fromkeys(f' {c}' for options in choices for c in options))
  ids = dict(zip(texts, tokenizer.encode_batch(texts)))
  rows, cut = [], 0
  for context, options in zip(tokenizer.encode_batch(prompts), choices):
    document = [tokenizer.eos_id, *context]
    continuations = [ids[f' {o}'] for o in options]
    cut += any(len(document) + len(c) > scorer.seq_len + 1 for c in continuations)
    for option, continuation in zip(options, continuations):
      keep = scorer.seq_len + 1 - len(continuation)
      if keep < 1:
        raise UserError(f'option {option!r} is {len(continuation)} tokens, longer than the '
                        f'{scorer.seq_len}-token context; shorten it or raise --seq_len')
      rows.append((document[-keep:] + continuation, len(continuation)))
  logliks = -scorer.score_rows(rows)
  ends = np.cumsum([len(options) for options in choices], dtype=int)
  return [logliks[end - len(options):end] for options, end in zip(choices, ends)], cut


def accuracy(loglik_NO: np.ndarray, correct_NO: np.ndarray, option_bytes_O: np.ndarray) -> dict:
  """acc: the highest log-likelihood is a correct option; acc_norm: the highest per byte."""
  rows = np.arange(len(loglik_NO))
  pick = lambda scores_NO: correct_NO[rows, np.argmax(scores_NO, axis=1)].mean()
  return {'acc': float(pick(loglik_NO)), 'acc_norm': float(pick(loglik_NO / option_bytes_O))}


def choice_metrics(scorer: Scorer, tokenizer, task: instructions.Task,
                   shots: Sequence[int], max_instances: int = 0) -> dict:
  """Accuracies for each number of shots, the number of instances and the chance rate. Each
  answer option is scored as the log-likelihood of ' ' + option after the k-shot prompt, as in
  GPT-3 and lm-eval-harness (acc_norm: normalised by the option's bytes)."""
  instances = task.instances[:max_instances or None]
  options = task_options(task)
  correct_NO = np.array([[o in i.outputs for o in options] for i in instances])
  if not correct_NO.any(axis=1).all():
    bad = instances[int(np.argmin(correct_NO.any(axis=1)))]
    raise UserError(f'instance {bad.id} has none of the options {options} among its outputs; '
                    'fix the task or pass --scoring=generation')
  option_bytes_O = np.array([len(f' {o}'.encode()) for o in options])
  results = {}
  for k in shots:
    prompts = [instructions.format_prompt(task, k, i.input) for i in instances]
    loglik_NO, cut = option_logliks(scorer, tokenizer, prompts, options)
    results[str(k)] = {**accuracy(loglik_NO, correct_NO, option_bytes_O), 'cut_prompts': cut}
  return {'instances': len(instances), 'options': options, 'chance': 1 / len(options),
          'shots': results}


# --- generation: a greedy answer, exact match and ROUGE-L -------------------------------------

# new tokens beyond the longest reference, so an answer a little longer than all of them is still
# read to its end (and scored as the longer answer it is)
GENERATION_MARGIN = 16


def normalize_answer(text: str) -> str:
  """Lower case, without ASCII punctuation, words separated by single spaces: the answer
  normalisation of NI's evaluation (eval/automatic/evaluation.py: SQuAD's, keeping articles)."""
  return ' '.join(''.join(c for c in text.lower() if c not in string.punctuation).split())


@functools.cache
def _rouge_l_scorer():
  from rouge_score import rouge_scorer  # imported here: its nltk takes a second only this needs
  return rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
  """ROUGE-L F-measure (Lin 2004), from the longest common subsequence of the two texts' words,
  as NI's default (English) track computes it: Google's rouge-score, whose tokenizer keeps runs of
  [a-z0-9] after lower-casing (other characters are dropped, so non-Latin text scores 0), with
  the Porter stemmer. In [0, 1]."""
  return _rouge_l_scorer().score(target=reference, prediction=prediction)['rougeL'].fmeasure


def answer_scores(answers: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
  """exact_match (after normalize_answer) and rouge_l: the mean over instances of the best score
  over each one's acceptable answers, as NI's compute_metrics, in fractions of 1 (not percent)."""
  exact = [max(normalize_answer(a) == normalize_answer(r) for r in refs)
           for a, refs in zip(answers, references)]
  rouge = [max(rouge_l(a, r) for r in refs) for a, refs in zip(answers, references)]
  return {'exact_match': float(np.mean(exact)), 'rouge_l': float(np.mean(rouge))}


def generate_answers(run: runs.Run, prompts: Sequence[str], *, max_new_tokens: int, seq_len: int,
                     batch_size: int) -> tuple[list[str], int]:
  """The greedy answer to each prompt (sample.generate, batch_size prompts at a time): its
  continuation up to the first newline or EOS, without surrounding spaces; and the number of
  prompts cut. A prompt starts as a document does, after EOS, and loses tokens on the left so
  that it and max_new_tokens fit in seq_len tokens."""
  tokenizer = run.tokenizer
  keep = seq_len - max_new_tokens
  if keep < 1:
    raise UserError(f'{max_new_tokens} new tokens leave no room for a prompt in {seq_len} tokens; '
                    'raise --seq_len')
  documents = [[tokenizer.eos_id, *ids] for ids in tokenizer.encode_batch(prompts)]
  rows = [document[-keep:] for document in documents]
  answers = []
  for start in range(0, len(rows), batch_size):
    continuations = sample.generate(run.gpt, run.params, rows[start:start + batch_size],
                                    max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                                    num_tokens=tokenizer.vocab_size)
    answers += [tokenizer.decode(ids).split('\n', 1)[0].strip() for ids in continuations]
  return answers, sum(len(document) > keep for document in documents)


def generation_metrics(run: runs.Run, task: instructions.Task, shots: Sequence[int], *,
                       seq_len: int, batch_size: int, max_instances: int = 0) -> dict:
  """exact_match and rouge_l (answer_scores) of the greedy answers after each k-shot prompt, as
  Super-NaturalInstructions scores its tasks; the number of instances and max_new_tokens: the
  longest acceptable answer's tokens + GENERATION_MARGIN, at most seq_len - 1."""
  instances = task.instances[:max_instances or None]
  references = [i.outputs for i in instances]
  longest = max(map(len, run.tokenizer.encode_batch([f' {r}' for refs in references
                                                      for r in refs])))
  if longest >= seq_len:
    raise UserError(f'an answer of task {task.name} is {longest} tokens, more than the '
                    f'{seq_len}-token context leaves for a prompt; raise --seq_len')
  max_new_tokens = min(longest + GENERATION_MARGIN, seq_len - 1)
  results = {}
  for k in shots:
    prompts = [instructions.format_prompt(task, k, i.input) for i in instances]
    answers, cut = generate_answers(run, prompts, max_new_tokens=max_new_tokens, seq_len=seq_len,
                                    batch_size=batch_size)
    results[str(k)] = {**answer_scores(answers, references), 'cut_prompts': cut}
  return {'instances': len(instances), 'max_new_tokens': max_new_tokens, 'shots': results}


# --- command line ----------------------------------------------------------------------------


def _shots(value: str) -> list[int]:
  try:
    return [int(s) for s in value.split(',')]
  except ValueError:
    raise argparse.ArgumentTypeError(f'--shots={value} is not a comma-separated list of '
                                     'numbers, e.g. 0,1,5') from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = cli.ArgumentParser(prog='python -m gpt_jax.evaluate',
                              description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', help='a finished run (its config.json, tokenizer, checkpoints)')
  parser.add_argument('--data', help='a .txt or .jsonl[.gz] file to score instead of the '
                      "run's validation split")
  parser.add_argument('--text_field', default='text', help='the text field of .jsonl records')
  parser.add_argument('--task', help='a Natural Instructions task .json, or a shipped task: '
                      'shakespeare_play; for a run of objective classify, a labelled .jsonl '
                      'task file (gpt_jax.task_inputs)')
  parser.add_argument('--shots', type=_shots, help='e.g. 0,1,5; default: those of 0, 1 and 5 '
                      'the task has enough positive examples for')
  parser.add_argument('--scoring', choices=('auto', 'choice', 'generation'), default='auto',
                      help='multiple choice or greedy generation; auto: by the task '
                      '(evaluate.auto_scoring)')
  parser.add_argument('--max_instances', type=int, default=0, help='0 = all')
  parser.add_argument('--seq_len', type=int, default=0,
                      help="0 = the run's (with --task: the model's context), at most the context")
  parser.add_argument('--batch_size', type=int, default=0, help="0 = the run's eval batch")
  parser.add_argument('--max_batches', type=int, default=0, help='0 = all')
  parser.add_argument('--json', help='also write the results to this file')
  parser.add_argument('--write_play_task', nargs='?', const=build.PLAY_TASK, metavar='PATH',
                      help='rebuild the shakespeare_play task (default: the shipped file)')
  args = parser.parse_args(argv)
  for key in ('max_instances', 'seq_len', 'batch_size', 'max_batches'):
    if getattr(args, key) < 0:
      raise UserError(f'--{key}={getattr(args, key)} is negative; pass 0 (the default) or more')
  if args.shots and min(args.shots) < 0:
    raise UserError(f'--shots={",".join(map(str, args.shots))} has a negative number of shots')
  if not args.workdir and not args.write_play_task:
    raise UserError('missing --workdir=DIR, the run to evaluate')
  return args


def run(args: argparse.Namespace, log=print) -> dict:
  """Evaluates as the flags say; returns the results written to --json."""
  if args.write_play_task:
    files.write_json(args.write_play_task, build.build_play_task())
    log(f'wrote {args.write_play_task}')
    return {}
  # the inputs are checked before the run is loaded, so a mistake fails fast
  if args.task and args.data:
    raise UserError('--data and --task are separate evaluations; pass one of them')
  if args.task and runs.read_config(args.workdir).get('objective') == 'classify':
    # a fine-tuned classifier answers with its task head, not a prompt
    from gpt_jax.objectives import classify  # imported here: it imports this module
    results = classify.evaluate_head(args.workdir, args.task, max_instances=args.max_instances,
                                     batch_size=args.batch_size, log=log)
    if args.json:
      files.write_json(args.json, results)
    return results
  task = load_task(args.task) if args.task else None
  if task:
    num_examples = len(task.positive_examples)
    shots = args.shots or [k for k in DEFAULT_SHOTS if k <= num_examples]
    if max(shots) > num_examples:
      raise UserError(f'--shots={max(shots)} needs as many positive examples, but task '
                      f'{task.name} has {num_examples}; pass fewer shots')
    scoring = auto_scoring(task) if args.scoring == 'auto' else args.scoring
    if scoring == 'choice':
      task_options(task)  # a UserError if it has fewer than two
  texts = read_texts(args.data, args.text_field) if args.data else None

  mesh = sharding.data_parallel_mesh()
  run = runs.load(args.workdir, mesh=mesh)
  cli.use_compilation_cache()
  config = run.config
  # A task's prompts (definition, examples) get the model's whole context; the language-model
  # metrics default to the windows the run was trained on.
  context = sample.context_length(config.model)
  seq_len = min(args.seq_len or (context if task else config.seq_len), context)
  if args.seq_len > seq_len:
    log(f'--seq_len={args.seq_len} is beyond the model\'s {seq_len}-token context; using {seq_len}')
  batch_size = args.batch_size or config.batch_size // config.grad_accum
  results = {'workdir': args.workdir, 'step': run.step, 'seq_len': seq_len}
  if task:
    if scoring == 'choice':
      metrics = choice_metrics(Scorer(run, mesh, batch_size, seq_len), run.tokenizer, task, shots,
                               args.max_instances)
    else:
      metrics = generation_metrics(run, task, shots, seq_len=seq_len, batch_size=batch_size,
                                   max_instances=args.max_instances)
    results['task'] = {'name': task.name, 'scoring': scoring, **metrics}
    log(task_table(results['task'], args.workdir, run.step))
  else:
    scorer = Scorer(run, mesh, batch_size, seq_len)
    tokens = file_tokens(texts, run.tokenizer) if args.data else val_tokens(run)
    results['lm'] = {'data': args.data or 'val', **lm_metrics(scorer, tokens, run.tokenizer,
                                                              args.max_batches)}
    m = results['lm']
    log(f'{args.workdir} (step {run.step}) on {m["data"]}: loss {m["loss"]:.4f} nats/token, '
        f'ppl {m["ppl"]:.6g}, bpb {m["bpb"]:.4f} ({m["tokens"]:,} tokens, {m["bytes"]:,} bytes, '
        f'windows of {seq_len})')
  if args.json:
    files.write_json(args.json, results)
  return results


def task_table(metrics: dict, workdir: str, step: int) -> str:
  """The --task results as a heading line and a markdown table, a row per number of shots."""
  if metrics['scoring'] == 'choice':
    how = f'{len(metrics["options"])} options (chance {metrics["chance"]:.1%})'
    columns = ['acc', 'acc_norm']
  else:
    how = f'greedy answers of up to {metrics["max_new_tokens"]} tokens'
    columns = ['exact_match', 'rouge_l']
  lines = [f'task {metrics["name"]}: {metrics["instances"]} instances, {how}; {workdir} at step '
           f'{step}', '| shots | ' + ' | '.join(columns) + ' |', '|---:' * (len(columns) + 1) + '|']
  lines += ['| ' + ' | '.join([k] + [f'{m[c]:.1%}' for c in columns]) + ' |'
            for k, m in metrics['shots'].items()]
  lines += [f'{k} shots: {m["cut_prompts"]} of {metrics["instances"]} prompts lost tokens on the '
            'left to fit the context (--seq_len)' for k, m in metrics['shots'].items()
            if m['cut_prompts']]
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  cli.run(lambda: run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == '__main__':
  main()
