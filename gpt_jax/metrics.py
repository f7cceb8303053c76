"""Where a run's metrics go: DIR/metrics.jsonl, TensorBoard event files, and a loss-curve PNG."""

import json
import math
import os

import tensorboardX

from gpt_jax import files
from gpt_jax.figures import plt, save


METRICS = 'metrics.jsonl'


def read_jsonl(path: str) -> list[dict]:
  """The records of a metrics.jsonl file, [] when there is none; a one-line UserError for a line
  that is not JSON."""
  if not os.path.exists(path):
    return []
  return [record for _, _, record in files.read_json_lines(
      path, path, 'a run writes one JSON record a line: remove the broken line')]


def last_holding(workdir: str, key: str) -> dict | None:
  """The last record of workdir's metrics.jsonl that holds `key` (the last evaluation, for a
  'val_' key), or None."""
  records = read_jsonl(os.path.join(workdir, METRICS))
  return next((r for r in reversed(records) if key in r), None)


class MetricsLog:
  """Appends one JSON object per logged step. On resume from step S, records after S are dropped
  (atomically) so the file matches an uninterrupted run."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, METRICS)
    kept = [r for r in read_jsonl(self.path) if r['step'] <= resume_step]
    files.write_text(self.path, ''.join(json.dumps(r) + '\n' for r in kept))
    self._file = open(self.path, 'a', encoding='utf-8')
    self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    for key, value in record.items():
      if key != 'step' and isinstance(value, (int, float)) and math.isfinite(value):
        self._tensorboard.add_scalar(key, value, record['step'])

  def close(self) -> None:
    self._file.close()
    self._tensorboard.close()


def plot_losses(records: list[dict], path: str, title: str) -> None:
  """Train and validation loss against step, written atomically to `path` (PNG)."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for key, style in (('train_loss', '-'), ('val_loss', 'o-')):
    points = [(r['step'], r[key]) for r in records if key in r]
    if points:
      ax.plot(*zip(*points), style, label=key.replace('_', ' '), markersize=4)
  ax.set_xlabel('step')
  ax.set_ylabel('loss (nats/token)')
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  save(fig, path)
