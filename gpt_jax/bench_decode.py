"""Decoding speed: this project's KV-cache sampler against transformers' `generate`, on the same
weights and the same CPU (a benchmark that prints figures, not a test).

  python -m gpt_jax.bench_decode [--n_layer=4 --n_embd=384 --vocab_size=8192] [--batch_sizes=1,8]
                                 [--prompt_len=32 --new_tokens=128 --repeats=3] [--json=OUT]

A random-init GPT-2 is built and saved with transformers (about 10M parameters by default),
imported with gpt_jax.hf, and both continue the same random prompts greedily for exactly
`new_tokens` tokens (no EOS). Times are medians over `repeats` after one warm-up call (which also
compiles the JAX loop, reported apart); the share of identical greedy tokens checks that both
decoded the same model.
"""

import os
import statistics
import sys
import tempfile

import numpy as np

from gpt_jax import bench, cli, files, flops, hf, sample
from gpt_jax.errors import UserError


def _median_seconds(fn, repeats: int) -> tuple[float, float]:
  """(seconds of the first call, median seconds of the next `repeats` calls)."""
  first = bench.timed(fn, 1, warmup=0)[0]
  return first, statistics.median(bench.timed(fn, repeats, warmup=0))


def run(args) -> list[dict]:
  try:
    import torch
    import transformers
  except ImportError:
    raise UserError("the decode benchmark compares with transformers; pip install -e '.[hf]'"
                    ) from None
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  hf_config = transformers.GPT2Config(n_layer=args.n_layer, n_embd=args.n_embd,
                                      n_head=args.n_embd // 64, vocab_size=args.vocab_size,
                                      n_positions=args.prompt_len + args.new_tokens,
                                      bos_token_id=0, eos_token_id=0)
  hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
  with tempfile.TemporaryDirectory() as hf_dir:
    hf_model.save_pretrained(hf_dir, safe_serialization=True)
    gpt, params = hf.load(hf_dir)
  n_params = flops.param_count(gpt.config)
  print(f'GPT-2 {args.n_layer}x{args.n_embd}, vocab {args.vocab_size}: {n_params / 1e6:.1f}M '
        f'parameters; prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy')

  rows = []
  rng = np.random.default_rng(0)
  for batch_size in args.batch_sizes:
    prompts_BP = rng.integers(0, args.vocab_size, (batch_size, args.prompt_len))
    ours = lambda: sample.generate(gpt, params, prompts_BP.tolist(),
                                   max_new_tokens=args.new_tokens)
    ours_first, ours_s = _median_seconds(ours, args.repeats)
    input_ids = torch.as_tensor(prompts_BP)

    def theirs():
      with torch.inference_mode():
        return hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                 max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 do_sample=False, use_cache=True, pad_token_id=0)

    theirs_first, theirs_s = _median_seconds(theirs, args.repeats)
    same = np.mean(np.asarray(ours()) == theirs()[:, args.prompt_len:].numpy())
    tokens = batch_size * args.new_tokens
    rows.append({'batch_size': batch_size, 'gpt_jax_tokens_per_sec': tokens / ours_s,
                 'transformers_tokens_per_sec': tokens / theirs_s,
                 'speedup': theirs_s / ours_s, 'gpt_jax_first_call_s': ours_first,
                 'transformers_first_call_s': theirs_first, 'same_greedy_tokens': float(same)})
  return [{'params': n_params, **vars(args), 'batch_sizes': list(args.batch_sizes), **row}
          for row in rows]


def table(rows: list[dict]) -> str:
  lines = ['| batch | gpt_jax tokens/s | transformers tokens/s | speedup | same tokens | '
           'gpt_jax first call (compile) |', '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['batch_size']} | {r['gpt_jax_tokens_per_sec']:,.0f} | "
                 f"{r['transformers_tokens_per_sec']:,.0f} | {r['speedup']:.2f}x | "
                 f"{r['same_greedy_tokens']:.1%} | {r['gpt_jax_first_call_s']:.1f} s |")
  return '\n'.join(lines)


def parse_args(argv):
  parser = cli.ArgumentParser(prog='python -m gpt_jax.bench_decode',
                              description=__doc__.split('\n\n')[0])
  parser.add_argument('--n_layer', type=int, default=4)
  parser.add_argument('--n_embd', type=int, default=384, help='a multiple of 64 (head size 64)')
  parser.add_argument('--vocab_size', type=int, default=8192)
  parser.add_argument('--batch_sizes', default='1,8', help='comma-separated')
  parser.add_argument('--prompt_len', type=int, default=32)
  parser.add_argument('--new_tokens', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', default='runs/bench/decode.json')
  args = parser.parse_args(argv)
  try:
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  except ValueError:
    raise UserError(f'--batch_sizes={args.batch_sizes!r} is not a comma-separated list of '
                    'numbers, e.g. 1,8') from None
  for name in ('n_layer', 'n_embd', 'vocab_size', 'prompt_len', 'new_tokens', 'repeats'):
    if getattr(args, name) < 1:
      raise UserError(f'--{name}={getattr(args, name)} must be >= 1')
  if min(args.batch_sizes) < 1 or args.n_embd % 64:
    raise UserError('--batch_sizes must be >= 1 and --n_embd a multiple of 64')
  return args


def main(argv=None) -> None:
  def bench():
    rows = run(parse_args(sys.argv[1:] if argv is None else argv))
    print(table(rows))
    files.write_json(rows[0]['json'], rows)
    print(f'wrote {rows[0]["json"]}')
  cli.run(bench)


if __name__ == '__main__':
  main()
