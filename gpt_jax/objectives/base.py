"""The objective interface (Objective) and what the objectives share: the base a fine-tuning
objective starts from (load_base), the records of the frozen runs an objective reads, and the
training and validation batches of a table of rows.

An objective is built once per run from the config (gpt_jax.objectives.build), after which it
holds its data (tokenizer, training rows, validation rows) and any frozen model (a teacher). The
trainer then:
  - lays out a batch as `batch_spec()` says: each array's shape, dtype and logical axes, the
    first of them 'batch' (sharding.RULES maps them to the mesh);
  - calls `weights(batch)` on the whole batch and `loss(...)` on each microbatch, so that sums
    divided by the whole batch's weights add up to the batch mean under gradient accumulation;
  - sums `eval_sums(...)` over the validation batches and turns them into metrics
    (`eval_metrics`);
  - calls `finish(...)` once training is done (samples, reports).
An on-policy objective (PPO: `on_policy`) first turns each step's batch into experience with the
current parameters (`rollout`), then the step makes `epochs` passes of `minibatches` updates over
it (trainer.make_train_step); everything else is the same.
"""

import dataclasses
import json
import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from gpt_jax import checkpoint, config as config_lib, data, files, model, quant as quant_lib
from gpt_jax import lora as lora_lib, runs
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError


@dataclasses.dataclass
class Objective:
  """The interface; `lm.LanguageModeling` is the simplest full example."""
  config: ml_collections.ConfigDict
  tokenizer: Any
  gpt: model.GPT

  # Frozen parameters the loss reads (a teacher, a reference policy, a reward model), passed to
  # the step beside the state; None when the objective has no frozen model.
  frozen: Any = None

  # An on-policy objective (PPO) makes its training data from the current parameters: each step
  # turns its batch into experience (`rollout`), then trains on it in `epochs` passes of
  # `minibatches` optimizer updates each.
  on_policy = False
  epochs: int = 1
  minibatches: int = 1

  @property
  def num_tokens(self) -> int | None:
    """The tokenizer's vocabulary size: the softmax is over these ids (losses.mask_padded_vocab)."""
    return self.tokenizer.vocab_size if self.tokenizer else None

  def batch_spec(self) -> dict[str, tuple[tuple[int, ...], Any, tuple]]:
    """name -> (shape of one row, dtype, logical axes of the whole (B, ...) array) of each array
    of a training batch; the first axis is 'batch'."""
    raise NotImplementedError

  def row_tokens(self) -> int:
    """Tokens the model reads per batch row (throughput and MFU count these)."""
    return self.config.seq_len

  def init_params(self, rng: jax.Array):
    """The trained parameters, freshly initialised (unboxed)."""
    return model.init_params(self.gpt, rng, self.config.seq_len)

  def param_axes(self):
    """Logical axis names of init_params' tree (PartitionSpecs)."""
    return model.logical_axes(self.gpt, self.config.seq_len)

  def rollout(self, params, batch, *, rng, frozen) -> tuple[dict, dict]:
    """(experience, metrics) of an on-policy objective: the arrays of B rows its updates train on,
    made from the step's batch with the current parameters, and metrics of the rollout."""
    raise NotImplementedError

  def weights(self, batch) -> dict:
    """Normalisers of the whole batch (e.g. the number of targets), passed to every microbatch's
    loss."""
    raise NotImplementedError

  def loss(self, params, batch, *, rng, step, weights, frozen):
    """(loss, metrics) of a microbatch, each a sum divided by `weights`; metrics hold
    'train_loss'."""
    raise NotImplementedError

  def eval_sums(self, params, batch, frozen) -> dict:
    """Sums over a validation microbatch (params in eval mode), added up across batches."""
    raise NotImplementedError

  def eval_metrics(self, sums: dict) -> dict:
    """Validation metrics (keys 'val_...') from the summed eval_sums."""
    raise NotImplementedError

  def train_dataset(self, batch_size: int):
    """This process's training batches: a grain.MapDataset of dicts of numpy arrays, batch_size
    rows each, shuffled by config.seed; len() is the number of batches."""
    raise NotImplementedError

  def validation_batches(self) -> list[dict]:
    """This process's rows of the validation microbatches (batch_size // grad_accum rows each
    over all processes)."""
    raise NotImplementedError

  def start_from(self, params, mesh, log):
    """The parameters to start a fresh run from: config.init_from's (checked compatible), or
    `params` as initialised when it is empty."""
    if not self.config.init_from:
      return params
    check_trainable_base(self.config, runs.read_config(self.config.init_from, 'init_from').model)
    base = runs.load_compatible(self.config.init_from, 'init_from', self.config, self.tokenizer,
                                mesh=mesh, log=log)
    checkpoint.check_same_shapes(base.params, params, f'init_from={self.config.init_from!r}')
    return base.params

  def check_workdir(self, workdir: str) -> None:
    """Checks the files the objective keeps in the run's workdir against this run (UserError),
    writing those still missing on process 0; called on every process once the initial state is
    ready, before the first step."""

  def finish(self, params, workdir: str, log) -> None:
    """Work after the last step, on process 0 (samples, reports)."""


FROZEN_RUNS = 'frozen_runs.json'


def frozen_run(setting: str, workdir: str, step: int, params) -> dict:
  """What a run records of a frozen run it reads (a reference policy, a reward model): the
  setting that named it, its workdir, checkpoint step and parameter fingerprint."""
  return {'setting': setting, 'workdir': os.path.abspath(workdir), 'step': step,
          'sha256': lora_lib.fingerprint(params)}


def check_frozen_runs(workdir: str, records: list[dict]) -> None:
  """Writes FROZEN_RUNS into a new run's workdir (process 0); on a resume, UserError unless each
  frozen run is the one the run trained against (a retrained reward model or reference would
  silently change its course)."""
  path = os.path.join(workdir, FROZEN_RUNS)
  if not os.path.exists(path):
    if jax.process_index() == 0:
      files.write_json(path, records)
    return
  with open(path, encoding='utf-8') as f:
    trained = {r['setting']: r for r in json.load(f)}
  for now in records:
    then = trained.get(now['setting'])
    if then and then['sha256'] != now['sha256']:
      raise UserError(f'{workdir} trained against {now["setting"]}={then["workdir"]} at step '
                      f'{then["step"]}, not {now["workdir"]} at step {now["step"]} (its parameters '
                      f'differ); resume with that run as it was, or use a new --workdir')


def process_rows(rows_per_batch: int) -> tuple[int, int]:
  """(first, count) of this process's rows in a batch of rows_per_batch rows over all processes."""
  count = rows_per_batch // jax.process_count()
  return jax.process_index() * count, count


class Table:
  """The rows of a dict of equal-length arrays, as a sequence of dicts (a grain source)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i: int) -> dict:
    return {name: array[i] for name, array in self.arrays.items()}


def table_dataset(arrays: dict[str, np.ndarray], batch_size: int, config) -> grain.MapDataset:
  """This process's training batches of a table's rows (data.shuffled_batches); UserError if
  the table gives no batch."""
  ds = data.shuffled_batches(Table(arrays), batch_size=batch_size, seed=config.seed,
                             num_epochs=config.data.num_epochs, process_index=jax.process_index(),
                             process_count=jax.process_count())
  if len(ds) == 0:
    raise UserError(f'{len(Table(arrays))} training rows are fewer than one batch of '
                    f'{config.batch_size}; lower --config.batch_size or add training data')
  return ds


def split_batches(arrays: dict[str, np.ndarray], config, pad: bool = False) -> list[dict]:
  """Validation microbatches of a table of rows: its whole batches of config.batch_size rows (at
  most config.eval_batches of them; 0 = all), each cut into grad_accum microbatches of which this
  process keeps its rows, so the same rows are scored whatever the microbatching and the number
  of processes. pad=True first fills the last batch with rows of zeros, which an objective must
  score as nothing (a zero mask)."""
  rows = len(Table(arrays))
  if pad:
    extra = -rows % config.batch_size
    arrays = {k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)])
              for k, v in arrays.items()}
    rows += extra
  micro = config.batch_size // config.grad_accum
  batches = rows // config.batch_size
  if config.eval_batches:
    batches = min(batches, config.eval_batches)
  first, count = process_rows(micro)
  return [{k: v[start + first:start + first + count] for k, v in arrays.items()}
          for start in range(0, batches * config.batch_size, micro)]


def check_trainable_base(config, base_model) -> None:
  """UserError if config.init_from, whose model config is `base_model`, is quantized and this run
  would train all of its weights (config.lora.rank = 0)."""
  quant = quant_lib.spec(base_model)
  if quant and config.lora.rank == 0:
    raise UserError(f'init_from={config.init_from!r} is quantized ({quant.format}); quantized runs '
                    'are frozen bases for LoRA: add --config.lora.rank=r (QLoRA), or start from '
                    'the float run it was quantized from')


# Objectives whose every forward pass is deterministic: a pair's answers (reward, DPO) or a
# rollout and its update (PPO) must be computed by one function, so dropout is never applied
# (TRL's disable_dropout).
WITHOUT_DROPOUT = ('reward', 'dpo', 'ppo')


def load_base(config, mesh, log) -> runs.Run:
  """The config.init_from run that a fine-tuning objective starts from. Its model and tokenizer
  are this run's: config.model becomes the base's (keeping this config's kernel choices,
  model.attention and model.remat, and model.dropout), so the command line need not repeat
  them. UserError without init_from, or with a data.tokenizer or a model.vocab_size (other than
  the default) unlike the base's."""
  if not config.init_from:
    raise UserError(f'objective={config.objective} fine-tunes a pretrained model; pass '
                    '--config.init_from=DIR (a finished run, or a model imported by gpt_jax.hf)')
  base_model = runs.read_config(config.init_from, 'init_from').model
  check_trainable_base(config, base_model)
  if config.model.vocab_size not in (base_model.vocab_size,
                                     config_lib.base_config().model.vocab_size):
    raise UserError(f'model.vocab_size={config.model.vocab_size}, but init_from='
                    f'{config.init_from!r} has {base_model.vocab_size}: a fine-tuned model keeps '
                    f"its base's vocabulary; pass --config.model.vocab_size="
                    f'{base_model.vocab_size} (the config file sets another)')
  kept = {key: config.model[key] for key in ('attention', 'remat', 'dropout')}
  config.model.update(base_model.to_dict() | kept)
  if config.model.position == 'learned' and config.seq_len > config.model.block_size:
    raise UserError(f'seq_len={config.seq_len} is beyond the {config.model.block_size}-token '
                    f'context of init_from={config.init_from!r}; lower --config.seq_len')
  model.validate(config.model, config.seq_len)
  base = runs.load(config.init_from, mesh=mesh, what='init_from', log=log)
  if config.data.tokenizer:
    given = tokenizer_lib.load(config.data.tokenizer)
    if given.sha256 != base.tokenizer.sha256:
      raise UserError(f'data.tokenizer={config.data.tokenizer!r} is not the tokenizer of '
                      f'init_from={config.init_from!r}; a fine-tuned model keeps its base\'s, so '
                      "set --config.data.tokenizer=''")
  log(f'fine-tuning {config.init_from} (step {base.step}): {config.model.n_layer} layers, '
      f'n_embd {config.model.n_embd}, vocabulary {config.model.vocab_size}')
  dropouts = {'model.dropout': config.model.dropout,
              'lora.dropout': config.lora.dropout if config.lora.rank else 0}
  ignored = ', '.join(f'{key}={value}' for key, value in dropouts.items() if value)
  if config.objective in WITHOUT_DROPOUT and ignored:
    log(f'objective={config.objective} runs every forward pass without dropout, so {ignored} is '
        'not applied')
  return base
