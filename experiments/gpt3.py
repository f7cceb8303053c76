"""The GPT-3 model sizes (Brown et al. 2020, Table 2.1), selected by name:
`--config=experiments/gpt3.py:small` (small, medium, large, xl, 2.7b, 6.7b, 13b, 175b).

All use a 2048-token context, a 3e5-step-ish token budget and batch sizes in tokens as in the
paper (here in sequences of 2048). They need accelerators; see tpu/ and the README.
"""

from gpt_jax.config import base_config
from gpt_jax.errors import UserError

#        name        n_layer  d_model  n_heads  d_head  batch (tokens)  lr
SIZES = {
    'small':  (12,      768,     12,      64,     0.5e6,   6.0e-4),  # 125M
    'medium': (24,     1024,     16,      64,     0.5e6,   3.0e-4),  # 350M
    'large':  (24,     1536,     16,      96,     0.5e6,   2.5e-4),  # 760M
    # xl: the paper prints 24 heads, which 2048 = 16·128 contradicts
    'xl':     (24,     2048,     16,     128,     1e6,     2.0e-4),  # 1.3B
    '2.7b':   (32,     2560,     32,      80,     1e6,     1.6e-4),
    '6.7b':   (32,     4096,     32,     128,     2e6,     1.2e-4),
    '13b':    (40,     5120,     40,     128,     2e6,     1.0e-4),  # the paper prints 5140
    '175b':   (96,    12288,     96,     128,     3.2e6,   0.6e-4),
}


def get_config(size: str = 'small'):
  if size not in SIZES:
    raise UserError(f'unknown GPT-3 size {size!r}; pick one of {", ".join(SIZES)}')
  n_layer, d_model, n_head, d_head, batch_tokens, lr = SIZES[size]
  c = base_config()
  c.seq_len = 2048
  c.batch_size = int(batch_tokens // c.seq_len)
  c.steps = 300_000_000_000 // int(batch_tokens)  # GPT-3 trained every size on 300B tokens
  c.model.update(vocab_size=50304, n_layer=n_layer, n_embd=d_model, n_head=n_head,
                 n_kv_head=n_head, head_dim=d_head, block_size=2048, dtype='bfloat16')
  c.optim.update(lr=lr, warmup_steps=375_000_000 // int(batch_tokens), min_lr_ratio=0.1,
                 b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
  c.eval_every = 1000
  c.checkpoint_every = 1000
  return c
