"""Heatmaps of a layer-pair matrix (cka_matrix, mutual_knn_matrix) as PNG, with matplotlib's Agg
backend (no display needed). Layers on both axes, normalized depth on the opposite axes, the
matched-depth diagonal drawn, and with a permutation null the cells that beat it marked."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa


def matrix_grid(table: pa.Table, value: str = "cka"):
    """(layers_a, layers_b, depths_a, depths_b, values[a, b], p_values[a, b] or None) from a long table."""
    cols = table.to_pydict()
    la, lb = sorted(set(cols["layer_a"])), sorted(set(cols["layer_b"]))
    ia, ib = {v: i for i, v in enumerate(la)}, {v: i for i, v in enumerate(lb)}
    grid = np.full((len(la), len(lb)), np.nan)
    pvals = np.full_like(grid, np.nan) if "p_value" in cols and any(p is not None for p in cols["p_value"]) else None
    da, db = {}, {}
    for i in range(table.num_rows):
        a, b = ia[cols["layer_a"][i]], ib[cols["layer_b"][i]]
        v = cols[value][i]
        grid[a, b] = np.nan if v is None else v
        da[a], db[b] = cols["depth_a"][i], cols["depth_b"][i]
        if pvals is not None and cols["p_value"][i] is not None:
            pvals[a, b] = cols["p_value"][i]
    return la, lb, [da[i] for i in range(len(la))], [db[i] for i in range(len(lb))], grid, pvals


def heatmap(table: pa.Table, path, value: str = "cka", title: str | None = None, alpha: float = 0.01) -> Path:
    """Write a heatmap of `table` (one row per layer pair) to `path` (PNG) and return the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if table.num_rows == 0:
        raise ValueError("nothing to plot: the matrix has no rows")
    la, lb, da, db, grid, pvals = matrix_grid(table, value)
    model_a = table.column("model_a")[0].as_py()
    model_b = table.column("model_b")[0].as_py()
    fig, ax = plt.subplots(figsize=(2.5 + 0.3 * len(lb), 2.0 + 0.3 * len(la)), dpi=110)
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis",
                   vmin=min(0.0, float(np.nanmin(grid))) if np.isfinite(grid).any() else 0, vmax=1.0)
    ax.set_xticks(range(len(lb)), [str(v) for v in lb], fontsize=7)
    ax.set_yticks(range(len(la)), [str(v) for v in la], fontsize=7)
    ax.set_xlabel(f"{model_b} layer")
    ax.set_ylabel(f"{model_a} layer")
    # normalized depth on the opposite axes, and the line where depth_a == depth_b
    top = ax.secondary_xaxis("top", functions=(lambda x: np.interp(x, range(len(db)), db),
                                               lambda d: np.interp(d, db, range(len(db)))))
    right = ax.secondary_yaxis("right", functions=(lambda y: np.interp(y, range(len(da)), da),
                                                   lambda d: np.interp(d, da, range(len(da)))))
    for axis in (top, right):
        axis.set_ticks([0, 0.25, 0.5, 0.75, 1.0])
        axis.tick_params(labelsize=7)
    top.set_xlabel("normalized depth", fontsize=8)
    d = np.linspace(0, 1, 50)
    ax.plot(np.interp(d, db, range(len(db))), np.interp(d, da, range(len(da))), color="white", lw=0.8, ls="--")
    if pvals is not None:
        ys, xs = np.nonzero(pvals <= alpha)
        ax.scatter(xs, ys, s=4, c="white", marker="o", linewidths=0, label=f"p <= {alpha:g}")
        ax.legend(loc="lower right", fontsize=6, frameon=False, labelcolor="white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.12, label=value)
    options = [f"{k}={table.column(k)[0].as_py()}" for k in ("pooling", "estimator", "kernel", "preprocess", "k")
               if k in table.column_names and table.column(k)[0].as_py() is not None]
    ax.set_title(title or f"{value}: {model_a} vs {model_b}\n{', '.join(options)}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
