"""Inference-time scaling: spending compute at generation instead of training (the lecture's
推論時のスケーリング; "meta-generation", Welleck et al. 2024): N answers sampled per prompt, all of
them in the same decoding calls, then one chosen.

- Best-of-N: the answer a scorer rates highest (ties: the first drawn). Scorers (`make_scorer`):
  'logprob' (the policy's own log-probability of the answer, its EOS included), 'judge' (the
  preference demo's programmatic judge, gpt_jax.tasks.judge: nearer ten syllables is better),
  'reward:DIR' (a reward model run, objective reward) and 'classifier:DIR:LABEL' (the
  log-probability of LABEL under a GPT-1 task head, objective classify).
- Majority voting, or self-consistency (Wang et al. 2023): the most frequent answer after
  normalisation (scoring.normalize_answer: case, punctuation and spacing), for tasks whose answers
  are short; ties go to the answer reached first.

Best-of-N's KL from the policy it samples, for answers whose rewards are all distinct and none of
which is likely on its own, is log N − (N−1)/N nats (Stiennon et al. 2020, appendix G.3; Gao et
al. 2023): `best_of_n_kl`. For a discrete distribution it is an upper bound (Beirami et al. 2024)
and `exact_best_of_n` gives the distribution and its KL exactly.

Shapes: P prompts, N answers each; arrays of answers are prompt-major (answer n of prompt p at
p·N + n).
"""

import collections
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import scipy.special

from gpt_jax import runs, sample, scoring, task_inputs
from gpt_jax.errors import UserError
from gpt_jax.objectives import classify, reward
from gpt_jax.tasks import judge

SCORERS = ('logprob', 'judge', 'reward:DIR', 'classifier:DIR:LABEL')


@dataclasses.dataclass(frozen=True)
class Candidates:
  """N sampled answers to each of P prompts."""
  prompts: list[str]  # P prompt texts (as a scorer reads them)
  rows: list[list[int]]  # P token rows the answers continue
  answers: list[list[int]]  # P·N token lists, up to (not including) EOS, prompt-major
  texts: list[str]  # P·N answer texts
  n: int
  max_new_tokens: int

  def by_prompt(self, values: Sequence) -> list[list]:
    """P lists of N: `values` (one per answer, prompt-major) grouped by prompt."""
    return [list(values[p * self.n:(p + 1) * self.n]) for p in range(len(self.prompts))]


def check_n(n: int, what: str = 'N') -> None:
  if n < 1:
    raise UserError(f'{what}={n}: the answers sampled per prompt must be >= 1')


def sample_candidates(run: runs.Run, prompts: Sequence[str], rows: Sequence[Sequence[int]],
                      n: int, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0, seed: int = 0, batch_size: int = 0,
                      text: Callable[[list[int]], str] | None = None) -> Candidates:
  """n answers to each prompt row (sample.generate), the P·n rows batch_size at a time (0: all in
  one decoding call), batch b drawn with seed + b; `text` turns an answer's tokens into its text
  (default: the tokenizer's decode)."""
  check_n(n)
  if len(prompts) != len(rows):
    raise UserError(f'{len(prompts)} prompts but {len(rows)} prompt rows')
  repeated = [list(row) for row in rows for _ in range(n)]
  batch_size = batch_size or len(repeated)
  answers = []
  for b, start in enumerate(range(0, len(repeated), batch_size)):
    answers += sample.generate(run.gpt, run.params, repeated[start:start + batch_size],
                               max_new_tokens=max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, eos_id=run.tokenizer.eos_id,
                               seed=seed + b, num_tokens=run.tokenizer.vocab_size)
  text = text or run.tokenizer.decode
  return Candidates(list(prompts), [list(r) for r in rows], answers, [text(a) for a in answers],
                    n, max_new_tokens)


# --- scorers: Candidates -> (P·N,) float64, higher is better -------------------------------


Scorer = Callable[[Candidates], np.ndarray]


def logprob_scorer(scorer: scoring.Scorer, eos_id: int) -> Scorer:
  """log π(answer | prompt) under the scorer's model, the answer's EOS included."""
  def score(c: Candidates) -> np.ndarray:
    rows = [row for row in c.rows for _ in range(c.n)]
    return scoring.answer_logprobs(scorer, rows, c.answers, eos_id, c.max_new_tokens)
  return score


def judge_scorer(c: Candidates) -> np.ndarray:
  """Minus the judge's distance of the answer's first line from ten syllables."""
  return -np.array([judge.distance(t) for t in c.texts], np.float64)


def reward_scorer(model: reward.RewardModel, tokenizer, seq_len: int, batch_size: int) -> Scorer:
  """r(prompt, answer) of a reward model run."""
  def score(c: Candidates) -> np.ndarray:
    prompts = [p for p in c.prompts for _ in range(c.n)]
    return model.score_answers(prompts, c.texts, tokenizer, seq_len, batch_size)
  return score


def classifier_scorer(objective: classify.TaskFineTuning, params: dict, label: str,
                      batch_size: int) -> Scorer:
  """log p(label | answer) of a GPT-1 task head (objective classify): a classification run reads
  the answer, an entailment or similarity run the prompt and the answer."""
  task = objective.config.task
  index = list(task.labels).index(label)

  def score(c: Candidates) -> np.ndarray:
    prompts = [p for p in c.prompts for _ in range(c.n)]
    examples = tuple(task_inputs.LabelledExample((t,) if task.kind == 'classification' else (p, t),
                                                 (), index) for p, t in zip(prompts, c.texts))
    answers = task_inputs.LabelledTask('answers', task.kind, tuple(task.labels), examples,
                                       'the sampled answers')
    logits = objective.logits(params, objective.encode(answers), batch_size)
    return scipy.special.log_softmax(np.asarray(logits, np.float64), axis=-1)[:, index]

  return score


def check_scorer(spec: str) -> None:
  """UserError unless `spec` names a scorer (SCORERS); before anything loads."""
  kind, _, rest = spec.partition(':')
  if not (spec in ('logprob', 'judge') or (kind == 'reward' and rest) or
          (kind == 'classifier' and rest.rpartition(':')[0] and rest.rpartition(':')[2])):
    raise UserError(f'--scorer={spec!r} is not a scorer; pass one of {", ".join(SCORERS)}')


def scorer_setting(spec: str | None, best: bool, choice: str, rated: str) -> str:
  """The --scorer a command uses: `spec` (checked, check_scorer) or 'logprob' when it names none;
  UserError for a scorer given when `best` (the choice `choice`, e.g. --vote=best) is not made."""
  if spec and not best:
    raise UserError(f'--scorer rates {rated} for {choice}; drop it or pass {choice}')
  check_scorer(spec or 'logprob')
  return spec or 'logprob'


def make_scorer(spec: str, run: runs.Run, *, mesh, batch_size: int, seq_len: int) -> Scorer:
  """The scorer a command line names (SCORERS) for answers sampled from `run`; a reward model
  must read `run`'s tokenizer (UserError)."""
  check_scorer(spec)
  if spec == 'logprob':
    return logprob_scorer(scoring.Scorer(run, mesh, batch_size, seq_len), run.tokenizer.eos_id)
  if spec == 'judge':
    return judge_scorer
  kind, _, rest = spec.partition(':')
  if kind == 'reward':
    model = reward.load_reward_model(rest, '--scorer', run.config, run.tokenizer, mesh=mesh)
    return reward_scorer(model, run.tokenizer, seq_len, batch_size)
  workdir, _, label = rest.rpartition(':')
  config = runs.read_config(workdir, '--scorer')
  if config.get('objective') != 'classify' or config.task.kind == 'multiple_choice':
    raise UserError(f'--scorer={spec}: {workdir!r} is not a classify run of a classification, '
                    'entailment or similarity task; pass one (objective classify)')
  if label not in config.task.labels:
    raise UserError(f'--scorer={spec}: the classifier has no label {label!r}; its labels are '
                    f'{", ".join(config.task.labels)}')
  objective, params, classifier = classify.load_classifier(workdir, mesh=mesh, log=lambda _: None)
  if classifier.tokenizer.sha256 != run.tokenizer.sha256:
    raise UserError(f'--scorer={spec}: the classifier reads another tokenizer than the sampled '
                    'run; train it from the same base')
  return classifier_scorer(objective, params, label, batch_size)


# --- choosing ------------------------------------------------------------------------------


def best_of_n(scores_PN: np.ndarray) -> np.ndarray:
  """(P,) int: the index of each prompt's best answer (the first of equals)."""
  return np.argmax(np.asarray(scores_PN), axis=1)


def majority_vote(texts_PN: Sequence[Sequence[str]],
                  normalize: Callable[[str], str] = scoring.normalize_answer
                  ) -> list[tuple[int, int]]:
  """Of each prompt's answers, (index, votes): the answer whose normalised form is the most
  frequent (ties: the form reached first; the index is that form's first answer) and how many
  answers share its form."""
  chosen = []
  for texts in texts_PN:
    forms = [normalize(t) for t in texts]
    counts = collections.Counter(forms)
    top = max(counts.values())
    chosen.append((next(i for i, f in enumerate(forms) if counts[f] == top), top))
  return chosen


VOTES = ('majority', 'best')


def voting_answerer(n: int, vote: str, *, temperature: float, seed: int = 0,
                    scorer: str = 'logprob', mesh=None) -> scoring.Answerer:
  """A scoring.Answerer (what generation_metrics answers prompts with) that samples n answers to
  each prompt at `temperature`, the samples of batch_size prompts in one decoding call, and keeps
  the majority's answer (vote 'majority': majority_vote of the answers' first lines) or the best
  by `scorer` (vote 'best': make_scorer)."""
  check_n(n, '--samples')
  if vote not in VOTES:
    raise UserError(f'--vote={vote!r}: pass one of {", ".join(VOTES)}')

  def answer(run, prompts, max_new_tokens, seq_len, batch_size):
    rows, cut = scoring.answer_rows(run.tokenizer, prompts, max_new_tokens=max_new_tokens,
                                    seq_len=seq_len)
    c = sample_candidates(run, prompts, rows, n, max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, batch_size=batch_size * n,
                          text=lambda ids: scoring.answer_text(run.tokenizer, ids))
    texts = c.by_prompt(c.texts)
    if vote == 'majority':
      chosen = [i for i, _ in majority_vote(texts)]
    else:
      score = make_scorer(scorer, run, mesh=mesh, batch_size=batch_size, seq_len=seq_len)
      chosen = best_of_n(np.array(c.by_prompt(score(c))))
    return [t[i] for t, i in zip(texts, chosen)], cut

  return answer


# --- best-of-N's distance from its policy --------------------------------------------------


def best_of_n_kl(n: int | np.ndarray) -> np.ndarray:
  """log N − (N−1)/N: KL(π_best-of-N ‖ π) in nats for distinct rewards of unlikely answers
  (Stiennon et al. 2020; an upper bound in general, Beirami et al. 2024)."""
  n = np.asarray(n, np.float64)
  return np.log(n) - (n - 1) / n


def exact_best_of_n(p: np.ndarray, rewards: np.ndarray, n: int) -> tuple[np.ndarray, float]:
  """(π_N, KL(π_N ‖ p)) of best-of-n over a discrete distribution p of outcomes with the given
  rewards: the outcomes of one reward tie and share in proportion to p, so the tied group at or
  below reward r is chosen with probability F(r)^n − F(<r)^n (F the CDF of the reward under p)."""
  p, rewards = np.asarray(p, np.float64), np.asarray(rewards, np.float64)
  levels, group = np.unique(rewards, return_inverse=True)
  mass = np.bincount(group, weights=p, minlength=len(levels))
  cdf = np.cumsum(mass)
  chosen = cdf ** n - np.concatenate([[0.0], cdf[:-1]]) ** n
  pi_n = np.where(mass[group] > 0, p * chosen[group] / np.where(mass[group] > 0, mass[group], 1), 0)
  support = pi_n > 0
  return pi_n, float(np.sum(pi_n[support] * np.log(pi_n[support] / p[support])))
