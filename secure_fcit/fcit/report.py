"""Human-readable outputs of a run: an accuracy-matrix heatmap (PNG) and Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["matrix_markdown", "plot_matrix"]


def matrix_markdown(matrix: Sequence[Sequence[float | None]], tasks: Sequence[str]) -> str:
    """A[t][i] as a Markdown table: rows = after stage t, columns = task i ("–" where i > t)."""
    head = "| after stage | " + " | ".join(tasks) + " |"
    rule = "|---|" + "---:|" * len(tasks)
    rows = []
    for t, row in enumerate(matrix):
        cells = ["–" if v is None else f"{v:.1f}" for v in row]
        rows.append(f"| {t + 1} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def plot_matrix(matrix: Sequence[Sequence[float | None]], tasks: Sequence[str], path: Path, title: str) -> Path:
    """Save the accuracy matrix as a heatmap PNG (scores 0–100; blank above the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix])
    # constrained layout fits the rotated labels and the colour bar even for a 1-stage matrix
    fig, ax = plt.subplots(figsize=(max(3.5, 1.0 + 0.9 * len(tasks)), max(2.8, 1.2 + 0.6 * len(matrix))),
                           layout="constrained")
    im = ax.imshow(data, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(tasks)), labels=tasks, rotation=40, ha="right")
    ax.set_yticks(range(len(matrix)), labels=[f"after {t + 1}" for t in range(len(matrix))])
    for (r, c), v in np.ndenumerate(data):
        if not np.isnan(v):
            ax.text(c, r, f"{v:.0f}", ha="center", va="center", color="white" if v < 60 else "black", fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="score (0–100)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
