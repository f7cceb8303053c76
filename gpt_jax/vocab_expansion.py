"""Vocabulary expansion for continued pretraining on a new domain (Swallow, Fujii et al. 2024):
a run's tokenizer extended with the new domain's pieces (tokenizer_extension) and its model
given rows for them, so that `--config.init_from` of the extended run continues pretraining with
any objective (with LoRA, the new rows train in full: lora.trainable_tokens_from, read from the
run's RECORD).

New rows of the token embedding (and of an untied head) start as the mean of the base's rows for
the base pieces the new piece is made of (tokenizer_extension.Extension.parts; the usual choice:
Hewitt 2021; Swallow), or, with init='random', as draws of the model's init (normal, std
init_std). Every old row is copied bit for bit, so the extended model at step 0 gives the
base's logits on text made only of old pieces. The model vocabulary is the tokenizer's rounded
up to a multiple of VOCAB_MULTIPLE; the padding ids are never tokens (losses.mask_padded_vocab)
and their rows are 0.

Shapes: V the old model vocabulary, W the new one, D n_embd.
"""

from collections.abc import Callable, Sequence

import json
import os

import jax
import numpy as np

from gpt_jax import clean, corpus, quant, runs, tokenizer_extension
from gpt_jax.errors import UserError

RECORD = 'vocab_expansion.json'  # in an extended run: its base and its first new id
VOCAB_MULTIPLE = 64  # rows a model vocabulary is padded to: shards evenly, multiplies fast
INITS = ('mean', 'random')


def model_vocab_size(tokenizer_size: int, requested: int = 0) -> int:
  """The model vocabulary for a tokenizer of `tokenizer_size` ids: `requested`, else the size
  rounded up to VOCAB_MULTIPLE; UserError if `requested` cannot hold the tokenizer."""
  if requested and requested < tokenizer_size:
    raise UserError(f'--vocab_size={requested} would overflow: the extended tokenizer has '
                    f'{tokenizer_size} ids; pass at least {tokenizer_size} (or 0: rounded up to a '
                    f'multiple of {VOCAB_MULTIPLE})')
  return requested or -(-tokenizer_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def grow_rows(table: np.ndarray, first: int, parts: list[list[int]], rows: int, init: str,
              init_std: float, rng: np.random.Generator) -> np.ndarray:
  """`table`'s first `first` rows (the old tokens'; (V, D) with V >= first) in a (rows, D) table
  whose row first + i, of new piece i, is the mean of the table's rows `parts[i]` (init 'mean')
  or a normal draw of std init_std ('random'); the padding rows after them 0."""
  grown = np.zeros((rows, table.shape[1]), table.dtype)
  grown[:first] = table[:first]
  for i, ids in enumerate(parts):
    grown[first + i] = (table[ids].astype(np.float64).mean(0) if init == 'mean' else
                        rng.normal(0.0, init_std, table.shape[1]))
  return grown


def expand_params(params: dict, model_config, first: int, parts: list[list[int]],
                  new_vocab: int, init: str, seed: int = 0) -> dict:
  """The parameters with W = new_vocab rows of the token embedding (and columns of an untied
  head): the old tokens' `first` rows unchanged, new piece i at id first + i (grow_rows); as
  numpy arrays. UserError for a quantized model (extend the float run) or an init not in INITS."""
  if init not in INITS:
    raise UserError(f'--init={init!r}: pass one of {", ".join(INITS)}')
  if quant.spec(model_config):
    raise UserError('the base run holds quantized weights; extend the float run it was quantized '
                    'from, then quantize the extended one')
  params = jax.tree.map(np.asarray, params)
  rng = np.random.default_rng(seed)
  grow = lambda table: grow_rows(table, first, parts, new_vocab, init, model_config.init_std, rng)
  grown = {**params, 'wte': {**params['wte'], 'embedding': grow(params['wte']['embedding'])}}
  if not model_config.tie_embeddings:
    grown['lm_head'] = {**params['lm_head'], 'kernel': grow(params['lm_head']['kernel'].T).T}
  return grown


def first_new_id(run_dir: str) -> int:
  """The first new token id of a run made by expand_run (its RECORD), 0 for any other run."""
  path = os.path.join(run_dir, RECORD)
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return int(json.load(f)['first_new_id'])


def domain_texts(data_cfg, log: Callable[[str], None] = print) -> list[str]:
  """The texts of data_cfg.corpus cleaned by data_cfg's stages as `prepare` cleans a corpus
  (quality, hosts, de-duplication, PII: gpt_jax.clean), as Swallow cleaned its corpus before
  extending the vocabulary; one line of what was removed to `log`."""
  docs, loaded = corpus.load_documents(data_cfg.corpus, data_cfg.text_field, data_cfg.bad_lines,
                                       data_cfg.url_field)
  settings = clean.Settings.from_config(data_cfg)
  kept, report = clean.clean_documents(docs, settings, loaded)
  log(f'new domain\'s corpus: {report.summary(settings)}')
  return [doc.text for doc in kept]


def tokens_per_byte(tokenizer, texts: Sequence[str]) -> float:
  """Tokens of `texts` over their UTF-8 bytes."""
  return sum(map(len, tokenizer.encode_batch(texts))) / max(sum(len(t.encode()) for t in texts), 1)


def expand_run(base_dir: str, texts: Sequence[str], pieces: int, out: str, *, init: str = 'mean',
               vocab_size: int = 0, seed: int = 0, log: Callable[[str], None] = print) -> str:
  """Writes `out`: the run in base_dir with its tokenizer extended by up to `pieces` pieces of
  `texts` (tokenizer_extension.extend) and rows for them (expand_params), model.vocab_size
  model_vocab_size(…, vocab_size), at step 0, and its RECORD. Returns out's absolute path."""
  base = runs.load(base_dir, what='--base', log=log)
  extension = tokenizer_extension.extend(base.tokenizer, texts, pieces)
  extended, new = extension.tokenizer, extension.pieces
  vocab = model_vocab_size(extended.vocab_size, vocab_size)
  params = expand_params(base.params, base.config.model, base.tokenizer.vocab_size,
                         extension.parts, vocab, init, seed)
  config = base.config
  config.model.vocab_size = vocab
  record = {'base': os.path.abspath(base_dir), 'base_step': base.step,
            'first_new_id': base.tokenizer.vocab_size, 'pieces': len(new), 'init': init}
  out = runs.write_params_run(out, config, extended, params, 0, '--out', records={RECORD: record})
  log(f'{out}: {len(new)} new pieces (ids {base.tokenizer.vocab_size}..'
      f'{extended.vocab_size - 1}, rows by {init}), model.vocab_size {vocab}; the corpus takes '
      f'{tokens_per_byte(base.tokenizer, texts):.3f} tokens per byte with the base tokenizer, '
      f'{tokens_per_byte(extended, texts):.3f} extended')
  return out
