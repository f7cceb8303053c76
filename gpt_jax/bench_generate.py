"""Offloaded generation's throughput (FlexGen, Sheng et al. 2023, §6), a benchmark that prints
figures, not a test:

`python -m gpt_jax.bench_generate --disk_dir=DIR [--shape=gpt2-xl] [--prompt_len=16]
 [--gen_len=8] [--num_prompts=32] [--device_gib=1] [--host_gib=0.5] [--rows=a,b,c,d,e]`

A model of a GPT-2 (or OPT) shape with random weights (bfloat16, computing in --dtype) is
written to DIR once, a layer at a time, and reused; every row then generates gen_len greedy
tokens for num_prompts random prompts of prompt_len tokens under the same budgets, each in a
process of its own (so that its peak resident memory is its own):
  a  row by row, as Hugging Face Accelerate's offloading runs: one batch at a time, its KV cache
     on the device, the weights on the device as far as the budget allows after it, then host
     memory, then disk (the best such batch size by the cost model)
  b  Hugging Face transformers' generate on the same weights, Accelerate's offloading under the
     same budgets (max_memory), at row a's batch size; its offloaded files' cached pages are
     dropped at every token (when the hf extra and accelerate are installed)
  c  gpt_jax's policy: the linear program's block and placement, the zig-zag schedule
  d  c with the weights and the KV cache in 4 bits (offload.compression: FlexGen's min/max
     group-wise numerics in groups of 64), decompressed before use
  e  everything in the device's memory (gpt_jax.sample over all prompts), when the model fits
     the device budget
`python -m gpt_jax.bench_generate --quality=RUN [--prompt_len --gen_len --num_prompts]` reports
instead what the 4-bit weights and cache cost a trained run: the perplexity of its validation
text and the share of greedy tokens that stay the same (see `quality`).

Compiling is done before the clock starts (zigzag.compile_steps); a row's tokens/s is the new
tokens over the wall time of prefill and decoding, as the paper counts it. On a CPU the device
tier is host memory under the device budget (JAX's memory kinds are the same RAM) and the disk
is read with O_DIRECT, so neither tier is flattered by the page cache.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from gpt_jax import (cli, config as config_lib, flops, hf, model, network, quant, runs, sample,
                     scoring)
from gpt_jax.errors import UserError
from gpt_jax.offload import compression, disk, policy as policy_lib, tiers, zigzag
from gpt_jax.offload.policy import GIB

SHAPES = {  # n_layer, n_embd, n_head (GPT-2: Radford et al. 2019; OPT: Zhang et al. 2022)
    'gpt2': (12, 768, 12), 'gpt2-medium': (24, 1024, 16), 'gpt2-large': (36, 1280, 20),
    'gpt2-xl': (48, 1600, 25), 'opt-6.7b': (32, 4096, 32), 'opt-30b': (48, 7168, 56),
}
ROWS = {'a': 'row by row (Accelerate\'s schedule)',
        'b': 'Hugging Face transformers + Accelerate disk offload',
        'c': 'gpt_jax policy (LP, zig-zag)', 'd': 'gpt_jax policy, 4-bit weights and cache',
        'e': 'all in device memory'}


def model_config(shape: str, quantized: bool = False,
                 dtype: str = 'float32') -> ml_collections.ConfigDict:
  m = config_lib.base_config().model
  n_layer, n_embd, n_head = SHAPES[shape]
  m.update(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=n_head, vocab_size=50304,
           block_size=2048, position='learned', norm='layernorm', mlp='gelu', bias=True,
           tie_embeddings=True, dtype=dtype, param_dtype='bfloat16', dropout=0.0)
  return compression.quantized_config(m) if quantized else m


def weights_store(args) -> disk.DiskStore:
  """DIR's store of the shape's random weights, written now where missing (a layer at a time):
  float layers as 'weights_j', their 4-bit form as 'int4_j', the rest as 'resident'."""
  store = disk.DiskStore(os.path.join(args.disk_dir, f'weights_{args.shape}'))
  m = model_config(args.shape)
  block = model.Block(ml_collections.FrozenConfigDict(m.to_dict()))
  init = jax.jit(lambda rng: nn.meta.unbox(block.init(
      rng, np.zeros((1, m.n_embd), np.float32), np.zeros((1, 1), np.int32), None, True,
      False)['params']))
  for j in range(m.n_layer):
    if f'weights_{j}' not in store:
      store.write(f'weights_{j}', tiers.flat(init(jax.random.key(j + 1))))
    if 'd' in args.rows and f'int4_{j}' not in store:
      layer = tiers.nested(store.read(f'weights_{j}'))
      store.write(f'int4_{j}', tiers.flat(compression.quantize_layer(layer, m)))
  if 'resident' not in store:
    empty = m.copy_and_resolve_references()
    empty.n_layer = 0
    store.write('resident', tiers.flat(jax.jit(
        lambda: model.init_params(network.build(empty), jax.random.key(0), 1))()))
  return store


def _prompts(args) -> list[list[int]]:
  return np.random.default_rng(0).integers(0, 50257, (args.num_prompts, args.prompt_len)).tolist()


def run_row(args) -> dict:
  """One row, in this process: its policy, tokens/s, seconds, peak RSS and disk bytes read."""
  store = weights_store(args)
  quantized = args.row == 'd'
  m = model_config(args.shape, quantized, args.dtype)
  gpt = network.build(m)
  prefix = 'int4' if quantized else 'weights'
  codec = compression.cache_codec(m) if quantized else None
  first = tiers.nested(store.read(f'{prefix}_0'))
  workload = zigzag.workload(m, args.prompt_len, args.gen_len, first, codec)
  prompts = _prompts(args)
  if args.row == 'e':
    return _all_in_memory(args, gpt, m, store, workload, prompts)
  machine = zigzag.machine(args.device_gib * GIB, args.host_gib * GIB, disk_budget(args),
                           args.disk_dir, gpt.config, first)
  if args.row == 'b':
    return _hugging_face(args, m, store, workload, prompts, machine)
  if args.row == 'a':
    chosen = _row_by_row(args, workload, machine)
  else:
    chosen = policy_lib.search(workload, machine, fixed=zigzag.FIXED_FRACTIONS,
                               max_block=args.num_prompts)
  runtime = _status_gib('VmRSS')  # JAX (or torch) alone
  off = zigzag.Offloaded.place(gpt, tiers.nested(store.read('resident')),
                               lambda j: tiers.nested(store.read(f'{prefix}_{j}')),
                               chosen.weights, store, prefix)
  settings = dict(temperature=0.0, top_k=0, top_p=1.0, num_tokens=None)
  zigzag.compile_steps(off, chosen.batch_size, args.prompt_len, args.gen_len,
                       chosen.attention_on_host, **settings)
  _reset_peak()
  start, read = time.perf_counter(), _storage_read()
  rows = [row for block in zigzag.generate_blocks(
      off, chosen.cache, prompts, batch_size=chosen.batch_size, num_batches=chosen.num_batches,
      max_new_tokens=args.gen_len, store=store, codec=codec) for row in block]
  seconds = time.perf_counter() - start
  for group in [g for g in store.index if g.startswith('cache_')]:
    store.remove(group)
  return _result(args, chosen.describe(), sum(map(len, rows)), seconds,
                 _storage_read() - read, runtime)


def _row_by_row(args, workload, machine) -> policy_lib.Policy:
  """Row a's policy (row b runs at its batch size): one batch at a time, its cache on the
  device, the best batch size and weight placement for that by the cost model."""
  return policy_lib.search(workload, machine, num_batches=(1,), attention_on_host=(False,),
                           fixed=dict(zigzag.FIXED_FRACTIONS, cache=(1.0, 0.0, 0.0)),
                           max_block=args.num_prompts)


def _full_params(store: disk.DiskStore, m) -> dict:
  params = dict(tiers.nested(store.read('resident')))
  params.update({f'h_{j}': tiers.nested(store.read(f'weights_{j}')) for j in range(m.n_layer)})
  return params


class _DropPageCache:
  """A transformers logits processor (called once per new token) that drops the page cache of
  every file under `folders`, so that Accelerate's offloaded weights (memory-mapped from its
  offload folder, or from the safetensors checkpoint itself) are read from the disk at each
  step, as gpt_jax's O_DIRECT tier reads them."""

  def __init__(self, *folders: str):
    self.folders = folders

  def __call__(self, input_ids, scores):
    for folder in self.folders:
      for root, _, names in os.walk(folder):
        for name in names:
          fd = os.open(os.path.join(root, name), os.O_RDONLY)
          try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
          finally:
            os.close(fd)
    return scores


def _hugging_face(args, m, store, workload, prompts, machine) -> dict:
  """Row b: transformers' generate on the same weights (exported by gpt_jax.hf), dispatched by
  Accelerate under the device and host budgets (its max_memory for the CPU), the rest offloaded
  to disk, in batches of row a's size (cache in memory, row by row)."""
  try:
    import accelerate
    import torch
    import transformers
  except ImportError:
    return {'row': 'b', 'skipped': 'transformers, torch or accelerate is not installed '
            '(pip install -e .[hf])'}
  hf_dir = os.path.join(args.disk_dir, f'hf_{args.shape}')
  if not os.path.exists(hf_dir):
    hf.export((m, _full_params(store, m)), hf_dir)
  batch = _row_by_row(args, workload, machine).batch_size
  runtime = _status_gib('VmRSS')  # JAX (or torch) alone
  config = transformers.AutoConfig.from_pretrained(hf_dir)
  with accelerate.init_empty_weights():
    net = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
  net.tie_weights()
  budget = int((args.device_gib + args.host_gib) * GIB)
  device_map = accelerate.infer_auto_device_map(net, max_memory={'cpu': budget},
                                                no_split_module_classes=['GPT2Block'])
  offload = tempfile.mkdtemp(prefix='hf_offload_', dir=args.disk_dir)
  try:
    net = accelerate.load_checkpoint_and_dispatch(net, hf_dir, device_map=device_map,
                                                  offload_folder=offload, dtype=torch.bfloat16)
    drop = transformers.LogitsProcessorList([_DropPageCache(offload, hf_dir)])
    _reset_peak()
    start, tokens, read = time.perf_counter(), 0, _storage_read()
    with torch.inference_mode():
      for first in range(0, len(prompts), batch):
        ids = torch.tensor(prompts[first:first + batch])
        out = net.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=args.gen_len, min_new_tokens=args.gen_len,
                           pad_token_id=0, logits_processor=drop)
        tokens += out[:, ids.shape[1]:].numel()
    seconds, read = time.perf_counter() - start, _storage_read() - read
  finally:
    shutil.rmtree(offload, ignore_errors=True)
  on_disk = sum(1 for place in device_map.values() if place == 'disk')
  return _result(args, f'batch {batch}; {on_disk} of {len(device_map)} modules on disk',
                 tokens, seconds, read, runtime)


def _all_in_memory(args, gpt, m, store, workload, prompts) -> dict:
  size = (workload.n_layer * workload.layer_params + workload.other_params) * workload.weight_bytes
  if size > args.device_gib * GIB:
    return {'row': 'e', 'skipped': f'{size / GIB:.2f} GiB of weights exceed the device budget'}
  runtime = _status_gib('VmRSS')  # JAX (or torch) alone
  params = tiers.to_device(_full_params(store, m))
  sample.generate(gpt, params, prompts[:1] * len(prompts), max_new_tokens=args.gen_len)  # compile
  _reset_peak()
  start, read = time.perf_counter(), _storage_read()
  rows = sample.generate(gpt, params, prompts, max_new_tokens=args.gen_len)
  seconds = time.perf_counter() - start
  return _result(args, f'one batch of {len(prompts)}', sum(map(len, rows)), seconds,
                 _storage_read() - read, runtime)


def _status_gib(field: str) -> float:
  """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM its peak)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(f'{field}:'):
        return int(line.split()[1]) * 1024 / GIB
  raise UserError(f'/proc/self/status has no {field}; run the benchmark on Linux')


def _storage_read() -> int:
  """Bytes this process has had read from storage (/proc/self/io read_bytes: page-cache
  misses and O_DIRECT reads, every thread's), whichever library read them."""
  with open('/proc/self/io') as f:
    return next(int(line.split()[1]) for line in f if line.startswith('read_bytes:'))


def _reset_peak() -> None:
  """Restarts the count of peak resident memory (Linux's clear_refs 5): generation's peak, not
  the placement's or the compiler's."""
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')


def _result(args, policy: str, tokens: int, seconds: float, disk_bytes: int,
            runtime_gib: float) -> dict:
  stats = jax.devices()[0].memory_stats() or {}  # an accelerator's; none on a CPU
  return {'row': args.row, 'policy': policy, 'tokens': tokens, 'seconds': round(seconds, 2),
          'tokens_per_s': tokens / seconds, 'runtime_gib': runtime_gib,
          'peak_rss_gib': _status_gib('VmHWM'), 'disk_read_gib': disk_bytes / GIB,
          'device_peak_gib': stats.get('peak_bytes_in_use', 0) / GIB}


def compute_bound(m, prompt_len: int, gen_len: int, peak: float) -> float:
  """Tokens/s that no schedule can beat on a device of `peak` FLOP/s, whatever it keeps in
  memory: each prompt's matmuls alone, 2 FLOPs per weight and token (Kaplan et al. 2020) over
  the blocks for its prompt_len + gen_len − 1 positions (the last new token is never fed back)
  and over the head for its gen_len new tokens, at that peak; attention and I/O left out."""
  blocks = flops.param_count(m, embeddings=False)
  per_prompt = 2 * blocks * (prompt_len + gen_len - 1) + 2 * m.vocab_size * m.n_embd * gen_len
  return gen_len * peak / per_prompt


def disk_budget(args) -> float:
  return args.disk_gib * GIB or float(os.statvfs(args.disk_dir).f_bavail *
                                      os.statvfs(args.disk_dir).f_frsize)


def quality(args) -> None:
  """What 4-bit weights and cache cost a trained run (--quality=RUN): on windows of its
  validation split (a prompt of prompt_len tokens, then gen_len more), the perplexity of the
  continuations under teacher forcing and the share of greedy tokens equal to the float
  model's, each variant through the same offloaded schedule (all on the device)."""
  run = runs.load(args.quality, what='--quality')
  c = run.config.model
  if args.data:
    val = scoring.file_tokens(scoring.read_texts(args.data, 'text'), run.tokenizer)
  else:
    try:
      val = scoring.val_tokens(run)
    except UserError:
      raise UserError(f'--quality={args.quality}: its validation split cannot be prepared again '
                      '(its corpus moved, or now gives another tokenizer); pass --data=FILE, a '
                      '.txt or .jsonl ("text" field) to score instead') from None
  width = args.prompt_len + args.gen_len
  if len(val) <= width:
    raise UserError(f'the text to score is {len(val)} tokens, not more than --prompt_len + '
                    f'--gen_len = {width}; lower them or give more text')
  starts = np.linspace(0, len(val) - width - 1, args.num_prompts).astype(int)
  prompts = [val[s:s + args.prompt_len].tolist() for s in starts]
  continuations = [val[s + args.prompt_len:s + width].tolist() for s in starts]
  variants = {'float': (c, run.gpt, run.params, None)}
  quantized = compression.quantized_config(c)
  four_bit = quant.quantize_params(run.params, c, compression.WEIGHTS)
  codec = compression.cache_codec(c)
  variants['4-bit weights'] = (quantized, network.build(quantized), four_bit, None)
  variants['4-bit cache'] = (c, run.gpt, run.params, codec)
  variants['4-bit weights and cache'] = (quantized, network.build(quantized), four_bit, codec)
  print(f'{args.quality}: {args.num_prompts} windows of its validation split, {args.prompt_len} '
        f'prompt tokens, then {args.gen_len} scored and {args.gen_len} generated greedily\n'
        '| weights, cache | perplexity | change | greedy tokens equal to float\'s |\n'
        '|---|---|---|---|')
  everything = (1.0, 0.0, 0.0)
  shape = dict(batch_size=min(args.num_prompts, 16), num_batches=1, codec=None)
  base = None
  for name, (model_config, gpt, params, cache_codec) in variants.items():
    off = zigzag.Offloaded.place(gpt, zigzag.resident_params(params),
                                 lambda j, p=params, m=model_config: zigzag.layer_params(p, m, j),
                                 everything, None)
    shape['codec'] = cache_codec
    log_prob = sum(sum(block) for block in zigzag.score_blocks(
        off, everything, prompts, continuations, num_tokens=run.tokenizer.vocab_size, **shape))
    greedy = [row for block in zigzag.generate_blocks(
        off, everything, prompts, max_new_tokens=args.gen_len,
        num_tokens=run.tokenizer.vocab_size, **shape) for row in block]
    perplexity = float(np.exp(-log_prob / (args.num_prompts * args.gen_len)))
    if base is None:
      base = (perplexity, greedy)
    equal = np.mean([a == b for x, y in zip(greedy, base[1]) for a, b in zip(x, y)])
    print(f'| {name} | {perplexity:.3f} | {100 * (perplexity / base[0] - 1):+.2f}% | '
          f'{100 * equal:.1f}% |', flush=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = cli.ArgumentParser(prog='python -m gpt_jax.bench_generate',
                              description='Throughput of offloaded generation (FlexGen).',
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--disk_dir', default='', help='the disk tier (random weights too)')
  parser.add_argument('--shape', default='gpt2-xl', help=f'one of {", ".join(SHAPES)}')
  parser.add_argument('--prompt_len', type=int, default=16, help='tokens per random prompt')
  parser.add_argument('--gen_len', type=int, default=8, help='new tokens per prompt')
  parser.add_argument('--num_prompts', type=int, default=32, help='prompts per row')
  parser.add_argument('--device_gib', type=float, default=1.0, help="the device tier's budget")
  parser.add_argument('--host_gib', type=float, default=0.5, help="the host tier's budget")
  parser.add_argument('--disk_gib', type=float, default=0.0, help='0 = the free space')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='the compute dtype (float32 on a CPU, where XLA\'s bfloat16 matmuls '
                      'are slower; bfloat16 on a GPU)')
  parser.add_argument('--rows', default='a,b,c,d,e', help=f'some of {",".join(ROWS)}')
  parser.add_argument('--quality', default='',
                      help='a run: report what 4-bit weights and cache cost it instead')
  parser.add_argument('--data', default='',
                      help='with --quality: a .txt or .jsonl file to score instead of the run\'s '
                      'validation split')
  parser.add_argument('--row', default='', help=argparse.SUPPRESS)  # one row, in this process
  args = parser.parse_args(argv)
  if not (args.disk_dir or args.quality):
    raise UserError('--disk_dir is needed (a folder for the disk tier and the random weights)')
  if args.shape not in SHAPES:
    raise UserError(f'--shape={args.shape} is not one of {", ".join(SHAPES)}')
  args.rows = args.rows.split(',')
  if not args.rows or any(row not in ROWS for row in args.rows):
    raise UserError(f'--rows={",".join(args.rows)} must name some of {",".join(ROWS)}')
  for name in ('prompt_len', 'gen_len', 'num_prompts'):
    if getattr(args, name) < 1:
      raise UserError(f'--{name}={getattr(args, name)} must be >= 1')
  if not args.device_gib > 0 or not args.host_gib >= 0:
    raise UserError('--device_gib must be > 0 and --host_gib >= 0')
  return args


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv

  def bench():
    args = parse_args(argv)
    if args.quality:
      quality(args)
      return
    if args.row:
      print(json.dumps(run_row(args)))
      return
    weights_store(args)
    m = model_config(args.shape, dtype=args.dtype)
    print(f'{args.shape}: {flops.param_count(m) / 1e9:.2f}B parameters, bfloat16 weights, '
          f'{args.dtype} compute; {args.num_prompts} prompts of {args.prompt_len} tokens, '
          f'{args.gen_len} new (the paper: 512 and 32, scaled down to run in minutes here); '
          f'budgets: device {args.device_gib} GiB, host {args.host_gib} GiB, disk {args.disk_dir}'
          f'\nmachine: {flops.cpu_key()}')
    peak = flops.current_peak_flops()
    print(f'compute bound: {compute_bound(m, args.prompt_len, args.gen_len, peak):.3g} tokens/s '
          f'(the matmuls alone at {peak / 1e9:.0f} GFLOP/s: no schedule is faster here)')
    print('| row | policy | tokens/s | seconds | peak RSS generating (runtime alone), GiB | '
          'read from storage, GiB |\n|---|---|---|---|---|---|')
    for row in args.rows:
      child = subprocess.run([sys.executable, '-m', 'gpt_jax.bench_generate', *argv,
                              f'--row={row}'], capture_output=True, text=True)
      if child.returncode:
        last = child.stderr.strip().splitlines()[-1]
        raise UserError(f'row {row} failed: {last.removeprefix("error: ")}')
      r = json.loads(child.stdout.strip().splitlines()[-1])
      if 'skipped' in r:
        print(f'| {row}: {ROWS[row]} | skipped: {r["skipped"]} | | | | |')
      else:
        device = f'; device peak {r["device_peak_gib"]:.2f}' if r['device_peak_gib'] else ''
        print(f'| {row}: {ROWS[row]} | {r["policy"]} | {r["tokens_per_s"]:.2f} | '
              f'{r["seconds"]} | {r["peak_rss_gib"]:.2f} ({r["runtime_gib"]:.2f}){device} | '
              f'{r["disk_read_gib"]:.2f} |',
              flush=True)

  cli.run(bench)


if __name__ == '__main__':
  main()
