"""Chinchilla-style scaling-law sweep (Hoffmann et al. 2022): the README's main job.

`python -m gpt_jax.train --config=experiments/chinchilla.py[:cpu|gpu|tpu]` trains, for each
compute budget C, `sizes_per_budget` model sizes from the width ladder (depth from the
width-per-layer rule), each on the D = C / FLOPs-per-token tokens the budget buys, with a cosine
schedule to the end of its own run and a learning rate scaled by width. Then it fits the scaling
laws (gpt_jax/scaling.py) and writes DIR/scaling/report.md with plots.

cpu: near character-level Shakespeare (vocab 320: 4.7M training tokens). One epoch of it caps
the budgets: beyond about 3e11 FLOPs the compute-optimal models would need more tokens than the
corpus has. About 7 min on 2 cores. gpu/tpu: realistic budgets 1e17–1e19 FLOPs; they need a corpus of billions of tokens
(--config.data.corpus=...) and an accelerator.
"""

import ml_collections

from gpt_jax.config import base_config
from gpt_jax.errors import UserError

ACCELERATOR = dict(
    budgets=(1e17, 3e17, 1e18, 3e18, 1e19),
    widths=(256, 384, 512, 640, 768, 1024, 1280, 1536, 2048),  # n_embd ladder
    width_per_layer=64, head_dim=128, lr=3e-4, lr_width=1024, lr_width_exponent=1.0,
    tokens_per_param=20.0, seq_len=2048, batch_size=256, vocab_size=32000)

VARIANTS = {
    'cpu': dict(
        budgets=(5e10, 1e11, 2e11, 3e11),
        widths=(8, 12, 16, 24, 32, 48, 64),  # n_embd ladder
        width_per_layer=32, head_dim=16, lr=1.2e-2, lr_width=16, lr_width_exponent=1.0,
        tokens_per_param=100.0, seq_len=128, batch_size=4, vocab_size=320),
    'gpu': dict(ACCELERATOR, head_dim=64, seq_len=1024),
    'tpu': ACCELERATOR,
}


def get_config(variant: str = 'cpu') -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise UserError(f'unknown chinchilla variant {variant!r}; pick one of {", ".join(VARIANTS)}')
  v = VARIANTS[variant]
  c = base_config()
  c.seq_len = v['seq_len']
  c.batch_size = v['batch_size']
  c.eval_batches = 16
  c.model.update(vocab_size=v['vocab_size'], block_size=v['seq_len'])
  c.optim.update(min_lr_ratio=0.1, weight_decay=0.1)
  if variant != 'cpu':
    c.model.update(dtype='bfloat16', attention='cudnn' if variant == 'gpu' else 'xla')

  c.sweep = sweep = ml_collections.ConfigDict()
  sweep.budgets = v['budgets']
  sweep.flops = '6nd'  # or 'chinchilla': the Appendix F count, embeddings and attention included
  sweep.widths = v['widths']
  sweep.sizes_per_budget = 5  # consecutive widths, centred on N = sqrt(C / (6 · tokens/param))
  sweep.tokens_per_param_guess = v['tokens_per_param']  # only centres the sizes; the fits find
  # the real optimum. Chinchilla's 20 at scale; far more at the CPU sweep's few-thousand-parameter
  # sizes (a pilot run put the optimum of 1e11 FLOPs near 14k parameters and 1.2M tokens).
  sweep.width_per_layer = v['width_per_layer']  # n_layer = max(min_layers, round(width / this))
  sweep.min_layers = 2
  sweep.head_dim = v['head_dim']
  sweep.lr = v['lr']  # at width lr_width; lr ∝ width^-lr_width_exponent
  sweep.lr_width = v['lr_width']
  sweep.lr_width_exponent = v['lr_width_exponent']
  sweep.warmup_fraction = 0.05
  sweep.evals_per_run = 8  # points of each validation curve (approach 1 uses them)
  sweep.min_steps = 50
  return c
