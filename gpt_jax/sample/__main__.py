"""python -m gpt_jax.sample --workdir=DIR --prompt=TEXT [--prompt=TEXT ...] [options]: continue
prompts with a trained or imported model (gpt_jax.sample), and optionally choose among the
samples (gpt_jax.inference_scaling): --choose=best keeps the one --scorer rates highest
(best-of-N), --choose=majority the most frequent first line (self-consistency)."""

import argparse
import sys
from collections.abc import Sequence

from gpt_jax import cli, inference_scaling, runs, sample, sharding
from gpt_jax.errors import UserError

CHOICES = ('all', 'best', 'majority')


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = cli.ArgumentParser(prog='python -m gpt_jax.sample',
                              description='Continue prompts with a trained or imported model.')
  parser.add_argument('--workdir', required=True, help='a run directory (training or hf import)')
  parser.add_argument('--prompt', action='append', required=True,
                      help='text to continue; repeat for a batch of prompts')
  parser.add_argument('--max_tokens', type=int, default=100, help='new tokens per prompt')
  parser.add_argument('--num_samples', type=int, default=1,
                      help='samples per prompt (N), drawn in the same decoding calls')
  parser.add_argument('--choose', choices=CHOICES, default='all',
                      help='all: print every sample; best: the one --scorer rates highest '
                           '(best-of-N); majority: the most frequent first line (self-consistency)')
  parser.add_argument('--scorer', help=f'--choose=best (default logprob): '
                      f'{", ".join(inference_scaling.SCORERS)}')
  parser.add_argument('--batch_size', type=int, default=64,
                      help='rows sampled (and scored) at once')
  parser.add_argument('--temperature', type=float, default=0.8, help='0 = greedy')
  parser.add_argument('--top_k', type=int, default=0, help='sample among the k likeliest; 0 = off')
  parser.add_argument('--top_p', type=float, default=1.0, help='nucleus sampling mass; 1 = off')
  parser.add_argument('--beam_width', type=int, default=0, help='> 0: beam search, one result')
  parser.add_argument('--length_penalty', type=float, default=1.0,
                      help='beam score = log-prob / length ** length_penalty')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  sample.check_sampling(args.temperature, args.top_k, args.top_p)
  if args.max_tokens < 1:
    raise UserError(f'--max_tokens={args.max_tokens} must be >= 1')
  inference_scaling.check_n(args.num_samples, '--num_samples')
  args.scorer = inference_scaling.scorer_setting(args.scorer, args.choose == 'best',
                                                 '--choose=best', 'samples')
  if args.batch_size < 1:
    raise UserError(f'--batch_size={args.batch_size} must be >= 1')
  if args.beam_width < 0:
    raise UserError(f'--beam_width={args.beam_width} must be >= 0 (0 = sampling)')
  if args.choose != 'all' and args.beam_width:
    raise UserError(f'--choose={args.choose} chooses among samples; beam search gives one result. '
                    'Drop --beam_width')
  if not all(args.prompt):
    raise UserError('--prompt is empty; give text to continue (the start of a document is added '
                    'for you)')
  return args


def first_line(text: str) -> str:
  return text.split('\n', 1)[0].strip()


def choose(args: argparse.Namespace, run: runs.Run) -> list[str]:
  """One block of text per prompt: the best sample with its score, or the majority's first line
  with its votes."""
  tokenizer = run.tokenizer
  context = sample.context_length(run.config.model)
  keep = context - args.max_tokens
  if keep < 2:
    raise UserError(f'--max_tokens={args.max_tokens} leaves no room for a prompt in the '
                    f'{context}-token context; lower it')
  rows = [[tokenizer.eos_id, *ids][-keep:] for ids in tokenizer.encode_batch(args.prompt)]
  candidates = inference_scaling.sample_candidates(
      run, args.prompt, rows, args.num_samples, max_new_tokens=args.max_tokens,
      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
      batch_size=args.batch_size)
  texts = candidates.by_prompt(candidates.texts)
  blocks = []
  if args.choose == 'best':
    scorer = inference_scaling.make_scorer(args.scorer, run, mesh=sharding.data_parallel_mesh(),
                                           batch_size=args.batch_size, seq_len=context)
    scores = candidates.by_prompt(scorer(candidates))
    for prompt, answers, s in zip(args.prompt, texts, scores):
      i = int(inference_scaling.best_of_n([s])[0])
      blocks.append(f'--- best of {args.num_samples} by {args.scorer} (score {s[i]:.4g}, sample '
                    f'{i + 1}) ---\n{prompt}{answers[i]}')
  else:
    lines = [[first_line(t) for t in answers] for answers in texts]
    for prompt, answers, (i, votes) in zip(args.prompt, lines,
                                           inference_scaling.majority_vote(lines)):
      blocks.append(f'--- majority of {args.num_samples} ({votes} vote{"s" * (votes != 1)}) '
                    f'---\n{prompt} {answers[i]}')
  return blocks


def main(argv=None) -> None:
  def run_sample():
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run = runs.load(args.workdir)
    if args.choose != 'all':
      blocks = choose(args, run)
    else:
      texts = sample.complete(run.gpt, run.params, run.tokenizer, args.prompt,
                              max_new_tokens=args.max_tokens, num_samples=args.num_samples,
                              temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              beam_width=args.beam_width, length_penalty=args.length_penalty,
                              seed=args.seed)
      blocks = [f'--- sample {i + 1} ---\n{text}' for i, text in enumerate(texts)]
    print('\n'.join(blocks))
  cli.run(run_sample)


if __name__ == '__main__':
  main()
