"""Knowledge distillation: a frozen teacher (any finished run of this project) whose outputs a
student learns from, through losses.distillation_loss inside the student's train step."""

import jax
import ml_collections

from gpt_jax import runs
from gpt_jax.tokenizer import Tokenizer

Teacher = runs.Run


def load_teacher(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                 mesh: jax.sharding.Mesh) -> Teacher:
  """The latest parameters of the run in config.distill.teacher, on the student's mesh and in its
  dtype, checked against the student."""
  teacher = runs.load(config.distill.teacher, mesh=mesh, dtype=config.model.dtype,
                      what='distill.teacher')
  runs.check_compatible(teacher, config.distill.teacher, 'distill.teacher', config, tokenizer)
  return teacher
