"""gpt_jax: GPT-family language models in JAX/Flax."""
