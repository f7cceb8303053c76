"""A run's directory (its workdir): what it holds, and how a finished run is read back to sample
from, evaluate, fine-tune (config.init_from) or distill from (config.distill.teacher).

DIR/config.json    the run's whole config
DIR/tokenizer.model  the tokenizer its data was encoded with (sentencepiece), or
DIR/tokenizer.json   a Hugging Face one (a model imported by gpt_jax.hf)
DIR/checkpoints/   orbax checkpoints; the parameters of the latest one are what sampling,
                   evaluation, export and distillation use
"""

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections

from gpt_jax import checkpoint, model, optim, sharding
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError
from gpt_jax.state import abstract_state
from gpt_jax.tokenizer import Tokenizer

CONFIG, CHECKPOINTS = 'config.json', 'checkpoints'


@dataclasses.dataclass(frozen=True)
class Run:
  gpt: model.GPT
  params: Any  # sharded on the mesh it was loaded onto, by the logical axis rules
  config: ml_collections.ConfigDict  # the run's config, with mesh and dtype as loaded
  tokenizer: Tokenizer
  step: int  # of the checkpoint the parameters come from


def read_config(workdir: str, what: str = 'workdir') -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG)
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except FileNotFoundError:
    raise UserError(f'{what}={workdir!r} is not a run of this project (no {CONFIG}); pass the '
                    'workdir of a finished training run or of `python -m gpt_jax.hf import`'
                    ) from None
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read {path}: {e}; pass the workdir of a finished run') from None


def load(workdir: str, *, mesh: jax.sharding.Mesh | None = None, dtype: str | None = None,
         what: str = 'workdir') -> Run:
  """The latest parameters of the run in `workdir`, placed on `mesh` (default: all devices,
  data parallel), computing in `dtype` (default: the run's). `what` names the setting that gave
  `workdir`, for the error messages."""
  config = read_config(workdir, what)
  path = tokenizer_lib.find(workdir)
  if path is None:
    raise UserError(f'{what}={workdir!r} has no {" or ".join(tokenizer_lib.FILENAMES)}; pass the '
                    'workdir of a finished run')
  tokenizer = tokenizer_lib.load(path)
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, CHECKPOINTS), keep=config.keep_checkpoints)
  step = ckpts.latest_step()
  ckpts.close()
  if step is None:
    raise UserError(f'{what}={workdir!r} has no checkpoint yet; train it first or pass another run')
  if mesh is None:
    mesh = sharding.data_parallel_mesh()
  config.mesh = ml_collections.ConfigDict(dict(zip(mesh.axis_names, mesh.devices.shape)))
  if dtype:
    config.model.dtype = dtype
  gpt = model.build(config.model)
  tx = optim.optimizer(config.optim, config.steps)
  abstract_params = abstract_state(gpt, tx, config, mesh).params
  params = checkpoint.restore_params(os.path.join(workdir, CHECKPOINTS), step, abstract_params)
  return Run(gpt, params, config, tokenizer, step)


def check_compatible(run: Run, workdir: str, what: str, config: ml_collections.ConfigDict,
                     tokenizer: Tokenizer) -> None:
  """UserError unless the run loaded from `workdir` (given as setting `what`) shares the tokenizer
  and vocabulary of the run that `config` and `tokenizer` describe."""
  if run.tokenizer.sha256 != tokenizer.sha256:
    raise UserError(f'{what}={workdir!r} used another tokenizer than this run; give this run the '
                    f'same data settings or --config.data.tokenizer='
                    f'{os.path.join(workdir, run.tokenizer.filename)}')
  if run.config.model.vocab_size != config.model.vocab_size:
    raise UserError(f'{what}={workdir!r} has model.vocab_size={run.config.model.vocab_size}, this '
                    f'run {config.model.vocab_size}; set --config.model.vocab_size to match')
