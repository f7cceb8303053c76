"""EleutherAI's lm-evaluation-harness over any gpt_jax run: `GptJaxLM`, an `lm_eval` model
registered as 'gpt_jax' (needs the `eval` extra: pip install -e '.[eval]').

    import gpt_jax.harness, lm_eval
    lm_eval.simple_evaluate(model='gpt_jax', model_args='workdir=runs/shakespeare',
                            tasks=['lambada_openai'])

or `python -m gpt_jax.harness --model_args workdir=DIR --tasks ...` (lm-eval's own command line
with this model registered). A run is whatever `runs.load` reads: trained, imported from
Hugging Face, LoRA (merged), quantized.

The three request types, as lm-eval defines them (docs/model_guide.md):
- loglikelihood(context, continuation): the summed log-prob of the continuation's tokens and
  whether each is the argmax. The context's trailing spaces go to the continuation (TemplateLM's
  _encode_pair) and every context starts after EOS, as documents do in training and in
  gpt_jax.evaluate; a row longer than the context loses tokens on the left.
- loglikelihood_rolling(text): every token of the text scored once, in disjoint windows of
  seq_len targets after EOS (scoring.windows, as gpt_jax.evaluate scores a file).
- generate_until(context, gen_kwargs): the KV-cache sampler (gpt_jax.sample), cut at the first of
  the `until` strings, at most `max_gen_toks` new tokens; greedy unless do_sample.

Rows are sorted by length and scored in fixed shapes: lengths round up to a power of two (at least
MIN_BUCKET, at most seq_len) and every batch is full (padded with empty rows), so a bucket
compiles once however many requests there are. With several processes (jax.distributed) each
lm-eval rank holds its own requests; every process gathers all of them and runs the same batches
over the whole mesh (JAX programs are SPMD), then keeps its own results.
"""

import collections
import pickle
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from gpt_jax import cli, runs, sample, scoring, sharding
from gpt_jax.errors import UserError

MIN_BUCKET = 16  # the shortest row length compiled: shorter buckets would only add compiles
GEN_KWARGS = ('until', 'max_gen_toks', 'do_sample', 'temperature', 'top_k', 'top_p')


def bucket(length: int, longest: int) -> int:
  """The compiled length for a row of `length` tokens: the next power of two, at least
  MIN_BUCKET, at most `longest`."""
  return min(longest, max(MIN_BUCKET, 1 << max(0, length - 1).bit_length()))


def _int_arg(name: str, value) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise UserError(f'{name}={value!r} is not a whole number; pass e.g. {name}=8') from None


@register_model('gpt_jax')
class GptJaxLM(TemplateLM):
  """A gpt_jax run as an lm-eval model.

  Args (lm-eval's --model_args, or keywords): workdir (the run directory), batch_size (rows per
  compiled call; 'auto' or absent: the run's evaluation batch; a multiple of the data-parallel
  devices), seq_len (tokens a scored row may hold; 0: the model's context), max_gen_toks
  (generate_until's default: 256), dtype (computing dtype; default the run's), seed (sampling).
  lm-eval's `device` and `max_batch_size` are accepted and ignored: JAX places the run on all
  devices. Several processes: coordinator_address (host:port), num_processes and process_id,
  or distributed=True where the cluster provides them (as `python -m gpt_jax.train`'s flags)."""

  def __init__(self, workdir: str, batch_size: int | str | None = None, seq_len: int | str = 0,
               max_gen_toks: int | str = 256, dtype: str | None = None, seed: int | str = 0,
               coordinator_address: str = '', num_processes: int | str = 1,
               process_id: int | str = -1, distributed: bool = False,
               device: str | None = None, max_batch_size: int | None = None):
    super().__init__()
    del device, max_batch_size
    cli.join_processes(coordinator_address, _int_arg('num_processes', num_processes),
                       _int_arg('process_id', process_id), str(distributed).lower() == 'true')
    self.workdir, self.mesh = workdir, sharding.data_parallel_mesh()
    self.run = runs.load(workdir, mesh=self.mesh, dtype=dtype)
    config = self.run.config
    self.tokenizer_ = self.run.tokenizer
    context = sample.context_length(config.model)
    self.seq_len = min(_int_arg('seq_len', seq_len) or context, context)
    if batch_size is None or str(batch_size).startswith('auto'):
      batch_size = config.batch_size // config.grad_accum
    self.batch_size_ = _int_arg('batch_size', batch_size)
    self.max_gen_toks = _int_arg('max_gen_toks', max_gen_toks)
    self.seed = _int_arg('seed', seed)
    if self.batch_size_ < 1 or self.max_gen_toks < 1:
      raise UserError(f'batch_size={self.batch_size_} and max_gen_toks={self.max_gen_toks} must '
                      'be >= 1')
    self._rank, self._world_size = jax.process_index(), jax.process_count()
    self._scorers = {}

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
    """lm-eval's constructor from --model_args and its own flags (--batch_size, --device); a
    setting in --model_args wins over the flag's."""
    flags = {k: v for k, v in (additional_config or {}).items() if v is not None}
    return cls(**{**flags, **arg_dict})

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
    return cls.create_from_arg_obj(lm_eval_utils.simple_parse_args_string(arg_string),
                                   additional_config)

  # --- what lm-eval asks of a model ---------------------------------------------------------

  @property
  def eot_token_id(self) -> int:
    return self.tokenizer_.eos_id

  @property
  def max_length(self) -> int:
    return self.seq_len

  @property
  def batch_size(self) -> int:
    return self.batch_size_

  @property
  def tokenizer_name(self) -> str:
    return f'gpt_jax-{self.tokenizer_.sha256[:16]}'

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    del add_special_tokens, kwargs  # a document's start (EOS) is added where a row is built
    return self.tokenizer_.encode(string)

  def tok_decode(self, tokens: Sequence[int], **kwargs) -> str:
    return self.tokenizer_.decode(tokens)

  def get_model_info(self) -> dict:
    return {'workdir': self.workdir, 'step': self.run.step, 'seq_len': self.seq_len}

  # --- several processes ---------------------------------------------------------------------

  def gather_object(self, obj, dst: int = 0):
    """Every process's `obj`, in rank order (on every process, so `dst` is moot)."""
    del dst
    return self._all(obj)

  def all_gather(self, tensor):
    import torch  # lm-eval's evaluator hands over (and reads back) torch tensors here alone
    return torch.tensor(np.stack(self._all(np.asarray(tensor.cpu()))))

  def barrier(self) -> None:
    if self._world_size > 1:
      multihost_utils.sync_global_devices('gpt_jax.harness')

  def _all(self, obj) -> list:
    """[obj of process 0, obj of process 1, ...] on every process."""
    if self._world_size == 1:
      return [obj]
    blob = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = multihost_utils.process_allgather(np.int64(len(blob)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:len(blob)] = blob
    blobs = multihost_utils.process_allgather(padded)
    return [pickle.loads(b[:n].tobytes()) for b, n in zip(blobs, sizes)]

  def _on_all_processes(self, items: list, compute) -> list:
    """compute(items of every process, concatenated) run identically on every process; the
    results of this process's items."""
    everyone = self._all(items)
    results = compute([item for part in everyone for item in part])
    start = sum(len(part) for part in everyone[:self._rank])
    return results[start:start + len(items)]

  # --- scoring -------------------------------------------------------------------------------

  def _scorer(self, length: int) -> scoring.Scorer:
    if length not in self._scorers:
      self._scorers[length] = scoring.Scorer(self.run, self.mesh, self.batch_size_, length)
    return self._scorers[length]

  def _score(self, rows: list[tuple[list[int], int]]) -> tuple[np.ndarray, np.ndarray]:
    """scoring.Scorer.score of rows (tokens, n) of any length up to seq_len + 1, longest first,
    each in the bucket of its length."""
    nll, greedy = np.zeros(len(rows)), np.zeros(len(rows), bool)
    by_bucket = collections.defaultdict(list)
    for i in sorted(range(len(rows)), key=lambda i: -len(rows[i][0])):
      by_bucket[bucket(len(rows[i][0]) - 1, self.seq_len)].append(i)
    for length, which in by_bucket.items():
      nll[which], greedy[which] = self._scorer(length).score([rows[i] for i in which])
    return nll, greedy

  def _document(self, context: list[int]) -> list[int]:
    return context if context[:1] == [self.eot_token_id] else [self.eot_token_id, *context]

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    rows = []
    for (_, continuation), context_ids, continuation_ids in requests:
      if len(continuation_ids) > self.seq_len:
        raise UserError(f'a continuation ({continuation[:40]!r}...) is {len(continuation_ids)} '
                        f'tokens, more than the {self.seq_len}-token context; pass a larger '
                        'seq_len in --model_args (up to the model\'s context)')
      row = (self._document(context_ids) + continuation_ids)[-(self.seq_len + 1):]
      rows.append((row, len(continuation_ids)))

    def compute(rows):
      nll, greedy = self._score(rows)
      return [(-float(x), bool(g)) for x, g in zip(nll, greedy)]

    return self._on_all_processes(rows, compute)

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    texts = [request.args[0] for request in requests]
    owners, rows = [], []
    for r, ids in enumerate(self.tokenizer_.encode_batch(texts)):
      for window in scoring.windows([self.eot_token_id, *ids], self.seq_len):
        owners.append(r)
        rows.append((window.tolist(), len(window) - 1))

    def compute(rows):
      return list(-self._score(rows)[0])

    nll = self._on_all_processes(rows, compute)
    total = np.zeros(len(texts))
    np.add.at(total, np.array(owners, int), np.array(nll, float))
    return [float(t) for t in total]

  # --- generation ----------------------------------------------------------------------------

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    jobs = [(request.args[0], self._settings(request.args[1])) for request in requests]
    return self._on_all_processes(jobs, self._generate)

  def _settings(self, gen_kwargs: dict) -> tuple:
    """(until, max_gen_toks, temperature, top_k, top_p) from lm-eval's gen_kwargs."""
    unknown = set(gen_kwargs) - set(GEN_KWARGS)
    if unknown:
      raise UserError(f'generate_until got {", ".join(sorted(unknown))}, which gpt_jax\'s sampler '
                      f'does not have; a task may set {", ".join(GEN_KWARGS)}')
    until = gen_kwargs.get('until') or []
    until = [until] if isinstance(until, str) else list(until)
    max_gen_toks = _int_arg('max_gen_toks', gen_kwargs.get('max_gen_toks', self.max_gen_toks))
    if not 1 <= max_gen_toks < self.seq_len:
      raise UserError(f'max_gen_toks={max_gen_toks} leaves no room for a prompt in the '
                      f'{self.seq_len}-token context; lower it or raise seq_len')
    temperature = float(gen_kwargs.get('temperature', 0.0)) if gen_kwargs.get('do_sample') else 0.0
    return (tuple(until), max_gen_toks, temperature, int(gen_kwargs.get('top_k', 0)),
            float(gen_kwargs.get('top_p', 1.0)))

  def _generate(self, jobs: list[tuple[str, tuple]]) -> list[str]:
    """Each job's continuation: jobs of one setting together, longest prompt first, in full
    batches of prompts left-padded to their bucket."""
    tokenizer, out = self.tokenizer_, [''] * len(jobs)
    groups = collections.defaultdict(list)
    for j, (_, settings) in enumerate(jobs):
      groups[settings].append(j)
    for settings, members in groups.items():
      until, max_new, temperature, top_k, top_p = settings
      keep = self.seq_len - max_new
      prompts = {j: self._document(tokenizer.encode(jobs[j][0]))[-keep:] for j in members}
      members.sort(key=lambda j: -len(prompts[j]))
      for start in range(0, len(members), self.batch_size_):
        chunk = members[start:start + self.batch_size_]
        rows = [prompts[j] for j in chunk]
        rows += [[self.eot_token_id]] * (self.batch_size_ - len(rows))
        continuations = sample.generate(
            self.run.gpt, self.run.params, rows, max_new_tokens=max_new,
            temperature=temperature, top_k=top_k, top_p=top_p, eos_id=tokenizer.eos_id,
            seed=self.seed + start, num_tokens=tokenizer.vocab_size,
            prompt_length=bucket(len(rows[0]), keep))
        for j, ids in zip(chunk, continuations):
          out[j] = cut_at_stop(tokenizer.decode(ids), until)
    return out


def cut_at_stop(text: str, until: Sequence[str]) -> str:
  """`text` up to the first occurrence of any of the stop strings (empty ones ignored)."""
  cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
  return text[:cut]

