"""The training command: `python -m gpt_jax.train --config=FILE [--config.x.y=v] --workdir=DIR`.

A config with a `sweep` section runs a scaling-law sweep (gpt_jax.sweep), one with a `study`
section the distillation study (gpt_jax.distill_study), one with a `chain` section the
preference-tuning chain (gpt_jax.preference_study), one with an `ablation` section the ablation
study at equal wall time (gpt_jax.ablation_study), one with a `domain` section the
continued-pretraining study with vocabulary expansion (gpt_jax.domain_study); any other trains
one model with the objective it names (gpt_jax.trainer). Nothing imports this module.
"""

import sys

import ml_collections

from gpt_jax import cli


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  # Imported here, not at the top: data preparation's worker processes import this module (they
  # are spawned and load the main module) and need none of JAX.
  from gpt_jax import ablation_study, distill_study, domain_study, preference_study, sweep, trainer
  if 'sweep' in config:
    return sweep.run_sweep(config, workdir)
  if 'study' in config:
    return distill_study.run_study(config, workdir)
  if 'chain' in config:
    return preference_study.run_study(config, workdir)
  if 'ablation' in config:
    return ablation_study.run_study(config, workdir)
  if 'domain' in config:
    return domain_study.run_study(config, workdir)
  return trainer.train(config, workdir)


def main(argv=None) -> None:
  cli.run(lambda: run(*cli.parse_train_args(sys.argv if argv is None else argv)))


if __name__ == '__main__':
  main()
