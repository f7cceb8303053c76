"""Shakespeare against the clock: the README demo's model and data (experiments/shakespeare.py)
trained for a wall-clock budget (time_budget_s: the steps come from the measured speed) with the
modded-nanogpt speedrun's recipe (Jordan et al. 2024) where it carries over to a 2 M-parameter
model on a CPU.

  --config=experiments/speedrun.py           the recipe, 300 s of training
  --config=experiments/speedrun.py:baseline  the demo's own settings (AdamW), 300 s
  --config=experiments/speedrun.py:ablation  the ablation study (gpt_jax.ablation_study): the
                                             baseline, + each change, + all, at 60 s and 300 s

Change the budget with --config.time_budget_s=60. Validation scores the whole held-out split.
"""

import os

import ml_collections

from gpt_jax import ablation_study, cli
from gpt_jax.errors import UserError

# Each change of the recipe over the demo's settings, as the ablation study applies them.
RECIPE = {
    'Muon': {'optim': {'name': 'muon'}},  # on the hidden matrices; AdamW on the rest
    'QK-norm': {'model': {'qk_norm': True}},
    'ReLU²': {'model': {'mlp': 'relu2'}},
    'zero-init projections': {'model': {'zero_init_proj': True}},
    'untied head, logit soft-cap 15': {'model': {'tie_embeddings': False, 'logit_softcap': 15.0}},
    # Muon needs little warmup; the last 40% of the steps cool down to 0 (modded-nanogpt).
    'short warmup, WSD cooldown': {'optim': {'warmup_steps': 10, 'schedule': 'wsd',
                                             'decay_fraction': 0.4, 'min_lr_ratio': 0.0}},
    'AdamW lr 4e-3': {'optim': {'lr': 4e-3}},  # with Muon: the embeddings' and the head's
    'batch 16': {'batch_size': 16},  # twice the steps for the same tokens
}


def baseline() -> ml_collections.ConfigDict:
  c = cli.load_experiment(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       'shakespeare.py'))
  c.time_budget_s = 300.0
  c.data.num_epochs = 4  # room for the steps of a fast recipe or a long budget
  c.eval_every = 250
  c.eval_batches = 0  # the whole validation split
  c.checkpoint_every = 1000
  c.sample.num = 0
  return c


def get_config(arg: str = ''):
  c = baseline()
  if arg == 'baseline':
    return c
  if arg == 'ablation':
    c.ablation = ml_collections.ConfigDict()
    c.ablation.budgets = (60.0, 300.0)
    c.ablation.changes = tuple(RECIPE.items())  # in this order
    return c
  if arg:
    raise UserError(f'--config=experiments/speedrun.py:{arg}: unknown; use no suffix, :baseline '
                    'or :ablation')
  for name, settings in RECIPE.items():
    ablation_study.apply(c, settings, name)
  return c
