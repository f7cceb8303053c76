"""The preference-tuning demo (a config with a `chain` section): SFT → reward model → DPO and PPO,
then what each model's own answers to held-out prompts are worth to the judge.

  python -m gpt_jax.train --config=experiments/preference.py --workdir=DIR

trains what is missing of
  DIR/sft     objective sft from config.init_from (the base), on the chosen answers of data.tasks
  DIR/reward  objective reward from DIR/sft, on the pairs of data.tasks
  DIR/dpo     objective dpo from DIR/sft, DIR/sft its reference
  DIR/ppo     objective ppo from DIR/sft, DIR/reward its reward model and DIR/sft its reference
(a run already trained to its last step with the same settings is not touched; chain.runs holds
each run's own settings), then samples chain.samples answers to each held-out prompt
(data.held_out_tasks) from the base, SFT (the start), DPO and PPO models, with the same seed for
every model, and writes DIR/preference_report.md and DIR/preference_report.json: per model

  win rate   how often the judge (gpt_jax.tasks.judge: nearer ten syllables) prefers the model's
             answer to the start's answer to the same prompt drawn with the same random numbers
             (a tie counts ½; the start itself: exactly ½)
  reward     the reward model's mean score of the answers
  KL         to the start model, KL(π ‖ π_start) in nats per answer, a Monte Carlo estimate
  bits/byte  on the corpus's validation split: what tuning cost the language model
"""

import copy
import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from gpt_jax import checkpoint, cli, files, inference_scaling, preferences, runs, sample, scoring
from gpt_jax import sharding, trainer
from gpt_jax.errors import UserError
from gpt_jax.figures import plt, save
from gpt_jax.objectives import reward
from gpt_jax.tasks import judge

RUNS = ('sft', 'reward', 'dpo', 'ppo')  # each run's name is its objective
START = 'sft'  # the model DPO and PPO start from, and the one they are measured against
REPORT = 'preference_report'
# In each run's directory: the state of the runs it read when it was trained (sources)
CHAIN_SOURCES = 'chain_sources.json'

# (prompts, answers) -> the reward model's score of each answer to its prompt, (R,) float
Score = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def _quiet(_):
  pass


# --- the runs --------------------------------------------------------------------------------


def run_configs(config, workdir: str) -> dict[str, tuple]:
  """name -> (config, run directory) of each of RUNS: `config` without its chain section, with the
  run's objective, its settings from chain.runs.NAME and the runs it starts from and reads."""
  shared = copy.deepcopy(config)
  with shared.unlocked():  # the command line locks configs against new keys
    del shared.chain
  found = {}
  for name in RUNS:
    run = copy.deepcopy(shared)
    run.objective = name
    run.update(config.chain.runs[name].to_dict())
    found[name] = (run, os.path.join(workdir, name))
  sft_dir, reward_dir = found['sft'][1], found['reward'][1]
  for name in ('reward', 'dpo', 'ppo'):
    found[name][0].init_from = sft_dir
  found['dpo'][0].dpo.reference = sft_dir
  found['ppo'][0].ppo.update(reward_model=reward_dir, reference=sft_dir)
  return found


def read_runs(config) -> dict[str, str]:
  """setting -> workdir of each run a chain run reads: its start and any frozen run."""
  reads = {'init_from': config.init_from}
  if config.objective == 'dpo':
    reads['dpo.reference'] = config.dpo.reference
  if config.objective == 'ppo':
    reads.update({'ppo.reference': config.ppo.reference,
                  'ppo.reward_model': config.ppo.reward_model})
  return reads


def run_state(run_dir: str) -> list[int]:
  """[newest committed step, its directory's modification time in ns] of a run: what tells a
  retrained run from the one trained before, without loading it."""
  directory = os.path.join(run_dir, runs.CHECKPOINTS)
  step = next(iter(checkpoint.committed_steps(directory)), -1)
  return [step, os.stat(os.path.join(directory, str(step))).st_mtime_ns if step >= 0 else 0]


def sources(config) -> dict:
  """setting -> run_state of each run `config` reads (read_runs)."""
  return {setting: run_state(path) for setting, path in read_runs(config).items()}


def step_config(chain_file: str, name: str):
  """The config of run `name` of the chain that the experiment file `chain_file` configures, as
  run_configs makes it for a chain in runs/preference: how experiments/reward.py, dpo.py and
  ppo.py run one step of the demo alone."""
  return run_configs(cli.load_experiment(chain_file), os.path.join('runs', 'preference'))[name][0]


def finished(config, run_dir: str) -> bool:
  """Whether run_dir holds this run trained to its last step from the runs it reads as they are
  now: a checkpoint at config.steps, CHAIN_SOURCES recording the read runs' current run_state, and
  a config.json whose settings are config's (runs.config_changes), but for the model's: a
  fine-tuning run takes those from its init_from (objectives.base.load_base)."""
  if not os.path.exists(os.path.join(run_dir, runs.CONFIG)):
    return False
  try:
    with open(os.path.join(run_dir, CHAIN_SOURCES), encoding='utf-8') as f:
      if json.load(f) != sources(config):
        return False  # a run it reads was retrained since
  except (OSError, ValueError):
    return False
  changes = runs.config_changes(runs.read_config(run_dir).to_dict(), config)
  return (config.steps in checkpoint.committed_steps(os.path.join(run_dir, runs.CHECKPOINTS))
          and not [change for change in changes if not change.startswith('model.')])


def run_study(config, workdir: str, log=print) -> dict:
  """Trains what is missing of the chain in `workdir`, evaluates its models and writes the
  report; returns the report's results (preference_report.json)."""
  if not config.init_from:
    raise UserError('the preference chain starts from a pretrained model: pass '
                    '--config.init_from=DIR (e.g. runs/shakespeare)')
  if not config.data.held_out_tasks:
    raise UserError('the preference chain is evaluated on held-out prompts: pass '
                    '--config.data.held_out_tasks=FILES (preference .jsonl files)')
  chain = run_configs(config, workdir)
  for i, (name, (run, run_dir)) in enumerate(chain.items(), 1):
    if finished(run, run_dir):
      log(f'[{i}/{len(chain)}] {name}: finished in {run_dir}')
      continue
    log(f'[{i}/{len(chain)}] {name}: {run.steps} steps from {run.init_from} -> {run_dir}')
    read = sources(run)
    final = trainer.train(run, run_dir, log=_quiet)
    files.write_json(os.path.join(run_dir, CHAIN_SOURCES), read)
    log('    ' + ', '.join(f'{k} {v:.4f}' for k, v in final.items() if k.startswith('val_')))

  mesh = sharding.data_parallel_mesh()
  load = lambda directory: runs.load(directory, mesh=mesh, log=log)
  models = {'base': load(config.init_from), **{n: load(chain[n][1]) for n in ('sft', 'dpo', 'ppo')}}
  c = config.chain
  prompts = list(dict.fromkeys(p.prompt for p in preferences.read_pairs(
      config.data.held_out_tasks, 'data.held_out_tasks')))[:c.prompts or None]
  settings = Settings(samples=c.samples, max_new_tokens=c.max_new_tokens,
                      temperature=c.temperature, seed=config.seed,
                      batch_size=c.batch_size, seq_len=config.seq_len,
                      val_batches=c.val_batches, best_of=tuple(c.best_of),
                      best_of_pool=c.best_of_pool)
  reward_dir = chain['reward'][1]
  rm = reward.load_reward_model(reward_dir, 'the chain\'s reward model',
                                runs.read_config(reward_dir), models[START].tokenizer, mesh=mesh)
  score = lambda prompts, answers: rm.score_answers(prompts, answers, models[START].tokenizer,
                                                    config.seq_len, c.batch_size)
  log(f'evaluating {", ".join(models)} on {len(prompts)} held-out prompts, {c.samples} answers '
      'each')
  results = {'prompts': len(prompts), 'settings': dataclasses.asdict(settings), 'start': START,
             'models': evaluate_models(models, START, prompts, settings, mesh=mesh, score=score,
                                       val_tokens=scoring.val_tokens(models['base']), log=log)}
  if settings.best_of:
    log(f'best-of-N of {START} with the reward model, N = '
        f'{", ".join(map(str, settings.best_of))}')
    results['best_of_n'] = best_of_n(models[START], prompts, settings, score)
  write_report(results, workdir)
  log(f'report: {os.path.join(workdir, REPORT + ".md")}')
  return results


# --- the evaluation --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
  samples: int  # answers sampled per prompt
  max_new_tokens: int  # the longest answer (sampling stops at EOS)
  temperature: float  # of the sampling; 1.0 samples the policy itself (the KL estimate needs it)
  seed: int  # the same for every model: answer i of two models shares its random numbers
  batch_size: int  # rows sampled and scored at once
  seq_len: int  # tokens of a scored row; of the validation windows too
  val_batches: int = 0  # validation batches for bits/byte; 0 = the whole split
  best_of: tuple[int, ...] = ()  # N of best-of-N with the reward model over the start's samples
  best_of_pool: int = 0  # further samples per prompt: the reward's CDF for best-of-N's KL


def sample_answers(run: runs.Run, prompts: Sequence[str], settings: Settings
                   ) -> tuple[list[list[int]], list[list[int]]]:
  """(prompt rows, answers), settings.samples of each per prompt, prompt-major (answer s of
  prompt p at p·samples + s): a prompt row is EOS and preferences.prompt_text(prompt), cut on
  the left so that it and the answer fit in min(context, seq_len + 1) tokens; an answer is the
  sampled token ids up to (not including) EOS, at most max_new_tokens. Batch b of rows is drawn
  with seed settings.seed + b, so two models given the same prompts share their random numbers."""
  room = min(sample.context_length(run.config.model), settings.seq_len + 1)
  keep = room - settings.max_new_tokens
  if keep < 2:
    raise UserError(f'chain.max_new_tokens={settings.max_new_tokens} leaves no room for a prompt '
                    f'in the {settings.seq_len}-token rows; lower it or raise --config.seq_len')
  tokens, positions, _ = preferences.encode_prompts(prompts, run.tokenizer, keep)
  rows = [list(t[p >= 0]) for t, p in zip(tokens, positions) for _ in range(settings.samples)]
  answers = []
  for b, start in enumerate(range(0, len(rows), settings.batch_size)):
    answers += sample.generate(run.gpt, run.params, rows[start:start + settings.batch_size],
                               max_new_tokens=settings.max_new_tokens,
                               temperature=settings.temperature, eos_id=run.tokenizer.eos_id,
                               seed=settings.seed + b, num_tokens=run.tokenizer.vocab_size)
  return rows, answers


def answer_text(tokenizer, answer: Sequence[int]) -> str:
  """The text of a sampled answer without the space that separates it from the prompt."""
  return tokenizer.decode(list(answer)).removeprefix(' ')


def kl_estimate(logp: np.ndarray, logp_start: np.ndarray) -> tuple[float, float]:
  """(mean, standard error) of log π(y|x) − log π_start(y|x) over answers y sampled from π: the
  Monte Carlo estimate of KL(π ‖ π_start) in nats per answer (unbiased when the answers were
  sampled at temperature 1; the per-token terms summed, as in PPO's penalty, Ouyang et al. 2022)."""
  return _mean_se(np.asarray(logp, np.float64) - np.asarray(logp_start, np.float64))


def win_rate(answers: Sequence[str], start_answers: Sequence[str]) -> tuple[float, float]:
  """(mean, standard error) over pairs of 1 if the judge prefers answer i to start answer i, ½ for
  a tie, 0 otherwise: the judge's preference rate of the model over the start."""
  return _mean_se([(judge.prefers(a, b) + 1) / 2 for a, b in zip(answers, start_answers)])


def _mean_se(values) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
  return float(values.mean()), float(se)


def evaluate_models(models: dict[str, runs.Run], start: str, prompts: Sequence[str],
                    settings: Settings, *, mesh=None, score: Score | None = None,
                    val_tokens: np.ndarray | None = None, log=print) -> dict[str, dict]:
  """name -> metrics of each model's sampled answers to `prompts` (sample_answers): win_rate and
  win_rate_se against models[start] (win_rate), distance (the judge's mean distance from ten
  syllables), pentameter (the fraction of answers at ten), tokens (mean answer length) and ended
  (the fraction that ended with EOS), reward (score's mean; None without score), kl and kl_se to
  the start (kl_estimate), val_bpb on val_tokens (None without), and the first three (prompt,
  answer) examples. The models must share a tokenizer (UserError)."""
  mesh = mesh or sharding.data_parallel_mesh()
  tokenizer = models[start].tokenizer
  for name, run in models.items():
    if run.tokenizer.sha256 != tokenizer.sha256:
      raise UserError(f'model {name} uses another tokenizer than {start}; the chain\'s models must '
                      'share one')
  scorer = lambda run: scoring.Scorer(run, mesh, settings.batch_size, settings.seq_len)
  start_scorer = scorer(models[start])
  order = [start] + [name for name in models if name != start]
  results, start_texts = {}, None
  for name in order:
    run = models[name]
    rows, answers = sample_answers(run, prompts, settings)
    texts = [answer_text(tokenizer, a) for a in answers]
    if name == start:
      start_texts = texts
    own = start_scorer if name == start else scorer(run)
    logp = scoring.answer_logprobs(own, rows, answers, tokenizer.eos_id, settings.max_new_tokens)
    logp_start = (logp if name == start else
                  scoring.answer_logprobs(start_scorer, rows, answers, tokenizer.eos_id,
                                  settings.max_new_tokens))
    distances = np.array([judge.distance(t) for t in texts])
    rate, rate_se = win_rate(texts, start_texts)
    kl, kl_se = kl_estimate(logp, logp_start)
    repeated = [p for p in prompts for _ in range(settings.samples)]
    results[name] = {
        'win_rate': rate, 'win_rate_se': rate_se, 'distance': float(distances.mean()),
        'pentameter': float((distances == 0).mean()),
        'tokens': float(np.mean([len(a) for a in answers])),
        'ended': float(np.mean([len(a) < settings.max_new_tokens for a in answers])),
        'reward': float(np.mean(score(repeated, texts))) if score else None,
        'kl': kl, 'kl_se': kl_se,
        'val_bpb': (scoring.lm_metrics(own, val_tokens, tokenizer, settings.val_batches)['bpb']
                    if val_tokens is not None else None),
        'examples': [{'prompt': p, 'answer': t}
                     for p, t in zip(repeated[::settings.samples], texts[::settings.samples])][:3]}
    log(f'    {name}: win rate {rate:.3f}, KL {kl:.3f} nats')
  return {name: results[name] for name in models}


BEST_OF_SEED = 1_000_003  # added to the seed: best-of-N's samples are not the start's own


def best_of_n(run: runs.Run, prompts: Sequence[str], settings: Settings, score: Score
              ) -> list[dict]:
  """Best-of-N with the reward model over `run`'s samples (inference_scaling), for each N of
  settings.best_of: the judge's win rate of the chosen answer over the run's own answers to the
  same prompt (sample_answers with settings.seed: the start's row of the report), its reward and
  judge distance, and its KL from `run`: the closed form log N − (N−1)/N beside a measurement,
  log N + (N−1)·log F(r) averaged over the chosen answers, F the share of best_of_pool further
  samples of the prompt that the reward model scores below the chosen one (ties half; on
  continuous rewards exactly the closed form's terms, read low by the pool's finite size)."""
  n_max, pool = max(settings.best_of), settings.best_of_pool
  drawn = dataclasses.replace(settings, samples=n_max + pool, seed=settings.seed + BEST_OF_SEED)
  tokenizer = run.tokenizer
  _, answers = sample_answers(run, prompts, drawn)
  texts = [answer_text(tokenizer, a) for a in answers]
  rewards_PK = score([p for p in prompts for _ in range(n_max + pool)], texts).reshape(
      len(prompts), n_max + pool)
  texts_PK = np.array(texts, dtype=object).reshape(len(prompts), n_max + pool)
  _, own = sample_answers(run, prompts, settings)
  own_PS = np.array([answer_text(tokenizer, a) for a in own], dtype=object).reshape(
      len(prompts), settings.samples)
  pool_PM = rewards_PK[:, n_max:]
  rows = []
  for n in settings.best_of:
    pick = inference_scaling.best_of_n(rewards_PK[:, :n])
    chosen = texts_PK[np.arange(len(prompts)), pick]
    reward_P = rewards_PK[np.arange(len(prompts)), pick]
    wins = [np.mean([(judge.prefers(c, o) + 1) / 2 for o in others])
            for c, others in zip(chosen, own_PS)]
    rate, rate_se = _mean_se(wins)
    below = (pool_PM < reward_P[:, None]).sum(1) + 0.5 * (pool_PM == reward_P[:, None]).sum(1)
    kl = _mean_se(np.log(n) + (n - 1) * np.log((below + 0.5) / (pool + 1))) if pool else (
        None, None)
    rows.append({'n': n, 'win_rate': rate, 'win_rate_se': rate_se,
                 'reward': float(reward_P.mean()),
                 'distance': float(np.mean([judge.distance(c) for c in chosen])),
                 'kl': kl[0], 'kl_se': kl[1],
                 'kl_closed_form': float(inference_scaling.best_of_n_kl(n))})
  return rows


# --- the report ------------------------------------------------------------------------------


def _number(value, form: str) -> str:
  return '—' if value is None else format(value, form)


def verdict(name: str, m: dict, start: str) -> str:
  """One sentence: whether the judge's rate of `name` rose over the start's ½ by more than two
  standard errors, and at which KL."""
  low, high = m['win_rate'] - 2 * m['win_rate_se'], m['win_rate'] + 2 * m['win_rate_se']
  change = ('rose above' if low > 0.5 else 'fell below' if high < 0.5 else
            'did not differ measurably from')
  return (f'{name}: the judge prefers its answers to {start}\'s in {m["win_rate"]:.1%} '
          f'(± {m["win_rate_se"]:.1%}) of pairs; its rate {change} {start}\'s 50%, at a KL of '
          f'{m["kl"]:.2f} ± {m["kl_se"]:.2f} nats per answer.')


def report_text(results: dict) -> str:
  """preference_report.md of the results run_study returns."""
  s, start, models = results['settings'], results['start'], results['models']
  bpb_start = models[start]['val_bpb']
  rows = []
  for name, m in models.items():
    tax = (f' ({m["val_bpb"] - bpb_start:+.4f})' if m['val_bpb'] is not None and name != start
           else '')
    rows.append(f'| {name}{" (start)" if name == start else ""} | {m["win_rate"]:.1%} ± '
                f'{m["win_rate_se"]:.1%} | {m["distance"]:.2f} | {m["pentameter"]:.1%} | '
                f'{m["tokens"]:.1f} | {m["ended"]:.0%} | {_number(m["reward"], ".3f")} | '
                f'{m["kl"]:.2f} ± {m["kl_se"]:.2f} | {_number(m["val_bpb"], ".4f")}{tax} |')
  examples = [f'- **{name}**: {m["examples"][0]["prompt"]!r} → {m["examples"][0]["answer"]!r}'
              for name, m in models.items() if m['examples']]
  return '\n'.join([
      '# Preference tuning: SFT → reward model → DPO and PPO', '',
      f'{results["prompts"]} held-out prompts, {s["samples"]} answers to each sampled from every '
      f'model at temperature {s["temperature"]} (at most {s["max_new_tokens"]} tokens, seed '
      f'{s["seed"]} for all). The judge prefers the answer whose first line is nearer ten '
      'syllables (gpt_jax.tasks.judge); the win rate is the share of pairs (answer i of the model, '
      f'answer i of {start}) it prefers the model\'s in, a tie counting ½. KL(π ‖ π_{start}) is '
      'estimated on the model\'s own answers, in nats per answer; bits/byte are on the corpus\'s '
      'validation split (the change from the start: the alignment tax). ± one standard error.', '',
      '| model | judge win rate vs start | distance from 10 syllables | 10 syllables | answer '
      'tokens | ended | reward | KL to start (nats) | val bits/byte |',
      '|---|---|---|---|---|---|---|---|---|', *rows, '',
      *[verdict(name, m, start) for name, m in models.items() if name != start], '',
      'The first answer of each model to the first prompt:', '', *examples, '',
      *best_of_n_text(results)])


def best_of_n_text(results: dict) -> list[str]:
  """The report's best-of-N section (lines), empty without one."""
  rows, start = results.get('best_of_n'), results['start']
  if not rows:
    return []
  s = results['settings']
  table = [f'| {r["n"]} | {r["win_rate"]:.1%} ± {r["win_rate_se"]:.1%} | {r["reward"]:.3f} | '
           f'{r["distance"]:.2f} | {_number(r["kl"], ".2f")} ± {_number(r["kl_se"], ".2f")} | '
           f'{r["kl_closed_form"]:.2f} |' for r in rows]
  return [
      f'## Best-of-N: {start}\'s samples chosen by the reward model', '',
      f'N answers of {start} per prompt (temperature {s["temperature"]}, other random numbers '
      f'than its row above), the one the reward model scores highest kept; the judge compares it '
      f'with each of {start}\'s {s["samples"]} answers to the prompt (win rate: mean ± standard '
      f'error over prompts). KL from {start} in nats per answer: log N − (N−1)/N (Stiennon et al. '
      f'2020), and measured as log N + (N−1)·log F(r), F the share of {s["best_of_pool"]} further '
      'samples of the prompt scored below the chosen answer (a finite pool reads it low at large '
      'N). `preference_win_rate_kl.png` plots the win rate against KL beside DPO and PPO.', '',
      f'| N | judge win rate vs {start} | reward | distance from 10 syllables | KL measured | '
      'KL log N − (N−1)/N |', '|---|---|---|---|---|---|', *table, '']


def plot_win_rate_kl(results: dict, path: str) -> None:
  """The judge's win rate over the start against KL to it: best-of-N (closed-form KL) as a line,
  the tuned models as points with their standard errors; PNG, written atomically."""
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  rows = results['best_of_n']
  ax.errorbar([r['kl_closed_form'] for r in rows], [r['win_rate'] for r in rows],
              yerr=[r['win_rate_se'] for r in rows], fmt='o-', label='best-of-N (reward model)')
  for r in rows:
    ax.annotate(f'N={r["n"]}', (r['kl_closed_form'], r['win_rate']), textcoords='offset points',
                xytext=(4, -10), fontsize=8)
  for name, m in results['models'].items():
    if name not in ('base', results['start']):
      ax.errorbar([m['kl']], [m['win_rate']], xerr=[m['kl_se']], yerr=[m['win_rate_se']],
                  fmt='s', label=name.upper())
  ax.axhline(0.5, color='grey', lw=0.8)
  ax.set_xlabel(f'KL to {results["start"]} (nats per answer)')
  ax.set_ylabel(f'judge win rate over {results["start"]}')
  ax.grid(alpha=0.3)
  ax.legend()
  save(fig, path)


def write_report(results: dict, workdir: str) -> None:
  """DIR/preference_report.json and DIR/preference_report.md, each written atomically."""
  files.write_json(os.path.join(workdir, REPORT + '.json'), results)
  if results.get('best_of_n'):
    plot_win_rate_kl(results, os.path.join(workdir, 'preference_win_rate_kl.png'))
  files.write_text(os.path.join(workdir, REPORT + '.md'), report_text(results))
