"""gpt_jax: GPT-family language models in JAX/Flax."""

import os

# XLA:CPU's YNNPACK fusion folds the LayerNorm scale and other elementwise work into the matmuls
# of the (flat-activation) train step and makes it slower: measured on a 2-core Zen 3, 4-layer
# 256-wide GPT, 8192 tokens/step, 3.1 s -> 2.7 s per step with it off. An empty value turns it
# off; the flag only affects XLA:CPU. It must be in XLA_FLAGS before jax starts its backend, and
# a user's own setting of it wins.
if 'xla_cpu_experimental_ynn_fusion_type' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_cpu_experimental_ynn_fusion_type=').strip()
