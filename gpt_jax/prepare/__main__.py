"""python -m gpt_jax.prepare --config=FILE [--config.data.KEY=VALUE ...]: prepares config.data's
corpus on this machine (gpt_jax.prepare), or, with --config.data.shard=i/N, this machine's part
as machine i of N of gpt_jax.cluster_prepare (datatrove's local executor, the cache on a shared
filesystem: every machine runs the command with its own i, and each waits for the others between
stages, because de-duplication is across the whole corpus)."""

import sys

from gpt_jax import cli, cluster_prepare, prepare


def main(argv=None) -> None:
  def run():
    config, _ = cli.parse_train_args(sys.argv if argv is None else argv)
    if config.data.shard:
      directory = cluster_prepare.prepare_on_cluster(
          cluster_prepare.as_machine_of(config.data), config.model.vocab_size)
    else:
      directory = prepare.prepare_directory(config.data, config.model.vocab_size)
    print(f'prepared data: {directory}')

  cli.run(run)


if __name__ == '__main__':
  main()
