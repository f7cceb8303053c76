"""Train-step throughput: `python -m gpt_jax.bench [--config=FILE] [--config.KEY=VALUE ...]
[--sizes=4x256,6x384] [--steps=N] [--warmup=N] [--torch] [--json=OUT]`.

Builds the state and the jitted, donated train step on the config's mesh exactly as training
does, feeds it random token batches, and reports compile time, step time, tokens/s, model
FLOP/s, MFU and peak memory for each size. `--torch` also times PyTorch's nanoGPT of the
same shape on the same batch, the yardstick: eager on a CPU; on a GPU compiled (torch.compile),
with SDPA attention, fused AdamW and bfloat16 autocast when config.model.dtype is bfloat16.
"""

import os
import resource
import statistics
import sys
import time

import jax
import numpy as np

from gpt_jax import cli, files, flops, sharding, trainer
from gpt_jax.objectives import lm
from gpt_jax.errors import UserError

DEFAULT_CONFIG = 'experiments/bench_cpu.py'


def parse_sizes(text: str) -> list[tuple[int, int]]:
  """'4x256,6x384' -> [(4, 256), (6, 384)]: n_layer x n_embd, n_embd a multiple of 64."""
  sizes = []
  for item in filter(None, text.split(',')):
    try:
      n_layer, n_embd = (int(v) for v in item.lower().split('x'))
    except ValueError:
      raise UserError(f'--sizes={text}: {item!r} is not N_LAYERxN_EMBD, e.g. 4x256') from None
    if n_layer < 1 or n_embd < 64 or n_embd % 64:
      raise UserError(f'--sizes={text}: {item!r} needs n_layer >= 1 and n_embd a positive multiple '
                      'of 64 (heads are 64 wide)')
    sizes.append((n_layer, n_embd))
  if not sizes:
    raise UserError(f'--sizes={text!r} names no size; pass e.g. --sizes=4x256,6x384')
  return sizes


def timed(fn, steps: int, warmup: int) -> list[float]:
  """Seconds of each of `steps` calls of fn() (which blocks until done), after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def _step_stats(times: list[float], tokens_per_step: int, flops_per_token: float,
                peak: float) -> dict:
  median = statistics.median(times)
  q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
  tokens_per_sec = tokens_per_step / median
  return {'step_s_median': median, 'step_s_min': min(times), 'step_s_max': max(times),
          'step_s_iqr': q3 - q1, 'step_s': times, 'tokens_per_sec': tokens_per_sec,
          'model_flops_per_sec': flops_per_token * tokens_per_sec,
          'mfu': flops_per_token * tokens_per_sec / peak}


def bench_jax(config, batches: list[np.ndarray], steps: int, warmup: int, peak: float) -> dict:
  """Compile time, step times and memory of the real train step for `config`."""
  trainer.validate_config(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_divisible(config, mesh)
  objective = lm.LanguageModeling.without_data(config)  # the batches are random tokens
  tx = trainer.training_optimizer(objective, config)
  abstract = trainer.abstract(objective, tx, config, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  start = time.perf_counter()
  step = trainer.compile_train_step(objective, tx, config, mesh, abstract)
  compile_s = time.perf_counter() - start
  state = trainer.fresh_state(objective, tx, config, abstract)
  device_batches = [{'tokens': jax.device_put(b, batch_sharding)} for b in batches]
  calls = 0

  def one_step():
    nonlocal state, calls
    state, step_metrics = step(state, device_batches[calls % len(device_batches)])
    jax.block_until_ready((state, step_metrics))
    calls += 1

  times = timed(one_step, steps, warmup)
  device = jax.devices()[0]
  if device.platform == 'cpu':
    m = step.memory_analysis()
    memory = {'compiled_bytes': m.temp_size_in_bytes + m.argument_size_in_bytes +
                                m.output_size_in_bytes,
              # ru_maxrss is in KiB on Linux: the whole process so far, not this size alone.
              'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  else:
    memory = {'peak_bytes_in_use': max(d.memory_stats()['peak_bytes_in_use']
                                       for d in jax.local_devices())}
  tokens_per_step = config.batch_size * config.seq_len
  return {'compile_s': compile_s, **memory,
          **_step_stats(times, tokens_per_step, flops.flops_per_token(config.model, config.seq_len),
                        peak)}


def _torch_gpt(torch, c):
  """nanoGPT: token + learned position embeddings, pre-LN blocks (fused c_attn, SDPA, tanh-GELU
  MLP), final LayerNorm, head tied to the token embedding."""
  tnn, F = torch.nn, torch.nn.functional
  D, H = c.n_embd, c.n_head

  class Block(tnn.Module):

    def __init__(self):
      super().__init__()
      self.ln_1, self.ln_2 = tnn.LayerNorm(D, bias=c.bias), tnn.LayerNorm(D, bias=c.bias)
      self.c_attn, self.c_proj = tnn.Linear(D, 3 * D, bias=c.bias), tnn.Linear(D, D, bias=c.bias)
      self.c_fc = tnn.Linear(D, 4 * D, bias=c.bias)
      self.mlp_proj = tnn.Linear(4 * D, D, bias=c.bias)

    def forward(self, x_BLD):
      B, L, _ = x_BLD.shape
      q, k, v = (t.view(B, L, H, D // H).transpose(1, 2)
                 for t in self.c_attn(self.ln_1(x_BLD)).split(D, dim=2))
      y_BHLE = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x_BLD = x_BLD + self.c_proj(y_BHLE.transpose(1, 2).reshape(B, L, D))
      return x_BLD + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x_BLD)), approximate='tanh'))

  class GPT(tnn.Module):

    def __init__(self):
      super().__init__()
      self.wte, self.wpe = tnn.Embedding(c.vocab_size, D), tnn.Embedding(c.block_size, D)
      self.blocks = tnn.ModuleList(Block() for _ in range(c.n_layer))
      self.ln_f = tnn.LayerNorm(D, bias=c.bias)
      for p in self.parameters():
        if p.dim() > 1:
          tnn.init.normal_(p, std=c.init_std)

    def forward(self, tokens_BL, targets_BL):
      x_BLD = self.wte(tokens_BL) + self.wpe(torch.arange(tokens_BL.shape[1],
                                                          device=tokens_BL.device))
      for block in self.blocks:
        x_BLD = block(x_BLD)
      logits_BLV = self.ln_f(x_BLD) @ self.wte.weight.T
      return F.cross_entropy(logits_BLV.flatten(0, 1), targets_BL.flatten())

  return GPT()


def bench_torch(config, batches: list[np.ndarray], steps: int, warmup: int, peak: float) -> dict:
  """Step times of PyTorch's nanoGPT of config's shape, trained like nanoGPT: on the GPU if
  there is one (compiled, fused AdamW, bfloat16 autocast for a bfloat16 config, as nanoGPT's
  train.py runs), else eagerly on the CPU."""
  try:
    import torch
  except ImportError:
    raise UserError("--torch needs PyTorch; pip install -e '.[hf]'") from None
  c, o = config.model, config.optim
  gpu = torch.cuda.is_available()
  device = 'cuda' if gpu else 'cpu'
  torch.manual_seed(config.seed)
  gpt = _torch_gpt(torch, c).to(device)
  params = [p for p in gpt.parameters() if p.requires_grad]
  groups = [{'params': [p for p in params if p.dim() > 1], 'weight_decay': o.weight_decay},
            {'params': [p for p in params if p.dim() <= 1], 'weight_decay': 0.0}]
  adamw = torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, fused=gpu)
  forward = torch.compile(gpt) if gpu else gpt
  autocast = torch.autocast(device, torch.bfloat16, enabled=c.dtype == 'bfloat16')
  tensors = [torch.from_numpy(b.astype(np.int64)).to(device) for b in batches]
  calls = 0

  def one_step():
    nonlocal calls
    tokens_BL1 = tensors[calls % len(tensors)]
    with autocast:
      loss = forward(tokens_BL1[:, :-1], tokens_BL1[:, 1:])
    adamw.zero_grad(set_to_none=True)
    loss.backward()
    if o.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
    adamw.step()
    if gpu:
      torch.cuda.synchronize()
    calls += 1

  times = timed(one_step, steps, warmup)
  return {'device': device, 'compiled': gpu, 'threads': torch.get_num_threads(),
          'torch_version': torch.__version__,
          **_step_stats(times, config.batch_size * config.seq_len,
                        flops.flops_per_token(c, config.seq_len), peak)}


def run_bench(config, *, sizes=None, steps: int = 10, warmup: int = 3, with_torch: bool = False,
              log=print) -> dict:
  """Benchmarks config (at each (n_layer, n_embd) of `sizes`, else as it is); returns the report."""
  if steps < 1 or warmup < 0:
    raise UserError(f'--steps={steps} must be >= 1 and --warmup={warmup} >= 0')
  peak = flops.device_peak_flops() * jax.device_count()
  rng = np.random.default_rng(config.seed)
  batches = [rng.integers(0, config.model.vocab_size, (config.batch_size, config.seq_len + 1),
                          dtype=np.int32) for _ in range(2)]
  results = []
  for n_layer, n_embd in sizes or [(config.model.n_layer, config.model.n_embd)]:
    c = config.copy_and_resolve_references()
    if sizes:
      c.model.update(n_layer=n_layer, n_embd=n_embd, n_head=n_embd // 64, n_kv_head=n_embd // 64)
    log(f'{n_layer}x{n_embd}: compiling and timing {warmup} + {steps} steps')
    result = {'size': f'{n_layer}x{n_embd}', 'n_layer': n_layer, 'n_embd': n_embd,
              'n_head': c.model.n_head, 'params': flops.param_count(c.model),
              'flops_per_token': flops.flops_per_token(c.model, c.seq_len),
              'jax': bench_jax(c, batches, steps, warmup, peak)}
    if with_torch:
      result['torch'] = bench_torch(c, batches, steps, warmup, peak)
      result['jax_over_torch'] = (result['jax']['tokens_per_sec'] /
                                  result['torch']['tokens_per_sec'])
    results.append(result)
  device = jax.devices()[0]
  return {'device': device.device_kind, 'platform': device.platform,
          'device_count': jax.device_count(), 'peak_flops': peak, 'jax_version': jax.__version__,
          'xla_flags': os.environ.get('XLA_FLAGS', ''), 'batch_size': config.batch_size,
          'seq_len': config.seq_len, 'tokens_per_step': config.batch_size * config.seq_len,
          'vocab_size': config.model.vocab_size, 'dtype': config.model.dtype, 'steps': steps,
          'warmup': warmup, 'results': results}


def format_table(report: dict) -> str:
  rows = [('size', 'params', 'compile s', 'step s (min-max)', 'tokens/s', 'TFLOP/s', 'MFU',
           'memory MiB', 'torch tok/s', 'torch MFU', 'jax/torch')]
  for r in report['results']:
    j, t = r['jax'], r.get('torch')
    memory = j.get('peak_bytes_in_use', j.get('compiled_bytes'))
    rows.append((r['size'], f"{r['params'] / 1e6:.2f}M", f"{j['compile_s']:.1f}",
                 f"{j['step_s_median']:.3f} ({j['step_s_min']:.3f}-{j['step_s_max']:.3f})",
                 f"{j['tokens_per_sec']:,.0f}", f"{j['model_flops_per_sec'] / 1e12:.3f}",
                 f"{j['mfu']:.3f}", f"{memory / 2**20:,.0f}",
                 f"{t['tokens_per_sec']:,.0f}" if t else '-', f"{t['mfu']:.3f}" if t else '-',
                 f"{r['jax_over_torch']:.2f}" if t else '-'))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ['  '.join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
  return '\n'.join([lines[0], '  '.join('-' * w for w in widths), *lines[1:]])


def main(argv=None) -> None:
  argv = sys.argv if argv is None else argv

  def bench():
    parser = cli.ArgumentParser(prog='python -m gpt_jax.bench', description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', default='', help='n_layer x n_embd list, e.g. 4x256,6x384')
    parser.add_argument('--steps', type=int, default=10, help='timed steps')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps before them')
    parser.add_argument('--torch', action='store_true',
                        help="also time PyTorch's nanoGPT (compiled on a GPU, eager on a CPU)")
    parser.add_argument('--json', default='', help='report file; default runs/bench/<name>.json')
    config_args = [a for a in argv[1:] if a.startswith('--config')]
    args = parser.parse_args([a for a in argv[1:] if not a.startswith('--config')])
    specs = [a.split('=', 1)[1] for a in config_args if a.startswith('--config=')]
    spec = specs[-1] if specs else DEFAULT_CONFIG
    config = cli.load_experiment(spec)
    cli._apply_overrides(config, [argv[0]] + [a for a in config_args if '=' in a and
                                              not a.startswith('--config=')], lambda _: None)
    sizes = parse_sizes(args.sizes) if args.sizes else None
    report = run_bench(config, sizes=sizes, steps=args.steps, warmup=args.warmup,
                       with_torch=args.torch, log=lambda text: print(text, file=sys.stderr))
    report['config'] = spec
    print(format_table(report))
    path = args.json or os.path.join('runs', 'bench', os.path.basename(cli.default_workdir(spec)) +
                                     '.json')
    files.write_json(path, report)
    print(f'wrote {path}')

  cli.run(bench)


if __name__ == '__main__':
  main()
