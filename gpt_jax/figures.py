"""Figures as PNG files: matplotlib's headless backend, and an atomic save."""

import matplotlib

from gpt_jax import files

matplotlib.use('Agg')  # before pyplot: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402


def save(fig: plt.Figure, path: str) -> None:
  """Lays out `fig`, writes it to `path` (PNG at 120 dpi) atomically and closes it."""
  fig.tight_layout()
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120)
  plt.close(fig)
