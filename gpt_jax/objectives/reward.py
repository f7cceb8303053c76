"""The reward model of InstructGPT (Ouyang et al. 2022, sec. 3.5): a GPT whose unembedding is
replaced by a scalar head reading the final hidden state of an answer's last token (its EOS),
trained on comparisons with loss −log σ(r(x, y_w) − r(x, y_l)).

A batch row is a preference pair (gpt_jax.preferences.encode_pairs): both answers to one prompt,
the chosen at [:, 0]. The trained parameters are {'gpt': the model's, from config.init_from
(an SFT run, or any); 'head': {'kernel': (D, 1), 'bias': (1,)}} (runs.MODEL_KEY: runs.load reads
the 'gpt' part as any language model). Metrics: the loss, accuracy (the fraction of pairs with
r_w > r_l) and margin (the mean r_w − r_l), on training batches and ('val_' prefixed) held-out
pairs.

After training, the head's bias is shifted so that the training prompts' chosen answers score 0
on average, as InstructGPT normalises its reward model before RL; the shift is kept in the run's
reward_normalization.json, which load_reward_model applies (the checkpoints stay as trained, so
a resumed run continues bit for bit).
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from gpt_jax import checkpoint, files, model, network, preferences, runs, sharding, state
from gpt_jax.errors import UserError
from gpt_jax.objectives.base import Objective, load_base, split_batches, table_dataset

HEAD_AXES = {'kernel': PartitionSpec('embed', None), 'bias': PartitionSpec(None)}
NORMALIZATION = 'reward_normalization.json'
BATCH_KEYS = ('tokens', 'last')


def init_scalar_head(rng, model_config) -> dict:
  """A linear head from the hidden state to one number: N(0, init_std) kernel (D, 1), zero bias
  (1,), in model.param_dtype. The reward model's head, and PPO's value head."""
  kernel = model_config.init_std * jax.random.normal(rng, (model_config.n_embd, 1),
                                                      model_config.param_dtype)
  return {'kernel': kernel, 'bias': jnp.zeros((1,), model_config.param_dtype)}


def scalar_head(head: dict, x_ND) -> jax.Array:
  """The head's value of each hidden state, float32 (N,)."""
  x_ND = x_ND.astype(jnp.float32)
  return (x_ND @ head['kernel'].astype(jnp.float32) + head['bias'].astype(jnp.float32))[:, 0]


def padding_segments(positions_BL):
  """Segment ids that keep a row's tokens from attending to its padding (position -1): 1 on
  tokens, 0 on padding; None (no segments) when positions_BL is None."""
  return None if positions_BL is None else (positions_BL >= 0).astype(jnp.int32)


def scores(gpt: model.GPT, params: dict, tokens_BL, last_B, positions_BL=None) -> jax.Array:
  """r(x, y): the reward model's score of each row, float32 (B,), read at position last_B (the
  answer's last token). params is {'gpt', 'head'}; positions_BL (default 0, 1, ...) lets a
  left-padded row (position -1 on padding, as gpt_jax.sample pads) be scored as if unpadded.
  Deterministic (no dropout) in training too, so that a pair's two answers are scored by the same
  function (TRL's disable_dropout)."""
  B, L = tokens_BL.shape
  x_ND = gpt.apply({'params': params['gpt']}, tokens_BL, positions_BL, hidden=True,
                   segment_ids_BL=padding_segments(positions_BL))
  x_BD = jnp.take_along_axis(x_ND.reshape(B, L, -1), last_B[:, None, None], axis=1)[:, 0]
  return scalar_head(params['head'], x_BD)


def pair_losses(chosen_B, rejected_B) -> dict:
  """Per pair, float32 (B,): 'loss' −log σ(r_w − r_l) (InstructGPT eq. 1, one comparison),
  'correct' (r_w > r_l) and 'margin' r_w − r_l."""
  margin_B = chosen_B - rejected_B
  return {'loss': -jax.nn.log_sigmoid(margin_B), 'correct': (margin_B > 0).astype(jnp.float32),
          'margin': margin_B}


def is_pair(batch):
  """1 for a row that is a pair, 0 for a row of zeros (split_batches' padding), (B,)."""
  return (batch['last'][:, 0] > 0).astype(jnp.float32)


@dataclasses.dataclass
class RewardModeling(Objective):
  base: runs.Run | None = None
  train_arrays: dict | None = None
  held_out_arrays: dict | None = None

  @classmethod
  def build(cls, config, mesh, log):
    train, held_out = preferences.read_splits(config)
    base = load_base(config, mesh, log)
    objective = cls(config, base.tokenizer, network.build(config.model), base=base)
    objective.train_arrays = preferences.encode_pairs(train, base.tokenizer, config.seq_len)
    objective.held_out_arrays = preferences.encode_pairs(held_out, base.tokenizer, config.seq_len)
    log(f'reward model: {len(train)} training and {len(held_out)} held-out pairs in '
        f'{config.seq_len}-token sequences ({objective.train_arrays["cut"].sum()} and '
        f'{objective.held_out_arrays["cut"].sum()} prompts cut on the left to fit; '
        f'{preferences.held_out_source(config)})')
    return objective

  def batch_spec(self):
    L = self.config.seq_len
    return {'tokens': ((2, L), jnp.int32, ('batch', None, 'length')),
            'last': ((2,), jnp.int32, ('batch', None))}

  def row_tokens(self):
    return 2 * self.config.seq_len

  def init_params(self, rng):
    model_rng, head_rng = jax.random.split(rng)
    return {'gpt': model.init_params(self.gpt, model_rng, self.config.seq_len),
            'head': init_scalar_head(head_rng, self.config.model)}

  def param_axes(self):
    return {'gpt': model.logical_axes(self.gpt, self.config.seq_len), 'head': HEAD_AXES}

  def start_from(self, params, mesh, log):
    """The base model's parameters under a fresh head: a copy, as the step donates its state."""
    checkpoint.check_same_shapes(self.base.params, params['gpt'],
                                 f'init_from={self.config.init_from!r}')
    return {**params, 'gpt': jax.tree.map(jnp.copy, self.base.params)}

  def pair_scores(self, params, batch):
    """(r_w, r_l), each (B,) float32."""
    tokens_BCL = batch['tokens']
    B, C, L = tokens_BCL.shape
    r_BC = scores(self.gpt, params, tokens_BCL.reshape(B * C, L),
                  batch['last'].reshape(B * C)).reshape(B, C)
    return r_BC[:, 0], r_BC[:, 1]

  def weights(self, batch):
    return {'pairs': jnp.maximum(is_pair(batch).sum(), 1.0)}

  def loss(self, params, batch, *, rng, step, weights, frozen):
    per_pair = pair_losses(*self.pair_scores(params, batch))
    mean = {k: (v * is_pair(batch)).sum() / weights['pairs'] for k, v in per_pair.items()}
    return mean['loss'], {'train_loss': mean['loss'], 'accuracy': mean['correct'],
                          'margin': mean['margin']}

  def eval_sums(self, params, batch, frozen):
    per_pair = pair_losses(*self.pair_scores(params, batch))
    return {**{k: (v * is_pair(batch)).sum() for k, v in per_pair.items()},
            'pairs': is_pair(batch).sum()}

  def eval_metrics(self, sums):
    pairs = max(float(sums['pairs']), 1.0)
    return {'val_loss': float(sums['loss']) / pairs,
            'val_accuracy': float(sums['correct']) / pairs,
            'val_margin': float(sums['margin']) / pairs}

  def train_dataset(self, batch_size):
    return table_dataset({k: self.train_arrays[k] for k in BATCH_KEYS}, batch_size, self.config)

  def validation_batches(self):
    return split_batches({k: self.held_out_arrays[k] for k in BATCH_KEYS}, self.config, pad=True)

  def finish(self, params, workdir, log):
    """Writes reward_normalization.json: the bias shift that makes the training prompts' chosen
    answers score 0 on average, and the held-out mean scores after it."""
    score = jax.jit(lambda params, tokens, last: scores(self.gpt, params, tokens, last))
    rows = self.config.batch_size // self.config.grad_accum
    mean = lambda arrays, c: batched_scores(score, params, arrays['tokens'][:, c],
                                            arrays['last'][:, c], rows).mean()
    chosen = mean(self.train_arrays, 0)
    held_w, held_l = mean(self.held_out_arrays, 0), mean(self.held_out_arrays, 1)
    record = {'step': self.config.steps, 'bias_shift': -chosen, 'mean_chosen_score_before': chosen,
              'held_out_mean_chosen': held_w - chosen, 'held_out_mean_rejected': held_l - chosen}
    files.write_json(os.path.join(workdir, NORMALIZATION), record)
    log(f'reward model: mean score of the training answers chosen {chosen:+.4f} before '
        f'normalising, 0 after; held out: chosen {held_w - chosen:+.4f}, rejected '
        f'{held_l - chosen:+.4f} ({os.path.join(workdir, NORMALIZATION)})')


def batched_scores(score, params, tokens_RL: np.ndarray, last_R: np.ndarray, rows: int
                   ) -> np.ndarray:
  """score(params, tokens, last) of every row, `rows` at a time (the last batch padded with
  zeros), on the default data-parallel mesh; float64 (R,)."""
  out = []
  with jax.set_mesh(sharding.data_parallel_mesh()):
    for start in range(0, len(last_R), rows):
      n = min(rows, len(last_R) - start)
      pad = lambda x: np.concatenate([x[start:start + n],
                                      np.zeros((rows - n, *x.shape[1:]), x.dtype)])
      out.append(np.asarray(score(params, pad(tokens_RL), pad(last_R)))[:n])
  return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


@dataclasses.dataclass(frozen=True)
class RewardModel:
  gpt: model.GPT
  params: dict  # {'gpt', 'head'}, the head's bias normalised
  workdir: str
  step: int  # of the checkpoint

  def __call__(self, tokens_BL, last_B, positions_BL=None) -> jax.Array:
    return scores(self.gpt, self.params, tokens_BL, last_B, positions_BL)

  def score_answers(self, prompts, answers, tokenizer, seq_len: int, rows: int) -> np.ndarray:
    """r(x, y) of each answer text to its prompt text, as the model was trained to read them
    (preferences.encode_pairs), `rows` at a time; float64 (R,)."""
    pairs = [preferences.Pair(str(i), p, a, a) for i, (p, a) in enumerate(zip(prompts, answers))]
    arrays = preferences.encode_pairs(pairs, tokenizer, seq_len)
    score = jax.jit(lambda params, tokens, last: scores(self.gpt, params, tokens, last))
    return batched_scores(score, self.params, arrays['tokens'][:, 0], arrays['last'][:, 0], rows)


def load_reward_model(workdir: str, what: str, config, tokenizer, *, mesh) -> RewardModel:
  """The objective=reward run in `workdir` (given as setting `what`), on `mesh` in
  config.model.dtype, its head's bias shifted by its reward_normalization.json (written when it
  finished). UserError if it is not a reward model run, has not finished (no normalisation, or
  one of an older step: a run resumed for more steps), or has another tokenizer or vocabulary
  than this run (runs.check_compatible)."""
  saved = runs.read_config(workdir, what)
  if saved.get('objective') != 'reward':
    raise UserError(f'{what}={workdir!r} is an objective={saved.get("objective")!r} run, not a '
                    'reward model; train one with --config.objective=reward and pass its workdir')
  normalization = os.path.join(workdir, NORMALIZATION)
  if not os.path.exists(normalization):
    raise UserError(f'{what}={workdir!r} has no {NORMALIZATION}: the reward model has not '
                    'finished training; finish it (rerun its command) first')
  run = runs.load_compatible(workdir, what, config, tokenizer, mesh=mesh)
  m = run.config.model
  abstract = state.abstract_params(
      lambda rng: {'head': init_scalar_head(rng, m)}, {'head': HEAD_AXES}, mesh)
  head = checkpoint.restore_params(os.path.join(workdir, runs.CHECKPOINTS), run.step,
                                   abstract)['head']
  try:
    with open(normalization, encoding='utf-8') as f:
      record = json.load(f)
    shift, normalized_step = float(record['bias_shift']), int(record['step'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f'{what}={workdir!r}: {NORMALIZATION} cannot be read ({e}); rerun the reward '
                    'model\'s command to rewrite it') from None
  if normalized_step != run.step:
    raise UserError(f'{what}={workdir!r} was normalised at step {normalized_step}, but its newest '
                    f'checkpoint is step {run.step}: it has not finished training; finish it '
                    '(rerun its command) first')
  head = {**head, 'bias': head['bias'] + jnp.asarray(shift, head['bias'].dtype)}
  return RewardModel(run.gpt, {'gpt': run.params, 'head': head}, workdir, run.step)

