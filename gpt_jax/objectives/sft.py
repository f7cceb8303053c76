"""Instruction tuning (supervised fine-tuning, SFT) of a pretrained model on Natural Instructions
tasks, as Tk-Instruct does it (Wang et al. 2022, Super-NaturalInstructions).

An example is the prompt of one instance (the task's definition, config.sft.shots solved
positive examples, the instance's input: instructions.format_prompt, the text gpt_jax.scoring
prompts with) followed by one of its answers and EOS; the loss is the cross-entropy of the
answer's tokens only. Examples are packed whole into rows of seq_len tokens (instructions.pack):
a batch holds, each (B, L),

  tokens, targets  int32    inputs and next tokens
  mask             float32  1 on the answer's targets
  segment_ids      int32    which example of the row a position belongs to (0: padding)
  positions        int32    the position within its example, restarting at 0

and attention stays inside each example, so a packed example has the loss it has alone.

The model and tokenizer are the config.init_from run's. Held-out instances (data.held_out_tasks,
else sft.held_out of each task's instances) give the validation loss during training and, at the
end, sft_report.md: per task, exact match and ROUGE-L of greedy answers (and the accuracy of the
likeliest option for a task with a fixed label set) of the tuned model beside the base model's
zero-shot scores.
"""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp

from gpt_jax import files, instructions, losses, network, runs, scoring, sharding
from gpt_jax.errors import UserError
from gpt_jax.objectives.base import Objective, load_base, split_batches, table_dataset

ROW_ARRAYS = {'tokens': jnp.int32, 'targets': jnp.int32, 'mask': jnp.float32,
              'segment_ids': jnp.int32, 'positions': jnp.int32}
REPORT = 'sft_report.md'


def split_tasks(config, tasks: list[instructions.Task]
                ) -> tuple[list[instructions.Task], list[instructions.Task]]:
  """(train tasks, held-out tasks), each a task with its own instances: data.held_out_tasks's
  task of the same name, else sft.held_out of its instances (instructions.split_instances)."""
  if not config.data.held_out_tasks:
    train, held = [], []
    for task in tasks:
      kept, held_out = instructions.split_instances(task, config.sft.held_out, config.seed)
      train.append(dataclasses.replace(task, instances=kept))
      held.append(dataclasses.replace(task, instances=held_out))
    return train, held
  by_name = {task.name: task for task in instructions.read_tasks(config.data.held_out_tasks)}
  missing = [task.name for task in tasks if task.name not in by_name]
  if missing:
    raise UserError(f'data.held_out_tasks has no task named {", ".join(missing)}; give each task '
                    'of data.tasks a held-out file of the same name, or set data.held_out_tasks='
                    "'' to hold out sft.held_out of its instances")
  return tasks, [by_name[task.name] for task in tasks]


def pack_tasks(tasks, tokenizer, config, log, what: str) -> dict:
  """The examples of every task's instances packed into rows; logs what was cut or dropped."""
  examples, counts = [], instructions.Counts()
  for task in tasks:
    made, made_counts = instructions.tokenize_examples(task, task.instances, tokenizer,
                                                       seq_len=config.seq_len,
                                                       shots=config.sft.shots)
    examples += made
    counts += made_counts
  if not examples:
    raise UserError(f'no {what} example fits the {config.seq_len}-token rows (every answer is too '
                    'long); raise --config.seq_len or shorten the answers')
  rows = instructions.pack(examples, config.seq_len)
  log(f'{what}: {counts.kept} examples in {len(rows["tokens"])} rows of {config.seq_len} tokens'
      f' ({counts.cut} prompts cut on the left, {counts.dropped} instances dropped: their answer '
      'does not fit)')
  return rows


@dataclasses.dataclass
class InstructionTuning(Objective):
  base: runs.Run | None = None
  train_rows: dict | None = None
  val_rows: dict | None = None
  held_out: list | None = None  # the held-out instances of each task, for the report

  @classmethod
  def build(cls, config, mesh, log):
    if not config.data.tasks:
      raise UserError('objective=sft needs tasks: pass --config.data.tasks=FILES (Natural '
                      'Instructions .json or instruction .jsonl files, directories or globs)')
    base = load_base(config, mesh, log)
    train, held = split_tasks(config, instructions.read_tasks(config.data.tasks))
    if not any(task.instances for task in held):
      raise UserError('no held-out instances: raise --config.sft.held_out or pass '
                      '--config.data.held_out_tasks')
    objective = cls(config, base.tokenizer, network.build(config.model), base=base, held_out=held)
    objective.train_rows = pack_tasks(train, base.tokenizer, config, log, 'training')
    objective.val_rows = pack_tasks([t for t in held if t.instances], base.tokenizer, config, log,
                                    'held-out')
    return objective

  def batch_spec(self):
    return {name: ((self.config.seq_len,), dtype, ('batch', 'length'))
            for name, dtype in ROW_ARRAYS.items()}

  def start_from(self, params, mesh, log):
    # A copy: the train step donates the state's buffers, and the report scores the base too.
    return jax.tree.map(jnp.copy, self.base.params)

  def weights(self, batch):
    return {'targets': jnp.maximum(batch['mask'].sum(), 1.0)}

  def _apply(self, params, batch, **kwargs):
    return self.gpt.apply({'params': params}, batch['tokens'], positions_BL=batch['positions'],
                          segment_ids_BL=batch['segment_ids'], **kwargs)

  def loss(self, params, batch, *, rng, step, weights, frozen):
    x_ND = self._apply(params, batch, deterministic=False, hidden=True, rngs={'dropout': rng})
    loss, terms = losses.head_next_token_loss(
        x_ND, network.head_weight(params, self.config.model), batch['targets'], batch['mask'],
        z_loss=self.config.loss.z_loss, logit_softcap=self.config.model.logit_softcap,
        normalizer=weights['targets'], num_tokens=self.num_tokens)
    return loss, {'train_loss': terms['ce'], 'z_loss': terms['z_loss']}

  def eval_sums(self, params, batch, frozen):
    nll_BL = losses.token_nll(self._apply(params, batch), batch['targets'], self.num_tokens)
    return {'loss_sum': (nll_BL * batch['mask']).sum(), 'targets': batch['mask'].sum()}

  def eval_metrics(self, sums):
    loss = float(sums['loss_sum'] / max(float(sums['targets']), 1.0))
    return {'val_loss': loss, 'val_ppl': math.exp(min(loss, 700.0))}

  def train_dataset(self, batch_size):
    return table_dataset(self.train_rows, batch_size, self.config)

  def validation_batches(self):
    return split_batches(self.val_rows, self.config, pad=True)

  def finish(self, params, workdir, log):
    tuned = dataclasses.replace(self.base, params=params, gpt=self.gpt)
    report = task_scores(self.base, tuned, self.held_out, self.config, log)
    files.write_json(os.path.join(workdir, 'sft_scores.json'), report)
    files.write_text(os.path.join(workdir, REPORT), format_report(report, self.config))
    log(f'report: {os.path.join(workdir, REPORT)}')


def task_scores(base: runs.Run, tuned: runs.Run, tasks, config, log) -> dict:
  """Per held-out task: the base model's zero-shot and the tuned model's sft.shots-shot scores
  by generation (exact match, ROUGE-L) and, for a task with a fixed label set, by the likeliest
  option (scoring.auto_scoring)."""
  mesh = sharding.data_parallel_mesh()
  seq_len = config.seq_len
  batch_size = max(config.batch_size // config.grad_accum, 1)
  report = {}
  for task in tasks:
    if not task.instances:
      continue
    scores = {}
    for name, run, shots in (('base', base, 0), ('tuned', tuned, config.sft.shots)):
      scores[name] = {'shots': shots, 'generation': scoring.generation_metrics(
          run, task, [shots], seq_len=seq_len, batch_size=batch_size,
          max_instances=config.sft.eval_instances)['shots'][str(shots)]}
      if scoring.auto_scoring(task) == 'choice':
        scorer = scoring.Scorer(run, mesh, batch_size, seq_len)
        scores[name]['choice'] = scoring.choice_metrics(
            scorer, run.tokenizer, task, [shots], config.sft.eval_instances)['shots'][str(shots)]
    report[task.name] = {'instances': min(len(task.instances),
                                          config.sft.eval_instances or len(task.instances)),
                         **scores}
    log(f'{task.name}: exact match {scores["base"]["generation"]["exact_match"]:.3f} (base) -> '
        f'{scores["tuned"]["generation"]["exact_match"]:.3f} (tuned)')
  return report


def format_report(report: dict, config) -> str:
  lines = ['# Instruction tuning: held-out scores\n',
           f'Base model: `{config.init_from}`, zero-shot. Tuned: this run, with the prompts of '
           f'its training ({config.sft.shots} positive examples). Greedy answers up to the first '
           'newline (exact match and ROUGE-L, Super-NaturalInstructions); for a task with a '
           'fixed label set, also the accuracy of the likeliest option. Scores are fractions of '
           '1; "cut" counts the prompts that lost tokens on the left to leave room for the '
           'answer (base / tuned).\n',
           '| task | instances | EM base | EM tuned | ROUGE-L base | ROUGE-L tuned '
           '| acc base | acc tuned | cut |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for name, r in report.items():
    b, t = r['base'], r['tuned']
    acc = lambda s: f'{s["choice"]["acc"]:.3f}' if 'choice' in s else '-'
    lines.append(f'| {name} | {r["instances"]} | {b["generation"]["exact_match"]:.3f} | '
                 f'{t["generation"]["exact_match"]:.3f} | {b["generation"]["rouge_l"]:.3f} | '
                 f'{t["generation"]["rouge_l"]:.3f} | {acc(b)} | {acc(t)} | '
                 f'{b["generation"]["cut_prompts"]} / {t["generation"]["cut_prompts"]} |')
  return '\n'.join(lines) + '\n'
