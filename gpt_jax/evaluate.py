"""Evaluating a finished run: language-model metrics and zero-/few-shot prompted tasks.

  python -m gpt_jax.evaluate --workdir=DIR [--data=FILE] [--seq_len=N] [--max_batches=N]
  python -m gpt_jax.evaluate --workdir=DIR --task=FILE.json|FILE.jsonl|NAME [--shots=0,1,5]
      [--max_instances=N] [--scoring=auto|choice|generation]  (FILE.jsonl: instruction lines)
      [--samples=N --vote=majority|best [--scorer=S] [--temperature=T]]  (generation: choose
      among N sampled answers; gpt_jax.inference_scaling)
  python -m gpt_jax.evaluate --workdir=DIR --task=FILE.jsonl [--max_instances=N]  (DIR a run of
      objective classify: the accuracy of its task head on FILE's labelled examples)
  python -m gpt_jax.evaluate --write_play_task[=PATH]  (rebuilds the shipped shakespeare_play task;
      python -m gpt_jax.tasks.build rebuilds every shipped task)

What the metrics are and how each is scored: gpt_jax.scoring. This module is the command: its
flags, the task --task names (load_task) and the table it prints.
"""

import argparse
import os
import sys
from collections.abc import Sequence

from gpt_jax import cli, files, inference_scaling, instructions, runs, sample
from gpt_jax import scoring as scoring_lib, sharding
from gpt_jax.errors import UserError
from gpt_jax.objectives import classify
from gpt_jax.tasks import build

DEFAULT_SHOTS = (0, 1, 5)


# --- Natural Instructions tasks --------------------------------------------------------------


def load_task(spec: str) -> instructions.Task:
  """The task of --task: a Natural Instructions .json file, an instruction .jsonl file (its lines
  are one task, instructions.read_tasks), or the name of a shipped task."""
  if spec.endswith('.jsonl'):
    return instructions.read_tasks(spec)[0]
  path = (spec if spec.endswith('.json') or os.path.sep in spec else
          os.path.join(build.TASKS_DIR, f'{spec}.json'))
  if not os.path.isfile(path):
    shipped = sorted(f[:-5] for f in os.listdir(build.TASKS_DIR) if f.endswith('.json'))
    raise UserError(f'--task={spec}: no such file {path!r}; pass one task file (.json, or '
                    f'instruction .jsonl) or one of {", ".join(shipped)}')
  return instructions.read_task(path)


# --- command line ----------------------------------------------------------------------------


def _shots(value: str) -> list[int]:
  try:
    return [int(s) for s in value.split(',')]
  except ValueError:
    raise argparse.ArgumentTypeError(f'--shots={value} is not a comma-separated list of '
                                     'numbers, e.g. 0,1,5') from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = cli.ArgumentParser(prog='python -m gpt_jax.evaluate',
                              description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', help='a finished run (its config.json, tokenizer, checkpoints)')
  parser.add_argument('--data', help='a .txt or .jsonl[.gz] file to score instead of the '
                      "run's validation split")
  parser.add_argument('--text_field', default='text', help='the text field of .jsonl records')
  parser.add_argument('--task', help='a Natural Instructions task .json, or a shipped task: '
                      'shakespeare_play; for a run of objective classify, a labelled .jsonl '
                      'task file (gpt_jax.task_inputs)')
  parser.add_argument('--shots', type=_shots, help='e.g. 0,1,5; default: those of 0, 1 and 5 '
                      'the task has enough positive examples for')
  parser.add_argument('--scoring', choices=('auto', 'choice', 'generation'), default='auto',
                      help='multiple choice or greedy generation; auto: by the task '
                      '(scoring.auto_scoring)')
  parser.add_argument('--samples', type=int, default=0,
                      help='generation: answers sampled per prompt for --vote (0: greedy)')
  parser.add_argument('--vote', choices=inference_scaling.VOTES,
                      help='generation: keep the most frequent of the sampled answers '
                      '(self-consistency) or the best by --scorer (best-of-N)')
  parser.add_argument('--scorer', help=f'--vote=best (default logprob): '
                      f'{", ".join(inference_scaling.SCORERS)}')
  parser.add_argument('--temperature', type=float, default=0.7, help='of the --vote samples')
  parser.add_argument('--seed', type=int, default=0, help='of the --vote samples')
  parser.add_argument('--max_instances', type=int, default=0, help='0 = all')
  parser.add_argument('--seq_len', type=int, default=0,
                      help="0 = the run's (with --task: the model's context), at most the context")
  parser.add_argument('--batch_size', type=int, default=0, help="0 = the run's eval batch")
  parser.add_argument('--max_batches', type=int, default=0, help='0 = all')
  parser.add_argument('--json', help='also write the results to this file')
  parser.add_argument('--write_play_task', nargs='?', const=build.PLAY_TASK, metavar='PATH',
                      help='rebuild the shakespeare_play task (default: the shipped file)')
  args = parser.parse_args(argv)
  for key in ('max_instances', 'seq_len', 'batch_size', 'max_batches'):
    if getattr(args, key) < 0:
      raise UserError(f'--{key}={getattr(args, key)} is negative; pass 0 (the default) or more')
  if args.shots and min(args.shots) < 0:
    raise UserError(f'--shots={",".join(map(str, args.shots))} has a negative number of shots')
  if args.samples and not args.vote:
    raise UserError(f'--samples={args.samples} needs --vote=majority or --vote=best to choose '
                    'among them')
  if args.vote:
    if not args.samples:
      raise UserError(f'--vote={args.vote} chooses among sampled answers; pass --samples=N')
    inference_scaling.check_n(args.samples, '--samples')
  args.scorer = inference_scaling.scorer_setting(args.scorer, args.vote == 'best', '--vote=best',
                                                 'answers')
  if args.vote and not args.temperature > 0:
    raise UserError(f'--vote samples answers: --temperature={args.temperature} must be > 0')
  if not args.workdir and not args.write_play_task:
    raise UserError('missing --workdir=DIR, the run to evaluate')
  return args


def run(args: argparse.Namespace, log=print) -> dict:
  """Evaluates as the flags say; returns the results written to --json."""
  if args.write_play_task:
    files.write_json(args.write_play_task, build.build_play_task())
    log(f'wrote {args.write_play_task}')
    return {}
  # the inputs are checked before the run is loaded, so a mistake fails fast
  if args.task and args.data:
    raise UserError('--data and --task are separate evaluations; pass one of them')
  if args.task and runs.read_config(args.workdir).get('objective') == 'classify':
    # a fine-tuned classifier answers with its task head, not a prompt
    results = classify.evaluate_head(args.workdir, args.task, max_instances=args.max_instances,
                                     batch_size=args.batch_size, log=log)
    if args.json:
      files.write_json(args.json, results)
    return results
  task = load_task(args.task) if args.task else None
  if task:
    num_examples = len(task.positive_examples)
    shots = args.shots or [k for k in DEFAULT_SHOTS if k <= num_examples]
    if max(shots) > num_examples:
      raise UserError(f'--shots={max(shots)} needs as many positive examples, but task '
                      f'{task.name} has {num_examples}; pass fewer shots')
    scoring = scoring_lib.auto_scoring(task) if args.scoring == 'auto' else args.scoring
    if scoring == 'choice':
      scoring_lib.task_options(task)  # a UserError if it has fewer than two
      if args.vote:
        raise UserError(f'--vote chooses among generated answers, but task {task.name} is scored '
                        'as multiple choice; pass --scoring=generation or drop --vote')
  elif args.vote:
    raise UserError('--vote chooses among the generated answers of a task; pass --task')
  texts = scoring_lib.read_texts(args.data, args.text_field) if args.data else None

  mesh = sharding.data_parallel_mesh()
  run = runs.load(args.workdir, mesh=mesh)
  cli.use_compilation_cache()
  config = run.config
  # A task's prompts (definition, examples) get the model's whole context; the language-model
  # metrics default to the windows the run was trained on.
  context = sample.context_length(config.model)
  seq_len = min(args.seq_len or (context if task else config.seq_len), context)
  if args.seq_len > seq_len:
    log(f'--seq_len={args.seq_len} is beyond the model\'s {seq_len}-token context; using {seq_len}')
  batch_size = args.batch_size or config.batch_size // config.grad_accum
  results = {'workdir': args.workdir, 'step': run.step, 'seq_len': seq_len}
  if task:
    if scoring == 'choice':
      metrics = scoring_lib.choice_metrics(scoring_lib.Scorer(run, mesh, batch_size, seq_len),
                                           run.tokenizer, task, shots, args.max_instances)
    else:
      answerer = (inference_scaling.voting_answerer(
          args.samples, args.vote, temperature=args.temperature, seed=args.seed,
          scorer=args.scorer, mesh=mesh) if args.vote else scoring_lib.generate_answers)
      metrics = scoring_lib.generation_metrics(run, task, shots, seq_len=seq_len,
                                               batch_size=batch_size,
                                               max_instances=args.max_instances,
                                               answerer=answerer)
      if args.vote:
        metrics['vote'] = {'samples': args.samples, 'vote': args.vote, 'scorer': args.scorer,
                           'temperature': args.temperature, 'seed': args.seed}
    results['task'] = {'name': task.name, 'scoring': scoring, **metrics}
    log(task_table(results['task'], args.workdir, run.step))
  else:
    scorer = scoring_lib.Scorer(run, mesh, batch_size, seq_len)
    tokens = (scoring_lib.file_tokens(texts, run.tokenizer) if args.data else
              scoring_lib.val_tokens(run))
    results['lm'] = {'data': args.data or 'val', **scoring_lib.lm_metrics(
        scorer, tokens, run.tokenizer, args.max_batches)}
    m = results['lm']
    log(f'{args.workdir} (step {run.step}) on {m["data"]}: loss {m["loss"]:.4f} nats/token, '
        f'ppl {m["ppl"]:.6g}, bpb {m["bpb"]:.4f} ({m["tokens"]:,} tokens, {m["bytes"]:,} bytes, '
        f'windows of {seq_len})')
  if args.json:
    files.write_json(args.json, results)
  return results


def task_table(metrics: dict, workdir: str, step: int) -> str:
  """The --task results as a heading line and a markdown table, a row per number of shots."""
  if metrics['scoring'] == 'choice':
    how = f'{len(metrics["options"])} options (chance {metrics["chance"]:.1%})'
    columns = ['acc', 'acc_norm']
  else:
    vote = metrics.get('vote')
    how = (f'greedy answers of up to {metrics["max_new_tokens"]} tokens' if not vote else
           f'of {vote["samples"]} answer{"s" * (vote["samples"] != 1)} sampled at '
           f'temperature {vote["temperature"]} (up to '
           f'{metrics["max_new_tokens"]} tokens) the ' + (
               'majority\'s' if vote['vote'] == 'majority' else f'best by {vote["scorer"]}'))
    columns = ['exact_match', 'rouge_l']
  lines = [f'task {metrics["name"]}: {metrics["instances"]} instances, {how}; {workdir} at step '
           f'{step}', '| shots | ' + ' | '.join(columns) + ' |', '|---:' * (len(columns) + 1) + '|']
  lines += ['| ' + ' | '.join([k] + [f'{m[c]:.1%}' for c in columns]) + ' |'
            for k, m in metrics['shots'].items()]
  lines += [f'{k} shots: {m["cut_prompts"]} of {metrics["instances"]} prompts lost tokens on the '
            'left to fit the context (--seq_len)' for k, m in metrics['shots'].items()
            if m['cut_prompts']]
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  cli.run(lambda: run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == '__main__':
  main()
