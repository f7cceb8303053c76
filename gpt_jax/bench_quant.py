"""What weight quantization costs and buys on one run: `python -m gpt_jax.bench_quant
--workdir=DIR [--formats=fp32,bf16,int8,int4,nf4] [--group_size=128] [--activations=none,int8]
[--embeddings] [--batch_sizes=1,8] [--prompt_len=32 --new_tokens=64 --repeats=3]
[--max_batches=0] [--json=OUT]` (a benchmark that prints figures, not a test).

Each format of DIR's weights is written as a run (gpt_jax.quantize; bf16 is a cast) and read back
as sampling and evaluation read it; int8 and int4 once per --activations setting ('none':
weight-only, 'int8': per-token int8 activations and integer matmuls, see gpt_jax.quant). Per
format: the checkpoint's bytes on disk, the parameters' bytes in device memory, validation bits
per byte (gpt_jax.scoring on the run's validation split) and its change against fp32, and greedy
decoding speed with the KV cache at each batch size (median of `repeats` calls after a warm-up
that compiles).
"""

import os
import statistics
import sys
import tempfile

import jax
import numpy as np

from gpt_jax import bench, cli, files, quant, quantize, runs, sample, scoring, sharding
from gpt_jax.errors import UserError

FORMATS = ('fp32', 'bf16') + quant.FORMATS


def decode_tokens_per_sec(run: runs.Run, batch_size: int, args) -> float:
  prompts = np.random.default_rng(0).integers(0, run.tokenizer.vocab_size,
                                              (batch_size, args.prompt_len)).tolist()
  decode = lambda: sample.generate(run.gpt, run.params, prompts, max_new_tokens=args.new_tokens)
  seconds = statistics.median(bench.timed(decode, args.repeats, warmup=1))
  return batch_size * args.new_tokens / seconds


def measure(workdir: str, name: str, args, val_tokens) -> dict:
  run = runs.load(workdir)
  mesh = sharding.data_parallel_mesh()
  scorer = scoring.Scorer(run, mesh, args.eval_batch_size, run.config.seq_len)
  metrics = scoring.lm_metrics(scorer, val_tokens, run.tokenizer, args.max_batches)
  row = {'weights': name, 'val_bpb': metrics['bpb'],
         'file_bytes': quantize.file_bytes(os.path.join(workdir, runs.CHECKPOINTS)),
         'device_bytes': quantize.device_bytes(run.params)}
  for batch_size in args.batch_sizes:
    row[f'decode_tokens_per_sec_b{batch_size}'] = decode_tokens_per_sec(run, batch_size, args)
  return row


def variants(args) -> list[tuple[str, quant.QuantSpec | str]]:
  """(row name, what to write) for each format and activation setting asked for."""
  out = []
  for fmt in args.formats:
    if fmt in ('fp32', 'bf16'):
      out.append((fmt, fmt))
      continue
    group_size = 0 if fmt == 'int8' else args.group_size
    for activations in args.activations:
      if fmt == 'nf4' and activations == 'int8':
        continue  # nf4 code points are not integers (quantize.check)
      name = fmt + (f' g{group_size}' if group_size else '') + (
          ', int8 activations' if activations == 'int8' else '')
      out.append((name, quant.QuantSpec(fmt, group_size, False, activations, args.embeddings)))
  return out


def write_variant(workdir: str, what, out: str) -> str:
  """DIR's weights as `what` says, as a run of parameters alone in `out`."""
  if what in ('fp32', 'bf16'):  # written too, so file bytes count the parameters alone
    run = runs.load(workdir)
    run.config.model.param_dtype = 'float32' if what == 'fp32' else 'bfloat16'
    params = jax.tree.map(lambda x: x.astype(run.config.model.param_dtype), run.params)
    return runs.write_params_run(out, run.config, run.tokenizer, params, run.step, '--out')
  return quantize.quantize_run(workdir, out, what, log=lambda _: None)


def run(args) -> list[dict]:
  base = runs.load(args.workdir, what='--workdir')
  if quant.spec(base.config.model):
    raise UserError(f'--workdir={args.workdir} is quantized already; pass the float run it was '
                    'made from')
  tokens = scoring.val_tokens(base)
  print(f'{args.workdir} (step {base.step}): {base.config.model.n_layer} layers, n_embd '
        f'{base.config.model.n_embd}, vocabulary {base.config.model.vocab_size}; decoding '
        f'{args.new_tokens} tokens greedily after {args.prompt_len}-token prompts', flush=True)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for i, (name, what) in enumerate(variants(args)):
      workdir = write_variant(args.workdir, what, os.path.join(tmp, str(i)))
      rows.append(measure(workdir, name, args, tokens))
      print(f'{name}: measured', flush=True)
  return [{**row, 'workdir': args.workdir} for row in rows]


def table(rows: list[dict]) -> str:
  fp32 = next((r for r in rows if r['weights'] == 'fp32'), rows[0])
  batches = [k for k in rows[0] if k.startswith('decode_tokens_per_sec_b')]
  head = ' | '.join(f'decode tokens/s, batch {k.rsplit("b", 1)[1]}' for k in batches)
  lines = [f'| weights | file bytes | device bytes | val bits/byte | Δ vs {fp32["weights"]} | '
           f'{head} |', '|---' * (5 + len(batches)) + '|']
  for r in rows:
    speed = ' | '.join(f'{r[k]:,.0f} ({r[k] / fp32[k]:.2f}x)' for k in batches)
    lines.append(f"| {r['weights']} | {r['file_bytes']:,} | {r['device_bytes']:,} | "
                 f"{r['val_bpb']:.4f} | {r['val_bpb'] / fp32['val_bpb'] - 1:+.2%} | {speed} |")
  return '\n'.join(lines)


def _list(text: str, flag: str, allowed=None, convert=str) -> list:
  try:
    items = [convert(item) for item in text.split(',') if item]
  except ValueError:
    items = []
  if not items or (allowed and any(item not in allowed for item in items)):
    raise UserError(f'{flag}={text!r}: give a comma-separated list'
                    + (f' of {", ".join(allowed)}' if allowed else ' of numbers'))
  return items


def parse_args(argv):
  parser = cli.ArgumentParser(prog='python -m gpt_jax.bench_quant',
                              description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a finished float run')
  parser.add_argument('--formats', default=','.join(FORMATS))
  parser.add_argument('--group_size', type=int, default=128, help='int4 and nf4')
  parser.add_argument('--activations', default='none,int8', help='int8 and int4: none and/or int8')
  parser.add_argument('--embeddings', action='store_true', help='quantize the embedding and head')
  parser.add_argument('--batch_sizes', default='1,8')
  parser.add_argument('--prompt_len', type=int, default=32)
  parser.add_argument('--new_tokens', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--eval_batch_size', type=int, default=8)
  parser.add_argument('--max_batches', type=int, default=0, help='validation batches; 0 = all')
  parser.add_argument('--json', default='runs/bench/quant.json')
  args = parser.parse_args(argv)
  args.formats = _list(args.formats, '--formats', FORMATS)
  args.activations = _list(args.activations, '--activations', quant.ACTIVATIONS)
  args.batch_sizes = _list(args.batch_sizes, '--batch_sizes', convert=int)
  for name in ('group_size', 'prompt_len', 'new_tokens', 'repeats', 'eval_batch_size'):
    if getattr(args, name) < 1:
      raise UserError(f'--{name}={getattr(args, name)} must be >= 1')
  if min(args.batch_sizes) < 1 or args.max_batches < 0:
    raise UserError('--batch_sizes must be >= 1 and --max_batches >= 0')
  return args


def main(argv=None) -> None:
  def bench():
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = run(args)
    print(table(rows))
    files.write_json(args.json, rows)
    print(f'wrote {args.json}')
  cli.run(bench)


if __name__ == '__main__':
  main()
