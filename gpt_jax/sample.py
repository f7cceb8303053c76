"""Text generation by sampling with temperature.

Each new token reruns the model over the whole buffer (no KV cache): simple and exact, and cheap
for the short samples printed after training. All steps run inside one jitted `lax.fori_loop`.
"""

import functools

import jax
import jax.numpy as jnp

from gpt_jax.model import GPT


@functools.partial(jax.jit, static_argnames=('gpt', 'max_new_tokens', 'temperature'))
def generate(gpt: GPT, params, prompt_BP: jax.Array, rng: jax.Array, *, max_new_tokens: int,
             temperature: float) -> jax.Array:
  """Continues each prompt row by max_new_tokens tokens; returns (B, P + max_new_tokens) tokens.

  temperature 0 is greedy decoding; otherwise tokens are drawn from softmax(logits / temperature).
  """
  B, P = prompt_BP.shape
  tokens_BT = jnp.concatenate([prompt_BP, jnp.zeros((B, max_new_tokens), jnp.int32)], axis=1)

  def step(t, tokens_BT):
    # Causality makes the zeros after position t irrelevant to the logits at position t.
    logits_BV = gpt.apply({'params': params}, tokens_BT)[:, t - 1].astype(jnp.float32)
    if temperature == 0:
      next_B = jnp.argmax(logits_BV, axis=-1)
    else:
      next_B = jax.random.categorical(jax.random.fold_in(rng, t), logits_BV / temperature)
    return tokens_BT.at[:, t].set(next_B.astype(jnp.int32))

  return jax.lax.fori_loop(P, P + max_new_tokens, step, tokens_BT)
