"""GPT-1 task fine-tuning: a linear head on the extract token's final hidden state.

Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training", sections 3.2
and 3.3. Each labelled example becomes C token sequences (gpt_jax.task_inputs: a start token, its
texts split by a delimiter token, an extract token); the pretrained model reads them and a linear
layer W_y reads the final hidden state h of each sequence's extract token:

  classification, entailment   P(y | x) = softmax(h W_y + b)                           (eq. 3)
  similarity                   softmax((h(a|b) + h(b|a)) W_y + b), both orders summed
  multiple choice              softmax over the choices of h_c w_y + b, one score per choice

The loss is L3 = L2 + λ·L1 (eq. 5): the task's cross-entropy, a mean over examples, plus λ
(config.finetune.lm_weight) times the next-token cross-entropy of the sequences' text tokens, the
auxiliary language-modelling loss. The start, delimiter and extract tokens are ids V, V + 1, V + 2
(V = config.model.vocab_size), which the tokenizer never makes, so it stays exact; the model reads
their embeddings from new parameters (GPT's special_embeddings_SD), and they are never targets:
the language-modelling softmax stays over the tokenizer's ids.

The trained parameters are {'gpt': the model's, from config.init_from; 'special': (3, D);
'head': {'kernel': (D, K), 'bias': (K,)}}, K the number of labels (1 for multiple choice). The
run's checkpoints hold that tree: runs.load reads its 'gpt' part like any language model's
(sampling, evaluation, export, and init_from, which so starts a new head), load_classifier the
whole (python -m gpt_jax.evaluate --workdir=RUN --task=FILE.jsonl).

finish() writes finetune_report.md and finetune_report.json: the held-out accuracy of the head
beside the same base model's zero- and few-shot prompted accuracy (gpt_jax.scoring) and the
majority-class rate.
"""

import dataclasses
import itertools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from gpt_jax import checkpoint, files, instructions, losses, model, network, runs, sample, scoring
from gpt_jax import sharding, state, task_inputs
from gpt_jax.errors import UserError
from gpt_jax.objectives.base import Objective, load_base, split_batches, table_dataset

SPECIAL_TOKENS = ('start', 'delim', 'extract')  # ids V, V + 1, V + 2
TASK_PARAM_AXES = {'special': PartitionSpec(None, 'embed'),
                   'head': {'kernel': PartitionSpec('embed', None), 'bias': PartitionSpec(None)}}
BATCH_KEYS = ('tokens', 'extract', 'label', 'choice_mask', 'lm_mask')  # of task_inputs.encode

# The prompted baseline: an instruction per kind, and the labels of an example's texts in its
# prompt (Natural Instructions style, gpt_jax.instructions.format_prompt).
DEFINITIONS = {
    'classification': 'Label the text with one of: {labels}.',
    'entailment': 'Say whether the hypothesis follows from the premise, with one of: {labels}.',
    'similarity': 'Say whether the two texts are alike, with one of: {labels}.',
    'multiple_choice': 'Continue the text with the choice that follows it.',
}
TEXT_NAMES = {'entailment': ('Premise', 'Hypothesis'), 'similarity': ('Text A', 'Text B')}


def task_logits(kind: str, head: dict, h_BCD, choice_mask_BC):
  """The head's logits, float32: (B, K) over the labels, or (B, C) over the choices for multiple
  choice, where a missing choice (choice_mask 0) gets losses.MASKED_LOGIT. h_BCD is the final
  hidden state at each sequence's extract token."""
  h_BCD = h_BCD.astype(jnp.float32)
  if kind == 'similarity':
    h_BCD = h_BCD.sum(1, keepdims=True)  # h(a|b) + h(b|a): no order of the pair is preferred
  logits_BCK = h_BCD @ head['kernel'].astype(jnp.float32) + head['bias'].astype(jnp.float32)
  if kind == 'multiple_choice':
    return jnp.where(choice_mask_BC > 0, logits_BCK[..., 0], losses.MASKED_LOGIT)
  return logits_BCK[:, 0]


def lm_targets(tokens_BCL, lm_mask_BCL):
  """The next token of each position where lm_mask is 1 (always a text token), 0 elsewhere: the
  targets of the auxiliary language-modelling loss, (B, C, L) int32."""
  next_BCL = jnp.concatenate([tokens_BCL[..., 1:], jnp.zeros_like(tokens_BCL[..., :1])], -1)
  return jnp.where(lm_mask_BCL > 0, next_BCL, 0)


def is_example(batch):
  """1 for a row that is an example, 0 for a row of zeros (split_batches' padding), (B,)."""
  return (batch['choice_mask'].sum(-1) > 0).astype(jnp.float32)


@dataclasses.dataclass
class TaskFineTuning(Objective):
  mesh: jax.sharding.Mesh | None = None
  base: runs.Run | None = None  # config.init_from: the start, and the prompted baselines
  train_task: task_inputs.LabelledTask | None = None
  held_out: task_inputs.LabelledTask | None = None
  train_arrays: dict | None = None  # task_inputs.encode's, BATCH_KEYS only
  held_out_arrays: dict | None = None
  num_sequences: int = 1  # C: the sequences of a batch row (the most choices, for multiple choice)

  @classmethod
  def build(cls, config, mesh, log):
    """The task of config.data.tasks and its held-out examples (config.data.held_out_tasks, else
    task_inputs.read_task_splits' rules), encoded for the config.init_from model. Fills in
    config.task.kind and config.task.labels, so the saved config describes the head."""
    if not config.finetune.lm_weight >= 0:  # NaN fails too
      raise UserError(f'finetune.lm_weight={config.finetune.lm_weight} must be >= 0 (the weight '
                      'λ of the language-modelling loss; 0 turns it off)')
    if not config.data.tasks:
      raise UserError('objective=classify needs a labelled task file: pass '
                      '--config.data.tasks=FILE.jsonl (see gpt_jax/task_inputs.py for its schemas)')
    if min(config.task.shots, default=0) < 0 or config.task.eval_instances < 0:
      raise UserError(f'task.shots={tuple(config.task.shots)} and task.eval_instances='
                      f'{config.task.eval_instances} must not be negative')
    train, held_out = read_splits(config)
    if config.task.labels and tuple(config.task.labels) != train.labels:
      raise UserError(f'task.labels={tuple(config.task.labels)} differ from the labels of '
                      f'{config.data.tasks}, {train.labels}; leave task.labels unset (the run '
                      'fills it in)')
    config.task.kind, config.task.labels = train.kind, train.labels
    base = load_base(config, mesh, log)
    objective = cls(config, base.tokenizer, network.build(config.model), mesh=mesh, base=base,
                    train_task=train, held_out=held_out)
    train_arrays, held_out_arrays = objective.encode(train), objective.encode(held_out)
    num_sequences = max(train_arrays['tokens'].shape[1], held_out_arrays['tokens'].shape[1])
    objective.num_sequences = num_sequences
    objective.train_arrays = _with_sequences(train_arrays, num_sequences)
    objective.held_out_arrays = _with_sequences(held_out_arrays, num_sequences)
    cut = f'{train_arrays["cut"].sum()} and {held_out_arrays["cut"].sum()}'
    log(f'task {train.name} ({train.kind}{_labels_text(train.labels)}): {len(train.examples)} '
        f'training and {len(held_out.examples)} held-out examples, {num_sequences} sequence(s) '
        f'of {config.seq_len} tokens each ({cut} cut to fit: --config.seq_len)')
    return objective

  @property
  def num_outputs(self) -> int:
    """K, the head's outputs: one per label, or one score per choice."""
    return len(self.config.task.labels) or 1

  def encode(self, task: task_inputs.LabelledTask) -> dict:
    """task_inputs.encode's arrays of `task` for this model: its special ids and seq_len."""
    V = self.config.model.vocab_size
    return task_inputs.encode(task, self.tokenizer, self.config.seq_len, V, V + 1, V + 2)

  # --- the trainer's interface --------------------------------------------------------------

  def batch_spec(self):
    C, L = self.num_sequences, self.config.seq_len
    return {'tokens': ((C, L), jnp.int32, ('batch', None, 'length')),
            'extract': ((C,), jnp.int32, ('batch', None)), 'label': ((), jnp.int32, ('batch',)),
            'choice_mask': ((C,), jnp.float32, ('batch', None)),
            'lm_mask': ((C, L), jnp.float32, ('batch', None, 'length'))}

  def row_tokens(self):
    return self.num_sequences * self.config.seq_len

  def init_params(self, rng):
    model_rng, task_rng = jax.random.split(rng)
    return {'gpt': model.init_params(self.gpt, model_rng, self.config.seq_len),
            **self.init_task_params(task_rng)}

  def init_task_params(self, rng):
    """The special-token embeddings and the head, N(0, init_std) weights and a zero bias."""
    m = self.config.model
    special_rng, head_rng = jax.random.split(rng)
    normal = lambda key, shape: m.init_std * jax.random.normal(key, shape, m.param_dtype)
    return {'special': normal(special_rng, (len(SPECIAL_TOKENS), m.n_embd)),
            'head': {'kernel': normal(head_rng, (m.n_embd, self.num_outputs)),
                     'bias': jnp.zeros((self.num_outputs,), m.param_dtype)}}

  def param_axes(self):
    return {'gpt': model.logical_axes(self.gpt, self.config.seq_len), **TASK_PARAM_AXES}

  def start_from(self, params, mesh, log):
    """The base model's parameters (config.init_from) under a fresh head and special tokens: a
    copy, as the train step consumes its state and finish() prompts the base model."""
    checkpoint.check_same_shapes(self.base.params, params['gpt'],
                                 f'init_from={self.config.init_from!r}')
    return {**params, 'gpt': jax.tree.map(jnp.copy, self.base.params)}

  def forward(self, params, batch, *, deterministic: bool = True, rng=None):
    """(logits, x_ND): task_logits of the batch's examples, and the final hidden states of all
    N = B·C·L positions."""
    tokens_BCL = batch['tokens']
    B, C, L = tokens_BCL.shape
    x_ND = self.gpt.apply({'params': params['gpt']}, tokens_BCL.reshape(B * C, L),
                          deterministic=deterministic, hidden=True,
                          special_embeddings_SD=params['special'],
                          rngs=None if rng is None else {'dropout': rng})
    x_BCLD = x_ND.reshape(B, C, L, -1)
    h_BCD = jnp.take_along_axis(x_BCLD, batch['extract'][:, :, None, None], axis=2)[:, :, 0]
    return task_logits(self.config.task.kind, params['head'], h_BCD, batch['choice_mask']), x_ND

  def sums(self, params, batch, *, deterministic: bool = True, rng=None) -> dict:
    """Sums over the batch's examples: task_nll (the task cross-entropy), correct (argmax =
    label) and lm_nll (the next-token cross-entropy of its lm_mask targets), float32."""
    logits_BK, x_ND = self.forward(params, batch, deterministic=deterministic, rng=rng)
    example_B, label_B = is_example(batch), batch['label']
    nll_B = (jax.nn.logsumexp(logits_BK, -1)
             - jnp.take_along_axis(logits_BK, label_B[:, None], -1)[:, 0])
    correct_B = jnp.argmax(logits_BK, -1) == label_B
    lm_nll, _ = losses.head_next_token_loss(
        x_ND, network.head_weight(params['gpt'], self.config.model),
        lm_targets(batch['tokens'], batch['lm_mask']), batch['lm_mask'],
        logit_softcap=self.config.model.logit_softcap, normalizer=1.0, num_tokens=self.num_tokens)
    return {'task_nll': (nll_B * example_B).sum(), 'correct': (correct_B * example_B).sum(),
            'lm_nll': lm_nll}

  def weights(self, batch):
    return {'examples': jnp.maximum(is_example(batch).sum(), 1.0),
            'lm_targets': jnp.maximum(batch['lm_mask'].sum(), 1.0)}

  def loss(self, params, batch, *, rng, step, weights, frozen):
    """L2 + λ·L1 (GPT-1 eq. 5); train_loss is L2, lm_loss L1."""
    sums = self.sums(params, batch, deterministic=False, rng=rng)
    task_loss = sums['task_nll'] / weights['examples']
    lm_loss = sums['lm_nll'] / weights['lm_targets']
    return task_loss + self.config.finetune.lm_weight * lm_loss, {
        'train_loss': task_loss, 'lm_loss': lm_loss,
        'train_acc': sums['correct'] / weights['examples']}

  def eval_sums(self, params, batch, frozen):
    return {**self.sums(params, batch), 'examples': is_example(batch).sum(),
            'lm_targets': batch['lm_mask'].sum()}

  def eval_metrics(self, sums):
    examples, lm_targets = max(float(sums['examples']), 1.0), max(float(sums['lm_targets']), 1.0)
    return {'val_loss': float(sums['task_nll']) / examples,
            'val_acc': float(sums['correct']) / examples,
            'val_lm_loss': float(sums['lm_nll']) / lm_targets}

  def train_dataset(self, batch_size):
    return table_dataset(self.train_arrays, batch_size, self.config)

  def validation_batches(self):
    return split_batches(self.held_out_arrays, self.config, pad=True)

  # --- after training -------------------------------------------------------------------------

  def logits(self, params, arrays: dict, batch_size: int) -> np.ndarray:
    """The head's logits (R, labels or choices) float32 of each row of encode's `arrays`,
    batch_size rows at a time."""
    logits = jax.jit(lambda params, batch: self.forward(params, batch)[0])
    batch_sharding = sharding.batch_sharding(self.mesh)
    rows, out = len(arrays['label']), []
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.RULES):
      for start in range(0, rows, batch_size):
        n = min(batch_size, rows - start)
        batch = {k: np.concatenate([arrays[k][start:start + n],
                                    np.zeros((batch_size - n, *arrays[k].shape[1:]),
                                             arrays[k].dtype)])
                 for k in ('tokens', 'extract', 'choice_mask')}
        out.append(np.asarray(logits(params, jax.device_put(batch, batch_sharding)))[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def predict(self, params, arrays: dict, batch_size: int) -> np.ndarray:
    """The predicted label (multiple choice: choice) of each row of encode's `arrays`, batch_size
    rows at a time, (R,) int."""
    logits = self.logits(params, arrays, batch_size)
    return np.argmax(logits, -1) if len(logits) else np.zeros(0, int)

  def finish(self, params, workdir, log):
    """Writes finetune_report.md and finetune_report.json (see the module docstring)."""
    c = self.config
    n = c.task.eval_instances or len(self.held_out.examples)
    held_out = dataclasses.replace(self.held_out, examples=self.held_out.examples[:n])
    batch_size = c.batch_size // c.grad_accum
    arrays = self.encode(held_out)
    head = float(np.mean(self.predict(params, arrays, batch_size) == arrays['label']))
    scorer = scoring.Scorer(self.base, self.mesh, batch_size, sample.context_length(c.model))
    report = {
        'task': held_out.name, 'kind': held_out.kind, 'labels': list(c.task.labels),
        'train_file': c.data.tasks, 'held_out_examples': len(held_out.examples),
        'cut_examples': int(arrays['cut'].sum()), 'lm_weight': c.finetune.lm_weight,
        'head_accuracy': head, 'base': c.init_from, 'base_step': self.base.step,
        'prompted': prompted_accuracy(scorer, self.tokenizer, self.train_task, held_out,
                                      tuple(c.task.shots)),
        'majority_rate': task_inputs.majority_rate(self.train_task, held_out)}
    files.write_json(os.path.join(workdir, 'finetune_report.json'), report)
    text = report_text(report)
    files.write_text(os.path.join(workdir, 'finetune_report.md'), text + '\n')
    log(text)


def read_splits(config) -> tuple[task_inputs.LabelledTask, task_inputs.LabelledTask]:
  """(train, held_out): config.data.tasks and all of config.data.held_out_tasks when set, else
  the split task_inputs.read_task_splits makes of config.data.tasks."""
  if ',' in config.data.tasks or os.path.isdir(config.data.tasks):
    raise UserError(f'data.tasks={config.data.tasks!r}: objective=classify trains one task; pass '
                    'one .jsonl (or Natural Instructions .json) file')
  if not config.data.held_out_tasks:
    return task_inputs.read_task_splits(config.data.tasks, config.task.kind)
  train = task_inputs.read_task_file(config.data.tasks, config.task.kind)
  try:
    return train, task_inputs.read_held_out(config.data.held_out_tasks, train)
  except UserError as e:
    raise UserError(f'{e} (the held-out file is data.held_out_tasks; pass '
                    '--config.data.held_out_tasks= to hold out part of data.tasks instead)'
                    ) from None


def _labels_text(labels) -> str:
  return f', labels {", ".join(labels)}' if labels else ''


def _with_sequences(arrays: dict, C: int) -> dict:
  """encode's arrays (BATCH_KEYS) with the sequence axis padded to C by missing choices."""
  pad = lambda x: np.pad(x, [(0, 0), (0, C - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
  return {k: pad(arrays[k]) if arrays[k].ndim > 1 else arrays[k] for k in BATCH_KEYS}


# --- the prompted baseline --------------------------------------------------------------------


def _answer(task: task_inputs.LabelledTask, example: task_inputs.LabelledExample) -> str:
  return example.choices[example.label] if task.kind == 'multiple_choice' else (
      task.labels[example.label])


def _prompt_input(kind: str, example: task_inputs.LabelledExample) -> str:
  if kind not in TEXT_NAMES:
    return example.texts[0]
  return '\n'.join(f'{name}: {text}' for name, text in zip(TEXT_NAMES[kind], example.texts))


def prompted_task(train: task_inputs.LabelledTask, held_out: task_inputs.LabelledTask,
                  shots: int) -> instructions.Task:
  """The labelled task as a Natural Instructions task to prompt a language model with: the
  definition of its kind (DEFINITIONS), `shots` training examples as its positive examples (the
  labels taken in turn, so a few shots show several), the held-out examples as its instances, and
  the label set as its options (multiple choice: the right choice is the answer)."""
  by_label = {}
  for example in train.examples:
    by_label.setdefault(example.label, []).append(example)
  in_turn = [e for group in itertools.zip_longest(*by_label.values()) for e in group
             if e is not None]
  positive = tuple(instructions.Example(_prompt_input(train.kind, e), _answer(train, e))
                   for e in in_turn[:shots])
  instances = tuple(instructions.Instance(f'{held_out.name}-{i + 1}',
                                          _prompt_input(held_out.kind, e),
                                          (_answer(held_out, e),))
                    for i, e in enumerate(held_out.examples))
  definition = DEFINITIONS[train.kind].format(labels=', '.join(train.labels))
  return instructions.Task(train.name, definition, positive, (), instances, train.labels)


def prompted_accuracy(scorer: scoring.Scorer, tokenizer, train: task_inputs.LabelledTask,
                      held_out: task_inputs.LabelledTask, shots: tuple[int, ...]) -> dict:
  """{str(k): {'acc', 'acc_norm', 'cut_prompts'}}: the held-out accuracy of the scorer's model
  prompted with k training examples (prompted_task), each answer option scored as its
  log-likelihood after the prompt (scoring.choice_metrics; for multiple choice each example's
  own choices, scoring.choice_logliks)."""
  task = prompted_task(train, held_out, max(shots, default=0))
  if held_out.kind != 'multiple_choice':
    return scoring.choice_metrics(scorer, tokenizer, task, shots)['shots']
  choices = [e.choices for e in held_out.examples]
  C = max(map(len, choices))
  correct_RC = np.zeros((len(choices), C), bool)
  correct_RC[np.arange(len(choices)), [e.label for e in held_out.examples]] = True
  bytes_RC = np.ones((len(choices), C))
  for r, options in enumerate(choices):
    bytes_RC[r, :len(options)] = [len(f' {o}'.encode()) for o in options]
  results = {}
  for k in shots:
    prompts = [instructions.format_prompt(task, k, i.input) for i in task.instances]
    logliks, cut = scoring.choice_logliks(scorer, tokenizer, prompts, choices)
    loglik_RC = np.full((len(choices), C), -np.inf)
    for r, row in enumerate(logliks):
      loglik_RC[r, :len(row)] = row
    results[str(k)] = {**scoring.accuracy(loglik_RC, correct_RC, bytes_RC), 'cut_prompts': cut}
  return results


def report_text(report: dict) -> str:
  """finetune_report.md: the head's held-out accuracy beside the base model's prompted ones and
  the majority-class rate."""
  n = report['held_out_examples']
  lines = [f'# Task fine-tuning: {report["task"]} ({report["kind"]}'
           f'{_labels_text(report["labels"])})', '',
           f'Held-out accuracy on {n} examples; base model {report["base"]} (step '
           f'{report["base_step"]}), fine-tuned on {report["train_file"]} with λ = '
           f'{report["lm_weight"]}.', '',
           '| model | accuracy | acc_norm |', '|---|---:|---:|',
           f'| fine-tuned task head (GPT-1) | {report["head_accuracy"]:.1%} | |']
  lines += [f'| base model, {k}-shot prompt | {m["acc"]:.1%} | {m["acc_norm"]:.1%} |'
            for k, m in report['prompted'].items()]
  lines += [f'| majority class of training | {report["majority_rate"]:.1%} | |', '']
  if report['cut_examples']:
    lines.append(f'{report["cut_examples"]} of {n} examples were cut to fit the fine-tuned '
                 "model's sequences (--config.seq_len).")
  lines += [f'{k}-shot: {m["cut_prompts"]} of {n} prompts lost tokens on the left to fit the '
            "base model's context." for k, m in report['prompted'].items() if m['cut_prompts']]
  return '\n'.join(lines).rstrip()


# --- a finished run ----------------------------------------------------------------------------


def load_classifier(workdir: str, *, mesh: jax.sharding.Mesh, log=print
                    ) -> tuple[TaskFineTuning, dict, runs.Run]:
  """(objective, parameters, run) of the classify run in `workdir`: the objective without data
  (its forward, encode and predict work), the whole trained tree of the newest readable
  checkpoint, and the run (runs.load: config, tokenizer, the model's part, its step)."""
  run = runs.load(workdir, mesh=mesh, log=log)
  objective = TaskFineTuning(run.config, run.tokenizer, run.gpt, mesh=mesh)
  abstract = state.abstract_params(objective.init_task_params, TASK_PARAM_AXES, mesh)
  task_params = checkpoint.restore_params(os.path.join(workdir, runs.CHECKPOINTS), run.step,
                                          abstract)
  return objective, {'gpt': run.params, **task_params}, run


def trained_task(config, workdir: str) -> task_inputs.LabelledTask:
  """The task a classify run was trained on, as its config describes it (no examples)."""
  name = os.path.basename(config.data.tasks)
  return task_inputs.LabelledTask(name, config.task.kind, tuple(config.task.labels), (),
                                  f'the training file of {workdir} ({config.data.tasks})')


def evaluate_head(workdir: str, task_file: str, *, max_instances: int = 0, batch_size: int = 0,
                  log=print) -> dict:
  """python -m gpt_jax.evaluate --workdir=RUN --task=FILE for a classify run: the accuracy of its
  head on every example of FILE (the first max_instances; 0 = all), whose labels must be among
  those it was trained on (UserError otherwise, before the model loads)."""
  config = runs.read_config(workdir)
  held_out = task_inputs.read_held_out(task_file, trained_task(config, workdir))
  held_out = dataclasses.replace(held_out, examples=held_out.examples[:max_instances or None])
  objective, params, run = load_classifier(workdir, mesh=sharding.data_parallel_mesh(), log=log)
  arrays = objective.encode(held_out)
  batch_size = batch_size or config.batch_size // config.grad_accum
  accuracy = float(np.mean(objective.predict(params, arrays, batch_size) == arrays['label']))
  results = {'workdir': workdir, 'step': run.step, 'task': {
      'name': held_out.name, 'file': task_file, 'kind': held_out.kind,
      'labels': list(held_out.labels), 'examples': len(held_out.examples),
      'cut_examples': int(arrays['cut'].sum()), 'accuracy': accuracy}}
  log(f'task {held_out.name} ({held_out.kind}{_labels_text(held_out.labels)}): {workdir} at step '
      f'{run.step}, its task head: accuracy {accuracy:.1%} on {len(held_out.examples)} examples '
      f'of {task_file} ({int(arrays["cut"].sum())} cut to its {config.seq_len}-token sequences)')
  return results
