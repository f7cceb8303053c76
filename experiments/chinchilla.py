"""Chinchilla-style scaling-law sweep (Hoffmann et al. 2022): the README's main job.

`python -m gpt_jax.train --config=experiments/chinchilla.py[:cpu|gpu|tpu]` trains, for each
compute budget C, `sizes_per_budget` model sizes from the width ladder (depth from the
width-per-layer rule), each on the D = C / FLOPs-per-token tokens the budget buys, at a learning
rate ∝ width^-lr_width_exponent. With the default warmup-stable-decay schedule each size trains
once and the shorter points branch cooldowns from it (gpt_jax/sweep.py). A learning-rate probe at
the narrowest and widest size, one point at 3 seeds and with a cosine schedule, then the fits
(gpt_jax/scaling/) predict the loss of a run at 3× the top budget, which is trained last to
check the prediction: DIR/scaling/report.md.

cpu: near character-level Shakespeare (vocab 320: 4.7M training tokens), budgets 5e10–2e12
(40×), models of 4k–370k parameters. The compute-optimal runs of the top budgets need more
tokens than one epoch holds, so the corpus is repeated up to 4 times, which costs little
(Muennighoff et al. 2023; the parametric fit uses their repetition-adjusted D). About 10 min on
2 cores. gpu/tpu: budgets 1e17–1e19 FLOPs; they need a corpus of billions of tokens
(--config.data.corpus=...) and an accelerator.
"""

import ml_collections

from gpt_jax.config import base_config
from gpt_jax.errors import UserError

ACCELERATOR = dict(
    budgets=(1e17, 3e17, 1e18, 3e18, 1e19),
    widths=(256, 384, 512, 640, 768, 1024, 1280, 1536, 2048),  # n_embd ladder
    width_per_layer=64, head_dim=128, lr=3e-4, lr_width=1024, lr_width_exponent=1.0,
    tokens_per_param=20.0, seq_len=2048, batch_size=256, vocab_size=32000, warmup_steps=200,
    num_epochs=1)

VARIANTS = {
    'cpu': dict(
        # 40×. Below 5e10 the optimum lies under the smallest sensible model (width 8: 4k
        # parameters, most of them embeddings) and the wide sizes get ~100 steps: a 2e10 budget
        # was tried and its parabola's minimum fell outside its sizes.
        budgets=(5e10, 1.25e11, 3e11, 8e11, 2e12),
        widths=(8, 12, 16, 24, 32, 48, 64, 96, 128),  # n_embd ladder
        # lr ∝ width^-1/3: a pilot found 1/width too steep here (width 8 best at 0.5× of it,
        # width 64 at 2×); at these widths the embeddings are a large share of the parameters.
        width_per_layer=32, head_dim=16, lr=1e-2, lr_width=16, lr_width_exponent=1 / 3,
        tokens_per_param=100.0, seq_len=128, batch_size=8, vocab_size=320, warmup_steps=20,
        num_epochs=4),
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
  c.eval_batches = 64  # each run is evaluated once, at its end
  c.data.num_epochs = v['num_epochs']
  # RoPE: with learned positions the CPU sweep's tiny models sat on a loss plateau near 2.4–2.5
  # for a seed-dependent number of steps (one point: 2.07, 2.42, 2.07 over 3 seeds; with RoPE
  # 1.89, 1.92, 1.87).
  c.model.update(vocab_size=v['vocab_size'], block_size=v['seq_len'], position='rope')
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
  sweep.schedule = 'wsd'  # 'wsd': one constant-LR trunk per size, cooldowns branched from it;
  # 'cosine': every point its own run, decayed over all of it. WSD decays over the last
  # optim.decay_fraction of each run, shaped optim.decay_shape
  sweep.warmup_steps = v['warmup_steps']  # the same for every size, so branches share the trunk's
  sweep.min_steps = 50
  sweep.lr_probe = (0.5, 2.0)  # lr multipliers also tried at the narrowest and widest width
  sweep.seeds = 3  # the middle budget's middle size trained with this many seeds (noise)
  sweep.compare_cosine = True  # wsd: that point also trained with a cosine schedule
  sweep.verify_factor = 3.0  # the verification run's budget, × the top budget
  sweep.workers = 0  # runs trained at once, each in its own process: 0 = one per core on a CPU
  # (its models are too small to keep two cores busy), 1 on an accelerator
  return c
