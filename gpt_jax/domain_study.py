"""The continued-pretraining study (a config with a `domain` section): does extending the
tokenizer (Swallow, Fujii et al. 2024) pay on a new domain?

  python -m gpt_jax.train --config=experiments/swallow.py --workdir=DIR

From config.init_from (the base) and the new domain's corpus (config.data.corpus), trains four
models, once for config.steps steps and once for domain.time_budget_s seconds each:

  base tokenizer      continued pretraining of the base, its own tokenizer
  extended, mean      of the base extended by domain.pieces pieces (vocab_expansion), new rows the
                      mean of their parts
  extended, random    the same, new rows random
  from scratch        the same model trained from random weights, its own tokenizer of the
                      extended one's size trained on the domain

and writes DIR/domain_report.md and .json: per run, tokens per byte of the domain's held-out text,
bits per byte there (comparable across tokenizers), bits per byte on the base's validation text
(what was forgotten), and generation speed in tokens and bytes per second. Finished runs are
reused; the extended bases are made once (DIR/extended_mean, DIR/extended_random), their pieces
learned from the corpus cleaned by config.data's stages, as the training runs clean it.
"""

import copy
import os
import time


from gpt_jax import files, runs, sample, scoring, sharding, tokenizer as tokenizer_lib
from gpt_jax import trainer, vocab_expansion
from gpt_jax.errors import UserError

REPORT = 'domain_report'
RUNS = ('base tokenizer', 'extended, mean', 'extended, random', 'from scratch')
GENERATE = dict(prompts=8, new_tokens=64)  # the generation-speed measurement


def _quiet(_):
  pass


def run_configs(config, workdir: str, extended: dict[str, str]) -> dict[str, tuple]:
  """(name, budget) -> (config, run directory) of the eight runs, each of the base's model."""
  shared = copy.deepcopy(config)
  with shared.unlocked():
    del shared.domain
  base_model = runs.read_config(config.init_from, 'init_from').model
  out = {}
  for name in RUNS:
    run = copy.deepcopy(shared)
    run.model.update(base_model.to_dict())  # the base's architecture for all four
    if name == 'base tokenizer':
      run.data.tokenizer = tokenizer_lib.find(config.init_from)
      run.model.vocab_size = base_model.vocab_size
    elif name == 'from scratch':
      run.init_from, run.data.tokenizer = '', ''
      run.model.vocab_size = runs.read_config(extended['mean']).model.vocab_size
    else:
      source = extended[name.split(', ')[1]]
      run.init_from = source
      run.data.tokenizer = tokenizer_lib.find(source)
      run.model.vocab_size = runs.read_config(source).model.vocab_size
    slug = name.replace(', ', '_').replace(' ', '_')
    out[name, 'steps'] = (run, os.path.join(workdir, f'{slug}_steps'))
    timed = copy.deepcopy(run)
    timed.time_budget_s = config.domain.time_budget_s
    out[name, 'time'] = (timed, os.path.join(workdir, f'{slug}_time'))
  return out


def run_study(config, workdir: str, log=print) -> dict:
  """Makes what is missing in `workdir`, measures every run and writes the report."""
  if not config.init_from:
    raise UserError('the domain study continues a pretrained model: pass --config.init_from=DIR '
                    '(e.g. runs/shakespeare)')
  extended = {}
  texts = None
  for init in ('mean', 'random'):
    extended[init] = os.path.join(workdir, f'extended_{init}')
    if not os.path.exists(os.path.join(extended[init], runs.CONFIG)):
      texts = texts or vocab_expansion.domain_texts(config.data, log)
      vocab_expansion.expand_run(config.init_from, texts, config.domain.pieces, extended[init],
                                 init=init, seed=config.seed, log=log)
  chain = run_configs(config, workdir, extended)
  for i, ((name, budget), (run, run_dir)) in enumerate(chain.items(), 1):
    log(f'[{i}/{len(chain)}] {name}, equal {budget} -> {run_dir}')
    trainer.train(run, run_dir, log=_quiet)  # a finished run is only read back
  base = runs.load(config.init_from, log=_quiet)
  forgetting = scoring.val_texts(base)
  results = {'pieces': config.domain.pieces, 'steps': config.steps,
             'time_budget_s': config.domain.time_budget_s, 'runs': {}}
  for (name, budget), (run, run_dir) in chain.items():
    results['runs'][f'{name} | {budget}'] = measure(run_dir, forgetting, config.eval_batches)
    log(f'    {name}, equal {budget}: {results["runs"][f"{name} | {budget}"]}')
  files.write_json(os.path.join(workdir, REPORT + '.json'), results)
  files.write_text(os.path.join(workdir, REPORT + '.md'), report_text(results))
  log(f'report: {os.path.join(workdir, REPORT + ".md")}')
  return results


def measure(run_dir: str, base_texts: list[str], eval_batches: int) -> dict:
  """Of the finished run: steps, tokens per byte and bits per byte of the domain's validation
  split, bits per byte of the base's validation texts, generation tokens and bytes per second."""
  mesh = sharding.data_parallel_mesh()
  run = runs.load(run_dir, mesh=mesh, log=_quiet)
  scorer = scoring.Scorer(run, mesh, run.config.batch_size, run.config.seq_len)
  domain = scoring.lm_metrics(scorer, scoring.val_tokens(run), run.tokenizer, eval_batches)
  forgotten = scoring.lm_metrics(scorer, scoring.file_tokens(base_texts, run.tokenizer),
                                 run.tokenizer, eval_batches)
  prompts = [[run.tokenizer.eos_id]] * GENERATE['prompts']
  new_tokens = min(GENERATE['new_tokens'], sample.context_length(run.config.model) - 1)
  generate = lambda seed: sample.generate(run.gpt, run.params, prompts, max_new_tokens=new_tokens,
                                          temperature=1.0, seed=seed,
                                          num_tokens=run.tokenizer.vocab_size)
  generate(0)  # compiles
  start = time.perf_counter()
  rows = generate(1)
  seconds = time.perf_counter() - start
  tokens = sum(map(len, rows))
  return {'steps': run.step, 'tokens_per_byte': domain['tokens'] / domain['bytes'],
          'domain_bpb': domain['bpb'], 'base_bpb': forgotten['bpb'],
          'tokens_per_s': tokens / seconds,
          'bytes_per_s': sum(len(run.tokenizer.decode(r).encode()) for r in rows) / seconds}


def report_text(results: dict) -> str:
  rows = []
  for key, m in results['runs'].items():
    name, budget = key.split(' | ')
    rows.append(f'| {name} | equal {budget} | {m["steps"]} | {m["tokens_per_byte"]:.3f} | '
                f'{m["domain_bpb"]:.4f} | {m["base_bpb"]:.4f} | {m["tokens_per_s"]:,.0f} | '
                f'{m["bytes_per_s"]:,.0f} |')
  return '\n'.join([
      '# Continued pretraining on a new domain, with and without vocabulary expansion', '',
      f'{results["pieces"]} pieces added (Swallow); equal steps: {results["steps"]}; equal time: '
      f'{results["time_budget_s"]:g} s of training each. Bits per byte on the domain\'s '
      'validation split and on the base\'s validation text (what was forgotten); generation of '
      f'{GENERATE["prompts"]} × {GENERATE["new_tokens"]} tokens at temperature 1.', '',
      '| run | budget | steps | domain tokens/byte | domain bits/byte | base text bits/byte | '
      'generated tokens/s | generated bytes/s |', '|---|---|---|---|---|---|---|---|', *rows, ''])
