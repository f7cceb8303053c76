"""Post-training quantization of a finished run's weights (gpt_jax.quant has the formats).

  python -m gpt_jax.quantize --workdir=DIR --out=DIR2 --format=int8|int4|nf4 [--group_size=G]
      [--zero_point] [--embeddings] [--activations=none|int8]

DIR2 becomes a run of parameters alone, as `gpt_jax.hf import` writes one, whose config.json has
model.quant filled in: gpt_jax.sample and gpt_jax.evaluate read it as any run, and LoRA
fine-tunes it as a frozen base (QLoRA on nf4). The command prints the parameters' device bytes
and the checkpoint's file bytes, before and after.
"""

import dataclasses
import os
import sys

import jax
import ml_collections

from gpt_jax import cli, files, lora, quant as quant_lib, runs
from gpt_jax.errors import UserError

DEFAULT_GROUP_SIZE = {'int8': 0, 'int4': 128, 'nf4': 64}  # nf4: QLoRA's block size


def check(quant: quant_lib.QuantSpec) -> None:
  """UserError for settings that do not go together."""
  if quant.group_size < 0:
    raise UserError(f'--group_size={quant.group_size} must be >= 0 (0 = one scale per output '
                    'column)')
  if quant.zero_point and quant.format != 'int4':
    raise UserError(f'--zero_point is for --format=int4; {quant.format} is symmetric')
  if quant.activations == 'int8' and quant.format == 'nf4':
    raise UserError('--activations=int8 multiplies integer weights, and nf4 code points are not '
                    'integers; use --format=int8 or int4, or --activations=none')


def file_bytes(directory: str) -> int:
  """Bytes of every file under `directory`."""
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(directory) for name in names)


def device_bytes(params) -> int:
  """Bytes of a tree of arrays in device memory."""
  return sum(x.nbytes for x in jax.tree.leaves(params))


def quantize_run(workdir: str, out: str, quant: quant_lib.QuantSpec, log=print) -> str:
  """Writes the run in `workdir` (of a LoRA run, its merged model) with quantized weights to `out`
  (new or empty), all or nothing; logs the bytes before and after. Returns out's absolute path."""
  check(quant)
  files.check_new_directory(out, '--out')  # before the slow part
  config = runs.read_config(workdir, '--workdir')
  if quant_lib.spec(config.model):
    fix = ('merge it (`python -m gpt_jax.lora merge`) and quantize the merged run'
           if lora.is_adapted(config) else 'quantize the float run it was made from')
    raise UserError(f'--workdir={workdir} is quantized already ({config.model.quant.format}); '
                    f'{fix}')
  run = runs.load(workdir, what='--workdir', log=log)
  params = quant_lib.quantize_params(run.params, config.model, quant)
  config.model.quant = ml_collections.ConfigDict(dataclasses.asdict(quant))
  if config.get('objective') in runs.MODEL_KEY:
    config.objective = 'lm'  # runs.load gave the model alone: its task head stays behind
  adapted = lora.is_adapted(config)
  if adapted:
    config.lora.rank = 0  # runs.load gave the merged model
  out = runs.write_params_run(out, config, run.tokenizer, params, run.step, '--out')
  source_files = file_bytes(os.path.join(workdir, runs.CHECKPOINTS, str(run.step)))
  out_files = file_bytes(os.path.join(out, runs.CHECKPOINTS))
  before, after = device_bytes(run.params), device_bytes(params)
  source_note = ("a LoRA run's hold its adapters alone" if adapted
                 else "a trained run's hold its optimizer state too")
  log(f'quantized {workdir} (step {run.step}) into {out}: {quant.format}, group size '
      f'{quant.group_size or "all inputs"}{", zero points" if quant.zero_point else ""}, '
      f'{"with" if quant.embeddings else "without"} the embeddings, activations '
      f'{quant.activations}')
  log(f'parameters on the device: {before:,} -> {after:,} bytes ({before / after:.2f}x smaller); '
      f'checkpoint files: {source_files:,} -> {out_files:,} bytes ({source_note})')
  return out


def _parse(argv: list[str]) -> tuple[str, str, quant_lib.QuantSpec]:
  parser = cli.ArgumentParser(prog='python -m gpt_jax.quantize', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='the run to quantize')
  parser.add_argument('--out', required=True, help='a new directory: the quantized run')
  parser.add_argument('--format', required=True, choices=quant_lib.FORMATS)
  parser.add_argument('--group_size', type=int, default=None,
                      help='input rows per scale (0 = all); default '
                      + ', '.join(f'{f} {g}' for f, g in DEFAULT_GROUP_SIZE.items()))
  parser.add_argument('--zero_point', action='store_true', help='int4: asymmetric groups')
  parser.add_argument('--embeddings', action='store_true',
                      help='also the token embedding and the output head')
  parser.add_argument('--activations', default='none', choices=quant_lib.ACTIVATIONS,
                      help='int8: quantize each token\'s activations too, multiply integers')
  args = parser.parse_args(argv)
  group_size = DEFAULT_GROUP_SIZE[args.format] if args.group_size is None else args.group_size
  return args.workdir, args.out, quant_lib.QuantSpec(args.format, group_size, args.zero_point,
                                                     args.activations, args.embeddings)


def main(argv=None) -> None:
  cli.run(lambda: quantize_run(*_parse(sys.argv[1:] if argv is None else argv)))


if __name__ == '__main__':
  main()
