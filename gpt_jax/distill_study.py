"""The distillation study: does a small student learn more from a teacher than from the data alone?

Trains a teacher (or reuses config.distill.teacher), then the same student twice on the same
tokens in the same order with the same schedule: once on next-token loss alone, once distilled.
Only the loss differs, so the comparison is fair whichever way it comes out. Writes
DIR/distill_report.md and DIR/distill_curves.png.
"""

import copy
import os

from gpt_jax import files, flops, metrics, trainer
from gpt_jax.figures import plt, save


def _quiet(_):
  pass


def run_study(config, workdir: str, log=print) -> dict:
  """Trains what is missing in `workdir` and writes the report; returns each run's final metrics."""
  student = copy.deepcopy(config)
  with student.unlocked():  # the command line locks configs against new keys
    del student.study
  teacher = copy.deepcopy(student)
  teacher.model.update(config.study.teacher_model)
  teacher.update(steps=config.study.teacher_steps)
  teacher.optim.lr = config.study.teacher_lr
  teacher.distill.teacher = ''
  runs = {'teacher': (teacher, config.distill.teacher or os.path.join(workdir, 'teacher')),
          'student from scratch': (copy.deepcopy(student),
                                   os.path.join(workdir, 'student_scratch')),
          'distilled student': (copy.deepcopy(student), os.path.join(workdir, 'student_distilled'))}
  runs['student from scratch'][0].distill.teacher = ''
  runs['distilled student'][0].distill.teacher = runs['teacher'][1]
  results = {}
  for i, (name, (run, run_dir)) in enumerate(runs.items(), 1):
    if name == 'teacher' and config.distill.teacher:
      log(f'[{i}/3] {name}: reusing {run_dir}')
      results[name] = metrics.read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
      continue
    log(f'[{i}/3] {name}: {flops.param_count(run.model):,} parameters, {run.steps} steps of '
        f'{run.batch_size * run.seq_len:,} tokens -> {run_dir}')
    trainer.train(run, run_dir, log=_quiet)
    results[name] = metrics.read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
    log(f'    val loss {results[name][-1]["val_loss"]:.4f}, {results[name][-1]["val_bpb"]:.4f} '
        'bits/byte')
  _write_report(config, runs, results, workdir)
  log(f'report: {os.path.join(workdir, "distill_report.md")}')
  return {name: records[-1] for name, records in results.items()}


def _write_report(config, runs, results, workdir: str) -> None:
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, records in results.items():
    tokens_per_step = runs[name][0].batch_size * runs[name][0].seq_len
    points = [(r['step'] * tokens_per_step, r['val_loss']) for r in records if 'val_loss' in r]
    ax.plot(*zip(*points), 'o-', markersize=3,
            label=f'{name}: {points[-1][1]:.3f} nats, {records[-1]["val_bpb"]:.3f} bits/byte')
  ax.set_xlabel('training tokens')
  ax.set_ylabel('validation loss (nats/token)')
  ax.set_title('Distillation: the same student with and without a teacher')
  ax.grid(alpha=0.3)
  ax.legend()
  save(fig, os.path.join(workdir, 'distill_curves.png'))

  d = config.distill
  rows = []
  for name, records in results.items():
    run = runs[name][0]
    rows.append(f'| {name} | {flops.param_count(run.model):,} | {run.model.n_layer} × '
                f'{run.model.n_embd} | {run.steps * run.batch_size * run.seq_len:,} | '
                f'{records[-1]["val_loss"]:.4f} | {records[-1]["val_bpb"]:.4f} |')
  scratch, distilled = (results[n][-1]['val_loss'] for n in ('student from scratch',
                                                             'distilled student'))
  verdict = ('helped' if distilled < scratch else 'did not help')
  text = [
      '# Distillation study', '',
      f'Loss of the distilled student: α·T²·KL(teacher ‖ student) + (1 − α)·CE with α = {d.alpha}'
      f'{f" → {d.alpha_final}" if d.alpha_final >= 0 else ""}, T = {d.temperature}'
      f'{", reverse KL" if d.reverse else ""}{f", teacher top-{d.top_k}" if d.top_k else ""}. '
      'Both students see the same tokens in the same order with the same schedule.', '',
      '| run | parameters | layers × width | training tokens | val loss (nats/token) | '
      'bits/byte |', '|---|---|---|---|---|---|', *rows, '',
      f'The teacher {verdict}: distilled {distilled:.4f} vs from scratch {scratch:.4f} nats/token '
      f'({distilled - scratch:+.4f}).', '', '![validation curves](distill_curves.png)', '']
  files.write_text(os.path.join(workdir, 'distill_report.md'), '\n'.join(text))
