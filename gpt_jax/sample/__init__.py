"""Decoding with a KV cache: greedy, temperature / top-k / top-p sampling, and beam search.

`python -m gpt_jax.sample --workdir=DIR --prompt=TEXT [--prompt=TEXT ...] [options]` is the command
(gpt_jax/sample/__main__.py).

A batch of prompts of different lengths is left-padded (padding gets position -1, which no token
attends to), read once into the cache (prefill), and then continued one token per step inside one
jitted `lax.while_loop` that stops early once every row has produced EOS.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import losses, model
from gpt_jax.errors import UserError


def context_length(model_config) -> int:
  """The most tokens (prompt + continuation) a row may hold: the learned position table's size, or
  for RoPE the same block_size the run was configured with."""
  return model_config.block_size


def pad_prompts(prompts: Sequence[Sequence[int]], max_new_tokens: int, context: int,
                prompt_length: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded tokens and positions (B, P), P = prompt_length, or the longest prompt where that
  is 0 or shorter (a fixed P keeps one compiled shape for prompts of many lengths); padding has
  position -1."""
  if not prompts:
    raise UserError('no prompts given; pass at least one prompt')
  for prompt in prompts:
    if not len(prompt):
      raise UserError('a prompt is empty; give at least one token (e.g. text to continue)')
    if len(prompt) >= context:
      raise UserError(f'a prompt is {len(prompt)} tokens, longer than the model\'s context of '
                      f'{context} less one to generate; shorten the prompt')
  P = max(prompt_length, *(len(p) for p in prompts))
  if P + max_new_tokens > context:
    raise UserError(f'{P} prompt tokens + {max_new_tokens} new tokens exceed the model\'s context '
                    f'of {context}; lower the number of new tokens to {context - P} or less')
  tokens_BP = np.zeros((len(prompts), P), np.int32)
  positions_BP = np.full((len(prompts), P), -1, np.int32)
  for row, prompt in enumerate(prompts):
    tokens_BP[row, P - len(prompt):] = prompt
    positions_BP[row, P - len(prompt):] = np.arange(len(prompt))
  return tokens_BP, positions_BP


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
  if not temperature >= 0:  # also NaN
    raise UserError(f'temperature={temperature} must be >= 0 (0 = greedy)')
  if top_k < 0:
    raise UserError(f'top_k={top_k} must be >= 0 (0 = off)')
  if not 0 < top_p <= 1:
    raise UserError(f'top_p={top_p} must be in (0, 1] (1 = off)')


# top-p keeps the smallest prefix whose float32 cumulative mass reaches top_p·(1 − TOP_P_RTOL).
# softmax and cumsum round each term by an ulp or so, so a prefix whose exact mass is top_p can
# sum to a few ulps below it (softmax of log([.5, .2, .1, .1, .1]) sums its first three to
# 0.79999995); 1e-5 is ~80 float32 ulps, room for the rounding of prefixes of hundreds of tokens,
# and moves the nucleus by at most 1e-5 of its mass.
TOP_P_RTOL = 1e-5


def _tempered(logits_BV, temperature: float) -> jax.Array:
  """float32 logits / T shifted so that each row's max is exactly 0 (softmax is unchanged).

  As T → 0 the max stays 0 and the others fall to -inf, so sampling tends to greedy without an
  inf − inf or 0·inf. 1/T is taken in Python and capped at the largest float32: a tinier T (even
  one float32 cannot hold, or would flush to 0 as a subnormal) acts as that cap.
  """
  inverse_temperature = min(1.0 / temperature, float(jnp.finfo(jnp.float32).max))
  return (logits_BV - jnp.max(logits_BV, axis=-1, keepdims=True)) * inverse_temperature


def keep_mask(logits_BV, *, top_k: int, top_p: float) -> jax.Array:
  """Which tokens (B, V) bool top-k / top-p sampling may draw from softmax(logits_BV).

  Tokens are ranked by logit, ties by lower id first (as argmax breaks them); top_k > 0 keeps the
  first k, then top_p < 1 the smallest prefix whose mass, renormalised over those k, reaches
  top_p (nucleus sampling, Holtzman et al. 2019; top-k before top-p as in Hugging Face's
  `generate`). Never empty: the likeliest token is always kept.
  """
  order_BV = jnp.argsort(logits_BV, axis=-1, descending=True, stable=True)
  sorted_BV = jnp.take_along_axis(logits_BV, order_BV, axis=-1)
  V = logits_BV.shape[-1]
  rank_V = jnp.arange(V)
  keep_BV = jnp.broadcast_to(rank_V < (top_k or V), logits_BV.shape)
  if top_p < 1:
    mass_BV = jnp.cumsum(jax.nn.softmax(jnp.where(keep_BV, sorted_BV, -jnp.inf)), axis=-1)
    # Mass is nondecreasing, so the ranks short of top_p are a prefix; keep it and the next rank.
    short_B1 = jnp.sum(mass_BV < top_p * (1 - TOP_P_RTOL), axis=-1, keepdims=True)
    keep_BV = keep_BV & (rank_V <= short_B1)
  return jnp.put_along_axis(jnp.zeros_like(keep_BV), order_BV, keep_BV, axis=-1, inplace=False)


def next_token(logits_BV, rng, *, temperature: float, top_k: int, top_p: float,
               num_tokens: int | None = None) -> jax.Array:
  """The next token (B,) int32 of each row: argmax at temperature 0, else a draw from
  softmax(logits / T) restricted by `keep_mask` to the top_k likeliest tokens and to the
  smallest set of mass >= top_p. logits_BV may be any float dtype; the math is float32. Ids >=
  num_tokens (a model vocabulary padded beyond its tokenizer's) are never chosen."""
  logits_BV = losses.mask_padded_vocab(logits_BV.astype(jnp.float32), num_tokens)
  if temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  # Masked before tempering, so that each row's max is a token, and after, because a large T
  # would shrink the masked ids' margin (MASKED_LOGIT / T) until they could be drawn.
  logits_BV = losses.mask_padded_vocab(_tempered(logits_BV, temperature), num_tokens)
  if top_k > 0 or top_p < 1:
    logits_BV = jnp.where(keep_mask(logits_BV, top_k=top_k, top_p=top_p), logits_BV, -jnp.inf)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def _decode_step(gpt, params, cache, tokens_BL, positions_BL):
  """Appends tokens to the cache; returns the float32 logits of each row's last token."""
  logits_BLV, variables = gpt.apply({'params': params, 'cache': cache}, tokens_BL, positions_BL,
                                    decode=True, mutable=['cache'])
  return logits_BLV[:, -1].astype(jnp.float32), variables['cache']


@functools.partial(jax.jit, static_argnames=('gpt', 'max_new_tokens', 'temperature', 'top_k',
                                             'top_p', 'eos_id', 'num_tokens'))
def sample_tokens(gpt, params, tokens_BP, positions_BP, rng, *, max_new_tokens, temperature,
                  top_k, top_p, eos_id, num_tokens):
  """max_new_tokens tokens (B, N) int32 continuing left-padded prompts (pad_prompts' tokens and
  positions, (B, P)), chosen by next_token; a row is EOS from its first EOS on (zeros once every
  row has ended). Jitted with the settings static, so it also runs inside another jitted function
  (PPO's rollouts)."""
  B, P = tokens_BP.shape
  choose = functools.partial(next_token, temperature=temperature, top_k=top_k, top_p=top_p,
                             num_tokens=num_tokens)
  logits_BV, cache = _decode_step(gpt, params, model.init_cache(gpt, B, P + max_new_tokens),
                                  tokens_BP, positions_BP)
  first_B = choose(logits_BV, jax.random.fold_in(rng, 0))
  out_BN = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(first_B)
  next_position_B = positions_BP[:, -1] + 1

  def unfinished(state):
    t, _, _, done_B = state
    return (t < max_new_tokens) & ~jnp.all(done_B)

  def step(state):
    t, cache, out_BN, done_B = state
    logits_BV, cache = _decode_step(gpt, params, cache, out_BN[:, t - 1, None],
                                    (next_position_B + t - 1)[:, None])
    token_B = jnp.where(done_B, eos_id, choose(logits_BV, jax.random.fold_in(rng, t)))
    return t + 1, cache, out_BN.at[:, t].set(token_B), done_B | (token_B == eos_id)

  state = (jnp.int32(1), cache, out_BN, first_B == eos_id)
  return jax.lax.while_loop(unfinished, step, state)[2]


def strip(rows: np.ndarray, eos_id: int) -> list[list[int]]:
  """Each row up to (not including) its first EOS."""
  out = []
  for row in rows.tolist():
    out.append(row[:row.index(eos_id)] if eos_id in row else row)
  return out


def generate(gpt: model.GPT, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, eos_id: int = -1,
             seed: int = 0, num_tokens: int | None = None,
             prompt_length: int = 0) -> list[list[int]]:
  """The continuation of each prompt (token lists), up to max_new_tokens or the first EOS (not
  included). temperature 0 is greedy; the same seed gives the same samples. Only ids below
  num_tokens (the tokenizer's vocabulary size; None: all of the model's) are ever generated.
  Prompts are left-padded to prompt_length tokens (pad_prompts)."""
  check_sampling(temperature, top_k, top_p)
  if max_new_tokens < 1:
    raise UserError(f'max_new_tokens={max_new_tokens} must be >= 1')
  tokens_BP, positions_BP = pad_prompts(prompts, max_new_tokens, context_length(gpt.config),
                                        prompt_length)
  out_BN = sample_tokens(gpt, params, tokens_BP, positions_BP, jax.random.key(seed),
                         max_new_tokens=max_new_tokens, temperature=float(temperature),
                         top_k=int(top_k), top_p=float(top_p), eos_id=int(eos_id),
                         num_tokens=num_tokens)
  return strip(np.asarray(out_BN), eos_id)


def _take_rows(cache, rows, axis: int):
  """The cache with its batch rows (on `axis`) gathered in the order `rows`: each beam takes the
  cache of the beam it extends."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x if path[-1].key == 'index' else jnp.take(x, rows, axis=axis), cache)


@functools.partial(jax.jit, static_argnames=('gpt', 'beam_width', 'max_new_tokens',
                                             'length_penalty', 'eos_id', 'num_tokens'))
def _beam_search(gpt, params, tokens_BP, positions_BP, *, beam_width, max_new_tokens,
                 length_penalty, eos_id, num_tokens):
  B, P = tokens_BP.shape
  W, N = beam_width, max_new_tokens
  score = lambda logp, length: logp / jnp.asarray(length, jnp.float32) ** length_penalty
  logits_RV, cache = _decode_step(gpt, params, model.init_cache(gpt, B * W, P + N),
                                  jnp.repeat(tokens_BP, W, axis=0),
                                  jnp.repeat(positions_BP, W, axis=0))
  V = logits_RV.shape[-1]
  next_position_R = jnp.repeat(positions_BP[:, -1] + 1, W)
  # The W copies of a prompt are one beam at first: the others start at -inf.
  alive_logp_BW = jnp.tile(jnp.where(jnp.arange(W) == 0, 0.0, -jnp.inf), (B, 1))
  alive_BWN = jnp.zeros((B, W, N), jnp.int32)
  finished_BWN = jnp.zeros((B, W, N), jnp.int32)
  finished_score_BW = jnp.full((B, W), -jnp.inf)

  def extend(t, logits_RV, cache, alive_BWN, alive_logp_BW, finished_BWN, finished_score_BW):
    """One step: the 2W best extensions of the alive beams; those ending in EOS join the finished
    hypotheses (ranked by length-penalised score), the W best others stay alive."""
    logp_RV = jax.nn.log_softmax(losses.mask_padded_vocab(logits_RV, num_tokens))
    logp_BWV = logp_RV.reshape(B, W, V) + alive_logp_BW[:, :, None]
    logp_B2W, flat_B2W = jax.lax.top_k(logp_BWV.reshape(B, W * V), 2 * W)
    parent_B2W, token_B2W = flat_B2W // V, flat_B2W % V
    seqs_B2WN = jnp.take_along_axis(alive_BWN, parent_B2W[:, :, None], axis=1)
    seqs_B2WN = seqs_B2WN.at[:, :, t].set(token_B2W)
    ends_B2W = token_B2W == eos_id
    candidates = jnp.where(ends_B2W, score(logp_B2W, t + 1), -jnp.inf)
    finished_score_BW, keep = jax.lax.top_k(
        jnp.concatenate([finished_score_BW, candidates], axis=1), W)
    finished_BWN = jnp.take_along_axis(jnp.concatenate([finished_BWN, seqs_B2WN], axis=1),
                                       keep[:, :, None], axis=1)
    alive_logp_BW, keep = jax.lax.top_k(jnp.where(ends_B2W, -jnp.inf, logp_B2W), W)
    alive_BWN = jnp.take_along_axis(seqs_B2WN, keep[:, :, None], axis=1)
    parent_BW = jnp.take_along_axis(parent_B2W, keep, axis=1)
    cache = _take_rows(cache, (jnp.arange(B)[:, None] * W + parent_BW).reshape(-1),
                       axis=1 if gpt.config.scan_layers else 0)  # nn.scan puts layers first
    return cache, alive_BWN, alive_logp_BW, finished_BWN, finished_score_BW

  def unfinished(state):
    t, _, _, alive_logp_BW, _, finished_score_BW = state
    # Log-probs only fall as a beam grows, so its best score is its log-prob now, at the length
    # the penalty favours: now (t) or the longest (N).
    best_alive_B = jnp.maximum(score(alive_logp_BW[:, 0], t), score(alive_logp_BW[:, 0], N))
    return (t < N) & jnp.any(best_alive_B > finished_score_BW[:, -1])

  def step(state):
    t, cache, alive_BWN, *rest = state
    logits_RV, cache = _decode_step(gpt, params, cache, alive_BWN[:, :, t - 1].reshape(B * W, 1),
                                    (next_position_R + t - 1)[:, None])
    return (t + 1, *extend(t, logits_RV, cache, alive_BWN, *rest))

  state = (jnp.int32(1), *extend(0, logits_RV, cache, alive_BWN, alive_logp_BW, finished_BWN,
                                 finished_score_BW))
  t, _, alive_BWN, alive_logp_BW, finished_BWN, finished_score_BW = jax.lax.while_loop(
      unfinished, step, state)
  # Beams still alive at the end count as hypotheses of their full length.
  scores_B2W = jnp.concatenate([finished_score_BW, score(alive_logp_BW, t)], axis=1)
  best_B = jnp.argmax(scores_B2W, axis=1)
  seqs_B2WN = jnp.concatenate([finished_BWN, jnp.where(jnp.arange(N) < t, alive_BWN, eos_id)],
                              axis=1)
  return seqs_B2WN[jnp.arange(B), best_B], scores_B2W[jnp.arange(B), best_B]


def beam_search(gpt: model.GPT, params, prompts: Sequence[Sequence[int]], *, beam_width: int,
                max_new_tokens: int, length_penalty: float = 1.0, eos_id: int = -1,
                num_tokens: int | None = None) -> tuple[list[list[int]], list[float]]:
  """The best continuation of each prompt by beam search, and its score: the summed log-prob of
  its tokens (EOS included) divided by (number of tokens) ** length_penalty (0: no
  normalisation; larger values favour longer continuations). Only ids below num_tokens (the
  tokenizer's vocabulary size; None: all of the model's) are ever part of a continuation."""
  if beam_width < 1:
    raise UserError(f'beam_width={beam_width} must be >= 1')
  if max_new_tokens < 1:
    raise UserError(f'max_new_tokens={max_new_tokens} must be >= 1')
  tokens_BP, positions_BP = pad_prompts(prompts, max_new_tokens, context_length(gpt.config))
  seqs_BN, scores_B = _beam_search(gpt, params, tokens_BP, positions_BP,
                                   beam_width=int(beam_width), max_new_tokens=max_new_tokens,
                                   length_penalty=float(length_penalty), eos_id=int(eos_id),
                                   num_tokens=num_tokens)
  return strip(np.asarray(seqs_BN), eos_id), np.asarray(scores_B).tolist()


def complete(gpt: model.GPT, params, tokenizer, texts: Sequence[str], *, max_new_tokens: int,
             num_samples: int = 1, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             beam_width: int = 0, length_penalty: float = 1.0, seed: int = 0) -> list[str]:
  """Each text followed by its continuation; num_samples rows per text (beam search: one).
  A prompt starts as a document does, after EOS; generation stops at the next EOS. Ids of a
  model vocabulary padded beyond the tokenizer's are never generated."""
  prompts = [[tokenizer.eos_id] + ids for ids in tokenizer.encode_batch(texts)]
  if beam_width:
    rows, _ = beam_search(gpt, params, prompts, beam_width=beam_width,
                          max_new_tokens=max_new_tokens, length_penalty=length_penalty,
                          eos_id=tokenizer.eos_id, num_tokens=tokenizer.vocab_size)
  else:
    prompts = [p for p in prompts for _ in range(num_samples)]
    texts = [t for t in texts for _ in range(num_samples)]
    rows = generate(gpt, params, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_k=top_k, top_p=top_p, eos_id=tokenizer.eos_id, seed=seed,
                    num_tokens=tokenizer.vocab_size)
  return [text + tokenizer.decode(row) for text, row in zip(texts, rows)]
