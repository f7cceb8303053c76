"""python -m gpt_jax.expand_vocab --base=RUN --corpus=FILES --pieces=N --out=DIR: a run whose
tokenizer is RUN's extended with up to N pieces of the corpus's text (tokenizer_extension) and whose
model has rows for them (vocab_expansion), at step 0, to continue pretraining from:

  python -m gpt_jax.train --config=... --config.init_from=DIR --config.data.corpus=FILES \\
      --config.data.tokenizer=DIR/tokenizer.model --config.model.vocab_size=<DIR's>

Options: --init=mean|random (the new rows), --vocab_size (0: the tokenizer's size rounded up to a
multiple of 64), --text_field (of .jsonl corpora), --seed (random init), --no-clean (learn from
the corpus as it is; by default it is cleaned by the default data.* stages, as `prepare` does).
"""

import argparse
import re
import sys
from collections.abc import Sequence

from gpt_jax import cli, config as config_lib, files, runs, vocab_expansion
from gpt_jax.errors import UserError


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = cli.ArgumentParser(prog='python -m gpt_jax.expand_vocab',
                              description=__doc__.split('\n\n')[0])
  parser.add_argument('--base', required=True, help='the run to extend (trained or imported)')
  parser.add_argument('--corpus', required=True,
                      help="the new domain's text: files, directories or globs, as data.corpus "
                      "(a directory gives its .txt/.md/.jsonl/.json/.parquet files: name code "
                      "by a glob, e.g. 'DIR/*.py')")
  parser.add_argument('--pieces', type=int, required=True, help='new pieces to add, at most')
  parser.add_argument('--out', required=True, help='the extended run (a new directory)')
  parser.add_argument('--init', choices=vocab_expansion.INITS, default='mean',
                      help="new rows: the mean of the base's rows of the piece's parts, or random")
  parser.add_argument('--vocab_size', type=int, default=0,
                      help='the model vocabulary; 0: the tokenizer\'s size rounded up to 64')
  parser.add_argument('--text_field', default='text', help='the text field of .jsonl records')
  parser.add_argument('--seed', type=int, default=0, help='of --init=random')
  parser.add_argument('--clean', action=argparse.BooleanOptionalAction, default=True,
                      help="clean the corpus with the default data.* stages (quality, exact "
                      "de-duplication, PII) before learning pieces from it, as prepare would")
  args = parser.parse_args(argv)
  if args.pieces <= 0:
    raise UserError(f'--pieces={args.pieces}: the pieces to add must be >= 1')
  if args.vocab_size < 0:
    raise UserError(f'--vocab_size={args.vocab_size} is negative; pass 0 (the default) or more')
  return args


def expand(args: argparse.Namespace, log=print) -> str:
  """Writes the extended run; returns its directory."""
  runs.read_config(args.base, '--base')  # a UserError now if it is not a run
  files.check_new_directory(args.out, '--out')
  data = config_lib.base_config().data
  data.update(corpus=args.corpus, text_field=args.text_field)
  if not args.clean:
    data.update(min_chars=0, min_letter_fraction=0.0, exact_dedup=False, scrub_pii=False)
  try:
    texts = vocab_expansion.domain_texts(data, log)
  except UserError as e:  # corpus and cleaning errors name the training config's settings
    raise UserError(_this_commands_flags(str(e))) from None
  return vocab_expansion.expand_run(args.base, texts, args.pieces, args.out, init=args.init,
                                    vocab_size=args.vocab_size, seed=args.seed, log=log)


def _this_commands_flags(message: str) -> str:
  """A corpus or cleaning error with this command's flags for the config's it names."""
  message = re.sub(r'relax \w+ with --config\.data\.\S+( or --config\.data\.\S+)?',
                   'pass --no-clean to learn from it as it is', message)
  return (message.replace('--config.data.corpus', '--corpus')
          .replace('--config.data.text_field', '--text_field'))


def main(argv=None) -> None:
  cli.run(lambda: expand(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == '__main__':
  main()
