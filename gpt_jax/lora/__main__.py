"""Commands on LoRA runs (gpt_jax.lora has the math); nothing imports this module.

python -m gpt_jax.lora merge --workdir=DIR --out=DIR2    the merged weights W + (alpha/r)·A·B,
                                                         written as an ordinary run
python -m gpt_jax.lora rebase --workdir=DIR --base=BASE  records where DIR's base run now is
"""

import os
import sys

from gpt_jax import checkpoint, cli, files, quant, runs, sharding
from gpt_jax.errors import UserError
from gpt_jax.lora import base_record, check_base, is_adapted, merge, read_base, write_base
from gpt_jax.objectives import reward

# What a run keeps beside its checkpoints that readers of its parameters need: the reward
# model's bias shift (objectives.reward), recorded at the step the merged run keeps.
PARAMETER_RECORDS = (reward.NORMALIZATION,)


def _lora_config(workdir: str, missing: str):
  """The config of the LoRA run in `workdir`; UserError, saying it has no `missing`, for a run
  that is not one."""
  config = runs.read_config(workdir)
  if not is_adapted(config):
    raise UserError(f'{workdir} is not a LoRA run (its lora.rank is 0): it has no {missing}; '
                    'pass the workdir of a run trained with --config.lora.rank > 0')
  return config


def merge_run(workdir: str, out: str, log=print) -> str:
  """Writes the LoRA run in `workdir` merged (runs.load) into `out`, new or empty, all at once or
  not at all: an ordinary run of the same objective, of parameters alone
  (runs.write_params_run), at the LoRA run's step, its config with lora.rank = 0. A run that
  trained more than the model (runs.MODEL_KEY: a task, reward or value head) keeps it beside the
  merged model as its checkpoints hold it, and its PARAMETER_RECORDS, so evaluate --task, a
  reward model's readers and sampling read it as they read the LoRA run. A quantized base
  (QLoRA) is dequantized first. UserError for a run without adapters, a non-empty `out` or a
  base that changed. Returns `out`."""
  config = _lora_config(workdir, 'adapters to merge')
  files.check_new_directory(out, '--out')  # before the slow part
  mesh = sharding.data_parallel_mesh()
  run = runs.load(workdir, mesh=mesh, log=log)
  params = run.params
  quantized = quant.spec(config.model)
  if quantized:  # runs.load kept the adapters apart
    params = merge(quant.dequantize_params(params, config.model), config.lora)
    config.model.quant.format = ''
    log(f'the base is {quantized.format}: merging dequantizes it, so {out} holds '
        f'{config.model.param_dtype} weights W + (alpha/r)·A·B')
  key = runs.MODEL_KEY.get(config.objective)
  if key:
    params = {key: params, **checkpoint.restore_params_beside(
        os.path.join(workdir, runs.CHECKPOINTS), run.step, key, mesh)}
  config.lora.rank = 0
  records = [os.path.join(workdir, name) for name in PARAMETER_RECORDS]
  return runs.write_params_run(out, config, run.tokenizer, params, run.step, '--out',
                               copy=[path for path in records if os.path.exists(path)])


def rebase_run(workdir: str, base: str, log=print) -> str:
  """Records `base` as the base of the LoRA run in `workdir` (its lora.json, rewritten
  atomically), after checking that it is the model the adapters were trained on: for a base that
  moved where the LoRA run cannot find it (lora.recorded_places). UserError for a run without
  adapters, a `base` that is not a run, or one with another fingerprint. Returns `base`,
  absolute."""
  _lora_config(workdir, 'base to record')
  read_base(workdir)  # a LoRA run that never trained has nothing to rebase
  run = runs.load(base, what='--base', log=log)
  found = base_record(base, run.step, run.params)
  check_base(workdir, found)
  write_base(workdir, found)
  return found['base']


def _main(argv: list[str]) -> None:
  parser = cli.ArgumentParser(prog='python -m gpt_jax.lora',
                              description='Commands on LoRA runs (Hu et al. 2021).')
  commands = parser.add_subparsers(dest='command', required=True)
  merge_parser = commands.add_parser(
      'merge', help='a LoRA run into an ordinary run',
      description="Writes a LoRA run's merged weights, W + (alpha/r)·A·B, as an ordinary run; a "
      'quantized base (QLoRA) is dequantized, so the weights are float.')
  merge_parser.add_argument('--workdir', required=True, help='the LoRA run')
  merge_parser.add_argument('--out', required=True, help='a new directory')
  rebase_parser = commands.add_parser(
      'rebase', help='record where the base of a LoRA run moved to',
      description="Records BASE as the base run of the LoRA run DIR (its lora.json), after "
      'checking that it is the model the adapters were trained on (their fingerprint).')
  rebase_parser.add_argument('--workdir', required=True, help='the LoRA run')
  rebase_parser.add_argument('--base', required=True, help='its base run, where it is now')
  args = parser.parse_args(argv)
  if args.command == 'merge':
    print(f'merged {args.workdir} into {merge_run(args.workdir, args.out)}')
  else:
    print(f'the base of {args.workdir} is now {rebase_run(args.workdir, args.base)}')


def main(argv=None) -> None:
  cli.run(lambda: _main(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
  main()
