"""Scoring a run's model: log-likelihoods, language-model metrics and prompted Natural
Instructions tasks; python -m gpt_jax.evaluate is the command that reports them.

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

import collections
import functools
import math
import os
import string
from collections.abc import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import corpus, data, instructions, losses, runs, sample, sharding
from gpt_jax.errors import UserError


# --- scoring ---------------------------------------------------------------------------------


def score_fn(gpt, num_tokens: int | None = None):
  """(params, tokens_BL1, mask_BL) -> (nll_B, greedy_B): the summed NLL (nats, float32) of each
  row's unmasked targets and whether every one of them is the model's argmax (lm-eval's
  is_greedy), under the model's distribution over the first num_tokens ids (None: all of them):
  the ids a padded vocabulary adds beyond the tokenizer's are not tokens
  (losses.mask_padded_vocab)."""

  def score(params, tokens_BL1, mask_BL):
    logits_BLV = gpt.apply({'params': params}, tokens_BL1[:, :-1])
    targets_BL = tokens_BL1[:, 1:]
    nll_B = (losses.token_nll(logits_BLV, targets_BL, num_tokens) * mask_BL).sum(-1)
    argmax_BL = jnp.argmax(losses.mask_padded_vocab(logits_BLV, num_tokens), axis=-1)
    greedy_B = jnp.all((argmax_BL == targets_BL) | (mask_BL == 0), axis=-1)
    return nll_B, greedy_B

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

  def __call__(self, tokens_BL1: np.ndarray, mask_BL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tokens_BL1, mask_BL = jax.device_put((tokens_BL1, mask_BL), self.sharding)
    nll_B, greedy_B = self._score(self.params, tokens_BL1, mask_BL)
    return np.asarray(nll_B, np.float64), np.asarray(greedy_B)

  def score(self, rows: Iterable[tuple[Sequence[int], int]]) -> tuple[np.ndarray, np.ndarray]:
    """Of each row (tokens, n), n <= len(tokens) - 1 <= seq_len: the summed NLL of its last n
    targets and whether each of them is the model's argmax."""
    rows, nll, greedy = list(rows), [np.zeros(0)], [np.zeros(0, bool)]
    for start in range(0, len(rows), self.batch_size):
      tokens_BL1 = np.zeros((self.batch_size, self.seq_len + 1), np.int32)
      mask_BL = np.zeros((self.batch_size, self.seq_len), np.float32)
      chunk = rows[start:start + self.batch_size]
      for r, (tokens, n) in enumerate(chunk):
        tokens_BL1[r, :len(tokens)] = tokens  # padding after the row: causal, so it changes nothing
        mask_BL[r, len(tokens) - 1 - n:len(tokens) - 1] = 1
      nll_B, greedy_B = self(tokens_BL1, mask_BL)
      nll.append(nll_B[:len(chunk)])
      greedy.append(greedy_B[:len(chunk)])
    return np.concatenate(nll), np.concatenate(greedy)

  def score_rows(self, rows: Iterable[tuple[Sequence[int], int]]) -> np.ndarray:
    """Summed NLL of each row (tokens, n): the last n of its len(tokens) - 1 targets."""
    return self.score(rows)[0]


def windows(tokens: Sequence[int], seq_len: int) -> list[np.ndarray]:
  """Rows of at most seq_len + 1 tokens in which every token after the first is a target once:
  window i starts at token i·seq_len (data.Windows) and the last one may be short."""
  return [np.asarray(tokens[i * seq_len:(i + 1) * seq_len + 1], np.int32)
          for i in range(-(-(len(tokens) - 1) // seq_len))]


def answer_logprobs(scorer: Scorer, rows: Sequence[Sequence[int]],
                    answers: Sequence[Sequence[int]], eos_id: int, max_new_tokens: int
                    ) -> np.ndarray:
  """(R,) float64: log π(answer | prompt row) in nats under the scorer's model, summed over the
  answer's tokens and its EOS when it ended with one (an answer shorter than max_new_tokens)."""
  scored = []
  for row, answer in zip(rows, answers):
    continuation = [*answer, eos_id] if len(answer) < max_new_tokens else list(answer)
    scored.append(([*row, *continuation], len(continuation)))
  return -scorer.score_rows(scored)


# --- language-model metrics ------------------------------------------------------------------


def lm_metrics(scorer: Scorer, tokens: np.ndarray, tokenizer, max_batches: int = 0) -> dict:
  """Loss, perplexity and bits per byte of a token stream in windows of scorer.seq_len: window i
  starts at token i·seq_len (data.Windows) and the last one may be short, so every token after
  the first is scored once; max_batches > 0 scores the first so many batches only."""
  rows = windows(tokens, scorer.seq_len)
  if max_batches:
    rows = rows[:max_batches * scorer.batch_size]
  nll = scorer.score_rows((w, len(w) - 1) for w in rows).sum()
  targets = sum(len(w) - 1 for w in rows)
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


def val_texts(run: runs.Run) -> list[str]:
  """The documents of the run's validation split as text: val_tokens cut at each EOS."""
  tokens, eos = val_tokens(run), run.tokenizer.eos_id
  documents = np.split(tokens, np.flatnonzero(tokens == eos))
  return [text for text in (run.tokenizer.decode(d[d != eos]) for d in documents) if text]


# --- Natural Instructions tasks --------------------------------------------------------------


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


def answer_rows(tokenizer, prompts: Sequence[str], *, max_new_tokens: int, seq_len: int
                ) -> tuple[list[list[int]], int]:
  """Each prompt as a row to continue: it starts as a document does, after EOS, and loses tokens
  on the left so that it and max_new_tokens fit in seq_len tokens; and the number of prompts cut."""
  keep = seq_len - max_new_tokens
  if keep < 1:
    raise UserError(f'{max_new_tokens} new tokens leave no room for a prompt in {seq_len} tokens; '
                    'raise --seq_len')
  documents = [[tokenizer.eos_id, *ids] for ids in tokenizer.encode_batch(prompts)]
  return [document[-keep:] for document in documents], sum(len(d) > keep for d in documents)


def answer_text(tokenizer, ids: Sequence[int]) -> str:
  """A generated answer: the continuation's text up to its first newline, without surrounding
  spaces."""
  return tokenizer.decode(list(ids)).split('\n', 1)[0].strip()


# (run, prompts, max_new_tokens, seq_len, batch_size) -> (an answer per prompt, prompts cut)
Answerer = Callable[[runs.Run, Sequence[str], int, int, int], tuple[list[str], int]]


def generate_answers(run: runs.Run, prompts: Sequence[str], max_new_tokens: int, seq_len: int,
                     batch_size: int) -> tuple[list[str], int]:
  """The greedy answer to each prompt (sample.generate, batch_size prompts at a time; answer_rows,
  answer_text) and the number of prompts cut."""
  tokenizer = run.tokenizer
  rows, cut = answer_rows(tokenizer, prompts, max_new_tokens=max_new_tokens, seq_len=seq_len)
  answers = []
  for start in range(0, len(rows), batch_size):
    continuations = sample.generate(run.gpt, run.params, rows[start:start + batch_size],
                                    max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                                    num_tokens=tokenizer.vocab_size)
    answers += [answer_text(tokenizer, ids) for ids in continuations]
  return answers, cut


def generation_metrics(run: runs.Run, task: instructions.Task, shots: Sequence[int], *,
                       seq_len: int, batch_size: int, max_instances: int = 0,
                       answerer: Answerer = generate_answers) -> dict:
  """exact_match and rouge_l (answer_scores) of the answers after each k-shot prompt (greedy ones
  by default; `answerer` gives others: a vote over samples), as Super-NaturalInstructions scores
  its tasks; the number of instances and max_new_tokens: the longest acceptable answer's tokens +
  GENERATION_MARGIN, at most seq_len - 1."""
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
    answers, cut = answerer(run, prompts, max_new_tokens, seq_len, batch_size)
    results[str(k)] = {**answer_scores(answers, references), 'cut_prompts': cut}
  return {'instances': len(instances), 'max_new_tokens': max_new_tokens, 'shots': results}
