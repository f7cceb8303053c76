"""LoRA fine-tuning (Hu et al. 2021) with any objective: the objective as it is, training low-rank
adapters on a frozen base model instead of the model's weights (gpt_jax.lora has the math).

The inner objective (language modelling, distillation, instruction tuning, a task head) is built
as without LoRA, then given the adapted model (network.build with config.lora). What this wrapper
trains is the adapters (the `lora_a`, `lora_b` leaves of the model's parameters) and whatever the
inner objective trains beside the model (classify's head and special tokens, runs.MODEL_KEY),
and the trainable tokens (lora.trainable_tokens_from; by default a vocabulary expansion's new
pieces, read from the base's vocab_expansion.json);
the rest of the model's parameters, config.init_from's, are frozen: passed to the step in
`frozen` beside the inner objective's own frozen tree (a teacher) and never in the optimizer, so
the train state, the optimizer's moments and the checkpoints hold the trained part alone. The
loss puts the two back together into the tree the inner objective expects (a union of leaves,
not a sum of weights) and hands it over, so the inner objective never learns about LoRA.
"""

import dataclasses
import os

import jax
from flax import traverse_util

from gpt_jax import lora, network, runs, vocab_expansion
from gpt_jax.errors import UserError
from gpt_jax.objectives.base import Objective, load_base


@dataclasses.dataclass
class LoraTuning(Objective):
  inner: Objective | None = None
  base_record: dict | None = None  # lora.base_record of config.init_from, kept in lora.json

  @classmethod
  def build(cls, config, mesh, log, build_inner):
    """`build_inner()` builds the objective to adapt. UserError for config.lora settings out of
    range, no config.init_from (the base), or lora.targets naming no layer of its model."""
    lora.validate(config.lora)
    if not config.init_from:
      raise UserError(f'lora.rank={config.lora.rank} adapts a pretrained model; pass '
                      '--config.init_from=DIR (a finished run, or a model imported by gpt_jax.hf)')
    layers = lora.targeted_layers(config.lora.targets,
                                  runs.read_config(config.init_from, 'init_from').model.mlp)
    first_new_id = vocab_expansion.first_new_id(config.init_from)
    if config.lora.trainable_tokens_from < 0 and first_new_id:
      # Recorded in config.json as resolved; -1 stays (none) for other bases, as runs made
      # before the setting existed read it.
      config.lora.trainable_tokens_from = first_new_id
    # sft and classify adopt the base's model and load it (base.load_base); so does 'lm' here.
    base = load_base(config, mesh, log) if config.objective == 'lm' else None
    inner = build_inner()
    if base is None:
      base = inner.base
    else:
      runs.check_compatible(base, config.init_from, 'init_from', config, inner.tokenizer)
    objective = cls.wrap(inner, base.params)
    objective.base_record = lora.base_record(config.init_from, base.step, base.params)
    first = config.lora.trainable_tokens_from
    tokens = (f'; token ids {first}..{config.model.vocab_size - 1} train in full' if first > 0
              else '')
    log(f'LoRA: rank {config.lora.rank}, alpha {config.lora.alpha} on {", ".join(layers)}'
        f'{tokens}; the base stays frozen')
    return objective

  @classmethod
  def wrap(cls, inner: Objective, base_params) -> 'LoraTuning':
    """`inner` training adapters on the model parameters `base_params` (frozen, on the mesh)."""
    inner.gpt = network.build(inner.config.model, inner.config.lora)  # its loss runs the adapters
    return cls(inner.config, inner.tokenizer, inner.gpt, inner=inner,
               frozen={'base': base_params, 'inner': inner.frozen}, epochs=inner.epochs,
               minibatches=inner.minibatches)

  # --- the trained tree and the inner objective's -----------------------------------------------

  def trained(self, tree):
    """The trained part of a tree shaped as the inner objective's parameters: its model part's
    adapters and all it holds beside the model."""
    key = runs.MODEL_KEY.get(self.config.objective)
    if key is None:
      return lora.split(tree)[0]
    return {**tree, key: lora.split(tree[key])[0]}

  def combine(self, params, base):
    """The inner objective's parameters: the trained ones with the base's leaves added to the
    model part."""
    key = runs.MODEL_KEY.get(self.config.objective)
    if key is None:
      return lora.join(params, base)
    return {**params, key: lora.join(params[key], base)}

  # --- the trainer's interface --------------------------------------------------------------

  def init_params(self, rng):
    return self.trained(self.inner.init_params(rng))

  def param_axes(self):
    return self.trained(self.inner.param_axes())

  def start_from(self, params, mesh, log):
    """Fresh adapters (B = 0: the base's function) and a fresh head, if any; trainable tokens
    start as the base's rows (columns of a head)."""
    key = runs.MODEL_KEY.get(self.config.objective)
    model_params = params if key is None else params[key]
    flat = traverse_util.flatten_dict(model_params)
    base = traverse_util.flatten_dict(self.frozen['base'])
    for path, tokens in flat.items():
      if path[-1] == lora.TRAINABLE_TOKENS:
        table = base.get(path[:-1] + ('embedding',))
        rows = (table[-tokens.shape[0]:] if table is not None
                else base[path[:-1] + ('kernel',)][..., -tokens.shape[-1]:])
        flat[path] = jax.device_put(rows.astype(tokens.dtype), tokens.sharding)
    model_params = traverse_util.unflatten_dict(flat)
    return model_params if key is None else {**params, key: model_params}

  def check_workdir(self, workdir):
    """Writes lora.json at the start of a run; on a resume checks the base against it first, and
    records the base where init_from now names it (the base may have moved)."""
    if os.path.exists(os.path.join(workdir, lora.BASE_FILE)):
      lora.check_base(workdir, self.base_record)
    if jax.process_index() == 0:
      lora.write_base(workdir, self.base_record)

  def batch_spec(self):
    return self.inner.batch_spec()

  def row_tokens(self):
    return self.inner.row_tokens()

  @property
  def on_policy(self):
    return self.inner.on_policy

  def rollout(self, params, batch, *, rng, frozen):
    return self.inner.rollout(self.combine(params, frozen['base']), batch, rng=rng,
                              frozen=frozen['inner'])

  def weights(self, batch):
    return self.inner.weights(batch)

  def loss(self, params, batch, *, rng, step, weights, frozen):
    return self.inner.loss(self.combine(params, frozen['base']), batch, rng=rng, step=step,
                           weights=weights, frozen=frozen['inner'])

  def eval_sums(self, params, batch, frozen):
    return self.inner.eval_sums(self.combine(params, frozen['base']), batch, frozen['inner'])

  def eval_metrics(self, sums):
    return self.inner.eval_metrics(sums)

  def train_dataset(self, batch_size):
    return self.inner.train_dataset(batch_size)

  def validation_batches(self):
    return self.inner.validation_batches()

  def finish(self, params, workdir, log):
    self.inner.finish(self.combine(params, self.frozen['base']), workdir, log)
