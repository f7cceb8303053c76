"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model"): a policy tuned on preference pairs (x, y_w, y_l)
against a frozen reference policy π_ref, with no reward model and no sampling.

  loss = −log σ(β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])  (eq. 7)

log π(y|x) is the sum of the log-probabilities of the answer's tokens (its EOS included; the
prompt's tokens carry no loss), the loss a mean over pairs. β·(log π − log π_ref)(y) is the
answer's implicit reward (section 5); its margin between the chosen and the rejected answer is
what the loss pushes up.

A batch row is one pair, both answers after the same prompt (preferences.encode_pairs), each
(B, 2, L) with the chosen answer at [:, 0] and the rejected one at [:, 1]:

  tokens, targets  int32    inputs and next tokens
  mask             float32  1 on the answer's targets

The policy starts from config.init_from (objectives.base.load_base: its model and tokenizer); the
reference is config.dpo.reference, else init_from, and is the objective's frozen tree (never
trained, never donated). Metrics, train and validation ('val_' prefixed):

  loss             the DPO loss
  accuracy         the fraction of pairs whose margin is > 0 (a tie counts as wrong)
  reward_chosen    β·(log π − log π_ref)(y_w), mean over pairs, nats
  reward_rejected  β·(log π − log π_ref)(y_l)
  reward_margin    reward_chosen − reward_rejected
  val_kl           validation only: the policy's KL to the reference on held-out prompts, the
                   mean over pairs of Σ over the chosen answer's positions of the full-vocabulary
                   KL(π(·|prefix) ‖ π_ref(·|prefix)), teacher-forced on the chosen answer (nats)
"""

import dataclasses

import jax
import jax.numpy as jnp

from gpt_jax import checkpoint, losses, metrics, model, network, preferences, runs
from gpt_jax.errors import UserError
from gpt_jax.objectives.base import Objective, check_frozen_runs, frozen_run, load_base
from gpt_jax.objectives.base import split_batches, table_dataset

BATCH_KEYS = ('tokens', 'targets', 'mask')  # of preferences.encode_pairs
REWARDS = ('loss', 'accuracy', 'reward_chosen', 'reward_rejected', 'reward_margin')


def dpo_terms(policy_logp_B2, reference_logp_B2, beta: float) -> dict:
  """Per pair, float32 (B,): the DPO loss −log σ(β·margin) (computed stably, as log σ), whether
  the margin is > 0 (accuracy), and the implicit rewards β·(log π − log π_ref) of the chosen
  ([:, 0]) and rejected ([:, 1]) answers and their margin, from the answers' summed log-probs
  (B, 2) under the policy and the reference."""
  rewards_B2 = beta * (policy_logp_B2 - reference_logp_B2).astype(jnp.float32)
  margin_B = rewards_B2[:, 0] - rewards_B2[:, 1]
  return {'loss': -jax.nn.log_sigmoid(margin_B), 'accuracy': (margin_B > 0).astype(jnp.float32),
          'reward_chosen': rewards_B2[:, 0], 'reward_rejected': rewards_B2[:, 1],
          'reward_margin': margin_B}


def is_pair(batch):
  """1 for a row that is a pair, 0 for a row of zeros (split_batches' padding), (B,) float32."""
  return (batch['mask'].sum((1, 2)) > 0).astype(jnp.float32)


@dataclasses.dataclass
class DirectPreference(Objective):
  base: runs.Run | None = None  # config.init_from (objectives.lora reads it)
  reference: model.GPT | None = None  # π_ref's model; its parameters are `frozen`
  train_rows: dict | None = None  # preferences.encode_pairs', BATCH_KEYS only
  val_rows: dict | None = None
  reference_record: dict | None = None  # base.frozen_run of the reference

  @classmethod
  def build(cls, config, mesh, log):
    """The pairs of config.data.tasks, the config.init_from policy and the reference. UserError
    for dpo.beta not > 0, no pairs, no init_from, or a reference with another tokenizer,
    vocabulary or model shape than init_from's."""
    if not config.dpo.beta > 0:  # NaN fails too
      raise UserError(f'dpo.beta={config.dpo.beta} must be > 0 (the strength of the KL constraint '
                      'to the reference; DPO uses 0.1 to 0.5): set --config.dpo.beta')
    train, held_out = preferences.read_splits(config)
    base = load_base(config, mesh, log)
    objective = cls(config, base.tokenizer, network.build(config.model), base=base,
                    reference=network.build(config.model), frozen=base.params)
    reference, step = config.dpo.reference or config.init_from, base.step
    if reference != config.init_from:
      run = runs.load_compatible(reference, 'dpo.reference', config, base.tokenizer, mesh=mesh,
                                 log=log)
      checkpoint.check_same_shapes(
          run.params, base.params, f'dpo.reference={reference!r}',
          f'pass a reference of the shape of init_from={config.init_from!r}')
      objective.reference, objective.frozen, step = run.gpt, run.params, run.step
    objective.reference_record = frozen_run('dpo.reference', reference, step, objective.frozen)
    objective.train_rows = objective.encode(train)
    objective.val_rows = objective.encode(held_out)
    cut = f'{objective.train_rows["cut"].sum()} and {objective.val_rows["cut"].sum()}'
    log(f'DPO against {reference} with β = {config.dpo.beta}: {len(train)} training and '
        f'{len(held_out)} held-out pairs of {config.seq_len} tokens ({cut} prompts cut to fit; '
        f'{preferences.held_out_source(config)})')
    return objective

  def encode(self, pairs) -> dict:
    return preferences.encode_pairs(pairs, self.tokenizer, self.config.seq_len)

  def batch_spec(self):
    L, axes = self.config.seq_len, ('batch', None, 'length')
    return {'tokens': ((2, L), jnp.int32, axes), 'targets': ((2, L), jnp.int32, axes),
            'mask': ((2, L), jnp.float32, axes)}

  def row_tokens(self):
    return 2 * self.config.seq_len

  def start_from(self, params, mesh, log):
    # A copy: the train step donates the state's buffers, and the base's are the reference's
    # (unless dpo.reference names another run).
    checkpoint.check_same_shapes(self.base.params, params, f'init_from={self.config.init_from!r}')
    return jax.tree.map(jnp.copy, self.base.params)

  def logits(self, gpt: model.GPT, params, batch):
    """Next-token logits of both answers' sequences, (B, 2, L, V) in the model's dtype."""
    tokens_B2L = batch['tokens']
    B, _, L = tokens_B2L.shape
    logits_NV = gpt.apply({'params': params}, tokens_B2L.reshape(2 * B, L))
    return logits_NV.reshape(B, 2, L, -1)

  def answer_logp(self, logits_B2LV, batch):
    """log π(y|x) of each answer: the sum of its tokens' log-probabilities, float32 (B, 2)."""
    nll_B2L = losses.token_nll(logits_B2LV, batch['targets'], self.num_tokens)
    return -(nll_B2L * batch['mask']).sum(-1)

  def pair_terms(self, params, batch, frozen) -> tuple[dict, jax.Array, jax.Array]:
    """(dpo_terms of each pair, the policy's and the reference's logits (B, 2, L, V)). Both
    models run deterministic (no dropout, TRL's disable_dropout): with dropout the policy's
    log-probabilities would be noisy where the reference's are not, and the implicit rewards
    β·(log π − log π_ref) would not start at 0 (the loss at log 2)."""
    logits_B2LV = self.logits(self.gpt, params, batch)
    reference_B2LV = jax.lax.stop_gradient(self.logits(self.reference, frozen, batch))
    terms = dpo_terms(self.answer_logp(logits_B2LV, batch),
                      self.answer_logp(reference_B2LV, batch), self.config.dpo.beta)
    return terms, logits_B2LV, reference_B2LV

  def weights(self, batch):
    return {'pairs': jnp.maximum(is_pair(batch).sum(), 1.0)}

  def loss(self, params, batch, *, rng, step, weights, frozen):
    terms, _, _ = self.pair_terms(params, batch, frozen)
    pair_B = is_pair(batch)
    means = {k: (v * pair_B).sum() / weights['pairs'] for k, v in terms.items()}
    return means['loss'], {'train_loss': means.pop('loss'), **means}

  def eval_sums(self, params, batch, frozen):
    terms, logits_B2LV, reference_B2LV = self.pair_terms(params, batch, frozen)
    pair_B = is_pair(batch)
    # KL(π ‖ π_ref) summed over the chosen answer's positions: distillation's reverse KL with
    # the policy as student, α = 1 (no cross-entropy), T = 1 and no normalisation.
    _, kl = losses.distillation_loss(
        logits_B2LV[:, 0], reference_B2LV[:, 0], batch['targets'][:, 0], batch['mask'][:, 0],
        alpha=1.0, reverse=True, normalizer=1.0, num_tokens=self.num_tokens)
    return {**{k: (v * pair_B).sum() for k, v in terms.items()}, 'kl': kl['kl'],
            'pairs': pair_B.sum()}

  def eval_metrics(self, sums):
    pairs = max(float(sums['pairs']), 1.0)
    return {f'val_{k}': float(sums[k]) / pairs for k in (*REWARDS, 'kl')}

  def train_dataset(self, batch_size):
    return table_dataset({k: self.train_rows[k] for k in BATCH_KEYS}, batch_size, self.config)

  def validation_batches(self):
    return split_batches({k: self.val_rows[k] for k in BATCH_KEYS}, self.config, pad=True)

  def check_workdir(self, workdir):
    # init_from, the default reference, may change freely on a resume; the reference may not.
    check_frozen_runs(workdir, [self.reference_record])

  def finish(self, params, workdir, log):
    """Logs the last held-out preference accuracy, reward margin and KL to the reference."""
    last = metrics.last_holding(workdir, 'val_accuracy')
    if last:
      log(f'DPO, held-out pairs at step {last["step"]}: accuracy {last["val_accuracy"]:.1%}, '
          f'reward margin {last["val_reward_margin"]:.3f}, KL to the reference '
          f'{last["val_kl"]:.3f} nats per answer')
