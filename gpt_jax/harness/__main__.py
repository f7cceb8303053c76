"""python -m gpt_jax.harness [run|ls|validate] ARGS: lm-eval's own command line with the gpt_jax
model registered (`--model gpt_jax` unless another is named), e.g.

    python -m gpt_jax.harness --model_args workdir=runs/shakespeare --tasks lambada_openai

lm-eval 0.4 finds models only in its own source tree, so a plain `lm_eval --model gpt_jax`
cannot see this one; everything else is lm-eval's (tasks, --include_path, --limit, --num_fewshot,
--output_path, --log_samples, ...). A task whose data cannot be read (not downloaded and offline,
or a local file gone) is one line.
"""

import sys

from gpt_jax import cli
from gpt_jax.errors import UserError

COMMANDS = ('run', 'ls', 'validate')


def lm_eval_argv(argv: list[str]) -> list[str]:
  """lm-eval's argv for ours: the subcommand first ('run' by default), --model gpt_jax added to a
  run that names none."""
  command, rest = (argv[0], argv[1:]) if argv[:1] and argv[0] in COMMANDS else ('run', argv)
  if command == 'run' and not any(a == '--model' or a.startswith('--model=') for a in rest):
    rest = ['--model', 'gpt_jax', *rest]
  return ['lm-eval', command, *rest]


def main(argv: list[str] | None = None) -> None:
  def evaluate():
    try:
      from lm_eval.__main__ import cli_evaluate
    except ImportError:
      raise UserError("lm-evaluation-harness is not installed; pip install -e '.[eval]'") from None
    import gpt_jax.harness  # noqa: F401  registers 'gpt_jax'
    sys.argv = lm_eval_argv(sys.argv[1:] if argv is None else argv)
    try:
      cli_evaluate()
    except (FileNotFoundError, ConnectionError) as e:
      raise UserError(f'the data of task {_task_name(sys.argv)} cannot be read here ({e}); run '
                      'where the Hugging Face Hub can be reached, or copy a datasets cache made '
                      'there (HF_DATASETS_CACHE, with HF_DATASETS_OFFLINE=1), or point the '
                      'task\'s dataset_kwargs at local files and pass --include_path') from None
  cli.run(evaluate)


def _task_name(argv: list[str]) -> str:
  for i, arg in enumerate(argv):
    if arg == '--tasks' and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith('--tasks='):
      return arg.split('=', 1)[1]
  return '(none named)'


if __name__ == '__main__':
  main()
