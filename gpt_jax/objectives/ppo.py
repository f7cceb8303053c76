"""InstructGPT's reinforcement learning step (Ouyang et al. 2022, sec. 3.5; Stiennon et al. 2020):
proximal policy optimisation (PPO, Schulman et al. 2017) of a language model against a reward
model, with generalised advantage estimation (GAE, Schulman et al. 2016).

Each train step (the trainer's on-policy path) takes a batch of prompts and
  1. rolls out (`rollout`): samples up to ppo.max_new_tokens answer tokens per prompt with the
     current policy at ppo.temperature T (gpt_jax.sample's KV-cache sampler, inside the jitted
     step); the answer is its tokens up to and including the first EOS. Forward passes over
     [prompt | answer] give the policy's log-probs and values, the reference policy's log-probs
     and the reward model's score r(x, y) at the answer's last token. Token t's reward is
     −β·(log π_old − log π_ref)_t, plus r(x, y) on the last token (InstructGPT eq. 2's KL penalty,
     per token as in Stiennon et al. sec. 3.4; β = ppo.kl_coef). GAE(γ, λ) turns rewards and
     values into advantages, returns = advantages + values, and the advantages are whitened over
     the batch's answer tokens;
  2. makes ppo.epochs passes over that experience of ppo.minibatches updates each, minimising
       −min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A)                                      (PPO eq. 7)
       + value_coef · 0.5·max((V − R)², (V_old + clip(V − V_old, ±value_clip) − R)²)
       − entropy_coef · H(π)
       + ptx_coef · L_LM(a pretraining batch)                    (PPO-ptx, InstructGPT eq. 2)
     each a mean over answer tokens (L_LM over the batch's targets), ρ = π(a_t|s_t)/π_old(a_t|s_t).

The trained parameters are {'gpt': the policy, from config.init_from (an SFT run); 'value': a
scalar head {'kernel': (D, 1), 'bias': (1,)} on the policy's final hidden states}. The value
function shares the policy's trunk rather than being a second GPT (InstructGPT initialises a
separate one from the reward model): one forward pass gives log-probs and values, and one model is
trained and kept with its optimizer state; the price is that the value loss also moves the
policy's trunk, which the small value_coef keeps in check. runs.load reads the 'gpt' part
(runs.MODEL_KEY) as any language model, so the tuned policy samples, evaluates and exports as one.

The reference policy (ppo.reference, default init_from) and the reward model (ppo.reward_model,
an objective=reward run, its bias normalised) are the objective's frozen tree. Every forward pass
is deterministic (no dropout), so that ρ is exactly 1 at the first update of a rollout made with
the same parameters; log-probs are those of softmax(logits / T), the distribution the answers
were drawn from.

Data: the unique prompts of the training pairs (gpt_jax.preferences), each EOS + its instruction
prompt, left-padded (or cut on the left) to P = seq_len − max_new_tokens tokens; the held-out
pairs' prompts for validation: a fixed-seed rollout's mean reward model score (val_score) and KL
to the reference (val_kl, Σ_t log π − log π_ref per answer).

Metrics of a step, means over its updates: train_loss (the total above), policy_loss, value_loss
(before value_coef), entropy (nats per token), clip_fraction (tokens whose ratio was clipped),
approx_kl (the mean of (ρ − 1) − log ρ, an estimate of KL(π_old ‖ π) as CleanRL logs it) and
ptx_loss (with PPO-ptx); of its rollout, means per answer: score (the reward model's), kl
(Σ_t log π_old − log π_ref), reward (score − β·kl) and response_length (tokens, EOS included).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import data, layers, losses, metrics, model, network, preferences, runs, sample
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError
import gpt_jax.objectives.reward as reward  # a peer module, not through the registry
from gpt_jax.objectives.base import Objective, check_frozen_runs, frozen_run, load_base
from gpt_jax.objectives.base import split_batches, table_dataset


def validate(config) -> None:
  """UserError for ppo settings out of range, before any model loads."""
  p = config.ppo
  if not p.reward_model:
    raise UserError('PPO without a reward model run: pass --config.ppo.reward_model=DIR (a '
                    'finished --config.objective=reward run)')
  if not p.kl_coef >= 0:
    raise UserError(f'ppo.kl_coef={p.kl_coef} must be >= 0: it weighs the penalty on moving away '
                    'from the reference policy')
  if not p.clip > 0:
    raise UserError(f'ppo.clip={p.clip} must be > 0: the ratio is clipped to [1 − clip, 1 + clip]')
  if p.epochs < 1 or p.minibatches < 1:
    raise UserError(f'ppo.epochs={p.epochs} and ppo.minibatches={p.minibatches} must be >= 1')
  if p.max_new_tokens < 1 or p.max_new_tokens >= config.seq_len:
    raise UserError(f'ppo.max_new_tokens={p.max_new_tokens} with seq_len={config.seq_len}: a '
                    'prompt leaves no room for an answer in the context; set ppo.max_new_tokens '
                    'between 1 and seq_len − 1')
  if not (p.temperature > 0 and 0 <= p.gamma <= 1 and 0 <= p.lam <= 1 and p.value_clip > 0 and
          p.value_coef >= 0 and p.entropy_coef >= 0 and p.ptx_coef >= 0):
    raise UserError(f'ppo.temperature={p.temperature} and value_clip={p.value_clip} must be > 0, '
                    f'gamma={p.gamma} and lam={p.lam} in [0, 1], value_coef={p.value_coef}, '
                    f'entropy_coef={p.entropy_coef} and ptx_coef={p.ptx_coef} >= 0; fix '
                    '--config.ppo')
  rows = p.minibatches * config.grad_accum * jax.process_count()
  if config.batch_size % rows:
    raise UserError(f'batch_size={config.batch_size} is not divisible by ppo.minibatches='
                    f'{p.minibatches} × grad_accum={config.grad_accum} × {jax.process_count()} '
                    'processes; change one of them')


def check_context(m, workdir: str, what: str, seq_len: int) -> None:
  """UserError if the model config `m` of the run in `workdir` has a learned position table
  shorter than seq_len (it would read clamped positions)."""
  if m.position == 'learned' and seq_len > m.block_size:
    raise UserError(f'{what}={workdir!r} reads {m.block_size} tokens, fewer than seq_len='
                    f'{seq_len}; lower --config.seq_len')


def answer_mask(answer_BN, eos_id: int) -> jax.Array:
  """1 on each answer's tokens up to and including its first EOS, else 0; float32 (B, N)."""
  is_eos_BN = (answer_BN == eos_id).astype(jnp.int32)
  return (jnp.cumsum(is_eos_BN, axis=1) - is_eos_BN == 0).astype(jnp.float32)


def answer_hidden(gpt: model.GPT, params, tokens_BL, positions_BL, N: int) -> jax.Array:
  """The final hidden states (B, N, D) of the positions that predict the last N tokens; a row's
  left padding (position -1) is not attended to, as in the sampler."""
  B, L = tokens_BL.shape
  x_ND = gpt.apply({'params': params}, tokens_BL, positions_BL, hidden=True,
                   segment_ids_BL=reward.padding_segments(positions_BL))
  return x_ND.reshape(B, L, -1)[:, L - N - 1:L - 1]


def token_logprobs(x_BND, w_VD, tokens_BN, temperature: float, num_tokens: int | None,
                   logit_softcap: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """(log-prob of each token, entropy of its distribution), float32 (B, N), under
  softmax(soft_cap(x·wᵀ, logit_softcap) / temperature) over the first num_tokens ids: the
  distribution the sampler draws from."""
  logits_BNV = layers.soft_cap(jnp.einsum('bnd,vd->bnv', x_BND.astype(jnp.float32),
                                          w_VD.astype(jnp.float32)), logit_softcap) / temperature
  logp_BN = -losses.token_nll(logits_BNV, tokens_BN, num_tokens)
  logp_BNV = jax.nn.log_softmax(losses.mask_padded_vocab(logits_BNV, num_tokens))
  return logp_BN, -(jnp.exp(logp_BNV) * logp_BNV).sum(-1)


def gae(rewards_BN, values_BN, mask_BN, gamma: float, lam: float) -> jax.Array:
  """Generalised advantage estimates (Schulman et al. 2016, eq. 16), float32 (B, N):
  A_t = δ_t + γλ·A_{t+1}, δ_t = r_t + γ·V_{t+1} − V_t, where V and A are 0 after an answer's last
  token (mask_BN: 1 on the answer, a prefix of each row); 0 off the answer."""

  def step(carry, xs):
    next_value_B, next_advantage_B = carry
    r_B, v_B, m_B = xs
    advantage_B = (r_B + gamma * next_value_B - v_B + gamma * lam * next_advantage_B) * m_B
    return (v_B * m_B, advantage_B), advantage_B

  zeros_B = jnp.zeros(rewards_BN.shape[0], jnp.float32)
  _, advantages_NB = jax.lax.scan(step, (zeros_B, zeros_B),
                                  (rewards_BN.T, values_BN.T, mask_BN.T), reverse=True)
  return advantages_NB.T


def whiten(x_BN, mask_BN) -> jax.Array:
  """x shifted and scaled to mean 0 and variance 1 over the masked entries; 0 off the mask."""
  count = jnp.maximum(mask_BN.sum(), 1.0)
  mean = (x_BN * mask_BN).sum() / count
  variance = (jnp.square(x_BN - mean) * mask_BN).sum() / count
  return (x_BN - mean) * jax.lax.rsqrt(variance + 1e-8) * mask_BN


def policy_terms(logp_BN, old_logp_BN, advantages_BN, clip: float) -> dict:
  """Per token, float32 (B, N): 'loss' −min(ρA, clip(ρ, 1 − ε, 1 + ε)A), ρ = exp(logp − old_logp)
  (PPO's clipped surrogate, Schulman et al. 2017 eq. 7, negated); 'clipped' 1 where
  |ρ − 1| > ε; 'approx_kl' (ρ − 1) − log ρ."""
  log_ratio_BN = logp_BN - old_logp_BN
  ratio_BN = jnp.exp(log_ratio_BN)
  clipped_BN = jnp.clip(ratio_BN, 1 - clip, 1 + clip)
  return {'loss': -jnp.minimum(ratio_BN * advantages_BN, clipped_BN * advantages_BN),
          'clipped': (jnp.abs(ratio_BN - 1) > clip).astype(jnp.float32),
          'approx_kl': ratio_BN - 1 - log_ratio_BN}


def value_terms(values_BN, old_values_BN, returns_BN, value_clip: float) -> jax.Array:
  """Per token, float32 (B, N): 0.5·max((V − R)², (V_old + clip(V − V_old, ±value_clip) − R)²),
  the clipped value loss of OpenAI's baselines PPO2."""
  clipped_BN = old_values_BN + jnp.clip(values_BN - old_values_BN, -value_clip, value_clip)
  return 0.5 * jnp.maximum(jnp.square(values_BN - returns_BN),
                           jnp.square(clipped_BN - returns_BN))


def prompt_arrays(pairs, tokenizer, length: int) -> tuple[dict, int]:
  """({'prompt', 'positions'} (R, length) int32 of the pairs' unique prompts in order
  (preferences.encode_prompts), how many were cut on the left to fit)."""
  prompts = list(dict.fromkeys(pair.prompt for pair in pairs))
  tokens, positions, cut = preferences.encode_prompts(prompts, tokenizer, length)
  return {'prompt': tokens, 'positions': positions}, int(cut.sum())


def pretraining_data(config, base: runs.Run, log) -> data.Prepared:
  """config.data.corpus prepared with the policy's tokenizer: PPO-ptx's pretraining batches."""
  if not config.data.corpus:
    raise UserError(f'ppo.ptx_coef={config.ppo.ptx_coef} mixes in pretraining batches: pass '
                    '--config.data.corpus=... (or set ppo.ptx_coef=0)')
  data_config = config.data.copy_and_resolve_references()
  data_config.tokenizer = tokenizer_lib.find(config.init_from)
  prepared = data.prepare(data_config, config.model.vocab_size, log)
  if prepared.tokenizer.sha256 != base.tokenizer.sha256:
    raise UserError(f'the prepared data.corpus={config.data.corpus!r} has another tokenizer than '
                    f'init_from={config.init_from!r}; clear its cache entry and rerun')
  return prepared


@dataclasses.dataclass
class ProximalPolicy(Objective):
  base: runs.Run | None = None
  reference_gpt: model.GPT | None = None
  reward_gpt: model.GPT | None = None
  train_prompts: dict | None = None
  held_out_prompts: dict | None = None
  pretraining: data.Prepared | None = None  # PPO-ptx's corpus
  frozen_runs: list | None = None  # base.frozen_run of the reference and the reward model

  on_policy = True

  @classmethod
  def build(cls, config, mesh, log):
    validate(config)
    train, held_out = preferences.read_splits(config)
    base = load_base(config, mesh, log)
    p = config.ppo
    rm = reward.load_reward_model(p.reward_model, 'ppo.reward_model', config, base.tokenizer,
                                  mesh=mesh)
    check_context(rm.gpt.config, p.reward_model, 'ppo.reward_model', config.seq_len)
    if p.reference in ('', config.init_from):
      reference = base  # its parameters serve as they are: the step donates only the state's
    else:
      reference = runs.load_compatible(p.reference, 'ppo.reference', config, base.tokenizer,
                                       mesh=mesh, log=log)
      check_context(reference.config.model, p.reference, 'ppo.reference', config.seq_len)
    objective = cls(config, base.tokenizer, network.build(config.model),
                    frozen={'reference': reference.params, 'reward': rm.params},
                    frozen_runs=[frozen_run('ppo.reference', p.reference or config.init_from,
                                            reference.step, reference.params),
                                 frozen_run('ppo.reward_model', p.reward_model, rm.step,
                                            rm.params)],
                    epochs=p.epochs, minibatches=p.minibatches, base=base,
                    reference_gpt=reference.gpt, reward_gpt=rm.gpt)
    P = config.seq_len - p.max_new_tokens
    objective.train_prompts, train_cut = prompt_arrays(train, base.tokenizer, P)
    objective.held_out_prompts, held_cut = prompt_arrays(held_out, base.tokenizer, P)
    if p.ptx_coef:
      objective.pretraining = pretraining_data(config, base, log)
    log(f'ppo: {len(objective.train_prompts["prompt"])} training and '
        f'{len(objective.held_out_prompts["prompt"])} held-out prompts in {P} tokens ({train_cut} '
        f'and {held_cut} cut on the left), answers of up to {p.max_new_tokens} tokens; reward '
        f'model {p.reward_model}, reference {p.reference or config.init_from} '
        f'({preferences.held_out_source(config)})')
    return objective

  def batch_spec(self):
    P = self.config.seq_len - self.config.ppo.max_new_tokens
    spec = {'prompt': ((P,), jnp.int32, ('batch', 'length')),
            'positions': ((P,), jnp.int32, ('batch', 'length'))}
    if self.config.ppo.ptx_coef:
      spec['ptx_tokens'] = ((self.config.seq_len + 1,), jnp.int32, ('batch', 'length'))
    return spec

  def row_tokens(self):
    """A row's tokens trained on: seq_len in each of ppo.epochs passes (the rollout's sampling
    and forward passes, about as many FLOPs again, are not counted)."""
    return self.config.ppo.epochs * self.config.seq_len

  def init_params(self, rng):
    model_rng, value_rng = jax.random.split(rng)
    return {'gpt': model.init_params(self.gpt, model_rng, self.config.seq_len),
            'value': reward.init_scalar_head(value_rng, self.config.model)}

  def param_axes(self):
    return {'gpt': model.logical_axes(self.gpt, self.config.seq_len), 'value': reward.HEAD_AXES}

  def start_from(self, params, mesh, log):
    """The base model's parameters under a fresh value head: a copy, as the step donates its
    state (and the base may be the frozen reference)."""
    return {**params, 'gpt': jax.tree.map(jnp.copy, self.base.params)}

  def check_workdir(self, workdir):
    # A resumed run must keep its reference and its reward model (normalisation included).
    check_frozen_runs(workdir, self.frozen_runs)

  # --- rollouts -----------------------------------------------------------------------------

  def policy(self, params, tokens_BL, positions_BL) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log-probs, entropies, values) at the answer's N tokens, the last N of tokens_BL, each
    float32 (B, N)."""
    N = self.config.ppo.max_new_tokens
    x_BND = answer_hidden(self.gpt, params['gpt'], tokens_BL, positions_BL, N)
    logp_BN, entropy_BN = token_logprobs(x_BND,
                                         network.head_weight(params['gpt'], self.config.model),
                                         tokens_BL[:, -N:], self.config.ppo.temperature,
                                         self.num_tokens, self.config.model.logit_softcap)
    B, _, D = x_BND.shape
    values_BN = reward.scalar_head(params['value'], x_BND.reshape(-1, D)).reshape(B, N)
    return logp_BN, entropy_BN, values_BN

  def answers(self, params, batch, rng, frozen) -> dict:
    """Answers sampled by the policy to the batch's prompts, scored: tokens and positions of
    [prompt | answer] (B, L) int32; mask (answer_mask), logp, ref_logp and values at the answer
    tokens (B, N) float32; the reward model's score (B,) float32."""
    p = self.config.ppo
    N, eos = p.max_new_tokens, self.tokenizer.eos_id
    prompt_BP, positions_BP = batch['prompt'], batch['positions']
    answer_BN = sample.sample_tokens(self.gpt, params['gpt'], prompt_BP, positions_BP, rng,
                                     max_new_tokens=N, temperature=float(p.temperature), top_k=0,
                                     top_p=1.0, eos_id=eos, num_tokens=self.num_tokens)
    mask_BN = answer_mask(answer_BN, eos)
    tokens_BL = jnp.concatenate([prompt_BP, answer_BN], axis=1)
    positions_BL = jnp.concatenate([positions_BP, positions_BP[:, -1:] + 1 + jnp.arange(N)],
                                   axis=1)
    logp_BN, _, values_BN = self.policy(params, tokens_BL, positions_BL)
    ref = frozen['reference']
    ref_logp_BN, _ = token_logprobs(
        answer_hidden(self.reference_gpt, ref, tokens_BL, positions_BL, N),
        network.head_weight(ref, self.reference_gpt.config), answer_BN, p.temperature,
        self.num_tokens, self.reference_gpt.config.logit_softcap)
    last_B = prompt_BP.shape[1] - 1 + mask_BN.sum(1).astype(jnp.int32)
    score_B = reward.scores(self.reward_gpt, frozen['reward'], tokens_BL, last_B, positions_BL)
    return {'tokens': tokens_BL, 'positions': positions_BL, 'mask': mask_BN, 'logp': logp_BN,
            'ref_logp': ref_logp_BN, 'values': values_BN, 'score': score_B}

  def rollout(self, params, batch, *, rng, frozen):
    p = self.config.ppo
    a = self.answers(params, batch, rng, frozen)
    mask_BN = a['mask']
    kl_BN = (a['logp'] - a['ref_logp']) * mask_BN
    is_last_BN = jnp.arange(p.max_new_tokens) == mask_BN.sum(1, keepdims=True) - 1
    rewards_BN = -p.kl_coef * kl_BN + jnp.where(is_last_BN, a['score'][:, None], 0.0)
    values_BN = a['values'] * mask_BN
    advantages_BN = gae(rewards_BN, values_BN, mask_BN, p.gamma, p.lam)
    experience = {'tokens': a['tokens'], 'positions': a['positions'], 'mask': mask_BN,
                  'logp': a['logp'], 'values': values_BN,
                  'advantages': whiten(advantages_BN, mask_BN),
                  'returns': (advantages_BN + values_BN) * mask_BN}
    if p.ptx_coef:
      experience['ptx_tokens'] = batch['ptx_tokens']
    return experience, {'score': a['score'].mean(), 'kl': kl_BN.sum(1).mean(),
                        'reward': rewards_BN.sum(1).mean(),
                        'response_length': mask_BN.sum(1).mean()}

  # --- updates ------------------------------------------------------------------------------

  def weights(self, batch):
    weights = {'tokens': jnp.maximum(batch['mask'].sum(), 1.0)}
    if self.config.ppo.ptx_coef:
      weights['ptx_targets'] = jnp.float32(batch['ptx_tokens'][:, 1:].size)
    return weights

  def loss(self, params, batch, *, rng, step, weights, frozen):
    p = self.config.ppo
    logp_BN, entropy_BN, values_BN = self.policy(params, batch['tokens'], batch['positions'])
    mean = lambda x_BN: (x_BN * batch['mask']).sum() / weights['tokens']
    per_token = policy_terms(logp_BN, batch['logp'], batch['advantages'], p.clip)
    terms = {'policy_loss': mean(per_token['loss']),
             'value_loss': mean(value_terms(values_BN, batch['values'], batch['returns'],
                                            p.value_clip)),
             'entropy': mean(entropy_BN), 'clip_fraction': mean(per_token['clipped']),
             'approx_kl': mean(per_token['approx_kl'])}
    loss = terms['policy_loss'] + p.value_coef * terms['value_loss'] - p.entropy_coef * terms[
        'entropy']
    if p.ptx_coef:
      tokens_BL1 = batch['ptx_tokens']
      x_ND = self.gpt.apply({'params': params['gpt']}, tokens_BL1[:, :-1], hidden=True)
      terms['ptx_loss'], _ = losses.head_next_token_loss(
          x_ND, network.head_weight(params['gpt'], self.config.model), tokens_BL1[:, 1:],
          jnp.ones(tokens_BL1[:, 1:].shape, jnp.float32),
          logit_softcap=self.config.model.logit_softcap, normalizer=weights['ptx_targets'],
          num_tokens=self.num_tokens)
      loss = loss + p.ptx_coef * terms['ptx_loss']
    return loss, {'train_loss': loss, **terms}

  # --- validation and data ------------------------------------------------------------------

  def eval_sums(self, params, batch, frozen):
    a = self.answers(params, batch, jax.random.PRNGKey(self.config.seed), frozen)
    # A prompt is EOS and its text, so its last position is >= 1; split_batches pads with zeros.
    is_prompt_B = batch['positions'][:, -1] > 0
    kl_B = ((a['logp'] - a['ref_logp']) * a['mask']).sum(1)
    return {'score': jnp.where(is_prompt_B, a['score'], 0.0).sum(),
            'kl': jnp.where(is_prompt_B, kl_B, 0.0).sum(), 'prompts': is_prompt_B.sum()}

  def eval_metrics(self, sums):
    prompts = max(float(sums['prompts']), 1.0)
    return {'val_score': float(sums['score']) / prompts, 'val_kl': float(sums['kl']) / prompts}

  def train_dataset(self, batch_size):
    prompts = table_dataset(self.train_prompts, batch_size, self.config)
    if self.pretraining is None:
      return prompts
    windows = data.train_dataset(self.pretraining, seq_len=self.config.seq_len,
                                 batch_size=batch_size, seed=self.config.seed,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
    return prompts.map_with_index(
        lambda i, batch: {**batch, 'ptx_tokens': windows[i % len(windows)]})

  def validation_batches(self):
    arrays = self.held_out_prompts
    if self.config.ppo.ptx_coef:  # the eval step takes batch_spec's arrays; eval_sums reads none
      arrays = {**arrays, 'ptx_tokens': np.zeros((len(arrays['prompt']), self.config.seq_len + 1),
                                                 np.int32)}
    return split_batches(arrays, self.config, pad=True)

  def finish(self, params, workdir, log):
    """Logs the last held-out reward model score and KL to the reference."""
    last = metrics.last_holding(workdir, 'val_score')
    if last:
      log(f'PPO, held-out prompts at step {last["step"]}: reward model score '
          f'{last["val_score"]:.3f}, KL to the reference {last["val_kl"]:.3f} nats per answer')
