"""python -m gpt_jax.lora merge --workdir=DIR --out=DIR2: a LoRA run's merged weights,
W + (alpha/r)·A·B, written as an ordinary run (gpt_jax.lora has the math). Nothing imports this
command."""

import sys

from gpt_jax import cli, files, quant, runs, sharding
from gpt_jax.errors import UserError
from gpt_jax.lora import is_adapted, merge
from gpt_jax.objectives import classify


def merge_run(workdir: str, out: str, log=print) -> str:
  """Writes the LoRA run in `workdir` merged (runs.load) into `out`, new or empty, all at once or
  not at all: an ordinary run of parameters alone (runs.write_params_run) at the LoRA run's step,
  its config with lora.rank = 0. A classify run keeps its head and special-token embeddings beside
  the merged model, as its checkpoints hold them, so evaluate --task reads it too. UserError for a
  run without adapters, a non-empty `out` or a base that changed. Returns `out`."""
  config = runs.read_config(workdir)
  if not is_adapted(config):
    raise UserError(f'{workdir} is not a LoRA run (its lora.rank is 0): it has no adapters to '
                    'merge; pass the workdir of a run trained with --config.lora.rank > 0')
  files.check_new_directory(out, '--out')  # before the slow part
  if config.objective in runs.MODEL_KEY:
    if quant.spec(config.model):
      raise UserError(f'{workdir} is a task-head run on a quantized base; evaluate it as it is '
                      '(evaluate --task), merging it is not supported')
    _, params, run = classify.load_classifier(workdir, mesh=sharding.data_parallel_mesh(),
                                               log=log)
  else:
    run = runs.load(workdir, log=log)
    params = run.params
  quantized = quant.spec(config.model)
  if quantized:  # runs.load kept the adapters apart
    params = merge(quant.dequantize_params(params, config.model), config.lora)
    config.model.quant.format = ''
    log(f'the base is {quantized.format}: merging dequantizes it, so {out} holds '
        f'{config.model.param_dtype} weights W + (alpha/r)·A·B')
  config.lora.rank = 0
  return runs.write_params_run(out, config, run.tokenizer, params, run.step, '--out')


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
  args = parser.parse_args(argv)
  print(f'merged {args.workdir} into {merge_run(args.workdir, args.out)}')


def main(argv=None) -> None:
  cli.run(lambda: _main(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
  main()
