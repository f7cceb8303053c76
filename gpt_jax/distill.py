"""Knowledge distillation: a frozen teacher (any finished run of this project) whose outputs a
student learns from, through losses.distillation_loss inside the student's train step."""

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections

from gpt_jax import checkpoint, model, optim
from gpt_jax.errors import UserError
from gpt_jax.state import abstract_state
from gpt_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Teacher:
  gpt: model.GPT
  params: Any  # sharded like the student's, by the same rules
  config: ml_collections.ConfigDict  # the teacher run's config


def load_teacher(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                 mesh: jax.sharding.Mesh) -> Teacher:
  """The latest parameters of the run in config.distill.teacher, checked against the student."""
  workdir = config.distill.teacher
  fix = 'pass --config.distill.teacher=DIR, the workdir of a finished run of this project'
  paths = {name: os.path.join(workdir, name) for name in ('config.json', 'tokenizer.model',
                                                          'checkpoints')}
  missing = [name for name, path in paths.items() if not os.path.exists(path)]
  if missing:
    raise UserError(f'distill.teacher={workdir!r} is not a finished run (no {missing[0]}); {fix}')
  if Tokenizer.load(paths['tokenizer.model']).sha256 != tokenizer.sha256:
    raise UserError(f'the teacher in {workdir} used another tokenizer than the student; give the '
                    f'student the same data settings or --config.data.tokenizer='
                    f'{paths["tokenizer.model"]}')
  with open(paths['config.json']) as f:
    teacher_config = ml_collections.ConfigDict(json.load(f))
  if teacher_config.model.vocab_size != config.model.vocab_size:
    raise UserError(f'the teacher has model.vocab_size={teacher_config.model.vocab_size}, the '
                    f'student {config.model.vocab_size}; set the student\'s to match')
  ckpts = checkpoint.Checkpoints(paths['checkpoints'], keep=teacher_config.keep_checkpoints)
  step = ckpts.latest_step()
  if step is None:
    raise UserError(f'the teacher in {workdir} has no checkpoint yet; {fix}')
  tx = optim.optimizer(teacher_config.optim, teacher_config.steps)
  teacher_config.mesh = config.mesh  # the teacher lives on the student's mesh
  teacher_config.model.dtype = config.model.dtype  # and computes in the student's dtype
  gpt = model.build(teacher_config.model)
  params = ckpts.restore_state(step, abstract_state(gpt, tx, teacher_config, mesh)).params
  ckpts.close()
  return Teacher(gpt, params, teacher_config)
