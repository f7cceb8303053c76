"""Continued pretraining on a new domain with vocabulary expansion (Swallow, Fujii et al. 2024):
the README demo model (runs/shakespeare, experiments/shakespeare.py) taught Python: the standard
library's own top-level modules, a domain every machine has and Shakespeare lacks.

  python -m gpt_jax.train --config=experiments/shakespeare.py --workdir=runs/shakespeare  # once
  python -m gpt_jax.train --config=experiments/swallow.py --workdir=runs/swallow

trains the four runs of gpt_jax.domain_study (continued pretraining with the base tokenizer, with
the tokenizer extended and its new rows the mean of their parts or random, and from scratch with
a tokenizer of its own), each for `steps` and for `domain.time_budget_s`, and writes
DIR/domain_report.md.
"""

import os
import sysconfig

import ml_collections

from gpt_jax import cli


def get_config():
  c = cli.load_experiment(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       'shakespeare.py'))
  c.init_from = 'runs/shakespeare'
  c.data.corpus = os.path.join(sysconfig.get_paths()['stdlib'], '*.py')
  c.steps = 200
  c.eval_every = 100
  c.checkpoint_every = 100
  c.sample.num = 0
  c.optim.update(lr=1e-3, warmup_steps=20)  # continued pretraining: half the base's peak
  c.domain = domain = ml_collections.ConfigDict()
  domain.pieces = 1024  # new pieces, at most, appended to the base's 2048
  domain.time_budget_s = 60.0  # the equal-time runs' training
  return c
