"""Throughput-oriented generation for a model larger than memory (FlexGen, Sheng et al. 2023).

`python -m gpt_jax.generate --workdir=RUN --prompts=IN.jsonl --out=OUT.jsonl [options]`

Each line of IN.jsonl is a JSON object with a "prompt" string; OUT.jsonl gets the same objects,
in the same order, with a "completion" added. The model's weights and KV cache are spread over
the device, host memory and a disk directory within the budgets given (--device_gib, --host_gib,
--disk_gib with --disk_dir), as the policy says: `auto` (FlexGen's linear program over this
machine's measured rates: offload.policy, offload.hardware) or a block shape and fractions of
your own; the zig-zag block schedule (offload.zigzag) runs it, with the weights and the KV cache
in 4 bits on request (--compress_weights, --compress_cache: offload.compression, FlexGen's
group-wise numerics; weights need n_embd and the MLP width divisible by 64). The run is
resumable: OUT.jsonl gets whole blocks of lines, each written and synced at once, and a rerun
with the same arguments continues after the last complete line.

The run is read from its checkpoint a layer at a time (runs.layer_reader: orbax reads only that
layer's arrays), each placed on its tier before the next is read, so the whole model is never in
memory (a LoRA or scanned run, whose layers cannot be read apart, is loaded whole first).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import jax
import tqdm

from gpt_jax import cli, files, network, runs, sample, sharding
from gpt_jax.errors import UserError
from gpt_jax.offload import compression, policy as policy_lib, zigzag
from gpt_jax.offload.disk import DiskStore
from gpt_jax.offload.policy import GIB


def read_prompts(path: str) -> tuple[list[dict], list[str]]:
  """The records of a prompts file: JSON objects, each with a non-empty "prompt" string and no
  "completion" yet, and where each is ('--prompts=PATH line N'). One-line UserError naming the
  first bad line."""
  fix = 'make each line a JSON object with a "prompt" string'
  records, wheres = [], []
  for _, where, record in files.read_json_lines(path, f'--prompts={path}', fix):
    if not isinstance(record, dict) or not isinstance(record.get('prompt'), str):
      raise UserError(f'{where} has no "prompt" string; {fix}')
    if not record['prompt']:
      raise UserError(f'{where} has an empty "prompt"; give text to continue')
    if 'completion' in record:
      raise UserError(f'{where} already has a "completion"; remove it (the output adds one)')
    records.append(record)
    wheres.append(where)
  if not records:
    raise UserError(f'--prompts={path} holds no prompts; {fix}')
  return records, wheres


def completed_lines(path: str, records: list[dict]) -> int:
  """How many prompts `path` (an earlier run's --out) already holds, after dropping a last line
  cut short (atomically). UserError if its lines are not these prompts' results, or if it
  cannot be written."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise UserError(f'--out={path} is a folder; pass a file path for the JSON lines')
  if not os.path.isdir(folder):
    raise UserError(f'--out={path}: the folder {folder} does not exist; make it or pass another '
                    '--out')
  if not os.access(folder, os.W_OK):
    raise UserError(f'--out={path}: the folder {folder} is not writable; pass another --out')
  if not os.path.exists(path):
    return 0
  with open(path, 'rb') as f:
    data = f.read()
  whole = data[:data.rfind(b'\n') + 1]
  if whole != data:
    with files.atomic_path(path) as tmp, open(tmp, 'wb') as f:
      f.write(whole)
  lines = whole.decode('utf-8', 'replace').splitlines()
  if len(lines) > len(records):
    raise UserError(f'--out={path} holds {len(lines)} results, more than the {len(records)} '
                    'prompts of --prompts; pass a new --out')
  for number, (line, record) in enumerate(zip(lines, records), 1):
    try:
      done = json.loads(line)
    except json.JSONDecodeError:
      done = None
    if not isinstance(done, dict) or done.get('prompt') != record['prompt']:
      raise UserError(f'--out={path} line {number} is not the result of prompt {number}; pass a '
                      'new --out (or the --prompts it was made from)')
    if not isinstance(done.get('completion'), str):
      raise UserError(f'--out={path} line {number} has no "completion": it is not this '
                      'command\'s output; pass a new --out')
  return len(lines)


def parse_policy(text: str) -> dict | None:
  """None for 'auto'; else {batch_size, num_batches[, weights, cache]} from
  'BATCH,NUM[,W_DEVICE,W_HOST,C_DEVICE,C_HOST]' (percentages; the disk takes the rest)."""
  if text == 'auto':
    return None
  fix = ("give --policy=auto or BATCH,NUM[,W_DEVICE,W_HOST,C_DEVICE,C_HOST] (sizes, then "
         "percentages of the weights and cache on the device and host), e.g. 8,4,20,80,100,0")
  try:
    values = [float(v) for v in text.split(',')]
  except ValueError:
    raise UserError(f'--policy={text!r} is not a list of numbers; {fix}') from None
  if len(values) not in (2, 6):
    raise UserError(f'--policy={text!r} has {len(values)} numbers, not 2 or 6; {fix}')
  if values[0] < 1 or values[1] < 1 or values[0] % 1 or values[1] % 1:
    raise UserError(f'--policy={text!r}: BATCH and NUM must be positive integers; {fix}')
  out = {'batch_size': int(values[0]), 'num_batches': int(values[1])}
  if len(values) == 6:
    for name, (device, host) in (('weights', values[2:4]), ('cache', values[4:6])):
      if min(device, host) < 0 or device + host > 100:
        raise UserError(f'--policy={text!r}: the {name} percentages must be >= 0 and sum to at '
                        f'most 100; {fix}')
      out[name] = (device / 100, host / 100, 1 - (device + host) / 100)
  return out


def choose_policy(workload, machine, requested: dict | None,
                  num_prompts: int) -> policy_lib.Policy:
  """The policy to run: the program's best for a block of up to num_prompts (rounded up to a
  power of 2) sequences (requested None), or the requested block shape with the best fractions
  for it (or the requested fractions, checked against the budgets); either way with attention
  over an offloaded cache on the host or on the device, whichever the program finds faster."""
  if requested is None:
    return policy_lib.search(workload, machine, fixed=zigzag.FIXED_FRACTIONS,
                             max_block=1 << (num_prompts - 1).bit_length())
  fixed = dict(zigzag.FIXED_FRACTIONS,
               **{k: requested[k] for k in ('weights', 'cache') if k in requested})
  fits = [policy_lib.solve(workload, machine, requested['batch_size'],
                           requested['num_batches'], on_host, fixed) for on_host in (False, True)]
  chosen = max(filter(None, fits), key=lambda p: p.tokens_per_s, default=None)
  if chosen is None:
    gib = lambda b: f'{b / GIB:.3g}'
    disk = ('move more to the host or disk' if machine.disk_memory else
            'move more to the host, pass --disk_dir for a disk tier')
    raise UserError(f'--policy does not fit the budgets (device {gib(machine.device_memory)}, '
                    f'host {gib(machine.host_memory)}, disk {gib(machine.disk_memory)} GiB): '
                    f'lower the block or {disk}, raise --device_gib or --host_gib, or pass '
                    '--policy=auto')
  return chosen


def default_budgets() -> tuple[int, int]:
  """The device and host budgets (bytes) when none is given: the device's memory and half the
  RAM; on a CPU, where the two are the same RAM, half of it each."""
  half = sharding.host_memory() // 2
  return (half if jax.devices()[0].platform == 'cpu' else sharding.device_memory()), half


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = cli.ArgumentParser(prog='python -m gpt_jax.generate',
                              description='Generate for a file of prompts with the weights and '
                              'cache offloaded (FlexGen).',
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--workdir', required=True, help='a run directory (training, hf import, '
                      'quantize)')
  parser.add_argument('--prompts', required=True, help='JSON lines, each with a "prompt"')
  parser.add_argument('--out', required=True, help='JSON lines written: each prompt\'s object '
                      'with its "completion"; a rerun resumes it')
  parser.add_argument('--max_tokens', type=int, default=100, help='new tokens per prompt')
  parser.add_argument('--temperature', type=float, default=0.0, help='0 = greedy')
  parser.add_argument('--top_k', type=int, default=0, help='sample among the k likeliest; 0 = off')
  parser.add_argument('--top_p', type=float, default=1.0, help='nucleus sampling mass; 1 = off')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--device_gib', type=float, default=0.0,
                      help="the device tier's budget; 0 = the device's memory (CPU: half the RAM)")
  parser.add_argument('--host_gib', type=float, default=0.0,
                      help="the host tier's budget; 0 = half the machine's RAM")
  parser.add_argument('--disk_dir', default='', help='a folder for the disk tier; empty = none')
  parser.add_argument('--disk_gib', type=float, default=0.0,
                      help="the disk tier's budget; 0 = the free space of --disk_dir")
  parser.add_argument('--compress_weights', action='store_true',
                      help='4-bit weights (int4 with a zero point, groups of 64 inputs)')
  parser.add_argument('--compress_cache', action='store_true',
                      help='a 4-bit KV cache (groups of 64 features, min and scale each)')
  parser.add_argument('--policy', default='auto',
                      help='auto (the linear program) or BATCH,NUM[,W_DEVICE,W_HOST,C_DEVICE,'
                      'C_HOST] (percentages)')
  args = parser.parse_args(argv)
  sample.check_sampling(args.temperature, args.top_k, args.top_p)
  if args.max_tokens < 1:
    raise UserError(f'--max_tokens={args.max_tokens} must be >= 1')
  for name in ('device_gib', 'host_gib', 'disk_gib'):
    if not getattr(args, name) >= 0:
      raise UserError(f'--{name}={getattr(args, name)} must be >= 0 (0 = the default)')
  if args.disk_gib and not args.disk_dir:
    raise UserError('--disk_gib needs --disk_dir (the folder of the disk tier)')
  args.requested = parse_policy(args.policy)
  return args


def _tokenize(gpt, tokenizer, records: list[dict], wheres: list[str],
              max_tokens: int) -> list[list[int]]:
  """Each prompt as sample.complete reads it (after EOS); UserError naming the first prompt
  that leaves no room for max_tokens new tokens."""
  context = sample.context_length(gpt.config)
  prompts = [[tokenizer.eos_id] + ids
             for ids in tokenizer.encode_batch([r['prompt'] for r in records])]
  for where, prompt in zip(wheres, prompts):
    if len(prompt) >= context:
      raise UserError(f'{where}: the prompt is {len(prompt)} tokens, the model\'s context '
                      f'{context}, with no room for new tokens; shorten it')
    if len(prompt) + max_tokens > context:
      raise UserError(f'{where}: the prompt is {len(prompt)} tokens; with --max_tokens='
                      f'{max_tokens} that exceeds the model\'s context of {context}: shorten it '
                      'or lower --max_tokens')
  return prompts


def _weights(workdir: str, compress: bool):
  """(GPT, model config, tokenizer, resident parameters, layer(j) -> block j's parameters) of
  the run: read a layer at a time from its checkpoint where it can be (runs.layer_reader), else
  loaded whole; with `compress`, each layer quantized to 4 bits as it is read."""
  reader = runs.layer_reader(workdir, '--workdir')
  if reader is None:
    run = runs.load(workdir, what='--workdir')
    gpt, c, tokenizer = run.gpt, run.config.model, run.tokenizer
    resident = zigzag.resident_params(run.params)
    layer = lambda j: zigzag.layer_params(run.params, c, j)
  else:
    gpt, c, tokenizer = reader.gpt, reader.config.model, reader.tokenizer
    resident, layer = reader.resident, reader.layer
  if not compress:
    return gpt, c, tokenizer, resident, layer
  quantized = compression.quantized_config(c)
  return (network.build(quantized), quantized, tokenizer, resident,
          lambda j: compression.quantize_layer(layer(j), c))


_TIER_PREFIX = 'gpt_jax_offload_'  # + the pid of the run that made it, '_', a random tail


def remove_stale_tiers(disk_dir: str) -> None:
  """Deletes the disk tiers that runs killed before they could clean up (SIGKILL, power loss)
  left in disk_dir: the folders named for a process of this machine that no longer exists."""
  for name in os.listdir(disk_dir):
    pid = name[len(_TIER_PREFIX):].split('_')[0] if name.startswith(_TIER_PREFIX) else ''
    if not pid.isdigit():
      continue
    try:
      os.kill(int(pid), 0)
    except ProcessLookupError:
      shutil.rmtree(os.path.join(disk_dir, name), ignore_errors=True)
    except PermissionError:  # another user's live process
      pass


def generate(args: argparse.Namespace, log=print) -> None:
  records, wheres = read_prompts(args.prompts)
  done = completed_lines(args.out, records)
  store_dir = None
  if args.disk_dir:
    DiskStore(args.disk_dir)  # UserError now if the folder cannot be made or written
    remove_stale_tiers(args.disk_dir)
    try:
      store_dir = tempfile.mkdtemp(prefix=f'{_TIER_PREFIX}{os.getpid()}_', dir=args.disk_dir)
    except OSError as e:
      raise UserError(f'cannot make a folder in --disk_dir={args.disk_dir} ({e.strerror}); pass a '
                      'folder this user can write') from None
  try:
    _generate(args, records, wheres, done, store_dir, log)
  finally:
    if store_dir:
      shutil.rmtree(store_dir, ignore_errors=True)


def _generate(args, records, wheres, done, store_dir, log) -> None:
  gpt, c, tokenizer, resident, layer = _weights(args.workdir, args.compress_weights)
  prompts = _tokenize(gpt, tokenizer, records, wheres, args.max_tokens)
  if done == len(records):
    log(f'{args.out} already holds all {done} results')
    return
  codec = compression.cache_codec(c) if args.compress_cache else None
  disk_budget = args.disk_gib * GIB or (shutil.disk_usage(store_dir).free if store_dir else 0)
  # layer 0 sizes the workload, then is placed from the same read (dropped once placed)
  first = {0: layer(0)}
  workload = zigzag.workload(c, max(map(len, prompts)), args.max_tokens, first[0], codec)
  device, host = default_budgets()
  machine = zigzag.machine(args.device_gib * GIB or device, args.host_gib * GIB or host,
                           disk_budget, store_dir, gpt.config, first[0])
  chosen = choose_policy(workload, machine, args.requested, len(prompts) - done)
  log(f'policy: {chosen.describe()}')
  store = DiskStore(store_dir) if store_dir else None
  off = zigzag.Offloaded.place(gpt, resident, lambda j: first.pop(j) if j in first else layer(j),
                               chosen.weights, store)
  blocks = zigzag.generate_blocks(
      off, chosen.cache, prompts[done:], batch_size=chosen.batch_size,
      num_batches=chosen.num_batches, max_new_tokens=args.max_tokens,
      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
      eos_id=tokenizer.eos_id, seed=args.seed, num_tokens=tokenizer.vocab_size, store=store,
      first_row=done, codec=codec, attention_on_host=chosen.attention_on_host)
  bar = tqdm.tqdm(total=len(records), initial=done, unit='prompt', file=sys.stderr,
                  dynamic_ncols=True)
  start, generated = time.perf_counter(), 0
  with open(args.out, 'ab') as out:
    for rows in blocks:
      lines = [json.dumps({**records[done + i], 'completion': tokenizer.decode(row)},
                          ensure_ascii=False) + '\n' for i, row in enumerate(rows)]
      out.write(''.join(lines).encode('utf-8'))  # a whole block of lines, then synced
      out.flush()
      os.fsync(out.fileno())
      done += len(rows)
      generated += sum(map(len, rows))
      bar.update(len(rows))
      bar.set_postfix_str(f'{generated / (time.perf_counter() - start):.1f} tokens/s')
  bar.close()
  log(f'wrote {args.out}: {len(records)} results')


def main(argv=None) -> None:
  cli.run(lambda: generate(parse_args(sys.argv[1:] if argv is None else argv)))

if __name__ == '__main__':
  main()
