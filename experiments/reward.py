"""The reward run of the preference-tuning demo (experiments/preference.py trains the whole chain),
standalone, with the chain's settings for it:
`python -m gpt_jax.train --config=experiments/reward.py`
after the chain's earlier runs (runs/preference/sft).

Its data are the shipped pairs, held out included (data.held_out_tasks): for your own pairs pass
--config.data.tasks=FILES and --config.data.held_out_tasks=FILES, or an empty one to hold out
preference.held_out of your prompts. Another start: --config.init_from=DIR.
"""

import os

from gpt_jax import preference_study


def get_config():
  return preference_study.step_config(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), 'preference.py'), 'reward')
