"""The ppo run of the preference-tuning demo (experiments/preference.py trains the whole chain),
standalone: `python -m gpt_jax.train --config=experiments/ppo.py` after the chain's SFT and reward
runs (runs/preference/sft, runs/preference/reward), with the chain's settings for it. Any other
start, reward model, data or settings on the command line as usual, e.g.
--config.init_from=DIR --config.ppo.reward_model=DIR --config.data.tasks=FILES.
"""

import os

from gpt_jax import cli, preference_study


def get_config():
  chain = cli.load_experiment(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           'preference.py'))
  return preference_study.run_configs(chain, os.path.join('runs', 'preference'))['ppo'][0]
